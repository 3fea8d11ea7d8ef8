"""The op registry: every ``Op`` published in the entry-point group ``gradserve.ops``.

The server has no built-in ops; even add and mul come from the gradserve-ops-core
distribution through this group. Entry points are read once per process (cached) with
``importlib.metadata``.
"""

import functools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from gradserve.ops import Op

GROUP = "gradserve.ops"

log = logging.getLogger(__name__)


class PluginError(Exception):
    """The op plugins cannot be loaded as asked; the server must not start."""


@dataclass(frozen=True)
class LoadedOp:
    """An op together with where it came from."""

    op: Op
    entry_point: str
    distribution: str
    version: str


Registry = Mapping[str, LoadedOp]


@functools.cache
def discovered_entry_points() -> tuple[EntryPoint, ...]:
    """The entry points of group ``gradserve.ops`` installed in this environment."""
    return tuple(entry_points(group=GROUP))


def _origin(ep: EntryPoint) -> tuple[str, str]:
    return (ep.dist.name, ep.dist.version) if ep.dist is not None else ("<unknown>", "")


def load_registry(
    *,
    allow: Iterable[str] | None = None,
    strict: bool = False,
    eps: Iterable[EntryPoint] | None = None,
) -> dict[str, LoadedOp]:
    """Load the ops, keyed by name.

    ``allow`` limits which entry points are loaded (the others are not even imported); an
    allowed name that no plugin provides is an error. Two distributions providing the same
    op name is an error naming both. A plugin that fails to load, or whose entry point does
    not name an ``Op`` of the same name, is logged and skipped, or is an error when
    ``strict``.
    """
    eps = discovered_entry_points() if eps is None else tuple(eps)
    allowed = None if allow is None else set(allow)
    if allowed is not None:
        missing = allowed - {ep.name for ep in eps}
        if missing:
            names = ", ".join(sorted(missing))
            raise PluginError(f"--ops names ops that no plugin provides: {names}")
        eps = tuple(ep for ep in eps if ep.name in allowed)

    by_name: dict[str, EntryPoint] = {}
    for ep in eps:
        if ep.name in by_name:
            first = by_name[ep.name]
            raise PluginError(
                f"op {ep.name!r} is provided twice: by {_origin(first)[0]} ({first.value}) "
                f"and by {_origin(ep)[0]} ({ep.value}); uninstall one of them"
            )
        by_name[ep.name] = ep

    registry: dict[str, LoadedOp] = {}
    for name, ep in sorted(by_name.items()):
        distribution, version = _origin(ep)
        try:
            op = ep.load()
            if not isinstance(op, Op):
                raise TypeError(f"{ep.value} is a {type(op).__name__}, not a gradserve.ops.Op")
            if op.name != name:
                raise ValueError(f"entry point {name!r} names an op called {op.name!r}")
        except Exception as exc:
            message = f"op plugin {name} = {ep.value} from {distribution} failed to load: {exc!r}"
            if strict:
                raise PluginError(message) from exc
            log.warning("%s; skipping it", message)
            continue
        registry[name] = LoadedOp(op, name, distribution, version)
    return registry

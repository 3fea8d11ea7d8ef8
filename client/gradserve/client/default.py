"""The default server: what ``loss.backward()`` with no client, and reading a pending
``.data``, call.

``use("host:port", **options)`` sets it in code; otherwise the ``GRADSERVE_TARGET``
environment variable names it, so that a lecture notebook runs unchanged but for its import.
"""

import os
import threading

from gradserve.client import remote
from gradserve.client.errors import NoServerConfigured

ENVIRONMENT_VARIABLE = "GRADSERVE_TARGET"
HOW_TO_SET = (
    "no gradserve server to call: pass a client (`loss.backward(client)`), call "
    '`gradserve.client.use("host:port")` once, or set the environment variable '
    f"{ENVIRONMENT_VARIABLE}=host:port (e.g. localhost:50051, where `gradserve serve` listens)"
)

_lock = threading.Lock()
_chosen = None  # the Client of use(), which wins over the environment
_from_environment: tuple[str, object] | None = None  # (target, its Client)


def use(target: str | None, **options):
    """Make a ``Client(target, **options)`` the default server (None: forget it) and return it."""
    from gradserve.client.client import Client

    global _chosen
    client = None if target is None else Client(target, **options)
    with _lock:
        previous, _chosen = _chosen, client
    if previous is not None:
        previous.close()
    return client


def configured():
    """The default server's Client, or None when neither ``use`` nor the environment set one."""
    global _from_environment
    if _chosen is not None:
        return _chosen
    target = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    if not target:
        return None
    with _lock:
        if _from_environment is None or _from_environment[0] != target:
            from gradserve.client.client import Client

            if _from_environment is not None:
                _from_environment[1].close()
            _from_environment = (target, Client(target))
        return _from_environment[1]


def client():
    """The default server's Client; ``NoServerConfigured`` says how to set one."""
    found = configured()
    if found is None:
        raise NoServerConfigured(HOW_TO_SET)
    return found


remote.configured_client, remote.default_client = configured, client

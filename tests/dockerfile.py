"""A small Dockerfile reader for the static checks: stages of (keyword, arguments)."""

import json
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stages(path: Path = ROOT / "Dockerfile") -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, continuation lines joined, comments dropped.

    Instructions before the first FROM (global ARGs) go into a stage of their own, first.
    """
    text = re.sub(r"\\\n", " ", path.read_text())
    result: list[list[tuple[str, str]]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            result.append([])
        result[-1].append((keyword.upper(), args.strip()))
    return result


def exec_form(args: str) -> list[str]:
    """The argument list of an exec-form (JSON) CMD, ENTRYPOINT or HEALTHCHECK CMD."""
    return json.loads(args)


def assignments(args: str) -> dict[str, str]:
    """ENV or ARG ``KEY=value`` pairs (the values unexpanded)."""
    return dict(word.partition("=")[::2] for word in shlex.split(args))


def runtime_env(path: Path = ROOT / "Dockerfile") -> dict[str, str]:
    """The final stage's ENV, as the server sees it in the container."""
    env: dict[str, str] = {}
    for keyword, args in stages(path)[-1]:
        if keyword == "ENV":
            env.update(assignments(args))
    return env


def runtime_command(path: Path = ROOT / "Dockerfile") -> tuple[list[str], list[str]]:
    """The final stage's ENTRYPOINT and CMD."""
    found = {k: exec_form(a) for k, a in stages(path)[-1] if k in ("ENTRYPOINT", "CMD")}
    return found["ENTRYPOINT"], found["CMD"]

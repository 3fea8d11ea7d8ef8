"""Tests that need a program outside Python (Graphviz's dot, Go, Node.js, docker-compose,
protoc, a JDK...) say so in one way, so that a fresh machine runs the suite green and CI
proves that nothing was skipped for want of a tool.

    @pytest.mark.requires_tool("go")          # on a test, a class or a module (pytestmark)
    def test_...(): ...

    require_tool("node", "npm")               # inside a test or a fixture

A missing tool skips the test with the reason "missing tool: go (...)". With
``GRADSERVE_REQUIRE_TOOLS=1`` in the environment, or ``CI=true``, or pytest's
``--require-tools`` option, it fails the test instead: `.ci/run` installs every tool and sets
it, so a tool CI forgot to install is a failure, not a quiet skip.
"""

import os
import shutil

import pytest

HINTS = {
    "dot": "apt-get install graphviz",
    "docker-compose": "apt-get install docker-compose",
    "haproxy": "apt-get install haproxy",
    "go": "Go 1.26+ (go.dev/dl), with the module proxy",
    "node": "Node.js 20+",
    "npm": "Node.js 20+",
    "protoc": "apt-get install protobuf-compiler",
    "mvn": "apt-get install maven",
    "java": "apt-get install openjdk-17-jdk-headless",
    "javac": "apt-get install openjdk-17-jdk-headless",
    "cargo": "Rust 1.88+ (rustup.rs), with crates.io",
    "cc": "apt-get install gcc (the SDK's compiled recording core)",
    "rustfmt": "rustup component add rustfmt",
}
STRICT = {"value": False}  # set by conftest.py from --require-tools


def strict() -> bool:
    """Whether a missing tool fails the test rather than skipping it."""
    return (
        STRICT["value"]
        or os.environ.get("GRADSERVE_REQUIRE_TOOLS", "") not in ("", "0")
        or os.environ.get("CI", "").lower() == "true"
    )


def missing(*tools: str) -> list[str]:
    """The tools of ``tools`` that are not on the PATH."""
    return [tool for tool in tools if shutil.which(tool) is None]


def require_tool(*tools: str) -> None:
    """Skip (or, under CI, fail) the running test unless every tool is on the PATH."""
    absent = missing(*tools)
    if not absent:
        return
    hints = "; ".join(f"{tool}: {HINTS[tool]}" for tool in absent if tool in HINTS)
    reason = f"missing tool: {', '.join(absent)}" + (f" ({hints})" if hints else "")
    if strict():
        pytest.fail(f"{reason}; CI must install it (.ci/run)", pytrace=False)
    pytest.skip(reason)

"""The code on the SDK's docs pages (docs/sdk/errors.md, docs/sdk/pytorch.md) runs as
written against a live server, and prints what the page says it prints.

As on every docs page, each fenced block follows a marker line: ``<!-- not-run -->``, or
``<!-- runs in tests/test_docs_sdk.py -->`` for the blocks run here. A page's blocks run in
order as one script in a fresh interpreter, with GRADSERVE_TARGET naming the test server.
A ``# text`` comment right after a ``print(...)`` line is the output the page promises.
"""

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["docs/sdk/errors.md", "docs/sdk/pytorch.md"]
RUNS_HERE = "<!-- runs in tests/test_docs_sdk.py -->"
NOT_RUN = "<!-- not-run -->"
BLOCK = re.compile(r"([^\n]*)\n```(\w*)\n(.*?)```", re.DOTALL)


def blocks(page: str) -> list[tuple[str, str, str]]:
    """Each fenced block of the page: the line before it, its language, its code."""
    return BLOCK.findall((ROOT / page).read_text())


def promised_output(code: str) -> list[str]:
    lines = code.splitlines()
    return [
        after.strip().removeprefix("# ")
        for line, after in itertools.pairwise(lines)
        if line.strip().startswith("print(") and after.strip().startswith("# ")
    ]


@pytest.mark.parametrize("page", PAGES)
def test_every_block_is_marked(page):
    found = blocks(page)
    assert found
    for marker, _, code in found:
        assert marker in (RUNS_HERE, NOT_RUN), f"{page}: no marker before {code[:60]!r}"


@pytest.mark.parametrize("page", PAGES)
def test_the_pages_code_runs_and_prints_what_it_says(page, target):
    code = [code for marker, _, code in blocks(page) if marker == RUNS_HERE]
    assert code, f"{page} has no code that runs"
    env = {**os.environ, "GRADSERVE_TARGET": target}
    result = subprocess.run(
        [sys.executable, "-c", "\n".join(code)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    promised = [line for block in code for line in promised_output(block)]
    assert promised, f"{page} promises no output"
    assert result.stdout.splitlines() == promised
    assert result.stderr == ""  # no gRPC C-core line either


def test_every_exception_of_the_sdk_is_on_the_errors_page():
    import gradserve.client
    from gradserve.client import GradserveError

    page = (ROOT / "docs/sdk/errors.md").read_text()
    exported = [
        name
        for name in gradserve.client.__all__
        if isinstance(getattr(gradserve.client, name), type)
        and issubclass(getattr(gradserve.client, name), GradserveError)
    ]
    assert len(exported) >= 10
    for name in exported:
        assert f"| `{name}` |" in page or name == "GradserveError", name
    assert "`GradserveError`" in page

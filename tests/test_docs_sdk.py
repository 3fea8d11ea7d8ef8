"""The code on the SDK's docs pages (docs/sdk/errors.md, docs/sdk/pytorch.md) runs as
written against a live server, and prints what the page says it prints.

Each page's ```python blocks, but for those after a ``<!-- not-run -->`` line, run in order
as one script in a fresh interpreter, with GRADSERVE_TARGET naming the test server. A
``# text`` comment right after a ``print(...)`` line is the output the page promises.
"""

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs" / "sdk"
BLOCK = re.compile(r"(<!-- not-run -->\n)?```python\n(.*?)```", re.DOTALL)


def blocks(page: Path) -> list[str]:
    """The page's Python blocks that are meant to run."""
    return [code for skip, code in BLOCK.findall(page.read_text()) if not skip]


def promised_output(code: str) -> list[str]:
    lines = code.splitlines()
    return [
        after.strip().removeprefix("# ")
        for line, after in itertools.pairwise(lines)
        if line.strip().startswith("print(") and after.strip().startswith("# ")
    ]


@pytest.mark.parametrize("page", ["errors.md", "pytorch.md"])
def test_the_pages_code_runs_and_prints_what_it_says(page, target):
    code = blocks(DOCS / page)
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

    page = (DOCS / "errors.md").read_text()
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

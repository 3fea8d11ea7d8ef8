"""The documentation (README.md and the pages under docs/) and its code blocks, for the
tests that hold the documentation to the code.

Every fenced code block is preceded by one marker line:
``<!-- not-run -->`` for a block not meant to run (output, a deployment command, a sketch
that needs what a test cannot have), or ``<!-- runs in tests/test_x.py -->`` naming the
test that runs it; that test reads the page through this module, so the page's path
appears in it (tests/test_docs_site.py checks both).
"""

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_RUN = "<!-- not-run -->"
RUNS_IN = re.compile(r"<!-- runs in (tests/[\w/]+\.py) -->")
_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository, as "docs/sdk.md"
    line: int  # of the opening fence, from 1
    language: str
    code: str
    marker: str | None  # the line before the fence, when it is a marker

    @property
    def runs_in(self) -> str | None:
        match = RUNS_IN.fullmatch(self.marker or "")
        return match[1] if match else None


def pages() -> list[str]:
    """README.md and every Markdown page of the site."""
    return ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]


def text(page: str) -> str:
    return (ROOT / page).read_text()


def section(page: str, title: str) -> str:
    """The ``## title`` section of ``page`` (to the next ``## ``), or the whole page for
    ``title=None``."""
    return text(page).split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def blocks(page: str, source: str | None = None) -> list[Block]:
    """The fenced code blocks of ``page`` (or of ``source``, a part of it), in order."""
    lines = (text(page) if source is None else source).splitlines()
    found, index = [], 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening or (not opening[2] and not _is_opening(lines, index)):
            index += 1
            continue
        indent, language = opening[1], opening[2]
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        code = "\n".join(line.removeprefix(indent) for line in lines[index + 1 : end]) + "\n"
        before = next((lines[i].strip() for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        marker = before if before == NOT_RUN or RUNS_IN.fullmatch(before) else None
        found.append(Block(page, index + 1, language, code, marker))
        index = end + 1
    return found


def _is_opening(lines: list[str], index: int) -> bool:
    """A bare ``` opens a block when an even number of fences came before it."""
    return sum(1 for line in lines[:index] if line.strip().startswith("```")) % 2 == 0


def code(page: str, language: str, source: str | None = None) -> list[str]:
    """The code of each ``language`` block of ``page`` (or of ``source``, a part of it)."""
    return [b.code for b in blocks(page, source) if b.language == language]

"""The documentation site builds strictly, every code block runs in a test or says it is not
meant to run, links stay inside the repository (or go to public sites), the README stays a
landing page, and the settings table is the parser's."""

import importlib.util
import os
import re
import subprocess
import sys

import docs_pages
import pytest

from gradserve.server import cli

ROOT = docs_pages.ROOT
README = "README.md"


def test_the_site_builds_strictly(tmp_path):
    environment = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's notice
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    reference = (tmp_path / "reference" / "client" / "index.html").read_text()
    # The API reference comes from the docstrings: Value's and Client's are there.
    assert "micrograd" in reference and "backward" in reference
    assert "Op" in (tmp_path / "reference" / "ops" / "index.html").read_text()


ALL_BLOCKS = [block for page in docs_pages.pages() for block in docs_pages.blocks(page)]


def test_the_pages_have_code_blocks():
    assert len(ALL_BLOCKS) >= 30
    assert {b.page for b in ALL_BLOCKS} >= {README, "docs/sdk.md", "docs/plugins.md"}


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda b: f"{b.page}:{b.line}")
def test_every_code_block_runs_in_a_test_or_is_marked_not_run(block):
    assert block.marker, (
        f"{block.page}:{block.line}: precede the block with {docs_pages.NOT_RUN} or "
        "<!-- runs in tests/test_x.py --> (see tests/docs_pages.py)"
    )
    if block.runs_in:
        test = ROOT / block.runs_in
        assert test.is_file(), block.runs_in
        assert block.page in test.read_text(), f"{block.runs_in} does not read {block.page}"


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", docs_pages.pages())
def test_links_stay_in_the_repository_or_go_to_public_sites(page):
    text = docs_pages.text(page)
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://")):
            assert not re.match(r"https?://(localhost|127\.|\[::1\]|10\.|192\.168\.)", target)
            continue
        if target.startswith(("#", "mailto:")):
            continue
        path = (ROOT / page).parent / target.split("#")[0]
        assert path.resolve().is_relative_to(ROOT), f"{page}: {target} leaves the repository"
        assert path.exists(), f"{page}: {target} does not exist"
    assert "../shared" not in text


@pytest.mark.parametrize("page", docs_pages.pages())
def test_no_page_speaks_of_issues_or_of_our_machines(page):
    text = docs_pages.text(page)
    assert not re.search(r"\bissue #?\d", text, re.IGNORECASE), page
    assert not re.search(r"\b(our|this project's) (\d-core )?machines\b", text), page


def test_the_readme_is_a_landing_page():
    text = docs_pages.text(README)
    assert len(text.splitlines()) <= 150
    blocks = docs_pages.blocks(README)
    quick_start = docs_pages.code(README, "sh", docs_pages.section(README, "Quick start"))
    commands = [line for block in quick_start for line in block.splitlines()]
    assert "python3 -m pip install uv && python3 -m uv run gradserve serve" in commands
    assert "python3 -m pip install uv && python3 -m uv run pytest" in commands
    first_python = next(b for b in blocks if b.language == "python")
    assert "from gradserve.client import" in first_python.code and "Value(" in first_python.code
    assert "gradserve_pb2" not in first_python.code  # the micrograd-style example comes first
    linked = set(LINK.findall(text))
    for page in ("docs/getting-started.md", "docs/sdk.md", "docs/server.md", "docs/plugins.md"):
        assert page in linked, page


def test_ci_runs_the_readmes_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\npython3 -m pip install uv && python3 -m uv run pytest\n" in ci


def test_every_page_is_in_the_nav():
    """mkdocs --strict warns about pages left out of the nav (``omitted_files: warn``); this
    says which page, before the build does."""
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in docs_pages.pages()[1:]:
        assert page.removeprefix("docs/") in nav, page


def test_the_settings_table_is_the_parsers():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    page = docs_pages.text("docs/server.md")
    assert generate.with_table(page) == page, "stale: run `uv run python docs/generate.py`"
    table = page.split(generate.START)[1].split(generate.END)[0]
    serve = subparser_serve()
    for action in serve._actions:
        if action.option_strings and action.dest != "help":
            assert f"`{action.option_strings[-1]}`" in table, action.dest
    assert "| `--port` | 50051 | `GRADSERVE_PORT` |" in table


def subparser_serve():
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    return commands.choices["serve"]


@pytest.mark.parametrize("page", docs_pages.pages())
def test_every_default_a_page_states_in_a_table_is_the_parsers(page):
    """A table row ``| `--max-nodes` | 20,000,000 | ...`` anywhere in the documentation
    states the option's default: it must be the parser's (numbers compared as numbers)."""
    defaults = {
        action.option_strings[-1]: action.builtin_default
        for action in subparser_serve()._actions
        if getattr(action, "builtin_default", None) is not None
    }
    for row in re.findall(r"^\| `(--[a-z-]+)` \| ([^|]+) \|", docs_pages.text(page), re.M):
        option, stated = row[0], row[1].strip().replace(",", "")
        if option in defaults and re.fullmatch(r"\d+(\.\d+)?", stated):
            assert float(stated) == float(defaults[option]), (page, option, stated)

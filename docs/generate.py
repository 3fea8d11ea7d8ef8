"""Regenerate the settings table of docs/server.md from `gradserve serve`'s own parser:
`uv run python docs/generate.py` (tests/test_docs_site.py fails while it is stale)."""

import sys
from pathlib import Path

from gradserve import cli_options
from gradserve.server import cli

PAGE = Path(__file__).resolve().parent / "server.md"
START, END = "<!-- settings:start -->", "<!-- settings:end -->"


def serve_table() -> str:
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    return cli_options.markdown_table(commands.choices["serve"])


def with_table(page: str) -> str:
    before, rest = page.split(START, 1)
    after = rest.split(END, 1)[1]
    return f"{before}{START}\n{serve_table()}{END}{after}"


def main() -> int:
    PAGE.write_text(with_table(PAGE.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

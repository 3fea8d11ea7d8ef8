"""Compare the benchmark's figures of two checkouts, interleaved: ``python -m bench.ab
BEFORE AFTER --rounds 5 --into DIR``.

On a machine shared with other work, one run of each side measures the load as much as the
code (figures swing by 2x between two runs of the same code). So each round runs every
workload once on each side, back to back (``python -m bench --workloads W --repeats 1`` in
that checkout with its own environment, through ``uv run``), alternating which side goes
first, and the table takes each figure's median over the rounds. Each run's Markdown is kept
in ``DIR`` (``before-W-R.md``, ``after-W-R.md``) with the load average at its start, so that
``--table-only`` can rebuild the table. Both checkouts should run the same ``bench/``.
"""

import argparse
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from bench.workloads import WORKLOADS

SIDES = ("before", "after")
_NUMBER = re.compile(r"([\d.,]+(?:e[-+]?\d+)?)\s*(\S*)")
_PEER_RATIO = re.compile(r":\s*([\d.]+)x")


def figures(markdown: str) -> dict[tuple[str, str], tuple[float, str]]:
    """Each gradserve figure of a bench report's Results table by (workload, measurement),
    with its unit; and, for rows compared with a peer measured in the same run (W3's echoes,
    W7's value + gradient), that in-run ratio as a figure of its own."""
    found = {}
    results = markdown.split("## Agreement")[0]
    for line in results.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 6 or not cells[0].startswith("W"):
            continue
        number = _NUMBER.match(cells[2])
        if number is None:
            continue
        found[cells[0], cells[1]] = float(number[1].replace(",", "")), number[2]
        ratio = _PEER_RATIO.search(cells[3])
        if ratio and cells[0].startswith(("W3", "W7")):
            found[cells[0], f"{cells[1]}, over its in-run peer"] = float(ratio[1]), "x"
    return found


def table(reports: dict[str, list[str]]) -> str:
    """The Markdown table of each figure's median per side, from each side's reports."""
    values: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    units = {}
    for side in SIDES:
        for report in reports[side]:
            for key, (value, unit) in figures(report).items():
                values[key][side].append(value)
                units[key] = unit
    lines = [
        "| Workload | Measurement | before (median) | after (median) | after / before | runs |",
        "|---|---|---|---|---|---|",
    ]
    for (workload, measurement), sides in values.items():
        before, after = sides["before"], sides["after"]
        if not before or not after:
            continue
        low, high = statistics.median(before), statistics.median(after)
        unit = f" {units[workload, measurement]}".rstrip()
        ratio = f"{high / low:.2f}" if low else "-"
        lines.append(
            f"| {workload} | {measurement} | {low:.4g}{unit} | {high:.4g}{unit} | {ratio} "
            f"| {len(before)} + {len(after)} |"
        )
    return "\n".join(lines)


def run_one(checkout: Path, workload: str, output: Path) -> int:
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"{output.stem}: load {' '.join(load)}", file=sys.stderr, flush=True)
    command = ["nice", "python3", "-m", "uv", "run", "python", "-m", "bench"]
    command += ["--workloads", workload, "--repeats", "1", "--output", str(output)]
    done = subprocess.run(command, cwd=checkout, capture_output=True, text=True)
    output.with_suffix(".log").write_text(f"load {' '.join(load)}\n{done.stderr}")
    return done.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("before", type=Path, help="the first checkout")
    parser.add_argument("after", type=Path, help="the second checkout")
    parser.add_argument("--rounds", type=int, default=5, help="(default 5)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--into", type=Path, required=True, help="folder for each run's report")
    parser.add_argument("--table-only", action="store_true", help="rebuild the table from --into")
    args = parser.parse_args(argv)
    args.into.mkdir(parents=True, exist_ok=True)
    checkouts = dict(zip(SIDES, (args.before, args.after), strict=True))
    failed = 0
    for round_ in range(1, 0 if args.table_only else args.rounds + 1):
        for workload in args.workloads.split(","):
            order = SIDES if round_ % 2 else SIDES[::-1]
            for side in order:
                output = args.into / f"{side}-{workload}-{round_}.md"
                failed += run_one(checkouts[side], workload, output) != 0
    reports = {
        side: [p.read_text() for p in sorted(args.into.glob(f"{side}-*.md"))] for side in SIDES
    }
    print(table(reports))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

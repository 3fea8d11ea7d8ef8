"""The machine description and the Markdown that goes to BENCHMARKS.md."""

import datetime
import os
import platform
import re
import subprocess
from importlib.metadata import version
from pathlib import Path

import numpy as np

from bench.measure import TOLERANCE, Report


def _proc_field(path: str, pattern: str) -> str:
    try:
        match = re.search(pattern, Path(path).read_text(), re.MULTILINE)
    except OSError:
        return "unknown"
    return match.group(1).strip() if match else "unknown"


def machine() -> dict[str, str]:
    memory_kib = _proc_field("/proc/meminfo", r"^MemTotal:\s+(\d+) kB")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": _proc_field("/proc/cpuinfo", r"^model name\s*:(.*)$"),
        "cores": str(os.cpu_count()),
        "memory": f"{int(memory_kib) / 2**20:.1f} GiB" if memory_kib.isdigit() else "unknown",
        "OS": platform.platform(),
        "load average at the end (1, 5, 15 min; other processes share the cores)": ", ".join(
            f"{load:.2f}" for load in os.getloadavg()
        ),
        "Python": platform.python_version(),
        "NumPy": np.__version__,
        "grpcio": version("grpcio"),
        "protobuf": version("protobuf"),
        "gradserve commit": commit or "unknown",
    }


def markdown(report: Report, command: str) -> str:
    lines = [
        f"Written by `{command}` (docs/benchmarks.md). Times are medians of the stated",
        "number of runs in this one run of the harness; ratios compare figures from the same",
        "run. A target that is not met says FAIL.",
        "",
        "## Machine",
        "",
        *[f"- {name}: {value}" for name, value in machine().items()],
        "",
        "## Results",
        "",
        "| Workload | Measurement | gradserve | Compared with | Target | Result |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r.workload} | {r.measurement} | {r.value} | {r.comparison} | {r.target} "
            f"| {r.result} |"
            for r in report.rows
        ],
        "",
        "## Agreement",
        "",
        f"Results agree when {TOLERANCE} for every entry (a the first, b the second named).",
        "Worst is the largest |a - b| as a fraction of that bound.",
        "",
        "| Workload | Compared | Worst | Agree |",
        "|---|---|---|---|",
        *[
            f"| {workload} | {what} | {worst:.2g} | {'yes' if ok else 'NO'} |"
            for workload, what, worst, ok in report.agreements
        ],
        "",
        "## Notes",
        "",
        *[f"- {note}" for note in report.notes],
        "",
    ]
    return "\n".join(lines)


START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def write_section(path: Path, section: str) -> None:
    """Put ``section`` between the harness's markers in ``path``, keeping everything else
    (other benchmarks, such as the soak's, share the file)."""
    block = f"{START}\n{section.rstrip()}\n{END}"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    if START in text and END in text:
        before, rest = text.split(START, 1)
        text = before + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)

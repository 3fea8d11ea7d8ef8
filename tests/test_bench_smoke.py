"""The benchmark harness (bench/) on tiny sizes, so that it cannot rot unnoticed."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench import graphs
from bench.measure import ATOL, RTOL, Report

ROOT = Path(__file__).resolve().parent.parent


def test_the_full_workloads_have_the_issues_node_counts():
    shape = graphs.MlpShape(inputs=300, width=300, layers=3)
    assert shape.node_count == 812_399
    columns = graphs.mlp(shape, np.zeros(shape.leaf_count))
    assert columns.node_count == 812_399
    assert columns.input_counts.sum() == len(columns.input_ids)
    assert graphs.chain(graphs.chain_links(1_000_000), np.zeros(333_334)).node_count == 1_000_000
    neuron = graphs.mlp(graphs.NEURON_SHAPE, graphs.NEURON_LEAVES)
    assert neuron.node_count == 10


def test_the_neuron_matches_the_notebooks_closed_form():
    """tanh(x1*w1 + x2*w2 + b): d/dw1 = x1 (1 - o^2), d/dx1 = w1 (1 - o^2), d/db = 1 - o^2."""
    from bench import peers  # micrograd with the lecture's tanh

    x1, x2, w1, w2, b = graphs.NEURON_LEAVES
    slope = 1 - np.tanh(x1 * w1 + x2 * w2 + b) ** 2
    _, grads = peers.timed_backprop(
        peers.micrograd_peer(),
        graphs.NEURON_LEAVES,
        lambda leaves: peers.mlp_loss(leaves, graphs.NEURON_SHAPE),
    )
    np.testing.assert_allclose(grads, [w1 * slope, w2 * slope, x1 * slope, x2 * slope, slope])


def test_agreement_flags_a_difference_beyond_the_tolerance():
    report = Report()
    exact = np.array([1.0, -2.0, 3e-12])
    report.agree("w", "same", exact, exact.copy())
    report.agree("w", "last bits", exact * (1 + RTOL / 10), exact)
    assert report.all_agree
    report.agree("w", "off", exact + np.array([0, 10 * (ATOL + 2 * RTOL), 0]), exact)
    assert not report.all_agree
    report.agree("w", "shape", exact[:2], exact)
    assert [ok for *_, ok in report.agreements] == [True, True, False, False]


def test_a_quick_run_writes_every_workload_and_agrees(tmp_path):
    output = tmp_path / "BENCHMARKS.md"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--repeats",
            "1",
            "--seconds",
            "0.5",
            "--output",
            str(output),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    text = output.read_text()
    for workload in (
        "W1 mlp",
        "W2 chain",
        "W3 neuron",
        "W4 batch",
        "W5 concurrent",
        "W6 training",
        "W7 hvp",
    ):
        assert f"| {workload}" in text
    assert "| NO |" not in text
    agreement = text.split("## Agreement")[1].split("## Notes")[0]
    assert agreement.count("| yes |") >= 8
    assert "- cores: " in text and "- NumPy: " in text
    results = text.split("## Results")[1].split("## Agreement")[0]
    verdicts = [verdict_matches(row) for row in table_rows(results)]
    assert verdicts.count(True) >= 5 and False not in verdicts, results


def table_rows(markdown: str) -> list[list[str]]:
    """The body rows of the first table, as lists of cells."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


NUMBER = r"\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?"  # 812,399 or 0.376 or 1.1e-10


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def verdict_matches(row: list[str]) -> bool | None:
    """Whether the row's result is the verdict its figures give against its target (None
    for a row without a target). Ratio targets (">= 5x micrograd") read the last ratio in
    the comparison, or the value; others ("<= 200 bytes/node") the value, and "zero errors"
    the comparison. Figures within 2% of the target may round either way."""
    _, _, value, comparison, target, result = row
    if not target:
        assert result == "", row
        return None
    assert result in ("PASS", "FAIL", "SKIP"), row
    if result == "SKIP":
        return True
    if target == "zero errors":
        return (result == "PASS") == comparison.endswith("errors 0")
    bound = re.fullmatch(rf"(>=|<=) ({NUMBER})(x?)(?: .*)?", target)
    assert bound, row
    sign, limit, ratio = bound[1], _number(bound[2]), bound[3]
    if ratio:
        figures = re.findall(rf"({NUMBER})x", comparison) or re.findall(rf"({NUMBER})x", value)
        figure = _number(figures[-1])
    else:
        figure = _number(re.findall(NUMBER, value)[0])
    if abs(figure - limit) <= 0.02 * limit:
        return True
    met = figure >= limit if sign == ">=" else figure <= limit
    return (result == "PASS") == met


def test_a_subset_runs_alone_and_a_bad_name_is_an_error(tmp_path):
    output = tmp_path / "B.md"
    command = [sys.executable, "-m", "bench", "--quick", "--repeats", "1", "--output", str(output)]
    done = subprocess.run(
        [*command, "--workloads", "neuron"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "W3 neuron" in output.read_text() and "W1 mlp" not in output.read_text()
    bad = subprocess.run(
        [*command, "--workloads", "mlp,fft"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2
    assert "unknown workload(s) fft" in bad.stderr


def test_a_quick_run_leaves_benchmarks_md_alone(tmp_path):
    """--quick's tiny-size figures go to build/bench-quick.md, never over BENCHMARKS.md."""
    committed = "# Benchmarks\n\nthe full run's figures\n"
    (tmp_path / "BENCHMARKS.md").write_text(committed)
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "bench", "--quick", "--repeats", "1", "--workloads", "neuron"]
    done = subprocess.run(
        command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "BENCHMARKS.md").read_text() == committed
    assert "W3 neuron" in (tmp_path / "build" / "bench-quick.md").read_text()
    refused = subprocess.run(
        [*command, "--output", "BENCHMARKS.md"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2, refused.stderr
    assert "BENCHMARKS.md" in refused.stderr
    assert (tmp_path / "BENCHMARKS.md").read_text() == committed


def test_the_harness_rewrites_only_its_own_section(tmp_path):
    from bench.report import write_section

    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Soak\n\nsoak figures\n")
    write_section(path, "first run")
    write_section(path, "second run")
    text = path.read_text()
    assert "soak figures" in text and "second run" in text and "first run" not in text
    assert text.count("<!-- bench:start -->") == 1


def test_the_ab_table_takes_each_figures_median_over_the_rounds():
    """bench.ab: each side's figures by workload and measurement, the in-run ratio of W3's
    rows as a figure of its own, and medians over rounds (not means: one loaded round
    must not move them)."""
    from bench.ab import table

    def report(p50: float, echo_ratio: float, batch: str) -> str:
        return (
            "## Results\n\n"
            "| Workload | Measurement | gradserve | Compared with | Target | Result |\n"
            "|---|---|---|---|---|---|\n"
            f"| W3 neuron (10 nodes) | p50 | {p50} ms | echo p50 0.3 ms: {echo_ratio}x | | |\n"
            f"| W4 batch | warm | {batch} | | | |\n"
            "| W7 hvp | HVP vs finite differences | 5.3e-08 | | | |\n"
            "\n## Agreement\n\n| W3 neuron (10 nodes) | gradserve vs micrograd | 2e-09 | yes |\n"
        )

    reports = {
        "before": [report(0.4, 1.3, "1.0 s"), report(0.5, 1.4, "1,000 s"), report(9.0, 1.5, "2 s")],
        "after": [report(0.6, 1.2, "1.5 s"), report(0.3, 1.2, "1.5 s"), report(0.45, 9.0, "3 s")],
    }
    rows = table(reports).splitlines()[2:]
    assert rows == [
        "| W3 neuron (10 nodes) | p50 | 0.5 ms | 0.45 ms | 0.90 | 3 + 3 |",
        "| W3 neuron (10 nodes) | p50, over its in-run peer | 1.4 x | 1.2 x | 0.86 | 3 + 3 |",
        "| W4 batch | warm | 2 s | 1.5 s | 0.75 | 3 + 3 |",
        "| W7 hvp | HVP vs finite differences | 5.3e-08 | 5.3e-08 | 1.00 | 3 + 3 |",
    ]


def test_the_train_cpu_harness_answers_every_message_as_the_whole_graph_was():
    from bench import train_cpu  # it raises when an answer differs

    for name in train_cpu.WORKLOADS:
        for metrics in (False, True):
            (figure,) = train_cpu.microseconds_per_message(name, 20, streams=1, metrics=metrics)
            assert figure > 0


def test_call_memory_reports_a_charge_at_least_the_peak(monkeypatch, capsys):
    """bench/call_memory.py on a wide HVP of 2,000 inputs: the charge, the peak it is
    compared with, and the allocation sites at the largest sample."""
    from bench import abusers, call_memory

    monkeypatch.setitem(call_memory.REQUESTS, "small", lambda: abusers.wide_hvp(2_000))
    call_memory.measure("small", sites=3)
    out = capsys.readouterr().out
    ratio = float(re.search(r"charged ([0-9.]+)x that", out).group(1))
    assert ratio >= 1.0, out
    assert "by line:" in out and "MiB" in out.split("by line:")[1], out

"""The README's quick start is what CI runs: the test command verbatim, and the PEP 668
path (uv in a venv of its own) with Debian's python3 until `gradserve health` says SERVING.
.ci/run reads that line from README.md, so the page and CI cannot drift apart."""

from docs_pages import ROOT, blocks, section

CI = (ROOT / ".ci" / "run").read_text()


def quick_start_blocks() -> list[str]:
    return [block.code for block in blocks("README.md", section("README.md", "Quick start"))]


def test_ci_runs_the_readme_test_command_verbatim():
    serve_and_test = quick_start_blocks()[0].splitlines()
    assert serve_and_test[1] == "python3 -m pip install uv && python3 -m uv run pytest"
    assert serve_and_test[1] in CI.splitlines()


def test_ci_runs_the_pep_668_line_it_reads_from_the_readme():
    pep_668 = quick_start_blocks()[1].splitlines()
    assert pep_668[0].startswith("python3 -m venv ~/.venvs/uv ")
    assert pep_668[0].endswith("uv run gradserve serve")
    assert "grep -m1 '^python3 -m venv ~/.venvs/uv ' README.md" in CI
    assert "--break-system-packages" not in CI

"""docs/plugins.md's commands that install and remove an op plugin, run as written: they act on
the project's .venv, and each is undone before the test ends."""

import shlex
import subprocess
from pathlib import Path

import docs_pages
import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PAGE = "docs/plugins.md"


def blocks(language: str) -> list[str]:
    return docs_pages.code(PAGE, language)


def commands(block: str, root: Path) -> list[list[str]]:
    """Each line of a shell block as arguments (comments dropped, the page's placeholder
    for the repository's folder filled in)."""
    lines = [line.split("  #")[0] for line in block.strip().splitlines()]
    return [shlex.split(line.replace("/path/to/gradserve", str(root))) for line in lines]


def run(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(arguments, cwd=cwd, capture_output=True, text=True, timeout=300)


def installed(distribution: str) -> bool:
    """Whether the project's .venv holds ``distribution`` (asked in a fresh interpreter)."""
    probe = f"import importlib.metadata as m; m.distribution({distribution!r})"
    return run([str(VENV_PYTHON), "-c", probe], ROOT).returncode == 0


@pytest.fixture
def removed_afterwards():
    """Distributions to uninstall from the project's .venv at the end, whatever happens."""
    names: list[str] = []
    yield names
    for name in names:
        run(["python3", "-m", "uv", "pip", "uninstall", "--python", ".venv", name], ROOT)


def test_the_special_plugin_installs_into_the_project_and_goes_again(removed_afterwards):
    install, check, uninstall = commands(blocks("sh")[1], ROOT)
    removed_afterwards.append("gradserve-ops-special")
    assert not installed("gradserve-ops-special")
    done = run(install, ROOT)
    assert done.returncode == 0, done.stderr
    assert installed("gradserve-ops-special")
    done = run(check, ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 of 1 ops passed" in done.stdout and "gradserve-ops-special" in done.stdout
    done = run(uninstall, ROOT)
    assert done.returncode == 0, done.stderr
    assert not installed("gradserve-ops-special")


def test_a_new_plugin_installs_from_its_folder(tmp_path, removed_afterwards):
    """The page's complete example plugin, written out and installed as it says."""
    plugin = tmp_path / "gradserve-ops-log2"
    plugin.mkdir()
    (plugin / "pyproject.toml").write_text(blocks("toml")[0])
    source = blocks("python")[0]
    (plugin / source.splitlines()[0].removeprefix("# ")).write_text(source)
    install, check, uninstall = commands(blocks("sh")[0], ROOT)
    removed_afterwards.append("gradserve-ops-log2")
    done = run(install, plugin)
    assert done.returncode == 0, done.stderr
    done = run(check, plugin)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 of 1 ops passed" in done.stdout and "gradserve-ops-log2" in done.stdout
    done = run(uninstall, plugin)
    assert done.returncode == 0, done.stderr
    assert not installed("gradserve-ops-log2")

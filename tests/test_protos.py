"""The committed generated code matches the .proto, and the .proto passes buf lint."""

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
GENERATED = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def test_regenerating_changes_nothing(tmp_path):
    generator = [sys.executable, str(PROTOS / "generate.py"), "--out", str(tmp_path)]
    subprocess.run(generator, check=True)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(
        p.relative_to(PROTOS) for p in PROTOS.rglob("*") if p.name.endswith(GENERATED)
    )
    assert fresh == committed
    assert fresh, "the generator produced nothing"
    for relative in fresh:
        assert filecmp.cmp(tmp_path / relative, PROTOS / relative, shallow=False), (
            f"{relative} is stale: run `uv run python protos/generate.py` and commit"
        )


def test_buf_lint_passes():
    buf = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
    if buf is None:
        pytest.fail("buf is not installed; it is a dev dependency (buf-bin)")
    result = subprocess.run([buf, "lint"], cwd=PROTOS, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

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


def test_the_engine_knows_the_wire_selections_by_their_numbers():
    from gradserve.server.engine import small_call
    from gradserve.v1 import gradserve_pb2 as pb

    for name in ("UNSPECIFIED", "ALL", "LEAVES", "NODES"):
        assert getattr(small_call, f"SELECTION_{name}") == getattr(pb, f"SELECTION_{name}")


def test_the_engine_imports_no_grpc_and_no_protobuf():
    """The engine is the core: the gRPC edge calls it, never the reverse (DESIGN.md)."""
    probe = (
        "import sys, pkgutil, importlib, gradserve.server.engine as e\n"
        "for m in pkgutil.iter_modules(e.__path__):\n"
        "    importlib.import_module(f'{e.__name__}.{m.name}')\n"
        "print(' '.join(sorted(n for n in sys.modules if n.split('.')[0] in ('grpc', 'google'))))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []

"""The committed generated code matches the .proto, the .proto passes buf lint, and v1
changes only additively (buf breaking against the committed baseline image)."""

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


BASELINE = PROTOS / "baseline" / "gradserve_v1.binpb"


def _buf() -> str:
    buf = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
    if buf is None:
        pytest.fail("buf is not installed; it is a dev dependency (buf-bin)")
    return buf


def test_buf_lint_passes():
    result = subprocess.run([_buf(), "lint"], cwd=PROTOS, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _breaking(module: Path) -> subprocess.CompletedProcess:
    against = ["--against", str(BASELINE)]
    return subprocess.run(
        [_buf(), "breaking", *against], cwd=module, capture_output=True, text=True
    )


def test_v1_changes_only_additively():
    """See protos/baseline/README.md to update the baseline on purpose."""
    result = _breaking(PROTOS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_breaking_check_catches_a_removed_field(tmp_path):
    module = tmp_path / "protos"
    shutil.copytree(PROTOS, module, ignore=shutil.ignore_patterns("*.py", "*.pyi", "baseline"))
    proto = module / "gradserve" / "v1" / "gradserve.proto"
    text = proto.read_text()
    assert "  bool allow_non_finite = 9;\n" in text
    proto.write_text(text.replace("  bool allow_non_finite = 9;\n", ""))
    result = _breaking(module)
    assert result.returncode != 0
    assert "allow_non_finite" in result.stdout + result.stderr


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


def test_the_structure_digest_is_written_once_in_the_protos_package():
    """Client and server import one digest function (gradserve.v1.structure), so the SDK's
    routing header and the server's plan_digest cannot drift apart."""
    root = Path(__file__).resolve().parents[1]
    for folder in ("client", "server"):
        for path in (root / folder).rglob("*.py"):
            assert "sha256" not in path.read_text(), path
    from graphs import neuron

    from gradserve.server.engine.plan_cache import structure_digest
    from gradserve.v1.structure import structure_digest as shared

    g = neuron()[0].arrays()
    digest = structure_digest(g)
    assert digest == shared(g.op_names, g.node_ops, g.input_counts, g.input_ids, g.labels)
    assert len(digest) == 16 and digest != shared(g.op_names, g.node_ops, [], [], [])

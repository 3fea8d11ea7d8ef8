"""Regenerate the Python modules for every .proto file under this folder.

Run from anywhere: ``uv run python protos/generate.py``. The generated ``_pb2.py``,
``_pb2.pyi`` and ``_pb2_grpc.py`` files are committed; ``tests/test_protos.py`` checks that
running this script changes nothing. ``--out DIR`` writes elsewhere (the test uses it).
"""

import argparse
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent


def generate(out_dir: Path) -> None:
    """Compile every .proto under PROTO_ROOT into out_dir, mirroring the package folders."""
    protos = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
    well_known = resources.files("grpc_tools") / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_ROOT, help="output root folder")
    generate(parser.parse_args().out)

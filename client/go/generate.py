"""Regenerate the Go stubs (client/go/gradservev1) from protos/gradserve/v1/*.proto.

It also copies protos/gradserve/v1/service_config.json (the retry policy) into the client
package, which embeds it.

Run from anywhere: ``python3 -m uv run python client/go/generate.py``. It needs Go: the
plugins, protoc-gen-go and protoc-gen-go-grpc, are the versions pinned by client/go/go.mod's
``tool`` lines (``go tool -n`` builds them, with the module proxy's sources); protoc itself is
grpc_tools', the one that generates the Python modules. The generated files are committed;
``tests/test_go_client.py`` checks that running this changes nothing. ``--out DIR`` writes
DIR/gradservev1 instead (the test uses it).

The files land where the proto's ``go_package`` says, relative to the Go import path of
client/go (``github.com/gradserve/gradserve/client/go``): protoc's ``module=`` option strips
that prefix.
"""

import argparse
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

GO_ROOT = Path(__file__).resolve().parent
PROTO_ROOT = GO_ROOT.parents[1] / "protos"
MODULE = "github.com/gradserve/gradserve/client/go"
PLUGINS = ("protoc-gen-go", "protoc-gen-go-grpc")
SERVICE_CONFIG = PROTO_ROOT / "gradserve" / "v1" / "service_config.json"


def pinned_plugin(name: str) -> str:
    """The path of the plugin ``name`` at go.mod's version, built (once) by ``go tool``."""
    if shutil.which("go") is None:
        sys.exit("Go is not on PATH: it builds the pinned protoc plugins (client/go/go.mod)")
    built = subprocess.run(
        ["go", "tool", "-n", name], cwd=GO_ROOT, capture_output=True, text=True, check=False
    )
    if built.returncode != 0:
        sys.exit(f"go tool -n {name} failed:\n{built.stderr}")
    return built.stdout.strip()


def generate(out_dir: Path) -> None:
    """Write the Go package for every .proto under PROTO_ROOT into out_dir/<package>."""
    plugins = [f"--plugin={name}={pinned_plugin(name)}" for name in PLUGINS]
    protos = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
    well_known = resources.files("grpc_tools") / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        *plugins,
        f"--go_out={out_dir}",
        f"--go_opt=module={MODULE}",
        f"--go-grpc_out={out_dir}",
        f"--go-grpc_opt=module={MODULE}",
        *protos,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    # The retry policy every client shares, embedded by the client package (go:embed cannot
    # reach outside the module).
    (out_dir / "gradserve").mkdir(exist_ok=True)
    shutil.copyfile(SERVICE_CONFIG, out_dir / "gradserve" / SERVICE_CONFIG.name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=GO_ROOT, help="output root folder")
    generate(parser.parse_args().out)

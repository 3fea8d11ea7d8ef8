"""The Go client (client/go, a Go module) against live servers, through `go vet` and
`go test`, its generated stubs, and a module of a user's that requires it.

Go resolves the module's requirements (go.mod, go.sum) through the module proxy, as any Go
build does. One `go test ./...` run builds the package and runs its tests and the
conformance suite against three servers (tests/conformance_suite.py): the conformance server
(plaintext, bearer token), a TLS server and a mutual-TLS server with a token.
"""

import filecmp
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conformance_suite import docs_example, load
from system_tools import require_tool

ROOT = Path(__file__).resolve().parents[1]
GO_CLIENT = ROOT / "client" / "go"
MODULE = "github.com/gradserve/gradserve/client/go"
GO_ENV = {**os.environ, "GOFLAGS": "-mod=readonly"}  # go.mod and go.sum are as committed

pytestmark = pytest.mark.requires_tool("go")
PROTOC_LINE = re.compile(r"// (\t|- )protoc +v")  # the "versions:" line naming protoc


def go(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600):
    return subprocess.run(
        ["go", *args],
        cwd=cwd,
        env={**GO_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_regenerating_the_go_stubs_changes_nothing(tmp_path):
    generator = [sys.executable, str(GO_CLIENT / "generate.py"), "--out", str(tmp_path)]
    subprocess.run(generator, check=True)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert fresh == [
        Path("gradserve/service_config.json"),
        Path("gradservev1/gradserve.pb.go"),
        Path("gradservev1/gradserve_grpc.pb.go"),
    ]
    for relative in fresh:
        assert filecmp.cmp(tmp_path / relative, GO_CLIENT / relative, shallow=False), (
            f"{relative} is stale: run `python3 -m uv run python client/go/generate.py` and commit"
        )


def test_plain_protoc_needs_no_m_flags(tmp_path):
    """`protoc --go_out=. --go-grpc_out=.` as a Go team would run it, with the pinned
    plugins: the files land under the go_package import path and match the committed ones
    but for protoc's version line."""
    require_tool("protoc")
    plugins = []
    for name in ("protoc-gen-go", "protoc-gen-go-grpc"):
        built = go("tool", "-n", name, cwd=GO_CLIENT)
        assert built.returncode == 0, built.stderr
        plugins.append(f"--plugin={name}={built.stdout.strip()}")
    protos = ROOT / "protos"
    command = [
        "protoc",
        f"-I{protos}",
        *plugins,
        f"--go_out={tmp_path}",
        f"--go-grpc_out={tmp_path}",
    ]
    subprocess.run([*command, "gradserve/v1/gradserve.proto"], check=True, cwd=protos)
    package = tmp_path / MODULE / "gradservev1"
    for name in ("gradserve.pb.go", "gradserve_grpc.pb.go"):
        fresh, committed = (
            [line for line in path.read_text().splitlines() if not PROTOC_LINE.match(line)]
            for path in (package / name, GO_CLIENT / "gradservev1" / name)
        )
        assert fresh == committed, name


def test_the_go_client_is_vetted_and_passes_its_tests_and_the_conformance_suite(
    client_test_env,
):
    vetted = go("vet", "./...", cwd=GO_CLIENT)
    assert vetted.returncode == 0, vetted.stdout + vetted.stderr
    result = go("test", "-count=1", "-v", "./...", cwd=GO_CLIENT, env=client_test_env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "--- SKIP" not in output, output
    assert "--- FAIL" not in output
    assert output.count("--- PASS: TestConformance/") == len(load()["cases"]), output


def test_a_module_outside_the_repository_requires_the_client_and_runs_the_docs_example(
    target, tmp_path
):
    """A user's module: `require` the client (a `replace` to this checkout stands in for a
    published tag), docs/clients/go.md's example as its main package, `go mod tidy`, build, run."""
    version = (ROOT / "VERSION").read_text().strip()
    user = tmp_path / "neuron"
    user.mkdir()
    (user / "go.mod").write_text(
        f"module example.com/neuron\n\ngo 1.26\n\nrequire {MODULE} v{version}\n\n"
        f"replace {MODULE} => {GO_CLIENT}\n"
    )
    (user / "main.go").write_text(
        docs_example("docs/clients/go.md", "go").replace("localhost:50051", target)
    )
    for step in (["mod", "tidy"], ["build", "-o", "neuron", "."]):
        done = go(*step, cwd=user, env={"GOFLAGS": ""})
        assert done.returncode == 0, done.stdout + done.stderr
    ran = subprocess.run([str(user / "neuron")], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout == "o = 0.7071, do/dx1 = -1.5000, do/dw1 = 1.0000\n"

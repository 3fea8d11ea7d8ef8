"""The Go client (client/go) against live servers, through `go test`, and its generated stubs.

Go comes from Debian (see client/go/README.md; `.ci/run` installs it) and builds offline in
GOPATH mode: a temporary GOPATH holds the repository under its import path,
github.com/gradserve/gradserve, beside Debian's Go source tree. One `go test` run builds the
package once and runs its tests and the conformance suite against three servers
(tests/conformance_suite.py): the conformance server (plaintext, bearer token), a TLS server
and a mutual-TLS server with a token.
"""

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conformance_suite import docs_example, load

ROOT = Path(__file__).resolve().parents[1]
GO_CLIENT = ROOT / "client" / "go"
IMPORT_PATH = "github.com/gradserve/gradserve"
DEBIAN_GOPATH = "/usr/share/gocode"


def test_regenerating_the_go_stubs_changes_nothing(tmp_path):
    if shutil.which("protoc-gen-go") is None or shutil.which("protoc-gen-go-grpc") is None:
        pytest.skip("protoc-gen-go(-grpc) is not installed (CI installs them from apt)")
    generator = [sys.executable, str(GO_CLIENT / "generate.py"), "--out", str(tmp_path)]
    subprocess.run(generator, check=True)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.go"))
    assert fresh == [Path("gradservev1/gradserve.pb.go"), Path("gradservev1/gradserve_grpc.pb.go")]
    for relative in fresh:
        assert filecmp.cmp(tmp_path / relative, GO_CLIENT / relative, shallow=False), (
            f"{relative} is stale: run `python3 -m uv run python client/go/generate.py` and commit"
        )


def test_plain_protoc_needs_no_m_flags(tmp_path):
    """`protoc --go_out=. --go-grpc_out=.` as a Go team would run it: the files land under the
    go_package import path and match the committed ones but for protoc's version line."""
    tools = ("protoc", "protoc-gen-go", "protoc-gen-go-grpc")
    if any(shutil.which(tool) is None for tool in tools):
        pytest.skip("protoc and its Go plugins are not installed (CI installs them from apt)")
    protos = ROOT / "protos"
    command = ["protoc", f"-I{protos}", f"--go_out={tmp_path}", f"--go-grpc_out={tmp_path}"]
    subprocess.run([*command, "gradserve/v1/gradserve.proto"], check=True, cwd=protos)
    package = tmp_path / IMPORT_PATH / "client" / "go" / "gradservev1"
    for name in ("gradserve.pb.go", "gradserve_grpc.pb.go"):
        fresh, committed = (
            [line for line in path.read_text().splitlines() if not line.startswith("// \tprotoc ")]
            for path in (package / name, GO_CLIENT / "gradservev1" / name)
        )
        assert fresh == committed, name


def go_environment(gopath: Path) -> dict[str, str]:
    """GOPATH mode, offline: this repository under its import path, then Debian's tree."""
    link = gopath / "src" / IMPORT_PATH
    link.parent.mkdir(parents=True)
    link.symlink_to(ROOT)
    return {
        **os.environ,
        "GO111MODULE": "off",
        "GOPROXY": "off",
        "GOFLAGS": "",
        "GOPATH": f"{gopath}{os.pathsep}{DEBIAN_GOPATH}",
    }


def test_the_go_client_passes_its_tests_and_the_conformance_suite(
    client_test_env, target, tmp_path
):
    """One build of the package: `go test` (its tests and the conformance suite), then the
    docs/clients/go.md's example with the build cache warm."""
    if shutil.which("go") is None:
        pytest.skip("Go is not installed (CI installs golang-go and the packages from apt)")
    env = go_environment(tmp_path / "gopath")
    result = subprocess.run(
        ["go", "test", "-count=1", "-v", f"{IMPORT_PATH}/client/go/gradserve"],
        cwd=tmp_path,
        env={**env, **client_test_env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "--- SKIP" not in output, output
    assert "--- FAIL" not in output
    assert output.count("--- PASS: TestConformance/") == len(load()["cases"]), output

    example = tmp_path / "example" / "main.go"
    example.parent.mkdir()
    example.write_text(docs_example("docs/clients/go.md", "go").replace("localhost:50051", target))
    ran = subprocess.run(
        ["go", "run", str(example)], env=env, capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout == "o = 0.7071, do/dx1 = -1.5000, do/dw1 = 1.0000\n"

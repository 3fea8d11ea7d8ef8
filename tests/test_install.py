"""Installed as a user installs it: the wheels and sdists built with one command, then fresh
environments made with plain `python -m venv` and pip (no uv, the repository not on
sys.path), `--find-links` to the built wheels and the package index for the rest.

(a) a client environment runs the README's SDK example and a Hessian against a server;
(b) a server environment, holding only the server's distributions (server, ops-core,
    protos; no dev or test tools), serves: `gradserve health` says SERVING and
    `gradserve ops check` passes;
(c) installing gradserve-ops-special into it adds its ops to ListOps after a restart.

The environments' installed sizes are printed (docs/install.md quotes them).
"""

import json
import math
import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import grpc
import pytest
from docs_pages import blocks, section
from servers import Served

from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
VERSION = (ROOT / "VERSION").read_text().strip()
DISTRIBUTIONS = ["gradserve_protos", "gradserve_ops_core", "gradserve_server"]
DISTRIBUTIONS += ["gradserve_client", "gradserve_ops_special"]
DEV_TOOLS = {"pytest", "ruff", "uv", "grpcio-tools", "hypothesis", "gradserve-client"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The README's build command (every workspace member), then the example plugin."""
    out = tmp_path_factory.mktemp("dist")
    uv = [sys.executable, "-m", "uv", "build", "--quiet", "--out-dir", str(out)]
    subprocess.run([*uv, "--all-packages"], cwd=ROOT, check=True, timeout=600)
    subprocess.run([*uv, "ops_plugins/special"], cwd=ROOT, check=True, timeout=600)
    return out


def environment(folder: Path, *requirements: str, find_links: Path) -> Path:
    """A fresh venv at ``folder`` with ``requirements`` installed by pip; its python."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=300)
    python = folder / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--find-links", str(find_links), *requirements], check=True, timeout=900)
    return python


def clean_env() -> dict[str, str]:
    """This process's environment without anything pointing at the repository or its venv."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "UV_PROJECT_ENVIRONMENT"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def run_python(python: Path, code: str, cwd: Path) -> str:
    done = subprocess.run(
        [str(python), "-I", "-c", code],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def installed(python: Path) -> set[str]:
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {entry["name"].lower() for entry in json.loads(listed.stdout)}


def size_mib(folder: Path) -> float:
    return sum(p.lstat().st_size for p in folder.rglob("*")) / 2**20


def readme_sdk_example() -> str:
    """The README's SDK example: the Python block of its "A first gradient" section."""
    found = blocks("README.md", section("README.md", "A first gradient"))
    return next(block.code for block in found if block.language == "python")


def platform_tag() -> str:
    """This interpreter's wheel tag (the client's wheel holds a compiled module)."""
    python = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return f"{python}-{python}-{sysconfig.get_platform().replace('-', '_').replace('.', '_')}"


def test_one_command_builds_a_wheel_and_an_sdist_of_each_with_index_metadata(dist):
    names = sorted(p.name for p in dist.iterdir() if p.suffix in (".whl", ".gz"))
    expected = [f"{d}-{VERSION}{suffix}" for d in DISTRIBUTIONS for suffix in (".tar.gz",)]
    expected += [
        f"{d}-{VERSION}-{platform_tag() if d == 'gradserve_client' else 'py3-none-any'}.whl"
        for d in DISTRIBUTIONS
    ]
    assert names == sorted(expected)
    [client] = dist.glob("gradserve_client-*.whl")
    with zipfile.ZipFile(client) as archive:
        members = archive.namelist()
    compiled = [n for n in members if n.startswith("gradserve/client/compiled_recorder")]
    assert len(compiled) == 1 and compiled[0].endswith(".so"), compiled  # the compiled core
    for wheel in dist.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            [metadata] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
            text = archive.read(metadata).decode()
        assert f"\nVersion: {VERSION}\n" in text, wheel.name
        assert "\nLicense-Expression: MIT\n" in text, wheel.name
        assert "\nDescription-Content-Type: text/markdown\n" in text, wheel.name
        assert "\nClassifier: Programming Language :: Python :: 3.11\n" in text, wheel.name
        assert "\nProject-URL: Source, https://github.com/gradserve/gradserve\n" in text
        assert text.split("\n\n", 1)[1].startswith("# gradserve"), wheel.name  # the readme


def test_the_client_extras_are_only_the_optional_drawing_and_progress_bar():
    project = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    required = {d.split("=")[0].split(">")[0] for d in project["dependencies"]}
    assert required == {"gradserve-protos", "grpcio", "grpcio-status", "numpy"}
    assert set(project["optional-dependencies"]) == {"draw", "progress"}


def test_a_client_environment_runs_the_readme_example_and_a_hessian(dist, target, tmp_path):
    python = environment(tmp_path / "client-env", "gradserve-client", find_links=dist)
    assert not {"gradserve-server", "graphviz", "tqdm", "pytest"} & installed(python)
    example = readme_sdk_example().replace("localhost:50051", target)
    hessian = f"""
from gradserve.client import Client, Value
x, y = Value(0.7), Value(-1.2)
f = x * x * y + (x * y).apply("sin")
with Client({target!r}) as client:
    print(*client.hessian(f, [x, y]).ravel())
import gradserve.client
from gradserve.client import recording
print(gradserve.client.__version__, recording.COMPILED)
try:
    from gradserve.client import draw_dot
except ImportError as error:
    print(error)
"""
    lines = run_python(python, example + hessian, tmp_path).splitlines()
    e, a_grad, b_grad = map(float, lines[0].split())
    # c = a + b = -2 and d = a b + b^3 = 0: e = relu(c - d) + 2 tanh(c) / (1 + d^2)
    slope = 2 * (1 - math.tanh(-2.0) ** 2)  # de/dc; de/dd = 0 at d = 0, relu is off
    assert math.isclose(e, 2 * math.tanh(-2.0), rel_tol=1e-12)
    assert math.isclose(a_grad, slope, rel_tol=1e-9) and math.isclose(b_grad, slope, rel_tol=1e-9)
    xx, xy, yx, yy = map(float, lines[1].split())
    x, y = 0.7, -1.2
    s, c = math.sin(x * y), math.cos(x * y)
    expected = [2 * y - y * y * s, 2 * x + c - x * y * s, 2 * x + c - x * y * s, -x * x * s]
    got = [xx, xy, yx, yy]
    assert all(math.isclose(g, h, rel_tol=1e-9) for g, h in zip(got, expected, strict=True)), got
    assert lines[2] == f"{VERSION} True"  # the wheel's compiled recording core is used
    assert lines[3] == "drawing needs the graphviz package: pip install 'gradserve-client[draw]'"
    print(f"client environment: {size_mib(tmp_path / 'client-env'):.0f} MiB")

    # From a checkout without wheels: pip builds the folders named together (gradserve-protos
    # is no index's, so `pip install ./client` alone cannot find it).
    pip = [str(python), "-m", "pip", "install", "--dry-run", "--quiet", "--no-cache-dir"]
    from_source = subprocess.run(
        [*pip, str(ROOT / "protos"), str(ROOT / "client")], capture_output=True, text=True
    )
    assert from_source.returncode == 0, from_source.stderr


def test_a_server_environment_serves_checks_its_ops_and_takes_a_plugin(dist, tmp_path):
    folder = tmp_path / "server-env"
    python = environment(folder, "gradserve-server", find_links=dist)
    packages = installed(python)
    assert {"gradserve-server", "gradserve-ops-core", "gradserve-protos"} <= packages
    assert not DEV_TOOLS & packages, DEV_TOOLS & packages
    print(f"server environment: {size_mib(folder):.0f} MiB")
    gradserve = str(folder / "bin" / "gradserve")
    checked = subprocess.run(
        [gradserve, "ops", "check"], env=clean_env(), cwd=tmp_path, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    def listed_ops(served: Served) -> dict[str, str]:
        with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            reply = pb_grpc.GradientServiceStub(channel).ListOps(pb.ListOpsRequest(), timeout=30)
        assert reply.server_version == VERSION
        return {op.name: op.distribution for op in reply.ops}

    with Served(gradserve=gradserve, env=clean_env()) as served:
        health = subprocess.run(
            [gradserve, "health", "--target", f"127.0.0.1:{served.port}"],
            capture_output=True,
            text=True,
        )
        assert health.returncode == 0 and health.stdout.endswith(": SERVING\n"), health
        before = listed_ops(served)
    assert "tanh" in before and "gelu" not in before

    [plugin] = dist.glob("gradserve_ops_special-*.whl")
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--find-links", str(dist), str(plugin)], check=True, timeout=300)
    with Served(gradserve=gradserve, env=clean_env()) as served:
        after = listed_ops(served)
    assert {name: after[name] for name in ("gelu", "erf", "logaddexp")} == dict.fromkeys(
        ("gelu", "erf", "logaddexp"), "gradserve-ops-special"
    )
    assert set(after) == set(before) | {"gelu", "erf", "logaddexp"}

"""The Dockerfile, checked without a Docker engine: hadolint, the properties the image
promises, and its build stage's install steps run here against the committed lock."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from dockerfile import ROOT, assignments, exec_form, runtime_env, stages
from servers import Served

from gradserve.client import connect
from gradserve.v1 import gradserve_pb2 as pb

HADOLINT = str(Path(sys.executable).parent / "hadolint")
VERSION = (ROOT / "VERSION").read_text().strip()


def test_hadolint_passes():
    result = subprocess.run(
        [HADOLINT, "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_two_stages_on_an_official_slim_python_base():
    global_args, build, runtime = stages()
    base = assignments(dict(global_args)["ARG"])["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base)
    assert build[0] == ("FROM", "${PYTHON_IMAGE} AS build")
    assert runtime[0] == ("FROM", "${PYTHON_IMAGE}")
    # The runtime stage takes nothing from the build stage but its wheels, mounted for the
    # one install step; no source, no uv.
    assert not [args for keyword, args in runtime if keyword == "COPY"]
    [install] = [args for keyword, args in runtime if keyword == "RUN" and "/wheels" in args]
    assert install.startswith("--mount=type=bind,from=build,source=/wheels,target=/wheels ")
    assert "uv" not in install.split()


def test_the_image_runs_as_a_non_root_user_and_checks_its_health():
    runtime = dict(stages()[-1])
    assert runtime["USER"] not in ("root", "0")
    assert runtime["EXPOSE"] == runtime_env()["GRADSERVE_PORT"]
    assert runtime_env()["GRADSERVE_HOST"] == "0.0.0.0"
    probe = exec_form(runtime["HEALTHCHECK"].partition("CMD ")[2])
    assert probe[-1].startswith("gradserve health --target 127.0.0.1:$GRADSERVE_PORT")


def test_every_install_respects_the_lock():
    _, build, runtime = stages()
    [export] = [args for keyword, args in build if keyword == "RUN" and "uv export" in args]
    assert "--frozen" in export and "--no-dev" in export
    assert "--output-file /wheels/requirements.txt" in export
    [install] = [args for keyword, args in runtime if keyword == "RUN" and "/wheels" in args]
    assert "--constraint /wheels/requirements.txt" in install
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"**/.venv", "**/node_modules", ".git"} <= set(ignored)


def replay_image(root: Path, build_args: dict[str, str]) -> Path:
    """Replay the Dockerfile here, with ``root`` standing for the images' root: the build
    stage's COPYs from the repository and its RUNs, then the runtime stage's install step
    (its --mount is ``root``'s /wheels), with ``build_args`` as `docker build --build-arg`.
    Left out: `pip install uv` (uv is here) and `useradd`. The image's python and pip are
    this interpreter's base (not our venv). Returns the installed venv's bin folder."""
    _, build, runtime = stages()
    # The build starts from a clean environment: not inside our venv, not under CI's UV_LOCKED.
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_LOCKED")}
    env["PATH"] = path
    base = sys._base_executable
    workdir = root

    def inside(path: str) -> str:
        return str(root / path.lstrip("/")) if path.startswith("/") else path

    for keyword, args in build[1:] + runtime[1:]:
        if keyword == "ARG":
            env.update({k: build_args.get(k, v) for k, v in assignments(args).items()})
        elif keyword == "WORKDIR":
            workdir = Path(inside(args))
            workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            *sources, target = shlex.split(args)
            for source in sources:
                copy(ROOT / source, workdir / target)
        elif keyword == "RUN" and not args.startswith(("pip install", "useradd")):
            script = args.removeprefix(
                "--mount=type=bind,from=build,source=/wheels,target=/wheels "
            )
            for folder in ("/wheels", "/opt/venv"):
                script = script.replace(folder, inside(folder))
            script = script.replace("python -m venv", f"{base} -m venv")
            script = script.replace("&& pip ", f"&& {base} -m pip ")
            result = subprocess.run(
                ["sh", "-c", script], cwd=workdir, env=env, capture_output=True, text=True
            )
            assert result.returncode == 0, result.stderr
    return Path(inside("/opt/venv")) / "bin"


def test_the_image_holds_a_working_server_without_dev_tools(tmp_path):
    venv_bin = replay_image(tmp_path, {})
    assert sorted(p.name for p in (tmp_path / "wheels").glob("*.whl")) == [
        f"gradserve_{name}-{VERSION}-py3-none-any.whl" for name in ("ops_core", "protos", "server")
    ]
    assert not (venv_bin / "pytest").exists()
    assert not (venv_bin / "ruff").exists()
    assert not (venv_bin / "uv").exists() and not (venv_bin / "pip").exists()
    with Served("--workers", "1", gradserve=str(venv_bin / "gradserve")) as served:
        assert "tanh" in listed_ops(served.port)


CUBE_PLUGIN = {
    "pyproject.toml": """
[project]
name = "gradserve-test-cube"
version = "1.0"
dependencies = ["gradserve-ops-core"]
[project.entry-points."gradserve.ops"]
cube = "gradserve_test_cube:cube"
[build-system]
requires = ["hatchling>=1.25"]
build-backend = "hatchling.build"
""",
    "gradserve_test_cube.py": """
from gradserve.ops import Op
cube = Op("cube", 1, lambda x: x**3, lambda g, y, x: (3 * g * x * x,), doc="x^3")
""",
}


def test_the_extra_ops_build_arg_installs_a_plugin(tmp_path):
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    for name, text in CUBE_PLUGIN.items():
        (plugin / name).write_text(text)
    venv_bin = replay_image(tmp_path / "image", {"EXTRA_OPS": str(plugin)})
    with Served("--workers", "1", gradserve=str(venv_bin / "gradserve")) as served:
        assert listed_ops(served.port)["cube"] == "gradserve-test-cube"


def listed_ops(port: int) -> dict[str, str]:
    """The server's ops, each with the distribution that supplied it."""
    channel, stub = connect(f"127.0.0.1:{port}")
    with channel:
        return {op.name: op.distribution for op in stub.ListOps(pb.ListOpsRequest()).ops}


def copy(source: Path, target: Path) -> None:
    """COPY semantics: a directory's contents into the target directory, a file into it."""
    if source.is_dir():
        shutil.copytree(
            source,
            target,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns(".venv", "__pycache__", "node_modules"),
        )
    else:
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / source.name)

"""The Node.js client (client/node) against live servers, through node's own test runner.

Its tests start one server of their own with this venv's gradserve (the notebook's neuron,
checked against closed forms), and use the servers named in the environment
(tests/conformance_suite.py): the conformance server, for the conformance suite, and a TLS
and a mutual-TLS server. `.ci/run` installs the packages (npm ci); a developer without them
gets them installed here, from the committed package-lock.json.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conformance_suite import docs_example, load
from system_tools import require_tool

NODE_CLIENT = Path(__file__).resolve().parents[1] / "client" / "node"
GRADSERVE = str(Path(sys.executable).parent / "gradserve")


def test_the_node_client_passes_its_tests_and_the_conformance_suite(client_test_env):
    require_tool("node", "npm")
    if not (NODE_CLIENT / "node_modules").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_CLIENT, check=True)
    result = subprocess.run(
        ["node", "--test"],
        cwd=NODE_CLIENT,
        env={**os.environ, **client_test_env, "GRADSERVE_BIN": GRADSERVE},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "# fail 0" in output and "# skipped 0" in output and "# todo 0" in output, output
    cases = len(load()["cases"])
    passed = re.findall(r"^    ok \d+ - (\S+)", result.stdout, re.MULTILINE)
    assert len(passed) == cases, output


def test_the_docs_example_runs_as_written(target):
    require_tool("node", "npm")
    if not (NODE_CLIENT / "node_modules").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_CLIENT, check=True)
    result = subprocess.run(
        ["node", "--input-type=module"],  # the script from stdin, imports relative to cwd
        input=docs_example("docs/clients/node.md", "js").replace("localhost:50051", target),
        cwd=NODE_CLIENT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "0.7071 -1.5000 1.0000\n"


USES_THE_TYPES = """
import { Client, Graph, GradserveError, type Node } from "@gradserve/client";

const client = new Client("localhost:50051", { timeoutMs: 1000 });
const g = new Graph();
const x: Node = g.leaf(2, "x");
const y = x.mul(g.leaf(-3)).tanh();
try {
  await client.backward(y);
  const grad: number = x.grad;
  console.log(grad);
} catch (error) {
  if (error instanceof GradserveError) console.log(error.code, error.field, error.node);
}
// @ts-expect-error: a leaf's value is a number (fails to compile if the types were missing)
g.leaf("two");
client.close();
"""


def test_the_packed_package_installs_into_an_empty_folder_and_type_checks(target, tmp_path):
    """`npm pack`, then `npm install` of the tarball into an empty folder: the README's
    example runs there, and a TypeScript file using the package compiles under `--strict`."""
    require_tool("node", "npm")
    if not (NODE_CLIENT / "node_modules").is_dir():  # for tsc
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_CLIENT, check=True)
    packed = subprocess.run(
        ["npm", "pack", "--json", "--pack-destination", str(tmp_path)],
        cwd=NODE_CLIENT,
        capture_output=True,
        text=True,
        check=True,
    )
    [tarball] = [tmp_path / entry["filename"] for entry in json.loads(packed.stdout)]
    assert not (NODE_CLIENT / "protos").exists()  # postpack removed the bundled copy
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "app", "private": true, "type": "module"}\n')
    npm_install = ["npm", "install", "--no-audit", "--no-fund", str(tarball)]
    subprocess.run(npm_install, cwd=app, check=True, capture_output=True, timeout=300)
    assert (app / "node_modules/@gradserve/client/protos/gradserve/v1/gradserve.proto").is_file()

    result = subprocess.run(
        ["node", "--input-type=module"],
        input=docs_example("docs/clients/node.md", "js").replace("localhost:50051", target),
        cwd=app,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "0.7071 -1.5000 1.0000\n"

    (app / "uses.ts").write_text(USES_THE_TYPES)
    tsc = NODE_CLIENT / "node_modules" / ".bin" / "tsc"
    options = "--strict --noEmit --module nodenext --moduleResolution nodenext --target es2022"
    checked = subprocess.run(
        [str(tsc), *options.split(), "--lib", "es2022,dom", "uses.ts"],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

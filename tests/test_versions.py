"""One release version (the repository's VERSION file) for every distribution, the Go module,
the npm package and the Java artifact, as installed code reports it and as the server tells its
clients."""

import json
import re
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ElementTree
from importlib.metadata import version
from pathlib import Path

import gradserve.client
from gradserve.v1 import gradserve_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
VERSION = (ROOT / "VERSION").read_text().strip()
DISTRIBUTIONS = {
    "gradserve-protos": "protos",
    "gradserve-ops-core": "ops_plugins/core",
    "gradserve-server": "server",
    "gradserve-client": "client",
    "gradserve-ops-special": "ops_plugins/special",
}


def test_the_version_is_a_release_number():
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION), VERSION


def test_every_python_distribution_has_it_and_pins_its_siblings_to_it():
    for name, folder in DISTRIBUTIONS.items():
        project = tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]
        assert (project["name"], project["version"]) == (name, VERSION)
        siblings = [d for d in project.get("dependencies", []) if d.startswith("gradserve-")]
        assert all(d.endswith(f"=={VERSION}") for d in siblings), (name, siblings)


def test_the_go_module_and_the_npm_package_have_it():
    go = (ROOT / "client/go/gradserve/version.go").read_text()
    assert re.search(r'^const Version = "([^"]+)"$', go, re.MULTILINE)[1] == VERSION
    package = json.loads((ROOT / "client/node/package.json").read_text())
    lock = json.loads((ROOT / "client/node/package-lock.json").read_text())
    assert package["version"] == lock["version"] == lock["packages"][""]["version"] == VERSION


def test_the_java_artifact_and_the_dependency_its_docs_name_have_it():
    pom = ElementTree.parse(ROOT / "client/java/pom.xml").getroot()
    namespace = "{http://maven.apache.org/POM/4.0.0}"
    assert pom.find(f"{namespace}artifactId").text == "gradserve-client"
    assert pom.find(f"{namespace}version").text == VERSION
    docs = (ROOT / "docs/clients/java.md").read_text()
    named = re.findall(r"<artifactId>gradserve-client</artifactId>\s*<version>([^<]*)<", docs)
    assert named == [VERSION]


def test_the_rust_crate_has_it():
    crate = tomllib.loads((ROOT / "client/rust/Cargo.toml").read_text())["package"]
    assert crate["version"] == VERSION
    for lock in ("client/rust/Cargo.lock", "client/rust/neuron/Cargo.lock"):
        packages = tomllib.loads((ROOT / lock).read_text())["package"]
        assert [p["version"] for p in packages if p["name"] == "gradserve"] == [VERSION], lock


def test_the_installed_code_reports_it():
    assert gradserve.client.__version__ == version("gradserve-client") == VERSION
    assert version("gradserve-server") == version("gradserve-protos") == VERSION


def test_list_ops_tells_clients_the_servers_version(stub):
    reply = stub.ListOps(pb.ListOpsRequest())
    assert reply.server_version == VERSION and reply.ops


def test_the_command_prints_it():
    gradserve = Path(sys.executable).parent / "gradserve"
    printed = subprocess.run([gradserve, "--version"], capture_output=True, text=True, check=True)
    assert printed.stdout == f"gradserve {VERSION}\n"

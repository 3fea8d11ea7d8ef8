"""The Rust client (client/rust) against live servers, through `cargo test`, and the crates
and docs around it.

`cargo test` builds the crate (build.rs generates the stubs with protoc) and runs its tests
and the conformance runner against the servers tests/conformance_suite.py starts (the
conformance server, a TLS and a mutual-TLS server), plus two its tests start themselves with
this venv's `gradserve`. Then client/rust/neuron, a crate of its own that depends on the
client by path, runs the notebook's neuron, and docs/clients/rust.md's examples run as its
main.rs. Both builds share client/rust/target, so the dependencies compile once (`.ci/run`
builds them before the test command).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from certs import make_certificates
from conformance_suite import load
from system_tools import require_tool

from gradserve.client import AuthError, Client, GradserveError, Value
from gradserve.client.security import channel_credentials
from gradserve.server.service.app import running_server
from gradserve.server.service.security import server_credentials

ROOT = Path(__file__).resolve().parents[1]
CRATE = ROOT / "client" / "rust"
NEURON = CRATE / "neuron"
DOCS = ROOT / "docs" / "clients" / "rust.md"
GRADSERVE = str(Path(sys.executable).parent / "gradserve")
BUILD_TIMEOUT = 1200  # a cold build of tonic and its dependencies on 2 busy cores


def cargo(*args: str, cwd: Path, env: dict[str, str], timeout: float = BUILD_TIMEOUT):
    require_tool("cargo", *(() if "PROTOC" in env else ("protoc",)))
    command = ["nice", "cargo", *args, "--locked"]
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_the_rust_client_passes_its_tests_and_the_conformance_suite(client_test_env):
    env = {**os.environ, **client_test_env, "GRADSERVE_BIN": GRADSERVE}
    result = cargo("test", cwd=CRATE, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Every test binary's summary: something ran, nothing failed, nothing was ignored.
    summaries = re.findall(
        r"^test result: ok\. (\d+) passed; (\d+) failed; (\d+) ignored", output, re.M
    )
    assert len(summaries) == 3, output  # the unit tests, tests/client.rs, the doc tests
    assert all(
        int(passed) > 0 and failed == ignored == "0" for passed, failed, ignored in summaries
    )
    cases = [case["name"] for case in load()["cases"]]
    passed = re.findall(r"^test conformance::(\S+) \.\.\. ok$", result.stdout, re.M)
    assert passed == cases, output
    assert f"\n{len(cases)} passed, 0 failed\n" in result.stdout


def rust_blocks(markdown: str) -> list[tuple[str, str]]:
    """The page's ```rust blocks not marked `<!-- not-run -->`, each with the ```text block
    that follows it (the output it prints)."""
    pattern = r"(<!-- not-run -->\n)?```rust\n(.*?)```\n+```text\n(.*?)```"
    return [(code, out) for skip, code, out in re.findall(pattern, markdown, re.S) if not skip]


def test_the_docs_page_runs_every_rust_block_but_those_marked_not_run():
    markdown = DOCS.read_text()
    runnable = rust_blocks(markdown)
    languages = re.findall(r"^```(\w+)$", markdown, re.M)  # opening fences
    marked = markdown.count("<!-- not-run -->\n```")
    assert len(runnable) == 3 and languages.count("text") == len(runnable)
    assert len(runnable) + marked == len(languages) - languages.count("text")


def test_the_neuron_crate_and_the_docs_examples_run(client_test_env, target, tmp_path):
    """The neuron crate as committed, then each docs example as its main.rs (in a copy)."""
    [neuron, *others] = rust_blocks(DOCS.read_text())
    assert neuron[0] == (NEURON / "src" / "main.rs").read_text(), "the docs show the neuron crate"
    env = {**os.environ, "GRADSERVE_TARGET": target, "CARGO_TARGET_DIR": str(CRATE / "target")}
    ran = cargo("run", "--quiet", cwd=NEURON, env=env)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == neuron[1] == "o = 0.7071, do/dx1 = -1.5000, do/dw1 = 1.0000\n"

    copy = tmp_path / "example"
    (copy / "src").mkdir(parents=True)
    manifest = (NEURON / "Cargo.toml").read_text()
    assert 'gradserve = { path = ".." }' in manifest
    manifest = manifest.replace('path = ".."', f"path = {str(CRATE)!r}")
    (copy / "Cargo.toml").write_text(manifest)
    shutil.copy(NEURON / "Cargo.lock", copy / "Cargo.lock")
    for code, printed in others:
        (copy / "src" / "main.rs").write_text(code)
        ran = cargo("run", "--quiet", cwd=copy, env=env)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout == printed


def test_the_crate_is_described_as_the_python_distributions_are():
    """Its version is checked with every other copy of VERSION by tests/test_versions.py."""
    package = tomllib.loads((CRATE / "Cargo.toml").read_text())["package"]
    pyprojects = [*ROOT.glob("*/pyproject.toml"), *ROOT.glob("ops_plugins/*/pyproject.toml")]
    projects = [tomllib.loads(p.read_text())["project"] for p in pyprojects]
    assert {project["license"] for project in projects} == {package["license"]}
    assert package["description"] and package["repository"] and package["readme"] == "README.md"
    assert (CRATE / package["readme"]).is_file()


def test_the_generated_stubs_are_not_committed():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(
        ["git", "ls-files", "client/rust"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "client/rust/Cargo.lock" in files and "client/rust/neuron/Cargo.lock" in files
    assert not [f for f in files if f.endswith("gradserve.v1.rs") or "/target/" in f], files
    ignored = [line for line in (CRATE / ".gitignore").read_text().splitlines() if line[:1] == "/"]
    assert ignored == ["/target/", "/neuron/target/"]


@pytest.mark.requires_tool("cargo", "rustfmt")
def test_the_rust_code_is_rustfmt_clean(tmp_path):
    """Both crates (`cargo fmt --check`) and the docs' examples, with the crate's rustfmt.toml."""
    for crate in (CRATE, NEURON):
        checked = subprocess.run(["cargo", "fmt", "--check"], cwd=crate, capture_output=True)
        assert checked.returncode == 0, checked.stdout.decode()
    for i, (code, _) in enumerate(rust_blocks(DOCS.read_text())):
        example = tmp_path / f"example{i}.rs"
        example.write_text(code)
        config = ["--config-path", str(CRATE / "rustfmt.toml")]
        checked = subprocess.run(
            ["rustfmt", "--edition", "2021", *config, "--check", str(example)], capture_output=True
        )
        assert checked.returncode == 0, checked.stdout.decode()


def message_cases(registry, directory: Path):
    """Calls that cannot get through, each as {name, target, tls, ca, cert, key, timeout_s,
    chain}: nothing listening, TLS on one side only, an untrusted server, a mutual-TLS server
    without or with a foreign client certificate, and a chain longer than its timeout."""
    certs = make_certificates(directory)
    tls = server_credentials(str(certs.server.cert), str(certs.server.key))
    mtls = server_credentials(str(certs.server.cert), str(certs.server.key), str(certs.ca))
    with (
        running_server(registry, address="localhost:0") as plain,
        running_server(registry, credentials=tls, address="localhost:0") as secure,
        running_server(registry, credentials=mtls, address="localhost:0") as mutual,
    ):
        with running_server(registry, address="localhost:0") as gone:
            nothing = f"localhost:{gone.port}"
        ca, stranger = str(certs.ca), certs.stranger

        def case(name, target, tls=False, ca="", cert="", key="", timeout_s=30.0, chain=0):
            return dict(locals())

        yield [
            case("nothing listens", nothing),
            case("plaintext client, TLS server", f"localhost:{secure.port}"),
            case("TLS client, plaintext server", f"localhost:{plain.port}", True, ca),
            case("server not trusted", f"localhost:{secure.port}", True),
            case("no client certificate", f"localhost:{mutual.port}", True, ca),
            case(
                "foreign client certificate",
                f"localhost:{mutual.port}",
                True,
                ca,
                str(stranger.cert),
                str(stranger.key),
            ),
            case("timeout", f"localhost:{plain.port}", timeout_s=0.001, chain=200_000),
        ]


def python_message(case) -> tuple[str, bool]:
    """The Python SDK's message for the case, and whether it is an AuthError."""
    credentials = None
    if case["tls"]:
        credentials = channel_credentials(
            ca_file=case["ca"] or None, cert_file=case["cert"] or None, key_file=case["key"] or None
        )
    with Client(case["target"], credentials=credentials, timeout=case["timeout_s"]) as client:
        try:
            if case["chain"]:
                y = Value(0.5)
                for _ in range(case["chain"]):
                    y = y.tanh()
                y.backward(client)
            else:
                client.ops()
        except GradserveError as error:
            return str(error), isinstance(error, AuthError)
    pytest.fail(f"{case['name']}: the call succeeded")


def test_the_rust_client_says_what_the_python_sdk_says(registry, tmp_path):
    """Word for word, for each way a call fails to get through (examples/messages.rs)."""
    for cases in message_cases(registry, tmp_path):
        env = {**os.environ, "GRADSERVE_MESSAGE_CASES": json.dumps(cases)}
        ran = cargo("run", "--quiet", "--example", "messages", cwd=CRATE, env=env)
        assert ran.returncode == 0, ran.stderr
        rust = {
            name: (message, auth)
            for name, message, auth in map(json.loads, ran.stdout.split("\n")[:-1])
        }
        python = {case["name"]: python_message(case) for case in cases}
    assert python["nothing listens"][0].startswith("no gradserve server answers at localhost:")
    assert python["no client certificate"][1] and python["foreign client certificate"][1]
    assert len(set(python.values())) == len(cases) - 1  # the two refusals share theirs
    for name, said in python.items():
        assert rust[name] == said, name

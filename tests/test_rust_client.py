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

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import docs_pages
import pytest
from conformance_suite import load
from message_cases import message_cases, python_message
from system_tools import require_tool

ROOT = Path(__file__).resolve().parents[1]
CRATE = ROOT / "client" / "rust"
NEURON = CRATE / "neuron"
DOCS_PAGE = "docs/clients/rust.md"  # its examples run here (tests/docs_pages.py)
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
    # The unit tests, tests/client.rs, tests/retry.rs, the doc tests.
    assert len(summaries) == 4, output
    assert all(
        int(passed) > 0 and failed == ignored == "0" for passed, failed, ignored in summaries
    )
    cases = [case["name"] for case in load()["cases"]]
    passed = re.findall(r"^test conformance::(\S+) \.\.\. ok$", result.stdout, re.M)
    assert passed == cases, output
    assert f"\n{len(cases)} passed, 0 failed\n" in result.stdout


def rust_examples() -> list[tuple[str, str]]:
    """The page's Rust blocks that run here, each with the output block that follows it
    (checked here too: it is what the example prints)."""
    blocks = docs_pages.blocks(DOCS_PAGE)
    return [
        (block.code, output.code)
        for block, output in itertools.pairwise(blocks)
        if block.language == "rust" and block.runs_in == "tests/test_rust_client.py"
    ]


def test_the_docs_page_runs_every_rust_block_but_those_marked_not_run():
    blocks = docs_pages.blocks(DOCS_PAGE)
    runnable = rust_examples()
    assert len(runnable) == 3
    rust = [block for block in blocks if block.language == "rust"]
    assert all(block.runs_in or block.marker == docs_pages.NOT_RUN for block in rust)
    outputs = [block for block in blocks if block.language == "text"]
    assert all(output.runs_in == "tests/test_rust_client.py" for output in outputs)
    assert [output.code for output in outputs] == [printed for _, printed in runnable]


def test_the_neuron_crate_and_the_docs_examples_run(client_test_env, target, tmp_path):
    """The neuron crate as committed, then each docs example as its main.rs (in a copy)."""
    [neuron, *others] = rust_examples()
    assert neuron[0] == (NEURON / "src" / "main.rs").read_text(), "the docs show the neuron crate"
    env = {**os.environ, "GRADSERVE_TARGET": target, "CARGO_TARGET_DIR": str(CRATE / "target")}
    ran = cargo("run", "--quiet", cwd=NEURON, env=env)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == neuron[1] == "o = 0.7071, do/dx1 = -1.5000, do/dw1 = 1.0000\n"

    # A copy under a name of its own: in the shared target folder, a binary of the same name
    # would replace the neuron's.
    copy = tmp_path / "example"
    (copy / "src").mkdir(parents=True)
    manifest = (NEURON / "Cargo.toml").read_text()
    assert 'gradserve = { path = ".." }' in manifest
    manifest = manifest.replace('path = ".."', f"path = {str(CRATE)!r}")
    for name in ("Cargo.toml", "Cargo.lock"):
        text = manifest if name == "Cargo.toml" else (NEURON / name).read_text()
        renamed = text.replace('name = "gradserve-neuron"', 'name = "gradserve-docs-example"')
        assert renamed != text, name
        (copy / name).write_text(renamed)
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
    for i, (code, _) in enumerate(rust_examples()):
        example = tmp_path / f"example{i}.rs"
        example.write_text(code)
        config = ["--config-path", str(CRATE / "rustfmt.toml")]
        checked = subprocess.run(
            ["rustfmt", "--edition", "2021", *config, "--check", str(example)], capture_output=True
        )
        assert checked.returncode == 0, checked.stdout.decode()


def test_the_rust_client_says_what_the_python_sdk_says(registry, tmp_path):
    """Word for word, for each way a call fails to get through (examples/messages.rs)."""
    with message_cases(registry, tmp_path) as cases:
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

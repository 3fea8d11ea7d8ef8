"""The Java client (client/java) through Maven: its JUnit suite and conformance runner, and a
separate Maven project built from docs/clients/java.md against the installed artifact.

`mvn install` compiles the client (its stubs generated from protos/ by protobuf-maven-plugin),
runs its tests through Surefire (they start the gradserve servers they need from this
.venv's `gradserve`) and installs the jar into the local Maven repository, where the docs'
project finds it. The first run downloads the Maven plugins and libraries (`.ci/run` fetches
them before the tests).
"""

import re
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from conformance_suite import load
from servers import GRADSERVE
from system_tools import require_tool

ROOT = Path(__file__).resolve().parents[1]
JAVA_CLIENT = ROOT / "client" / "java"
DOCS = ROOT / "docs" / "clients" / "java.md"
# The dependency plugin writes the docs project's classpath; named in full, so that no
# unpinned plugin version is looked up.
BUILD_CLASSPATH = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:build-classpath"


def maven() -> list[str]:
    """The `mvn` command in batch mode (a skip, or under CI a failure, without Maven and a
    JDK)."""
    require_tool("mvn", "java", "javac")
    return ["mvn", "-B", "-q"]


def test_the_generated_stubs_are_not_committed():
    tracked = subprocess.run(
        ["git", "ls-files", "client/java"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "client/java/pom.xml" in tracked
    generated = [p for p in tracked if "/target/" in p or "com/gradserve/v1" in p]
    assert generated == []
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "client/java/target/generated-sources/x.java"], cwd=ROOT
    )
    assert ignored.returncode == 0, "client/java/target is not ignored"


@pytest.fixture(scope="module")
def installed():
    """`mvn install` in client/java: the suite runs, then the jar is installed."""
    result = subprocess.run(
        [*maven(), "install", f"-Dgradserve.executable={GRADSERVE}"],
        cwd=JAVA_CLIENT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    return result


def surefire_cases() -> dict[str, list[tuple[str, str]]]:
    """Each test class's (test name, outcome) pairs from Surefire's XML reports."""
    cases: dict[str, list[tuple[str, str]]] = {}
    for report in (JAVA_CLIENT / "target" / "surefire-reports").glob("TEST-*.xml"):
        for case in ElementTree.parse(report).getroot().iter("testcase"):
            outcome = next(
                (c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed"
            )
            cases.setdefault(case.get("classname"), []).append((case.get("name"), outcome))
    return cases


def test_the_java_client_passes_its_tests_and_the_conformance_suite(installed):
    assert installed.returncode == 0, installed.stdout + installed.stderr
    cases = surefire_cases()
    outcomes = {outcome for results in cases.values() for _, outcome in results}
    assert outcomes == {"passed"}, cases
    package = "com.gradserve.client."
    assert len(cases[package + "ClientTest"]) >= 10
    assert len(cases[package + "GraphTest"]) >= 5
    conformance = [name for name, _ in cases[package + "ConformanceTest"]]
    assert conformance == [f"cases() {case['name']}" for case in load()["cases"]]


def docs_blocks(language: str) -> list[tuple[str, str]]:
    """The page's runnable ```language blocks (those not marked not-run), each with the
    ```text block that follows it ("" when none)."""
    text = DOCS.read_text()
    blocks = re.finditer(r"(<!-- not-run[^>]*-->\n)?```(\w+)\n(.*?)```", text, re.DOTALL)
    found, pending = [], None
    for block in blocks:
        marked, lang, body = block.groups()
        if lang == "text" and pending is not None:
            found[-1] = (found[-1][0], body)
        pending = None
        if lang == language and not marked:
            found.append((body, ""))
            pending = body
    return found


def docs_block(language: str) -> str:
    [(body, _)] = docs_blocks(language)
    return body


def test_every_block_of_the_page_runs_or_is_marked_not_run():
    text = DOCS.read_text()
    fences = re.findall(r"(<!-- not-run[^>]*-->\n)?```(\w+)\n", text)
    running = [lang for marked, lang in fences if not marked]
    # A text block is the output of the java block before it, checked below.
    assert sorted(set(running)) == ["java", "text", "xml"], fences
    assert running.count("java") == running.count("text") == len(docs_blocks("java"))


def test_a_separate_maven_project_runs_the_docs_examples(installed, target, tmp_path):
    """The page's pom.xml and Java examples as their own project, depending on the installed
    artifact; each example prints what the page says (worked out by hand there)."""
    assert installed.returncode == 0, installed.stdout + installed.stderr
    (tmp_path / "pom.xml").write_text(docs_block("xml"))
    sources = tmp_path / "src" / "main" / "java"
    sources.mkdir(parents=True)
    examples = docs_blocks("java")
    for source, _ in examples:
        name = re.search(r"public class (\w+)", source)[1]
        (sources / f"{name}.java").write_text(source.replace("localhost:50051", target))
    classpath = tmp_path / "classpath.txt"
    built = subprocess.run(
        [*maven(), "compile", BUILD_CLASSPATH, f"-Dmdep.outputFile={classpath}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    path = f"{tmp_path / 'target' / 'classes'}:{classpath.read_text().strip()}"
    assert "gradserve-client-" in path
    for source, expected in examples:
        name = re.search(r"public class (\w+)", source)[1]
        ran = subprocess.run(
            ["java", "-cp", path, name], capture_output=True, text=True, timeout=120
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert ran.stdout == expected, name

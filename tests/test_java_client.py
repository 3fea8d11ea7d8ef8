"""The Java client (client/java) through Maven: its JUnit suite and conformance runner, and a
separate Maven project built from the docs page's pom.xml and examples (docs/clients/java.md)
against the installed artifact.

`mvn install` compiles the client (its stubs generated from protos/ by protobuf-maven-plugin),
runs its tests through Surefire (they start the gradserve servers they need from this
.venv's `gradserve`) and installs the jar into the local Maven repository, where the docs'
project finds it. The first run downloads the Maven plugins and libraries (about 90 MB) from
Maven Central.
"""

import re
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import docs_pages
import pytest
from conformance_suite import load
from servers import GRADSERVE
from system_tools import require_tool

ROOT = Path(__file__).resolve().parents[1]
JAVA_CLIENT = ROOT / "client" / "java"
REPORTS = JAVA_CLIENT / "target" / "surefire-reports"
PAGE = "docs/clients/java.md"
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
    """`mvn install` in client/java: the suite runs, then the jar is installed. Reports of an
    earlier build go first, so that only this run's are read."""
    shutil.rmtree(REPORTS, ignore_errors=True)
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
    for report in REPORTS.glob("TEST-*.xml"):
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


def runnable(language: str) -> list[docs_pages.Block]:
    """The page's ```language blocks that this test runs."""
    return [
        block
        for block in docs_pages.blocks(PAGE)
        if block.language == language and block.runs_in == "tests/test_java_client.py"
    ]


def examples() -> list[tuple[str, str]]:
    """Each runnable Java example with the ```text block after it: what it prints."""
    ordered = sorted(runnable("java") + runnable("text"), key=lambda block: block.line)
    languages = [block.language for block in ordered]
    assert languages == ["java", "text"] * (len(ordered) // 2), languages
    return [(ordered[i].code, ordered[i + 1].code) for i in range(0, len(ordered), 2)]


def test_the_page_has_a_pom_and_examples_with_their_output():
    assert len(runnable("xml")) == 1
    assert len(examples()) >= 3


def test_a_separate_maven_project_runs_the_docs_examples(installed, target, tmp_path):
    """The page's pom.xml and Java examples as their own project, depending on the installed
    artifact; each example prints what the page says (worked out by hand there)."""
    assert installed.returncode == 0, installed.stdout + installed.stderr
    [pom] = runnable("xml")
    (tmp_path / "pom.xml").write_text(pom.code)
    sources = tmp_path / "src" / "main" / "java"
    sources.mkdir(parents=True)
    for source, _ in examples():
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
    for source, expected in examples():
        name = re.search(r"public class (\w+)", source)[1]
        ran = subprocess.run(
            ["java", "-cp", path, name], capture_output=True, text=True, timeout=120
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert ran.stdout == expected, name

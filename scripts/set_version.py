"""Write the release version (the repository's VERSION file, or the argument) everywhere a
package manager reads one: the five Python distributions (and their pins on each other), the
Go module's `gradserve.Version`, the npm package, the Java artifact (its pom and the
dependency its docs page names) and the Rust crate.

    python3 scripts/set_version.py 0.2.0    # writes VERSION, then the copies
    python3 scripts/set_version.py          # rewrites the copies from VERSION

tests/test_versions.py checks that every copy agrees with VERSION. Run `python3 -m uv lock`
afterwards: uv.lock records the workspace's versions.
"""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECTS = [
    "protos/pyproject.toml",
    "ops_plugins/core/pyproject.toml",
    "server/pyproject.toml",
    "client/pyproject.toml",
    "ops_plugins/special/pyproject.toml",
]
GO_VERSION = "client/go/gradserve/version.go"
NPM_FILES = ["client/node/package.json", "client/node/package-lock.json"]
JAVA_FILES = ["client/java/pom.xml", "docs/clients/java.md"]
# The <version> after the artifact's <artifactId>, a comment between them allowed.
JAVA_VERSION = r"(<artifactId>gradserve-client</artifactId>\s*(?:<!--[^>]*-->\s*)?<version>)[^<]*"
CRATE = "client/rust/Cargo.toml"
# The lock files name the crate's own version too (the neuron crate's depends on it by path).
CRATE_LOCKS = ["client/rust/Cargo.lock", "client/rust/neuron/Cargo.lock"]


def substitute(path: Path, pattern: str, replacement: str, count: int = 0) -> None:
    text = path.read_text()
    new, found = re.subn(pattern, replacement, text, count=count, flags=re.MULTILINE)
    if not found:
        sys.exit(f"{path}: no match for {pattern}")
    path.write_text(new)


def set_version(version: str) -> None:
    for name in PYPROJECTS:
        path = ROOT / name
        substitute(path, r'^version = "[^"]*"', f'version = "{version}"', count=1)
        text = path.read_text()
        pins = r'"(gradserve-(?:protos|ops-core))==[^"]*"'
        path.write_text(re.sub(pins, rf'"\1=={version}"', text))
    substitute(ROOT / CRATE, r'^version = "[^"]*"', f'version = "{version}"', count=1)
    for name in CRATE_LOCKS:
        own = r'(\[\[package\]\]\nname = "gradserve"\nversion = )"[^"]*"'
        substitute(ROOT / name, own, rf'\1"{version}"')
    substitute(ROOT / GO_VERSION, r'^const Version = "[^"]*"', f'const Version = "{version}"')
    for name in NPM_FILES:
        path = ROOT / name
        data = json.loads(path.read_text())
        data["version"] = version
        if "packages" in data:  # the lock file names the package's own version twice
            data["packages"][""]["version"] = version
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    for name in JAVA_FILES:
        substitute(ROOT / name, JAVA_VERSION, rf"\g<1>{version}", count=1)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        (ROOT / "VERSION").write_text(sys.argv[1] + "\n")
    set_version((ROOT / "VERSION").read_text().strip())

"""docs/notebook.md's command opens examples/lecture.ipynb in JupyterLab against the SDK.

The command runs as documented (from the project's environment rather than through uv,
which the test already runs in), with flags that keep it on loopback, without a browser,
and with its configuration and runtime files in a temporary folder. The test opens the
notebook as JupyterLab's page does, through the server's sessions API, waits for its kernel
to start, and has the kernel import the SDK. Every wait is bounded by a condition.
"""

import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import docs_pages
import pytest
from jupyter_client import BlockingKernelClient

ROOT = docs_pages.ROOT
PAGE = "docs/notebook.md"
NOTEBOOK = "examples/lecture.ipynb"
BIN = Path(sys.executable).parent


def documented_command() -> list[str]:
    """The command of docs/notebook.md, which README.md gives too."""
    (command,) = [c for c in docs_pages.code(PAGE, "sh") if "jupyter lab" in c]
    assert command in docs_pages.code("README.md", "sh")
    words = shlex.split(command)
    assert words[:4] == ["python3", "-m", "uv", "run"], words
    return [str(BIN / words[4]), *words[5:]]


class Lab:
    """A JupyterLab process whose log is collected as it comes."""

    def __init__(self, command: list[str], home: Path) -> None:
        self.token = "docs-test-token"
        environment = {
            "PATH": f"{BIN}:/usr/bin:/bin",
            "HOME": str(home),
            "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTER_DATA_DIR": str(home / "data"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "GRADSERVE_TARGET": "127.0.0.1:1",  # the notebook's server; never called here
        }
        flags = [
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            "--ServerApp.port=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={ROOT}",
            *(["--allow-root"] if os.geteuid() == 0 else []),  # CI's containers run as root
        ]
        self.process = subprocess.Popen(
            [*command, *flags],
            cwd=ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            if match := re.search(pattern, "".join(self.lines)):
                return match
            time.sleep(0.1)
        pytest.fail(f"JupyterLab never logged {pattern!r}:\n{''.join(self.lines)}")

    def wait_until_listening(self, base: str, timeout: float = 120) -> None:
        """Jupyter Server logs its URL before its event loop binds the port: a call made
        at once can be refused. Its status API answering is the condition."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                self.call("GET", f"{base}api/status")
                return
            except urllib.error.URLError as error:
                if not isinstance(error.reason, ConnectionRefusedError):
                    raise
            time.sleep(0.1)
        pytest.fail(f"JupyterLab never listened at {base}:\n{''.join(self.lines)}")

    def call(self, method: str, url: str, body: dict | None = None) -> dict | str:
        request = urllib.request.Request(
            url,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as reply:
            text = reply.read().decode()
        return json.loads(text) if reply.headers.get_content_type() == "application/json" else text

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.mark.slow
def test_jupyterlab_opens_the_lecture_with_a_kernel_that_imports_the_sdk(tmp_path):
    command = documented_command()
    assert command[-1] == NOTEBOOK and (ROOT / NOTEBOOK).is_file()
    lab = Lab(command, tmp_path)
    try:
        base = lab.wait_for(r"(http://127\.0\.0\.1:\d+/)lab")[1]
        lab.wait_until_listening(base)
        assert "JupyterLab" in lab.call("GET", f"{base}lab/tree/{NOTEBOOK}")
        session = lab.call(
            "POST",
            f"{base}api/sessions",
            {"path": NOTEBOOK, "type": "notebook", "kernel": {"name": "python3"}},
        )
        kernel = session["kernel"]["id"]
        connection = tmp_path / "runtime" / f"kernel-{kernel}.json"
        client = BlockingKernelClient(connection_file=str(connection))
        deadline = time.monotonic() + 60
        while not connection.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        client.load_connection_file()
        # No heartbeat channel: a client that did not start the kernel judges it by its
        # heartbeat, which counts it dead after 1 s without a beat, as under load; the
        # kernel_info reply (wait_for_ready) is the condition that it is up.
        client.start_channels(hb=False)
        try:
            client.wait_for_ready(timeout=60)
            printed: list[str] = []

            def collect(message: dict) -> None:
                if message["msg_type"] == "stream":
                    printed.append(message["content"]["text"])

            reply = client.execute_interactive(
                "import gradserve.client; print(gradserve.client.__file__)",
                timeout=60,
                output_hook=collect,
            )
            assert reply["content"]["status"] == "ok", reply
            # The work tree's SDK, as the project's environment installs it (editable).
            assert "".join(printed).strip() == str(ROOT / "client/gradserve/client/__init__.py")
        finally:
            client.stop_channels()
        kernels = lab.call("GET", f"{base}api/kernels")
        assert [k["id"] for k in kernels] == [kernel]
    finally:
        lab.stop()
    assert lab.process.returncode is not None

"""`make lab`, the README's first command, serves JupyterLab (as root too)."""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    shutil.which("make") is None or not (ROOT / ".venv" / ".fwplab-installed").exists(),
    reason="needs make and the .venv that `make test` creates",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_lab_serves_jupyterlab():
    port, token = _free_port(), secrets.token_hex(8)
    process = subprocess.Popen(
        ["make", "--no-print-directory", "lab", f"PORT={port}", f"TOKEN={token}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api/status?token={token}"
    status = None
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    status = json.loads(response.read())
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(1)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert status is not None, f"JupyterLab never answered on port {port}:\n{output[-3000:]}"
    assert "started" in status, status
    assert f"http://127.0.0.1:{port}/lab?token={token}" in output
    if os.geteuid() == 0:
        assert "Running as root" in output


def test_the_printed_url_carries_the_token_jupyterlab_gets():
    """Without TOKEN, `make lab` draws one token and uses it in the URL it prints and in
    the command it runs (a recursively expanded variable drew two)."""
    plan = subprocess.run(["make", "--no-print-directory", "-n", "lab"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout
    printed = re.findall(r"lab\?token=([0-9a-f]+)", plan)
    given = re.findall(r"IdentityProvider\.token=([0-9a-f]+)", plan)
    assert len(printed) == len(given) == 1 and printed == given, plan

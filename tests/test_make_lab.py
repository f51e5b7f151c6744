"""`make lab`, the README's first command: the URL it prints opens JupyterLab (as root too)."""

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
needs_venv = pytest.mark.skipif(not (ROOT / ".venv" / ".fwplab-installed").exists(),
                                reason="needs the .venv that `make test` creates")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    """Status and final path of a GET (redirects followed, as a browser would)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, urllib.parse.urlsplit(response.geturl()).path
    except urllib.error.HTTPError as error:
        return error.code, urllib.parse.urlsplit(url).path


@needs_venv
def test_the_url_make_lab_prints_logs_in():
    """The README's path exactly: run `make lab`, read the URL it prints, open it."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("TOKEN", "PORT")}
    process = subprocess.Popen(
        ["make", "--no-print-directory", "lab", f"PORT={port}"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    url = status = lab = None
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            printed = re.search(r"JupyterLab: (http://\S+/lab\?token=\w+)", "".join(lines))
            url = printed.group(1) if printed else None
            if url is not None:
                base, token = url.split("/lab?token=")
                try:
                    status = _get(f"{base}/api/status?token={token}")
                    lab = _get(url)
                    break
                except (urllib.error.URLError, ConnectionError):
                    pass  # JupyterLab is not listening yet
            time.sleep(1)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        reader.join(timeout=10)
    output = "".join(lines)
    assert url is not None, f"`make lab` printed no URL:\n{output[-3000:]}"
    assert url.startswith(f"http://127.0.0.1:{port}/lab?token="), url
    assert status == (200, "/api/status"), (status, output[-3000:])
    assert lab == (200, "/lab"), f"the printed URL did not log in: {lab}"
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


def _plan(tmp_path, *args, gpu: bool, **env) -> subprocess.CompletedProcess:
    """``make -n -B ARGS`` with an ``nvidia-smi`` on PATH that lists a GPU or fails."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n" if gpu else
                   "#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    smi.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k != "FWPLAB_TORCH"}
    return subprocess.run(["make", "--no-print-directory", "-n", "-B", *args], cwd=ROOT,
                          env={**base, **env, "PATH": f"{fake}:{os.environ['PATH']}"},
                          capture_output=True, text=True)


@pytest.mark.parametrize("gpu, build", [(False, "cpu"), (True, "cuda")])
def test_set_up_installs_the_torch_build_the_machine_can_use(tmp_path, gpu, build):
    plan = _plan(tmp_path, ".venv/.fwplab-installed", gpu=gpu)
    assert plan.returncode == 0, plan.stderr
    assert f'case "{build}" in' in plan.stdout
    cpu_index = "--index-url https://download.pytorch.org/whl/cpu torch"
    assert cpu_index in plan.stdout  # both branches are in the recipe; the case picks one
    overridden = _plan(tmp_path, ".venv/.fwplab-installed", gpu=gpu, FWPLAB_TORCH="skip")
    assert 'case "skip" in' in overridden.stdout


def test_a_wrong_torch_choice_stops_in_one_line(tmp_path):
    plan = _plan(tmp_path, "lab", gpu=False, FWPLAB_TORCH="rocm")
    assert plan.returncode == 2
    assert "FWPLAB_TORCH must be cpu, cuda or skip, not 'rocm'" in plan.stderr
    assert plan.stdout == ""


@pytest.mark.parametrize("gpu", [False, True])
def test_gpu_check_runs_the_dry_run_where_no_gpu_is_found(tmp_path, gpu):
    plan = _plan(tmp_path, "gpu-check", gpu=gpu)
    assert plan.returncode == 0, plan.stderr
    command = next(line for line in plan.stdout.splitlines() if "gpu_check.py" in line)
    assert command.endswith("--dry-run") != gpu
    assert ("no GPU found" in plan.stdout) != gpu

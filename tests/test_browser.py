"""Notebook 5's fast-weight explorer in a real browser: JupyterLab + headless Chromium.

The test starts JupyterLab on 127.0.0.1 with a token and throw-away Jupyter folders,
opens a copy of ``notebooks/05_exploring_fast_weights.ipynb`` in Debian's Chromium
through Playwright, runs all cells, moves the first explorer's time slider with the
keyboard, then picks 50 % dropped observations in its missing-rate menu, and checks
that the image changed each time and that no widget failed to display. It saves
``build/explorer_before.png`` and ``build/explorer_after.png`` (the explorer before
and after both changes; the second is the README's screenshot) and
``build/browser_failure.png`` when something goes wrong.

It is skipped, saying why, when Playwright or Chromium is missing
(``apt-get install chromium fonts-dejavu``, ``pip install playwright``).
"""

import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "05_exploring_fast_weights.ipynb"
BUILD = REPO / "build"
CHROMIUM = os.environ.get("FWPLAB_CHROMIUM", "/usr/bin/chromium")

SERVER_START_S = 90
PAGE_READY_MS = 120_000  # lab page loaded and its kernel connected and idle
RUN_ALL_MS = 300_000  # every cell of notebook 5 executed
WIDGET_MS = 30_000
#: Pressing ArrowRight this many times moves the slider this many dense-grid steps
#: (one observation of JapaneseVowels).
SLIDER_STEPS = 4
#: The missing-rate menu entry picked after the slider move.
MISSING_RATE_LABEL = "50% dropped"
#: Fraction of the heatmap image's pixels that must differ after the move.
MIN_CHANGED_PIXELS = 0.002

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="playwright is not installed (pip install playwright); browser test skipped",
)
if not Path(CHROMIUM).is_file():
    pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium fonts-dejavu); "
                "browser test skipped", allow_module_level=True)
pytest.importorskip("jupyterlab", reason="jupyterlab is not installed; browser test skipped")

KERNEL_READY = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const session = panel && panel.sessionContext && panel.sessionContext.session;
    const kernel = session && session.kernel;
    return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""

# 'done' when every code cell has run and the kernel is idle, 'error: ...' at the first
# error output, null while running.
RUN_STATE = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const cells = panel.content.widgets.filter(cell => cell.model.type === 'code');
    for (const cell of cells) {
        for (const output of cell.model.outputs.toJSON()) {
            if (output.output_type === 'error') {
                return 'error: ' + output.ename + ': ' + output.evalue;
            }
        }
    }
    const kernel = panel.sessionContext.session.kernel;
    const finished = cells.every(cell => cell.model.executionCount !== null);
    return finished && kernel.status === 'idle' ? 'done' : null;
}"""

IMAGE_LOADED = """([image, previous]) => image.complete && image.naturalWidth > 0
    && image.src !== previous"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _api(base: str, token: str, path: str, method: str = "GET"):
    request = urllib.request.Request(f"{base}{path}?token={token}", method=method)
    with urllib.request.urlopen(request, timeout=5) as response:
        body = response.read()
    return json.loads(body) if body else None


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on loopback serving a copy of notebook 5; yields (url, token, log)."""
    root = tmp_path_factory.mktemp("lab")
    folders = {name: root / name.lower() for name in
               ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR")}
    for folder in folders.values():
        folder.mkdir()
    # No "Jupyter news" toast over the screenshots, no update checks.
    settings = (folders["JUPYTER_CONFIG_DIR"] / "lab" / "user-settings" / "@jupyterlab"
                / "apputils-extension" / "notification.jupyterlab-settings")
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    work = root / "work"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)

    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, **{name: str(folder) for name, folder in folders.items()}}
    log_path = root / "jupyterlab.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
             f"--port={port}", f"--IdentityProvider.token={token}", "--allow-root",
             "--LabApp.expose_app_in_browser=True", f"--ServerApp.root_dir={work}"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                _api(base, token, "/api/status")
                break
            except (urllib.error.URLError, ConnectionError):
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start; log:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        yield base, token, log_path
    finally:
        try:
            for kernel in _api(base, token, "/api/kernels") or []:
                _api(base, token, f"/api/kernels/{kernel['id']}", method="DELETE")
        except (urllib.error.URLError, ConnectionError):
            pass  # the server is already gone; nothing left to shut down
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _pixels(png: bytes):
    import numpy as np
    import PIL.Image

    return np.asarray(PIL.Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_explorer_slider_redraws_the_heatmap_in_chromium(lab):
    base, token, log_path = lab
    BUILD.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}")
            # The toolbar says "idle" seconds before the kernel is connected; a run
            # sent earlier is silently lost, so wait for the kernel connection itself.
            page.wait_for_function(KERNEL_READY, timeout=PAGE_READY_MS)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            state = page.wait_for_function(RUN_STATE, timeout=RUN_ALL_MS, polling=500)
            assert state.json_value() == "done", state.json_value()

            # The notebook's main explorer; the recipe section opens a second one below it.
            explorer = page.locator(".jp-OutputArea-output .widget-vbox").filter(
                has=page.locator(".widget-slider")).first
            image = explorer.locator("img.widget-image")
            image.scroll_into_view_if_needed(timeout=WIDGET_MS)
            page.wait_for_function(IMAGE_LOADED, arg=[image.element_handle(), ""],
                                   timeout=WIDGET_MS)
            readout = explorer.locator(".widget-readout")
            first_time = readout.inner_text()
            before = image.screenshot()
            explorer.screenshot(path=str(BUILD / "explorer_before.png"))
            source = image.get_attribute("src")

            explorer.locator(".widget-slider .noUi-handle").focus()
            for _ in range(SLIDER_STEPS):
                page.keyboard.press("ArrowRight")
            page.wait_for_function("([element, first]) => element.textContent.trim() !== first",
                                   arg=[readout.element_handle(), first_time], timeout=WIDGET_MS)
            page.wait_for_function(IMAGE_LOADED, arg=[image.element_handle(), source],
                                   timeout=WIDGET_MS)
            moved = image.screenshot()
            assert readout.inner_text() != first_time
            changed = (_pixels(before) != _pixels(moved)).any(-1).mean()
            assert changed > MIN_CHANGED_PIXELS, f"only {changed:.2%} of the pixels changed"

            source = image.get_attribute("src")
            explorer.locator(".widget-dropdown select").last.select_option(
                label=MISSING_RATE_LABEL)
            page.wait_for_function(IMAGE_LOADED, arg=[image.element_handle(), source],
                                   timeout=WIDGET_MS)
            after = image.screenshot()
            explorer.screenshot(path=str(BUILD / "explorer_after.png"))
            changed = (_pixels(moved) != _pixels(after)).any(-1).mean()
            assert changed > MIN_CHANGED_PIXELS, f"only {changed:.2%} of the pixels changed"
            assert page.get_by_text("Error displaying widget").count() == 0
        except BaseException:
            page.screenshot(path=str(BUILD / "browser_failure.png"), full_page=True)
            print(f"JupyterLab log (tail):\n{log_path.read_text()[-3000:]}")
            raise
        finally:
            browser.close()

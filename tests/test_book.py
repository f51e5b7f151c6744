"""The book that ``make book`` builds, read in headless Chromium with the network cut off.

It opens ``build/book/index.html`` from a local HTTP server, follows the navigation to a
notebook page and checks that the maths was typeset by the MathJax copy inside the book
(no request may leave 127.0.0.1) and that the notebook's figures loaded. CI builds the
book before the tests (``.ci/run``); elsewhere the test is skipped until ``make book``
has run, and says so.
"""

import functools
import http.server
import json
import os
import re
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "build" / "book"
CHROMIUM = os.environ.get("FWPLAB_CHROMIUM", "/usr/bin/chromium")
NOTEBOOKS = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))

if not (BOOK / "index.html").is_file():
    pytest.skip("build/book is missing: run `make book` first", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium fonts-dejavu)",
                allow_module_level=True)


#: Calls in a notebook's code that show a figure or a widget (whose still is a figure).
DRAWS = re.compile(r"\bdraw_\w+\(|\bplt\.|\.plot\(|Explorer\(|_explorer\(|_playground\(")


def _draws(stem: str) -> bool:
    cells = json.loads((REPO / "notebooks" / f"{stem}.ipynb").read_text())["cells"]
    return any(DRAWS.search("".join(c["source"])) for c in cells if c["cell_type"] == "code")


def _shows_widget(stem: str) -> bool:
    cells = json.loads((REPO / "notebooks" / f"{stem}.ipynb").read_text())["cells"]
    return any(re.search(r"Explorer\(|_explorer\(|_playground\(", "".join(c["source"]))
               for c in cells if c["cell_type"] == "code")


def test_every_notebook_and_reference_page_is_in_the_book():
    drawing = [stem for stem in NOTEBOOKS if _draws(stem)]
    assert len(drawing) >= 5, drawing
    for stem in NOTEBOOKS:
        page = BOOK / "notebooks" / f"{stem}.html"
        assert page.is_file(), page
        html = page.read_text(encoding="utf-8")
        if stem in drawing:
            assert "<img" in html, f"{page.name} has no figure"
        if _shows_widget(stem):  # a static page shows the widget's still and how to run it
            assert 'class="fwplab-still"' in html and "make lab" in html, page.name
            assert "VBox(children" not in html, page.name
    for page in ("docs/maths.html", "docs/glossary.html", "book/api.html", "README.html",
                 "search.html", "_static/mathjax/tex-chtml.js"):
        assert (BOOK / page).is_file(), page


@pytest.fixture(scope="module")
def server():
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(BOOK))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_book_reads_offline_with_maths_and_figures(server):
    outside = []

    def only_local(route):
        if route.request.url.startswith(server):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.route("**/*", only_local)
            page.goto(f"{server}/index.html")
            page.wait_for_url("**/book/index.html")
            titles = page.locator(".sidebar-tree a").all_inner_texts()
            assert len(titles) >= len(NOTEBOOKS) + 3, titles
            page.locator(".sidebar-tree a", has_text="Learning rules").first.click()
            page.wait_for_url("**/notebooks/01_*.html")
            page.wait_for_selector("mjx-container", timeout=30_000)
            typeset = page.locator("mjx-container").count()
            assert typeset >= 5, typeset
            figures = page.eval_on_selector_all(
                "img", "images => images.filter(i => i.complete && i.naturalWidth > 100).length")
            assert figures >= 1
            assert page.locator("a.next-page").count() == 1  # navigation to notebook 2
            page.goto(f"{server}/search.html?q=delta")
            page.wait_for_selector("#search-results li", timeout=30_000)
        finally:
            browser.close()
    assert not outside, f"the book asked the network for {outside[:5]}"

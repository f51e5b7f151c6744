"""The book that ``make book`` builds, read as HTML and in headless Chromium offline.

The HTML checks: every notebook page offers its ``.ipynb`` (the file is there) and the
command that opens it, every figure has a numbered caption and alt text, the landing page
lists the notebooks in order, and the API reference has one page per topic, each with an
introduction and no object or field listed twice. In Chromium (from a local HTTP server,
no request may leave 127.0.0.1): the maths is typeset by the MathJax copy inside the book,
figures load, code cells have copy buttons and every code line wraps into view, and search results
quote the pages without raw LaTeX. CI builds the book before the tests (``.ci/run``);
elsewhere these tests are skipped until ``make book`` has run, and say so.
"""

import functools
import http.server
import json
import os
import re
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "build" / "book"
CHROMIUM = os.environ.get("FWPLAB_CHROMIUM", "/usr/bin/chromium")
NOTEBOOKS = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
API_TOPICS = ("rules", "discrete", "models", "solvers", "paths", "data", "training", "widgets",
              "rl")

if not (BOOK / "index.html").is_file():
    pytest.skip("build/book is missing: run `make book` first", allow_module_level=True)


def _chromium():
    """Playwright's sync API, or a skip saying what is missing."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium fonts-dejavu)")
    return sync_api


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


class _Figures(HTMLParser):
    """Each ``<img>`` of a page: its alt text and whether it sits in a captioned figure."""

    def __init__(self):
        super().__init__()
        self.open, self.images, self.captions = [], [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self.open.append([])
        elif tag == "img":
            self.images.append({"alt": attrs.get("alt") or "", "src": attrs.get("src", ""),
                                "in_figure": bool(self.open)})
            if self.open:
                self.open[-1].append(self.images[-1])
        elif tag == "figcaption" and self.open:
            for image in self.open[-1]:
                image["captioned"] = True

    def handle_endtag(self, tag):
        if tag == "figure" and self.open:
            self.open.pop()


def _figures(page: Path) -> list[dict]:
    html = page.read_text(encoding="utf-8")
    main = html[html.index('role="main"'):]
    parser = _Figures()
    parser.feed(main)
    return parser.images


def test_each_notebook_page_offers_its_notebook_and_captions_its_figures():
    for stem in NOTEBOOKS:
        page = BOOK / "notebooks" / f"{stem}.html"
        html = page.read_text(encoding="utf-8")
        assert f'href="{stem}.ipynb" download' in html, f"{page.name}: no download link"
        assert f"jupyter lab {stem}.ipynb" in html and "make lab" in html, page.name
        downloaded = json.loads((BOOK / "notebooks" / f"{stem}.ipynb").read_text())
        source = json.loads((REPO / "notebooks" / f"{stem}.ipynb").read_text())
        assert downloaded["cells"] == source["cells"], f"{stem}.ipynb is not the notebook"
        number = int(stem[:2])
        for image in _figures(page):  # drawn figures and widgets' stills
            where = f"{page.name}: {image['src'][:60]}"
            assert image.get("captioned"), f"{where} has no caption"
            assert image["alt"].startswith(f"Figure {number}."), f"{where}: alt {image['alt']!r}"
            assert len(image["alt"]) > 30 and ".png" not in image["alt"], where
    html = (BOOK / "notebooks" / f"{NOTEBOOKS[0]}.html").read_text(encoding="utf-8")
    assert re.search(r'<figcaption>\s*<p><span class="caption-text"><strong>Figure 1\.1\. </strong>\w', html), \
        "captions start with their number, as markup"


def test_the_landing_page_says_what_comes_in_which_order():
    html = (BOOK / "book" / "index.html").read_text(encoding="utf-8")
    main = html[html.index('role="main"'):]
    assert "What you will learn" in main
    assert "benchmark" not in main.lower() and "measured" not in main.lower()
    positions = [main.find(f'href="../notebooks/{stem}.html"') for stem in NOTEBOOKS]
    assert -1 not in positions and positions == sorted(positions), positions


def test_the_api_reference_is_split_by_topic_without_repeats():
    listed = set()
    for topic in API_TOPICS:
        page = BOOK / "book" / "api" / f"{topic}.html"
        html = page.read_text(encoding="utf-8")
        main = html[html.index('role="main"'):]
        first_object = main.index('<dl class="py')
        assert main.find("<p>", 0, first_object) != -1, f"{page.name}: no introduction"
        objects = re.findall(r'<dt class="sig sig-object py" id="([^"]+)"', main)
        assert objects, page.name
        assert not listed & set(objects), f"{page.name} repeats {listed & set(objects)}"
        listed |= set(objects)
        assert "Alias for field number" not in main, page.name
        for entry in re.split(r'<dl class="py class">', main)[1:]:
            (name,) = re.findall(r'^\s*<dt class="sig sig-object py" id="([^"]+)"', entry)[:1]
            fields = entry.split('<dl class="py')[0]  # the class's own field lists
            variables = set(re.findall(r"<strong>(\w+)</strong>",
                                       fields.split("Variables")[-1])) if "Variables" in fields \
                else set()
            parameters = set(re.findall(r"<strong>(\w+)</strong>",
                                        fields.split("Parameters")[-1].split("Variables")[0])) \
                if "Parameters" in fields else set()
            members = set(re.findall(rf'id="{re.escape(name)}\.(\w+)"', entry))
            twice = variables & (members | parameters)
            assert not twice, f"{page.name}: {name}'s {sorted(twice)} listed twice"
    assert {"fwplab.models.build_model", "fwplab.train.fit", "fwplab.rl.train_agent",
            "fwplab.data.load_dataset", "fwplab.rules.register_rule"} <= listed


@pytest.fixture(scope="module")
def server():
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(BOOK))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


#: Code blocks (cells, outputs) with a line wider than their box: cut, or behind a scroll
#: bar that overlay scrolling hides. The book wraps them instead.
CLIPPED = """() => [...document.querySelectorAll('article pre')]
    .filter(pre => pre.scrollWidth > pre.clientWidth + 1).length"""


def test_book_reads_offline_with_maths_and_figures(server):
    sync_api = _chromium()
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
            assert page.locator("a.download", has_text=".ipynb").count() == 1
            cells = page.locator("div.cell div.cell_input div.highlight").count()
            assert page.locator("div.cell_input button.copybtn").count() == cells > 5
            assert page.locator("div.cell_output button.copybtn").count() == 0
            for stem in NOTEBOOKS:  # at the width of a laptop and of a phone
                for width in (1280, 400):
                    page.set_viewport_size({"width": width, "height": 900})
                    page.goto(f"{server}/notebooks/{stem}.html")
                    assert page.evaluate(CLIPPED) == 0, f"{stem} cuts code lines at {width} px"
            page.goto(f"{server}/search.html?q=delta")
            page.wait_for_selector("#search-results li p.context", timeout=30_000)
            snippets = " ".join(page.locator("#search-results p.context").all_inner_texts())
            assert snippets.strip() and "\\(" not in snippets and "\\frac" not in snippets
        finally:
            browser.close()
    assert not outside, f"the book asked the network for {outside[:5]}"

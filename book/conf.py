"""Sphinx configuration of the fwplab book (``make book`` builds it into ``build/book/``).

The source folder is the repository root, so the notebooks, ``docs/`` and the README are
read where they live; ``include_patterns`` keeps everything else out.
"""

import os

project = "fwplab"
author = "the fwplab authors"
copyright = "the fwplab authors, Apache-2.0"
root_doc = "book/index"
include_patterns = ["book/*.md", "docs/*.md", "notebooks/[0-9][0-9]_*.ipynb", "README.md"]

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    # MathJax 3 copied into the book itself, so the maths renders without a network.
    "sphinx-mathjax-offline",
]

myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# The notebooks are committed without outputs: run each one while building the book.
nb_execution_mode = os.environ.get("FWPLAB_BOOK_EXECUTE", "force")
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_show_tb = True
# A static page cannot run a widget: show the still image and note each widget provides.
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]
# ... and loads no widget renderer from a CDN (the book must read offline).
nb_ipywidgets_js = {}

autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True

html_theme = "furo"
html_title = "fwplab: continuous-time Fast Weight Programmers"
html_static_path = []


def _redirect_to_index(app, exception):
    """``build/book/index.html`` opens the book's first page (it lives in ``book/``)."""
    if exception is None and app.builder.format == "html":
        target = os.path.join(app.outdir, "index.html")
        with open(target, "w", encoding="utf-8") as page:
            page.write('<!DOCTYPE html><meta charset="utf-8"><title>fwplab</title>'
                       '<meta http-equiv="refresh" content="0; url=book/index.html">'
                       '<a href="book/index.html">fwplab book</a>\n')


def setup(app):
    app.connect("build-finished", _redirect_to_index)

"""Sphinx configuration of the fwplab book (``make book`` builds it into ``build/book/``).

The source folder is the repository root, so the notebooks, ``docs/`` and the README are
read where they live; ``include_patterns`` keeps everything else out. Each notebook page
gets a download link to its ``.ipynb`` and the command that opens it locally, and each
figure a numbered caption and alt text (``_caption_figures``); ``_static/fwplab.css``
wraps long code lines and ``_static/fwplab.js`` keeps LaTeX out of search snippets.
"""

import html
import json
import logging
import os
import re
import shutil

from docutils import nodes

project = "fwplab"
author = "the fwplab authors"
copyright = "the fwplab authors, Apache-2.0"
root_doc = "book/index"
include_patterns = ["book/*.md", "book/api/*.md", "docs/*.md", "notebooks/[0-9][0-9]_*.ipynb",
                    "README.md"]

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    # MathJax 3 copied into the book itself, so the maths renders without a network.
    "sphinx-mathjax-offline",
    # A copy button on every code cell (not on outputs, not on prompts).
    "sphinx_copybutton",
]
copybutton_selector = "div:not(.output) > div.highlight pre"
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True

myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# furo's accessible-pygments calls logging.basicConfig(level=INFO) when imported, which
# prints every INFO line of the notebook runner; import it now and take that back.
_root = logging.getLogger()
_handlers = list(_root.handlers)
import a11y_pygments  # noqa: E402,F401

for _handler in set(_root.handlers) - set(_handlers):
    _root.removeHandler(_handler)
_root.setLevel(logging.WARNING)

# The kernels that run the notebooks read their IPython settings from build/ipython, not
# the user's: no startup files, and no kernel log below ERROR (each kernel would warn that
# its loopback connection is not encrypted).
_IPYTHONDIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "build",
                           "ipython")
os.makedirs(os.path.join(_IPYTHONDIR, "profile_default"), exist_ok=True)
_KERNEL_CONFIG = os.path.join(_IPYTHONDIR, "profile_default", "ipython_kernel_config.py")
with open(_KERNEL_CONFIG + ".part", "w", encoding="utf-8") as _config:
    _config.write('c.IPKernelApp.log_level = "ERROR"\n')
os.replace(_KERNEL_CONFIG + ".part", _KERNEL_CONFIG)
os.environ["IPYTHONDIR"] = os.path.normpath(_IPYTHONDIR)

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
# Types go into the documented parameters only: a dataclass's fields are listed once, under
# "Variables" (its docstring's Attributes), not again as undocumented "Parameters".
autodoc_typehints_description_target = "documented"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
# "Returns: (x, lengths, ...): ..." describes a tuple; it is not a type to link.
napoleon_use_rtype = False

#: One line of a Google-style section naming several attributes: ``a, b, c: text``.
_SEVERAL = re.compile(r"^(\s+)([A-Za-z_]\w*(?:,\s*[A-Za-z_]\w*)+):\s+(.*)$")


def _one_attribute_per_line(app, what, name, obj, options, lines):
    """Write ``a, b: text`` under "Attributes:" as ``a: text`` and ``b: text`` (napoleon
    reads the first form as one attribute with a type)."""
    out, section = [], None
    for line in lines:
        if re.match(r"^\S.*:\s*$", line):
            section = line.strip()
        several = _SEVERAL.match(line) if section == "Attributes:" else None
        if several:
            indent, names, text = several.groups()
            out += [f"{indent}{attribute.strip()}: {text}" for attribute in names.split(",")]
        else:
            out.append(line)
    lines[:] = out


def _skip_tuple_aliases(app, what, name, obj, skip, options):
    """A NamedTuple's fields are documented in its docstring's Attributes; skip the
    generated "Alias for field number N" entries that would list each field again."""
    if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
        return True
    return None

html_theme = "furo"
html_title = "fwplab: continuous-time Fast Weight Programmers"
html_static_path = ["_static"]
html_css_files = ["fwplab.css"]
html_js_files = ["fwplab.js"]

#: A notebook's page (its document name) and the notebook's number.
_NOTEBOOK = re.compile(r"^notebooks/(\d\d)_")


def _plain(markdown: str) -> str:
    """``markdown`` as plain text for alt text: no LaTeX commands, no markup."""
    text = re.sub(r"\$+([^$]+)\$+", lambda m: re.sub(r"\\([A-Za-z]+)", r"\1", m.group(1)),
                  markdown)
    text = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", text)
    return " ".join(re.sub(r"[`*{}\\]", "", text).split())


def _inline(markdown: str) -> list:
    """Caption nodes for one line of markdown: ``code`` and $maths$ kept, links as text."""
    markdown = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", markdown)
    parts = []
    for piece in re.split(r"(`[^`]+`|\$[^$]+\$)", markdown):
        if piece.startswith("`") and piece.endswith("`") and len(piece) > 1:
            parts.append(nodes.literal(piece[1:-1], piece[1:-1]))
        elif piece.startswith("$") and piece.endswith("$") and len(piece) > 1:
            parts.append(nodes.math(piece[1:-1], piece[1:-1]))
        elif piece:
            parts.append(nodes.Text(re.sub(r"\*\*?([^*]+)\*\*?", r"\1", piece)))
    return parts


def _figure_context(cells: list, index: int) -> tuple[str, str]:
    """The section heading above code cell ``index`` and the sentence that introduces its
    figure: the last sentence of the markdown cell right before it ('' when code is)."""
    heading = intro = ""
    for offset, cell in enumerate(reversed(cells[:index])):
        if cell["cell_type"] != "markdown":
            continue
        text = "".join(cell["source"]).strip()
        if offset == 0:
            last = " ".join(re.split(r"\n\s*\n", text)[-1].split())
            if not last.startswith("#"):
                sentence = re.split(r"(?<=[.!?])\s+(?=[A-Z`$(])", last)[-1]
                intro = sentence.rstrip(":") + "." if sentence.endswith(":") else sentence
        titles = re.findall(r"^#+\s+(.+)$", text, flags=re.M)
        if titles:
            heading = titles[-1].strip()
            break
    return heading, intro


#: The alt text fwplab.widgets gives a widget's still, replaced by the figure's own.
_STILL_ALT = 'alt="still of the widget"'


def _is_figure(node) -> bool:
    """An image, or the raw HTML of a widget's still (a figure of its own)."""
    return isinstance(node, nodes.image) or (
        isinstance(node, nodes.raw) and _STILL_ALT in node.astext())


def _caption_figures(app, doctree, docname):
    """Wrap each figure of a notebook page in a numbered figure with a caption and alt text.

    A cell that sets ``mystnb: figure: caption`` (or ``image: alt``) in its metadata keeps
    its own; every other figure is captioned with its notebook, its number, the section it
    is drawn in and the sentence introducing it. Runs when the page is written, so that
    pages read in an earlier build get the same captions.
    """
    match = _NOTEBOOK.match(docname)
    if match is None:
        return
    with open(app.env.doc2path(docname), encoding="utf-8") as source:
        cells = json.load(source)["cells"]
    number = 0
    for cell in doctree.findall(nodes.container):
        if cell.get("nb_element") != "cell_code":
            continue
        heading, intro = _figure_context(cells, cell["cell_index"])
        for image in list(cell.findall(_is_figure)):
            number += 1
            label = f"Figure {int(match.group(1))}.{number}"
            identifier = nodes.make_id(label)
            if isinstance(image, nodes.raw):  # a widget's still: already a captioned figure
                alt = html.escape(f"{label}: still of the widget ({_plain(heading)}). "
                                  f"{_plain(intro)}".strip(), quote=True)
                still = image.astext().replace(_STILL_ALT, f'alt="{alt}"').replace(
                    "<figcaption>", f"<figcaption><strong>{label}.</strong> ", 1).replace(
                    '<figure class="fwplab-still">',
                    f'<figure class="fwplab-still" id="{identifier}">', 1)
                image.replace_self(nodes.raw("", still, format="html"))
                continue
            if isinstance(image.parent, nodes.figure):
                image.setdefault("alt", f"{label}: {_plain(heading)}")
                if not image.parent["ids"]:
                    image.parent["ids"].append(identifier)
                continue
            if "alt" not in image:
                image["alt"] = f"{label}, drawn by the code above ({_plain(heading)}). " \
                    f"{_plain(intro)}".strip()
            text = intro or (heading if heading[-1:] in ".?!" else heading + ".")
            caption = nodes.caption("", "", nodes.strong(label, label + ". "), *_inline(text))
            figure = nodes.figure("", ids=[identifier], classes=["fwplab-figure"])
            image.replace_self(figure)
            figure += [image, caption]


def _notebook_banner(app, doctree):
    """Put a download link to the page's ``.ipynb`` and how to open it under its title."""
    if _NOTEBOOK.match(app.env.docname) is None:
        return
    name = os.path.basename(app.env.docname) + ".ipynb"
    banner = (f'<div class="fwplab-download"><a class="reference download" href="{name}" '
              f'download="{name}">Download {name}</a> and open it with '
              f'<code>jupyter lab {name}</code>, or in a clone of the repository run '
              f'<code>make lab</code> and open <code>notebooks/{name}</code>.</div>')
    title = next(doctree.findall(nodes.title), None)
    section = title.parent if title is not None else doctree
    index = section.index(title) + 1 if title is not None else 0
    section.insert(index, nodes.raw("", banner, format="html"))


def _copy_notebooks(app, exception):
    """Copy each notebook next to its page, where the download link points."""
    if exception is not None or app.builder.format != "html":
        return
    for docname in app.env.found_docs:
        if _NOTEBOOK.match(docname):
            target = os.path.join(app.outdir, docname + ".ipynb")
            shutil.copyfile(app.env.doc2path(docname), target + ".part")
            os.replace(target + ".part", target)


def _redirect_to_index(app, exception):
    """``build/book/index.html`` opens the book's first page (it lives in ``book/``)."""
    if exception is None and app.builder.format == "html":
        target = os.path.join(app.outdir, "index.html")
        with open(target, "w", encoding="utf-8") as page:
            page.write('<!DOCTYPE html><meta charset="utf-8"><title>fwplab</title>'
                       '<meta http-equiv="refresh" content="0; url=book/index.html">'
                       '<a href="book/index.html">fwplab book</a>\n')


def setup(app):
    app.connect("autodoc-process-docstring", _one_attribute_per_line)
    app.connect("autodoc-skip-member", _skip_tuple_aliases)
    app.connect("doctree-resolved", _caption_figures)
    app.connect("doctree-read", _notebook_banner)
    app.connect("build-finished", _copy_notebooks)
    app.connect("build-finished", _redirect_to_index)

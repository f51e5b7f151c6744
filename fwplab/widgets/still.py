"""A still image for every widget, for pages that cannot run one.

A static page (the book that ``make book`` builds, an HTML export) has no kernel, so a
widget's own view cannot be shown there. Each explorer therefore adds to its MIME bundle
an HTML still of its current figure with a note on how to run it live; Jupyter shows the
live widget (its view has the higher priority), the book shows the still.
"""

from __future__ import annotations

import base64
import functools
import io
from typing import Callable

__all__ = ["STILL_NOTE", "add_still", "figure_png", "still_box"]

#: The note under each still.
STILL_NOTE = ("A still of an interactive widget: run this notebook (<code>make lab</code>) "
              "to move its controls.")


def figure_png(figure) -> bytes:
    """The PNG bytes of a matplotlib ``figure`` as a notebook shows it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def add_still(bundle: dict, png: bytes) -> dict:
    """``bundle`` with a ``text/html`` still of the figure ``png`` (PNG bytes) and the note."""
    if not png.startswith(b"\x89PNG"):
        raise ValueError("png: expected the bytes of a PNG image")
    data = base64.b64encode(png).decode("ascii")
    html = (f'<figure class="fwplab-still"><img src="data:image/png;base64,{data}" '
            f'alt="still of the widget"/><figcaption>{STILL_NOTE}</figcaption></figure>')
    return {**bundle, "text/html": html}


@functools.lru_cache(maxsize=None)
def _still_box_class():
    import ipywidgets

    class StillBox(ipywidgets.VBox):
        """An ``ipywidgets.VBox`` whose MIME bundle also carries a still of its figure."""

        def __init__(self, children, png: Callable[[], bytes]) -> None:
            super().__init__(children)
            self._still_png = png

        def _repr_mimebundle_(self, **kwargs):
            return add_still(super()._repr_mimebundle_(**kwargs) or {}, self._still_png())

    return StillBox


def still_box(children, png: Callable[[], bytes]):
    """An ``ipywidgets.VBox`` of ``children`` that static pages show as the still ``png()``.

    Args:
        children: the widgets, as for ``ipywidgets.VBox``.
        png: returns the PNG bytes of the figure the widget shows now.
    """
    return _still_box_class()(children, png)

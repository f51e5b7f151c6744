"""Widgets carry a still image for static pages (the book), beside their live view."""

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from fwplab.widgets.still import STILL_NOTE, add_still, still_box  # noqa: E402

ipywidgets = pytest.importorskip("ipywidgets")


def _png() -> bytes:
    figure, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def test_still_box_keeps_the_live_view_and_adds_the_still():
    png = _png()
    box = still_box([ipywidgets.IntSlider()], lambda: png)
    assert isinstance(box, ipywidgets.VBox) and len(box.children) == 1
    bundle = box._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    html = bundle["text/html"]
    assert STILL_NOTE in html
    encoded = html.split("base64,")[1].split('"')[0]
    assert base64.b64decode(encoded) == png


def test_add_still_refuses_what_is_not_a_png():
    with pytest.raises(ValueError, match="PNG"):
        add_still({}, b"GIF89a")


@pytest.mark.parametrize("build", ["playground", "capacity"])
def test_the_explorers_carry_a_still_of_their_current_figure(build):
    from fwplab.widgets.capacity import capacity_explorer
    from fwplab.widgets.playground import rule_playground, sample_problem

    widget = (rule_playground(sample_problem()) if build == "playground"
              else capacity_explorer(dim=8, num_pairs=8, max_dim=8, trials=1))
    html = widget._repr_mimebundle_()["text/html"]
    png = base64.b64decode(html.split("base64,")[1].split('"')[0])
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    plt.close("all")


def test_the_fast_weight_explorer_carries_a_still_of_its_heatmap():
    import torch

    import fwplab
    from fwplab.widgets.explorer import FastWeightExplorer

    torch.manual_seed(0)
    model = fwplab.build_model("delta_cde", 3, 2, hidden_channels=8, num_heads=2)
    x = torch.randn(2, 6, 3)
    explorer = FastWeightExplorer(model, x)
    html = explorer._repr_mimebundle_()["text/html"]
    png = base64.b64decode(html.split("base64,")[1].split('"')[0])
    assert png == bytes(explorer.image.value)
    plt.close("all")

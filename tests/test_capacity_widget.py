"""Memory capacity explorer: the drawing function and the slider widget."""

import numpy as np
import pytest
from matplotlib.figure import Figure

from fwplab.discrete import capacity_experiment, retrieval_error, store_pairs
from fwplab.widgets import capacity as capacity_widget
from fwplab.widgets.capacity import capacity_explorer, draw_capacity

#: Float64 round-off of a curve point drawn from the experiment.
SAME_VALUE_FLOAT64 = 1e-12


@pytest.fixture(scope="module")
def result():
    return capacity_experiment(6, 12, trials=2, sweeps=4)


def test_curves_show_the_experiment(result):
    figure = draw_capacity(result, num_pairs=9)
    curve_axes, recall_axes = figure.axes
    lines = {line.get_label(): line for line in curve_axes.get_lines()}
    hebb = lines["Hebb (1 pass)"]
    np.testing.assert_allclose(hebb.get_xdata(), np.arange(1, 13))
    np.testing.assert_allclose(hebb.get_ydata(), result.hebb_error.numpy())
    np.testing.assert_allclose(
        lines["least squares"].get_ydata(), result.least_squares_error.numpy()
    )
    delta = next(label for label in lines if label.startswith("delta"))
    np.testing.assert_allclose(lines[delta].get_ydata(), result.delta_error.numpy())
    markers = [line for line in curve_axes.get_lines() if line.get_marker() == "o"]
    assert [line.get_xdata()[0] for line in markers] == [9, 9]
    assert {line.get_ydata()[0] for line in markers} == {
        result.hebb_error[8].item(),
        result.delta_error[8].item(),
    }


def test_recall_panel_plots_every_component_of_the_first_draw(result):
    num_pairs = 4
    figure = draw_capacity(result, num_pairs=num_pairs)
    points = {line.get_label(): line for line in figure.axes[1].get_lines()}
    keys, values = result.keys[:1, :num_pairs], result.values[:1, :num_pairs]
    delta = store_pairs(keys, values, "delta", rate=result.delta_rate, sweeps=result.sweeps)
    stored, retrieved = points["delta"].get_xdata(), points["delta"].get_ydata()
    assert len(stored) == num_pairs * result.dim
    squared_error = ((retrieved - stored) ** 2).sum() / (stored**2).sum()
    expected = retrieval_error(delta, keys, values).item()
    assert abs(squared_error - expected) < SAME_VALUE_FLOAT64


def test_redrawing_into_a_figure_replaces_its_axes(result):
    figure = Figure()
    assert draw_capacity(result, 3, figure=figure) is figure
    draw_capacity(result, 5, figure=figure)
    assert len(figure.axes) == 2


def test_draw_rejects_a_number_of_pairs_out_of_range(result):
    with pytest.raises(ValueError, match="num_pairs must be between 1 and 12, got 13"):
        draw_capacity(result, 13)


def test_delta_label_says_one_pass_or_the_number_of_sweeps(result):
    one_pass = capacity_experiment(4, 8, trials=1, key_features="softmax")
    labels = [line.get_label() for line in draw_capacity(one_pass, 2).axes[0].get_lines()]
    assert "delta (1 pass, beta=1)" in labels
    labels = [line.get_label() for line in draw_capacity(result, 2).axes[0].get_lines()]
    assert "delta (4 sweeps, beta=1)" in labels
    assert "softmax keys" in draw_capacity(one_pass, 2).axes[0].get_title()


def _controls(explorer):
    (dim_slider, pairs_slider), (rate_slider, sweeps_slider, keys_menu) = (
        row.children for row in explorer.children[:2]
    )
    return dim_slider, pairs_slider, rate_slider, sweeps_slider, keys_menu


def test_explorer_recomputes_only_when_a_setting_other_than_n_changes(monkeypatch):
    pytest.importorskip("ipywidgets")
    computed = []

    def counting_experiment(dim, max_pairs, **kwargs):
        computed.append((dim, kwargs["delta_rate"], kwargs["sweeps"], kwargs["key_features"]))
        return capacity_experiment(dim, max_pairs, **kwargs)

    monkeypatch.setattr(capacity_widget, "capacity_experiment", counting_experiment)
    explorer = capacity_explorer(dim=4, num_pairs=6, max_dim=8, trials=1, sweeps=2)
    dim_slider, pairs_slider, rate_slider, sweeps_slider, keys_menu = _controls(explorer)
    assert computed == [(4, 1.0, 2, "unit")] and pairs_slider.max == 8
    pairs_slider.value = 2
    assert len(computed) == 1
    dim_slider.value = 6
    assert computed[-1] == (6, 1.0, 2, "unit") and pairs_slider.max == 12
    pairs_slider.value = 11
    dim_slider.value = 4
    # Back to a cached d; N is clamped to the new maximum 2 d.
    assert len(computed) == 2 and pairs_slider.value == 8
    rate_slider.value = 0.5
    sweeps_slider.value = 5
    keys_menu.value = "softmax"
    assert computed[2:] == [(4, 0.5, 2, "unit"), (4, 0.5, 5, "unit"), (4, 0.5, 5, "softmax")]
    keys_menu.value = "unit"
    assert len(computed) == 5


def test_explorer_rejects_bad_starting_values():
    pytest.importorskip("ipywidgets")
    with pytest.raises(ValueError, match="dim must be between 2 and max_dim = 8, got 9"):
        capacity_explorer(dim=9, max_dim=8)
    with pytest.raises(ValueError, match=r"num_pairs must be between 1 and 2 \* dim = 8, got 9"):
        capacity_explorer(dim=4, num_pairs=9)
    with pytest.raises(ValueError, match="sweeps must be between 1 and max_sweeps = 20, got 21"):
        capacity_explorer(sweeps=21)
    with pytest.raises(ValueError, match=r"delta_rate must be in \(0, 2\), got 2.5"):
        capacity_explorer(delta_rate=2.5)
    with pytest.raises(ValueError, match="key_features must be one of"):
        capacity_explorer(key_features="gaussian")

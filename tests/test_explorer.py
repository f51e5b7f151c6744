"""The fast-weight explorer: its data, its figure and its widget, without a browser."""

import io

import numpy as np
import PIL.Image
import pytest
import torch
from matplotlib.figure import Figure

import fwplab
from fwplab.discrete import retrieval_error
from fwplab.widgets.explorer import (
    FastWeightExplorer,
    FastWeightFigure,
    draw_fast_weights,
    fast_weight_trace,
    recall_error_rate,
    stored_pair_error,
    time_index,
    with_rule,
)
from fwplab.widgets.plots import draw_parameter_scaling, draw_weight_snapshots

pytest.importorskip("ipywidgets")

RTOL = 1e-5
ATOL = 1e-6
#: Blitting draws the moving artists over the axes frame instead of under it: a few
#: pixels on the heatmap's border differ from a full redraw.
BLIT_PIXEL_FRACTION = 0.005
CHANNELS, CLASSES, HIDDEN, HEADS = 3, 2, 8, 2
LENGTHS = (7, 4, 6)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return fwplab.build_model("delta_cde", CHANNELS, CLASSES, hidden_channels=HIDDEN,
                              num_heads=HEADS)


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(len(LENGTHS), max(LENGTHS), CHANNELS, generator=generator)
    times = torch.tensor([0.0, 0.5, 0.7, 1.6, 2.0, 3.1, 3.3])
    return x, times, torch.tensor(LENGTHS)


def test_trace_shapes_and_series_end(model, batch):
    x, times, lengths = batch
    trace = fast_weight_trace(model, x, times, lengths, series=1)
    length, d = LENGTHS[1], HIDDEN // HEADS
    assert trace.rule == "delta" and trace.series == 1
    torch.testing.assert_close(trace.times, times[:length])
    assert trace.weights.shape == trace.updates.shape == (length, HEADS, d, d)
    assert trace.keys.shape == trace.values.shape == trace.readouts.shape == (length, HEADS, d)
    assert trace.singular_values.shape == (length, HEADS, d)
    assert trace.rates.shape == trace.norms.shape == (length, HEADS)
    assert trace.query.shape == (HEADS, d)
    assert trace.probabilities.shape == (length, CLASSES)
    torch.testing.assert_close(trace.keys.sum(-1), torch.ones(length, HEADS))


def test_trace_matches_the_model(model, batch):
    """W(t) is the model's own trajectory and the last read-out is the model's prediction."""
    x, times, lengths = batch
    trace = fast_weight_trace(model, x, times, lengths, series=2)
    with torch.no_grad():
        logits = model(x, times, lengths)
        weights = model.fast_weight_trajectory(x[2:3, :LENGTHS[2]], times[:LENGTHS[2]])[0]
    torch.testing.assert_close(trace.weights, weights, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(trace.probabilities[-1], logits[2].softmax(-1),
                               rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(
        trace.readouts, torch.einsum("thij,hj->thi", trace.weights, trace.query))
    torch.testing.assert_close(trace.norms, trace.weights.flatten(-2).norm(dim=-1))
    torch.testing.assert_close(trace.singular_values[..., 0],
                               torch.linalg.matrix_norm(trace.weights, ord=2))


def test_with_rule_keeps_slow_weights_and_leaves_the_model_alone(batch):
    torch.manual_seed(0)
    original = fwplab.build_model("delta_ode", CHANNELS, CLASSES, hidden_channels=HIDDEN,
                                  num_heads=HEADS, post_tanh=True)
    hebb = with_rule(original, "hebb")
    assert (hebb.rule, hebb.post_tanh, hebb.training) == ("hebb", False, False)
    assert (original.rule, original.post_tanh, original.training) == ("delta", True, True)
    for (name, mine), theirs in zip(original.state_dict().items(),
                                    hebb.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs), name
    assert with_rule(original, "delta").post_tanh
    assert hebb.config == {"name": "hebb_ode", "input_channels": CHANNELS,
                           "output_channels": CLASSES, "hidden_channels": HIDDEN,
                           "num_heads": HEADS}
    rebuilt = fwplab.build_model(**hebb.config)
    rebuilt.load_state_dict(hebb.state_dict())


def test_switching_rule_keeps_keys_and_changes_weights(model, batch):
    x, times, lengths = batch
    traces = {rule: fast_weight_trace(model, x, times, lengths, rule=rule)
              for rule in ("hebb", "oja", "delta")}
    for rule, trace in traces.items():
        assert trace.rule == rule
        torch.testing.assert_close(trace.keys, traces["delta"].keys)
    assert not torch.allclose(traces["hebb"].weights[-1], traces["delta"].weights[-1])
    assert not torch.allclose(traces["oja"].weights[-1], traces["delta"].weights[-1])
    # Every rule starts from the same W(t0) = sigma(b) tanh(v) softmax(k)^T.
    for trace in traces.values():
        torch.testing.assert_close(trace.weights[0], traces["delta"].weights[0])


def test_hebb_trace_integrates_its_updates(model, batch):
    """Hebb's dW/dt does not depend on W, so W(t) - W(t0) is the integral of the updates."""
    x, times, lengths = batch
    trace = fast_weight_trace(model, x, times, lengths, rule="hebb")
    torch.testing.assert_close(trace.updates[0], trace.weights[0])  # W(t0) = the first write
    assert (trace.norms[1:] != trace.norms[:-1]).all()


def test_delta_write_corrects_the_current_pair(model, batch):
    x, times, lengths = batch
    trace = fast_weight_trace(model, x, times, lengths, rule="delta")
    error = trace.values - torch.einsum("thij,thj->thi", trace.weights, trace.keys)
    expected = -2 * trace.rates * trace.keys.pow(2).sum(-1) * error.pow(2).sum(-1)
    torch.testing.assert_close(recall_error_rate(trace), expected, rtol=RTOL, atol=ATOL)
    assert (recall_error_rate(trace) <= 0).all()


def test_stored_pair_error_is_retrieval_error_of_the_final_weights(model, batch):
    x, times, lengths = batch
    trace = fast_weight_trace(model, x, times, lengths, rule="hebb")
    head = 1
    expected = retrieval_error(trace.weights[-1, head : head + 1], trace.keys[None, :, head],
                               trace.values[None, :, head])
    torch.testing.assert_close(stored_pair_error(trace)[head : head + 1], expected)


def test_batch_of_one_and_float64():
    torch.manual_seed(0)
    model = fwplab.build_model("hebb_ode", CHANNELS, CLASSES, hidden_channels=HIDDEN,
                               num_heads=HEADS).double()
    trace = fast_weight_trace(model, torch.randn(1, 5, CHANNELS, dtype=torch.float64))
    assert trace.weights.dtype == torch.float64 and trace.weights.shape[0] == 5


def test_time_index_maps_times_to_the_last_observation_before():
    times = torch.tensor([0.0, 0.5, 0.7, 1.6, 2.0])
    assert [time_index(times, float(t)) for t in times] == [0, 1, 2, 3, 4]
    assert time_index(times, 0.69) == 1
    assert time_index(times, 1.6 - 1e-9) == 3  # round-off of a slider value
    assert time_index(times, -3.0) == 0
    assert time_index(times, 7.0) == 4


def test_bad_arguments_raise_clear_errors(model, batch):
    x, times, lengths = batch
    with pytest.raises(ValueError, match="series: expected an index in \\[0, 2\\], got 3"):
        fast_weight_trace(model, x, times, lengths, series=3)
    with pytest.raises(ValueError, match="rule: expected one of"):
        fast_weight_trace(model, x, times, lengths, rule="anti-hebb")
    ncde = fwplab.build_model("ncde", CHANNELS, CLASSES, hidden_channels=HIDDEN)
    with pytest.raises(TypeError, match="model: expected a ContinuousFWP, got NeuralCDE"):
        fast_weight_trace(ncde, x)
    with pytest.raises(ValueError, match="model expects 3 input channels, got 4"):
        fast_weight_trace(model, torch.randn(2, 5, 4))
    trace = fast_weight_trace(model, x, times, lengths)
    with pytest.raises(ValueError, match="head: expected an index in \\[0, 1\\], got 2"):
        FastWeightFigure(trace, head=2)
    with pytest.raises(ValueError, match="index: expected an observation index in \\[0, 6\\]"):
        FastWeightFigure(trace).show(7)


def test_figure_shows_the_chosen_time_and_head(model, batch):
    x, times, lengths = batch
    trace = fast_weight_trace(model, x, times, lengths)
    figure = FastWeightFigure(trace, head=1)
    figure.show(3)
    np.testing.assert_allclose(figure.image.get_array(), trace.weights[3, 1].numpy(), rtol=1e-6)
    assert [bar.get_height() for bar in figure.key_bars] == pytest.approx(
        trace.keys[3, 1].tolist())
    assert [bar.get_width() for bar in figure.readout_bars] == pytest.approx(
        trace.readouts[3, 1].tolist())
    for line, dot, curve in figure.markers:
        assert line.get_xdata()[0] == pytest.approx(float(times[3]))
        assert tuple(dot.get_data()[1]) == pytest.approx((float(curve[3]),))
    assert figure.show(-1) is figure.figure and figure.index == LENGTHS[0] - 1
    assert isinstance(draw_fast_weights(trace, head=0, index=2), Figure)


def test_blitted_png_matches_a_full_redraw(model, batch):
    x, times, lengths = batch
    figure = FastWeightFigure(fast_weight_trace(model, x, times, lengths), head=1)
    first = figure.png()
    figure.show(5)
    blitted = np.asarray(PIL.Image.open(io.BytesIO(figure.png())))
    assert figure.png()[:8] == b"\x89PNG\r\n\x1a\n" and figure.png() != first
    figure.figure.canvas.draw()
    full = np.asarray(figure.figure.canvas.buffer_rgba())[..., :3]
    assert blitted.shape == full.shape
    assert (blitted != full).any(-1).mean() < BLIT_PIXEL_FRACTION


def test_explorer_slider_redraws_without_recomputing(model, batch):
    x, times, lengths = batch
    explorer = FastWeightExplorer(model, x, times, lengths, labels=torch.tensor([0, 1, 0]),
                                  class_names=["left", "right"])
    slider = explorer.time_slider
    assert (slider.min, slider.max, slider.value) == (0.0, pytest.approx(3.3), 0.0)
    assert slider.continuous_update is False
    trace, before = explorer.trace, explorer.image.value
    slider.value = float(times[3])
    assert explorer.figure.index == 3 and explorer.image.value != before
    slider.value = 1.9  # between observations 3 (t=1.6) and 4 (t=2.0)
    assert explorer.figure.index == 3
    assert explorer.trace is trace and list(explorer.traces) == [(0, "delta")]
    assert "class right" in explorer.series_selector.options[1][0]


def test_explorer_selectors_recompute_once_per_selection(model, batch):
    x, times, lengths = batch
    explorer = FastWeightExplorer(model, x, times, lengths)
    explorer.time_slider.value = float(times[5])
    explorer.rule_selector.value = "hebb"
    assert explorer.trace.rule == "hebb" and explorer.figure.index == 5
    assert set(explorer.traces) == {(0, "delta"), (0, "hebb")}
    explorer.series_selector.value = 1  # 4 observations: the time is clamped to the end
    assert explorer.trace.series == 1 and explorer.figure.index == 3
    assert explorer.time_slider.max == pytest.approx(float(times[3]))
    assert explorer.time_slider.value == pytest.approx(float(times[3]))
    explorer.head_selector.value = 1
    assert explorer.figure.head == 1 and len(explorer.traces) == 3
    explorer.rule_selector.value = "delta"
    explorer.series_selector.value = 0
    assert len(explorer.traces) == 4
    explorer.rule_selector.value = "hebb"
    assert len(explorer.traces) == 4  # cached
    np.testing.assert_allclose(explorer.figure.image.get_array(),
                               explorer.trace.weights[3, 1].numpy(), rtol=1e-6)


def test_explorer_is_displayable_and_rejects_bad_input(model, batch):
    x, times, lengths = batch
    explorer = FastWeightExplorer(model, x, times, lengths)
    assert "application/vnd.jupyter.widget-view+json" in explorer._repr_mimebundle_()
    with pytest.raises(ValueError, match="labels: expected shape \\(3,\\), got \\(2,\\)"):
        FastWeightExplorer(model, x, times, lengths, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="series: expected an index in \\[0, 1\\], got 2"):
        FastWeightExplorer(model, x, times, lengths, series=2, max_series=2)


def test_shared_plots_check_shapes(model, batch):
    x, times, lengths = batch
    trace = fast_weight_trace(model, x, times, lengths)
    figure = draw_weight_snapshots({"delta": trace.weights[:, 0]}, trace.times, [0, 3, 6])
    assert len(figure.axes) == 4  # three heatmaps and a colour bar
    with pytest.raises(ValueError, match="rows\\['delta'\\]: expected shape \\(7, d_v, d_k\\)"):
        draw_weight_snapshots({"delta": trace.weights[:3, 0]}, trace.times, [0])
    ax = draw_parameter_scaling({"a": torch.tensor([1.0, 2.0])}, {"a": torch.tensor([3.0, 9.0])},
                                "size")
    assert ax.get_xscale() == "log" and len(ax.get_lines()) == 1

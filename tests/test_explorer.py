"""The fast-weight explorer: its data, its figure and its widget, without a browser."""

import io

import numpy as np
import PIL.Image
import pytest
import torch
from matplotlib.figure import Figure

import fwplab
from fwplab.discrete import retrieval_error
from fwplab.paths import control_path, interpolation_coeffs
from fwplab.rules import RULES, register_rule, unregister_rule
from fwplab.widgets.explorer import (
    POINTS_PER_STEP,
    FastWeightExplorer,
    FastWeightFigure,
    cut_predictions,
    cut_steps,
    dense_grid,
    draw_fast_weights,
    drop_data_points,
    fast_weight_trace,
    control_limits,
    hermite_dense_output,
    observed_points,
    rule_menu,
    shown_activations,
    shown_controls,
    recall_error_rate,
    stored_pair_error,
    time_index,
    with_rule,
)
from fwplab.widgets.plots import draw_parameter_scaling, draw_weight_snapshots, mark_time_points

pytest.importorskip("ipywidgets")

RTOL = 1e-5
ATOL = 1e-6
#: Blitting draws the moving artists over the axes frame instead of under it: a few
#: pixels on the heatmap's border differ from a full redraw.
BLIT_PIXEL_FRACTION = 0.005
#: Largest error of the dense output against a solve 8x finer, relative to max |W|
#: (measured: 0.3 %; the model's own solve at its steps is off by 0.09 %).
DENSE_OUTPUT_TOLERANCE = 1e-2
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


def _fine_solution(model, x, times, grid):
    """W of ``model`` (a step size of its own) at every time of ``grid``: ``(points, heads, d, d)``."""
    path = control_path(interpolation_coeffs(x, times, interpolation=model.interpolation),
                        times, model.interpolation)
    with torch.no_grad():
        return model._fast_weights(path, grid)[:, 0]


def test_trace_shapes_and_series_end(model, batch):
    x, times, lengths = batch
    trace = fast_weight_trace(model, x, times, lengths, series=1)
    length, d = LENGTHS[1], HIDDEN // HEADS
    # POINTS_PER_STEP parts in each of the 3 gaps between the 4 time points.
    points = POINTS_PER_STEP * 3 + 1
    assert trace.rule == "delta" and trace.series == 1
    torch.testing.assert_close(trace.series_times, times[:length])
    torch.testing.assert_close(trace.times[trace.series_index], times[:length], rtol=0, atol=0)
    assert trace.times.shape == (points,) and (trace.times.diff() > 0).all()
    assert trace.observed.all() and trace.observed.shape == (length,)
    assert trace.weights.shape == trace.updates.shape == (points, HEADS, d, d)
    assert trace.keys.shape == trace.values.shape == trace.readouts.shape == (points, HEADS, d)
    assert trace.singular_values.shape == (points, HEADS, d)
    assert trace.rates.shape == trace.norms.shape == (points, HEADS)
    assert trace.query.shape == (points, HEADS, d)
    assert trace.probabilities.shape == (length, CLASSES)
    torch.testing.assert_close(trace.keys.sum(-1), torch.ones(points, HEADS))


def test_trace_matches_the_model(model, batch):
    """At the series' end W and the prediction are the model's own on the whole series."""
    x, times, lengths = batch
    trace = fast_weight_trace(model, x, times, lengths, series=2)
    with torch.no_grad():
        logits = model(x, times, lengths)
        weights = model.fast_weight_trajectory(x[2:3, :LENGTHS[2]], times[:LENGTHS[2]])[0]
    torch.testing.assert_close(trace.weights[-1], weights[-1], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(trace.probabilities[-1], logits[2].softmax(-1),
                               rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(
        trace.readouts, torch.einsum("thij,thj->thi", trace.weights, trace.query))
    torch.testing.assert_close(trace.norms, trace.weights.flatten(-2).norm(dim=-1))
    torch.testing.assert_close(trace.singular_values[..., 0],
                               torch.linalg.matrix_norm(trace.weights, ord=2))


@pytest.mark.parametrize("rule", ["delta", "hebb", "oja"])
def test_dense_weights_follow_a_finer_solve(model, batch, rule):
    """Inside a gap W is the cubic interpolation of its cut's solve: close to a solve 8x finer."""
    x, times, lengths = batch
    trace = fast_weight_trace(model, x, times, lengths, rule=rule)
    finer = with_rule(model, rule)
    finer.step_size = float(times.diff().min()) / 8
    for i in range(1, LENGTHS[0]):  # the gap before t_i comes from the series cut at t_i
        gap = slice(int(trace.series_index[i - 1]) + (i > 1), int(trace.series_index[i]) + 1)
        fine = _fine_solution(finer, x[:1, : i + 1], times[: i + 1],
                              trace.times[: gap.stop])[gap]
        error = (trace.weights[gap] - fine).abs().max() / fine.abs().max()
        assert error < DENSE_OUTPUT_TOLERANCE, (i, float(error))
    # Inside a step the dense output moves: it is not held at the step's start.
    assert not torch.allclose(trace.weights[1], trace.weights[0])


def test_hermite_dense_output_is_exact_for_cubics():
    times = torch.tensor([0.0, 0.4, 1.5, 2.0], dtype=torch.float64)
    at = torch.linspace(0.0, 2.0, 41, dtype=torch.float64)

    def cubic(t):
        return torch.stack([1 - 2 * t + 0.5 * t**3, t**2 - t**3], -1)

    def slope(t):
        return torch.stack([-2 + 1.5 * t**2, 2 * t - 3 * t**2], -1)

    dense = hermite_dense_output(times, cubic(times), slope(times), at)
    torch.testing.assert_close(dense, cubic(at))
    with pytest.raises(ValueError, match="values and derivatives: expected shape \\(4, ...\\)"):
        hermite_dense_output(times, cubic(times)[:3], slope(times)[:3], at)


def test_dense_grid_keeps_every_time_exactly():
    times = torch.tensor([0.0, 0.1, 0.7, 3.0])
    grid, index = dense_grid(times, 3)
    assert grid.shape == (10,) and index.tolist() == [0, 3, 6, 9]
    assert torch.equal(grid[index], times)
    torch.testing.assert_close(grid[4:7].diff(), torch.full((2,), 0.2))
    assert torch.equal(dense_grid(times, 1)[0], times)
    with pytest.raises(ValueError, match="points_per_step: expected a positive integer, got 0"):
        dense_grid(times, 0)


def _alone(model, x, times, i):
    """The model run on x_0 .. x_i alone: W(t_i), shown key, value, rate and read-out, p."""
    record = RULES[model.rule].option("post_tanh", model.post_tanh)
    cut, cut_times = x[:1, : i + 1], times[: i + 1]
    with torch.no_grad():
        W = model.fast_weight_trajectory(cut, cut_times)[0, -1]
        path = control_path(interpolation_coeffs(cut, cut_times, interpolation=model.interpolation),
                            cut_times, model.interpolation)
        end = cut_times[-1:]
        key, value, rate = model.slow_net(path.evaluate(end), path.derivative(end))
        key, value, rate = shown_controls(record, key[0, 0], value[0, 0], rate[0, 0])
        read = torch.einsum("hij,hj->hi", W, model.query(path, end)[0, 0])
        p = model(cut, cut_times).softmax(-1)[0]
    return W, key, value, rate[..., 0], read, p


@pytest.mark.parametrize("rule", ["delta", "hebb"])
@pytest.mark.parametrize("interpolation", ["natural_cubic", "hermite_cubic"])
def test_every_panel_at_t_i_is_the_model_on_x_0_to_x_i(batch, rule, interpolation):
    """What the figure shows at t_i is what the model holds after x_0 .. x_i, nothing later."""
    x, times, lengths = batch
    torch.manual_seed(0)
    model = with_rule(fwplab.build_model("delta_cde", CHANNELS, CLASSES, hidden_channels=HIDDEN,
                                         num_heads=HEADS, interpolation=interpolation), rule)
    trace = fast_weight_trace(model, x, times, lengths, series=0)
    figure = FastWeightFigure(trace, head=1)
    for i in range(1, LENGTHS[0]):
        W, key, value, rate, read, p = _alone(model, x, times, i)
        at = int(trace.series_index[i])
        torch.testing.assert_close(trace.weights[at], W, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(trace.keys[at], key, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(trace.values[at], value, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(trace.rates[at], rate, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(trace.readouts[at], read, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(trace.probabilities[i], p, rtol=RTOL, atol=ATOL)
        # The figure at any time in [t_i, t_{i+1}) shows the same, and no curve past t_i.
        end = int(trace.series_index[i + 1]) if i + 1 < LENGTHS[0] else at + 1
        for index in range(at, end):
            figure.show(index)
            np.testing.assert_allclose(figure.image.get_array(), W[1].numpy(), rtol=1e-5,
                                       atol=1e-6)
            assert [bar.get_height() for bar in figure.key_bars] == pytest.approx(
                key[1].tolist(), rel=1e-5, abs=1e-6)
            assert [bar.get_width() for bar in figure.value_bars] == pytest.approx(
                value[1].tolist(), rel=1e-5, abs=1e-6)
            assert figure.rate_bars[0].get_height() == pytest.approx(float(rate[1]), rel=1e-5)
            for line, _ in figure.curves:
                assert line.get_xdata().max() == pytest.approx(float(times[i]))
            for mark, _, _ in figure.point_marks:
                assert (mark.get_xdata() <= float(times[i]) + 1e-9).all()
    figure.show(0)  # at t_0 the model has too little to run on: nothing is shown
    assert np.isnan(np.ma.getdata(figure.image.get_array())).all()
    assert all(len(line.get_xdata()) == 0 for line, _ in figure.curves)


def test_no_value_at_or_before_t_i_depends_on_later_observations_or_times(model, batch):
    x, times, lengths = batch
    trace = fast_weight_trace(model, x, times, lengths, series=0)
    i = 3
    later = x.clone()
    later[0, i + 1 :] = torch.randn(LENGTHS[0] - i - 1, CHANNELS)
    closer = times.clone()
    closer[i + 2] = closer[i + 1] + 0.01  # a gap after t_i smaller than any before it
    for other_x, other_times in ((later, times), (x, closer)):
        other = fast_weight_trace(model, other_x, other_times, lengths, series=0)
        seen = int(trace.series_index[i]) + 1
        for name in ("weights", "keys", "values", "rates", "readouts", "norms",
                     "singular_values"):
            torch.testing.assert_close(getattr(other, name)[:seen], getattr(trace, name)[:seen],
                                       rtol=0, atol=0, msg=name)
        torch.testing.assert_close(other.probabilities[: i + 1], trace.probabilities[: i + 1],
                                   rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(
            cut_predictions(model, other_x, other_times, lengths)[: i + 1],
            trace.probabilities[: i + 1], rtol=0, atol=0, equal_nan=True)


def test_cut_steps_come_from_the_gaps_seen_so_far():
    times = torch.tensor([0.0, 0.5, 0.7, 1.6, 2.0, 2.05])
    assert cut_steps(times) == [(1, 1, 0.5), (2, 4, pytest.approx(0.2)),
                                (5, 5, pytest.approx(0.05))]
    assert cut_steps(times, 0.1) == [(1, 5, 0.1)]


def test_cut_predictions_are_the_model_on_each_prefix(model, batch):
    x, times, lengths = batch
    probabilities = cut_predictions(model, x, times, lengths, series=0)
    assert torch.isnan(probabilities[0]).all()
    with torch.no_grad():
        for i in range(1, LENGTHS[0]):
            alone = model(x[:1, : i + 1], times[: i + 1]).softmax(-1)[0]
            torch.testing.assert_close(probabilities[i], alone, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("interpolation, leaks", [("natural_cubic", True),
                                                  ("hermite_cubic", False)])
def test_streamed_read_out_sees_the_future_only_with_a_natural_spline(batch, interpolation,
                                                                       leaks):
    x, times, lengths = batch
    torch.manual_seed(0)
    model = fwplab.build_model("delta_cde", CHANNELS, CLASSES, hidden_channels=HIDDEN,
                               num_heads=HEADS, interpolation=interpolation).eval()
    with torch.no_grad():
        streamed = model(x[:1], times, stream=True)[0].softmax(-1)
    gap = (cut_predictions(model, x, times, lengths)[1:] - streamed[1:]).abs().max()
    assert (gap > 1e-3) if leaks else (gap < 1e-5), float(gap)


def test_dropped_points_keep_the_time_channel_and_writes_go_on(model):
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(4, 12, CHANNELS, generator=generator)
    x[..., 0] = torch.arange(12.0)
    lengths = torch.tensor([12, 10, 12, 6])
    dropped = drop_data_points(x, lengths, 0.5, seed=3)
    torch.testing.assert_close(dropped, drop_data_points(x, lengths, 0.5, seed=3),
                               equal_nan=True, rtol=0, atol=0)
    assert torch.equal(dropped[..., 0], x[..., 0])
    observed = observed_points(dropped)
    assert observed[0].sum() == 6 and observed[3, :6].sum() == 3
    assert torch.equal(observed_points(x, time_channel=False), torch.ones(4, 12, dtype=bool))
    trace = fast_weight_trace(model, dropped, lengths=lengths, series=0)
    assert torch.equal(trace.observed, observed[0])
    # Between two observations with dropped points in between, the memory keeps changing.
    kept = trace.observed.nonzero().flatten()
    before, after = next((a, b) for a, b in zip(kept[:-1], kept[1:], strict=True) if b - a > 1)
    start, middle = trace.series_index[before], trace.series_index[before + 1]
    assert (trace.weights[middle] - trace.weights[start]).norm() > 1e-3
    with pytest.raises(ValueError, match="x: expected at least one data channel"):
        observed_points(x[..., :1])


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


def test_with_rule_keeps_the_delta_cde_layout(model, batch):
    """Hebb and Oja on delta_cde's slow net: keys from dX/dt, read-out W q, squashed Hebb."""
    x, times, lengths = batch
    for rule in ("hebb", "oja"):
        swapped = with_rule(model, rule)
        assert swapped.layout == model.layout == "keys_from_derivative"
        assert swapped.config["name"] == f"{rule}_cde"
        assert swapped.config["layout"] == "keys_from_derivative"
        rebuilt = fwplab.build_model(**swapped.config).eval()
        rebuilt.load_state_dict(swapped.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(x, times, lengths), swapped(x, times, lengths))
    official = fwplab.build_model("hebb_cde", CHANNELS, CLASSES, hidden_channels=HIDDEN,
                                  num_heads=HEADS)
    with pytest.raises(ValueError, match="got layout 'keys_from_path'"):
        fast_weight_trace(official, x, times, lengths)


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
    at = trace.series_index
    expected = retrieval_error(trace.weights[-1, head : head + 1], trace.keys[None, at, head],
                               trace.values[None, at, head])
    torch.testing.assert_close(stored_pair_error(trace)[head : head + 1], expected)


def test_batch_of_one_and_float64():
    torch.manual_seed(0)
    model = fwplab.build_model("hebb_ode", CHANNELS, CLASSES, hidden_channels=HIDDEN,
                               num_heads=HEADS).double()
    trace = fast_weight_trace(model, torch.randn(1, 5, CHANNELS, dtype=torch.float64))
    assert trace.weights.dtype == torch.float64
    assert trace.weights.shape[0] == 4 * POINTS_PER_STEP + 1
    assert trace.probabilities.dtype == torch.float64


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
    points = trace.times.shape[0]
    with pytest.raises(ValueError, match=f"index: expected a time index in \\[0, {points - 1}\\]"):
        FastWeightFigure(trace).show(points)


def test_figure_shows_the_chosen_time_and_head(model, batch):
    x, times, lengths = batch
    trace = fast_weight_trace(model, x, times, lengths)
    figure = FastWeightFigure(trace, head=1, class_names=["left", "right"])
    inside = int(trace.series_index[3]) + 2  # between t3 = 1.6 and t4 = 2.0
    figure.show(inside)
    at = int(trace.series_index[3])  # everything at t3, the last time point before
    np.testing.assert_allclose(figure.image.get_array(), trace.weights[at, 1].numpy(),
                               rtol=1e-6)
    assert [bar.get_height() for bar in figure.key_bars] == pytest.approx(
        trace.keys[at, 1].tolist())
    assert [bar.get_width() for bar in figure.readout_bars] == pytest.approx(
        trace.readouts[at, 1].tolist())
    for line, dot, curve in figure.markers:
        assert line.get_xdata()[0] == pytest.approx(float(trace.times[inside]))
        assert tuple(dot.get_data()[0]) == pytest.approx((1.6,))
        assert tuple(dot.get_data()[1]) == pytest.approx((float(curve[at]),))
    best = int(trace.probabilities[3].argmax())
    caption = figure.time_text.get_text()
    assert f"t = {float(trace.times[inside]):.2f}; last time point t3 = 1.60 (observed)" in caption
    assert f"cut there: class {['left', 'right'][best]} ({float(trace.probabilities[3, best]):.0%})" \
        in caption
    assert "too short to predict" in figure.caption(1)
    assert figure.show(-1) is figure.figure and figure.index == trace.times.shape[0] - 1
    assert isinstance(draw_fast_weights(trace, head=0, index=2), Figure)


def test_figure_marks_observed_and_dropped_time_points(model, batch):
    x, times, lengths = batch
    dropped = x.clone()
    dropped[0, 2, 1:] = float("nan")
    trace = fast_weight_trace(model, dropped, times, lengths)
    assert trace.observed.tolist() == [True, True, False, True, True, True, True]
    figure = FastWeightFigure(trace)
    labels = [line.get_label() for line in figure.norm_axes.get_lines()]
    assert labels.count("observed") == 1 and labels.count("dropped") == 1
    marks = {line.get_label(): line for line in figure.norm_axes.get_lines()}
    figure.show(-1)
    np.testing.assert_allclose(marks["dropped"].get_xdata(), [0.7])
    np.testing.assert_allclose(marks["observed"].get_ydata(),
                               trace.norms[trace.series_index[trace.observed], 0].numpy())
    with pytest.raises(ValueError, match="expected three equal shapes"):
        mark_time_points(figure.norm_axes, times, times[:3], trace.observed)


def test_blitted_png_matches_a_full_redraw(model, batch):
    x, times, lengths = batch
    figure = FastWeightFigure(fast_weight_trace(model, x, times, lengths), head=1)
    first = figure.png()
    figure.show(18)
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
    slider, trace = explorer.time_slider, explorer.trace
    assert (slider.min, slider.max, slider.value) == (0.0, pytest.approx(3.3), 0.0)
    assert slider.step == pytest.approx(float(trace.times.diff().min()))
    assert slider.continuous_update is False
    before = explorer.image.value
    slider.value = float(times[3])
    assert explorer.figure.index == trace.series_index[3] and explorer.image.value != before
    slider.value = 1.9  # between time points 3 (t=1.6) and 4 (t=2.0)
    assert explorer.figure.index == time_index(trace.times, 1.9) > trace.series_index[3]
    assert trace.times[explorer.figure.index] == pytest.approx(1.9, abs=0.05)
    assert explorer.trace is trace and list(explorer.traces) == [(0, "delta", 0.0)]
    assert "class right" in explorer.series_selector.options[1][0]


def test_explorer_selectors_recompute_once_per_selection(model, batch):
    x, times, lengths = batch
    explorer = FastWeightExplorer(model, x, times, lengths)
    explorer.time_slider.value = float(times[3])
    shown = explorer.figure.index
    explorer.rule_selector.value = "hebb"
    assert explorer.trace.rule == "hebb" and explorer.figure.index == shown
    assert set(explorer.traces) == {(0, "delta", 0.0), (0, "hebb", 0.0)}
    explorer.series_selector.value = 1  # 4 time points: the time is clamped to the end
    assert explorer.trace.series == 1
    assert explorer.figure.index == explorer.trace.times.shape[0] - 1
    assert explorer.time_slider.max == pytest.approx(float(times[3]))
    assert explorer.time_slider.value == pytest.approx(float(times[3]))
    explorer.head_selector.value = 1
    assert explorer.figure.head == 1 and len(explorer.traces) == 3
    explorer.rule_selector.value = "delta"
    explorer.series_selector.value = 0
    assert len(explorer.traces) == 4
    explorer.rule_selector.value = "hebb"
    assert len(explorer.traces) == 4  # cached
    index = explorer.figure.index
    np.testing.assert_allclose(explorer.figure.image.get_array(),
                               explorer.trace.weights[index, 1].numpy(), rtol=1e-6)


def test_explorer_missing_rate_drops_observations_and_keeps_the_time(model, batch):
    x, times, lengths = batch
    explorer = FastWeightExplorer(model, x, times, lengths, missing_rates=(0.0, 0.5), seed=4)
    explorer.time_slider.value = 2.0
    shown = explorer.figure.index
    explorer.missing_selector.value = 0.5
    trace = explorer.trace
    assert set(explorer.traces) == {(0, "delta", 0.0), (0, "delta", 0.5)}
    assert int(trace.observed.sum()) == LENGTHS[0] - LENGTHS[0] // 2
    assert explorer.figure.index == shown  # the same grid: the shown time stays
    torch.testing.assert_close(explorer.inputs_for(0.5)[0, :, 0], x[0, :, 0])
    assert not torch.allclose(trace.weights[-1], explorer.traces[(0, "delta", 0.0)].weights[-1])
    with pytest.raises(ValueError, match="missing_rates: expected fractions in \\[0, 1\\)"):
        FastWeightExplorer(model, x, times, lengths, missing_rates=(0.0, 1.0))


def test_explorer_is_displayable_and_rejects_bad_input(model, batch):
    x, times, lengths = batch
    explorer = FastWeightExplorer(model, x, times, lengths)
    assert "application/vnd.jupyter.widget-view+json" in explorer._repr_mimebundle_()
    with pytest.raises(ValueError, match="labels: expected shape \\(3,\\), got \\(2,\\)"):
        FastWeightExplorer(model, x, times, lengths, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="series: expected an index in \\[0, 1\\], got 2"):
        FastWeightExplorer(model, x, times, lengths, series=2, max_series=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_explorer_on_a_gpu_model(model, batch):
    x, times, lengths = batch
    on_gpu = with_rule(model, "delta").cuda()
    trace = fast_weight_trace(on_gpu, x, times, lengths)
    assert trace.weights.device.type == "cuda"
    expected = fast_weight_trace(model, x, times, lengths)
    torch.testing.assert_close(trace.weights.cpu(), expected.weights, rtol=1e-4, atol=1e-5)
    explorer = FastWeightExplorer(on_gpu, x.cuda(), times, lengths)
    assert explorer.trace.weights.device.type == "cpu"
    explorer.time_slider.value = 2.0
    explorer.missing_selector.value = 0.3
    assert explorer.image.value[:8] == b"\x89PNG\r\n\x1a\n"


def test_shared_plots_check_shapes(model, batch):
    x, times, lengths = batch
    trace = fast_weight_trace(model, x, times, lengths)
    figure = draw_weight_snapshots({"delta": trace.weights[:, 0]}, trace.times, [0, 3, 6])
    assert len(figure.axes) == 4  # three heatmaps and a colour bar
    points = trace.times.shape[0]
    with pytest.raises(ValueError, match=f"rows\\['delta'\\]: expected shape \\({points}, d_v"):
        draw_weight_snapshots({"delta": trace.weights[:3, 0]}, trace.times, [0])
    ax = draw_parameter_scaling({"a": torch.tensor([1.0, 2.0])}, {"a": torch.tensor([3.0, 9.0])},
                                "size")
    assert ax.get_xscale() == "log" and len(ax.get_lines()) == 1


def _user_delta(W, key, value, rate):
    """The delta rule written as a user would: b (v - W k) k^T."""
    if W is not None:
        value = value - torch.matmul(W, key.unsqueeze(-1)).squeeze(-1)
    return (rate * value).unsqueeze(-1) * key.unsqueeze(-2)


def _raw_value_hebb(W, key, value, rate):
    """Hebb on a raw (identity-activated) value, with decay."""
    write = (rate * value).unsqueeze(-1) * key.unsqueeze(-2)
    return write if W is None else write - 0.5 * W


@pytest.fixture
def user_rules():
    register_rule("test_user_delta", _user_delta, label="test: user delta")
    register_rule("test_raw_hebb", _raw_value_hebb, value="identity")
    try:
        yield
    finally:
        unregister_rule("test_user_delta")
        unregister_rule("test_raw_hebb")


def test_rule_menu_reads_the_registry_when_the_explorer_is_built(model, batch, user_rules):
    x, times, lengths = batch
    assert rule_menu() == {name: rule.label for name, rule in RULES.items()}
    explorer = FastWeightExplorer(model, x, times, lengths)
    assert ("test: user delta", "test_user_delta") in explorer.rule_selector.options
    explorer.rule_selector.value = "test_user_delta"
    assert explorer.trace.rule == "test_user_delta"
    # The same slow net under the user's delta rule programs the built-in delta's W(t).
    builtin = explorer.trace_for(0, "delta")
    torch.testing.assert_close(explorer.trace.weights, builtin.weights, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(explorer.trace.updates, builtin.updates, rtol=RTOL, atol=ATOL)
    assert explorer.image.value[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_raw_control_is_shown_raw_with_room_for_its_values(model, batch, user_rules):
    x, times, lengths = batch
    trace = fast_weight_trace(model, x, times, lengths, rule="test_raw_hebb")
    copied = with_rule(model, "test_raw_hebb")
    assert copied.rule == "test_raw_hebb" and copied.config["name"] == "test_raw_hebb_cde"
    assert trace.values.abs().max() > 1  # not squashed by tanh
    figure = FastWeightFigure(trace)
    low, high = figure.value_axes.get_xlim()
    assert low <= float(trace.values[:, 0].min()) and high >= float(trace.values[:, 0].max())
    assert figure.value_axes.get_title() == "value v"
    assert figure.key_axes.get_title() == "key softmax(k)"


def test_an_unregistered_rule_leaves_the_menu(model, batch):
    register_rule("test_passing_rule", _user_delta)
    unregister_rule("test_passing_rule")
    assert "test_passing_rule" not in rule_menu()
    x, times, lengths = batch
    with pytest.raises(ValueError, match="rule: expected one of"):
        fast_weight_trace(model, x, times, lengths, rule="test_passing_rule")


def test_shown_controls_squash_what_the_rule_squashes_after_its_subtraction():
    generator = torch.Generator().manual_seed(0)
    key, value = torch.randn(2, 5, generator=generator) * 3
    rate = torch.randn(1, generator=generator)
    shown = shown_controls(RULES["oja"], key, value, rate)
    torch.testing.assert_close(shown[0], torch.softmax(key, -1))  # oja: softmax after
    torch.testing.assert_close(shown[1], torch.tanh(value))
    post_tanh = RULES["delta"].option("post_tanh")
    torch.testing.assert_close(shown_controls(post_tanh, key, value, rate)[1], torch.tanh(value))
    torch.testing.assert_close(shown_controls(RULES["delta"], key, value, rate)[2],
                               torch.sigmoid(rate))
    assert shown_activations(RULES["oja"]) == ("softmax", "tanh", "sigmoid")
    assert shown_activations(post_tanh) == ("softmax", "tanh", "sigmoid")
    assert control_limits("softmax", key) == (0.0, 1.0)
    assert control_limits("tanh", value) == (-1.0, 1.0)
    assert control_limits("identity", value)[1] >= float(value.abs().max())


def _stiff_hebb(W, key, value, rate):
    """Hebb with a decay of 40: rk4 at the explorer's steps (0.2 and up) diverges."""
    write = (rate * value).unsqueeze(-1) * key.unsqueeze(-2)
    return write if W is None else write - 40.0 * W


def test_a_selection_the_model_cannot_show_is_reported_in_the_widget(model, batch):
    x, times, lengths = batch
    x = x.clone()
    x[2, :, 1:] = 1e30  # a series far out of scale
    x[2, ::2, 1:] = -1e30
    register_rule("test_stiff", _stiff_hebb)
    try:
        explorer = FastWeightExplorer(model, x, times, lengths)
        shown, image = explorer.shown, explorer.image.value
        assert shown == (0, "delta", 0.0, 0) and explorer.message.value == ""
        explorer.rule_selector.value = "test_stiff"  # no exception escapes the callback
        assert "rule 'test_stiff'" in explorer.message.value
        assert "NonFiniteOutputError" in explorer.message.value
        assert explorer.rule_selector.value == "delta" == explorer.trace.rule
        assert explorer.shown == shown and explorer.image.value == image
        explorer.series_selector.value = 2
        assert "could not show series 2" in explorer.message.value
        assert explorer.series_selector.value == 0 == explorer.trace.series
        explorer.series_selector.value = 1  # a good selection clears the message
        assert explorer.message.value == "" and explorer.trace.series == 1
        assert explorer.shown == (1, "delta", 0.0, 0)
        # A trace the figure cannot draw: the figure goes back to the one it showed.
        broken = explorer.trace_for(0, "hebb")
        explorer.traces[(0, "hebb", 0.0)] = broken._replace(
            readouts=torch.full_like(broken.readouts, float("inf")))
        explorer.series_selector.value = 0
        explorer.rule_selector.value = "hebb"
        assert explorer.rule_selector.value == "delta" == explorer.trace.rule
        assert explorer.series_selector.value == 0 == explorer.trace.series
        assert "could not show series 0, rule 'hebb'" in explorer.message.value
    finally:
        unregister_rule("test_stiff")

"""Fast-weight explorer: watch a continuous FWP program its fast weights, one series at a time.

:func:`fast_weight_trace` (:mod:`fwplab.widgets.traces`, re-exported here) computes,
for one series and one rule, the fast weight ``W_h(t)`` of every head on a dense time
grid, what the slow net writes (keys, values, rates), the rule's write ``dW_h/dt``, the
read-out, the norm and singular values of ``W_h(t)``, and at every time point ``t_i``
the class probabilities of the model run on the series cut after ``t_i``.

All of it is causal. Nothing comes from the path of the whole series: a natural
cubic spline through all observations lets the path before ``t_i`` depend on later
observations (so does the streamed read-out ``model(x, stream=True)``). The values
at ``t_i`` come from the model run on ``x_0 .. x_i`` alone, solved with the step that
cut alone would take (:func:`cut_steps`); the values inside a gap ``(t_{i-1}, t_i)``
from the same cut, the solve of that gap once ``x_i`` has arrived. Between a cut's
solver steps ``W`` is fwplab's cubic interpolation of the solve (the cubic that
matches ``W`` and ``dW/dt`` at both ends of the step, :func:`hermite_dense_output`).
The figure at time ``t`` shows the last time point ``t_i`` at or before ``t`` and
the curves up to it; only its axis and colour ranges are set from the whole series,
so that frames compare.

(for ``oja``, the softmax Oja rule, the key shown is the softmax of the slow net's
key, before the rule subtracts ``W^T v``: :func:`shown_controls`).
:class:`FastWeightFigure` draws one head at one time and only updates its artists
when the time moves;
:class:`FastWeightExplorer` puts a time slider and selectors for the series, the
head, the learning rule and the fraction of observations dropped on top, with a
cache so that each (series, rule, fraction) is computed once and a slider move
only redraws.

Switching the rule keeps the slow net: the same keys, values and rates drive Hebb,
the softmax Oja rule, the delta rule or any rule added with
:func:`fwplab.register_rule`, so the memories can be compared on the same input. The
rule menu is read from :data:`fwplab.rules.RULES` when an explorer is built
(:func:`rule_menu`), so it offers every rule registered before that.

The computation (:func:`fast_weight_trace` and its helpers) lives in
:mod:`fwplab.widgets.traces`; this module re-exports it.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

import PIL.Image
import torch
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from ..models import ContinuousFWP
from ..paths import check_observations
from ..rules import RULES, FastWeightRule, get_rule
from .still import add_still
from .plots import (
    draw_norm_curve,
    draw_singular_value_curves,
    mark_time_points,
    symmetric_limit,
    weight_heatmap,
)
from .traces import (
    POINTS_PER_STEP,
    FastWeightTrace,
    _check_model,
    _check_series,
    cut_predictions,
    cut_steps,
    dense_grid,
    drop_data_points,
    fast_weight_trace,
    hermite_dense_output,
    observed_points,
    recall_error_rate,
    shown_controls,
    stored_pair_error,
    with_rule,
)

if TYPE_CHECKING:
    import ipywidgets

__all__ = [
    "FastWeightTrace",
    "FastWeightFigure",
    "FastWeightExplorer",
    "control_limits",
    "rule_menu",
    "shown_activations",
    "shown_controls",
    "with_rule",
    "fast_weight_trace",
    "cut_predictions",
    "cut_steps",
    "dense_grid",
    "hermite_dense_output",
    "observed_points",
    "drop_data_points",
    "time_index",
    "stored_pair_error",
    "recall_error_rate",
    "draw_fast_weights",
]

#: Size of the explorer figure in inches and its resolution: about 880 x 440 pixels.
FIGURE_SIZE = (11.0, 5.5)
FIGURE_DPI = 80
#: PNG compression of the explorer image: fast to encode, the image is sent once per move.
PNG_COMPRESS_LEVEL = 1
#: Relative tolerance of :func:`time_index` for slider values that carry float round-off.
TIME_TOLERANCE = 1e-6
#: The missing-rate selector's fractions of observations dropped.
MISSING_RATES = (0.0, 0.3, 0.5, 0.7)

#: Names of the activations in the figure's titles (the identity leaves the control raw).
ACTIVATION_SYMBOLS = {"identity": "{}", "tanh": "tanh({})", "sigmoid": "sigma({})",
                      "softmax": "softmax({})"}

KEY_COLOR = "tab:green"
VALUE_COLOR = "tab:purple"
RATE_COLOR = "tab:orange"
READOUT_COLOR = "tab:blue"
MARKER_COLOR = "tab:red"


def rule_menu() -> dict[str, str]:
    """The rule selector's entries, read from :data:`fwplab.rules.RULES` when called.

    Every registered rule, built-in or added with :func:`fwplab.register_rule` (before
    the call), with its label (its update, ``b`` the rate).

    Returns:
        Rule name -> label.
    """
    return {name: record.label for name, record in RULES.items()}




def time_index(times: Tensor, t: float) -> int:
    """Index of the last time at or before ``t`` (what a slider at ``t`` shows).

    Times before the first give 0, times after the last give the last index; a
    ``t`` that misses a time of ``times`` by float round-off still selects it.

    Args:
        times: strictly increasing times ``(time,)``.
        t: the slider's time.

    Returns:
        An index into ``times``.
    """
    span = float(times[-1] - times[0])
    point = torch.tensor(t + TIME_TOLERANCE * max(span, 1.0), dtype=times.dtype)
    index = int(torch.searchsorted(times.cpu(), point, right=True)) - 1
    return min(max(index, 0), times.shape[0] - 1)




def _check_head(trace: FastWeightTrace, head: int) -> None:
    heads = trace.weights.shape[1]
    if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < heads:
        raise ValueError(f"head: expected an index in [0, {heads - 1}], got {head!r}")


def control_limits(activation: str, controls: Tensor) -> tuple[float, float]:
    """Axis range of a control's bars, from the activation it went through.

    Softmax and sigmoid lie in ``[0, 1]``, tanh in ``[-1, 1]``; a raw (identity)
    control gets a symmetric range that holds all of its values.

    Args:
        activation: ``"softmax"``, ``"sigmoid"``, ``"tanh"`` or ``"identity"``.
        controls: every value the bars will show, any shape.

    Returns:
        ``(low, high)``.
    """
    if activation in ("softmax", "sigmoid"):
        return (0.0, 1.0)
    if activation == "tanh":
        return (-1.0, 1.0)
    reach = 1.05 * symmetric_limit(controls)
    return (-reach, reach)


def shown_activations(rule: FastWeightRule) -> tuple[str, str, str]:
    """The activations of the key, value and rate :func:`shown_controls` returns."""
    key, value, rate = rule.activations
    if rule.correction != "linear" and rule.structure == "delta":
        value = rule.correction
    elif rule.correction != "linear" and rule.structure == "oja":
        key = rule.correction
    return key, value, rate


def _symbol(activation: str, control: str) -> str:
    return ACTIVATION_SYMBOLS[activation].format(control)


class FastWeightFigure:
    """The explorer's figure: one head of one trace, redrawn in place when the time moves.

    Everything is shown at the last time point ``t_i`` at or before the shown time
    ``t``, from the series cut there (nothing at ``t_0``). Top row: the heatmap of
    ``W(t_i)``, the key, the value and the rate written at ``t_i``, and the read-out
    ``W(t_i) q(t_i)``. Bottom row: ``||W||_F`` and the singular values on the dense
    grid up to ``t_i``, the time points marked (filled dots; hollow where the data
    was dropped), a line at ``t``. The title line names the prediction of the series
    cut at ``t_i``. :meth:`select` (new trace or head)
    rebuilds the artists; :meth:`show` (new time) only changes their data. Colour
    and axis ranges are fixed per selection, so frames at different times compare
    directly. Tensors may be on any device; they are copied to the CPU to draw.

    Args:
        trace: from :func:`fast_weight_trace`.
        head: which head to show.
        class_names: names of the classes in the title; default the class indices.
    """

    def __init__(
        self,
        trace: FastWeightTrace,
        head: int = 0,
        class_names: Optional[Sequence[str]] = None,
    ) -> None:
        self.class_names = class_names
        self.figure = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI)
        FigureCanvasAgg(self.figure)
        # Fixed margins: a layout engine would run again at every redraw.
        grid = self.figure.add_gridspec(
            2, 6, width_ratios=[1.6, 0.2, 1.1, 1.1, 0.3, 1.1], height_ratios=[1.3, 1.0],
            left=0.06, right=0.98, bottom=0.09, top=0.85, wspace=0.5, hspace=0.5,
        )
        self.weight_axes = self.figure.add_subplot(grid[0, 0])
        # Column 1 stays empty: room for the heatmap's colour bar.
        self.key_axes = self.figure.add_subplot(grid[0, 2])
        self.value_axes = self.figure.add_subplot(grid[0, 3])
        self.rate_axes = self.figure.add_subplot(grid[0, 4])
        self.readout_axes = self.figure.add_subplot(grid[0, 5])
        self.norm_axes = self.figure.add_subplot(grid[1, 0:3])
        self.singular_axes = self.figure.add_subplot(grid[1, 3:])
        self.title = self.figure.text(0.5, 0.975, "", ha="center", va="top", fontsize="large")
        self.time_text = self.figure.text(0.5, 0.925, "", ha="center", va="top")
        self.index = 0
        self.select(trace, head)

    def select(self, trace: FastWeightTrace, head: int) -> None:
        """Show ``head`` of ``trace`` (at the last shown time, clamped to the series)."""
        _check_head(trace, head)
        self.trace, self.head = trace.to("cpu"), head
        trace = self.trace
        for ax in (self.weight_axes, self.key_axes, self.value_axes, self.rate_axes,
                   self.readout_axes, self.norm_axes, self.singular_axes):
            ax.clear()  # also removes the colour bar, an inset of the heatmap's axes
        d = trace.weights.shape[-1]
        components = range(d)
        self.image = weight_heatmap(
            self.weight_axes, trace.weights[0, head], symmetric_limit(trace.weights[:, head])
        )
        self.figure.colorbar(self.image, cax=self.weight_axes.inset_axes([1.05, 0.0, 0.06, 1.0]))

        activations = shown_activations(get_rule(trace.rule))
        self.key_bars = self.key_axes.bar(components, [0.0] * d, color=KEY_COLOR)
        self.key_axes.set(ylim=control_limits(activations[0], trace.keys[:, head]),
                          xlabel="key component")
        self.key_axes.set_title(f"key {_symbol(activations[0], 'k')}", fontsize="medium")
        self.value_bars = self.value_axes.barh(components, [0.0] * d, color=VALUE_COLOR)
        self.value_axes.set(xlim=control_limits(activations[1], trace.values[:, head]),
                            ylim=(d - 0.5, -0.5), ylabel="value component")
        self.value_axes.set_title(f"value {_symbol(activations[1], 'v')}", fontsize="medium")
        self.rate_bars = self.rate_axes.bar([0], [0.0], color=RATE_COLOR)
        self.rate_axes.set(ylim=control_limits(activations[2], trace.rates[:, head]), xticks=[])
        self.rate_axes.set_title("rate", fontsize="medium")
        self.readout_bars = self.readout_axes.barh(components, [0.0] * d, color=READOUT_COLOR)
        reach = 1.05 * symmetric_limit(trace.readouts[:, head])
        self.readout_axes.set(xlim=(-reach, reach), ylim=(d - 0.5, -0.5))
        self.readout_axes.set_title("read-out W(t) q(t)", fontsize="medium")
        for ax in (self.value_axes, self.readout_axes):
            ax.axvline(0, color="0.5", lw=0.8)

        times = trace.times
        # Drawn over the whole series to fix the axis ranges; show() cuts every curve
        # and mark at the shown time point.
        self.curves = [(draw_norm_curve(self.norm_axes, times, trace.norms[:, head],
                                        label="$\\|W(t)\\|_F$"), trace.norms[:, head])]
        singular = trace.singular_values[:, head]
        lines = draw_singular_value_curves(self.singular_axes, times, singular)
        self.curves += [(line, singular[:, i]) for i, line in enumerate(lines)]
        self.point_marks = []
        for ax, heights in ((self.norm_axes, trace.norms[trace.series_index, head]),
                            (self.singular_axes, trace.singular_values[trace.series_index, head, 0])):
            marks = mark_time_points(ax, trace.series_times, heights, trace.observed)
            kinds = [trace.observed] + ([~trace.observed] if len(marks) > 1 else [])
            self.point_marks += [(mark, kind, heights) for mark, kind in zip(marks, kinds, strict=True)]
        self.markers = []
        for ax, curve in ((self.norm_axes, trace.norms[:, head]),
                          (self.singular_axes, trace.singular_values[:, head, 0])):
            line = ax.axvline(float(times[0]), color=MARKER_COLOR, lw=1)
            (dot,) = ax.plot([float(times[0])], [float(curve[0])], "o", color=MARKER_COLOR)
            self.markers.append((line, dot, curve))
        self.norm_axes.legend(fontsize="small", loc="lower right")
        self.singular_axes.set_title("singular values (largest darkest)", fontsize="medium")
        self.norm_axes.set_title(f"{trace.rule} rule, head {head}: size of the memory",
                                 fontsize="medium")
        self.weight_axes.set_title(f"W(t), head {head}", fontsize="medium")
        self.title.set_text(f"series {trace.series}, {trace.rule} rule, head {head}")
        self.show(min(self.index, times.shape[0] - 1))
        self._background = None

    def _class_name(self, index: int) -> str:
        return self.class_names[index] if self.class_names is not None else str(index)

    def _moving_artists(self) -> list[Artist]:
        """The artists :meth:`show` changes; everything else is the static background."""
        markers = [artist for line, dot, _ in self.markers for artist in (line, dot)]
        curves = [line for line, _ in self.curves] + [mark for mark, _, _ in self.point_marks]
        return [self.image, *self.key_bars, *self.value_bars, *self.rate_bars,
                *self.readout_bars, *curves, *markers, self.time_text]

    def _capture_background(self) -> None:
        """Draw the figure without the moving artists once and keep the pixels."""
        moving = self._moving_artists()
        for artist in moving:
            artist.set_visible(False)
        canvas = self.figure.canvas
        canvas.draw()
        self._background = canvas.copy_from_bbox(self.figure.bbox)
        self._renderer = canvas.get_renderer()
        for artist in moving:
            artist.set_visible(True)

    def time_point(self, index: int) -> int:
        """The last time point at or before dense-grid time ``index``: what the figure shows."""
        return int(torch.searchsorted(self.trace.series_index, torch.tensor(index),
                                      right=True)) - 1

    def caption(self, index: int) -> str:
        """The line above the plots at dense-grid time ``index``: time and prediction."""
        trace = self.trace
        point = self.time_point(index)
        t, t_point = float(trace.times[index]), float(trace.series_times[point])
        state = "observed" if bool(trace.observed[point]) else "dropped"
        text = (f"t = {t:.2f}; last time point t{point} = {t_point:.2f} ({state}), "
                f"{point + 1} of {trace.series_times.shape[0]}; ")
        if point == 0:
            return text + "a series cut there is too short to predict"
        probabilities = trace.probabilities[point]
        best = int(probabilities.argmax())
        return text + (f"model on the series cut there: class {self._class_name(best)} "
                       f"({float(probabilities[best]):.0%})")

    def show(self, index: int) -> Figure:
        """Move to dense-grid time ``index`` (negative counts from the end); return the figure."""
        points = self.trace.times.shape[0]
        if isinstance(index, bool) or not isinstance(index, int) or not -points <= index < points:
            raise ValueError(f"index: expected a time index in [0, {points - 1}], got {index!r}")
        index %= points
        self.index = index
        trace, head = self.trace, self.head
        # Everything at the last time point t_i at or before t, from the series cut
        # there; nothing at t_0 (a path needs two time points).
        point = self.time_point(index)
        shown = int(trace.series_index[point])
        seen = shown + 1 if point > 0 else 0
        weight = trace.weights[shown, head].double()
        self.image.set_data((weight if point > 0 else torch.full_like(weight, float("nan")))
                            .numpy())
        for bars, heights in ((self.key_bars, trace.keys[shown, head]),
                              (self.rate_bars, trace.rates[shown, head : head + 1])):
            for bar, height in zip(bars, heights.tolist(), strict=True):
                bar.set_height(height if point > 0 else 0.0)
        for bars, widths in ((self.value_bars, trace.values[shown, head]),
                             (self.readout_bars, trace.readouts[shown, head])):
            for bar, width in zip(bars, widths.tolist(), strict=True):
                bar.set_width(width if point > 0 else 0.0)
        times = trace.times.double().numpy()
        for line, curve in self.curves:
            line.set_data(times[:seen], curve[:seen].double().numpy())
        point_times = trace.series_times.double().numpy()
        for mark, kind, heights in self.point_marks:
            keep = kind.clone()
            keep[point + 1 if point > 0 else 0 :] = False
            keep = keep.numpy()
            mark.set_data(point_times[keep], heights.double().numpy()[keep])
        t = float(trace.times[index])
        for line, dot, curve in self.markers:
            line.set_xdata([t, t])
            dot.set_data([float(trace.series_times[point])] if point > 0 else [],
                         [float(curve[shown])] if point > 0 else [])
        self.time_text.set_text(self.caption(index))
        return self.figure

    def png(self) -> bytes:
        """Render the figure as PNG bytes.

        Axes, ticks, labels and curves are drawn once per selection (text dominates
        matplotlib's drawing time); a time move pastes that background and draws only
        the moving artists on top (blitting).
        """
        canvas = self.figure.canvas
        if self._background is None or canvas.get_renderer() is not self._renderer:
            self._capture_background()
        canvas.restore_region(self._background)
        for artist in self._moving_artists():
            self.figure.draw_artist(artist)
        pixels = PIL.Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba())
        buffer = io.BytesIO()
        pixels.convert("RGB").save(buffer, format="png", compress_level=PNG_COMPRESS_LEVEL)
        return buffer.getvalue()


def draw_fast_weights(
    trace: FastWeightTrace,
    head: int = 0,
    index: int = -1,
    class_names: Optional[Sequence[str]] = None,
) -> Figure:
    """Draw ``head`` of ``trace`` at dense-grid time ``index``: the explorer's figure, once.

    Args:
        trace: from :func:`fast_weight_trace`.
        head: which head.
        index: index into ``trace.times``; negative counts from the end.
        class_names: names of the classes; default the class indices.

    Returns:
        A new figure (see :class:`FastWeightFigure`).
    """
    return FastWeightFigure(trace, head, class_names).show(index)


class FastWeightExplorer:
    """Time slider and selectors for series, head, rule and dropped data over the figure.

    Each (series, rule, missing rate) trace is computed once by
    :func:`fast_weight_trace` (on the model's device) and kept on the CPU in
    :attr:`traces`; moving the time slider only updates the figure's artists and
    sends a new image. The slider runs over the dense grid in the series' own time
    units and shows the last grid time at or before its value (:func:`time_index`);
    the figure then shows the last time point at or before that time.
    The missing-rate selector drops a seeded random fraction of every series'
    observations (:func:`drop_data_points`) and shows the model on what is left.
    Display the explorer in a notebook as it is, or its :attr:`widget`. A selection the
    model cannot show (a rule whose fast weights diverge, a series far out of scale)
    leaves the figure as it was, says why in :attr:`message` and sets the menus back
    to :attr:`shown`, the (series, rule, missing rate, head) on show.

    Args:
        model: a continuous FWP (not modified), on any device.
        x: observations ``(batch, time, channels)`` as for ``model.forward``.
        times: shared time points ``(time,)``; default ``0 .. time - 1``.
        lengths: time points per series ``(batch,)``; default all ``time``.
        labels: class of each series ``(batch,)``, shown in the series selector.
        class_names: names of the classes; default the class indices.
        series: the series shown first.
        head: the head shown first.
        max_series: how many series (the first ones of ``x``) the selector offers.
        missing_rates: the fractions of observations the missing-rate selector offers.
        seed: seeds the dropping.
        time_channel: channel 0 of ``x`` is the time: never dropped.
        points_per_step: dense-grid points per gap between time points.
    """

    def __init__(
        self,
        model: ContinuousFWP,
        x: Tensor,
        times: Optional[Tensor] = None,
        lengths: Optional[Tensor] = None,
        labels: Optional[Tensor] = None,
        class_names: Optional[Sequence[str]] = None,
        series: int = 0,
        head: int = 0,
        max_series: int = 30,
        missing_rates: Sequence[float] = MISSING_RATES,
        seed: int = 0,
        time_channel: bool = True,
        points_per_step: int = POINTS_PER_STEP,
    ) -> None:
        import ipywidgets as widgets

        _check_model(model)
        batch = check_observations(x, times, lengths, model.input_channels)
        count = min(batch.x.shape[0], max_series)
        if labels is not None and tuple(labels.shape) != (batch.x.shape[0],):
            raise ValueError(f"labels: expected shape ({batch.x.shape[0]},), "
                             f"got {tuple(labels.shape)}")
        _check_series(series, count)
        rates = [float(rate) for rate in missing_rates]
        if not rates or not all(0.0 <= rate < 1.0 for rate in rates):
            raise ValueError(f"missing_rates: expected fractions in [0, 1), got {list(rates)}")
        observed_points(batch.x, time_channel)  # checks the channels
        self.model, self.class_names = model, class_names
        self.times, self.lengths = batch.times, batch.lengths[:count]
        self.x = batch.x[:count]
        self.seed, self.time_channel, self.points_per_step = seed, time_channel, points_per_step
        self.inputs: dict[float, Tensor] = {}
        self.traces: dict[tuple[int, str, float], FastWeightTrace] = {}
        self._selecting = False
        self._reverting = False

        def series_label(i: int) -> str:
            text = f"#{i}: {int(batch.lengths[i])} time points"
            if labels is not None:
                label = int(labels[i])
                text += f", class {class_names[label] if class_names is not None else label}"
            return text

        self.series_selector = widgets.Dropdown(
            options=[(series_label(i), i) for i in range(count)], value=series,
            description="series",
        )
        self.head_selector = widgets.Dropdown(
            options=[(f"head {h}", h) for h in range(model.num_heads)], value=head,
            description="head", layout=widgets.Layout(width="180px"),
        )
        self.rule_selector = widgets.Dropdown(
            options=[(label, rule) for rule, label in rule_menu().items()], value=model.rule,
            description="rule", layout=widgets.Layout(width="400px"),
        )
        self.missing_selector = widgets.Dropdown(
            options=[(f"{rate:.0%} dropped", rate) for rate in rates], value=rates[0],
            description="data", layout=widgets.Layout(width="200px"),
        )
        self.time_slider = widgets.FloatSlider(
            description="time t", continuous_update=False, readout_format=".2f",
            layout=widgets.Layout(width="600px"),
        )
        self.image = widgets.Image(format="png")
        self.message = widgets.HTML(value="")
        self.figure = FastWeightFigure(self.trace_for(series, model.rule, rates[0]), head,
                                       class_names)
        self.shown = (series, model.rule, rates[0], head)
        self._set_time_range()
        self.image.value = self.figure.png()

        for selector in (self.series_selector, self.rule_selector, self.head_selector,
                         self.missing_selector):
            selector.observe(self._change_selection, names="value")
        self.time_slider.observe(self._change_time, names="value")
        self.widget: ipywidgets.VBox = widgets.VBox([
            widgets.HBox([self.series_selector, self.head_selector, self.rule_selector]),
            widgets.HBox([self.time_slider, self.missing_selector]),
            self.message,
            self.image,
        ])

    def inputs_for(self, missing_rate: float) -> Tensor:
        """The offered series with ``missing_rate`` of their observations dropped (cached)."""
        if missing_rate not in self.inputs:
            self.inputs[missing_rate] = drop_data_points(
                self.x, self.lengths, missing_rate, self.seed, self.time_channel)
        return self.inputs[missing_rate]

    def trace_for(self, series: int, rule: str, missing_rate: float = 0.0) -> FastWeightTrace:
        """The trace of ``series`` under ``rule`` and ``missing_rate``, computed once (CPU)."""
        key = (series, rule, missing_rate)
        if key not in self.traces:
            self.traces[key] = fast_weight_trace(
                self.model, self.inputs_for(missing_rate), self.times, self.lengths, series,
                rule, self.points_per_step, self.time_channel,
            ).to("cpu")
        return self.traces[key]

    @property
    def trace(self) -> FastWeightTrace:
        """The trace on show."""
        return self.figure.trace

    def _set_time_range(self) -> None:
        """Fit the slider to the shown series, keeping the shown time where it exists."""
        times = self.trace.times
        step = float((times[1:] - times[:-1]).min())
        with self.time_slider.hold_trait_notifications():
            self.time_slider.min = float(times[0])
            self.time_slider.max = float(times[-1])
            self.time_slider.step = step
            self.time_slider.value = float(times[self.figure.index])

    def _selectors(self) -> tuple:
        """The series, rule, missing-rate and head selectors, in :attr:`shown`'s order."""
        return (self.series_selector, self.rule_selector, self.missing_selector,
                self.head_selector)

    def _change_selection(self, change: dict) -> None:
        """Show what the menus say; on an error keep the figure, say why, revert the menus.

        An error in a widget callback would otherwise reach no cell (in JupyterLab it
        lands on the comm message) and leave the menus naming what the figure does not
        show. A rule or a series the model cannot run (non-finite or diverging fast
        weights, inputs far out of scale) is reported in :attr:`message` instead.
        """
        if self._reverting:
            return
        wanted = tuple(selector.value for selector in self._selectors())
        previous = (self.figure.trace, self.figure.head)
        try:
            trace = self.trace_for(*wanted[:3])
            self.figure.select(trace, wanted[3])
        except Exception as error:  # any failure of the model or the drawing, shown below
            if self.figure.trace is not previous[0] or self.figure.head != previous[1]:
                self.figure.select(*previous)
            self._report(error, wanted)
            return
        self.shown = wanted
        self.message.value = ""
        self._selecting = True
        try:
            self._set_time_range()
        finally:
            self._selecting = False
        self.image.value = self.figure.png()

    def _report(self, error: Exception, wanted: tuple) -> None:
        """Show ``error`` in :attr:`message` and set the menus back to :attr:`shown`."""
        series, rule, rate, head = wanted
        text = " ".join(f"{type(error).__name__}: {error}".split())
        self.message.value = (
            f"<span style='color:#b00020'>could not show series {series}, rule {rule!r}, "
            f"{rate:.0%} dropped, head {head}: {html.escape(text)}; the menus are back at "
            "what the figure shows</span>")
        self._reverting = True
        try:
            for selector, value in zip(self._selectors(), self.shown, strict=True):
                selector.value = value
        finally:
            self._reverting = False
        self.image.value = self.figure.png()

    def _change_time(self, change: dict) -> None:
        if self._selecting:
            return
        self.move_to(change["new"])

    def move_to(self, t: float) -> bytes:
        """Show the fast weights at time ``t`` (what a slider move does); returns the new image."""
        self.figure.show(time_index(self.trace.times, t))
        self.image.value = self.figure.png()
        return self.image.value

    def _repr_mimebundle_(self, **kwargs):
        # The live widget, and for static pages (the book) a still of the current figure.
        return add_still(self.widget._repr_mimebundle_(**kwargs) or {}, bytes(self.image.value))

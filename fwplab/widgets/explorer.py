"""Fast-weight explorer: watch a continuous FWP program its fast weights, one series at a time.

For a continuous FWP (trained or not) and one observed series, :func:`fast_weight_trace`
computes once, at every observation time ``t_i`` and for every head ``h``::

    W_h(t_i)                      the fast weight (d x d)
    k_h(t_i), v_h(t_i), b_h(t_i)  what the slow net writes: softmax(k), tanh(v), sigma(b)
    W_h(t_i) q_h(T)               the read-out of the final query q(T) (the model's own
                                  read-out at the last time T)
    ||W_h(t_i)||_F, s_1..s_d      the norm and the singular values of W_h(t_i)
    p(class | series up to t_i)   the model's prediction if the series ended at t_i

(for ``oja`` the key shown is the softmax of the slow net's key, before the rule
subtracts ``W^T v``). :class:`FastWeightFigure` draws one head at one time and only
updates its artists when the time moves; :class:`FastWeightExplorer` puts a time
slider and selectors for the series, the head and the learning rule on top, with a
cache so that each (series, rule) is computed once and a slider move only redraws.

Switching the rule keeps the slow net: the same keys, values and rates drive Hebb,
Oja or the delta rule, so the three memories can be compared on the same input.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, Optional

import PIL.Image
import torch
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from ..discrete import retrieval_error
from ..models import ContinuousFWP
from ..paths import check_observations, control_path, interpolation_coeffs
from ..rules.fast_weight import FAST_WEIGHT_RULES, get_rule
from .plots import (
    draw_norm_curve,
    draw_singular_value_curves,
    symmetric_limit,
    weight_heatmap,
)

if TYPE_CHECKING:
    import ipywidgets

__all__ = [
    "FastWeightTrace",
    "FastWeightFigure",
    "FastWeightExplorer",
    "with_rule",
    "fast_weight_trace",
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

#: The rule selector's entries: each rule with its update (b is the rate).
RULE_LABELS = {
    "hebb": "Hebb: dW = b v k^T",
    "oja": "Oja: dW = v (b softmax(k - W^T v))^T",
    "delta": "delta: dW = b (v - W k) k^T",
}

KEY_COLOR = "tab:green"
VALUE_COLOR = "tab:purple"
RATE_COLOR = "tab:orange"
READOUT_COLOR = "tab:blue"
MARKER_COLOR = "tab:red"


class FastWeightTrace(NamedTuple):
    """Everything the explorer shows for one series and one rule, at every observation time.

    Attributes:
        rule: the learning rule that produced :attr:`weights`.
        series: index of the series in the data it came from.
        times: the series' observation times ``(time,)``.
        weights: ``W(t)`` of shape ``(time, heads, d, d)``.
        keys: ``softmax(k(t))`` of shape ``(time, heads, d)``.
        values: ``tanh(v(t))`` of shape ``(time, heads, d)``.
        rates: ``sigma(b(t))`` of shape ``(time, heads)``.
        updates: what the rule writes, ``dW/dt`` at ``t``, of shape ``(time, heads, d, d)``.
        query: the final query ``q(T)`` of shape ``(heads, d)``.
        readouts: ``W(t) q(T)`` of shape ``(time, heads, d)``.
        norms: ``||W(t)||_F`` of shape ``(time, heads)``.
        singular_values: of ``W(t)``, decreasing, ``(time, heads, d)``.
        probabilities: class probabilities of the read-out at ``t`` ``(time, classes)``.
    """

    rule: str
    series: int
    times: Tensor
    weights: Tensor
    keys: Tensor
    values: Tensor
    rates: Tensor
    updates: Tensor
    query: Tensor
    readouts: Tensor
    norms: Tensor
    singular_values: Tensor
    probabilities: Tensor


def with_rule(model: ContinuousFWP, rule: str) -> ContinuousFWP:
    """A copy of ``model`` in evaluation mode whose fast weights follow ``rule``.

    The copy keeps every slow weight, so the same keys, values and rates drive the
    new rule. ``post_tanh`` is a delta-rule option and is dropped for Hebb and Oja.
    A ``config`` recorded by :func:`fwplab.build_model` is updated to match, so the copy
    can be rebuilt and checkpointed like any model.

    Args:
        model: a continuous FWP (it is not modified).
        rule: ``"hebb"``, ``"oja"`` or ``"delta"``.

    Returns:
        The copy.
    """
    if not isinstance(model, ContinuousFWP):
        raise TypeError(f"model: expected a ContinuousFWP, got {type(model).__name__}")
    if rule not in FAST_WEIGHT_RULES:
        raise ValueError(f"rule: expected one of {sorted(FAST_WEIGHT_RULES)}, got {rule!r}")
    copied = copy.deepcopy(model).eval()
    copied.rule = rule
    copied.post_tanh = model.post_tanh and rule == "delta"
    if hasattr(model, "config"):
        copied.config = {**model.config, "name": copied.name}
        if not copied.post_tanh:
            copied.config.pop("post_tanh", None)
    return copied


def fast_weight_trace(
    model: ContinuousFWP,
    x: Tensor,
    times: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    series: int = 0,
    rule: Optional[str] = None,
) -> FastWeightTrace:
    """Compute what the explorer shows for one series of a batch (no gradients).

    The series is cut at its own end (``lengths[series]`` observations) and solved
    alone, exactly as ``model`` would solve it.

    Args:
        model: a continuous FWP (not modified; dropout is off in the computation).
        x: observations ``(batch, time, channels)`` as for ``model.forward``.
        times: shared observation times ``(time,)``; default ``0 .. time - 1``.
        lengths: observations per series ``(batch,)``; default all ``time``.
        series: which series of the batch, ``0 <= series < batch``.
        rule: learning rule to run instead of the model's own (see :func:`with_rule`);
            ``None`` keeps the model's.

    Returns:
        :class:`FastWeightTrace` on ``x``'s device.
    """
    if not isinstance(model, ContinuousFWP):
        raise TypeError(f"model: expected a ContinuousFWP, got {type(model).__name__}")
    rule = model.rule if rule is None else rule
    model = with_rule(model, rule)
    batch = check_observations(x, times, lengths, model.input_channels)
    if isinstance(series, bool) or not isinstance(series, int) or not (
        0 <= series < batch.x.shape[0]
    ):
        raise ValueError(
            f"series: expected an index in [0, {batch.x.shape[0] - 1}], got {series!r}"
        )
    length = int(batch.lengths[series])
    observations = batch.x[series : series + 1, :length]
    own_times = batch.times[:length]
    with torch.no_grad():
        coeffs = interpolation_coeffs(observations, own_times, interpolation=model.interpolation)
        path = control_path(coeffs, own_times, model.interpolation)
        weights = model.fast_weight_trajectory(observations, own_times, coeffs=coeffs)
        derivative = path.derivative(own_times) if model.driver == "cde" else None
        key, value, rate = model.slow_net(path.evaluate(own_times), derivative)
        updates = get_rule(rule)(weights[0], key[0], value[0], rate[0], post_tanh=model.post_tanh)
        queries = model._query(path, own_times)  # (1, time, heads, d)
        probabilities = torch.softmax(model._read_out(weights, queries), -1)
        weights = weights[0]
        query = queries[0, -1]
        readouts = torch.matmul(weights, query.unsqueeze(-1)).squeeze(-1)
        return FastWeightTrace(
            rule=rule,
            series=series,
            times=own_times,
            weights=weights,
            keys=torch.softmax(key[0], -1),
            values=torch.tanh(value[0]),
            rates=torch.sigmoid(rate[0, ..., 0]),
            updates=updates,
            query=query,
            readouts=readouts,
            norms=torch.linalg.matrix_norm(weights),
            singular_values=torch.linalg.svdvals(weights),
            probabilities=probabilities[0],
        )


def time_index(times: Tensor, t: float) -> int:
    """Index of the last observation at or before time ``t`` (what a slider at ``t`` shows).

    Times before the first observation give 0, times after the last give the last
    index; a ``t`` that misses an observation time by float round-off still selects it.

    Args:
        times: strictly increasing observation times ``(time,)``.
        t: the slider's time.

    Returns:
        An index into ``times``.
    """
    span = float(times[-1] - times[0])
    point = torch.tensor(t + TIME_TOLERANCE * max(span, 1.0), dtype=times.dtype)
    index = int(torch.searchsorted(times.cpu(), point, right=True)) - 1
    return min(max(index, 0), times.shape[0] - 1)


def stored_pair_error(trace: FastWeightTrace) -> Tensor:
    """How well the final fast weight recalls every pair written along the series, per head.

    ```
    error_h = sum_i |W_h(T) k_h(t_i) - v_h(t_i)|^2 / sum_i |v_h(t_i)|^2
    ```

    (:func:`fwplab.discrete.retrieval_error`): 0 is perfect recall, 1 is the empty memory.

    Args:
        trace: from :func:`fast_weight_trace`.

    Returns:
        ``(heads,)``.
    """
    return retrieval_error(
        trace.weights[-1], trace.keys.transpose(0, 1), trace.values.transpose(0, 1)
    )


def recall_error_rate(trace: FastWeightTrace) -> Tensor:
    """How fast each write changes the recall error of the pair being written.

    Holding the current key and value fixed, the rule's write ``dW/dt`` changes the
    error of recalling ``v`` from ``k`` at the rate

    ```
    d/dt |v - W k|^2 = -2 (v - W k) . (dW/dt k)
    delta:  dW/dt k = beta |k|^2 (v - W k)   ->  -2 beta |k|^2 |v - W k|^2 <= 0
    Hebb:   dW/dt k = beta |k|^2 v           ->  -2 beta |k|^2 (v - W k) . v
    ```

    The delta rule's write always corrects the current pair; Hebb's write adds ``v``
    whatever ``W k`` already holds, so it overshoots where the memory already recalls it.

    Args:
        trace: from :func:`fast_weight_trace`.

    Returns:
        ``(time, heads)``.
    """
    error = trace.values - torch.matmul(trace.weights, trace.keys.unsqueeze(-1)).squeeze(-1)
    written = torch.matmul(trace.updates, trace.keys.unsqueeze(-1)).squeeze(-1)
    return -2 * (error * written).sum(-1)


def _check_head(trace: FastWeightTrace, head: int) -> None:
    heads = trace.weights.shape[1]
    if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < heads:
        raise ValueError(f"head: expected an index in [0, {heads - 1}], got {head!r}")


class FastWeightFigure:
    """The explorer's figure: one head of one trace, redrawn in place when the time moves.

    Top row at the shown time ``t``: the heatmap of ``W(t)``, the key, the value and the
    rate written at ``t``, and the read-out ``W(t) q(T)``. Bottom row over the whole
    series: ``||W(t)||_F`` and the singular values, with a marker at ``t``.
    :meth:`select` (new trace or head) rebuilds the artists; :meth:`show` (new time)
    only changes their data. Colour and axis ranges are fixed per selection, so
    frames at different times compare directly.

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
        self.trace, self.head = trace, head
        for ax in (self.weight_axes, self.key_axes, self.value_axes, self.rate_axes,
                   self.readout_axes, self.norm_axes, self.singular_axes):
            ax.clear()  # also removes the colour bar, an inset of the heatmap's axes
        d = trace.weights.shape[-1]
        components = range(d)
        self.image = weight_heatmap(
            self.weight_axes, trace.weights[0, head], symmetric_limit(trace.weights[:, head])
        )
        self.figure.colorbar(self.image, cax=self.weight_axes.inset_axes([1.05, 0.0, 0.06, 1.0]))

        self.key_bars = self.key_axes.bar(components, [0.0] * d, color=KEY_COLOR)
        self.key_axes.set(ylim=(0, 1), xlabel="key component")
        self.key_axes.set_title("key softmax(k)", fontsize="medium")
        self.value_bars = self.value_axes.barh(components, [0.0] * d, color=VALUE_COLOR)
        self.value_axes.set(xlim=(-1, 1), ylim=(d - 0.5, -0.5), ylabel="value component")
        self.value_axes.set_title("value tanh(v)", fontsize="medium")
        self.rate_bars = self.rate_axes.bar([0], [0.0], color=RATE_COLOR)
        self.rate_axes.set(ylim=(0, 1), xticks=[])
        self.rate_axes.set_title("rate", fontsize="medium")
        self.readout_bars = self.readout_axes.barh(components, [0.0] * d, color=READOUT_COLOR)
        reach = 1.05 * symmetric_limit(trace.readouts[:, head])
        self.readout_axes.set(xlim=(-reach, reach), ylim=(d - 0.5, -0.5))
        self.readout_axes.set_title("read-out W(t) q(T)", fontsize="medium")
        for ax in (self.value_axes, self.readout_axes):
            ax.axvline(0, color="0.5", lw=0.8)

        times = trace.times
        draw_norm_curve(self.norm_axes, times, trace.norms[:, head], label="$\\|W(t)\\|_F$")
        draw_singular_value_curves(self.singular_axes, times, trace.singular_values[:, head])
        self.markers = []
        for ax, curve in ((self.norm_axes, trace.norms[:, head]),
                          (self.singular_axes, trace.singular_values[:, head, 0])):
            line = ax.axvline(float(times[0]), color=MARKER_COLOR, lw=1)
            (dot,) = ax.plot([float(times[0])], [float(curve[0])], "o", color=MARKER_COLOR)
            self.markers.append((line, dot, curve))
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
        return [self.image, *self.key_bars, *self.value_bars, *self.rate_bars,
                *self.readout_bars, *markers, self.time_text]

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

    def show(self, index: int) -> Figure:
        """Move to observation ``index`` (negative counts from the end) and return the figure."""
        length = self.trace.times.shape[0]
        if isinstance(index, bool) or not isinstance(index, int) or not -length <= index < length:
            raise ValueError(f"index: expected an observation index in [0, {length - 1}], "
                             f"got {index!r}")
        index %= length
        self.index = index
        trace, head = self.trace, self.head
        self.image.set_data(trace.weights[index, head].detach().cpu().double().numpy())
        for bars, heights in ((self.key_bars, trace.keys[index, head]),
                              (self.rate_bars, trace.rates[index, head : head + 1])):
            for bar, height in zip(bars, heights.tolist(), strict=True):
                bar.set_height(height)
        for bars, widths in ((self.value_bars, trace.values[index, head]),
                             (self.readout_bars, trace.readouts[index, head])):
            for bar, width in zip(bars, widths.tolist(), strict=True):
                bar.set_width(width)
        t = float(trace.times[index])
        for line, dot, curve in self.markers:
            line.set_xdata([t, t])
            dot.set_data([t], [float(curve[index])])
        probabilities = trace.probabilities[index]
        best = int(probabilities.argmax())
        self.time_text.set_text(
            f"t = {t:.2f} (observation {index + 1} of {length}); prediction if the series "
            f"ended here: {self._class_name(best)} ({float(probabilities[best]):.0%})"
        )
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
    """Draw ``head`` of ``trace`` at observation ``index``: the explorer's figure, once.

    Args:
        trace: from :func:`fast_weight_trace`.
        head: which head.
        index: observation index; negative counts from the end.
        class_names: names of the classes; default the class indices.

    Returns:
        A new figure (see :class:`FastWeightFigure`).
    """
    return FastWeightFigure(trace, head, class_names).show(index)


class FastWeightExplorer:
    """Time slider and selectors for series, head and rule over :class:`FastWeightFigure`.

    Each (series, rule) trace is computed once by :func:`fast_weight_trace` and kept in
    :attr:`traces`; moving the time slider only updates the figure's artists and sends
    a new image. The slider is in the series' own time units, one step per smallest
    gap between observations, and shows ``W`` at the last observation at or before
    its value (:func:`time_index`). Display the explorer in a notebook as it is, or
    its :attr:`widget`.

    Args:
        model: a continuous FWP (not modified).
        x: observations ``(batch, time, channels)`` as for ``model.forward``.
        times: shared observation times ``(time,)``; default ``0 .. time - 1``.
        lengths: observations per series ``(batch,)``; default all ``time``.
        labels: class of each series ``(batch,)``, shown in the series selector.
        class_names: names of the classes; default the class indices.
        series: the series shown first.
        head: the head shown first.
        max_series: how many series (the first ones of ``x``) the selector offers.
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
    ) -> None:
        import ipywidgets as widgets

        if not isinstance(model, ContinuousFWP):
            raise TypeError(f"model: expected a ContinuousFWP, got {type(model).__name__}")
        batch = check_observations(x, times, lengths, model.input_channels)
        count = min(batch.x.shape[0], max_series)
        if labels is not None and tuple(labels.shape) != (batch.x.shape[0],):
            raise ValueError(f"labels: expected shape ({batch.x.shape[0]},), "
                             f"got {tuple(labels.shape)}")
        if not 0 <= series < count:
            raise ValueError(f"series: expected an index in [0, {count - 1}], got {series!r}")
        self.model, self.batch, self.class_names = model, batch, class_names
        self.traces: dict[tuple[int, str], FastWeightTrace] = {}
        self._selecting = False

        def series_label(i: int) -> str:
            text = f"#{i}: {int(batch.lengths[i])} observations"
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
            options=[(label, rule) for rule, label in RULE_LABELS.items()], value=model.rule,
            description="rule", layout=widgets.Layout(width="340px"),
        )
        self.time_slider = widgets.FloatSlider(
            description="time t", continuous_update=False, readout_format=".2f",
            layout=widgets.Layout(width="600px"),
        )
        self.image = widgets.Image(format="png")
        self.figure = FastWeightFigure(self.trace_for(series, model.rule), head, class_names)
        self._set_time_range()
        self.image.value = self.figure.png()

        self.series_selector.observe(self._change_selection, names="value")
        self.rule_selector.observe(self._change_selection, names="value")
        self.head_selector.observe(self._change_selection, names="value")
        self.time_slider.observe(self._change_time, names="value")
        self.widget: ipywidgets.VBox = widgets.VBox([
            widgets.HBox([self.series_selector, self.head_selector, self.rule_selector]),
            self.time_slider,
            self.image,
        ])

    def trace_for(self, series: int, rule: str) -> FastWeightTrace:
        """The trace of ``series`` under ``rule``, computed on first use and cached."""
        key = (series, rule)
        if key not in self.traces:
            self.traces[key] = fast_weight_trace(
                self.model, self.batch.x, self.batch.times, self.batch.lengths, series, rule
            )
        return self.traces[key]

    @property
    def trace(self) -> FastWeightTrace:
        """The trace on show."""
        return self.figure.trace

    def _set_time_range(self) -> None:
        """Fit the slider to the shown series, keeping the shown observation where it exists."""
        times = self.trace.times
        step = float((times[1:] - times[:-1]).min())
        with self.time_slider.hold_trait_notifications():
            self.time_slider.min = float(times[0])
            self.time_slider.max = float(times[-1])
            self.time_slider.step = step
            self.time_slider.value = float(times[self.figure.index])

    def _change_selection(self, change: dict) -> None:
        trace = self.trace_for(self.series_selector.value, self.rule_selector.value)
        self.figure.select(trace, self.head_selector.value)
        self._selecting = True
        try:
            self._set_time_range()
        finally:
            self._selecting = False
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
        return self.widget._repr_mimebundle_(**kwargs)

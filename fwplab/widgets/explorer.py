"""Fast-weight explorer: watch a continuous FWP program its fast weights, one series at a time.

For a continuous FWP (trained or not) and one observed series with time points
``t_0 < ... < t_{n-1}`` (the rows of ``x``), :func:`fast_weight_trace` computes once,
on a dense time grid that splits every gap between time points into equal parts,
and for every head ``h``::

    W_h(t)                        the fast weight (d x d)
    k_h(t), v_h(t), b_h(t)        what the slow net writes at t, activated by the rule
                                  (softmax(k), tanh(v), sigma(b) for the built-in rules)
    dW_h/dt                       the rule's write at t
    W_h(t) q_h(t)                 the read-out of the query at t
    ||W_h(t)||_F, s_1..s_d        the norm and the singular values of W_h(t)

and at every time point ``t_i`` of the series::

    p(class | x_0 .. x_i)         the model run on the series cut after t_i

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

from ..data import drop_observations
from ..discrete import retrieval_error
from ..models import ContinuousFWP
from ..paths import (
    ObservedBatch,
    batch_coeffs,
    check_observations,
    control_path,
    integration_grid,
)
from ..rules import RULES, FastWeightRule, get_rule
from ..rules.record import CORRECTIONS
from .still import add_still
from .plots import (
    draw_norm_curve,
    draw_singular_value_curves,
    mark_time_points,
    symmetric_limit,
    weight_heatmap,
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
#: Dense-grid points per gap between time points.
POINTS_PER_STEP = 4
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


class FastWeightTrace(NamedTuple):
    """Everything the explorer shows for one series and one rule.

    ``points`` is the number of dense-grid times, ``n`` the number of time points of
    the series (its rows in ``x``, observed or dropped).

    Every value at a dense time ``t`` comes from the series cut at the first time point
at or after ``t`` (at ``t_0``: the cut after ``t_1``), never from the whole series
(:func:`fast_weight_trace`).

    Attributes:
        rule: the learning rule that produced :attr:`weights`.
        series: index of the series in the data it came from.
        times: the dense grid ``(points,)``, through every time point.
        series_times: the series' time points ``t_i`` ``(n,)``.
        series_index: position of each ``t_i`` in :attr:`times` ``(n,)``.
        observed: whether ``t_i`` carries data (not dropped) ``(n,)``.
        weights: ``W(t)`` of shape ``(points, heads, d, d)``.
        keys: the activated key ``k(t)`` (``softmax`` for the built-in rules; see
            :func:`shown_controls`) of shape ``(points, heads, d)``.
        values: the activated value ``v(t)`` (``tanh`` for the built-in rules)
            of shape ``(points, heads, d)``.
        rates: the activated rate ``b(t)`` (``sigma`` for the built-in rules) of shape
            ``(points, heads)``.
        updates: what the rule writes, ``dW/dt`` at ``t``, of shape ``(points, heads, d, d)``.
        query: the query ``q(t)`` of shape ``(points, heads, d)``.
        readouts: ``W(t) q(t)`` of shape ``(points, heads, d)``; at ``t_i`` what the
            model on the cut series feeds its read-out layers.
        norms: ``||W(t)||_F`` of shape ``(points, heads)``.
        singular_values: of ``W(t)``, decreasing, ``(points, heads, d)``.
        probabilities: class probabilities of the series cut after ``t_i``,
            ``(n, classes)``; the first row is NaN (a path needs two time points).
    """

    rule: str
    series: int
    times: Tensor
    series_times: Tensor
    series_index: Tensor
    observed: Tensor
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

    def to(self, device: torch.device | str) -> FastWeightTrace:
        """The same trace with every tensor on ``device`` (itself when they already are)."""
        if self.times.device == torch.device(device):
            return self
        return FastWeightTrace(*(item.to(device) if isinstance(item, Tensor) else item
                                 for item in self))


def rule_menu() -> dict[str, str]:
    """The rule selector's entries, read from :data:`fwplab.rules.RULES` when called.

    Every registered rule, built-in or added with :func:`fwplab.register_rule` (before
    the call), with its label (its update, ``b`` the rate).

    Returns:
        Rule name -> label.
    """
    return {name: record.label for name, record in RULES.items()}


def shown_controls(rule: FastWeightRule, key: Tensor, value: Tensor,
                   rate: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The key, value and rate the explorer shows, from the slow net's raw ones.

    Each control goes through the rule's activation. A rank-one rule that squashes
    after its subtraction (the softmax Oja rule's key, the post-tanh delta rule's
    value) takes that control raw; the explorer shows it squashed by the same ``g``,
    before the subtraction::

        delta structure:  value shown = g(value)
        oja structure:    key shown = g(key)

    Args:
        rule: the rule's record.
        key: key logits ``(..., d)``.
        value: value pre-activations ``(..., d)``.
        rate: rate logits ``(..., 1)``.

    Returns:
        Key and value ``(..., d)``, rate ``(..., 1)``.
    """
    key, value, rate = rule.activate(key, value, rate)
    squash = CORRECTIONS[rule.correction]
    if rule.structure == "delta":
        value = squash(value)
    elif rule.structure == "oja":
        key = squash(key)
    return key, value, rate


def with_rule(model: ContinuousFWP, rule: str) -> ContinuousFWP:
    """A copy of ``model`` in evaluation mode whose fast weights follow ``rule``.

    The copy keeps every slow weight, so the same keys, values and rates drive the
    new rule. ``post_tanh`` is kept only for a rule that has that option (the delta
    rule). A ``config`` recorded by :func:`fwplab.build_model` is updated to match, so
    the copy can be rebuilt and checkpointed like any model.

    Args:
        model: a continuous FWP (it is not modified).
        rule: a name in :data:`fwplab.rules.RULES` (a registered rule included).

    Returns:
        The copy.
    """
    if not isinstance(model, ContinuousFWP):
        raise TypeError(f"model: expected a ContinuousFWP, got {type(model).__name__}")
    record = get_rule(rule)
    copied = copy.deepcopy(model).eval()
    copied.rule = rule
    copied.post_tanh = model.post_tanh and "post_tanh" in record.options
    if hasattr(model, "config"):
        copied.config = {**model.config, "name": copied.name}
        if not copied.post_tanh:
            copied.config.pop("post_tanh", None)
    return copied


def dense_grid(times: Tensor, points_per_step: int = POINTS_PER_STEP) -> tuple[Tensor, Tensor]:
    """Split every gap between consecutive ``times`` into ``points_per_step`` equal parts.

    Args:
        times: strictly increasing ``(n,)``, ``n >= 2``.
        points_per_step: parts per gap, ``>= 1`` (1 gives ``times`` itself).

    Returns:
        The grid ``(points_per_step * (n - 1) + 1,)``, holding every ``times[i]``
        exactly, and the position of each ``times[i]`` in it ``(n,)``.
    """
    if isinstance(points_per_step, bool) or not isinstance(points_per_step, int) or (
            points_per_step < 1):
        raise ValueError(f"points_per_step: expected a positive integer, got {points_per_step!r}")
    fractions = torch.arange(points_per_step, dtype=times.dtype, device=times.device)
    fractions = fractions / points_per_step
    steps = times[:-1, None] + (times[1:] - times[:-1])[:, None] * fractions
    grid = torch.cat([steps.flatten(), times[-1:]])
    index = torch.arange(times.shape[0], device=times.device) * points_per_step
    grid[index] = times  # exactly, free of round-off
    return grid, index


def hermite_dense_output(times: Tensor, values: Tensor, derivatives: Tensor,
                         at: Tensor) -> Tensor:
    """The cubic through values and derivatives at ``times``, evaluated at ``at``.

    On each gap ``[t_i, t_{i+1}]`` of length ``h``, with ``s = (t - t_i) / h``::

        y(t) = (2s^3 - 3s^2 + 1) y_i + (s^3 - 2s^2 + s) h y'_i
             + (3s^2 - 2s^3) y_{i+1} + (s^3 - s^2) h y'_{i+1}

    It equals the values at ``times`` exactly; with the solution of an ODE and its
    right-hand side as ``values`` and ``derivatives`` it is a solver's dense output.

    Args:
        times: strictly increasing ``(n,)``, ``n >= 2``.
        values: ``(n, ...)``.
        derivatives: ``(n, ...)``, the time derivative of ``values``.
        at: times in ``[times[0], times[-1]]`` ``(points,)``.

    Returns:
        ``(points, ...)``.
    """
    if values.shape[0] != times.shape[0] or derivatives.shape != values.shape:
        raise ValueError(f"values and derivatives: expected shape ({times.shape[0]}, ...) each, "
                         f"got {tuple(values.shape)} and {tuple(derivatives.shape)}")
    gap = torch.searchsorted(times, at, right=True).sub(1).clamp(0, times.shape[0] - 2)
    start, width = times[gap], times[gap + 1] - times[gap]
    s = ((at - start) / width).reshape(-1, *([1] * (values.dim() - 1)))
    width = width.reshape(s.shape)
    s2, s3 = s * s, s * s * s
    return ((2 * s3 - 3 * s2 + 1) * values[gap] + (s3 - 2 * s2 + s) * width * derivatives[gap]
            + (3 * s2 - 2 * s3) * values[gap + 1] + (s3 - s2) * width * derivatives[gap + 1])


def observed_points(x: Tensor, time_channel: bool = True) -> Tensor:
    """Which time points carry data: ``(batch, time, channels) -> (batch, time)`` booleans.

    A time point is observed when at least one data channel holds a value there.

    Args:
        x: observations, NaN where missing.
        time_channel: channel 0 is the observation time (as :func:`fwplab.load_dataset`
            puts it): it is present at every time point and does not count.
    """
    data = x[..., 1:] if time_channel else x
    if data.shape[-1] == 0:
        raise ValueError("x: expected at least one data channel besides the time channel, "
                         f"got shape {tuple(x.shape)}")
    return ~torch.isnan(data).all(-1)


def drop_data_points(x: Tensor, lengths: Tensor, missing_rate: float, seed: int = 0,
                     time_channel: bool = True) -> Tensor:
    """A copy of ``x`` with a seeded random fraction of each series' observations dropped.

    The data channels of the dropped time points become NaN
    (:func:`fwplab.data.drop_observations`, at least two observations are kept);
    the time channel stays, so the model still steps through those times.

    Args:
        x: observations ``(batch, time, channels)``, NaN where missing.
        lengths: time points of each series ``(batch,)``.
        missing_rate: fraction in ``[0, 1)`` of each series' observations to drop.
        seed: seeds the draw.
        time_channel: channel 0 is the observation time and is never dropped.

    Returns:
        ``(batch, time, channels)`` on ``x``'s device.
    """
    observed_points(x, time_channel)  # checks that there is a data channel
    first = 1 if time_channel else 0
    generator = torch.Generator().manual_seed(seed)
    dropped = drop_observations(x[..., first:], lengths, missing_rate, generator)
    return torch.cat([x[..., :first], dropped], -1)


def _check_series(series: int, batch: int) -> None:
    if isinstance(series, bool) or not isinstance(series, int) or not 0 <= series < batch:
        raise ValueError(f"series: expected an index in [0, {batch - 1}], got {series!r}")


def _check_model(model: ContinuousFWP) -> None:
    if not isinstance(model, ContinuousFWP):
        raise TypeError(f"model: expected a ContinuousFWP, got {type(model).__name__}")
    if model.layout == "keys_from_path":
        raise ValueError("model: expected an ODE model or a CDE model with keys from dX/dt "
                         "(layout 'keys_from_derivative', as delta_cde), got layout "
                         "'keys_from_path'")


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def cut_steps(times: Tensor, step_size: Optional[float] = None) -> list[tuple[int, int, float]]:
    """The solver step of every cut of a series, from what the cut has seen.

    The series cut after time point ``i`` (``1 <= i < n``) is solved with the step a
    model gives that cut alone: ``step_size`` when the model has one, else the
    smallest gap among ``t_0 .. t_i`` (:func:`fwplab.paths.integration_grid`). So no
    cut's grid depends on the times after it. Consecutive cuts with the same step
    share one solve (one batch with ``lengths``).

    Args:
        times: the series' time points ``(n,)``, ``n >= 2``.
        step_size: the model's fixed step, or ``None``.

    Returns:
        ``(first, last, step)`` for each run of cuts ``first .. last`` with step ``step``.
    """
    gaps = (times[1:] - times[:-1]).tolist()
    groups: list[tuple[int, int, float]] = []
    smallest = float("inf")
    for i, gap in enumerate(gaps, start=1):
        smallest = min(smallest, gap)
        step = float(step_size) if step_size else smallest
        if groups and groups[-1][2] == step:
            groups[-1] = (groups[-1][0], i, step)
        else:
            groups.append((i, i, step))
    return groups


def _cut_batch(observations: Tensor, times: Tensor, first: int, last: int) -> ObservedBatch:
    """The cuts ``first .. last`` of one series ``(1, n, channels)`` as a batch."""
    prefixes = observations[0, : last + 1].expand(last - first + 1, -1, -1)
    lengths = torch.arange(first + 1, last + 2, device=observations.device)
    return ObservedBatch(prefixes, times[: last + 1], lengths)


def cut_predictions(
    model: ContinuousFWP,
    x: Tensor,
    times: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    series: int = 0,
) -> Tensor:
    """Class probabilities of one series cut after each of its time points (no gradients).

    Row ``i`` is what ``model`` predicts for the series ``x_0 .. x_i`` alone, the
    same as ``model(x[series:series + 1, :i + 1], times[:i + 1])``: the cut is
    interpolated on its own observations and solved with the step that call would
    take (:func:`cut_steps`: the model's ``step_size``, else the smallest gap among
    ``t_0 .. t_i``), so no row depends on the observations or the time points after
    it. Cuts that share a step run as one batch with ``lengths``.

    Args:
        model: a continuous FWP (dropout is off in the computation).
        x: observations ``(batch, time, channels)`` as for ``model.forward``.
        times: shared time points ``(time,)``; default ``0 .. time - 1``.
        lengths: time points per series ``(batch,)``; default all ``time``.
        series: which series of the batch.

    Returns:
        ``(n, classes)`` on the model's device, ``n = lengths[series]``; row 0 is NaN
        (a path needs two time points).
    """
    batch = check_observations(x, times, lengths, model.input_channels)
    _check_series(series, batch.x.shape[0])
    length = int(batch.lengths[series])
    device = _model_device(model)
    observations = batch.x[series : series + 1, :length].to(device)
    own_times = batch.times[:length].to(device)
    was_training, own_step = model.training, model.step_size
    model.eval()
    rows = []
    try:
        with torch.no_grad():
            for first, last, step in cut_steps(own_times, own_step):
                model.step_size = step
                rows.append(model(*_cut_batch(observations, own_times, first, last)))
    finally:
        model.train(was_training)
        model.step_size = own_step
    probabilities = torch.softmax(torch.cat(rows), -1)
    return torch.cat([torch.full_like(probabilities[:1], float("nan")), probabilities])


def fast_weight_trace(
    model: ContinuousFWP,
    x: Tensor,
    times: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    series: int = 0,
    rule: Optional[str] = None,
    points_per_step: int = POINTS_PER_STEP,
    time_channel: bool = True,
) -> FastWeightTrace:
    """Compute what the explorer shows for one series of a batch (no gradients), causally.

    Every value comes from the model run on a *cut* of the series, never on the
    whole series: at a time point ``t_i`` (``i >= 1``) from the series cut after
    ``t_i`` (``x_0 .. x_i`` alone, interpolated on its own observations and solved
    with the step that cut alone would take, :func:`cut_steps`); inside a gap
    ``(t_{i-1}, t_i)`` from the same cut after ``t_i``, the solve the model does over
    that gap once ``x_i`` has arrived. ``t_0`` takes the cut after ``t_1`` (a path
    needs two time points; the figure shows nothing there). So a value at ``t``
    uses no observation after the first time point at or after ``t``, and the
    values at and before ``t_i`` use none after ``t_i``. Between the cut's solver
    steps ``W`` is fwplab's cubic interpolation of the solve
    (:func:`hermite_dense_output`), not the solver's own output.

    The explorer shows ODE models and CDE models whose keys and rates come from
    ``dX/dt`` (``delta_cde``'s layout; :func:`with_rule` keeps it when it swaps the
    rule); the official ``hebb_cde``/``oja_cde`` layout (keys from the path, values
    from ``dX/dt``, read-out ``W^T q``) is refused with a clear error.

    Args:
        model: a continuous FWP (not modified; dropout is off in the computation).
        x: observations ``(batch, time, channels)`` as for ``model.forward``; moved
            to the model's device.
        times: shared time points ``(time,)``; default ``0 .. time - 1``.
        lengths: time points per series ``(batch,)``; default all ``time``.
        series: which series of the batch, ``0 <= series < batch``.
        rule: learning rule to run instead of the model's own (see :func:`with_rule`);
            ``None`` keeps the model's.
        points_per_step: dense-grid points per gap between time points (:func:`dense_grid`).
        time_channel: channel 0 of ``x`` is the time (see :func:`observed_points`).

    Returns:
        :class:`FastWeightTrace` on the model's device.
    """
    _check_model(model)
    rule = model.rule if rule is None else rule
    model = with_rule(model, rule)
    batch = check_observations(x, times, lengths, model.input_channels)
    _check_series(series, batch.x.shape[0])
    device = _model_device(model)
    length = int(batch.lengths[series])
    observations = batch.x[series : series + 1, :length].to(device)
    own_times = batch.times[:length].to(device)
    observed = observed_points(observations[0], time_channel)
    rule_function = get_rule(rule)
    record = rule_function.option("post_tanh", model.post_tanh)
    grid, series_index = dense_grid(own_times, points_per_step)
    # The cut each dense point comes from: the first time point at or after it (at least 1).
    cut_of_point = torch.searchsorted(own_times, grid).clamp(min=1)
    own_step = model.step_size

    def controls(path, at: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The slow net's raw controls at ``at``, time first: ``(points, cuts, heads, .)``."""
        derivative = path.derivative(at) if model.driver == "cde" else None
        return tuple(c.movedim(1, 0) for c in model.slow_net(path.evaluate(at), derivative))

    weights, key, value, rate, query = [], [], [], [], []
    with torch.no_grad():
        for first, last, step in cut_steps(own_times, own_step):
            cuts = _cut_batch(observations, own_times, first, last)
            path = control_path(batch_coeffs(cuts, model.interpolation), cuts.times,
                                model.interpolation)
            model.step_size = step
            solver_grid = integration_grid(cuts.times, step)
            at_steps = model._fast_weights(path, solver_grid)  # (steps, cuts, heads, d, d)
            slopes = rule_function(at_steps, *controls(path, solver_grid),
                                   post_tanh=model.post_tanh)
            mine = ((cut_of_point >= first) & (cut_of_point <= last)).nonzero().flatten()
            at, row = grid[mine], cut_of_point[mine] - first
            dense = hermite_dense_output(solver_grid, at_steps, slopes, at)
            picked = torch.arange(at.shape[0], device=device)
            weights.append(dense[picked, row])
            for store, control in zip((key, value, rate), controls(path, at), strict=True):
                store.append(control[picked, row])
            query.append(model.query(path, at).movedim(1, 0)[picked, row])
        model.step_size = own_step
        weights, key, value, rate = (torch.cat(item) for item in (weights, key, value, rate))
        query = torch.cat(query)
        updates = rule_function(weights, key, value, rate, post_tanh=model.post_tanh)
        shown_key, shown_value, shown_rate = shown_controls(record, key, value, rate)
        readouts = torch.matmul(weights, query.unsqueeze(-1)).squeeze(-1)
        return FastWeightTrace(
            rule=rule,
            series=series,
            times=grid,
            series_times=own_times,
            series_index=series_index,
            observed=observed,
            weights=weights,
            keys=shown_key,
            values=shown_value,
            rates=shown_rate[..., 0],
            updates=updates,
            query=query,
            readouts=readouts,
            norms=torch.linalg.matrix_norm(weights),
            singular_values=torch.linalg.svdvals(weights),
            probabilities=cut_predictions(model, observations, own_times),
        )


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


def stored_pair_error(trace: FastWeightTrace) -> Tensor:
    """How well the final fast weight recalls the pair written at every time point, per head.

    ```
    error_h = sum_i |W_h(T) k_h(t_i) - v_h(t_i)|^2 / sum_i |v_h(t_i)|^2
    ```

    over the series' time points ``t_i`` (:func:`fwplab.discrete.retrieval_error`):
    0 is perfect recall, 1 is the empty memory.

    Args:
        trace: from :func:`fast_weight_trace`.

    Returns:
        ``(heads,)``.
    """
    at = trace.series_index
    return retrieval_error(trace.weights[-1], trace.keys[at].transpose(0, 1),
                           trace.values[at].transpose(0, 1))


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
        ``(points, heads)``, at every time of the dense grid.
    """
    error = trace.values - torch.matmul(trace.weights, trace.keys.unsqueeze(-1)).squeeze(-1)
    written = torch.matmul(trace.updates, trace.keys.unsqueeze(-1)).squeeze(-1)
    return -2 * (error * written).sum(-1)


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
    Display the explorer in a notebook as it is, or its :attr:`widget`.

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
        self.figure = FastWeightFigure(self.trace_for(series, model.rule, rates[0]), head,
                                       class_names)
        self._set_time_range()
        self.image.value = self.figure.png()

        for selector in (self.series_selector, self.rule_selector, self.head_selector,
                         self.missing_selector):
            selector.observe(self._change_selection, names="value")
        self.time_slider.observe(self._change_time, names="value")
        self.widget: ipywidgets.VBox = widgets.VBox([
            widgets.HBox([self.series_selector, self.head_selector, self.rule_selector]),
            widgets.HBox([self.time_slider, self.missing_selector]),
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

    def _change_selection(self, change: dict) -> None:
        trace = self.trace_for(self.series_selector.value, self.rule_selector.value,
                               self.missing_selector.value)
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
        # The live widget, and for static pages (the book) a still of the current figure.
        return add_still(self.widget._repr_mimebundle_(**kwargs) or {}, bytes(self.image.value))

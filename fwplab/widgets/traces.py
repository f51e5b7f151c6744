"""What the fast-weight explorer shows, computed: one series, one rule, causally.

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

All of it is causal (:func:`fast_weight_trace` says how). :mod:`fwplab.widgets.explorer`
draws it and re-exports every public name here.
"""

from __future__ import annotations

import copy
from typing import NamedTuple, Optional

import torch
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
from ..rules import FastWeightRule, get_rule
from ..rules.record import CORRECTIONS

__all__ = [
    "POINTS_PER_STEP",
    "FastWeightTrace",
    "shown_controls",
    "with_rule",
    "fast_weight_trace",
    "cut_predictions",
    "cut_steps",
    "dense_grid",
    "hermite_dense_output",
    "observed_points",
    "drop_data_points",
    "stored_pair_error",
    "recall_error_rate",
]

#: Dense-grid points per gap between time points.
POINTS_PER_STEP = 4


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

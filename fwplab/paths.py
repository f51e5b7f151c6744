"""Control paths: checked inputs, torchcde interpolation and integration grids.

A batch of observed series ``x`` of shape ``(batch, time, channels)`` (NaN where a
value is missing) on a shared grid of observation times ``times`` of shape
``(time,)`` becomes a continuous path ``X(t)`` with derivative ``dX/dt(t)``
through torchcde. Series of different lengths share the grid: series ``b`` is
observed at ``times[:lengths[b]]`` and ends at ``times[lengths[b] - 1]``;
whatever ``x`` holds after that end is ignored (it is replaced by NaN before
interpolation, so it cannot leak into the path).

The coefficients are torchcde's (same layout, same values up to round-off) but
computed here without torchcde's Python loops over every (series, channel)
pair when values are missing: each scalar path is filled as torchcde fills it,
and the natural cubic spline through each path's own knots is solved for all
paths at once by one tridiagonal (Thomas) sweep over time.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Union

import torch
import torchcde
from torch import Tensor

from fwplab.kernels import PathPieces

__all__ = [
    "INTERPOLATIONS",
    "ObservedBatch",
    "check_observations",
    "interpolation_coeffs",
    "batch_coeffs",
    "check_coeffs",
    "control_path",
    "integration_grid",
    "MAX_GRID_STEPS",
    "CAUSAL_INTERPOLATIONS",
    "future_dependence",
]

#: Most steps a fixed-step solver grid may have: the solver keeps a state per step for
#: backpropagation, so a tiny step size on a long span would ask for gigabytes.
MAX_GRID_STEPS = 100_000


class _Interpolation(NamedTuple):
    coeffs: Callable[[Tensor, Tensor], Tensor]
    path: Callable[..., torchcde.InterpolationBase]


def _scalar_paths(x: Tensor) -> Tensor:
    """``(batch, time, channels)`` -> ``(time, batch * channels)``: one column per scalar path."""
    batch, length, channels = x.shape
    return x.transpose(0, 1).reshape(length, batch * channels)


def _batched(columns: Tensor, batch: int, channels: int) -> Tensor:
    """``(pieces, time', batch * channels)`` -> ``(batch, time', pieces * channels)``."""
    pieces, length, _ = columns.shape
    columns = columns.view(pieces, length, batch, channels)
    return columns.permute(2, 1, 0, 3).reshape(batch, length, pieces * channels)


def _linear_coeffs(x: Tensor, times: Tensor) -> Tensor:
    """``torchcde.linear_interpolation_coeffs(x, times)`` without its per-path loop.

    Each scalar path (one series, one channel) is filled on its own: a value
    before the first observation takes the first observed value, one after the
    last takes the last observed value, one in between lies on the straight line
    through the neighbouring observations, and a path never observed is zero::

        x_i = x_p + (t_i - t_p) / (t_q - t_p) * (x_q - x_p),
        p = last observation before i,  q = first observation after i.

    These filled values are the coefficients of torchcde's linear interpolation
    (bit-for-bit equal on CPU).

    Args:
        x: observations ``(batch, time, channels)``, NaN where missing.
        times: strictly increasing ``(time,)`` in ``x``'s dtype and device.

    Returns:
        ``x`` filled, ``(batch, time, channels)``.
    """
    batch, length, channels = x.shape
    values = _scalar_paths(x)
    observed = ~torch.isnan(values)
    index = torch.arange(length, device=x.device).unsqueeze(-1)
    previous = torch.where(observed, index, -1).cummax(0).values
    following = torch.where(observed, index, length).flip(0).cummin(0).values.flip(0)
    before_first, after_last = previous < 0, following == length
    previous, following = previous.clamp(min=0), following.clamp(max=length - 1)
    previous_value, following_value = values.gather(0, previous), values.gather(0, following)
    previous_time, following_time = times[previous], times[following]
    ratio = (times.unsqueeze(-1) - previous_time) / (following_time - previous_time)
    between = previous_value + ratio * (following_value - previous_value)
    filled = torch.where(
        observed, values,
        torch.where(before_first, following_value, torch.where(after_last, previous_value, between)),
    )
    filled = filled.masked_fill(~observed.any(0), 0.0)
    return filled.view(length, batch, channels).transpose(0, 1).contiguous()


def _hermite_cubic_coeffs(x: Tensor, times: Tensor) -> Tensor:
    """``torchcde.hermite_cubic_coefficients_with_backward_differences`` without its per-path loop.

    The missing values are filled as for the linear interpolation
    (:func:`_linear_coeffs`); torchcde then builds the Hermite cubic whose knot
    derivatives are the backward differences of the filled values.

    Args:
        x: observations ``(batch, time, channels)``, NaN where missing.
        times: strictly increasing ``(time,)`` in ``x``'s dtype and device.

    Returns:
        Coefficients ``(batch, time - 1, 4 * channels)``.
    """
    filled = _linear_coeffs(x, times)
    return torchcde.hermite_cubic_coefficients_with_backward_differences(filled, times)


def _thomas_solve(lower_upper: Tensor, diagonal: Tensor, rhs: Tensor) -> Tensor:
    """Solve symmetric tridiagonal systems, one per column, by the Thomas algorithm.

    Row ``i`` of column ``n`` reads ``u[i-1] y[i-1] + d[i] y[i] + u[i] y[i+1] = r[i]``
    (``u = lower_upper[:, n]``, ``d = diagonal[:, n]``, ``r = rhs[:, n]``)::

        forward:   w = u[i-1] / d'[i-1],  d'[i] = d[i] - w u[i-1],  r'[i] = r[i] - w r'[i-1]
        backward:  y[k-1] = r'[k-1] / d'[k-1],  y[i] = (r'[i] - u[i] y[i+1]) / d'[i]

    The operations are those of ``torchcde.misc.tridiagonal_solve``, in the same
    order, so a system padded with decoupled rows (``u = 0``, ``d = 1``,
    ``r = 0``) gives the unpadded solution bit for bit.

    Args:
        lower_upper: off-diagonal ``(k - 1, columns)``.
        diagonal: ``(k, columns)``, nonzero pivots.
        rhs: ``(k, columns)``.

    Returns:
        The solutions ``y``, ``(k, columns)``.
    """
    size = diagonal.shape[0]
    pivots, reduced = torch.empty_like(diagonal), torch.empty_like(rhs)
    pivots[0], reduced[0] = diagonal[0], rhs[0]
    for i in range(1, size):
        weight = lower_upper[i - 1] / pivots[i - 1]
        pivots[i] = diagonal[i] - weight * lower_upper[i - 1]
        reduced[i] = rhs[i] - weight * reduced[i - 1]
    solution = torch.empty_like(rhs)
    solution[-1] = reduced[-1] / pivots[-1]
    for i in range(size - 2, -1, -1):
        solution[i] = (reduced[i] - lower_upper[i] * solution[i + 1]) / pivots[i]
    return solution


def _spline_knots(values: Tensor, times: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """torchcde's knots of the natural cubic spline of each scalar path, packed.

    A value before a path's first observation takes the first observed value
    and one after its last observation takes the last one, so these times
    become knots too; a path never observed is zero at every time. The ``k``
    knots of column ``n`` are moved to rows ``0 .. k - 1`` (in time order);
    the rows below are zero.

    Args:
        values: scalar paths ``(time, paths)``, NaN where missing.
        times: strictly increasing ``(time,)``.

    Returns:
        ``knot_times`` and ``knot_values``, both ``(time, paths)``; the number
        of knots ``(1, paths)``; and ``piece`` ``(time - 1, paths)``, the number
        ``j`` of the knot interval ``[s_j, s_{j+1}]`` that holds the original
        interval ``[t_i, t_{i+1}]``.
    """
    length, paths = values.shape
    observed = ~torch.isnan(values)
    index = torch.arange(length, device=values.device).unsqueeze(-1)
    first = observed.to(torch.uint8).argmax(0, keepdim=True)
    last = length - 1 - observed.flip(0).to(torch.uint8).argmax(0, keepdim=True)
    never_observed = ~observed.any(0, keepdim=True)
    before_first, after_last = index < first, index > last
    filled = torch.where(
        before_first, values.gather(0, first),
        torch.where(after_last, values.gather(0, last), values),
    ).masked_fill(never_observed, 0.0)
    knots = observed | before_first | after_last | never_observed
    rank = knots.cumsum(0) - 1
    # Knot number j goes to row j; every other time to the discarded row `length`.
    target = rank.masked_fill(~knots, length).unsqueeze(0).expand(2, -1, -1)
    sources = torch.stack([times.unsqueeze(-1).expand_as(filled), filled])
    packed = values.new_zeros(2, length + 1, paths).scatter_(1, target, sources)
    return packed[0, :length], packed[1, :length], rank[-1:] + 1, rank[:-1]


def _natural_cubic_pieces(knot_times: Tensor, knot_values: Tensor, count: Tensor) -> Tensor:
    """Coefficients of the natural cubic spline of each column's packed knots.

    Column ``n`` holds ``k_n >= 2`` knots ``(s_j, y_j)`` in its first ``k_n``
    rows (zeros below). The knot derivatives ``D`` solve (``h_j = s_{j+1} - s_j``,
    terms with ``h_{-1}`` or ``h_{k-1}`` dropped)::

        D_{j-1} / h_{j-1} + 2 (1 / h_{j-1} + 1 / h_j) D_j + D_{j+1} / h_j
            = 3 (y_j - y_{j-1}) / h_{j-1}^2 + 3 (y_{j+1} - y_j) / h_j^2

    padded with the decoupled rows ``D_j = 0`` for ``j >= k_n`` so that all
    columns share one Thomas sweep. On ``[s_j, s_{j+1}]``, with ``u = s - s_j``::

        y(s) = a + b u + c u^2 + d u^3,  a = y_j,  b = D_j,
        2c = (6 (y_{j+1} - y_j) / h_j - 4 D_j - 2 D_{j+1}) / h_j,
        3d = (-6 (y_{j+1} - y_j) / h_j + 3 (D_j + D_{j+1})) / h_j^2,

    and a column with two knots is the straight line ``b = (y_1 - y_0) / h_0``,
    ``c = d = 0`` (torchcde's special case). The operations follow torchcde's.

    Args:
        knot_times: ``(time, paths)``, increasing within each column's knots.
        knot_values: ``(time, paths)``.
        count: number of knots ``k_n`` of each column, ``(1, paths)``.

    Returns:
        ``a, b, 2c, 3d`` stacked, ``(4, time - 1, paths)``; rows ``j >= k_n - 1``
        of column ``n`` are meaningless.
    """
    length = knot_times.shape[0]
    index = torch.arange(length, device=knot_times.device).unsqueeze(-1)
    gaps = knot_times[1:] - knot_times[:-1]
    reciprocal = torch.where(index[:-1] < count - 1, gaps.reciprocal(), 0.0)
    reciprocal_squared = reciprocal**2
    three_diffs = 3 * (knot_values[1:] - knot_values[:-1])
    scaled_diffs = three_diffs * reciprocal_squared
    pad = torch.zeros_like(reciprocal[:1])
    diagonal = 2 * (torch.cat([reciprocal, pad]) + torch.cat([pad, reciprocal]))
    diagonal.masked_fill_(index >= count, 1.0)
    rhs = torch.cat([scaled_diffs, pad]) + torch.cat([pad, scaled_diffs])
    derivatives = _thomas_solve(reciprocal, diagonal, rhs)
    del diagonal, rhs, scaled_diffs  # free (time, paths) buffers before the next ones

    six_diffs = 2 * three_diffs
    two_c = (six_diffs * reciprocal - 4 * derivatives[:-1] - 2 * derivatives[1:]) * reciprocal
    three_d = (-six_diffs * reciprocal + 3 * (derivatives[:-1] + derivatives[1:])) * reciprocal_squared
    pieces = torch.stack([knot_values[:-1], derivatives[:-1], two_c, three_d])
    line = count == 2
    pieces[1, :1] = torch.where(line, (knot_values[1:2] - knot_values[:1]) / gaps[:1], pieces[1, :1])
    pieces[2:, :1].masked_fill_(line, 0.0)
    return pieces


def _taylor_shift(pieces: Tensor, piece: Tensor, knot_times: Tensor, times: Tensor) -> Tensor:
    """Re-expand spline pieces about the start of each original interval.

    The original interval ``[t_i, t_{i+1}]`` lies in the knot interval
    ``[s_j, s_{j+1}]``, ``j = piece[i]``; with ``o = s_j - t_i <= 0`` that piece,
    written about ``t_i``, has::

        a' = a + (-b + (c - d o) o) o,  b' = b + (3 d o - 2 c) o,
        2c' = 2c - 2 (3d) o,  3d' = 3d.

    Args:
        pieces: ``a, b, 2c, 3d`` per knot interval, ``(4, time - 1, paths)``.
        piece: knot interval of each original interval, ``(time - 1, paths)``.
        knot_times: ``(time, paths)``.
        times: ``(time,)``.

    Returns:
        ``a', b', 2c', 3d'`` per original interval, ``(4, time - 1, paths)``.
    """
    a, b, two_c, three_d = pieces.gather(1, piece.expand_as(pieces))
    offset = knot_times.gather(0, piece) - times[:-1].unsqueeze(-1)
    a_inner = (0.5 * two_c - three_d * offset / 3) * offset
    return torch.stack([
        a + (a_inner - b) * offset,
        b + (three_d * offset - two_c) * offset,
        two_c - 2 * three_d * offset,
        three_d,
    ])


def _natural_cubic_coeffs(x: Tensor, times: Tensor) -> Tensor:
    """``torchcde.natural_cubic_coeffs(x, times)`` without its per-path loop.

    Each scalar path (one series, one channel) gets its own natural cubic
    spline through its observations, filled at both ends as torchcde fills
    them (:func:`_spline_knots`, :func:`_natural_cubic_pieces`); each
    interval between consecutive observation times then gets the coefficients
    of the spline piece that covers it, re-expanded about the interval's start
    (:func:`_taylor_shift`). All paths are solved at once; the only Python
    loop runs over time. The arithmetic follows torchcde's operation by
    operation (the results are bit-for-bit equal on CPU). Without missing
    values torchcde's own vectorised code is called.

    Args:
        x: observations ``(batch, time, channels)``, NaN where missing.
        times: strictly increasing ``(time,)`` in ``x``'s dtype and device.

    Returns:
        Coefficients ``(batch, time - 1, 4 * channels)``: ``a``, ``b``, ``2c``,
        ``3d`` of each interval, channels last, as ``torchcde.CubicSpline`` reads them.
    """
    if not bool(torch.isnan(x).any()):
        return torchcde.natural_cubic_coeffs(x, times)
    batch, length, channels = x.shape
    knot_times, knot_values, count, piece = _spline_knots(_scalar_paths(x), times)
    pieces = _natural_cubic_pieces(knot_times, knot_values, count)
    return _batched(_taylor_shift(pieces, piece, knot_times, times), batch, channels)


def _pieces_at(knots: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
    """The piece of each point (as torchcde: clamped to the first and last pieces) and
    the time since its start, ``(points,)`` each."""
    piece = torch.bucketize(points.detach(), knots.detach()).sub(1).clamp(0, knots.shape[0] - 2)
    return piece, points - knots[piece]


class CubicPath(torchcde.CubicSpline):
    """torchcde's cubic path, plus :meth:`at_points`: values and derivatives at many
    points at once, time first."""

    def __init__(self, coeffs: Tensor, t: Tensor) -> None:
        super().__init__(coeffs, t)
        self._packed = coeffs

    def at_points(self, points: Tensor, derivative: bool = True) -> tuple[Tensor, Optional[Tensor]]:
        """``X`` and ``dX/dt`` at ``points (points,)``, each ``(points, batch, channels)``.

        Equal to ``evaluate(points).transpose(0, 1)`` and ``derivative(points).transpose(0, 1)``;
        on piece ``i`` with ``s = t - t_i``::

            X(t)     = a_i + b_i s + c_i s^2 + d_i s^3
            dX/dt(t) = b_i + 2 c_i s + 3 d_i s^2

        One gather of the packed coefficients into ``(4, points, batch, channels)``, so
        each coefficient and the results are contiguous, time first (the slow net's
        projections read contiguous rows).
        """
        piece, s = _pieces_at(self._t, points)
        batch, pieces, packed = self._packed.shape
        by_coefficient = self._packed.view(batch, pieces, 4, packed // 4).permute(2, 1, 0, 3)
        a, b, two_c, three_d = by_coefficient.index_select(1, piece).unbind(0)
        s = s.view(-1, 1, 1)
        dx = torch.addcmul(b, torch.addcmul(two_c, three_d, s), s) if derivative else None
        inner = torch.addcmul(b, torch.addcmul(two_c, three_d, s, value=2 / 3), s, value=0.5)
        return torch.addcmul(a, inner, s), dx

    def pieces(self, points: Tensor) -> PathPieces:
        """The path as the fused kernel reads it at ``points (points,)``."""
        piece, s = _pieces_at(self._t, points)
        return PathPieces("cubic", self._packed, None, piece, s)


class LinearPath(torchcde.LinearInterpolation):
    """torchcde's piecewise linear path, plus :meth:`at_points` (see :class:`CubicPath`)."""

    def at_points(self, points: Tensor, derivative: bool = True) -> tuple[Tensor, Optional[Tensor]]:
        """``X`` and ``dX/dt`` at ``points (points,)``, each ``(points, batch, channels)``;
        on piece ``i``, ``X(t) = x_i + s (x_{i+1} - x_i) / (t_{i+1} - t_i)``."""
        piece, s = _pieces_at(self._t, points)
        values = self._coeffs.transpose(0, 1)
        slope = self._derivs.transpose(0, 1).index_select(0, piece)
        x = torch.addcmul(values.index_select(0, piece), slope, s.view(-1, 1, 1))
        return x, slope if derivative else None

    def pieces(self, points: Tensor) -> PathPieces:
        """The path as the fused kernel reads it at ``points (points,)``."""
        piece, s = _pieces_at(self._t, points)
        return PathPieces("linear", self._coeffs, self._derivs, piece, s)


#: Interpolation schemes by name: coefficient function (vectorised equivalents of
#: torchcde's) and path class (torchcde's, with ``at_points``).
INTERPOLATIONS: dict[str, _Interpolation] = {
    "natural_cubic": _Interpolation(_natural_cubic_coeffs, CubicPath),
    "hermite_cubic": _Interpolation(_hermite_cubic_coeffs, CubicPath),
    "linear": _Interpolation(_linear_coeffs, LinearPath),
}


#: The interpolations whose path up to an observation time ``t_i`` is built from the
#: observations at times ``<= t_i`` only (on ``[t_i, t_{i+1}]`` the linear path uses the
#: two ends, the Hermite cubic also ``t_{i-1}`` for its backward difference), so a model
#: on such a path computes at ``t_i`` what it computes on the series cut at ``t_i``.
#: This holds when nothing is missing: a missing value is filled from the channel's
#: next observation, which may come later. The natural cubic spline is not causal: its
#: knot derivatives solve one linear system coupling every observation.
CAUSAL_INTERPOLATIONS: tuple[str, ...] = ("hermite_cubic", "linear")


class ObservedBatch(NamedTuple):
    """A validated batch: ``x (batch, time, channels)``, ``times (time,)``, ``lengths (batch,)``."""

    x: Tensor
    times: Tensor
    lengths: Tensor


def _interpolation(name: str) -> _Interpolation:
    try:
        return INTERPOLATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown interpolation {name!r}; expected one of {sorted(INTERPOLATIONS)}"
        ) from None


def check_observations(
    x: Tensor,
    times: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    input_channels: Optional[int] = None,
) -> ObservedBatch:
    """Validate a batch of observations and fill in the defaults.

    Args:
        x: observations ``(batch, time, channels)``, floating point, NaN where missing,
            at least one series.
        times: strictly increasing observation times ``(time,)``; defaults to
            ``0, 1, ..., time - 1`` in ``x``'s dtype and device.
        lengths: number of observations of each series ``(batch,)``, integers in
            ``[2, time]``; defaults to ``time`` for every series.
        input_channels: the number of channels the model expects, if known.

    Returns:
        The same batch with ``times`` and ``lengths`` filled in and every value of
        ``x`` after a series' end replaced by NaN.

    Raises:
        ValueError: naming the argument, what was expected and what came.
    """
    if not isinstance(x, Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x: expected a tensor of shape (batch, time, channels), got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"x: expected a floating point tensor, got dtype {x.dtype}")
    batch, length, channels = x.shape
    if batch == 0:
        raise ValueError(f"x: expected at least one series, got a batch of 0 (x has shape "
                         f"{tuple(x.shape)})")
    if input_channels is not None and channels != input_channels:
        raise ValueError(
            f"x: the model expects {input_channels} input channels, got {channels} "
            f"(x has shape {tuple(x.shape)})"
        )
    if length < 2:
        raise ValueError(f"x: a path needs at least 2 observation times, got {length}")
    if torch.isinf(x).any():
        raise ValueError("x: contains infinite values (use NaN for missing observations)")

    if times is None:
        times = torch.arange(length, dtype=x.dtype, device=x.device)
    else:
        if not isinstance(times, Tensor) or times.dim() != 1 or times.shape[0] != length:
            shape = tuple(times.shape) if isinstance(times, Tensor) else type(times).__name__
            raise ValueError(f"times: expected shape ({length},) to match x, got {shape}")
        times = times.to(device=x.device, dtype=x.dtype)
        if not torch.isfinite(times).all():
            raise ValueError("times: contains non-finite values")
        if not (times[1:] > times[:-1]).all():
            raise ValueError("times: must be strictly increasing")

    if lengths is None:
        lengths = torch.full((batch,), length, dtype=torch.long, device=x.device)
    else:
        lengths = torch.as_tensor(lengths, device=x.device)
        if lengths.shape != (batch,):
            raise ValueError(f"lengths: expected shape ({batch},), got {tuple(lengths.shape)}")
        if lengths.is_floating_point() or lengths.is_complex():
            raise ValueError(f"lengths: expected integers, got dtype {lengths.dtype}")
        lengths = lengths.long()
        if (lengths < 2).any() or (lengths > length).any():
            raise ValueError(
                f"lengths: every length must lie in [2, {length}], got min {int(lengths.min())} "
                f"and max {int(lengths.max())}"
            )
        after_end = torch.arange(length, device=x.device) >= lengths.unsqueeze(-1)
        if after_end.any():
            x = x.masked_fill(after_end.unsqueeze(-1), float("nan"))

    # A channel never observed in a series becomes a constant zero path (torchcde's
    # convention); a series with no observation at all is an error.
    unobserved = torch.isnan(x).all(2).all(1)
    if unobserved.any():
        raise ValueError(f"x: series {int(unobserved.nonzero()[0])} has no observed value at all")
    return ObservedBatch(x, times, lengths)


def interpolation_coeffs(
    x: Tensor,
    times: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    interpolation: str = "natural_cubic",
) -> Tensor:
    """Interpolation coefficients of a batch of observed series (torchcde).

    Each series is interpolated on its own observations ``times[:length]`` and
    held constant after its end, so its path never depends on the other series
    of the batch nor on what ``x`` holds after the end. Compute the coefficients
    once per dataset and pass them to a model's ``forward``.

    Args:
        x: observations ``(batch, time, channels)``, NaN where missing.
        times: observation times ``(time,)``; default ``0 .. time - 1``.
        lengths: series lengths ``(batch,)``; default all ``time``.
        interpolation: one of ``INTERPOLATIONS`` (``"natural_cubic"`` reproduces
            the official code's path).

    Returns:
        Coefficients ``(batch, time - 1, 4 * channels)`` for the cubic
        interpolations and ``(batch, time, channels)`` for linear.
    """
    return batch_coeffs(check_observations(x, times, lengths), interpolation)


def batch_coeffs(batch: ObservedBatch, interpolation: str = "natural_cubic") -> Tensor:
    """:func:`interpolation_coeffs` of an already validated :class:`ObservedBatch`."""
    make_coeffs = _interpolation(interpolation).coeffs
    length = batch.x.shape[1]
    if bool((batch.lengths == length).all()):
        return make_coeffs(batch.x, batch.times)
    pieces, rows = [], []
    for own_length in batch.lengths.unique().tolist():
        row = (batch.lengths == own_length).nonzero().flatten()
        coeffs = make_coeffs(batch.x[row, :own_length], batch.times[:own_length])
        pieces.append(_hold_after_end(coeffs, batch.times[:own_length], length, interpolation))
        rows.append(row)
    coeffs = torch.cat(pieces)
    return coeffs[torch.argsort(torch.cat(rows))]


def _hold_after_end(coeffs: Tensor, times: Tensor, length: int, interpolation: str) -> Tensor:
    """Extend coefficients of a path on ``times`` to ``length`` points, constant after its end."""
    if interpolation == "linear":  # coefficients are the (filled) values at the knots
        tail = coeffs[:, -1:].expand(-1, length - coeffs.shape[1], -1)
        return torch.cat([coeffs, tail], 1)
    a, b, two_c, three_d = coeffs[:, -1:].chunk(4, dim=-1)
    gap = times[-1] - times[-2]
    end = a + (b + (0.5 * two_c + three_d * gap / 3) * gap) * gap
    tail = torch.cat([end, torch.zeros_like(end).repeat(1, 1, 3)], -1)
    return torch.cat([coeffs, tail.expand(-1, length - 1 - coeffs.shape[1], -1)], 1)


def check_coeffs(coeffs: Tensor, x: Tensor, interpolation: str) -> None:
    """Raise a clear error unless ``coeffs`` fit observations ``x`` for ``interpolation``."""
    batch, length, channels = x.shape
    expected = (batch, length, channels) if interpolation == "linear" else (
        batch, length - 1, 4 * channels)
    if not isinstance(coeffs, Tensor) or tuple(coeffs.shape) != expected:
        shape = tuple(coeffs.shape) if isinstance(coeffs, Tensor) else type(coeffs).__name__
        raise ValueError(
            f"coeffs: expected shape {expected} for x of shape {tuple(x.shape)} and "
            f"{interpolation!r} interpolation, got {shape}"
        )


def control_path(
    coeffs: Tensor, times: Tensor, interpolation: str = "natural_cubic"
) -> Union[CubicPath, LinearPath]:
    """The path ``X`` with ``X.evaluate(t)`` and ``X.derivative(t)`` from coefficients.

    ``t`` may be a scalar or a 1-D tensor of times; the result has shape
    ``(batch, channels)`` or ``(batch, len(t), channels)``. ``X.at_points(t)`` gives
    both at a 1-D ``t``, time first: ``(len(t), batch, channels)`` each.
    """
    return _interpolation(interpolation).path(coeffs, times)


def integration_grid(times: Tensor, step_size: Optional[float] = None) -> Tensor:
    """Fixed-solver grid through every observation time.

    Each gap between consecutive observation times is split into
    ``ceil(gap / step_size)`` equal steps, so every observation time is a grid
    point and no step exceeds ``step_size``. The default step is the smallest
    gap, as in the paper (on a regular grid this is the grid itself).

    Args:
        times: strictly increasing ``(time,)``.
        step_size: largest step; default ``min(diff(times))``.

    Returns:
        The grid ``(steps + 1,)`` in ``times``' dtype and device.

    Raises:
        ValueError: a bad ``step_size``, or one that would make more than
            :data:`MAX_GRID_STEPS` steps (the solver would need memory in proportion).
    """
    gaps = times[1:] - times[:-1]
    if step_size is None:
        step_size = float(gaps.min())
    elif not (isinstance(step_size, (int, float)) and math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size: expected a positive number, got {step_size!r}")
    # Tolerance so that gaps equal to the step up to round-off take one step.
    steps = torch.ceil(gaps.double() / step_size - 1e-6).clamp(min=1)
    total = float(steps.sum())
    if total > MAX_GRID_STEPS:
        raise ValueError(f"step_size: {step_size:.3g} over times {float(times[0]):.6g} to "
                         f"{float(times[-1]):.6g} makes a solver grid of {total:.3g} steps, more "
                         f"than the limit of {MAX_GRID_STEPS}; use a larger step size")
    counts = steps.long()
    if bool((counts == 1).all()):
        return times
    pieces = [times[:1]]
    for start, gap, n in zip(times[:-1], gaps, counts.tolist(), strict=True):
        fractions = torch.arange(1, n + 1, dtype=times.dtype, device=times.device) / n
        piece = start + gap * fractions
        pieces.append(piece)
    grid = torch.cat(pieces)
    # Observation times exactly, free of the round-off of start + gap * fraction.
    grid[torch.cumsum(torch.cat([counts.new_zeros(1), counts]), 0)] = times
    return grid


def future_dependence(
    x: Tensor,
    end: int,
    times: Optional[Tensor] = None,
    interpolation: str = "natural_cubic",
    points_per_gap: int = 16,
) -> Tensor:
    """How much the path before observation ``end`` depends on the observations after it.

    Builds the path of each whole series and the path of the same series cut after
    its observation ``end`` (observations ``0 .. end``), and compares both, values and
    derivatives, on ``[times[0], times[end]]``::

        gap_b = max over t in [t_0, t_end] of max(|X_b(t) - X_b^cut(t)|,
                                                  |dX_b/dt(t) - dX_b^cut/dt(t)|)

    Zero means the path up to ``t_end`` is the path of the cut series (causal
    there); see :data:`CAUSAL_INTERPOLATIONS`.

    Args:
        x: observations ``(batch, time, channels)``, NaN where missing.
        end: index of the last observation kept in the cut series, in ``[1, time - 1]``.
        times: observation times ``(time,)``; default ``0 .. time - 1``.
        interpolation: one of ``INTERPOLATIONS``.
        points_per_gap: evaluation points in each gap between observation times
            (each gap's start included, the time ``times[end]`` added).

    Returns:
        The largest difference of each series, ``(batch,)``.

    Raises:
        ValueError: for a bad ``end`` or ``points_per_gap`` or bad observations.
    """
    batch = check_observations(x, times)
    length = batch.x.shape[1]
    if isinstance(end, bool) or not isinstance(end, int) or not 1 <= end < length:
        raise ValueError(f"end: expected an integer in [1, {length - 1}], got {end!r}")
    if isinstance(points_per_gap, bool) or not isinstance(points_per_gap, int) or points_per_gap < 1:
        raise ValueError(f"points_per_gap: expected a positive integer, got {points_per_gap!r}")
    whole = control_path(batch_coeffs(batch, interpolation), batch.times, interpolation)
    cut_times = batch.times[: end + 1]
    cut_coeffs = interpolation_coeffs(batch.x[:, : end + 1], cut_times, interpolation=interpolation)
    cut = control_path(cut_coeffs, cut_times, interpolation)
    fractions = torch.arange(points_per_gap, dtype=x.dtype, device=x.device) / points_per_gap
    starts, gaps = cut_times[:-1].unsqueeze(-1), (cut_times[1:] - cut_times[:-1]).unsqueeze(-1)
    # Strictly inside each gap or at its start: no point rounds past times[end].
    points = torch.cat([(starts + gaps * fractions).flatten(), cut_times[-1:]])
    values = (whole.evaluate(points) - cut.evaluate(points)).abs()
    slopes = (whole.derivative(points) - cut.derivative(points)).abs()
    return torch.maximum(values, slopes).flatten(1).amax(1)

"""Control paths: checked inputs, torchcde interpolation and integration grids.

A batch of observed series ``x`` of shape ``(batch, time, channels)`` (NaN where a
value is missing) on a shared grid of observation times ``times`` of shape
``(time,)`` becomes a continuous path ``X(t)`` with derivative ``dX/dt(t)``
through torchcde. Series of different lengths share the grid: series ``b`` is
observed at ``times[:lengths[b]]`` and ends at ``times[lengths[b] - 1]``;
whatever ``x`` holds after that end is ignored (it is replaced by NaN before
interpolation, so it cannot leak into the path).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch
import torchcde
from torch import Tensor

__all__ = [
    "INTERPOLATIONS",
    "ObservedBatch",
    "check_observations",
    "interpolation_coeffs",
    "batch_coeffs",
    "check_coeffs",
    "control_path",
    "integration_grid",
]


class _Interpolation(NamedTuple):
    coeffs: Callable[..., Tensor]
    path: Callable[..., torchcde.InterpolationBase]


#: Interpolation schemes by name: coefficient function and path class of torchcde.
INTERPOLATIONS: dict[str, _Interpolation] = {
    "natural_cubic": _Interpolation(torchcde.natural_cubic_coeffs, torchcde.CubicSpline),
    "hermite_cubic": _Interpolation(
        torchcde.hermite_cubic_coefficients_with_backward_differences, torchcde.CubicSpline
    ),
    "linear": _Interpolation(torchcde.linear_interpolation_coeffs, torchcde.LinearInterpolation),
}


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
        x: observations ``(batch, time, channels)``, floating point, NaN where missing.
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
    once per dataset and pass them to a model's ``forward``: torchcde's
    missing-value handling loops in Python.

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
) -> torchcde.InterpolationBase:
    """The path ``X`` with ``X.evaluate(t)`` and ``X.derivative(t)`` from coefficients.

    ``t`` may be a scalar or a 1-D tensor of times; the result has shape
    ``(batch, channels)`` or ``(batch, len(t), channels)``.
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
    """
    gaps = times[1:] - times[:-1]
    if step_size is None:
        step_size = float(gaps.min())
    elif not (isinstance(step_size, (int, float)) and math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size: expected a positive number, got {step_size!r}")
    # Tolerance so that gaps equal to the step up to round-off take one step.
    counts = torch.ceil(gaps / step_size - 1e-6).clamp(min=1).long()
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

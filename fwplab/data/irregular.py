"""Irregular sampling: dropped observations, the time channel, observational intensity.

The set-up of Kidger et al. (2020), "Neural Controlled Differential Equations for
Irregular Time Series": a fraction of each series' observations is dropped at
random (set to NaN), *then* the true observation time is added as a channel, so
the time channel stays complete while the data channels have gaps. An optional
observational-intensity channel per data channel counts the observations so far::

    x_drop[b, t, :] = NaN            for the dropped time points t of series b
    time[b, t]      = s_b(t)         observation time of point t (index t by default)
    intensity[b, t, c] = #{u <= t : x[b, u, c] observed}
    x_out = concat(time, intensity, x_drop)   (channel order as Kidger et al.)

Shapes: ``x`` is ``(batch, time, channels)``, ``lengths`` is ``(batch,)``; after
``lengths[b]`` every channel of series ``b`` is NaN (padding).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = ["drop_observations", "observational_intensity", "time_channel", "augment_channels"]

MIN_KEPT_POINTS = 2


def _check_batch(x: Tensor, lengths: Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"x: expected shape (batch, time, channels), got {tuple(x.shape)}")
    if lengths.shape != (x.shape[0],):
        raise ValueError(f"lengths: expected shape ({x.shape[0]},), got {tuple(lengths.shape)}")
    if len(lengths) and (int(lengths.min()) < 1 or int(lengths.max()) > x.shape[1]):
        raise ValueError(f"lengths: expected values in [1, {x.shape[1]}], got "
                         f"[{int(lengths.min())}, {int(lengths.max())}]")


def drop_observations(
    x: Tensor, lengths: Tensor, missing_rate: float, generator: Optional[torch.Generator] = None
) -> Tensor:
    """Drop a random fraction of each series' observed time points (all channels at once).

    For series ``b`` with ``n_b`` observed time points (at least one channel observed,
    within ``lengths[b]``), ``min(floor(missing_rate * n_b), n_b - 2)`` of them, drawn
    uniformly without replacement, become NaN in every channel. At least two observed
    points always remain, so every series still defines a path. The draw only depends
    on ``generator`` (a CPU generator; seed it for reproducibility) and the data.

    Args:
        x: ``(batch, time, channels)`` data channels (without a time channel).
        lengths: ``(batch,)`` number of time points of each series.
        missing_rate: fraction in ``[0, 1)`` of observed points to drop.
        generator: CPU random generator; None uses torch's global one.

    Returns:
        Tensor: a copy of ``x`` with the dropped points set to NaN.
    """
    _check_batch(x, lengths)
    if not 0.0 <= missing_rate < 1.0:
        raise ValueError(f"missing_rate: expected a fraction in [0, 1), got {missing_rate}")
    dropped = x.clone()
    if missing_rate == 0.0:
        return dropped
    observed_points = ~torch.isnan(x).all(dim=-1)
    for b in range(x.shape[0]):
        candidates = observed_points[b, : int(lengths[b])].nonzero().flatten().cpu()
        count = min(math.floor(missing_rate * len(candidates)), len(candidates) - MIN_KEPT_POINTS)
        if count <= 0:
            continue
        chosen = candidates[torch.randperm(len(candidates), generator=generator)[:count]]
        dropped[b, chosen.to(x.device)] = math.nan
    return dropped


def observational_intensity(x: Tensor, lengths: Tensor) -> Tensor:
    """Cumulative number of observations of every channel.

    ```
    intensity[b, t, c] = sum_{u <= t} 1[x[b, u, c] is not NaN]     for t < lengths[b]
    ```

    Args:
        x: ``(batch, time, channels)`` with NaN for missing values.
        lengths: ``(batch,)`` number of time points of each series.

    Returns:
        Tensor: ``(batch, time, channels)`` counts in ``x``'s dtype, NaN after each series' end.
    """
    _check_batch(x, lengths)
    counts = (~torch.isnan(x)).to(x.dtype).cumsum(dim=1)
    return counts.masked_fill(~_inside(lengths, x.shape[1], x.device).unsqueeze(-1), math.nan)


def _inside(lengths: Tensor, time: int, device: torch.device) -> Tensor:
    """``(batch, time)`` mask, True before each series' end."""
    return torch.arange(time, device=device) < lengths.to(device).unsqueeze(-1)


def time_channel(lengths: Tensor, time: int, times: Optional[Tensor] = None,
                 dtype: Optional[torch.dtype] = None) -> Tensor:
    """The observation time of every point, as a channel.

    Args:
        lengths: ``(batch,)`` number of time points of each series.
        time: the padded number of time points.
        times: observation times, either one grid ``(time,)`` shared by all series or
            one row per series ``(batch, time)``; None means the index ``0, 1, ..., time-1``
            (the convention of Kidger et al. for data without timestamps).
        dtype: dtype of the result; defaults to ``times``' dtype or torch's default.

    Returns:
        Tensor: ``(batch, time, 1)`` times, NaN after each series' end.
    """
    batch = lengths.shape[0]
    if times is None:
        times = torch.arange(time, dtype=dtype or torch.get_default_dtype(),
                             device=lengths.device)
    if times.shape not in ((time,), (batch, time)):
        raise ValueError(f"times: expected shape ({time},) or ({batch}, {time}), got "
                         f"{tuple(times.shape)}")
    grid = times.to(dtype or times.dtype).expand(batch, time)
    grid = grid.masked_fill(~_inside(lengths, time, grid.device), math.nan)
    return grid.unsqueeze(-1)


def augment_channels(
    x: Tensor,
    lengths: Tensor,
    times: Optional[Tensor] = None,
    add_time: bool = True,
    add_intensity: bool = False,
) -> Tensor:
    """Put the time channel and the intensity channels in front of the data channels.

    ```
    out = concat([time] if add_time, [intensity(x)] if add_intensity, x)   along channels
    ```

    Args:
        x: ``(batch, time, channels)`` data channels, NaN where missing.
        lengths: ``(batch,)`` number of time points of each series.
        times: ``(time,)`` or ``(batch, time)`` observation times (see :func:`time_channel`).
        add_time: put the time channel first.
        add_intensity: add one cumulative-count channel per data channel.

    Returns:
        Tensor: ``(batch, time, add_time + channels * (1 + add_intensity))``.
    """
    _check_batch(x, lengths)
    parts = []
    if add_time:
        parts.append(time_channel(lengths, x.shape[1], times, dtype=x.dtype).to(x.device))
    if add_intensity:
        parts.append(observational_intensity(x, lengths))
    parts.append(x)
    return torch.cat(parts, dim=-1)

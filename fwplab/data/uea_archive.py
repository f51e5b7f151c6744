"""UEA archive problems (CharacterTrajectories, EigenWorms) and log-signature windows.

The archive ships each problem as a zip holding ``{Problem}_TRAIN.ts`` and
``{Problem}_TEST.ts``; they are read straight from the zip (or from a folder).

Very long series (EigenWorms: 17,984 steps) are summarised as in Morrill et al.
(2021), "Neural Rough Differential Equations": the path is cut into windows of
``step`` increments and each window is replaced by its depth-1 or depth-2
log-signature. For a piecewise-linear window with increments ``d_1, ..., d_n``::

    level 1:  L_i      = sum_k d_k^i                                  (the increment)
    level 2:  A_{ij}   = 1/2 sum_k (S_k^i d_k^j - S_k^j d_k^i),  i < j   (Levy area)
              S_k      = d_1 + ... + d_{k-1}                          (the path so far)

A CDE driven by the piecewise-linear path through the cumulative sums of these
window log-signatures takes exactly the log-ODE step of a neural RDE, so
:func:`log_signature_path` returns that path and any CDE model can use it.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ..paths import interpolation_coeffs
from .dataset import Dataset, Split
from .ts import (
    DataFormatError,
    TsFile,
    check_ts_pair,
    decode_ts_bytes,
    parse_ts,
    require_labels,
)

__all__ = [
    "read_uea_problem",
    "log_signature_windows",
    "log_signature_path",
    "log_signature_channel_names",
    "log_signature_dataset",
]


def _find_member(names: list[str], wanted: str) -> str | None:
    matches = [name for name in names if Path(name).name.lower() == wanted.lower()]
    return min(matches, key=len) if matches else None


def read_uea_problem(source: Union[str, Path], problem: str) -> tuple[TsFile, TsFile]:
    """Read ``{problem}_TRAIN.ts`` and ``{problem}_TEST.ts`` from a zip file or a folder.

    The files may sit at any depth of the zip or folder; TEST labels are encoded
    with the TRAIN header's class order.

    Raises:
        DataFormatError: the source or one of the two files is missing, or a format problem.
    """
    source = Path(source)
    wanted = (f"{problem}_TRAIN.ts", f"{problem}_TEST.ts")
    if source.is_file() and zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            names = [info.filename for info in archive.infolist() if not info.is_dir()]
            members = [_find_member(names, name) for name in wanted]
            texts = [None if m is None else decode_ts_bytes(archive.read(m), f"{source}!{m}")
                     for m in members]
        sources = [f"{source}!{member}" for member in members]
    elif source.is_dir():
        files = [str(path) for path in source.rglob("*.ts")]
        members = [_find_member(files, name) for name in wanted]
        texts = [None if m is None else decode_ts_bytes(Path(m).read_bytes(), str(m))
                 for m in members]
        sources = [str(member) for member in members]
    else:
        raise DataFormatError(f"{source}: not a zip file or folder holding {wanted[0]}")
    for name, text in zip(wanted, texts, strict=True):
        if text is None:
            raise DataFormatError(f"{source}: {name} not found inside")
    train = parse_ts(texts[0], sources[0])
    require_labels(train, "TRAIN")
    test = parse_ts(texts[1], sources[1], class_names=train.class_names)
    check_ts_pair(train, test)
    return train, test


#: Most values of ``x`` (series x time x channels) :func:`log_signature_path` works on at
#: once; longer batches are cut into chunks of series (the same result, bounded memory).
CHUNK_VALUES = 1 << 20


def _check_depth_step(depth: int, step: int) -> None:
    if depth not in (1, 2):
        raise ValueError(f"depth: expected 1 or 2, got {depth}")
    if step < 1:
        raise ValueError(f"step: expected a positive number of increments per window, got {step}")


def log_signature_windows(x: Tensor, depth: int, step: int) -> Tensor:
    """Depth-1 or depth-2 log-signatures of consecutive windows of ``step`` increments.

    The last window may hold fewer increments. Computation happens in ``x``'s dtype
    and device (windows are short, so float32 loses nothing to cumulative sums).

    Args:
        x: ``(batch, time, channels)`` complete observations (no NaN).
        depth: 1 (increments) or 2 (increments and Levy areas).
        step: increments per window.

    Returns:
        Tensor: ``(batch, ceil((time - 1) / step), channels + depth_2_terms)`` where
        ``depth_2_terms = channels (channels - 1) / 2`` for depth 2 (pairs ``i < j`` in
        lexicographic order) and 0 for depth 1.
    """
    _check_depth_step(depth, step)
    if x.dim() != 3 or x.shape[1] < 2:
        raise ValueError(f"x: expected shape (batch, time >= 2, channels), got {tuple(x.shape)}")
    if torch.isnan(x).any():
        raise ValueError("x: log-signature windows need complete observations, got NaN values")
    increments = x[:, 1:] - x[:, :-1]
    return _windows_from_increments(increments, depth, step)


def _windows_from_increments(increments: Tensor, depth: int, step: int) -> Tensor:
    batch, count, channels = increments.shape
    windows = math.ceil(count / step)
    padded = torch.nn.functional.pad(increments, (0, 0, 0, windows * step - count))
    blocks = padded.reshape(batch, windows, step, channels)
    level_one = blocks.sum(dim=2)
    if depth == 1:
        return level_one
    before = blocks.cumsum(dim=2) - blocks
    products = torch.einsum("bwki,bwkj->bwij", before, blocks)
    area = 0.5 * (products - products.transpose(-1, -2))
    upper = torch.triu_indices(channels, channels, offset=1, device=increments.device)
    return torch.cat([level_one, area[..., upper[0], upper[1]]], dim=-1)


def log_signature_path(
    x: Tensor, lengths: Tensor, depth: int, step: int, grid: Optional[Tensor] = None,
    start_channels: Sequence[int] = (),
) -> tuple[Tensor, Tensor]:
    """The path whose linear pieces are the window log-signatures of each series.

    ```
    z_0 = 0,   z_m = z_0 + sum_{w < m} logsig(window w)          m = 1 .. windows
    new_length_b = ceil((lengths_b - 1) / step) + 1
    ```

    except that the ``start_channels`` of ``z_0`` (indices of ``x``'s channels, whose
    increments are the first terms of each window's log-signature) hold each series'
    first value instead of 0: their path then passes through the series' values at the
    window ends, level included (from 0, series that differ by a constant offset give the
    same path).

    Series are processed in chunks of at most :data:`CHUNK_VALUES` values of ``x`` (each
    series on its own, so the result does not depend on the chunks), so the memory it
    takes beyond ``x`` and the result is bounded whatever the number of series.

    Increments past a series' end count as zero, so variable lengths are respected
    (the series' last window may be shorter). When channel 0 of ``x`` is time, channel
    0 of the result is the time elapsed since the series' start. Missing values are first
    filled along each series' linear interpolation
    (:func:`fwplab.paths.interpolation_coeffs`, ``"linear"``), whose filled points lie on
    the path through the observations, so the windows are the log-signatures of that path.

    Args:
        x: ``(batch, time, channels)``, NaN where missing.
        lengths: ``(batch,)`` number of time points of each series.
        depth: 1 or 2.
        step: increments per window.
        grid: ``(time,)`` observation times for the filling; None means ``0, 1, 2, ...``.
        start_channels: channels whose path starts at the series' first (filled) value.

    Returns:
        (path, new_lengths): ``(batch, windows + 1, logsig_channels)`` with NaN after each
        series' end, and ``(batch,)`` int64.
    """
    _check_depth_step(depth, step)
    start = sorted({int(channel) for channel in start_channels})
    if start and not 0 <= start[0] <= start[-1] < x.shape[-1]:
        raise ValueError(f"start_channels: expected indices of the {x.shape[-1]} channels, got "
                         f"{list(start_channels)}")
    if x.dim() != 3 or lengths.shape != (x.shape[0],):
        raise ValueError(f"x, lengths: expected shapes (batch, time, channels) and (batch,), got "
                         f"{tuple(x.shape)} and {tuple(lengths.shape)}")
    if x.shape[1] < 2:
        raise ValueError(f"x: expected at least 2 time points for log-signature windows, got "
                         f"shape {tuple(x.shape)}")
    batch, time, channels = x.shape
    windows = math.ceil((time - 1) / step)
    terms = channels + (channels * (channels - 1) // 2 if depth == 2 else 0)
    path = x.new_empty(batch, windows + 1, terms)
    lengths = lengths.to(torch.int64)
    # Series are independent: a chunk's temporaries (several copies of its part of x and
    # the window products) stay bounded whatever the number of series.
    per_chunk = max(1, CHUNK_VALUES // (time * max(channels, 1)))
    for first in range(0, batch, per_chunk):
        rows = slice(first, first + per_chunk)
        path[rows] = _chunk_path(x[rows], lengths[rows], depth, step, grid, start)
    new_lengths = torch.div(lengths - 1 + step - 1, step, rounding_mode="floor") + 1
    after = torch.arange(path.shape[1], device=x.device) >= new_lengths.to(x.device).unsqueeze(-1)
    return path.masked_fill_(after.unsqueeze(-1), math.nan), new_lengths


def _chunk_path(x: Tensor, lengths: Tensor, depth: int, step: int,
                grid: Optional[Tensor], start: Sequence[int]) -> Tensor:
    """:func:`log_signature_path` of some series, before the NaN after their ends."""
    inside = torch.arange(x.shape[1], device=x.device) < lengths.to(x.device).unsqueeze(-1)
    if not (~torch.isnan(x) & inside.unsqueeze(-1)).any(dim=1).all():
        raise ValueError("x: expected at least one observation of every channel in every "
                         "series for log-signature windows, got a channel with none")
    x = interpolation_coeffs(x, grid, lengths, "linear")
    increments = x[:, 1:] - x[:, :-1]
    first = x[:, :1, start]
    del x
    increments.masked_fill_(~inside[:, 1:].unsqueeze(-1), 0.0)
    windows = _windows_from_increments(increments, depth, step)
    initial = torch.zeros_like(windows[:, :1])
    initial[..., start] = first
    return torch.cat([initial, initial + windows.cumsum(dim=1)], dim=1)


def log_signature_channel_names(channel_names: tuple[str, ...], depth: int) -> tuple[str, ...]:
    """Names of the log-signature channels: the channels, then ``"[a,b]"`` Levy areas."""
    areas = [f"[{a},{b}]" for i, a in enumerate(channel_names) for b in channel_names[i + 1:]]
    return tuple(channel_names) + (tuple(areas) if depth == 2 else ())


def log_signature_dataset(dataset: Dataset, depth: int, step: int,
                          start_channels: Sequence[int] = ()) -> Dataset:
    """Replace every split's ``x`` by its log-signature path (see :func:`log_signature_path`;
    ``start_channels`` start at each series' first value instead of 0).

    Each split's ``times`` becomes the window ends ``0, step, 2 step, ...`` of the
    original grid (the last one clipped to the longest series' end).
    """
    def convert(split: Split) -> Split:
        path, lengths = log_signature_path(split.x, split.lengths, depth, step, split.times,
                                           start_channels)
        ends = (torch.arange(path.shape[1]) * step).clamp(max=split.x.shape[1] - 1)
        grid = split.times[ends.to(split.times.device)]
        return Split(path, lengths, split.y, grid, split.static)

    return Dataset(dataset.name, convert(dataset.train),
                   None if dataset.val is None else convert(dataset.val), convert(dataset.test),
                   dataset.class_names, log_signature_channel_names(dataset.channel_names, depth),
                   dataset.static_names)

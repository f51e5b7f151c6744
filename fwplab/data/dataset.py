"""The dataset container the training code consumes, and the shared preprocessing.

Every loader ends in :func:`assemble_dataset`, which applies the same steps to the
raw data channels of each split, in this order:

1. drop a fraction of observations (``missing_rate``; seeded per split),
2. standardise every data channel with the mean and standard deviation of the
   observed training values (static features likewise), computed in float64; a
   channel that training never observes but another split does is refused,
3. add the observational-intensity channels and the time channel in front.

Channel order of ``x`` is ``[time] + [intensity of each data channel] + [data]``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch
from torch import Tensor

from .irregular import augment_channels, drop_observations

__all__ = ["Split", "Dataset", "RawSplit", "assemble_dataset", "stratified_split", "split_generator"]


@dataclass
class Split:
    """One split of a dataset.

    Attributes:
        x: ``(batch, time, channels)`` observations, NaN where missing and after each
            series' end; the time channel (when present) is channel 0.
        lengths: ``(batch,)`` int64 number of time points of each series.
        y: ``(batch,)`` int64 class indices.
        times: ``(time,)`` the grid the series are sampled on: the index ``0..time-1``
            unless the data set has a common real time grid (spirals, log-signature
            window ends).
        static: ``(batch, static_channels)`` time-independent features, or None.
    """

    x: Tensor
    lengths: Tensor
    y: Tensor
    times: Tensor
    static: Optional[Tensor] = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str) -> "Split":
        """The same split with every tensor on ``device``."""
        return Split(self.x.to(device), self.lengths.to(device), self.y.to(device),
                     self.times.to(device),
                     None if self.static is None else self.static.to(device))


@dataclass
class Dataset:
    """A classification dataset with train, optional validation, and test splits.

    Attributes:
        name: the dataset's name (e.g. ``"japanese-vowels"``).
        train, val, test: the splits (``val`` is None when no validation split exists).
        class_names: the label of each class index.
        channel_names: the name of each channel of ``x`` (``"time"`` first when present).
        static_names: the name of each static feature (empty when there are none).
    """

    name: str
    train: Split
    val: Optional[Split]
    test: Split
    class_names: tuple[str, ...]
    channel_names: tuple[str, ...]
    static_names: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        """Number of classes (the model's output channels)."""
        return len(self.class_names)

    @property
    def input_channels(self) -> int:
        """Number of channels of ``x`` (time and intensity channels included)."""
        return len(self.channel_names)

    @property
    def has_time_channel(self) -> bool:
        """Whether channel 0 of ``x`` is the observation time."""
        return bool(self.channel_names) and self.channel_names[0] == "time"


@dataclass
class RawSplit:
    """Data channels of one split before preprocessing (shapes as in :class:`Split`).

    ``times`` is the observation time of every point: ``(time,)`` shared by all series
    or ``(batch, time)`` per series (timestamped files); None means the index.
    """

    x: Tensor
    lengths: Tensor
    y: Tensor
    times: Optional[Tensor] = None
    static: Optional[Tensor] = None

    def select(self, index: Tensor) -> "RawSplit":
        """The series at ``index`` (``(n,)`` int64); a shared ``times`` is kept as it is."""
        per_series = self.times is not None and self.times.dim() == 2
        return replace(self, x=self.x[index], lengths=self.lengths[index], y=self.y[index],
                       times=self.times[index] if per_series else self.times,
                       static=None if self.static is None else self.static[index])


def stratified_split(
    y: Tensor, fractions: Sequence[float], generator: torch.Generator
) -> list[Tensor]:
    """Split indices into parts of the given fractions, class by class.

    Each class's indices are shuffled with ``generator``; part ``k >= 1`` of class ``c``
    gets ``round(fractions[k] * n_c)`` of them and part 0 (training) the remainder.

    Args:
        y: ``(batch,)`` int64 class indices.
        fractions: fractions summing to 1, one per part.
        generator: CPU generator that fixes the shuffle.

    Returns:
        list[Tensor]: sorted int64 indices of each part.
    """
    if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"fractions: expected non-negative fractions summing to 1, got "
                         f"{list(fractions)}")
    parts: list[list[Tensor]] = [[] for _ in fractions]
    for label in torch.unique(y.cpu()):
        members = (y.cpu() == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        counts = [round(fraction * len(members)) for fraction in fractions[1:]]
        counts.insert(0, len(members) - sum(counts))
        for k, piece in enumerate(torch.split(members, counts)):
            parts[k].append(piece)
    return [torch.cat(part).sort().values for part in parts]


def split_generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and a purpose string (same inputs, same draws)."""
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{purpose}".encode()))


def _mean_std(values: Tensor, names: Sequence[str], what: str) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation over the observed (non-NaN) entries, in float64.

    Computed in float64 so that large values (up to float32's range) do not overflow
    the squares. Channels with no observation get mean 0 and a zero spread becomes 1
    (the channel is then only shifted); a spread that is not finite even in float64 is
    an error naming the channel.
    """
    flat = values.reshape(-1, values.shape[-1]).to(torch.float64)
    mean = torch.nanmean(flat, dim=0)
    std = torch.nanmean((flat - mean) ** 2, dim=0).sqrt()
    overflow = torch.isinf(std).nonzero().flatten()
    if len(overflow):
        index = int(overflow[0])
        channel = names[index] if index < len(names) else f"#{index}"
        raise ValueError(f"{what}: channel {channel!r} has values too large to "
                         "standardise (its variance overflows float64); rescale the data")
    mean = torch.nan_to_num(mean, nan=0.0)
    std = torch.where(torch.isfinite(std) & (std > 0), std, torch.ones_like(std))
    return mean, std


def _standardise(values: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(values - mean) / std`` computed in float64, returned in ``values``' dtype."""
    return ((values.to(torch.float64) - mean) / std).to(values.dtype)


def _check_observed_in_training(splits: dict[str, RawSplit], names: Sequence[str],
                                dataset: str) -> None:
    """Refuse a channel that training never observes but another split does.

    Its standardisation statistics would be made up (mean 0, spread 1), so the model
    would meet raw values at test time that it never saw while training.
    """
    seen = ~torch.isnan(splits["train"].x).reshape(-1, len(names)).all(dim=0)
    for key, raw in splits.items():
        if key == "train":
            continue
        elsewhere = ~torch.isnan(raw.x).reshape(-1, len(names)).all(dim=0)
        unseen = (elsewhere & ~seen).nonzero().flatten()
        if len(unseen):
            raise ValueError(f"{dataset}: channel {names[int(unseen[0])]!r} is never observed "
                             f"in the training split but is in the {key} split, so it cannot be "
                             "standardised; drop the channel or lower missing_rate")


def assemble_dataset(
    name: str,
    splits: dict[str, RawSplit],
    class_names: Sequence[str],
    channel_names: Sequence[str],
    *,
    missing_rate: float,
    seed: int,
    time_channel: bool,
    intensity: bool,
    normalise: bool,
    static_names: Sequence[str] = (),
) -> Dataset:
    """Preprocess raw splits (see the module docstring) into a :class:`Dataset`.

    Args:
        name: the dataset's name.
        splits: ``{"train": ..., "test": ...}`` and optionally ``"val"``.
        class_names: label of each class index.
        channel_names: name of each raw data channel.
        missing_rate: fraction of observed points to drop from each series.
        seed: seeds the dropping (a separate stream per split).
        time_channel: add the observation time as channel 0.
        intensity: add one observational-intensity channel per data channel.
        normalise: standardise data channels (and static features) with training statistics.
        static_names: name of each static feature.

    Raises:
        ValueError: a channel observed outside training only, or too large to standardise.

    Returns:
        Dataset: the processed splits.
    """
    dropped = {
        key: replace(raw, x=drop_observations(raw.x, raw.lengths, missing_rate,
                                              split_generator(seed, f"drop:{key}")))
        for key, raw in splits.items()
    }
    if normalise:
        _check_observed_in_training(dropped, channel_names, name)
        mean, std = _mean_std(dropped["train"].x, channel_names, name)
        static_stats = None if dropped["train"].static is None else _mean_std(
            dropped["train"].static, static_names, f"{name} (static features)")
        for key, raw in dropped.items():
            static = raw.static
            if static_stats is not None:
                static = _standardise(static, *static_stats)
            dropped[key] = replace(raw, x=_standardise(raw.x, mean, std), static=static)

    processed = {}
    for key, raw in dropped.items():
        x = augment_channels(raw.x, raw.lengths, raw.times, time_channel, intensity)
        shared = raw.times is not None and raw.times.dim() == 1
        grid = raw.times if shared else torch.arange(x.shape[1])
        processed[key] = Split(x, raw.lengths, raw.y, grid.to(x.dtype), raw.static)
    names = ((["time"] if time_channel else [])
             + ([f"intensity:{c}" for c in channel_names] if intensity else [])
             + list(channel_names))
    return Dataset(name, processed["train"], processed.get("val"), processed["test"],
                   tuple(class_names), tuple(names), tuple(static_names))


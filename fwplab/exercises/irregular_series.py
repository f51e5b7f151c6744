"""Exercises of notebook 4, "Classifying irregularly sampled time series"."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..data import drop_observations
from ..models import build_model, count_parameters
from ..paths import interpolation_coeffs
from . import exercise

#: JapaneseVowels as the models see it: time and 12 cepstrum channels, 9 speakers.
CHANNELS, CLASSES = 13, 9
#: The defaults of ``fwplab train`` for both models (the japanese-vowels preset).
HIDDEN, HEADS = 64, 16
#: Missing rates the drop exercise is checked at.
RATES = (0.3, 0.5, 0.7)


def _test_batch() -> tuple[Tensor, Tensor]:
    """Five series of 3 data channels, lengths 4..20, padded with NaN after their end."""
    generator = torch.Generator().manual_seed(4)
    lengths = torch.tensor([20, 4, 13, 9, 17])
    x = torch.randn(5, 20, 3, generator=generator)
    x[torch.arange(20) >= lengths[:, None]] = math.nan
    return x, lengths


def _drop_and_add_time(x: Tensor, lengths: Tensor, rate: float) -> Tensor:
    generator = torch.Generator().manual_seed(0)
    dropped = drop_observations(x, lengths, rate, generator)
    time = torch.arange(x.shape[1], dtype=x.dtype)[None, :, None].expand(x.shape[0], -1, 1)
    return torch.cat([time, dropped], dim=-1)


def _drop_channelwise(x: Tensor, lengths: Tensor, rate: float) -> Tensor:
    """A typical mistake: every channel loses its own points."""
    dropped = torch.cat([drop_observations(x[..., c:c + 1], lengths, rate) for c in
                         range(x.shape[-1])], dim=-1)
    time = torch.arange(x.shape[1], dtype=x.dtype)[None, :, None].expand(x.shape[0], -1, 1)
    return torch.cat([time, dropped], dim=-1)


def _drop_time_too(x: Tensor, lengths: Tensor, rate: float) -> Tensor:
    """A typical mistake: the time channel is dropped along with the data."""
    time = torch.arange(x.shape[1], dtype=x.dtype)[None, :, None].expand(x.shape[0], -1, 1)
    return drop_observations(torch.cat([time, x], dim=-1), lengths, rate)


@exercise(
    "04.drop-observations",
    "Write prepare(x, lengths, rate): x holds data channels (batch, time, channels), NaN "
    "after each series' end. Drop the fraction `rate` of each series' observed time points "
    "(all channels at once, at least two kept), then put a complete time channel "
    "0, 1, ..., time - 1 first. Return (batch, time, channels + 1).",
    solution=lambda: _drop_and_add_time,
    wrong_answers=lambda: [_drop_channelwise, _drop_time_too,
                           lambda x, lengths, rate: drop_observations(x, lengths, rate)],
)
def _judge_drop(answer: Callable[[Tensor, Tensor, float], Tensor]) -> Optional[str]:
    x, lengths = _test_batch()
    batch, length, channels = x.shape
    for rate in RATES:
        prepared = answer(x.clone(), lengths.clone(), rate)
        if tuple(prepared.shape) != (batch, length, channels + 1):
            return (f"expected shape {(batch, length, channels + 1)} (time channel first), "
                    f"got {tuple(prepared.shape)}")
        if not torch.equal(prepared[..., 0], torch.arange(length, dtype=x.dtype).expand(batch, -1)):
            return "channel 0 must be the complete time channel 0, 1, ..., time - 1 (no NaN)"
        data = prepared[..., 1:]
        missing = data.isnan()
        if not torch.equal(missing.all(-1), missing.any(-1)):
            return "a time point is either observed in every channel or dropped in every channel"
        kept = ~missing
        if not torch.equal(data[kept], x[kept]):
            return "the values you keep must stay as they were"
        for b, n in enumerate(lengths.tolist()):
            dropped = int(missing[b, :n, 0].sum())
            if dropped != min(math.floor(rate * n), n - 2):
                return (f"at rate {rate} a series of {n} points should lose "
                        f"floor({rate} * {n}) of them (keeping at least two), yours lost "
                        f"{dropped}")
        coeffs = interpolation_coeffs(prepared, lengths=lengths)
        if not bool(coeffs.isfinite().all()):
            return "the path through your series has non-finite coefficients"
    return None


def _parameters() -> dict[str, int]:
    heads = {"delta_cde": {"num_heads": HEADS}, "ncde": {}}  # the Neural CDE has no heads
    return {name: count_parameters(build_model(name, CHANNELS, CLASSES, hidden_channels=HIDDEN,
                                               **options))
            for name, options in heads.items()}


def _fewer() -> tuple[str, int]:
    counts = _parameters()
    name = min(counts, key=counts.get)
    return name, counts[name]


@exercise(
    "04.fewer-parameters",
    f"At the defaults of `fwplab train` (hidden size {HIDDEN}, {HEADS} heads for the FWP) on "
    f"JapaneseVowels ({CHANNELS} input channels, {CLASSES} classes), which of delta_cde and "
    "ncde has fewer trainable parameters, and how many? Give a pair (name, count).",
    solution=_fewer,
    wrong_answers=lambda: [("ncde", _parameters()["ncde"]),
                           ("delta_cde", _parameters()["ncde"]),
                           ("delta_cde", count_parameters(build_model(
                               "delta_cde", CHANNELS, CLASSES, hidden_channels=HIDDEN,
                               num_heads=4)))],
)
def _judge_fewer(answer: Any) -> Optional[str]:
    name, count = answer
    counts = _parameters()
    right_name, right_count = _fewer()
    if name not in counts:
        return f"name one of {sorted(counts)}"
    if name != right_name:
        return ("compare both counts: build each model with fwplab.build_model and count with "
                "fwplab.count_parameters")
    if int(count) != right_count:
        return (f"right model, but {count} is not its count: use hidden_channels={HIDDEN} and "
                f"num_heads={HEADS}, {CHANNELS} inputs and {CLASSES} outputs")
    return None

"""Exercises of notebook 4, "Classifying irregularly sampled time series"."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..data import drop_observations
from ..models import build_model, count_parameters
from ..paths import interpolation_coeffs
from . import (
    as_count,
    as_tensor,
    exercise,
    fresh_float,
    fresh_generator,
    fresh_int,
    package_pass_through,
)

#: JapaneseVowels as the models see it: time and 12 cepstrum channels, 9 speakers.
CHANNELS, CLASSES = 13, 9
#: The defaults of ``fwplab train`` for both models (the japanese-vowels preset).
HIDDEN, HEADS = 64, 16
#: Missing rates the drop exercise is always checked at (a random one is added).
RATES = (0.3, 0.5, 0.7)
#: Series and length of the large batch on which the randomness of the drops is checked.
RANDOMNESS_BATCH, RANDOMNESS_LENGTH = 400, 40
#: Relative and absolute tolerance of the normalised times (float64 arithmetic).
TIMES_TOLERANCE = 1e-9


def _test_batch(generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A random batch of series, random lengths (4 or more), padded with NaN after their end."""
    batch, length = fresh_int(generator, 3, 8), fresh_int(generator, 8, 30)
    lengths = torch.randint(4, length + 1, (batch,), generator=generator)
    lengths[0] = length
    x = torch.randn(batch, length, fresh_int(generator, 2, 4), generator=generator)
    x[torch.arange(length) >= lengths[:, None]] = math.nan
    return x, lengths


def _time_channel(x: Tensor) -> Tensor:
    """The complete time channel ``0, 1, ..., time - 1`` of ``x``, shape ``(batch, time, 1)``."""
    return torch.arange(x.shape[1], dtype=x.dtype)[None, :, None].expand(x.shape[0], -1, 1)


def _drop_and_add_time(x: Tensor, lengths: Tensor, rate: float) -> Tensor:
    dropped = drop_observations(x, lengths, rate)  # torch's global generator: a new draw
    return torch.cat([_time_channel(x), dropped], dim=-1)


def _drop_with_fixed_seed(x: Tensor, lengths: Tensor, rate: float) -> Tensor:
    """A typical mistake: the same points are dropped at every call."""
    dropped = drop_observations(x, lengths, rate, torch.Generator().manual_seed(0))
    return torch.cat([_time_channel(x), dropped], dim=-1)


def _drop_chosen(x: Tensor, lengths: Tensor, rate: float,
                 choose: Callable[[int, int], list[int]]) -> Tensor:
    """Drop, in each series of ``n`` points, the ``min(floor(rate n), n - 2)`` points
    ``choose(n, count)`` picks (the wrong answers' deterministic choices), time channel first."""
    dropped = x.clone()
    for b, n in enumerate(lengths.tolist()):
        count = min(math.floor(rate * n), n - 2)
        if count > 0:
            dropped[b, choose(n, count)] = math.nan
    return torch.cat([_time_channel(x), dropped], dim=-1)


def _drop_the_end(x: Tensor, lengths: Tensor, rate: float) -> Tensor:
    """A typical mistake: truncation, the last points of each series are dropped."""
    return _drop_chosen(x, lengths, rate, lambda n, count: list(range(n - count, n)))


def _evenly_spread(n: int, count: int) -> list[int]:
    chosen = torch.linspace(1, n - 2, count).round().long().unique().tolist()
    extra = [i for i in range(1, n) if i not in set(chosen)]
    return (chosen + extra)[:count]


def _drop_every_other(x: Tensor, lengths: Tensor, rate: float) -> Tensor:
    """A typical mistake: a fixed pattern (evenly spread points) instead of a random one."""
    return _drop_chosen(x, lengths, rate, _evenly_spread)


def _call_seeded(answer: Callable, seed: int, *args: Any) -> Tensor:
    """``answer(*args)`` with torch's global generator seeded, leaving the caller's state alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return as_tensor(answer(*args))


def _drop_channelwise(x: Tensor, lengths: Tensor, rate: float) -> Tensor:
    """A typical mistake: every channel loses its own points."""
    dropped = torch.cat([drop_observations(x[..., c:c + 1], lengths, rate) for c in
                         range(x.shape[-1])], dim=-1)
    return torch.cat([_time_channel(x), dropped], dim=-1)


def _drop_time_too(x: Tensor, lengths: Tensor, rate: float) -> Tensor:
    """A typical mistake: the time channel is dropped along with the data."""
    return drop_observations(torch.cat([_time_channel(x), x], dim=-1), lengths, rate)


@exercise(
    "04.drop-observations",
    "Write prepare(x, lengths, rate): x holds data channels (batch, time, channels), NaN "
    "after each series' end. Drop the fraction `rate` of each series' observed time points, "
    "chosen at random (all channels at once, at least two kept), then put a complete time channel "
    "0, 1, ..., time - 1 first. Return (batch, time, channels + 1).",
    solution=lambda: _drop_and_add_time,
    wrong_answers=lambda: [_drop_channelwise, _drop_time_too,
                           lambda x, lengths, rate: drop_observations(x, lengths, rate),
                           _drop_with_fixed_seed, _drop_the_end, _drop_every_other],
)
def _judge_drop(answer: Callable[[Tensor, Tensor, float], Tensor]) -> Optional[str]:
    if not callable(answer):
        return f"expected a function prepare(x, lengths, rate), got {type(answer).__name__}"
    generator = fresh_generator()
    x, lengths = _test_batch(generator)
    batch, length, channels = x.shape
    for rate in RATES + (fresh_float(generator, 0.1, 0.9),):
        seed = fresh_int(generator, 0, 2**31)
        prepared = _call_seeded(answer, seed, x.clone(), lengths.clone(), rate).to(x.dtype)
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
        coeffs = interpolation_coeffs(prepared.to(x.dtype), lengths=lengths)
        if not bool(coeffs.isfinite().all()):
            return "the path through your series has non-finite coefficients"
    return _judge_randomness(answer, generator)


def _judge_randomness(answer: Callable, generator: torch.Generator) -> Optional[str]:
    """Two seeds give different drops, and every position is about equally likely to go."""
    x = torch.randn(RANDOMNESS_BATCH, RANDOMNESS_LENGTH, 1, generator=generator)
    lengths = torch.full((RANDOMNESS_BATCH,), RANDOMNESS_LENGTH)
    rate = 0.5
    first, second = fresh_int(generator, 0, 2**30), fresh_int(generator, 2**30 + 1, 2**31)
    drops = [_call_seeded(answer, seed, x.clone(), lengths.clone(), rate)[..., 1].isnan()
             for seed in (first, second)]
    if torch.equal(drops[0], drops[1]):
        return ("two calls under different random seeds dropped the same points: choose "
                "the dropped points at random (from torch's random generator), not by a rule "
                "or a fixed seed")
    half = RANDOMNESS_LENGTH // 2
    for name, part in (("first", drops[0][:, :half]), ("second", drops[0][:, half:])):
        frequency = float(part.float().mean())
        if abs(frequency - rate) > 0.1:
            return (f"on {RANDOMNESS_BATCH} series of {RANDOMNESS_LENGTH} points at rate {rate}, "
                    f"the {name} half of the time points was dropped with frequency "
                    f"{frequency:.2f}: every point should be equally likely to be dropped")
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
    name, raw_count = answer
    count = as_count(raw_count)
    if count is None:
        return f"the count is a whole number of parameters, got {raw_count!r}"
    counts = _parameters()
    right_name, right_count = _fewer()
    if name not in counts:
        return f"name one of {sorted(counts)}"
    if name != right_name:
        return ("compare both counts: build each model with fwplab.build_model and count with "
                "fwplab.count_parameters")
    if count != right_count:
        return (f"right model, but {count} is not its count: use hidden_channels={HIDDEN} and "
                f"num_heads={HEADS}, {CHANNELS} inputs and {CLASSES} outputs")
    return None


def _normalised_times(times: Tensor) -> Tensor:
    """``(times - first time of each series) / unit``, the unit the median positive gap
    between consecutive observation times over all series; NaN stays NaN."""
    gaps = times[:, 1:] - times[:, :-1]
    unit = gaps[torch.isfinite(gaps) & (gaps > 0)].median()
    return (times - times[:, :1]) / unit


def _unit_times(generator: torch.Generator) -> Tensor:
    """Random ``(batch, time)`` float64 observation times in a random unit and with random
    offsets, NaN after each series' end; some times repeat (zero gaps), and the number of
    positive gaps is odd, so that their median is one of them."""
    batch, length = fresh_int(generator, 2, 6), fresh_int(generator, 6, 20)
    lengths = torch.randint(3, length + 1, (batch,), generator=generator)
    lengths[0] = length
    scale = 10.0 ** fresh_float(generator, -3.0, 6.0)
    gaps = scale * torch.empty(batch, length - 1, dtype=torch.float64).exponential_(
        generator=generator)
    inside = torch.arange(1, length) < lengths[:, None]  # gaps within each series
    repeated = [int(i) for i in torch.nonzero(inside.flatten()).flatten()[
        torch.randperm(int(inside.sum()), generator=generator)[:2]]]
    gaps.view(-1)[repeated[0]] = 0.0  # one repeated time at least
    if (int(inside.sum()) - 1) % 2 == 0:  # an even count of positive gaps: one more zero
        gaps.view(-1)[repeated[1]] = 0.0
    offsets = scale * 1e4 * torch.rand(batch, 1, dtype=torch.float64, generator=generator)
    times = torch.cat([offsets, offsets + gaps.cumsum(-1)], dim=-1)
    times[torch.arange(length) >= lengths[:, None]] = math.nan
    return times


def _min_gap_unit(times: Tensor) -> Tensor:
    """A typical mistake: the smallest positive gap as the unit (the solvers' default step)."""
    gaps = times[:, 1:] - times[:, :-1]
    return (times - times[:, :1]) / gaps[torch.isfinite(gaps) & (gaps > 0)].min()


def _zero_gaps_counted(times: Tensor) -> Tensor:
    """A typical mistake: repeated times (zero gaps) take part in the median."""
    gaps = times[:, 1:] - times[:, :-1]
    return (times - times[:, :1]) / gaps[torch.isfinite(gaps)].median()


def _per_series_unit(times: Tensor) -> Tensor:
    """A typical mistake: each series gets its own unit instead of the data set's one."""
    return torch.stack([_normalised_times(row[None])[0] for row in times])


def _offset_kept(times: Tensor) -> Tensor:
    """A typical mistake: the first time of each series is not subtracted."""
    gaps = times[:, 1:] - times[:, :-1]
    return times / gaps[torch.isfinite(gaps) & (gaps > 0)].median()


def _package_unit(times: Tensor) -> Tensor:
    """The package's own unit handed back (refused: the exercise is to compute it)."""
    from ..adaptive import time_unit

    return (times - times[:, :1]) / time_unit(times)


@exercise(
    "04.time-unit",
    "Write normalise(times): times holds (batch, time) float64 observation times, NaN after "
    "each series' end. Subtract each series' first time, then divide by the median of all "
    "positive gaps between consecutive observation times (over every series). Return the "
    "(batch, time) result, NaN where times is NaN.",
    solution=lambda: _normalised_times,
    wrong_answers=lambda: [_min_gap_unit, _zero_gaps_counted, _per_series_unit, _offset_kept,
                           lambda times: times - times[:, :1], _package_unit],
)
def _judge_time_unit(answer: Callable[[Tensor], Tensor]) -> Optional[str]:
    if not callable(answer):
        return f"expected a function normalise(times), got {type(answer).__name__}"
    refused = package_pass_through(answer, ("time_unit", "_rescaled"))
    if refused:
        return refused
    generator = fresh_generator()
    for _ in range(3):
        times = _unit_times(generator)
        expected = _normalised_times(times)
        got = as_tensor(answer(times.clone())).to(torch.float64)
        if tuple(got.shape) != tuple(times.shape):
            return f"expected shape {tuple(times.shape)} (batch, time), got {tuple(got.shape)}"
        if not torch.equal(got.isnan(), times.isnan()):
            return "keep NaN exactly where times is NaN (after each series' end), nowhere else"
        if not bool((got[:, 0] == 0).all()):
            return "each series should start at time 0: subtract its first time"
        if not torch.allclose(got, expected, rtol=TIMES_TOLERANCE, atol=TIMES_TOLERANCE,
                              equal_nan=True):
            return ("the times start at 0 but the unit is off: one unit for the whole data set, "
                    "the median of the positive gaps between consecutive times (repeated times "
                    "are not gaps; ignore NaN)")
    return None

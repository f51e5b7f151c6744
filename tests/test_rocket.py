"""The MiniRocket baseline: fwplab Dataset splits in, a deterministic accuracy out; a
one-line error without its optional dependency."""

import math
import sys

import pytest
import torch

from fwplab.data import Dataset, Split
from fwplab.rocket import MissingExtraError, rocket_accuracy


def bumps(n=40, steps=60, seed=0, ragged=False):
    """Two classes: a bump early or late in noise; time channel first. With ``ragged``,
    lengths vary (40-60 steps) and a tenth of the values are missing."""
    generator = torch.Generator().manual_seed(seed)

    def split(count):
        y = torch.arange(count) % 2
        t = torch.arange(steps, dtype=torch.float32)
        centre = torch.where(y == 0, 12.0, 30.0).unsqueeze(-1)
        value = torch.exp(-((t - centre) / 3) ** 2) + 0.1 * torch.randn(count, steps,
                                                                        generator=generator)
        lengths = (torch.randint(40, steps + 1, (count,), generator=generator) if ragged
                   else torch.full((count,), steps))
        if ragged:
            value[torch.rand(count, steps, generator=generator) < 0.1] = math.nan
            value[:, 0] = 0.0
            value[torch.arange(steps) >= lengths.unsqueeze(-1)] = math.nan
        x = torch.stack([t.expand_as(value), value], dim=-1)
        return Split(x, lengths, y, t)
    return Dataset("bumps", split(n), None, split(n), ("early", "late"), ("time", "value"))


def test_without_aeon_the_error_is_one_line_with_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "aeon.classification.convolution_based", None)
    with pytest.raises(MissingExtraError, match=r"needs aeon.*pip install 'fwplab\[baselines\]'"
                       ) as caught:
        rocket_accuracy(bumps())
    assert "\n" not in str(caught.value)


def test_bad_arguments_are_refused_before_any_work():
    with pytest.raises(ValueError, match="kernels: expected an integer >= 84"):
        rocket_accuracy(bumps(), kernels=10)
    for seed in (-1, 2**32):  # numpy's random state takes [0, 2**32)
        with pytest.raises(ValueError, match=r"seed: expected an integer in \[0, 2\*\*32 - 1\]"):
            rocket_accuracy(bumps(), seed=seed)
    only_time = bumps()
    only_time = Dataset("t", Split(only_time.train.x[..., :1], only_time.train.lengths,
                                   only_time.train.y, only_time.train.times), None,
                        Split(only_time.test.x[..., :1], only_time.test.lengths,
                              only_time.test.y, only_time.test.times), ("a", "b"), ("time",))
    with pytest.raises(ValueError, match="expected at least one data channel, got only time"):
        rocket_accuracy(only_time)


def test_same_seed_same_predictions_and_ragged_data_is_handled():
    pytest.importorskip("aeon")
    first = rocket_accuracy(bumps(), seed=3, kernels=500)
    again = rocket_accuracy(bumps(), seed=3, kernels=500)
    assert torch.equal(first.test_predictions, again.test_predictions)
    assert first.test_accuracy == again.test_accuracy >= 0.9
    ragged = rocket_accuracy(bumps(ragged=True), seed=0, kernels=500)
    assert ragged.test_predictions.shape == (40,)
    assert ragged.test_accuracy >= 0.9

"""Irregular sampling, channel assembly, splits and the spirals."""

import math

import pytest
import torch

from fwplab.data import (
    augment_channels,
    drop_observations,
    load_dataset,
    make_spirals,
    observational_intensity,
    time_channel,
)
from fwplab.data.dataset import stratified_split

ATOL_EXACT = 0.0
ATOL_STANDARDISED = 1e-5


def _ragged_batch():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(4, 20, 3, generator=generator)
    lengths = torch.tensor([20, 11, 5, 2])
    for b, length in enumerate(lengths.tolist()):
        x[b, length:] = math.nan
    x[1, 3, 0] = math.nan  # one value already missing
    return x, lengths


def test_dropping_is_reproducible_and_respects_lengths():
    x, lengths = _ragged_batch()
    first = drop_observations(x, lengths, 0.5, torch.Generator().manual_seed(7))
    second = drop_observations(x, lengths, 0.5, torch.Generator().manual_seed(7))
    other = drop_observations(x, lengths, 0.5, torch.Generator().manual_seed(8))
    torch.testing.assert_close(first, second, equal_nan=True, atol=ATOL_EXACT, rtol=0)
    assert not torch.equal(torch.isnan(first), torch.isnan(other))
    dropped_points = torch.isnan(first).all(-1) & ~torch.isnan(x).all(-1)
    # Whole time points are dropped, only inside each series: floor(rate * n), n observed points.
    assert dropped_points.sum(1).tolist() == [10, 5, 2, 0]
    assert torch.equal(torch.isnan(first).any(-1), torch.isnan(first).all(-1) | (
        torch.isnan(x).any(-1)))
    kept = first[~torch.isnan(first)]
    assert torch.isin(kept, x[~torch.isnan(x)]).all()  # kept values are unchanged
    assert torch.isnan(x).sum() < torch.isnan(first).sum()  # the input is not modified in place


def test_dropping_keeps_two_points_per_series():
    x, lengths = _ragged_batch()
    dropped = drop_observations(x, lengths, 0.99, torch.Generator().manual_seed(0))
    observed = (~torch.isnan(dropped).all(-1)).sum(1)
    assert observed.tolist() == [2, 2, 2, 2]


def test_dropping_rejects_bad_rates_and_shapes():
    x, lengths = _ragged_batch()
    with pytest.raises(ValueError, match=r"missing_rate: expected a fraction in \[0, 1\), got 1"):
        drop_observations(x, lengths, 1.0)
    with pytest.raises(ValueError, match=r"lengths: expected shape \(4,\), got \(3,\)"):
        drop_observations(x, lengths[:3], 0.1)
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, time, channels\)"):
        drop_observations(x[0], lengths, 0.1)


def test_intensity_counts_observations_and_time_channel_marks_padding():
    x = torch.tensor([[[1.0, math.nan], [math.nan, 2.0], [3.0, 4.0]],
                      [[5.0, 6.0], [math.nan, 7.0], [math.nan, math.nan]]])
    lengths = torch.tensor([3, 2])
    counts = observational_intensity(x, lengths)
    expected = torch.tensor([[[1.0, 0.0], [1, 1], [2, 2]],
                             [[1.0, 1.0], [1, 2], [math.nan, math.nan]]])
    torch.testing.assert_close(counts, expected, equal_nan=True, atol=ATOL_EXACT, rtol=0)
    times = time_channel(lengths, 3)
    torch.testing.assert_close(times[..., 0], torch.tensor([[0.0, 1, 2], [0, 1, math.nan]]),
                               equal_nan=True, atol=ATOL_EXACT, rtol=0)
    out = augment_channels(x, lengths, add_time=True, add_intensity=True)
    assert out.shape == (2, 3, 5)
    torch.testing.assert_close(out[..., 1:3], counts, equal_nan=True, atol=ATOL_EXACT, rtol=0)
    torch.testing.assert_close(out[..., 3:], x, equal_nan=True, atol=ATOL_EXACT, rtol=0)
    with pytest.raises(ValueError, match=r"times: expected shape \(3,\) or \(2, 3\), got \(4,\)"):
        time_channel(lengths, 3, torch.zeros(4))


def test_batch_of_one_and_float64_are_kept():
    x = torch.randn(1, 6, 2, dtype=torch.float64)
    lengths = torch.tensor([6])
    out = augment_channels(drop_observations(x, lengths, 0.5, torch.Generator().manual_seed(1)),
                           lengths, add_intensity=True)
    assert out.shape == (1, 6, 5) and out.dtype == torch.float64


def test_stratified_split_keeps_class_proportions():
    y = torch.tensor([0] * 20 + [1] * 40)
    parts = stratified_split(y, (0.7, 0.15, 0.15), torch.Generator().manual_seed(0))
    assert [len(p) for p in parts] == [42, 9, 9]
    assert [len(p) for p in stratified_split(y[:4], (0.7, 0.15, 0.15), torch.Generator())] == [
        2, 1, 1]
    assert torch.cat(parts).sort().values.tolist() == list(range(60))
    assert torch.bincount(y[parts[0]]).tolist() == [14, 28]
    with pytest.raises(ValueError, match="fractions: expected non-negative fractions summing"):
        stratified_split(y, (0.5, 0.6), torch.Generator())


def test_japanese_vowels_irregular_dataset_channels_and_normalisation():
    dataset = load_dataset("japanese-vowels", missing_rate=0.3, intensity=True, seed=5,
                           val_fraction=0.2)
    again = load_dataset("japanese-vowels", missing_rate=0.3, intensity=True, seed=5,
                         val_fraction=0.2)
    torch.testing.assert_close(dataset.train.x, again.train.x, equal_nan=True,
                               atol=ATOL_EXACT, rtol=0)
    assert dataset.channel_names[:2] == ("time", "intensity:dim0")
    assert dataset.input_channels == 1 + 12 + 12 == dataset.train.x.shape[-1]
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (216, 54, 370)
    train = dataset.train
    data = train.x[..., 13:]
    assert torch.nanmean(data.reshape(-1, 12), 0).abs().max() < ATOL_STANDARDISED
    # The time channel is complete inside each series even where data points were dropped.
    inside = torch.arange(train.x.shape[1]) < train.lengths.unsqueeze(-1)
    assert not torch.isnan(train.x[..., 0][inside]).any()
    assert torch.isnan(data).all(-1)[inside].any()
    assert torch.isnan(train.x[~inside]).all()


def test_spirals_are_seeded_balanced_and_turn_the_right_way():
    x, y, t = make_spirals(n_samples=9, length=50, noise=0.0, seed=4)
    x_again, y_again, _ = make_spirals(n_samples=9, length=50, noise=0.0, seed=4)
    torch.testing.assert_close(x, x_again, atol=ATOL_EXACT, rtol=0)
    assert x.shape == (9, 50, 2) and t.shape == (50,)
    assert y.tolist().count(1) == 4 and torch.equal(y, y_again)
    # Winding direction: sign of the cross product of consecutive positions.
    cross = x[:, :-1, 0] * x[:, 1:, 1] - x[:, :-1, 1] * x[:, 1:, 0]
    assert torch.equal((cross.sum(1) < 0).long(), y)
    dataset = load_dataset("spirals", seed=1)
    assert dataset.train.x.shape == (128, 100, 3) and len(dataset.test) == 128
    torch.testing.assert_close(dataset.train.times, torch.linspace(0, 4 * math.pi, 100))
    torch.testing.assert_close(dataset.train.x[0, :, 0], dataset.train.times)
    with pytest.raises(ValueError, match="length: expected at least 2 time points, got 1"):
        make_spirals(length=1)


def test_unknown_name_and_stray_log_signature_option():
    with pytest.raises(ValueError, match="name: expected one of japanese-vowels, spirals"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="logsig_step: given"):
        load_dataset("spirals", logsig_step=4)

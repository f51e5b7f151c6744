"""The adaptive options of long series: depth-1 windows for a univariate series with its
delayed copies while windows are short, depth 2 for longer windows and for several channels;
the windows' channels that result."""

import pytest
import torch

from fwplab.data import Dataset, Split, with_delays
from fwplab.data.uea_archive import log_signature_dataset
from fwplab.presets import (
    ADAPTIVE_LOGSIG_DEPTH,
    DELAYED_LOGSIG_DEPTH,
    DELAY_COPIES,
    SHORT_WINDOW,
    TARGET_WINDOWS,
    adaptive_data_options,
)


def test_a_long_univariate_series_takes_the_increments_of_itself_and_its_copies():
    options, choices = adaptive_data_options(637, [1.0])
    assert DELAYED_LOGSIG_DEPTH == 1 and options["logsig_depth"] == 1
    assert options["delays"] == [options["logsig_step"] * k for k in range(1, DELAY_COPIES + 1)]
    assert "increments only" in next(c.reason for c in choices if c.name == "log-signature")
    several, _ = adaptive_data_options(637, [1.0, 1.0])
    assert several["logsig_depth"] == ADAPTIVE_LOGSIG_DEPTH == 2 and "delays" not in several


def test_windows_longer_than_short_window_keep_the_areas():
    last_short = SHORT_WINDOW * TARGET_WINDOWS  # windows of exactly SHORT_WINDOW steps
    short, _ = adaptive_data_options(last_short, [1.0])
    long, choices = adaptive_data_options(last_short + 1, [1.0])
    assert (short["logsig_step"], short["logsig_depth"]) == (SHORT_WINDOW, 1)
    assert (long["logsig_step"], long["logsig_depth"]) == (SHORT_WINDOW + 1, 2)
    assert long["delays"] == [long["logsig_step"] * k for k in range(1, DELAY_COPIES + 1)]
    assert "increments only" not in next(c.reason for c in choices if c.name == "log-signature")


def test_the_chosen_windows_give_one_channel_per_copy_and_about_target_windows():
    steps = 637
    options, _ = adaptive_data_options(steps, [1.0])
    t = torch.arange(steps, dtype=torch.float64)
    x = torch.stack([t.expand(3, -1), torch.randn(3, steps, dtype=torch.float64)], dim=-1)
    split = Split(x, torch.full((3,), steps), torch.tensor([0, 1, 0]), t)
    dataset = with_delays(Dataset("long", split, None, split, ("a", "b"), ("time", "v")),
                          options["delays"])
    windows = log_signature_dataset(dataset, options["logsig_depth"], options["logsig_step"])
    assert windows.channel_names == ("time", "v", f"v(t-{options['delays'][0]})",
                                     f"v(t-{options['delays'][1]})")
    assert windows.train.x.shape[1] - 1 <= TARGET_WINDOWS
    # Depth 1: the path through the series sampled at the window ends.
    ends = torch.arange(0, steps, options["logsig_step"])
    assert torch.allclose(windows.train.x[:, : len(ends), 1], x[:, ends, 1] - x[:, :1, 1])


def test_a_long_series_path_starts_at_its_first_value_so_levels_stay_apart():
    """With ``start_channels`` the depth-1 path passes through the series' values at the
    window ends (from 0 it passes through their differences from the first value, and
    series a constant apart give one path); depth-2 areas and other channels are unchanged."""
    from fwplab.data.uea_archive import log_signature_path

    torch.manual_seed(0)
    steps, step = 41, 4
    time = torch.arange(steps, dtype=torch.float64)
    shape = torch.randn(3, steps, dtype=torch.float64).cumsum(1)
    x = torch.stack([time.expand(3, -1), shape, shape + 5.0 * torch.arange(3.)[:, None]], -1)
    lengths = torch.full((3,), steps)
    plain, _ = log_signature_path(x, lengths, 1, step)
    kept, new_lengths = log_signature_path(x, lengths, 1, step, start_channels=[1, 2])
    ends = torch.arange(new_lengths[0]) * step
    assert torch.allclose(kept[..., 1:], x[:, ends, 1:], atol=1e-12)
    assert torch.equal(kept[..., 0], plain[..., 0])  # time still from 0
    assert torch.allclose(plain[..., 2], plain[..., 1], atol=1e-12)  # the offset is lost
    assert not torch.allclose(kept[..., 2], kept[..., 1])  # and kept
    areas, _ = log_signature_path(x, lengths, 2, step)
    kept_areas, _ = log_signature_path(x, lengths, 2, step, start_channels=[1, 2])
    assert torch.equal(kept_areas[..., 3:], areas[..., 3:])
    with pytest.raises(ValueError, match=r"^start_channels: expected indices of the 3 "
                       r"channels, got \[3\]$"):
        log_signature_path(x, lengths, 1, step, start_channels=[3])


def test_adapted_long_series_keep_their_level():
    options, choices = adaptive_data_options(637, [1.0])
    assert options["logsig_level"] is True
    assert "level stays" in next(c.reason for c in choices if c.name == "log-signature")

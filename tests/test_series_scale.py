"""Series whose amplitudes span orders of magnitude: each standardised on its own, the
scale kept as a channel; the adaptive rule that chooses it; a run that records it."""

import json
import math

import pytest
import torch

from fwplab.cli import main
from fwplab.data import (
    Dataset,
    Split,
    data_channels,
    series_scale_spread,
    standardise_each_series,
)
from fwplab.data.transforms import MIN_SCALE_OBSERVATIONS, SCALE_FLOOR
from fwplab.presets import SCALE_SPREAD_LIMIT, adaptive_data_options


def make_dataset(amplitudes, test_amplitudes=(3.0,), steps=12, lengths=None):
    """Channels (time, value): value = amplitude * (sin(t) + 0.5 t / steps) + 2 amplitude."""
    def split(amps, lengths):
        t = torch.arange(steps, dtype=torch.float64)
        amps = torch.tensor(amps, dtype=torch.float64).unsqueeze(-1)
        value = amps * (torch.sin(t) + 0.5 * t / steps) + 2 * amps
        x = torch.stack([t.expand_as(value), value], dim=-1)
        lengths = torch.full((len(amps),), steps) if lengths is None else torch.tensor(lengths)
        after = torch.arange(steps) >= lengths.unsqueeze(-1)
        x[..., 1] = x[..., 1].masked_fill(after, math.nan)
        return Split(x, lengths, torch.arange(len(amps)) % 2, t)
    return Dataset("scales", split(amplitudes, lengths), None, split(test_amplitudes, None),
                   ("a", "b"), ("time", "value"))


def test_each_series_gets_mean_0_and_std_1_and_the_shape_is_kept():
    dataset = make_dataset([1e-4, 1.0, 50.0, 0.3], lengths=[12, 9, 12, 5])
    result = standardise_each_series(dataset, [1])
    assert result.channel_names == ("time", "value", "log-scale:value", "level:value")
    x, lengths = result.train.x, result.train.lengths
    for b, length in enumerate(lengths.tolist()):
        z = x[b, :length, 1]
        assert z.mean().item() == pytest.approx(0, abs=1e-12)
        assert z.std(correction=0).item() == pytest.approx(1, rel=1e-12)
        assert x[b, length:, 1:].isnan().all()
    # Equal shapes at different amplitudes become the same series.
    assert torch.allclose(x[0, :, 1], x[2, :, 1], atol=1e-12)
    assert torch.equal(x[..., 0], dataset.train.x[..., 0])


def test_the_scale_channel_rises_from_0_to_the_standardised_log_scale():
    amplitudes = [1e-4, 1.0, 50.0, 0.3]
    result = standardise_each_series(make_dataset(amplitudes), [1])
    scale = result.train.x[..., 2]
    assert torch.equal(scale[:, 0], torch.zeros(4, dtype=scale.dtype))
    # The end value orders the series by amplitude, with training mean 0 and std 1.
    end = scale[:, -1]
    assert torch.equal(end.argsort(), torch.tensor(amplitudes).argsort())
    assert end.mean().item() == pytest.approx(0, abs=1e-12)
    assert end.std(correction=0).item() == pytest.approx(1, rel=1e-12)
    # Linear in time between.
    assert torch.allclose(scale, end.unsqueeze(-1) * torch.linspace(0, 1, 12, dtype=end.dtype))
    # Scaling a series by a shifts its log-scale by log(a) / sigma (sigma from training).
    log_std = torch.tensor(amplitudes, dtype=torch.float64).log()
    sigma = log_std.std(correction=0)
    twice = standardise_each_series(make_dataset(amplitudes, test_amplitudes=(6.0, 3.0)), [1])
    ends = twice.test.x[:, -1, 2]
    assert (ends[0] - ends[1]).item() == pytest.approx(math.log(2) / sigma.item(), rel=1e-9)


def test_the_test_split_uses_training_statistics_and_missing_values_stay_missing():
    dataset = make_dataset([1e-3, 1.0, 10.0, 0.1], test_amplitudes=(1.0, 1e-3))
    dataset.test.x[0, 4, 1] = math.nan
    result = standardise_each_series(dataset, [1])
    train, test = result.train.x, result.test.x
    assert torch.allclose(test[1, :, 2], train[0, :, 2])  # same amplitude, same scale channel
    assert test[0, 4, 1].isnan() and not test[0, 5, 1].isnan()
    observed = test[0, :, 1][~test[0, :, 1].isnan()]
    assert observed.mean().item() == pytest.approx(0, abs=1e-12)


def test_a_constant_series_stays_0_and_finite():
    dataset = make_dataset([1.0, 2.0, 0.5, 3.0])
    dataset.train.x[1, :, 1] = 7.0
    result = standardise_each_series(dataset, [1])
    assert torch.equal(result.train.x[1, :, 1], torch.zeros(12, dtype=torch.float64))
    assert result.train.x[..., 2].isfinite().all()
    # Its scale is the floor: SCALE_FLOOR times the median series' scale, the lowest.
    assert result.train.x[1, -1, 2] == result.train.x[:, -1, 2].min()
    assert SCALE_FLOOR < 1e-3


def level_classes(n=40, steps=30, seed=0):
    """Two classes that differ by their level alone (0 and 3), the same noisy wiggle; a
    tenth of the series flat (constant at the class level)."""
    generator = torch.Generator().manual_seed(seed)
    def split(count):
        y = torch.arange(count) % 2
        t = torch.arange(steps, dtype=torch.float64)
        wiggle = torch.sin(t / 3) * (0.5 + torch.rand(count, 1, generator=generator,
                                                      dtype=torch.float64))
        value = 3.0 * y.unsqueeze(-1) + wiggle
        value[: count // 10] = 3.0 * y[: count // 10].unsqueeze(-1).to(value.dtype)
        x = torch.stack([t.expand_as(value), value], dim=-1)
        return Split(x, torch.full((count,), steps), y, t)
    return Dataset("levels", split(n), None, split(n), ("a", "b"), ("time", "value"))


def test_flat_series_do_not_trigger_the_scale_rule_on_classes_that_differ_by_level():
    # Before: the flat tenth made the spread "inf-fold", every series was standardised on
    # its own and the level, all that tells the classes apart, was gone (0.4875 vs 1.0).
    dataset = level_classes()
    spread = series_scale_spread(dataset.train, data_channels(dataset))
    assert math.isfinite(spread[0]) and spread[0] < SCALE_SPREAD_LIMIT
    options, _ = adaptive_data_options(30, spread)
    assert "standardise_each_series" not in options


def test_standardising_each_series_keeps_the_level_that_separates_the_classes():
    dataset = level_classes()
    result = standardise_each_series(dataset, [1])
    x = result.train.x
    # The standardised values alone no longer tell the classes apart ...
    assert torch.allclose(x[:4, :, 1], torch.zeros(4, 30, dtype=x.dtype))
    # ... the level channel does: nearest class mean of its end value, trained on train.
    level = x[:, -1, 3]
    y = result.train.y
    centres = torch.stack([level[y == k].mean() for k in (0, 1)])
    predicted = (result.test.x[:, -1, 3].unsqueeze(-1) - centres).abs().argmin(-1)
    assert torch.equal(predicted, result.test.y)
    # Nothing is lost: each series comes back from its standardised values, scale and level.
    raw = dataset.train.x[..., 1]
    typical = raw.std(dim=1, correction=0).median()
    mean = torch.sinh(level) * typical
    assert torch.allclose(mean, raw.mean(dim=1), atol=1e-9)
    moving = raw.std(dim=1, correction=0) > 0
    rebuilt = x[..., 1] * raw.std(dim=1, correction=0, keepdim=True) + mean.unsqueeze(-1)
    assert torch.allclose(rebuilt[moving], raw[moving], atol=1e-9)


def test_bad_channels_and_unobserved_series_are_refused_in_one_line():
    dataset = make_dataset([1.0, 2.0])
    with pytest.raises(ValueError, match=r"channels: expected indices of channels in 0\.\.1, "
                                         r"got \[2\]"):
        standardise_each_series(dataset, [2])
    dataset.train.x[1, :, 1] = math.nan
    with pytest.raises(ValueError, match="got none in series 1, channel 1"):
        standardise_each_series(dataset, [1])


def test_the_spread_is_1_for_normalised_series_and_large_for_wide_amplitudes():
    assert series_scale_spread(make_dataset([2.0] * 10).train, [1]) == pytest.approx([1.0])
    wide = make_dataset([10.0 ** k for k in range(-5, 5)])
    assert series_scale_spread(wide.train, [1])[0] > 1e6
    constant = make_dataset([1.0] * 10)
    constant.train.x[:2, :, 1] = 1.0  # flat series have no amplitude to compare
    assert series_scale_spread(constant.train, [1]) == pytest.approx([1.0])
    # Series with fewer than MIN_SCALE_OBSERVATIONS observations do not count: the
    # standard deviation of two values is mostly chance.
    few = make_dataset([10.0 ** k for k in range(-5, 5)] + [1.0] * 10)
    few.train.x[:10, MIN_SCALE_OBSERVATIONS - 1:, 1] = math.nan
    assert series_scale_spread(few.train, [1]) == pytest.approx([1.0])
    few.train.x[:, MIN_SCALE_OBSERVATIONS - 1:, 1] = math.nan
    assert series_scale_spread(few.train, [1]) == [1.0]  # no series with enough
    # The scale and level channels are not data channels: delayed and warped copies leave them.
    assert data_channels(standardise_each_series(wide, [1])) == [1]


def test_the_adaptive_rule_standardises_each_series_above_the_limit_only():
    options, choices = adaptive_data_options(24, [1.0, SCALE_SPREAD_LIMIT * 2])
    assert options == {"standardise_each_series": True}
    assert "20-fold" in next(c.reason for c in choices if c.name == "scale")
    options, choices = adaptive_data_options(24, [SCALE_SPREAD_LIMIT, 1.0])
    assert options == {}
    assert next(c.value for c in choices if c.name == "scale") == "one per channel"


def write_wide_pair(folder, n_train=16, n_test=8, steps=20):
    """Two classes (sine, square-ish wave) at amplitudes from 1e-4 to 1e3."""
    header = ["@problemName Wide", "@timeStamps false", "@missing false", "@univariate true",
              "@equalLength true", "@classLabel true a b", "@data"]
    paths = []
    for name, count in (("TRAIN", n_train), ("TEST", n_test)):
        lines = []
        for i in range(count):
            amplitude = 10.0 ** (-4 + 7 * ((i * 7) % count) / count)
            shape = [math.sin(t / 2) if i % 2 else math.tanh(3 * math.sin(t / 2))
                     for t in range(steps)]
            lines.append(",".join(f"{amplitude * v:.6g}" for v in shape) + ":" + "ab"[i % 2])
        path = folder / f"Wide_{name}.ts"
        path.write_text("\n".join(header + lines) + "\n")
        paths.append(path)
    return paths


def test_a_run_on_wide_amplitudes_records_the_choice_and_resumes_with_it(tmp_path, capsys):
    train, test = write_wide_pair(tmp_path)
    out = tmp_path / "run"
    args = ["train", "--train", str(train), "--test", str(test), "--epochs", "2",
            "--out", str(out), "--hidden", "8", "--heads", "2",
            "--ff", "8", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "scale = each series its own, log-scale and level kept as channels" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["adaptive"]["scale"]["value"].startswith("each series its own")
    # time, the series, its scale, its level and 4 time features (a short univariate series)
    assert metrics["model_config"]["input_channels"] == 8
    # --resume reloads the data the same way (the data fingerprint would refuse otherwise).
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["test_accuracy"] == metrics["test_accuracy"]


def test_the_scale_flag_wins_and_applies_to_adapted_runs_only(tmp_path, capsys):
    train, test = write_wide_pair(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--train", str(train), "--test", str(test), "--epochs", "1",
                 "--scale", "channel", "--out", str(out), "--hidden", "8", "--heads", "2",
                 "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "scale" not in metrics["run"]["adaptive"]
    assert metrics["model_config"]["input_channels"] == 6  # no log-scale channel
    assert "scale =" not in capsys.readouterr().out
    assert main(["train", "--scale", "series", "--epochs", "1", "--no-progress"]) == 1
    assert "--scale: applies to data without a preset" in capsys.readouterr().err

"""Settings that adapt to the data: the split, batch and budget rules on tiny synthetic
sets, the warm-up schedule, the time limit, the delayed copies of long univariate series,
and ``--train/--test`` runs that print and record every choice."""

import json
import math

import pytest
import torch

from fwplab.cli import main
from fwplab.data import (
    Dataset,
    Split,
    data_channels,
    increment_autocorrelation,
    load_ts_pair,
    moving_average,
    with_delays,
    with_time_features,
)
from fwplab.presets import (
    ADAPTIVE_VAL_FRACTION,
    DELAY_COPIES,
    RETRY_LR_FACTOR,
    SMOOTHING_WIDTH,
    LONG_SERIES,
    MIN_VAL_SERIES,
    STEP_RANGE,
    TIME_FEATURE_CYCLES,
    WORK_BUDGET,
    adaptive_data_options,
    adaptive_budget,
    step_cost,
    adaptive_retry,
    adaptive_train_settings,
    preset_for_dataset,
)
from fwplab.train import TrainConfig, TrainingDiverged, _warmup_factor, fit
from fwplab import adaptive
from test_train import one_thread, tiny_dataset, tiny_model, write_ts_pair  # noqa: F401


def test_a_class_with_one_series_means_no_validation_split_and_says_so():
    settings, choices = adaptive_train_settings([300, 1])
    assert settings["val_fraction"] == 0.0
    reason = next(choice.reason for choice in choices if choice.name == "validation")
    assert "no stratified split is possible" in reason and "1 training series" in reason


def test_a_large_enough_training_set_gets_a_stratified_validation_split():
    settings, choices = adaptive_train_settings([120, 100, 80])
    assert settings["val_fraction"] == ADAPTIVE_VAL_FRACTION
    assert settings["monitor"] == "accuracy_then_loss"
    held = sum(round(ADAPTIVE_VAL_FRACTION * n) for n in (120, 100, 80))
    assert held >= MIN_VAL_SERIES
    assert next(c.value for c in choices if c.name == "validation") == f"{held} of 300 series"


def test_a_small_training_set_trains_on_everything():
    settings, choices = adaptive_train_settings([18, 18])  # 7 validation series: too few
    assert settings["val_fraction"] == 0.0
    assert "too few" in next(c.reason for c in choices if c.name == "validation")


@pytest.mark.parametrize("counts, batch", [([20, 16], 8), ([100, 100], 16), ([5000], 32)])
def test_the_batch_is_about_a_tenth_of_the_training_series(counts, batch):
    assert adaptive_train_settings(counts)[0]["batch_size"] == batch


def test_the_budget_is_counted_in_steps_from_the_data_alone():
    small, choices = adaptive_budget(40, 8, 24, has_validation=False)
    assert small["epochs"] * 5 == STEP_RANGE[0] and "patience" not in small  # 5 steps per pass
    assert "time_limit" not in small and "passes" in choices[0].reason
    long, choices = adaptive_budget(4000, 32, 1000, has_validation=True)
    steps = long["epochs"] * 125
    assert steps * step_cost(32, 1000) <= WORK_BUDGET * 1.2 and long["patience"] >= 10
    assert "work budget" in next(c.reason for c in choices if c.name == "passes")
    given, _ = adaptive_budget(40, 8, 24, False, epochs=3)
    assert given["epochs"] == 3 and given["warmup_steps"] == 1


def test_long_series_become_log_signature_windows():
    assert adaptive_data_options(LONG_SERIES, [1.0, 1.0])[0] == {}
    options, choices = adaptive_data_options(1460, [1.0, 1.0])
    assert options["logsig_depth"] == 2
    assert math.ceil(1460 / options["logsig_step"]) <= 64
    assert "1460 steps" in next(c.reason for c in choices if c.name == "log-signature")


def test_only_long_univariate_series_get_delayed_copies_lagged_by_the_window():
    options, choices = adaptive_data_options(1460, [1.0])
    assert options["delays"] == [options["logsig_step"] * k for k in range(1, DELAY_COPIES + 1)]
    assert next(c.value for c in choices if c.name == "delayed copies") == \
        f"lags of {options['delays']} steps"
    assert "delays" not in adaptive_data_options(1460, [1.0, 2.0, 1.5])[0]
    assert "delays" not in adaptive_data_options(LONG_SERIES, [1.0])[0]


def test_only_short_univariate_series_get_time_features():
    options, choices = adaptive_data_options(LONG_SERIES, [1.0])
    assert options == {"time_features": list(TIME_FEATURE_CYCLES)}
    assert next(c.value for c in choices if c.name == "time features") == \
        f"sine and cosine of {list(TIME_FEATURE_CYCLES)} cycles"
    assert "time_features" not in adaptive_data_options(LONG_SERIES, [1.0, 1.0])[0]
    assert "time_features" not in adaptive_data_options(LONG_SERIES + 1, [1.0])[0]


def test_noisy_short_univariate_series_are_smoothed_first():
    options, choices = adaptive_data_options(LONG_SERIES, [1.0], [-0.4])
    assert options["smoothing"] == SMOOTHING_WIDTH and "time_features" in options
    assert "-0.40 (< 0)" in next(c.reason for c in choices if c.name == "smoothing")
    assert "smoothing" not in adaptive_data_options(LONG_SERIES, [1.0], [0.3])[0]
    assert "smoothing" not in adaptive_data_options(LONG_SERIES, [1.0, 1.0], [-0.4, -0.4])[0]
    assert "smoothing" not in adaptive_data_options(LONG_SERIES + 1, [1.0], [-0.4])[0]


def test_the_increments_of_noise_anticorrelate_and_of_smooth_series_correlate():
    torch.manual_seed(0)
    t = torch.linspace(0, 6, 200)
    x = torch.stack([torch.randn(20, 200), torch.sin(t).expand(20, 200)], dim=-1)
    split = Split(x, torch.full((20,), 200), torch.zeros(20, dtype=torch.long),
                  torch.arange(200.0))
    noise, smooth = increment_autocorrelation(split, [0, 1])
    assert noise == pytest.approx(-0.5, abs=0.05) and smooth > 0.99
    # After a moving average of 5 the noise's increments (e_{t+3} - e_{t-2}) / 5 no longer
    # share a value with their neighbours: uncorrelated.
    dataset = Dataset("n", split, None, split, ("a",), ("noise", "sine"))
    averaged = moving_average(dataset, [0], 5)
    assert increment_autocorrelation(averaged.train, [0])[0] == pytest.approx(0, abs=0.05)
    assert torch.equal(averaged.train.x[..., 1], x[..., 1])


def test_a_noisy_short_series_run_records_its_smoothing_and_resumes(tmp_path, capsys):
    rng = torch.Generator().manual_seed(0)
    header = ["@problemName Noisy", "@timeStamps false", "@missing false", "@univariate true",
              "@equalLength true", "@classLabel true a b", "@data"]
    paths = []
    for name, count in (("TRAIN", 12), ("TEST", 6)):
        lines = [",".join(f"{v:.3f}" for v in (torch.randn(16, generator=rng) + i % 2).tolist())
                 + ":" + "ab"[i % 2] for i in range(count)]
        paths.append(tmp_path / f"Noisy_{name}.ts")
        paths[-1].write_text("\n".join(header + lines) + "\n")
    out = tmp_path / "run"
    assert main(["train", "--train", str(paths[0]), "--test", str(paths[1]), "--epochs", "1",
                 "--out", str(out), "--hidden", "8", "--heads", "2", "--no-progress"]) == 0
    assert f"smoothing = moving average of {SMOOTHING_WIDTH} observations" in \
        capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["data"]["options"]["smoothing"] == SMOOTHING_WIDTH
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0


def test_smoothing_and_time_feature_flags_win_and_need_adapted_data(tmp_path, capsys):
    train, test = write_univariate_pair(tmp_path)
    out = tmp_path / "run"
    flags = ["--hidden", "8", "--heads", "2", "--epochs", "1", "--no-progress"]
    assert main(["train", "--train", str(train), "--test", str(test), "--smoothing", "3",
                 "--no-time-features", "--out", str(out), *flags]) == 0
    printed = capsys.readouterr().out
    assert "smoothing =" not in printed and "time features =" not in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["data"]["options"]["smoothing"] == 3
    assert "time_features" not in metrics["run"]["data"]["options"]
    assert metrics["model_config"]["input_channels"] == 2  # time and the series
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--train", str(train), "--test", str(test), "--smoothing", "4", *flags])
    assert stopped.value.code == 2
    assert "--smoothing: expected 0 or an odd number >= 3, got '4'" in capsys.readouterr().err
    assert main(["train", "--smoothing", "5", *flags]) == 1
    assert "--smoothing: applies to data without a preset" in capsys.readouterr().err


def test_the_moving_average_skips_missing_values_and_stops_at_each_end():
    x = torch.tensor([[0.0, 1.0, 0.0, 1.0, math.nan, 1.0, 0.0, 1.0, math.nan, math.nan]])
    split = Split(x.unsqueeze(-1), torch.tensor([8]), torch.tensor([0]), torch.arange(10.0))
    averaged = moving_average(Dataset("m", split, None, split, ("a",), ("v",)), [0], 3)
    expected = torch.tensor([1 / 2, 1 / 3, 2 / 3, 1 / 2, math.nan, 1 / 2, 2 / 3, 1 / 2,
                             math.nan, math.nan])
    assert torch.allclose(averaged.train.x[0, :, 0], expected, equal_nan=True)
    for width in (2, 1, True):
        with pytest.raises(ValueError, match="width: expected an odd integer >= 3"):
            moving_average(Dataset("m", split, None, split, ("a",), ("v",)), [0], width)


def test_time_features_are_sines_and_cosines_of_the_training_grid(tmp_path):
    train, test = write_univariate_pair(tmp_path, n_train=6, length=8)
    plain = load_ts_pair(train, test)
    featured = with_time_features(plain, [1, 2])
    assert featured.channel_names == plain.channel_names + tuple(
        f"time-feature:{kind}{k}" for kind in ("sin", "cos") for k in (1, 2))
    assert data_channels(featured) == data_channels(plain)
    span = float(plain.train.times[-1] - plain.train.times[0])
    for split, before in ((featured.train, plain.train), (featured.test, plain.test)):
        phase = 2 * math.pi * (before.times - plain.train.times[0]) / span
        expected = torch.stack([torch.sin(phase), torch.sin(2 * phase), torch.cos(phase),
                                torch.cos(2 * phase)], -1).to(split.x.dtype)
        for b, length in enumerate(before.lengths.tolist()):
            assert torch.allclose(split.x[b, :length, -4:], expected[:length], atol=1e-6)
            assert split.x[b, length:, -4:].isnan().all()
        assert torch.equal(split.x[..., :-4].nan_to_num(), before.x.nan_to_num())
    with pytest.raises(ValueError, match=r"cycles: expected positive integers, got \[0\]"):
        with_time_features(plain, [0])


def write_univariate_pair(folder, n_train=12, n_test=6, length=5):
    """A univariate .ts pair (classes a and b, amplitudes alike) of ``length`` to
    ``length + 2`` steps; the '?' missing values are left out of runs of the
    log-signature (longer than LONG_SERIES steps), which needs complete series."""
    header = ["@problemName Uni", "@timeStamps false", "@missing true", "@univariate true",
              "@equalLength false", "@classLabel true a b", "@data"]
    paths = []
    def value(i, t):
        return math.sin(t / 9) + 0.1 * i if i % 2 else math.cos(t / 7) + 0.1 * i

    for name, count in (("TRAIN", n_train), ("TEST", n_test)):
        lines = [",".join("?" if t == 2 and length <= LONG_SERIES else f"{value(i, t):.2f}"
                          for t in range(length + i % 3)) + ":" + "ab"[i % 2]
                 for i in range(count)]
        path = folder / f"Uni_{name}.ts"
        path.write_text("\n".join(header + lines) + "\n")
        paths.append(path)
    return paths


def test_delayed_copies_repeat_the_series_later_and_end_with_it(tmp_path):
    train, test = write_univariate_pair(tmp_path)
    plain = load_ts_pair(train, test)
    delayed = with_delays(plain, [1, 3])
    assert delayed.channel_names == ("time", "dim0", "dim0(t-1)", "dim0(t-3)")
    for split, before in ((delayed.train, plain.train), (delayed.test, plain.test)):
        value = before.x[..., 1]
        for channel, lag in ((2, 1), (3, 3)):
            for b, length in enumerate(before.lengths.tolist()):
                expected = [value[b, max(t - lag, 0)] for t in range(length)]
                assert torch.equal(split.x[b, :length, channel].isnan(),
                                   torch.stack(expected).isnan())
                assert torch.allclose(split.x[b, :length, channel].nan_to_num(),
                                      torch.stack(expected).nan_to_num())
                assert split.x[b, length:, channel].isnan().all()
        assert torch.equal(split.x[..., :2].nan_to_num(), before.x.nan_to_num())


def test_warm_up_rises_linearly_then_decays_by_cosine():
    config = TrainConfig(warmup_steps=4, min_lr_ratio=0.0)
    factors = [_warmup_factor(step, config, 14) for step in range(15)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[4] == pytest.approx(1.0) and factors[9] == pytest.approx(0.5)
    assert factors[14] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="warmup_steps: the plateau schedule"):
        TrainConfig(warmup_steps=2, schedule="plateau")


def test_the_time_limit_stops_after_the_epoch_that_passes_it():
    dataset = tiny_dataset()
    history = fit(tiny_model(dataset), dataset, epochs=50, time_limit=1e-9, progress=False)
    assert len(history.records) == 1 and history.stopped_early


def test_ties_in_validation_accuracy_go_to_the_lower_loss():
    from fwplab.train import _score
    better = _score({"accuracy": 0.5, "loss": 0.3}, "accuracy_then_loss")
    worse = _score({"accuracy": 0.5, "loss": 0.9}, "accuracy_then_loss")
    assert better > worse > _score({"accuracy": 0.49, "loss": 0.0}, "accuracy_then_loss")


def test_only_data_without_a_preset_adapts():
    assert preset_for_dataset("japanese-vowels").name == "japanese-vowels"
    assert preset_for_dataset("spirals") is None


def test_a_ts_pair_run_prints_and_records_every_choice(tmp_path, capsys):
    train, test = write_ts_pair(tmp_path, n_train=13, classes="abc")  # class c: 4 series
    out = tmp_path / "run"
    assert main(["train", "--train", str(train), "--test", str(test), "--hidden", "8",
                 "--heads", "2", "--epochs", "2", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    adaptive = metrics["run"]["adaptive"]
    assert {"validation", "batch size", "passes", "warm-up", "log-signature"} <= set(adaptive)
    for name, choice in adaptive.items():
        assert printed.count(f"adapted to the data: {name} = {choice['value']}") == 1
    assert metrics["val_accuracy"] is None and metrics["epochs"] == 2
    assert metrics["train_config"]["batch_size"] == 8
    assert metrics["train_config"]["warmup_steps"] == 1


def test_an_adapted_run_resumes(tmp_path):
    train, test = write_ts_pair(tmp_path)
    out = tmp_path / "run"
    flags = ["--hidden", "8", "--heads", "2", "--no-progress"]
    assert main(["train", "--train", str(train), "--test", str(test), "--epochs", "1",
                 "--out", str(out), *flags]) == 0
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0


def test_flags_win_over_adapted_values_and_are_not_reported_as_adapted(tmp_path, capsys):
    train, test = write_ts_pair(tmp_path, n_train=30)
    out = tmp_path / "run"
    assert main(["train", "--train", str(train), "--test", str(test), "--hidden", "8",
                 "--heads", "2", "--epochs", "2", "--batch-size", "4", "--val-fraction", "0.3",
                 "--patience", "5", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_config"]["batch_size"] == 4
    assert metrics["train_config"]["val_fraction"] == 0.3
    assert metrics["train_config"]["patience"] == 5
    assert metrics["val_accuracy"] is not None
    for name in ("validation", "batch size", "patience"):
        assert f"adapted to the data: {name} =" not in printed
        assert name not in metrics["run"]["adaptive"]


def test_a_class_with_one_series_trains_without_validation_and_says_so(tmp_path, capsys):
    train, test = write_ts_pair(tmp_path, n_train=4, n_test=3, classes="abc")  # c: 1 series
    out = tmp_path / "run"
    assert main(["train", "--train", str(train), "--test", str(test), "--hidden", "8",
                 "--heads", "2", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    assert "no stratified split is possible: the smallest class has 1 training series" \
        in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_accuracy"] is None and metrics["train_config"]["val_fraction"] == 0.0


def test_a_long_univariate_run_records_its_delayed_copies_and_resumes_with_them(
        tmp_path, capsys):
    train, test = write_univariate_pair(tmp_path, length=LONG_SERIES + 3)
    out = tmp_path / "run"
    flags = ["--hidden", "8", "--heads", "2", "--no-progress"]
    assert main(["train", "--train", str(train), "--test", str(test), "--epochs", "1",
                 "--out", str(out), *flags]) == 0
    printed = capsys.readouterr().out
    assert "adapted to the data: delayed copies = lags of [3, 6] steps" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["data"]["options"]["delays"] == [3, 6]
    # depth-1 log-signature of (time, series, two copies): their 4 window increments (the
    # signed areas between a series and its own delayed copies are left out)
    assert metrics["model_config"]["input_channels"] == 4
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0


def test_a_retry_halves_the_rate():
    settings, choice = adaptive_retry(1e-3, "non-finite loss at epoch 3, step 2")
    assert settings == {"lr": 1e-3 * RETRY_LR_FACTOR}
    assert "non-finite loss at epoch 3, step 2" in choice.reason


def _diverging_once(monkeypatch):
    """Make the CLI's first fit raise TrainingDiverged; return the configs fit was given."""
    configs = []

    def fit_once_diverging(model, dataset, config, **options):
        configs.append(config)
        if len(configs) == 1:
            raise TrainingDiverged("non-finite loss at epoch 1, step 1; kept nothing")
        return fit(model, dataset, config, **options)

    monkeypatch.setattr(adaptive, "fit", fit_once_diverging)
    return configs


def test_an_adapted_run_that_diverges_starts_once_more_at_half_the_rate_and_says_so(
        tmp_path, capsys, monkeypatch):
    configs = _diverging_once(monkeypatch)
    train, test = write_ts_pair(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--train", str(train), "--test", str(test), "--hidden", "8",
                 "--heads", "2", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    assert [c.lr for c in configs] == [configs[0].lr, configs[0].lr * RETRY_LR_FACTOR]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_config"]["lr"] == configs[1].lr
    choice = metrics["run"]["adaptive"]["learning rate"]
    assert "non-finite loss at epoch 1, step 1" in choice["reason"]
    printed = capsys.readouterr().out
    assert printed.count(f"adapted to the data: learning rate = {choice['value']}") == 1


def test_a_given_learning_rate_is_not_retried(tmp_path, capsys, monkeypatch):
    configs = _diverging_once(monkeypatch)
    train, test = write_ts_pair(tmp_path)
    assert main(["train", "--train", str(train), "--test", str(test), "--hidden", "8",
                 "--heads", "2", "--epochs", "1", "--lr", "1e-3", "--out",
                 str(tmp_path / "run"), "--no-progress"]) == 1
    assert len(configs) == 1 and "non-finite loss" in capsys.readouterr().err

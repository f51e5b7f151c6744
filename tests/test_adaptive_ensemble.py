"""Two levers of adapted runs for small data sets: the ensemble (averaged class
probabilities, as many models as the time budget holds, the members and their weights
recorded) and warped copies of the training series (labels, lengths and missing values
kept, only without a validation split, recorded and reloaded by --resume), and log-signature windows that count time in windows."""

import json

import pytest
import torch

from fwplab import adaptive
from fwplab.cli import ENSEMBLE_NAME, main
from fwplab.data import warped_copies
from fwplab.data import load_ts_pair
from fwplab.models import build_model
from fwplab.presets import (
    AUGMENT_PER_CLASS,
    ENSEMBLE_MEMBERS,
    LONG_SERIES,
    MAX_WARPED_COPIES,
    WORK_BUDGET,
    step_cost,
    adaptive_augmentation,
    adaptive_data_options,
    adaptive_ensemble,
    adaptive_train_settings,
)
from fwplab.train import TrainingDiverged, evaluate_ensemble, fit, predict, predict_ensemble
from test_train import one_thread, tiny_dataset, tiny_model, write_ts_pair  # noqa: F401

FLAGS = ["--hidden", "8", "--heads", "2", "--epochs", "1", "--no-progress"]


def test_the_ensemble_predicts_the_mean_of_the_members_probabilities():
    dataset = tiny_dataset()
    members = [tiny_model(dataset, seed=seed) for seed in range(3)]
    mean = torch.stack([predict(m, dataset.test).softmax(-1) for m in members]).mean(0)
    averaged = predict_ensemble(members, dataset.test)
    assert torch.allclose(averaged.exp(), mean, atol=1e-6)
    assert torch.allclose(averaged.exp().sum(-1), torch.ones(len(dataset.test)), atol=1e-6)
    metrics = evaluate_ensemble(members, dataset.test)
    expected = float((mean.argmax(-1) == dataset.test.y).float().mean())
    assert metrics["accuracy"] == pytest.approx(expected)
    assert metrics["loss"] == pytest.approx(float(-mean[torch.arange(len(mean)),
                                                        dataset.test.y].log().mean()), rel=1e-5)


def test_an_ensemble_of_one_is_that_model():
    dataset = tiny_dataset()
    model = tiny_model(dataset)
    assert torch.allclose(predict_ensemble([model], dataset.test),
                          predict(model, dataset.test).log_softmax(-1), atol=1e-5)


def test_an_ensemble_refuses_no_members_and_members_of_different_classes():
    dataset = tiny_dataset()
    with pytest.raises(ValueError, match="^models: expected at least one model, got none$"):
        predict_ensemble([], dataset.test)
    other = build_model("delta_cde", dataset.input_channels, 5, hidden_channels=8, num_heads=2)
    with pytest.raises(ValueError, match="^models: expected members with the same classes"):
        predict_ensemble([tiny_model(dataset), other], dataset.test)


@pytest.mark.parametrize("steps, batch, length, members", [
    (600, 8, 24, ENSEMBLE_MEMBERS), (2000, 32, 64, 3), (2000, 32, 128, 1)])
def test_the_ensemble_holds_as_many_models_as_the_work_budget(steps, batch, length, members):
    count, choice = adaptive_ensemble(steps, batch, length)
    assert count == members == max(1, min(ENSEMBLE_MEMBERS, int(
        WORK_BUDGET / (steps * step_cost(batch, length)))))
    assert choice.name == "ensemble" and choice.value.startswith(f"{members} model")


def test_a_given_ensemble_size_wins():
    assert adaptive_ensemble(10**6, 32, 128, 4)[0] == 4
    with pytest.raises(ValueError, match="^steps, batch_size, length: expected positive"):
        adaptive_ensemble(0, 8, 24)


def test_a_run_with_an_ensemble_reports_the_averaged_probabilities_and_keeps_every_member(
        tmp_path, capsys):
    train, test = write_ts_pair(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--train", str(train), "--test", str(test), "--ensemble", "3",
                 "--out", str(out), *FLAGS]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    choice = metrics["run"]["adaptive"]["ensemble"]
    assert choice == {"value": "3 models", "reason": "given"}
    assert printed.count("adapted to the data: ensemble = 3 models") == 1
    ensemble = metrics["ensemble"]
    assert ensemble["members"] == 3 and ensemble["seeds"] == [0, 1, 2]
    assert len(ensemble["member_test_accuracy"]) == 3
    saved = torch.load(out / ENSEMBLE_NAME, weights_only=True)
    assert saved["seeds"] == [0, 1, 2] and len(saved["states"]) == 3
    config = dict(saved["model_config"])
    members = []
    for state in saved["states"]:
        member = build_model(**config)
        member.load_state_dict(state)
        members.append(member)
    dataset = load_ts_pair(train, test, seed=0)
    assert metrics["test_accuracy"] == pytest.approx(
        evaluate_ensemble(members, dataset.test)["accuracy"])
    # the members differ (their seeds drew other weights and batches)
    assert not torch.equal(saved["states"][0]["classifier.weight"],
                           saved["states"][1]["classifier.weight"])


def test_given_passes_train_one_model_and_say_so(tmp_path, capsys):
    train, test = write_ts_pair(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--train", str(train), "--test", str(test), "--out", str(out),
                 *FLAGS]) == 0
    assert "adapted to the data: ensemble = 1 model (the passes are given" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["adaptive"]["ensemble"]["value"] == "1 model"
    assert "ensemble" not in metrics and not (out / ENSEMBLE_NAME).exists()


def test_an_ensemble_is_refused_for_a_preset(tmp_path, capsys):
    assert main(["train", "--ensemble", "2", "--out", str(tmp_path / "run"), *FLAGS]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fwplab train: error: --ensemble: applies to data without a preset")
    assert len(err.splitlines()) == 1


# ------------------------------------------------------------------ warped copies
def test_warped_copies_keep_labels_lengths_times_and_missing_values():
    dataset = tiny_dataset()
    train = dataset.train
    train.x[0, 1, 1] = float("nan")  # a missing value inside series 0
    copies = warped_copies(train, [1, 2], 2, seed=0)
    n = len(train)
    assert copies.x.shape == (3 * n, *train.x.shape[1:])
    assert torch.equal(copies.y, train.y.repeat(3))
    assert torch.equal(copies.lengths, train.lengths.repeat(3))
    assert torch.equal(copies.x[:n].nan_to_num(7.0), train.x.nan_to_num(7.0))  # originals first
    for k in (1, 2):
        copy = copies.x[k * n:(k + 1) * n]
        assert torch.equal(copy[..., 0].nan_to_num(7.0), train.x[..., 0].nan_to_num(7.0))
        ended = torch.arange(train.x.shape[1]) >= train.lengths.unsqueeze(-1)
        assert torch.isnan(copy[ended]).all()  # NaN after each end stays
        assert torch.isfinite(copy[1:][~ended[1:]]).all()  # observed stays observed
        assert copy[0, :, 1].isnan().any()  # the missing value is still missing nearby
        # the first and last step of a series are kept (up to the scale factor)
        first = copy[:, 0, 1:] / train.x[:, 0, 1:]
        assert torch.allclose(first[1:], (copy[torch.arange(n), train.lengths - 1, 1:]
                                          / train.x[torch.arange(n), train.lengths - 1, 1:])[1:],
                              rtol=1e-4)
    assert not torch.allclose(copies.x[n:2 * n].nan_to_num(0.0), train.x.nan_to_num(0.0))
    again = warped_copies(train, [1, 2], 2, seed=0)
    assert torch.equal(again.x.nan_to_num(7.0), copies.x.nan_to_num(7.0))  # seeded


def test_no_copies_is_the_split_and_a_bad_count_is_refused():
    train = tiny_dataset().train
    assert warped_copies(train, [1, 2], 0, seed=0) is train
    with pytest.raises(ValueError, match="^copies: expected a non-negative integer, got -1$"):
        warped_copies(train, [1, 2], -1, seed=0)


@pytest.mark.parametrize("counts, validation, copies", [
    ([5] * 10, False, min(MAX_WARPED_COPIES, 3)), ([12, 12, 12], False, 1),
    ([AUGMENT_PER_CLASS] * 2, False, 0), ([5] * 10, True, 0), ([2] * 52, False, MAX_WARPED_COPIES)])
def test_classes_with_few_series_get_warped_copies_unless_validating(counts, validation, copies):
    options, choices = adaptive_augmentation(counts, validation)
    assert options.get("augment", 0) == copies
    assert [choice.name for choice in choices] == ["warped copies"]


def test_long_series_that_would_validate_train_on_warped_copies_instead():
    counts = [40, 35, 30]  # a stratified fifth would be 21 series: too few to validate
    many = [100, 90, 80]  # a stratified fifth is 54 series: a split would be carved
    assert adaptive_augmentation(counts, False, long_series=True)[0] == {}
    options, (choice,) = adaptive_augmentation(many, False, long_series=True)
    assert options == {"augment": MAX_WARPED_COPIES}
    assert "instead of a validation split" in choice.reason
    # short series keep the split; a split given by the user or the dataset keeps it too
    options, (choice,) = adaptive_augmentation(many, False, long_series=False)
    assert options == {} and "a validation split is carved" in choice.reason
    options, (choice,) = adaptive_augmentation(many, True, long_series=True)
    assert options == {} and "a validation split is given" in choice.reason
    # and the training settings then carve none: a copy of a validation series would train
    settings, choices = adaptive_train_settings(many, augmented=True)
    assert settings["val_fraction"] == 0.0
    assert "warped copies" in next(c.reason for c in choices if c.name == "validation")
    assert adaptive_train_settings(many)[0]["val_fraction"] > 0


def test_given_warped_copies_carve_no_validation_split_and_both_given_are_refused(tmp_path):
    train, test = write_ts_pair(tmp_path, n_train=300)  # 100 series per class: would validate
    spec = adaptive._spec((str(train), str(test)), 0.0, 0)
    dataset, _ = adaptive.adapt_data(spec, adaptive.load_data(spec), copies=1)
    config, _, _ = adaptive.adapt_training(dataset, {"seed": 0}, dataset_copies=1)
    assert len(dataset.train) == 600 and config.val_fraction == 0.0
    spec = adaptive._spec((str(train), str(test)), 0.0, 0)  # no copies: the split stays
    dataset, _ = adaptive.adapt_data(spec, adaptive.load_data(spec), copies=0)
    config, _, _ = adaptive.adapt_training(dataset, {"seed": 0}, dataset_copies=0)
    assert len(dataset.train) == 300 and config.val_fraction > 0
    with pytest.raises(ValueError, match=r"^--val-fraction 0.2 with --warped-copies 2: copies "
                       r"of the validation series would train; give one of them$"):
        adaptive.fit_adaptive((str(train), str(test)), out=tmp_path / "run",
                              data_options={"val_fraction": 0.2, "warped_copies": 2})
    assert not (tmp_path / "run").exists()


def test_a_run_with_warped_copies_records_them_and_resumes_with_them(tmp_path, capsys):
    train, test = write_ts_pair(tmp_path, n_train=12)  # 4 series per class
    out = tmp_path / "run"
    assert main(["train", "--train", str(train), "--test", str(test), "--out", str(out),
                 *FLAGS]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    copies = metrics["run"]["data"]["options"]["augment"]
    assert copies == min(MAX_WARPED_COPIES, -(-AUGMENT_PER_CLASS // 4) - 1)
    choice = metrics["run"]["adaptive"]["warped copies"]
    assert printed.count(f"adapted to the data: warped copies = {choice['value']}") == 1
    # the batch is sized by the 12 series, not by the copies
    assert metrics["train_config"]["batch_size"] == 8
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0


def test_a_member_that_diverges_is_left_out_and_recorded(tmp_path, capsys, monkeypatch):
    calls = []

    def fit_second_diverging(model, dataset, config, **options):
        calls.append(config.seed)
        if len(calls) == 2:
            raise TrainingDiverged("non-finite loss at epoch 1, step 1; kept nothing")
        return fit(model, dataset, config, **options)

    monkeypatch.setattr(adaptive, "fit", fit_second_diverging)
    train, test = write_ts_pair(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--train", str(train), "--test", str(test), "--ensemble", "3",
                 "--out", str(out), *FLAGS]) == 0
    assert calls == [0, 1, 2]
    assert "ensemble: the model of seed 1 diverged (non-finite loss at epoch 1, step 1); " \
           "left out" in capsys.readouterr().out
    ensemble = json.loads((out / "metrics.json").read_text())["ensemble"]
    assert ensemble["members"] == 2 and ensemble["seeds"] == [0, 2]
    assert ensemble["diverged_seeds"] == [1]


def test_given_warped_copies_win_and_are_not_reported_as_adapted(tmp_path, capsys):
    train, test = write_ts_pair(tmp_path, n_train=12)
    for copies in (0, 2):
        out = tmp_path / f"run{copies}"
        assert main(["train", "--train", str(train), "--test", str(test), "--warped-copies",
                     str(copies), "--out", str(out), *FLAGS]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["run"]["data"]["options"].get("augment", 0) == copies
        assert "warped copies" not in metrics["run"]["adaptive"]
        assert "adapted to the data: warped copies" not in capsys.readouterr().out


def test_warped_copies_are_refused_for_a_preset_and_below_zero(tmp_path, capsys):
    assert main(["train", "--warped-copies", "1", "--out", str(tmp_path / "run"), *FLAGS]) == 1
    assert capsys.readouterr().err.startswith(
        "fwplab train: error: --warped-copies: applies to data without a preset")
    with pytest.raises(SystemExit):
        main(["train", "--warped-copies", "-1"])
    assert "expected a non-negative integer, got '-1'" in capsys.readouterr().err


# ------------------------------------------------------------------ time in windows
def test_log_signature_windows_count_time_in_windows(tmp_path):
    from test_adaptive_budget import write_univariate_pair
    from fwplab.adaptive import load_data as _load_data
    train, test = write_univariate_pair(tmp_path, length=LONG_SERIES + 3)
    options, _ = adaptive_data_options(LONG_SERIES + 5, [1.0])
    assert options["window_time"] is True
    spec = {"missing_rate": 0.0, "seed": 0, "train": str(train), "test": str(test),
            "options": options}
    windows = _load_data(spec)
    steps = _load_data({**spec, "options": {**options, "window_time": False}})
    step = options["logsig_step"]
    for split, before in ((windows.train, steps.train), (windows.test, steps.test)):
        assert torch.allclose(split.times, before.times / step)
        assert torch.allclose(split.times, torch.arange(len(split.times)).float())
        assert torch.allclose(split.x[..., 0].nan_to_num(), (before.x[..., 0] / step).nan_to_num())
        # the areas with time scale with it; the other channels are the same
        names = windows.channel_names
        for index, name in enumerate(names):
            factor = 1 / step if name.startswith("[time,") else 1.0
            if name == "time":
                continue
            assert torch.allclose(split.x[..., index].nan_to_num(),
                                  (before.x[..., index] * factor).nan_to_num(), atol=1e-5)

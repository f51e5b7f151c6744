"""Numbers that cannot lie and clear errors (issue 12, items 9 and 11-14).

CLI cases check the exit status, the single stderr line and that nothing was written
(or, where training ran, that no metrics were reported); Python API cases check the
one-line ValueError.
"""

import math

import pytest
import torch

from fwplab import build_model
from fwplab.data.dataset import RawSplit, assemble_dataset
from fwplab.data.ts import parse_ts, read_ts
from fwplab.models import NeuralCDE, NonFiniteOutputError, load_official_state_dict
from fwplab.paths import MAX_GRID_STEPS, integration_grid
from fwplab.train import METRICS_NAME, TrainConfig, evaluate, fit
from test_bad_input import EXIT_FLAGS, EXIT_INPUT, GOOD_LINES, _assert_one_line, _run, ts_text
from test_train import one_thread, tiny_dataset, tiny_model  # noqa: F401 (autouse fixture)

TINY = ["--hidden", "8", "--heads", "2", "--batch-size", "4", "--epochs", "1", "--no-progress",
        "--device", "cpu"]


def _pair(tmp_path, train_lines=None, test_lines=None, train_text=None):
    train, test = tmp_path / "Bad_TRAIN.ts", tmp_path / "Bad_TEST.ts"
    train.write_text(train_text if train_text is not None else ts_text(train_lines or GOOD_LINES * 3))
    test.write_text(ts_text(test_lines or GOOD_LINES))
    return train, test


def _train(tmp_path, capsys, train, test, *flags, out="run"):
    return _run(["train", "--train", str(train), "--test", str(test), *TINY,
                 "--out", str(tmp_path / out), *flags], capsys)


# ------------------------------------------------------------------ item 9: scale
def test_huge_test_values_give_no_metrics(tmp_path, capsys):
    train, test = _pair(tmp_path, test_lines=GOOD_LINES + ["1,1e30,3:4,5,6:a"])
    code, _, err = _train(tmp_path, capsys, train, test)
    assert code == EXIT_INPUT
    _assert_one_line(err, r"test split: x: the logits are not finite for inputs of magnitude up "
                     r"to \S+e\+29 .*standardise the inputs", tmp_path,
                     [train.name, test.name, "run"])
    assert not (tmp_path / "run" / METRICS_NAME).exists()  # no accuracy reported


def test_huge_training_values_are_standardised_in_float64(tmp_path, capsys):
    train, test = _pair(tmp_path, train_lines=GOOD_LINES * 3 + ["1,1e30,3:4,5,6:a"])
    code, _, err = _train(tmp_path, capsys, train, test)
    assert code == 0 and err == ""
    raw = RawSplit(torch.tensor([[[1.0], [1e30], [2.0]]]), torch.tensor([3]), torch.tensor([0]))
    dataset = assemble_dataset("big", {"train": raw, "test": raw}, ["a"], ["c"], missing_rate=0.0,
                               seed=0, time_channel=False, intensity=False, normalise=True)
    values = dataset.train.x[0, :, 0]
    assert torch.isfinite(values).all()
    assert float(values[1]) == pytest.approx(math.sqrt(2), rel=1e-6)  # (1e30 - mean) / std


def test_values_beyond_the_dtype_are_refused_with_file_and_line(tmp_path, capsys):
    train, test = _pair(tmp_path, train_lines=GOOD_LINES + ["1,2,3:4,5e39,6:b"])
    code, _, err = _train(tmp_path, capsys, train, test)
    assert code == EXIT_INPUT
    _assert_one_line(err, rf"{train}, line 13: value of magnitude 5e\+39 does not fit float32 "
                     r"\(largest 3.4e\+38\); rescale the data", tmp_path, [train.name, test.name])


# ---------------------------------------------------------- item 11: unseen channels
def test_a_channel_never_observed_in_training_is_refused(tmp_path, capsys):
    lines = ["1,2,3:?,?,?:a", "2,3,4:?,?,?:b", "3,1,2:?,?,?:a", "0,1,0:?,?,?:b"]
    train, test = _pair(tmp_path, train_lines=lines * 2)
    code, _, err = _train(tmp_path, capsys, train, test)
    assert code == EXIT_INPUT
    _assert_one_line(err, r"Bad: channel 'dim1' is never observed in the training split but is "
                     r"in the test split, so it cannot be standardised", tmp_path,
                     [train.name, test.name])


# ------------------------------------------------------------ item 12: solver grid
def test_a_tiny_step_size_is_refused_before_allocating(tmp_path, capsys):
    train, test = _pair(tmp_path)
    code, _, err = _train(tmp_path, capsys, train, test, "--step-size", "1e-7")
    assert code == EXIT_INPUT
    _assert_one_line(err, rf"step_size: 1e-07 over times 0 to 2 makes a solver grid of 2e\+07 "
                     rf"steps, more than the limit of {MAX_GRID_STEPS}; use a larger step size",
                     tmp_path, [train.name, test.name])
    assert len(integration_grid(torch.arange(3.0), 2 / MAX_GRID_STEPS)) == MAX_GRID_STEPS + 1


# ------------------------------------------------------------- item 13: the CLI
@pytest.mark.parametrize("flags, status, pattern", [
    (["--val-fraction", "0.99"], EXIT_INPUT,
     r"val_fraction: 0.99 of the 12 training series leaves none for training; lower it"),
    (["--val-fraction", "0.05", "--patience", "1"], EXIT_INPUT,
     r"val_fraction: 0.05 of the 12 training series rounds to an empty validation split \(it is "
     r"taken class by class\), which patience needs; raise it"),
    (["--seed", str(2**70)], EXIT_FLAGS,
     r"argument --seed: expected an integer in \[0, 2\*\*63 - 1\], got '1180591620717411303424'"),
    (["--hidden", "1000000000"], EXIT_INPUT,
     r"--hidden/--ff: delta_cde with hidden_channels=1000000000, num_heads=2 has weight matrices "
     r"too large for any memory"),
    (["--hidden", "40000", "--heads", "1"], EXIT_INPUT,
     r"--hidden/--ff: delta_cde with hidden_channels=40000, num_heads=1 needs about \S+ GB for "
     r"its parameters while training, more than half of the \S+ GB of cpu memory"),
])
def test_bad_run_settings_are_one_line(flags, status, pattern, tmp_path, capsys):
    train, test = _pair(tmp_path)
    code, out, err = _train(tmp_path, capsys, train, test, *flags)
    assert code == status
    _assert_one_line(err, pattern, tmp_path, [train.name, test.name])


def test_a_tab_after_a_header_keyword_is_read():
    text = ts_text(GOOD_LINES).replace("@classLabel true", "@classLabel\ttrue")
    assert parse_ts(text, "tab.ts").class_names == ("a", "b")


def test_a_stray_latin1_byte_names_its_line(tmp_path, capsys):
    text = ts_text(GOOD_LINES).replace("@classLabel true a b", "@classLabel true a b \u00e9t\u00e9")
    good = (text + "2,3,4:5,6,7:\u00e9t\u00e9\n").encode("utf-8")
    path = tmp_path / "labels.ts"
    path.write_bytes(good)
    assert read_ts(path).class_names == ("a", "b", "\u00e9t\u00e9")  # UTF-8 labels intact
    path.write_bytes(b"# caf\xe9 (Latin-1 comment)\n" + good)
    assert read_ts(path).class_names == ("a", "b", "\u00e9t\u00e9")
    path.write_bytes(good.replace(b"2,3,4:5,6,7", b"2,3,4:5,6,7\xe9"))
    train = tmp_path / "Bad_TRAIN.ts"
    path.rename(train)
    test = tmp_path / "Bad_TEST.ts"
    test.write_text(ts_text(GOOD_LINES))
    code, _, err = _train(tmp_path, capsys, train, test)
    assert code == EXIT_INPUT
    _assert_one_line(err, rf"{train}, line 10: not valid UTF-8 at column 12 \(save the file as "
                     r"UTF-8\)", tmp_path, [train.name, test.name])


def test_timestamps_that_coincide_in_float32_are_named(tmp_path, capsys):
    stamps = "(0,1),(1e9,2),(1000000000.5,3):(0,4),(1e9,5),(1000000000.5,6)"
    train, test = _pair(tmp_path, train_text=ts_text(
        ["(0,1),(1,2),(2,3):(0,4),(1,5),(2,6):a", stamps + ":b"], stamps="true"))
    test.write_text(ts_text(["(0,1),(1,2),(2,3):(0,4),(1,5),(2,6):a"], stamps="true"))
    code, _, err = _train(tmp_path, capsys, train, test)
    assert code == EXIT_INPUT
    _assert_one_line(err, rf"{train}, line 10: timestamps 1000000000.0 and 1000000000.5 are "
                     r"distinct but coincide in float32 as time since the series' first "
                     r"timestamp; rescale the timestamps", tmp_path, [train.name, test.name])


# ------------------------------------------------------------ item 14: the Python API
def test_model_inputs_are_checked():
    torch.manual_seed(0)  # some draws saturate at 1e19 and stay finite
    model = build_model("delta_cde", 3, 2, hidden_channels=8, num_heads=2)
    x = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match=r"x: the model's weights are torch.float32 but x is "
                       r"torch.float64; convert x"):
        model(x.double())
    with pytest.raises(ValueError, match=r"x: expected at least one series, got a batch of 0"):
        model(x[:0])
    for scale, times in ((1e19, None), (1.0, torch.arange(5.0) * 1e9)):
        with pytest.raises(NonFiniteOutputError, match=r"x: the logits are not finite for inputs "
                           r"of magnitude up to .* and observation times .* apart"):
            model(x * scale, times)
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("options, pattern", [
    (dict(hidden_channels=0), r"hidden_channels: expected a positive integer, got 0"),
    (dict(ff_channels=-1), r"ff_channels: expected a positive integer or None, got -1"),
    (dict(num_layers=0), r"num_layers: expected a positive integer, got 0"),
    (dict(interpolation="spline"), r"interpolation: expected one of"),
    (dict(step_size=0.0), r"step_size: expected a positive number or None, got 0.0"),
])
def test_neural_cde_sizes_are_validated(options, pattern):
    with pytest.raises(ValueError, match=pattern):
        NeuralCDE(3, 2, **options)
    with pytest.raises(ValueError, match=r"input_channels: expected a positive integer, got 0"):
        NeuralCDE(0, 2)


def test_fit_and_evaluate_check_their_arguments():
    dataset = tiny_dataset()  # 3 classes
    wrong = build_model("delta_cde", dataset.input_channels, 2, hidden_channels=8, num_heads=2)
    with pytest.raises(ValueError, match=r"model: it has 2 outputs but the dataset 'tiny' has 3 "
                       r"classes"):
        fit(wrong, dataset, epochs=1, progress=False)
    for weights, pattern in (((1.0, -1.0, 1.0), "finite non-negative"),
                             ((0.0, 0.0, 0.0), "not all zero"),
                             ((1.0, math.nan, 1.0), "finite non-negative"),
                             (("a", 1, 1), "expected a sequence of numbers")):
        with pytest.raises(ValueError, match=rf"class_weights: .*{pattern}"):
            TrainConfig(class_weights=weights)
    with pytest.raises(ValueError, match=r"seed: expected an integer in \[0, 2\*\*63 - 1\]"):
        TrainConfig(seed=2**70)
    model = tiny_model(dataset)
    with pytest.raises(ValueError, match=r"batch_size: expected a positive integer, got 0"):
        evaluate(model, dataset.test, batch_size=0)
    with pytest.raises(ValueError, match=r"class_weights: expected 3 weights"):
        evaluate(model, dataset.test, class_weights=(1.0, 2.0))


def test_official_state_dicts_must_hold_tensors():
    model = build_model("delta_cde", 3, 2, hidden_channels=8, num_heads=2)
    with pytest.raises(ValueError, match=r"state_dict: expected a tensor for 'linear.weight', "
                       r"got list"):
        load_official_state_dict(model, {"linear.weight": [[0.0]]})
    with pytest.raises(ValueError, match=r"state_dict: expected a dict of tensors, got str"):
        load_official_state_dict(model, "weights.pt")

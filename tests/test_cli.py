"""The ``fwplab`` command: help, a training run on user ``.ts`` files, presets and
how flags, presets and defaults combine. Runs in-process (``main(argv)``) except
two subprocess checks of the console entry points."""

import json
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

from fwplab.cli import _data_spec, _model_options, _train_config, build_parser, main
from fwplab.rules import unregister_rule
from fwplab.presets import DEFAULT_PRESET, PRESETS, get_preset
from fwplab.train import CHECKPOINT_NAME, METRICS_NAME, TrainConfig, load_checkpoint
from test_train import METRICS_KEYS, one_thread, write_ts_pair  # noqa: F401 (autouse fixture)

TINY_FLAGS = ["--hidden", "8", "--heads", "2", "--batch-size", "8", "--no-progress"]


def test_console_script_shows_help():
    """The installed ``fwplab`` script; ``python -m fwplab`` runs in test_resume.py and
    (under torchrun) in test_distributed.py."""
    script = Path(sysconfig.get_path("scripts")) / "fwplab"
    result = subprocess.run([str(script), "train", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    for flag in ("--dataset", "--train", "--test", "--model", "--epochs", "--missing-rate",
                 "--seed", "--device", "--out", "--preset", "--resume", "--adjoint"):
        assert flag in result.stdout


def test_every_command_has_help(capsys):
    for argv in (["--help"], ["train", "--help"], ["presets", "--help"]):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 0
        assert "usage: fwplab" in capsys.readouterr().out


def test_train_on_a_user_ts_pair_with_missing_values_and_variable_lengths(tmp_path, capsys):
    train, test = write_ts_pair(tmp_path)
    out = tmp_path / "run"
    code = main(["train", "--train", str(train), "--test", str(test), "--epochs", "2",
                 "--missing-rate", "0.3", "--seed", "1", "--device", "cpu", "--out", str(out),
                 *TINY_FLAGS])
    assert code == 0
    metrics = json.loads((out / METRICS_NAME).read_text())
    assert METRICS_KEYS <= set(metrics)
    assert metrics["dataset"] == "Tiny" and metrics["model"] == "delta_cde"
    assert metrics["epochs"] == 2 and metrics["train_config"]["seed"] == 1
    assert metrics["model_config"]["input_channels"] == 3  # time + 2 dimensions
    assert metrics["run"]["data"]["missing_rate"] == 0.3
    assert (out / CHECKPOINT_NAME).is_file()
    assert f"test accuracy {metrics['test_accuracy']:.4f}" in capsys.readouterr().out


def test_the_neural_cde_baseline_trains_from_the_command_line(tmp_path):
    train, test = write_ts_pair(tmp_path, classes="ab")
    out = tmp_path / "ncde"
    flags = [flag for flag in TINY_FLAGS if flag not in ("--heads", "2")]  # no heads
    assert main(["train", "--train", str(train), "--test", str(test), "--model", "ncde",
                 "--epochs", "1", "--out", str(out), *flags]) == 0
    metrics = json.loads((out / METRICS_NAME).read_text())
    assert metrics["model"] == "ncde" and "test_auroc" in metrics  # two classes: AUROC too


def test_heads_for_a_model_without_heads_is_one_clear_error(tmp_path, capsys):
    train, test = write_ts_pair(tmp_path)
    for model in ("ncde", "gru"):
        assert main(["train", "--train", str(train), "--test", str(test), "--model", model,
                     "--out", str(tmp_path / model), *TINY_FLAGS]) == 1
        assert f"--heads: {model} has no fast-weight heads" in capsys.readouterr().err
        assert not (tmp_path / model).exists()


@pytest.mark.parametrize("model", ["gru", "discrete_delta"])
def test_the_discrete_baselines_train_and_resume_from_the_command_line(tmp_path, model):
    train, test = write_ts_pair(tmp_path)
    out = tmp_path / model
    flags = [flag for flag in TINY_FLAGS if flag not in ("--heads", "2")]
    assert main(["train", "--train", str(train), "--test", str(test), "--model", model,
                 "--epochs", "2", "--out", str(out), *flags]) == 0
    metrics = json.loads((out / METRICS_NAME).read_text())
    assert metrics["model"] == model and metrics["epochs"] == 2
    assert metrics["model_config"]["hidden_channels"] == 8
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0  # finished: no-op


def test_rules_from_a_file_adds_their_models(tmp_path):
    rules = tmp_path / "my_rules.py"
    rules.write_text(
        "from fwplab.rules import register_rule, RULES\n"
        "if 'cli_test_hebb' not in RULES:\n"
        "    register_rule('cli_test_hebb', lambda W, k, v, b: (b * v).unsqueeze(-1) * "
        "k.unsqueeze(-2))\n")
    train, test = write_ts_pair(tmp_path)
    out = tmp_path / "rule"
    try:
        assert main(["train", "--rules-from", str(rules), "--train", str(train), "--test",
                     str(test), "--model", "cli_test_hebb_cde", "--epochs", "1", "--out",
                     str(out), *TINY_FLAGS]) == 0
    finally:
        unregister_rule("cli_test_hebb")
    assert json.loads((out / METRICS_NAME).read_text())["model"] == "cli_test_hebb_cde"
    assert main(["train", "--rules-from", str(tmp_path / "none.py")]) == 1


def test_presets_are_listed_and_valid(capsys):
    assert main(["presets"]) == 0
    listing = capsys.readouterr().out
    for name, preset in PRESETS.items():
        assert name in listing
        TrainConfig(**preset.train)  # every preset's training settings are valid
    speech = get_preset("speech-commands")
    assert speech.model_options == dict(hidden_channels=80, num_heads=4, ff_channels=320,
                                        adjoint=True)
    assert speech.train["batch_size"] == 1024 and speech.train["grad_scale"] == 100
    assert speech.train["lr"] == pytest.approx(5e-5 * 1024 / 32)  # official base_lr * batch / 32
    worms = get_preset("eigenworms")
    assert worms.data == dict(logsig_depth=1, logsig_step=4)
    assert worms.model_options["hidden_channels"] == 128 and worms.train["lr"] == 1e-4
    assert get_preset("sepsis-oi").data == {"intensity": True}
    assert get_preset("sepsis-no-oi").data == {"intensity": False}
    with pytest.raises(ValueError, match="unknown preset 'nope'; expected one of"):
        get_preset("nope")


def test_flags_override_the_preset_which_overrides_the_defaults():
    args = build_parser().parse_args(["train", "--preset", "speech-commands", "--lr", "1e-3",
                                      "--heads", "8", "--no-adjoint"])
    preset = get_preset(args.preset)
    config = _train_config(args, preset)
    assert config.lr == 1e-3 and config.batch_size == 1024 and config.grad_scale == 100
    assert config.weight_decay == 0.0 and config.patience is None  # the preset, the default
    assert _model_options(args, preset, "delta_cde") == dict(
        hidden_channels=80, num_heads=8, ff_channels=320, adjoint=False)
    assert _data_spec(args, preset, seed=0)["dataset"] == "speech-commands"


def test_without_a_dataset_option_the_shipped_japanese_vowels_is_used():
    args = build_parser().parse_args(["train"])
    preset = get_preset(DEFAULT_PRESET)
    spec = _data_spec(args, preset, seed=0)
    assert spec == {"missing_rate": 0.0, "seed": 0, "dataset": "japanese-vowels", "options": {}}
    assert _model_options(args, preset, "delta_cde") == dict(hidden_channels=64, num_heads=16)
    assert _train_config(args, preset) == TrainConfig(**preset.train)


#: A crafted pair: 5 training series (lengths 3-6, 5 values '?'), 2 test series (1 '?').
CRAFTED = {
    "TRAIN": ["1,2,3:1,?,3:up", "1,?,3,4:4,3,2,1:down", "1,2,?,4,5:5,?,3,2,1:up",
              "4,3,2,1:1,2,3,4:down", "1,2,3,4,5,6:6,5,?,3,2,1:up"],
    "TEST": ["1,2,?,4,5:1,2,3,4,5:up", "5,4,3,2,1:5,4,3,2,1:down"],
}


def _crafted_pair(folder: Path) -> tuple[Path, Path]:
    header = ["@problemName Craft", "@timeStamps false", "@missing true", "@univariate false",
              "@dimensions 2", "@equalLength false", "@classLabel true up down", "@data"]
    paths = []
    for part, lines in CRAFTED.items():
        path = folder / f"Craft_{part}.ts"
        path.write_text("\n".join(header + lines) + "\n")
        paths.append(path)
    return paths[0], paths[1]


def test_the_data_summary_counts_missing_values_lengths_and_classes(tmp_path, capsys):
    train, test = _crafted_pair(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--train", str(train), "--test", str(test), "--epochs", "1",
                 "--out", str(out), *TINY_FLAGS]) == 0
    summary = [line for line in capsys.readouterr().out.splitlines()
               if line.startswith("fwplab train: data:")]
    # lengths 3, 4, 5, 4, 6 | 5, 5; 2 channels x 32 steps = 64 values, 5 + 1 missing
    assert summary == ["fwplab train: data: 5 train + 2 test series, lengths 3/5/6 "
                       "(min/median/max), 6 of 64 values missing (9.4%), 2 classes: up (3), "
                       "down (2) (training series)"]
    metrics = json.loads((out / METRICS_NAME).read_text())
    assert metrics["class_names"] == metrics["run"]["class_names"] == ["up", "down"]
    assert load_checkpoint(out)["class_names"] == ["up", "down"]
    assert metrics["time_limited"] is False


def test_without_a_terminal_a_run_prints_a_few_epoch_lines_not_one_per_step(tmp_path, capsys):
    train, test = write_ts_pair(tmp_path)
    out = tmp_path / "run"
    flags = [flag for flag in TINY_FLAGS if flag != "--no-progress"]  # progress on
    assert main(["train", "--train", str(train), "--test", str(test), "--epochs", "20",
                 "--warped-copies", "0", "--out", str(out), *flags]) == 0  # 3 steps per epoch
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if not line.startswith("fwplab: ")]  # kernel
    assert len(lines) == 10, lines  # every second epoch of 20, not 60 steps
    assert [line.split(", ")[0] for line in lines] == [
        f"delta_cde on Tiny: epoch {epoch}/20" for epoch in range(2, 21, 2)]
    history = json.loads((out / METRICS_NAME).read_text())["history"]
    assert [record["epoch"] for record in history] == list(range(1, 21))  # one per epoch


def test_a_time_limit_that_cuts_training_says_so_and_is_recorded(tmp_path, capsys):
    train, test = write_ts_pair(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--train", str(train), "--test", str(test), "--epochs", "3",
                 "--ensemble", "2", "--time-limit", "1e-9", "--out", str(out),
                 *TINY_FLAGS]) == 0
    captured = capsys.readouterr()
    assert "fwplab: TIME LIMIT: training stopped after epoch 1 of 3" in captured.err
    assert "TIME LIMIT: --time-limit 1e-09 s reached; the ensemble holds 1 of 2 models" \
        in captured.out
    metrics = json.loads((out / METRICS_NAME).read_text())
    assert metrics["time_limited"] is True and metrics["stopped_early"] is True
    assert metrics["epochs"] == 1 and "ensemble" not in metrics
    assert not (out / "ensemble.pt").exists()


def test_an_ensemble_file_names_the_classes(tmp_path):
    train, test = write_ts_pair(tmp_path, classes="pq")
    out = tmp_path / "run"
    assert main(["train", "--train", str(train), "--test", str(test), "--epochs", "1",
                 "--ensemble", "2", "--out", str(out), *TINY_FLAGS]) == 0
    assert torch.load(out / "ensemble.pt", weights_only=True)["class_names"] == ["p", "q"]
    assert json.loads((out / METRICS_NAME).read_text())["class_names"] == ["p", "q"]

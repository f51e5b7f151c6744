"""The ``fwplab`` command: help, a training run on user ``.ts`` files, presets and
how flags, presets and defaults combine. Runs in-process (``main(argv)``) except
two subprocess checks of the console entry points."""

import json
import subprocess
import sysconfig
from pathlib import Path

import pytest

from fwplab.cli import _data_spec, _model_options, _train_config, build_parser, main
from fwplab.rules import unregister_rule
from fwplab.presets import DEFAULT_PRESET, PRESETS, get_preset
from fwplab.train import CHECKPOINT_NAME, METRICS_NAME, TrainConfig
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

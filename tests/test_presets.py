"""The paper presets: their settings follow the official READMEs (camera-ready sepsis
runs), every preset builds its model and trains with valid settings, and the command
lines written by :func:`fwplab.presets.preset_command` parse to the preset."""

import statistics

import pytest
import torch

from fwplab.cli import _model_options, _train_config, build_parser
from fwplab.models import build_model, count_parameters
from fwplab.presets import PRESETS, get_preset, preset_argv, preset_command
from fwplab.train import TrainConfig

#: (hidden, heads, ff, post_tanh, v_layernorm, effective lr) of each paper preset, from the
#: official READMEs (lr = base_lr * 1024 / 32; ff None means the default 4 * hidden).
OFFICIAL = {
    "speech-commands": (80, 4, 320, False, False, 5e-5 * 32),
    "sepsis-no-oi": (160, 32, None, False, True, 4e-5 * 32),
    "sepsis-oi": (80, 16, 64, True, False, 3e-5 * 32),
    "eigenworms": (128, 16, 64, True, False, 1e-4),
}
#: Input channels and classes of each preset's dataset (time channel included).
SHAPES = {"japanese-vowels": (13, 9), "speech-commands": (21, 10), "sepsis-no-oi": (35, 2),
          "sepsis-oi": (69, 2), "eigenworms": (7, 5)}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_paper_presets_match_the_official_commands(name):
    hidden, heads, ff, post_tanh, v_layernorm, lr = OFFICIAL[name]
    preset = get_preset(name)
    options = preset.model_options
    assert (options["hidden_channels"], options["num_heads"]) == (hidden, heads)
    assert options.get("ff_channels") == ff
    assert options.get("post_tanh", False) is post_tanh
    assert options.get("v_layernorm", False) is v_layernorm
    assert options["adjoint"] is True
    assert preset.train["lr"] == pytest.approx(lr, rel=1e-12)
    assert preset.train["batch_size"] == 1024
    assert preset.train["weight_decay"] == 0.0 and preset.train["grad_clip"] is None
    assert preset.source.startswith("IDSIA/neuraldiffeq-fwp") and preset.differences


def test_the_sepsis_presets_are_the_camera_ready_runs():
    no_oi, oi = get_preset("sepsis-no-oi"), get_preset("sepsis-oi")
    assert (no_oi.data, oi.data) == ({"intensity": False}, {"intensity": True})
    assert no_oi.train["epochs"] == oi.train["epochs"] == 200
    assert no_oi.train["class_weights"] == oi.train["class_weights"] == (1.0, 10.0)
    assert no_oi.train["grad_scale"] == oi.train["grad_scale"] == 100.0
    assert "4e-05" in no_oi.source and "3e-05" in oi.source and "camera-ready" in oi.source


def test_the_eigenworms_preset_and_its_reported_result():
    worms = get_preset("eigenworms")
    assert worms.data == dict(logsig_depth=1, logsig_step=4)
    assert worms.model_options["interpolation"] == "linear"
    assert worms.train["plateau_patience"] == 15 and worms.train["patience"] == 60
    assert worms.train.get("grad_scale", 1.0) == 1.0  # a learning-rate factor in the original
    reported = worms.reported
    assert len(reported.per_seed) == 5
    # The README's mean (std) are the population statistics of its five seeds.
    assert round(statistics.fmean(reported.per_seed), 1) == reported.mean == 91.8
    assert round(statistics.pstdev(reported.per_seed), 1) == reported.std == 3.4
    assert all(abs(value * 39 / 100 - round(value * 39 / 100)) < 1e-9
               for value in reported.per_seed)  # accuracies on a 39-series test split


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_its_model_and_its_training_settings(name):
    preset = get_preset(name)
    TrainConfig(**preset.train)
    channels, classes = SHAPES[name]
    torch.manual_seed(0)
    model = build_model(preset.model, channels, classes, **preset.model_options)
    assert count_parameters(model) > 0
    assert model.config["name"] == preset.model
    x = torch.randn(1, 5, channels)
    x[..., 0] = torch.arange(5.0)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (1, classes) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_commands_parse_to_the_preset(name):
    preset = get_preset(name)
    command = preset_command(name)
    assert command == f"fwplab train --preset {name} --device cuda"
    args = build_parser().parse_args(command.split()[1:])
    assert (args.preset, args.device) == (name, "cuda")
    assert _train_config(args, preset) == TrainConfig(**preset.train)
    assert _model_options(args, preset, preset.model) == preset.model_options


def test_preset_argv_writes_extra_flags():
    argv = preset_argv("speech-commands", device=None, epochs=3, batch_size=16, adjoint=False)
    assert argv == ["train", "--preset", "speech-commands", "--epochs", "3", "--batch-size",
                    "16", "--no-adjoint"]
    args = build_parser().parse_args(argv)
    config = _train_config(args, get_preset("speech-commands"))
    assert (config.epochs, config.batch_size, args.adjoint) == (3, 16, False)
    with pytest.raises(ValueError, match="unknown preset 'speech'"):
        preset_argv("speech")

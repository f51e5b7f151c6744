"""Exercises of notebook 7, "Reproducing the paper": reading the presets."""

from __future__ import annotations

from typing import Any, Optional

from ..cli import _model_options, _train_config, build_parser
from ..models import build_model, count_parameters
from ..presets import get_preset, preset_argv
from ..train import TrainConfig
from . import as_count, as_number, close_number, exercise, near_miss

#: Input channels (time and 34 measurements) and classes of the sepsis data without OI.
SEPSIS_NO_OI_CHANNELS, SEPSIS_CLASSES = 35, 2


#: The smaller batch of exercise 07.sepsis-lr (a GPU that holds only half of the official one).
SMALLER_BATCH = 512
#: The camera-ready official base rate of the sepsis run with observational intensity.
SEPSIS_OI_BASE_LR = 3e-5


def _sepsis_oi_lr_at_smaller_batch() -> float:
    official = get_preset("sepsis-oi").train
    return official["lr"] * SMALLER_BATCH / official["batch_size"]


@exercise(
    "07.sepsis-lr",
    f"The official sepsis run with observational intensity uses --base_lr {SEPSIS_OI_BASE_LR:g} "
    f"and batches of 1024. Your GPU holds only batches of {SMALLER_BATCH}. Which learning rate "
    "does the official code's rule give the optimiser at that batch size? Give a number.",
    solution=_sepsis_oi_lr_at_smaller_batch,
    wrong_answers=lambda: [SEPSIS_OI_BASE_LR, get_preset("sepsis-oi").train["lr"],
                           SEPSIS_OI_BASE_LR * SMALLER_BATCH, 1e-5 * SMALLER_BATCH / 32],
)
def _judge_sepsis_lr(answer: Any) -> Optional[str]:
    value = as_number(answer)
    if close_number(value, _sepsis_oi_lr_at_smaller_batch()):
        return None
    if near_miss(value, _sepsis_oi_lr_at_smaller_batch()):
        return near_miss(value, _sepsis_oi_lr_at_smaller_batch())
    if close_number(value, SEPSIS_OI_BASE_LR):
        return "that is the base rate; the official code scales it with the batch size"
    if close_number(value, get_preset("sepsis-oi").train["lr"]):
        return "that is the rate at batches of 1024; the rate follows the batch size"
    if close_number(value, 1e-5 * SMALLER_BATCH / 32):
        return "1e-5 was the base rate of an older README; the camera-ready one differs"
    return "the official rate is base_lr * batch_size / 32"


def _sepsis_no_oi_parameters() -> int:
    preset = get_preset("sepsis-no-oi")
    model = build_model(preset.model, SEPSIS_NO_OI_CHANNELS, SEPSIS_CLASSES,
                        **preset.model_options)
    return count_parameters(model)


def _parameters_without(option: str, value: Any) -> int:
    options = dict(get_preset("sepsis-no-oi").model_options, **{option: value})
    return count_parameters(build_model("delta_cde", SEPSIS_NO_OI_CHANNELS, SEPSIS_CLASSES,
                                        **options))


@exercise(
    "07.parameters",
    "How many trainable parameters has the model of the sepsis-no-oi preset, built for "
    f"{SEPSIS_NO_OI_CHANNELS} input channels (time and 34 measurements) and "
    f"{SEPSIS_CLASSES} classes? Give an integer.",
    solution=_sepsis_no_oi_parameters,
    wrong_answers=lambda: [_parameters_without("v_layernorm", False),
                           _parameters_without("num_heads", 16),
                           _sepsis_no_oi_parameters() - 2],
)
def _judge_parameters(answer: Any) -> Optional[str]:
    value = as_count(answer)
    if value is None:
        return f"expected a whole number of parameters, got {answer!r}"
    if value == _sepsis_no_oi_parameters():
        return None
    if value == _parameters_without("v_layernorm", False):
        return "the preset also normalises the values (v_layernorm): count those layers too"
    if value == _parameters_without("num_heads", 16):
        return "that is the older 16-head setting; read the preset's num_heads"
    return ("build the model with fwplab.build_model and the preset's model_options, then "
            "count with fwplab.models.count_parameters")


def _eigenworms_seed3() -> list[str]:
    return preset_argv("eigenworms", device="cuda", seed=3)


@exercise(
    "07.command",
    "Write the arguments of `fwplab` (a list of strings, without the program name) that "
    "train the EigenWorms preset on a CUDA GPU with seed 3, every other setting from the "
    "preset.",
    solution=_eigenworms_seed3,
    wrong_answers=lambda: [preset_argv("eigenworms", device="cuda"),
                           preset_argv("eigenworms", device="cpu", seed=3),
                           ["train", "--preset", "eigenworm", "--device", "cuda", "--seed", "3"],
                           preset_argv("eigenworms", device="cuda", seed=3, epochs=100)],
)
def _judge_command(answer: Any) -> Optional[str]:
    if isinstance(answer, str):
        answer = answer.split()
    argv = [str(item) for item in answer]
    if argv[:1] == ["fwplab"]:
        argv = argv[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        return "fwplab's parser refuses these arguments (run `fwplab train --help`)"
    if args.command != "train" or args.preset != "eigenworms":
        return "use the train command with --preset and the preset's exact name"
    if args.device != "cuda":
        return "choose the GPU with --device"
    preset = get_preset("eigenworms")
    config = _train_config(args, preset)
    if config.seed != 3:
        return "the seed is a flag of its own"
    if (config != TrainConfig(**dict(preset.train, seed=3))
            or _model_options(args, preset, args.model or preset.model) != preset.model_options
            or args.dataset is not None or args.model is not None):
        return "only the device and the seed should differ from the preset"
    return None


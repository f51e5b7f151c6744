"""The ``fwplab`` command: ``fwplab train``, ``predict``, ``compare``, ``baseline``, ``rl``
and ``presets``.

::

    fwplab train                                   # delta_cde on the shipped JapaneseVowels
    fwplab train --missing-rate 0.5 --model ncde   # irregular sampling, the baseline
    fwplab train --train A_TRAIN.ts --test A_TEST.ts --out runs/a
    fwplab train --preset speech-commands --device cuda
    fwplab train --resume runs/a                   # continue an interrupted run
    fwplab predict runs/a --data NEW.ts --out predictions.csv
    fwplab train --model gru                       # a discrete baseline (gru, discrete_delta)
    fwplab compare --models delta_cde,gru --data japanese-vowels A_TRAIN.ts:A_TEST.ts \
        --seeds 0,1 --out runs/cmp                 # a grid, resumable (see fwplab.compare)
    fwplab baseline --model rocket --train A_TRAIN.ts --test A_TEST.ts --out runs/a-rocket
    torchrun --nproc_per_node=4 -m fwplab train --preset speech-commands

Settings come from, in this order of precedence: explicit flags, the preset
(``--preset``; default ``japanese-vowels``), :class:`fwplab.train.TrainConfig`.
Data without a preset of its own (``--train/--test``, or a ``--dataset`` no preset
trains on) gets settings adapted to it instead of a preset's (validation split,
batch size, each series on its own scale when amplitudes spread widely, sines and
cosines of time for a short univariate series (smoothed first when noise dominates its
increments), log-signature windows for long series with delayed copies of a univariate
one and time counted in windows, warped copies of the training series when a class has
few (and, for long series, instead of a validation split), warm-up, patience, a step budget
and an ensemble size from the data's size, no clock;
see :mod:`fwplab.adaptive`, :func:`fwplab.presets.adaptive_data_options`,
:func:`~fwplab.presets.adaptive_train_settings` and :func:`~fwplab.presets.adaptive_budget`);
each choice is printed once and stored under ``run.adaptive`` in ``metrics.json``.
Bad input ends the command with exit status 1 (2 for bad flags) and one line on
stderr naming the file or argument and the problem; nothing is written.

A run folder has one writer at a time: a second ``fwplab train`` on the same
``--out`` (or a ``--resume`` while the run is still going) is refused in one line.
Ctrl-C, SIGTERM and SIGHUP stop a run cleanly (exit status 128 + the signal's
number) and say whether a checkpoint was kept to ``--resume`` from; ``--resume``
refuses data that changed since the run started unless ``--allow-changed-data``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from .presets import (
    DATA_OPTIONS,
    DEFAULT_PRESET,
    LONG_SERIES,
    PRESETS,
    SCALE_SPREAD_LIMIT,
    SMOOTHING_WIDTH,
    Preset,
    get_preset,
    preset_for_dataset,
)

# Nothing here imports torch at module level: ``fwplab --help`` and argument errors answer
# at once; each command imports what it needs when it runs.

__all__ = ["main", "build_parser"]

RUNS_DIR = "runs"
#: File of an ensemble's members in the run folder (as fwplab.adaptive.ENSEMBLE_NAME).
ENSEMBLE_NAME = "ensemble.pt"
#: Files of a run folder (as fwplab.train.CHECKPOINT_NAME and METRICS_NAME).
CHECKPOINT_NAME, METRICS_NAME = "checkpoint.pt", "metrics.json"
#: Largest seed (torch's generators take 64 bits; as fwplab.train.MAX_SEED).
MAX_SEED = 2**63 - 1
#: Exit status of a command stopped by bad input or a failed run (argparse uses 2 for bad flags).
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
#: Signals that stop a run like Ctrl-C (cleanly: no half-written files), exit status 128 + number.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP")
                     if hasattr(signal, name))

#: ``fwplab train`` flags and the build_model keyword each one sets.
_MODEL_FLAGS = {
    "hidden": "hidden_channels",
    "heads": "num_heads",
    "ff": "ff_channels",
    "interpolation": "interpolation",
    "method": "method",
    "step_size": "step_size",
    "adjoint": "adjoint",
    "post_tanh": "post_tanh",
    "v_layernorm": "v_layernorm",
    "dropout": "dropout",
}
#: ``fwplab train`` flags and the TrainConfig field each one sets.
_TRAIN_FLAGS = {
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "weight_decay": "weight_decay",
    "schedule": "schedule",
    "grad_clip": "grad_clip",
    "grad_scale": "grad_scale",
    "val_fraction": "val_fraction",
    "patience": "patience",
    "seed": "seed",
}
#: Flags that may accompany ``--resume`` (everything else comes from the checkpoint).
_RESUME_FLAGS = ("resume", "device", "no_progress", "allow_changed_data", "rules_from")
#: Rule files already run in this process (a second run would register the rules twice).
_LOADED_RULE_FILES: set[str] = set()


#: The commands (the parser of each other one is a placeholder until it is used).
_COMMANDS = ("train", "predict", "compare", "baseline", "rl", "presets")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") \
            from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _smoothing_width(text: str) -> int:
    value = _count(text)
    if value != 0 and (value < 3 or value % 2 == 0):
        raise argparse.ArgumentTypeError(f"expected 0 or an odd number >= 3, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**63 - 1], got {text!r}")
    return value


def _folder(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a folder name, got {text!r}")
    return text


def _number(low: float, high: Optional[float] = None, *, include_low: bool = False):
    """An argparse type for a finite float in ``(low, high)`` (``[low, ...`` with include_low)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        inside = (value >= low if include_low else value > low) and (high is None or value < high)
        if not inside or value != value or value in (float("inf"), float("-inf")):
            bounds = f"{'[' if include_low else '('}{low}, {high if high is not None else 'inf'})"
            raise argparse.ArgumentTypeError(f"expected a number in {bounds}, got {text!r}")
        return value
    return parse


def _lazy_choice(what: str, names: Any) -> Any:
    """An argparse type checking a name against ``names()`` when a value is given (so that
    building the parser imports nothing heavy); the error lists the names."""
    def parse(text: str) -> str:
        known = list(names())
        if text not in known:
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from "
                                             f"{', '.join(known)})")
        return text
    parse.__name__ = what
    return parse


def _dataset_names() -> list[str]:
    from .data import DATASET_NAMES
    return list(DATASET_NAMES)


def _model_names() -> list[str]:
    from .models import MODELS
    return list(MODELS)


def _baseline_names() -> list[str]:
    from .compare import CLASSIFIER_BASELINES
    return list(CLASSIFIER_BASELINES)


def _interpolations() -> list[str]:
    from .paths import INTERPOLATIONS
    return sorted(INTERPOLATIONS)


#: What ``fwplab --help`` says of the commands whose parsers are built only when used.
_LAZY_COMMANDS = {
    "compare": "train models x data sets (or world models x environments) x seeds; a "
               "resumable grid (fwplab compare --help)",
    "rl": "train an agent in a continuous-time environment (fwplab rl --help)",
}


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The argument parser of the ``fwplab`` command.

    Args:
        command: the command about to run; the parsers of ``compare`` and ``rl`` (which
            import torch) are built only for that command or when None (all of them).
    """
    parser = _Parser(prog="fwplab", description="Continuous-time Fast Weight Programmers: "
                     "train the paper's models on irregularly sampled time series.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    train = commands.add_parser(
        "train", help="train a model and write metrics.json and a checkpoint",
        description="Train a model; write DIR/metrics.json and DIR/checkpoint.pt. Without a "
                    "dataset option it trains delta_cde on the shipped JapaneseVowels.",
        epilog="Multi-process: torchrun --nproc_per_node=N -m fwplab train ... "
               "(gloo on CPU, nccl on GPU; --batch-size is the global batch).")

    data = train.add_argument_group("data")
    data.add_argument("--dataset", type=_lazy_choice("dataset", _dataset_names),
                      metavar="NAME", help="a named dataset (japanese-vowels, spirals, "
                      "speech-commands, sepsis, character-trajectories, eigenworms)")
    data.add_argument("--train", metavar="FILE", help="a UEA/UCR .ts TRAIN file (with --test)")
    data.add_argument("--test", metavar="FILE", help="the matching .ts TEST file")
    data.add_argument("--data-root", metavar="DIR",
                      help="where a downloaded dataset's raw files are (default: the cache)")
    data.add_argument("--missing-rate", type=_number(0.0, 1.0, include_low=True), metavar="R",
                      help="drop this fraction of each series' observations (default 0)")
    data.add_argument("--intensity", action=argparse.BooleanOptionalAction, default=None,
                      help="add observational-intensity channels")
    data.add_argument("--warped-copies", type=_count, metavar="K",
                      help="add K randomly time-warped and scaled copies of every training "
                           "series; only for data without a preset (default: up to 4 when "
                           "a class has fewer than 20 series and nothing validates; 4 instead "
                           "of a validation split for long series; else 0)")
    data.add_argument("--scale", choices=("series", "channel"),
                      help="series: standardise each series on its own and keep its log-scale "
                           "as a channel; channel: one mean and std per channel; only for "
                           "data without a preset (default: series when the series' "
                           f"amplitudes spread more than {SCALE_SPREAD_LIMIT:g}-fold)")
    data.add_argument("--smoothing", type=_smoothing_width, metavar="W",
                      help="replace the data channels by their moving average of W "
                           "observations (odd, >= 3; 0: none); only for data without a preset "
                           f"(default: {SMOOTHING_WIDTH} for univariate series of at most "
                           f"{LONG_SERIES} steps whose increments are mostly noise, else 0)")
    data.add_argument("--time-features", action=argparse.BooleanOptionalAction, default=None,
                      help="add sines and cosines of time as channels; only for data without "
                           f"a preset (default: on for univariate series of at most "
                           f"{LONG_SERIES} steps)")
    data.add_argument("--val-fraction", type=_number(0.0, 1.0, include_low=True), metavar="F",
                      help="hold out this fraction of the training data for model selection "
                           "when the dataset has no validation split (default: a preset's "
                           "value; for data without a preset 0.2 when every class has 5 or "
                           "more series and that makes 40 or more, unless the series are long "
                           "(warped copies train instead), else 0)")

    model = train.add_argument_group("model")
    model.add_argument("--model", type=_lazy_choice("model", _model_names), metavar="NAME",
                       help="default delta_cde (fwplab.MODELS: the continuous FWPs NAME_cde "
                            "and NAME_ode of each rule, ncde, gru, discrete_delta, ...)")
    model.add_argument("--hidden", type=_positive_int, metavar="H", help="hidden channels")
    model.add_argument("--heads", type=_positive_int, metavar="N", help="fast weight heads")
    model.add_argument("--ff", type=_positive_int, metavar="F",
                       help="feed-forward width (default 4 H)")
    model.add_argument("--interpolation", type=_lazy_choice("interpolation",
                                                             _interpolations),
                       metavar="PATH", help="control path (default natural_cubic)")
    model.add_argument("--method", help="torchdiffeq method (default rk4)")
    model.add_argument("--step-size", type=_number(0.0), metavar="S",
                       help="largest solver step (default: the smallest observation gap)")
    model.add_argument("--adjoint", action=argparse.BooleanOptionalAction, default=None,
                       help="continuous adjoint gradients (default: plain backprop)")
    model.add_argument("--post-tanh", action=argparse.BooleanOptionalAction, default=None,
                       help="delta rule: squash after the subtraction")
    model.add_argument("--v-layernorm", action=argparse.BooleanOptionalAction, default=None,
                       help="CDE models: LayerNorm on the values")
    model.add_argument("--dropout", type=_number(0.0, 1.0, include_low=True), metavar="P")

    training = train.add_argument_group("training")
    training.add_argument("--preset", choices=list(PRESETS), metavar="NAME",
                          help=f"named settings: {', '.join(PRESETS)} (default {DEFAULT_PRESET}; "
                               "see fwplab presets)")
    training.add_argument("--epochs", type=_positive_int, metavar="N")
    training.add_argument("--batch-size", type=_positive_int, metavar="B")
    training.add_argument("--lr", type=_number(0.0), metavar="LR", help="peak learning rate")
    training.add_argument("--weight-decay", type=_number(0.0, include_low=True), metavar="WD")
    training.add_argument("--schedule", choices=("cosine", "constant", "plateau"))
    training.add_argument("--grad-clip", type=_number(0.0), metavar="C",
                          help="clip the gradient norm")
    training.add_argument("--grad-scale", type=_number(0.0), metavar="G",
                          help="gradient factor of the final layer (the paper's --grad_scale)")
    training.add_argument("--patience", type=_positive_int, metavar="N",
                          help="stop after N epochs without a better validation score")
    training.add_argument("--seed", type=_seed, metavar="S", help="default 0")
    training.add_argument("--ensemble", type=_positive_int, metavar="K",
                          help="train K models (seeds S, S+1, ...) and average their class "
                               "probabilities; only for data without a preset (default: as many "
                               "as the work budget holds for the data's size, at most 5; 1 when "
                               "--epochs is given)")
    training.add_argument("--time-limit", type=_number(0.0), metavar="SECONDS",
                          help="stop training after SECONDS (at the end of an epoch; the whole "
                               "ensemble) and say so; off by default, so that results do not "
                               "depend on the machine's speed")

    run = train.add_argument_group("run")
    run.add_argument("--device", metavar="DEVICE",
                     help="cpu or cuda (default: cuda when available)")
    run.add_argument("--out", metavar="DIR", type=_folder,
                     help=f"run folder (default {RUNS_DIR}/DATASET-MODEL-TIME-PID)")
    run.add_argument("--resume", metavar="DIR", type=_folder, help="continue the run in DIR")
    run.add_argument("--allow-changed-data", action="store_true", default=None,
                     help="with --resume: continue although the data differs from the data "
                          "the run started on")
    run.add_argument("--no-progress", action="store_true", default=None,
                     help="no progress bar")
    _add_rules_from(train, "; give it again with --resume")

    predict = commands.add_parser(
        "predict", help="apply a trained run (one model or an ensemble) to new series",
        description="Apply the run in RUN to the series of a .ts file, with the run's "
                    "transforms and time unit; write one row per series: its class and the "
                    "probability of every class.")
    predict.add_argument("run", metavar="RUN", type=_folder, help="a fwplab train run folder")
    predict.add_argument("--data", metavar="FILE", required=True,
                         help="a .ts file (labels optional)")
    predict.add_argument("--out", metavar="CSV", help="write the table there (default: stdout)")
    predict.add_argument("--device", metavar="DEVICE", help="cpu (default) or cuda")
    _add_rules_from(predict)

    if command in (None, "compare"):
        from . import compare as _compare
        _add_rules_from(_compare.add_parser(commands, _model_names(), _positive_int))
    else:
        commands.add_parser("compare", help=_LAZY_COMMANDS["compare"], add_help=False)
    baseline = commands.add_parser(
        "baseline", help="fit a classifier the field compares against (rocket: MiniRocket)",
        description="Fit a baseline classifier on the training series (no training loop) and "
                    "classify the test series; write DIR/metrics.json (test and train "
                    "accuracy, seed, seconds). fwplab compare runs it as a cell with --models "
                    "...,rocket. Needs pip install 'fwplab[baselines]'.")
    baseline.add_argument("--model", required=True, metavar="NAME",
                          type=_lazy_choice("baseline", _baseline_names),
                          help="rocket: MiniRocket and a ridge classifier (aeon)")
    baseline.add_argument("--dataset", type=_lazy_choice("dataset", _dataset_names),
                          metavar="NAME", help="a named dataset (as fwplab train --dataset)")
    baseline.add_argument("--train", metavar="FILE", help="a TRAIN .ts file (with --test)")
    baseline.add_argument("--test", metavar="FILE", help="a TEST .ts file (with --train)")
    baseline.add_argument("--missing-rate", type=_number(0.0, 1.0, include_low=True),
                          default=0.0, metavar="R",
                          help="drop this fraction of each series' observations (default 0)")
    baseline.add_argument("--seed", type=_seed, default=0, help="seed (default 0)")
    baseline.add_argument("--out", type=_folder, required=True, metavar="DIR",
                          help="the folder of metrics.json")

    if command in (None, "rl"):
        from .rl import command as _rl_command
        _rl_command.add_parser(commands, _positive_int, _seed)
    else:
        commands.add_parser("rl", help=_LAZY_COMMANDS["rl"], add_help=False)
    commands.add_parser("presets", help="list the named presets",
                        description="List the presets of fwplab train --preset and "
                                    "fwplab rl --preset.")
    return parser


def _add_rules_from(parser: argparse.ArgumentParser, again: str = "") -> None:
    parser.add_argument("--rules-from", metavar="FILE", action="append",
                        help="a Python file that registers learning rules "
                             "(fwplab.rules.register_rule); their NAME_cde and NAME_ode models "
                             f"can then be used (repeatable{again})")


def _rule_files(argv: Sequence[str]) -> list[str]:
    """The values of every ``--rules-from`` in ``argv`` (before parsing: they add models)."""
    files = [value for flag, value in zip(argv, argv[1:], strict=False) if flag == "--rules-from"]
    return files + [item.split("=", 1)[1] for item in argv if item.startswith("--rules-from=")]


def _load_rule_files(files: Sequence[str]) -> None:
    """Run each rules file once per process (``fwplab.rules.load_rules_from``)."""
    if not files:
        return
    from .rules import load_rules_from
    for file in files:
        key = str(Path(file).resolve())
        if key not in _LOADED_RULE_FILES:
            load_rules_from(file)
            _LOADED_RULE_FILES.add(key)


# ------------------------------------------------------------------------ resolution
def _device(requested: Optional[str]) -> Any:
    import torch
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"--device: expected cpu or cuda, got {requested!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected cpu or cuda, got {requested!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {requested}: no CUDA GPU is available here "
                             "(use --device cpu)")
        index = device.index if device.index is not None else local_rank
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {requested}: only {torch.cuda.device_count()} GPU(s)")
        device = torch.device("cuda", index)
    return device


def _given(args: argparse.Namespace, names) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _data_spec(args: argparse.Namespace, preset: Preset, seed: int) -> dict[str, Any]:
    """How to load the dataset: plain values, stored in the checkpoint for --resume.

    ``seed`` (the training seed) also seeds the dropped observations and splits.
    """
    if args.dataset is not None and (args.train is not None or args.test is not None):
        raise ValueError("--dataset: give either --dataset or --train/--test, not both")
    if (args.train is None) != (args.test is None):
        missing = "--test" if args.test is None else "--train"
        raise ValueError(f"{missing}: --train and --test go together (a TRAIN and a TEST .ts "
                         "file)")
    spec: dict[str, Any] = {"missing_rate": args.missing_rate or 0.0, "seed": seed}
    options: dict[str, Any] = {}
    if args.train is not None:
        for flag, path in (("--train", args.train), ("--test", args.test)):
            if not Path(path).is_file():
                raise ValueError(f"{path}: file not found ({flag})")
        spec.update(train=str(Path(args.train).resolve()), test=str(Path(args.test).resolve()))
        if args.data_root is not None:
            raise ValueError("--data-root: applies to named datasets, not to --train/--test")
    else:
        name = args.dataset or preset.dataset
        spec["dataset"] = name
        if name == preset.dataset:
            options.update(preset.data)
        if args.data_root is not None:
            spec["root"] = str(Path(args.data_root).resolve())
    if args.intensity is not None:
        options["intensity"] = args.intensity
    spec["options"] = options
    return spec


def _adapts(args: argparse.Namespace) -> bool:
    """Whether the settings adapt to the data: no --preset, and data no preset trains on."""
    if args.preset is not None:
        return False
    return args.train is not None or (args.dataset is not None
                                      and preset_for_dataset(args.dataset) is None)


def _given_data_options(args: argparse.Namespace) -> dict[str, Any]:
    """The data options of :func:`fwplab.adaptive.fit_adaptive` the flags give."""
    given: dict[str, Any] = {}
    if args.scale is not None:
        given["standardise_each_series"] = args.scale == "series"
    if args.smoothing is not None:
        given["smoothing"] = args.smoothing
    if args.time_features is not None:
        given["time_features"] = bool(args.time_features)
    if args.warped_copies is not None:
        given["warped_copies"] = args.warped_copies
    if args.val_fraction is not None:
        given["val_fraction"] = args.val_fraction
    return given


def _model_options(args: argparse.Namespace, preset: Preset, name: str) -> dict[str, Any]:
    """The preset's model options (only its sizes for another model), then the flags.

    The preset's number of heads carries over to other continuous FWPs only: the
    Neural CDE and the GRU have no heads, the discrete FWP keeps its own default.
    """
    from .models import MODELS
    carried = ("hidden_channels", "num_heads") if isinstance(MODELS.get(name), tuple) else (
        "hidden_channels",)
    options = dict(preset.model_options) if name == preset.model else {
        key: value for key, value in preset.model_options.items() if key in carried}
    options.update({_MODEL_FLAGS[flag]: value
                    for flag, value in _given(args, _MODEL_FLAGS).items()})
    if "num_heads" in options and not _has_heads(name):
        raise ValueError(f"--heads: {name} has no fast-weight heads; drop --heads")
    return options


def _has_heads(name: str) -> bool:
    """Whether model ``name`` takes ``num_heads`` (continuous FWPs, the discrete FWP)."""
    from .models import MODELS
    entry = MODELS.get(name)
    return isinstance(entry, tuple) or (
        callable(entry) and "num_heads" in inspect.signature(entry).parameters)


def _train_config(args: argparse.Namespace, preset: Preset) -> Any:
    from .train import TrainConfig
    settings = dict(preset.train)
    settings.update({_TRAIN_FLAGS[flag]: value
                     for flag, value in _given(args, _TRAIN_FLAGS).items()})
    return TrainConfig(**settings)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    if (out / CHECKPOINT_NAME).exists() or (out / METRICS_NAME).exists():
        raise ValueError(f"--out {out}: already holds a run; continue it with --resume {out} "
                         "or choose another folder")


def _default_out(dataset: str, model: str) -> Path:
    """``runs/DATASET-MODEL-TIME-PID``, with ``-1``, ``-2``, ... if taken: runs started in
    the same second get different folders (and the run-folder lock refuses a collision)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset)
    base = Path(RUNS_DIR) / f"{safe}-{model}-{stamp}-{os.getpid()}"
    candidates = (base.with_name(f"{base.name}-{k}") if k else base for k in range(1_000_000))
    return next(path for path in candidates if not path.exists())


def _check_data_spec(spec: Any, path: Path) -> None:
    """Refuse a checkpoint's data settings that fwplab train could not have written."""
    where = f"{path}: field run.data"
    if not isinstance(spec, dict):
        raise ValueError(f"{where} must be a dict, got {type(spec).__name__}")
    allowed = {"missing_rate", "seed", "options", "train", "test", "dataset", "root",
               "time_unit"}
    if set(spec) - allowed or not {"missing_rate", "seed", "options"} <= set(spec):
        raise ValueError(f"{where} must have the keys missing_rate, seed, options and either "
                         f"train and test or dataset, got {sorted(spec)}")
    if not (isinstance(spec["missing_rate"], (int, float)) and 0 <= spec["missing_rate"] < 1):
        raise ValueError(f"{where}.missing_rate must be a fraction in [0, 1)")
    if isinstance(spec["seed"], bool) or not isinstance(spec["seed"], int):
        raise ValueError(f"{where}.seed must be an integer")
    unit = spec.get("time_unit", 1.0)
    if isinstance(unit, bool) or not isinstance(unit, (int, float)) or not 0 < unit < float("inf"):
        raise ValueError(f"{where}.time_unit must be a positive number")
    if not isinstance(spec["options"], dict) or set(spec["options"]) - set(DATA_OPTIONS):
        raise ValueError(f"{where}.options must be a dict of data options")
    files = {"train", "test"} & set(spec)
    if files:
        if files != {"train", "test"} or "dataset" in spec or "root" in spec or not all(
                isinstance(spec[key], str) for key in files):
            raise ValueError(f"{where} must give both train and test as paths, and no dataset")
    elif spec.get("dataset") not in _dataset_names() or not isinstance(spec.get("root", ""),
                                                                       str):
        raise ValueError(f"{where}.dataset must be one of {', '.join(_dataset_names())}")


def _shared(value: Any) -> Any:
    """Rank 0's value on every rank (identity in a single process)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _say(line: str) -> None:
    print(f"fwplab train: {line}", flush=True)


def _leader() -> bool:
    from .train import _world
    return _world()[0] == 0


# ---------------------------------------------------------------------------- train
def _train(args: argparse.Namespace) -> int:
    import torch

    from .adaptive import check_model_size, data_summary, fit_adaptive, load_data
    from .models import build_model, count_parameters
    from .train import TrainConfig, fit, load_checkpoint

    device = _device(args.device)
    progress = not args.no_progress
    adaptive = False
    if args.resume is not None:
        extra = sorted(name for name, value in vars(args).items()
                       if value is not None and name not in _RESUME_FLAGS + ("command",))
        if extra:
            flags = ", ".join("--" + name.replace("_", "-") for name in extra)
            raise ValueError(f"--resume continues a run with its saved settings; drop {flags}")
        out = Path(args.resume)
        if not (out / CHECKPOINT_NAME).is_file():
            raise ValueError(f"--resume {out}: no {CHECKPOINT_NAME} there (not a fwplab train "
                             "run folder)")
        saved = load_checkpoint(out)
        run_info = saved["run"]
        if "data" not in run_info:
            raise ValueError(f"{out / CHECKPOINT_NAME}: not written by fwplab train (no data "
                             "settings to reload the dataset with)")
        _check_data_spec(run_info["data"], out / CHECKPOINT_NAME)
        model_config = saved["model_config"]
        config = TrainConfig(**saved["train_config"])
        seed = config.seed
    else:
        preset = get_preset(args.preset or DEFAULT_PRESET)
        adaptive = _adapts(args)
        for flag in ("ensemble", "warped_copies", "scale", "smoothing", "time_features"):
            if getattr(args, flag) is not None and not adaptive:
                name = "--" + flag.replace("_", "-")
                raise ValueError(f"{name}: applies to data without a preset (--train/--test), "
                                 f"got the {preset.name} preset's data; drop {name}")
        config = None if adaptive else _train_config(args, preset)
        if config is not None and args.time_limit is not None:
            config = dataclasses.replace(config, time_limit=args.time_limit)
        seed = args.seed if adaptive and args.seed is not None else (
            TrainConfig().seed if adaptive else config.seed)
        run_info = {"preset": "adaptive" if adaptive else preset.name,
                    "data": _data_spec(args, preset, seed)}
        model_name = args.model or preset.model
        model_config = {"name": model_name, **_model_options(args, preset, model_name)}
        out = None if args.out is None else Path(args.out)
        if out is not None:
            _check_out(out)

    _start_processes(device)
    try:
        if out is None:
            spec = run_info["data"]
            name = Path(spec["train"]).stem.removesuffix("_TRAIN") if "train" in spec \
                else spec["dataset"]
            out = Path(_shared(str(_default_out(name, model_config["name"]))))
        try:
            with _stop_signals_interrupt():
                if adaptive:
                    given = {_TRAIN_FLAGS[flag]: value
                             for flag, value in _given(args, _TRAIN_FLAGS).items()
                             if flag not in ("seed", "val_fraction")}
                    result = fit_adaptive(
                        run_info["data"], model_config.pop("name"), seed=seed, out=out,
                        device=device, ensemble=args.ensemble, time_limit=args.time_limit,
                        progress=progress, model_options=model_config, train_options=given,
                        data_options=_given_data_options(args),
                        report=_say if _leader() else None)
                    history = result.history
                else:
                    dataset = load_data(run_info["data"])
                    run_info["class_names"] = list(dataset.class_names)
                    torch.manual_seed(seed)
                    if args.resume is None:
                        check_model_size(model_config, dataset.input_channels,
                                         dataset.num_classes, device)
                        model = build_model(model_config.pop("name"), dataset.input_channels,
                                            dataset.num_classes, **model_config)
                    else:
                        model = build_model(**model_config)
                        if (model.input_channels, model.output_channels) != (
                                dataset.input_channels, dataset.num_classes):
                            raise ValueError(
                                f"{out}: the data now has {dataset.input_channels} channels "
                                f"and {dataset.num_classes} classes, the checkpoint's model "
                                f"{model.input_channels} and {model.output_channels}")
                    model.to(device)
                    if _leader():
                        _say(f"{model.config['name']} ({count_parameters(model)} parameters) "
                             f"on {dataset.name}, {device}, run folder {out}")
                        _say(data_summary(dataset))
                    history = fit(model, dataset, config, out=out,
                                  resume=args.resume is not None, progress=progress,
                                  run_info=run_info,
                                  allow_changed_data=bool(args.allow_changed_data))
        except KeyboardInterrupt as stop:
            signum = stop.args[0] if isinstance(stop, _Stopped) else signal.SIGINT
            print(f"fwplab train: {_interrupted_message(out, signum)}", file=sys.stderr)
            return EXIT_INTERRUPTED if signum == signal.SIGINT else 128 + signum
    finally:
        _stop_processes()
    if history.out is not None:
        print(f"fwplab train: test accuracy {history.test['accuracy']:.4f}, train accuracy "
              f"{history.train['accuracy']:.4f}, {len(history.records)} epochs, "
              f"{history.seconds:.1f} s; wrote {history.out / METRICS_NAME}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .inference import predict_run

    table = predict_run(args.run, args.data, device=args.device or "cpu")
    text = table.to_csv()
    if args.out is None:
        sys.stdout.write(text)
        return 0
    from .train import _atomic_write
    _atomic_write(Path(args.out), lambda path: path.write_text(text))
    print(f"fwplab predict: {len(table.predicted)} series; wrote {args.out}")
    return 0


class _Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that every ``finally`` runs."""


@contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into :class:`_Stopped` while training (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise _Stopped(signum)

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _interrupted_message(out: Path, signum: int) -> str:
    """What an interrupted run left, truthfully: a checkpoint to resume, or nothing."""
    name = signal.Signals(signum).name
    checkpoint = out / CHECKPOINT_NAME
    if checkpoint.is_file():
        from .train import load_checkpoint
        try:
            epoch = load_checkpoint(checkpoint)["epoch"]
        except ValueError as error:
            return f"interrupted ({name}); {error}"
        return (f"interrupted ({name}); {checkpoint} holds epoch {epoch}; continue with: "
                f"fwplab train --resume {out}")
    return (f"interrupted ({name}) before the first checkpoint; nothing was kept, so start "
            "the run again")


def _start_processes(device: Any) -> None:
    """Join the torchrun process group (gloo on CPU, nccl on GPU) when there is one."""
    import torch
    import torch.distributed as dist
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def _stop_processes() -> None:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _rl(args: argparse.Namespace) -> int:
    """``fwplab rl`` (fwplab.rl.command), stopped cleanly by Ctrl-C, SIGTERM or SIGHUP."""
    from .rl import command as _rl_command
    try:
        with _stop_signals_interrupt():
            return _rl_command.run(args, _device)
    except FloatingPointError as error:  # the world model's flow diverged
        message = " ".join(str(error).split())
        print(f"fwplab rl: error: {message}; every finished epoch is kept in the run folder",
              file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as stop:
        signum = stop.args[0] if isinstance(stop, _Stopped) else signal.SIGINT
        folder = args.resume or args.out
        kept = (f"the last finished epoch is in {folder}; continue with: fwplab rl --resume "
                f"{folder}" if folder and (Path(folder) / "checkpoint.pt").is_file()
                else "continue with fwplab rl --resume OUT if an epoch finished")
        print(f"fwplab rl: interrupted ({signal.Signals(signum).name}); {kept}", file=sys.stderr)
        return 128 + int(signum)


def _baseline(args: argparse.Namespace) -> int:
    """``fwplab baseline`` (:func:`fwplab.compare.run_baseline`); Ctrl-C, SIGTERM and
    SIGHUP stop it with nothing written."""
    from .compare import run_baseline
    try:
        with _stop_signals_interrupt():
            metrics = run_baseline(args.model, Path(args.out), args.seed, args.dataset,
                                   args.train, args.test, args.missing_rate)
    except KeyboardInterrupt as stop:
        signum = stop.args[0] if isinstance(stop, _Stopped) else signal.SIGINT
        print(f"fwplab baseline: interrupted ({signal.Signals(signum).name}); nothing was "
              "written, so run it again", file=sys.stderr)
        return 128 + int(signum)
    print(f"fwplab baseline: {args.model} test accuracy {metrics['test_accuracy']:.4f}, train "
          f"accuracy {metrics['train_accuracy']:.4f}, {metrics['seconds']:.1f} s; wrote "
          f"{Path(args.out) / 'metrics.json'}")
    return 0


def _presets() -> int:
    from .rl.presets import RL_PRESETS
    width = max(len(name) for name in [*PRESETS, *RL_PRESETS])
    for preset in PRESETS.values():
        print(f"{preset.name:<{width}}  {preset.dataset} / {preset.model}: {preset.description}")
    for preset in RL_PRESETS.values():
        print(f"{preset.name:<{width}}  fwplab rl --preset {preset.name}: {preset.description}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``fwplab`` command; returns the exit status.

    Args:
        argv: the arguments after ``fwplab``; default ``sys.argv[1:]``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _load_rule_files(_rule_files(argv))
    except ValueError as error:
        print(f"fwplab: error: --rules-from: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_ERROR
    command = next((item for item in argv if not item.startswith("-")), None)
    args = build_parser(command if command in _COMMANDS else "").parse_args(argv)
    if args.command == "presets":
        return _presets()
    from .data.download import DownloadError
    from .devices import retain_freed_memory
    from .train import TrainingDiverged
    retain_freed_memory()  # each training step reuses the memory the last one freed (glibc)
    try:
        if args.command == "compare":
            from . import compare as _compare
            return _compare.run(args, main, _dataset_names(), _model_names())
        if args.command == "rl":
            return _rl(args)
        if args.command == "baseline":
            return _baseline(args)
        if args.command == "predict":
            return _predict(args)
        return _train(args)
    except (ValueError, TrainingDiverged, DownloadError, OSError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"fwplab {args.command}: error: {message}", file=sys.stderr)
        return EXIT_ERROR


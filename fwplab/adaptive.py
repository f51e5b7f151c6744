"""The adaptive policy: settings chosen from the data alone, an ensemble, one retry.

Data without a preset of its own (a TRAIN/TEST pair of ``.ts`` files, or a named dataset
no preset trains on) gets settings adapted to it. One call does what ``fwplab train
--train A_TRAIN.ts --test A_TEST.ts`` does::

    from fwplab.adaptive import fit_adaptive
    result = fit_adaptive(("A_TRAIN.ts", "A_TEST.ts"), seed=0, out="runs/a")
    result.metrics["test_accuracy"], [c.line() for c in result.choices]

In order:

1. load the data; timestamps are divided by the median positive gap between consecutive
   observation times of the training series (:func:`time_unit`), after each series'
   first time is subtracted, so seconds, milliseconds or epoch seconds give the same
   inputs (the unit is recorded as ``run.data.time_unit`` and reused by prediction);
2. data options (:func:`fwplab.presets.adaptive_data_options`,
   :func:`~fwplab.presets.adaptive_augmentation`): scale, smoothing, time features,
   log-signature windows, delayed copies, warped copies;
3. training settings (:func:`~fwplab.presets.adaptive_train_settings`,
   :func:`~fwplab.presets.adaptive_budget`): validation split, batch size, passes,
   warm-up, patience, all from the data's size (series, solver steps) and the flags;
4. the ensemble's size (:func:`~fwplab.presets.adaptive_ensemble`), from the same
   numbers; members train with seeds ``seed, seed + 1, ...`` and ``ensemble.pt`` is
   rewritten (atomically) as each one finishes, after an up-front trial write of its full
   size;
5. one new start at half the learning rate when the first model diverges
   (:func:`~fwplab.presets.adaptive_retry`).

No choice reads a clock: the same data, flags and seed give the same ``metrics.json``
accuracies on a fast or a loaded machine. ``time_limit`` (``--time-limit``) is the one
exception, off by default, and a run it cuts says so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .data import Dataset, load_dataset
from .data.dataset import assemble_dataset
from .data.registry import _holdout, _trim, _ts_raw
from .data.transforms import (
    data_channels,
    increment_autocorrelation,
    moving_average,
    nearest_class_mean_accuracy,
    series_scale_spread,
    standardise_each_series,
    standardise_positions,
    time_in_windows,
    warped_copies,
    with_delays,
    with_time_features,
)
from .data.ts import TsFile, read_ts, read_ts_pair, require_labels
from .data.uea_archive import log_signature_dataset
from .models import NonFiniteOutputError, build_model, count_parameters
from .presets import (
    LONG_SERIES,
    TIME_FEATURE_CYCLES,
    Choice,
    adaptive_augmentation,
    adaptive_budget,
    adaptive_data_options,
    adaptive_ensemble,
    adaptive_retry,
    adaptive_train_settings,
)
from .checkpoints import CHECKPOINT_NAME, METRICS_NAME, _atomic_write, _RunFolderLock, _write_json
from .train import (
    MAX_SEED,
    History,
    TrainConfig,
    TrainingDiverged,
    _world,
    evaluate_ensemble,
    fit,
)

__all__ = ["ENSEMBLE_NAME", "AdaptiveFit", "fit_adaptive", "load_data", "adapt_data",
           "adapt_training", "time_unit", "data_summary", "check_model_size"]

#: File of an ensemble's members in the run folder (the first one is also checkpoint.pt).
ENSEMBLE_NAME = "ensemble.pt"
#: The data option each adapted data choice sets (an option given replaces it).
_OPTION_OF_CHOICE = {"scale": "standardise_each_series", "smoothing": "smoothing",
                     "time features": "time_features",
                     "position scale": "standardise_positions"}
#: Adapted choices a given setting overrides (then the choice is not reported).
_CHOICE_FIELDS = {"validation": "val_fraction", "batch size": "batch_size",
                  "warm-up": "warmup_steps", "patience": "patience"}

#: Share of the machine's memory that weights, gradients and optimiser moments may take.
MEMORY_SHARE = 0.5

Report = Callable[[str], None]


@dataclass
class AdaptiveFit:
    """What :func:`fit_adaptive` returns.

    Attributes:
        models: the trained members (one, or the ensemble's), in eval mode after training.
        choices: every adapted setting with its reason (``choice.line()`` prints it).
        history: the first model's :class:`fwplab.train.History`; its ``train`` and
            ``test`` metrics are the ensemble's when there are several members.
        dataset: the data as the models saw it (after the adaptive transforms).
        spec: how to load that data again (``run.data`` of ``metrics.json``).
        metrics: ``test_accuracy``, ``train_accuracy``, ``test_loss`` (the ensemble's)
            and, with several members, ``ensemble`` (their seeds and own accuracies).
    """

    models: list[nn.Module]
    choices: list[Choice]
    history: History
    dataset: Dataset
    spec: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> nn.Module:
        """The first member (the model of ``checkpoint.pt``)."""
        return self.models[0]


# ------------------------------------------------------------------------ loading
def time_unit(times: Optional[Tensor]) -> float:
    """The unit timestamps are divided by: the median positive gap between consecutive
    observation times of the training series (1.0 without timestamps).

    A multiple of the times (seconds to milliseconds: x 1000) multiplies the unit alike,
    and each series' first time is subtracted before, so ``t / unit`` is the same for
    every unit and offset; the smallest gap would let one close pair of points set the
    scale for the whole data set.

    Args:
        times: ``(batch, time)`` float64 observation times, NaN past each series' end;
            None for data without timestamps.
    """
    if times is None:
        return 1.0
    gaps = times[:, 1:] - times[:, :-1]
    gaps = gaps[torch.isfinite(gaps) & (gaps > 0)]
    return float(gaps.median()) if gaps.numel() else 1.0


def _rescaled(ts: TsFile, unit: float) -> TsFile:
    if ts.times is None:
        return ts
    return dataclasses.replace(ts, times=(ts.times - ts.times[:, :1]) / unit)


def _assemble_ts(train: TsFile, test: TsFile, spec: dict[str, Any], *, missing_rate: float,
                 seed: int, intensity: bool = False, val_fraction: float = 0.0) -> Dataset:
    """``fwplab.data.load_ts_pair`` of two read files, times in the unit of the spec
    (computed from the training times and recorded there when it has none)."""
    if "time_unit" not in spec:
        spec["time_unit"] = time_unit(train.times)
    unit = spec["time_unit"]
    train, test = _rescaled(train, unit), _rescaled(test, unit)
    splits = _holdout(_ts_raw(train), val_fraction, seed) if val_fraction else {
        "train": _ts_raw(train)}
    splits = {key: _trim(raw) for key, raw in splits.items()}
    test_raw = _ts_raw(test)
    if test_raw.y is None:  # files to predict may have no labels
        test_raw = dataclasses.replace(test_raw, y=torch.zeros(len(test_raw.x), dtype=torch.long))
    splits["test"] = test_raw
    channels = tuple(f"dim{index}" for index in range(train.x.shape[-1]))
    name = train.problem_name or Path(spec["train"]).stem
    return assemble_dataset(name, splits, train.class_names, channels,
                            missing_rate=missing_rate, seed=seed, time_channel=True,
                            intensity=intensity, normalise=True)


def load_data(spec: dict[str, Any], test: Optional[TsFile] = None) -> Dataset:
    """The dataset a run's ``spec`` (``run.data`` of its checkpoint) describes.

    Args:
        spec: ``{"missing_rate", "seed", "options"}`` and either ``"train"`` and
            ``"test"`` (``.ts`` paths; ``"time_unit"`` is added on the first load) or
            ``"dataset"`` (a name of :func:`fwplab.data.load_dataset`, ``"root"``).
        test: read series that replace the TEST file (prediction); they go through every
            transform the test split goes through.

    Warped copies and delayed copies come before the log-signature windows, which
    summarise them too.
    """
    common = dict(missing_rate=spec["missing_rate"], seed=spec["seed"], **spec["options"])
    delays = common.pop("delays", ())
    copies = common.pop("augment", 0)
    window_time = common.pop("window_time", False)
    each_series = common.pop("standardise_each_series", False)
    positions = common.pop("standardise_positions", False)
    cycles = common.pop("time_features", ())
    width = common.pop("smoothing", 0)
    if "train" not in spec and test is None and not (delays or copies or window_time
                                                     or each_series or cycles or width
                                                     or positions):
        return load_dataset(spec["dataset"], root=spec.get("root"), **common)
    depth, step = common.pop("logsig_depth", 0), common.pop("logsig_step", None)
    level = common.pop("logsig_level", False)
    if "train" in spec:
        if test is None:
            train_file, test_file = read_ts_pair(spec["train"], spec["test"])
        else:
            train_file, test_file = read_ts(spec["train"]), test
            require_labels(train_file, "TRAIN")
        dataset = _assemble_ts(train_file, test_file, spec, **common)
    else:
        dataset = load_dataset(spec["dataset"], root=spec.get("root"), logsig_depth=0, **common)
    if each_series:
        dataset = standardise_each_series(dataset, data_channels(dataset))
    if positions:
        dataset = standardise_positions(dataset, data_channels(dataset))
    if width:
        dataset = moving_average(dataset, data_channels(dataset), width)
    if copies:
        dataset = dataclasses.replace(dataset, train=warped_copies(
            dataset.train, data_channels(dataset), copies, spec["seed"]))
    dataset = with_delays(dataset, delays) if delays else dataset
    dataset = with_time_features(dataset, cycles) if cycles else dataset
    if depth and window_time:
        dataset = time_in_windows(dataset, step)
    return log_signature_dataset(dataset, depth, step, data_channels(dataset) if level else ()
                                 ) if depth else dataset


def data_summary(dataset: Dataset) -> str:
    """One line: series per split, lengths (min/median/max), missing values, classes."""
    channels = data_channels(dataset)
    parts, missing, values, lengths = [], 0, 0, []
    for name in ("train", "val", "test"):
        split = getattr(dataset, name)
        if split is None:
            continue
        parts.append(f"{len(split)} {name}")
        inside = torch.arange(split.x.shape[1]) < split.lengths.cpu()[:, None]
        data = split.x.cpu()[:, :, channels][inside]
        missing += int(torch.isnan(data).sum())
        values += data.numel()
        lengths += split.lengths.tolist()
    counts = torch.bincount(dataset.train.y.cpu(), minlength=dataset.num_classes).tolist()
    classes = ", ".join(f"{label} ({count})" for label, count in
                        zip(dataset.class_names, counts, strict=True))
    share = f" ({missing / values:.1%})" if values else ""
    return (f"data: {' + '.join(parts)} series, lengths {min(lengths)}/"
            f"{statistics.median(lengths):g}/{max(lengths)} (min/median/max), "
            f"{missing} of {values} values missing{share}, {dataset.num_classes} classes: "
            f"{classes} (training series)")


# ------------------------------------------------------------------------ choosing
def adapt_data(spec: dict[str, Any], dataset: Dataset, val_fraction: Optional[float] = None,
               copies: Optional[int] = None, given: Optional[dict[str, Any]] = None
               ) -> tuple[Dataset, list[Choice]]:
    """The data options for ``dataset`` (recorded in ``spec["options"]`` so a resumed run
    and prediction reload them) and the dataset with them applied.

    Args:
        spec: the data's spec (see :func:`load_data`); its options are updated.
        dataset: the data as loaded.
        val_fraction, copies: given validation fraction and warped copies, or None.
        given: data options given (``standardise_each_series``, ``smoothing``,
            ``time_features``, ``standardise_positions``; a false value turns one off);
            used as they are, not reported.
    """
    channels, longest = data_channels(dataset), int(dataset.train.lengths.max())
    # The smoothing rule reads the increments of short univariate series only.
    correlation = (increment_autocorrelation(dataset.train, channels)
                   if longest <= LONG_SERIES and len(channels) == 1 else None)
    # The position rule reads long univariate series of one length in every split.
    equal = all(split.x.shape[1] == longest and bool((split.lengths == longest).all())
                for split in (dataset.train, dataset.val, dataset.test) if split is not None)
    class_mean = (nearest_class_mean_accuracy(dataset.train, channels[0])
                  if longest > LONG_SERIES and len(channels) == 1 and equal else None)
    options, choices = adaptive_data_options(
        longest, series_scale_spread(dataset.train, channels), correlation, class_mean)
    given = given or {}
    for key, value in given.items():
        options.pop(key, None)
        if value:
            options[key] = value
    choices = [choice for choice in choices if _OPTION_OF_CHOICE.get(choice.name) not in given]
    counts = [int(c) for c in torch.bincount(dataset.train.y.cpu()) if c > 0]
    validation = dataset.val is not None or (val_fraction or 0) > 0  # given
    more, extra = adaptive_augmentation(counts, validation, longest > LONG_SERIES) \
        if copies is None else ({"augment": copies} if copies else {}, [])
    options.update(more)
    choices += extra
    if options:
        spec["options"].update(options)
        dataset = load_data(spec)
    return dataset, choices


def adapt_training(dataset: Dataset, given: Optional[dict[str, Any]] = None,
                   dataset_copies: int = 0, ensemble: Optional[int] = None
                   ) -> tuple[TrainConfig, int, list[Choice]]:
    """Training settings and the ensemble's size for ``dataset``, from its size alone.

    Args:
        dataset: the data as the model sees it (after :func:`adapt_data`).
        given: TrainConfig fields given by the user; they win over every adapted value
            (``epochs`` given: one model).
        dataset_copies: warped copies per training series (they are not more series to
            validate on or to size the batch by).
        ensemble: the ensemble's size given, or None.

    Returns:
        ``(config, members, choices)``.
    """
    given = dict(given or {})
    counts = torch.bincount(dataset.train.y.cpu(), minlength=dataset.num_classes) // (
        1 + dataset_copies)
    settings, choices = adaptive_train_settings([int(count) for count in counts if count > 0],
                                                augmented=dataset_copies > 0)
    settings.update(given)
    held = 0
    if dataset.val is None and settings["val_fraction"]:
        held = sum(round(settings["val_fraction"] * int(count)) for count in counts)
    has_validation = dataset.val is not None or held > 0
    training = max(1, len(dataset.train) - held)  # fit refuses an empty training part
    length = int(dataset.train.lengths.max())
    budget, more = adaptive_budget(training, settings["batch_size"], length, has_validation,
                                   given.get("epochs"))
    settings.update({key: value for key, value in budget.items()
                     if key not in given or key == "epochs"})
    if not has_validation and "patience" not in given:  # given: fit explains the conflict
        settings.pop("patience", None)
    overridden = {name for name, key in _CHOICE_FIELDS.items() if key in given}
    choices = [choice for choice in choices + more if choice.name not in overridden]
    if ensemble is None and "epochs" in given:
        members, choice = 1, Choice("ensemble", "1 model", "the passes are given: one model")
    else:
        steps = settings["epochs"] * -(-training // settings["batch_size"])
        members, choice = adaptive_ensemble(steps, settings["batch_size"], length, ensemble)
    return TrainConfig(**settings), members, choices + [choice]


# ------------------------------------------------------------------------ training
def check_model_size(model_config: dict[str, Any], channels: int, classes: int,
                      device: Union[str, torch.device]) -> None:
    """Refuse sizes whose parameters cannot fit in memory, before allocating any.

    The model is built on the ``meta`` device (shapes only); training keeps about
    five copies of the parameters (weights, best weights, gradients, two moments).
    """
    device = torch.device(device)
    options = {key: value for key, value in model_config.items() if key != "name"}
    sizes = ", ".join(f"{key}={value}" for key, value in options.items()
                      if key in ("hidden_channels", "ff_channels", "num_heads"))
    try:
        with torch.device("meta"):
            probe = build_model(model_config["name"], channels, classes, **options)
    except (RuntimeError, OverflowError):  # a weight matrix larger than any address space
        raise ValueError(f"--hidden/--ff: {model_config['name']} with {sizes} has weight "
                         "matrices too large for any memory; choose smaller sizes") from None
    needed = 5 * sum(p.numel() * p.element_size() for p in probe.parameters())
    if device.type == "cuda":
        available = torch.cuda.mem_get_info(device)[1]
    else:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") \
            if hasattr(os, "sysconf") else None
    if available is not None and needed > MEMORY_SHARE * available:
        raise ValueError(f"--hidden/--ff: {model_config['name']} with {sizes} needs about "
                         f"{needed / 1e9:.3g} GB for its parameters while training, more than "
                         f"half of the {available / 1e9:.3g} GB of {device.type} memory; choose "
                         "smaller sizes")



def _spec(data: Union[str, Sequence[Any], dict[str, Any]], missing_rate: float, seed: int
          ) -> dict[str, Any]:
    if isinstance(data, dict):
        return data
    spec: dict[str, Any] = {"missing_rate": missing_rate, "seed": seed, "options": {}}
    if isinstance(data, str):
        spec["dataset"] = data
        return spec
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError(f"data: expected a dataset name or a (TRAIN, TEST) pair of .ts "
                         f"paths, got {type(data).__name__}")
    for role, path in zip(("TRAIN", "TEST"), data, strict=True):
        if not Path(path).is_file():
            raise ValueError(f"{path}: file not found (the {role} file)")
    spec.update(train=str(Path(data[0]).resolve()), test=str(Path(data[1]).resolve()))
    return spec


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _recorded(choice: Choice) -> dict[str, str]:
    return {"value": str(choice.value), "reason": choice.reason}


def _state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _check_ensemble_writable(out: Path, size: int) -> None:
    """Write and delete a trial ``ensemble.pt`` of ``size`` bytes (a full disk, a file-size
    limit or an unwritable target stops the run before any training)."""
    target = out / ENSEMBLE_NAME
    with _RunFolderLock(out):
        trial = target.with_name(f".{ENSEMBLE_NAME}.{os.getpid()}.tmp")
        try:
            if target.is_dir():
                raise IsADirectoryError(f"{target} is a folder")
            with open(trial, "wb") as handle:
                for start in range(0, size, 1 << 20):
                    handle.write(bytes(min(1 << 20, size - start)))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            raise OSError(f"{target}: the ensemble's members could not be saved there "
                          f"({reason[:200]}); nothing was trained") from None
        finally:
            trial.unlink(missing_ok=True)


def _save_ensemble(out: Path, members: list[nn.Module], seeds: list[int],
                   class_names: Sequence[str]) -> None:
    _atomic_write(out / ENSEMBLE_NAME, lambda path: torch.save(
        {"model_config": dict(members[0].config), "seeds": list(seeds),
         "class_names": list(class_names),
         "states": [member.state_dict() for member in members]}, path))


def _rewrite_metrics(out: Path, update: dict[str, Any]) -> None:
    document = json.loads((out / METRICS_NAME).read_text())
    document.update(update)
    _write_json(out / METRICS_NAME, document)


def fit_adaptive(
    data: Union[str, Sequence[Any], dict[str, Any]],
    model: str = "delta_cde",
    *,
    seed: int = 0,
    out: Optional[Union[str, Path]] = None,
    device: Union[str, torch.device] = "cpu",
    missing_rate: float = 0.0,
    ensemble: Optional[int] = None,
    time_limit: Optional[float] = None,
    progress: bool = True,
    model_options: Optional[dict[str, Any]] = None,
    train_options: Optional[dict[str, Any]] = None,
    data_options: Optional[dict[str, Any]] = None,
    report: Optional[Report] = None,
) -> AdaptiveFit:
    """Train a model (or an ensemble) with settings adapted to the data.

    Args:
        data: a dataset name (:data:`fwplab.data.DATASET_NAMES`), a ``(TRAIN, TEST)``
            pair of ``.ts`` paths, or a spec as :func:`load_data` takes it.
        model: a name of :data:`fwplab.MODELS`.
        seed: seeds the weights, batches, validation split and members (``seed + k``).
        out: run folder (``checkpoint.pt`` of the first model, ``metrics.json``,
            ``ensemble.pt``); None writes nothing.
        device: where to train.
        missing_rate: fraction of observations to drop from every series.
        ensemble: the number of models given; None chooses it from the data.
        time_limit: seconds of training for the whole run, after which it stops at the
            end of the current epoch and says so; None (the default) never looks at a
            clock, so results do not depend on the machine's speed.
        progress: progress bars (a terminal) or a few lines per model (otherwise).
        model_options: keyword arguments of :func:`fwplab.build_model`.
        train_options: TrainConfig fields given; they win over the adapted values.
        data_options: given data options: ``val_fraction``, ``warped_copies``,
            ``standardise_each_series``, ``smoothing``, ``time_features``,
            ``standardise_positions``.
        report: called with each line to print (the choices); None prints nothing.

    Returns:
        :class:`AdaptiveFit`.

    Raises:
        ValueError: bad data or settings (one line); OSError: ``out`` cannot hold the
            run's files (before any training); TrainingDiverged: the first model
            diverged twice.
    """
    say = report or (lambda line: None)
    started = time.perf_counter()
    spec = _spec(data, missing_rate, seed)
    options = dict(data_options or {})
    given_train = dict(train_options or {})
    if "val_fraction" in options:
        given_train["val_fraction"] = options["val_fraction"]
    if (options.get("val_fraction") or 0) > 0 and (options.get("warped_copies") or 0) > 0:
        raise ValueError(f"--val-fraction {options['val_fraction']:g} with --warped-copies "
                         f"{options['warped_copies']}: copies of the validation series would "
                         "train; give one of them")
    given_train["seed"] = seed
    dataset = load_data(spec)
    summary = data_summary(dataset)
    given_data = {key: options[key] for key in ("standardise_each_series", "smoothing",
                                                "time_features", "standardise_positions")
                  if key in options}
    if given_data.get("time_features") is True:
        given_data["time_features"] = list(TIME_FEATURE_CYCLES)
    dataset, choices = adapt_data(spec, dataset, options.get("val_fraction"),
                                  options.get("warped_copies"), given_data)
    check_model_size({"name": model, **(model_options or {})}, dataset.input_channels,
                     dataset.num_classes, device)
    torch.manual_seed(seed)
    network = build_model(model, dataset.input_channels, dataset.num_classes,
                          **(model_options or {})).to(device)
    config, members, more = adapt_training(dataset, {k: v for k, v in given_train.items()
                                                     if k != "seed"} | {"seed": seed},
                                           spec["options"].get("augment", 0), ensemble)
    if _distributed():
        members = 1
    if time_limit is not None:
        config = dataclasses.replace(config, time_limit=time_limit)
    choices += more
    run_info = {"preset": "adaptive", "data": spec, "class_names": list(dataset.class_names),
                "adaptive": {choice.name: _recorded(choice) for choice in choices}}
    out_dir = None if out is None else Path(out)
    writes = out_dir is not None and _world()[0] == 0  # rank 0 writes the run folder
    say(f"{network.config['name']} ({count_parameters(network)} parameters) on "
        f"{dataset.name}, {device}, run folder {out_dir}")
    say(summary)
    for choice in choices:
        say(f"adapted to the data: {choice.line()}")
    if writes and members > 1:
        _check_ensemble_writable(out_dir, members * _state_bytes(network))
    history, config = _fit_first(network, dataset, config, out_dir, run_info, progress, seed,
                                 retry="lr" not in given_train and not _distributed(), say=say)
    models, seeds, runs, failed = [network], [config.seed], [history], []
    for offset in range(1, members):
        member_seed = (config.seed + offset) % (MAX_SEED + 1)
        member_config = dataclasses.replace(config, seed=member_seed)
        if time_limit is not None:
            left = time_limit - (time.perf_counter() - started)
            if left <= 0:
                say(f"TIME LIMIT: --time-limit {time_limit:g} s reached; the ensemble holds "
                    f"{len(models)} of {members} models (results now depend on this "
                    "machine's speed)")
                break
            member_config = dataclasses.replace(member_config, time_limit=left)
        torch.manual_seed(member_seed)
        member = build_model(**network.config).to(device)
        try:
            runs.append(fit(member, dataset, member_config, progress=progress))
        except (TrainingDiverged, NonFiniteOutputError) as error:
            say(f"ensemble: the model of seed {member_seed} diverged "
                f"({str(error).split(';')[0]}); left out")
            failed.append(member_seed)
            continue
        models.append(member)
        seeds.append(member_seed)
        if writes:
            _save_ensemble(out_dir, models, seeds, dataset.class_names)
    metrics = {"test_accuracy": history.test["accuracy"],
               "train_accuracy": history.train["accuracy"], "test_loss": history.test["loss"]}
    if len(models) > 1:
        train, test = (evaluate_ensemble(models, split, config.eval_batch_size)
                       for split in (dataset.train, dataset.test))
        seconds = time.perf_counter() - started
        metrics = {"test_accuracy": test["accuracy"], "train_accuracy": train["accuracy"],
                   "test_loss": test["loss"], "seconds": round(seconds, 3), "ensemble": {
                       "members": len(models), "seeds": seeds, "file": ENSEMBLE_NAME,
                       "averaging": "mean of the members' class probabilities; "
                                    "train_accuracy on all training series",
                       "member_test_accuracy": [run.test["accuracy"] for run in runs],
                       "member_train_accuracy": [run.train["accuracy"] for run in runs],
                       "member_seconds": [round(run.seconds, 3) for run in runs],
                       "diverged_seeds": failed}}
        if "auroc" in test:
            metrics.update(test_auroc=test["auroc"], train_auroc=train["auroc"])
        history = dataclasses.replace(history, train=train, test=test, seconds=seconds)
    if writes:
        _rewrite_metrics(out_dir, {**metrics, "run": run_info})
    return AdaptiveFit(models, choices, history, dataset, spec, metrics)


def _fit_first(model: nn.Module, dataset: Dataset, config: TrainConfig, out: Optional[Path],
               run_info: dict[str, Any], progress: bool, seed: int, retry: bool,
               say: Report) -> tuple[History, TrainConfig]:
    """:func:`fwplab.train.fit`; with ``retry``, a run that diverges starts once more from
    new weights at a lower learning rate (:func:`fwplab.presets.adaptive_retry`), printed
    and recorded. Returns the history and the settings that trained the model."""
    try:
        return fit(model, dataset, config, out=out, progress=progress,
                   run_info=run_info), config
    except TrainingDiverged as error:
        if not retry:
            raise
        settings, choice = adaptive_retry(config.lr, str(error).split(";")[0])
    say(f"adapted to the data: {choice.line()}")
    run_info["adaptive"][choice.name] = _recorded(choice)
    if out is not None:
        (out / CHECKPOINT_NAME).unlink(missing_ok=True)
    torch.manual_seed(seed)
    fresh = build_model(**model.config).to(next(model.parameters()).device)
    model.load_state_dict(fresh.state_dict())  # the caller's model ends trained
    config = dataclasses.replace(config, **settings)
    return fit(model, dataset, config, out=out, progress=progress, run_info=run_info), config

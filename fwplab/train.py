"""Training loop, metrics and checkpoints for the models of :mod:`fwplab.models`.

One call trains a model on a :class:`fwplab.data.Dataset` and returns its
:class:`History`::

    history = fwplab.train.fit(model, dataset, epochs=20)
    history.test["accuracy"]

What :func:`fit` does, in order:

- splits a stratified, seeded validation set off the training data when the
  dataset has none (``val_fraction``);
- computes the interpolation coefficients of every split once
  (:func:`fwplab.paths.interpolation_coeffs`; torchcde's missing-value handling
  is slow) and indexes them per batch, cutting each batch to its longest series;
- minimises the cross-entropy with AdamW, a cosine (or constant, or plateau)
  learning-rate schedule after an optional linear warm-up, and gradient clipping::

      loss = - mean_b w_{y_b} log softmax(logits_b)_{y_b} / mean_b w_{y_b}

- evaluates on the validation split after every epoch, keeps the best weights
  (``monitor``), stops early after ``patience`` epochs without improvement, or
  after the epoch in which the training time passes ``time_limit`` seconds;
- stops at the first non-finite loss, gradient or weight and says where;
- with ``out``: takes the run folder's lock (one writer per folder, released by the
  operating system when the process dies), writes a trial checkpoint of the full size
  before training (so an unwritable folder or a full disk fails before any work),
  writes ``checkpoint.pt`` after every epoch (atomically: a temporary file renamed
  into place) and ``metrics.json`` at the end (strict JSON: ``null`` for undefined
  numbers); a run that fails before its first checkpoint leaves no folder behind;
- ``resume=True`` continues from the checkpoint, checked field by field, on the same
  data (a fingerprint of the dataset's tensors is stored; ``allow_changed_data``
  overrides), and ends with the same weights and metrics as an uninterrupted run
  (on CPU);
- under ``torchrun`` (an initialised :mod:`torch.distributed` process group) it
  trains with ``DistributedDataParallel``; the global batch is split across the
  processes, only rank 0 writes files.

Checkpoints hold only tensors and plain Python values, so they load with
``torch.load(path, weights_only=True)`` (see :func:`load_checkpoint`). Writing, reading
and checking the run folder's files is :mod:`fwplab.checkpoints`; ``CHECKPOINT_NAME``,
``METRICS_NAME``, :func:`load_checkpoint`, :func:`load_model` and
:func:`dataset_fingerprint` are importable from here too.
"""

from __future__ import annotations

import math
import random
import sys
import time
import weakref
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

# The run folder's files (re-exported: they are part of this module's interface).
from .checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    LOCK_NAME as LOCK_NAME,
    METRICS_NAME,
    PathLike,
    _atomic_write,
    _check_optimizer_state,
    _check_resumable,
    _check_scheduler_state,
    _load_states,
    _load_weights,
    _rng_state,
    _run_folder,
    _RunFolderLock as _RunFolderLock,
    _write_json,
    _write_trial_checkpoint,
    dataset_fingerprint,
    load_checkpoint,
    load_model,
)
from .data.dataset import Dataset, Split, split_generator, stratified_split
from .kernels import prepare as prepare_kernel
from .models import NonFiniteOutputError, build_model, count_parameters
from .paths import interpolation_coeffs

__all__ = [
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "TrainConfig",
    "EpochRecord",
    "History",
    "TrainingDiverged",
    "fit",
    "evaluate",
    "predict",
    "predict_ensemble",
    "evaluate_ensemble",
    "auroc",
    "load_checkpoint",
    "load_model",
    "dataset_fingerprint",
]

SCHEDULES = ("cosine", "constant", "plateau")
MONITORS = ("accuracy", "loss", "auroc", "accuracy_then_loss")
#: Weight of the validation loss in the ``"accuracy_then_loss"`` score: small enough never to
#: outweigh one series of accuracy (it only breaks ties between equal accuracies).
TIE_BREAK_WEIGHT = 1e-9
#: Learning-rate factor of ReduceLROnPlateau (the schedule of Kidger et al. and the paper).
PLATEAU_FACTOR = 0.1
#: Seeds must fit torch's generator (64 bits; negative seeds are refused for clarity).
MAX_SEED = 2**63 - 1


class TrainingDiverged(RuntimeError):
    """A non-finite loss, gradient or weight stopped training; the message says where."""


@dataclass
class TrainConfig:
    """Hyperparameters of :func:`fit` (plain values, stored in checkpoints).

    Attributes:
        epochs: passes over the training split.
        batch_size: series per optimisation step (the global batch under torchrun).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW's decoupled weight decay (0 gives Adam).
        schedule: ``"cosine"`` (per step, from ``lr`` to ``lr * min_lr_ratio``),
            ``"constant"``, or ``"plateau"`` (divide by 10 when the training loss
            has not improved for ``plateau_patience`` epochs).
        warmup_steps: optimisation steps over which the learning rate rises linearly
            from ``lr / warmup_steps`` to ``lr`` before the schedule (``"cosine"`` then
            decays over the remaining steps); 0 starts at ``lr``. Not with ``"plateau"``.
        min_lr_ratio: final learning rate of the cosine schedule, relative to ``lr``.
        plateau_patience: epochs of the ``"plateau"`` schedule.
        grad_clip: clip the global gradient norm to this value; None disables.
        grad_scale: multiply the gradient of the final linear layer (the
            ``classifier``) by this factor, as the paper's ``--grad_scale``.
        val_fraction: fraction of the training split held out (stratified, seeded)
            for validation when the dataset has no validation split; 0 keeps all
            training data and selects the last epoch.
        patience: stop after this many epochs without a better validation score;
            None trains all epochs.
        monitor: validation score that selects the best epoch: ``"accuracy"``,
            ``"loss"``, ``"auroc"`` (two classes only) or ``"accuracy_then_loss"``
            (accuracy; among equal accuracies the lower loss wins).
        time_limit: seconds of training after which the run stops at the end of the
            current epoch (recorded as stopped early); None trains every epoch.
        class_weights: weight of each class in the loss (e.g. ``(1, 10)`` for sepsis).
        eval_batch_size: series per evaluation batch.
        seed: seeds the validation split, the batch order and dropout.
    """

    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    plateau_patience: int = 10
    grad_clip: Optional[float] = 1.0
    grad_scale: float = 1.0
    val_fraction: float = 0.0
    patience: Optional[int] = None
    monitor: str = "accuracy"
    class_weights: Optional[tuple[float, ...]] = None
    eval_batch_size: int = 256
    seed: int = 0
    time_limit: Optional[float] = None

    def __post_init__(self) -> None:
        if self.class_weights is not None:
            try:
                weights = tuple(float(w) for w in self.class_weights)
            except (TypeError, ValueError):
                raise ValueError(f"class_weights: expected a sequence of numbers, got "
                                 f"{self.class_weights!r}") from None
            if not weights or not all(math.isfinite(w) and w >= 0 for w in weights) \
                    or not any(w > 0 for w in weights):
                raise ValueError(f"class_weights: expected finite non-negative numbers, not all "
                                 f"zero, got {self.class_weights!r}")
            self.class_weights = weights
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) \
                or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed: expected an integer in [0, 2**63 - 1], got {self.seed!r}")
        positive_ints = ("epochs", "batch_size", "plateau_patience", "eval_batch_size")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        for name in ("lr", "grad_scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: expected a positive number, got {value!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay: expected a non-negative number, got "
                             f"{self.weight_decay!r}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip)
                                               and self.grad_clip > 0):
            raise ValueError(f"grad_clip: expected a positive number or None, got "
                             f"{self.grad_clip!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio: expected a fraction in [0, 1], got "
                             f"{self.min_lr_ratio!r}")
        if not (isinstance(self.val_fraction, (int, float)) and 0.0 <= self.val_fraction < 1.0):
            raise ValueError(f"val_fraction: expected a fraction in [0, 1), got "
                             f"{self.val_fraction!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) \
                or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps: expected a non-negative integer, got "
                             f"{self.warmup_steps!r}")
        if self.warmup_steps and self.schedule == "plateau":
            raise ValueError("warmup_steps: the plateau schedule has no warm-up; use the cosine "
                             "or constant schedule, or warmup_steps=0")
        if self.time_limit is not None and not (
                isinstance(self.time_limit, (int, float)) and not isinstance(self.time_limit, bool)
                and math.isfinite(self.time_limit) and self.time_limit > 0):
            raise ValueError(f"time_limit: expected a positive number of seconds or None, got "
                             f"{self.time_limit!r}")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise ValueError(f"patience: expected a positive integer or None, got "
                             f"{self.patience!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {self.schedule!r}")
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor: expected one of {MONITORS}, got {self.monitor!r}")


@dataclass
class EpochRecord:
    """What one epoch did. Training loss and accuracy are running means over the
    epoch's batches (train mode); validation values are None without a validation split."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: Optional[float]
    val_accuracy: Optional[float]
    val_auroc: Optional[float]
    lr: float
    grad_norm: float
    seconds: float


@dataclass
class History:
    """The result of :func:`fit`.

    Attributes:
        records: one :class:`EpochRecord` per completed epoch.
        best_epoch: the epoch whose weights the model holds at the end.
        stopped_early: whether ``patience`` or ``time_limit`` ended training before
            ``epochs``.
        seconds: wall time of :func:`fit` (interpolation coefficients, training,
            evaluation), summed over resumed sessions.
        train, val, test: metrics of the final (best) weights on each split:
            ``loss``, ``accuracy`` and, for two classes, ``auroc``; ``val`` is None
            without a validation split.
        out: the run folder, when :func:`fit` wrote files.
        time_limited: whether ``time_limit`` cut training (said on stderr, recorded in
            ``metrics.json``).
    """

    records: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    train: dict[str, float] = field(default_factory=dict)
    val: Optional[dict[str, float]] = None
    test: dict[str, float] = field(default_factory=dict)
    out: Optional[Path] = None
    time_limited: bool = False

    def curve(self, name: str) -> list[Optional[float]]:
        """One value per epoch of an :class:`EpochRecord` field, e.g. ``"val_accuracy"``."""
        names = [f.name for f in fields(EpochRecord)]
        if name not in names:
            raise ValueError(f"name: expected one of {names}, got {name!r}")
        return [getattr(record, name) for record in self.records]


# --------------------------------------------------------------------------- metrics
def auroc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve of binary ``labels`` (0/1) ranked by ``scores``.

    The Mann-Whitney statistic with average ranks for ties::

        AUROC = (sum_{positives} rank - P (P + 1) / 2) / (P N)
              = P(score_pos > score_neg) + 1/2 P(score_pos = score_neg)

    Args:
        scores: ``(batch,)`` higher means more likely positive.
        labels: ``(batch,)`` 0 or 1.

    Returns:
        The AUROC, or NaN when one of the two classes is absent.
    """
    if scores.dim() != 1 or labels.shape != scores.shape:
        raise ValueError(f"scores, labels: expected two tensors of shape (batch,), got "
                         f"{tuple(scores.shape)} and {tuple(labels.shape)}")
    scores = scores.detach().to(torch.float64).cpu()
    positive = labels.detach().cpu() == 1
    n_pos = int(positive.sum())
    n_neg = len(scores) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    last = torch.cumsum(counts, 0).to(torch.float64)
    average_rank = last - (counts.to(torch.float64) - 1) / 2
    ranks = average_rank[inverse]
    u_statistic = float(ranks[positive].sum()) - n_pos * (n_pos + 1) / 2
    return u_statistic / (n_pos * n_neg)


def _class_weight(config: TrainConfig, num_classes: int, device: torch.device) -> Optional[Tensor]:
    if config.class_weights is None:
        return None
    if len(config.class_weights) != num_classes:
        raise ValueError(f"class_weights: expected {num_classes} weights (one per class), got "
                         f"{len(config.class_weights)}")
    return torch.tensor(config.class_weights, dtype=torch.float32, device=device)


def _metrics(logits: Tensor, y: Tensor, weight: Optional[Tensor]) -> dict[str, float]:
    """Loss, accuracy and (two classes) AUROC of logits ``(batch, classes)``."""
    logits = logits.float()
    loss = float(F.cross_entropy(logits, y, weight=weight))
    if not math.isfinite(loss):
        raise ValueError(f"loss: not finite ({loss}) on {len(y)} series, so no metrics are "
                         "reported; the logits are too large (inputs out of scale?)")
    result = {
        "loss": loss,
        "accuracy": float((logits.argmax(-1) == y).float().mean()),
    }
    if logits.shape[-1] == 2:
        result["auroc"] = auroc(logits[:, 1] - logits[:, 0], y)
    return result


# ------------------------------------------------------------------------- batching
def _uses_coeffs(model: nn.Module) -> bool:
    return isinstance(getattr(model, "interpolation", None), str)


#: Interpolation coefficients by (id of a Split, interpolation); entries leave with their Split.
_COEFFS_CACHE: dict[tuple[int, str], Tensor] = {}


def _split_coeffs(model: nn.Module, split: Split) -> Optional[Tensor]:
    """Interpolation coefficients of a whole split, or None for models without a path.

    Computed once per split object and interpolation (torchcde's missing-value
    handling is slow) and kept while the split lives; splits are not expected to
    change in place.
    """
    if not _uses_coeffs(model):
        return None
    key = (id(split), model.interpolation)
    if key not in _COEFFS_CACHE:
        _COEFFS_CACHE[key] = interpolation_coeffs(split.x, split.times, split.lengths,
                                                  model.interpolation)
        weakref.finalize(split, _COEFFS_CACHE.pop, key, None)
    return _COEFFS_CACHE[key]


def _on_device(split: Split, device: torch.device) -> Split:
    """The split itself when already on ``device`` (so cached coefficients are found)."""
    return split if split.x.device == device else split.to(device)


def _batch(split: Split, coeffs: Optional[Tensor], index: Tensor) -> tuple[Tensor, dict[str, Any]]:
    """Inputs for series ``index``, cut to the longest of them: ``(y, model kwargs)``."""
    lengths = split.lengths[index]
    time = int(lengths.max())
    inputs: dict[str, Any] = {"x": split.x[index, :time], "times": split.times[:time],
                              "lengths": lengths}
    if coeffs is not None:
        extra = coeffs.shape[1] - split.x.shape[1]  # -1 for cubic, 0 for linear coefficients
        inputs["coeffs"] = coeffs[index, : time + extra]
    return split.y[index], inputs


def _world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _shard_logits(module: nn.Module, split: Split, coeffs: Optional[Tensor],
                  batch_size: int) -> Tensor:
    """Logits of the whole split; under torchrun each rank computes a contiguous shard."""
    rank, world = _world()
    shards = torch.tensor_split(torch.arange(len(split), device=split.x.device), world)
    own = shards[rank]
    pieces = [module(**_batch(split, coeffs, own[start:start + batch_size])[1])
              for start in range(0, len(own), batch_size)]
    logits = torch.cat(pieces) if pieces else split.x.new_zeros(0, 0)
    if world == 1:
        return logits
    width = torch.tensor([logits.shape[-1] if len(own) else 0], device=split.x.device)
    dist.all_reduce(width, op=dist.ReduceOp.MAX)
    longest = max(len(shard) for shard in shards)
    padded = logits.new_zeros(longest, int(width))
    padded[: len(own)] = logits.reshape(len(own), int(width))
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([piece[: len(shard)] for piece, shard in zip(gathered, shards, strict=True)])


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def predict(
    model: nn.Module,
    split: Split,
    batch_size: int = 256,
    coeffs: Optional[Tensor] = None,
) -> Tensor:
    """Logits of every series of a split, in eval mode.

    Args:
        model: a model of :func:`fwplab.build_model` (or any module with the same
            ``forward(x, times, lengths)``).
        split: the series; moved to the model's device.
        batch_size: series per forward pass.
        coeffs: the split's interpolation coefficients, if already computed.

    Returns:
        ``(batch, classes)`` logits on the model's device.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if len(split) == 0:
        raise ValueError("split: expected at least one series, got an empty split")
    split = _on_device(split, _device_of(model))
    if coeffs is None:
        coeffs = _split_coeffs(model, split)
    was_training = model.training
    model.eval()
    try:
        return _shard_logits(model, split, coeffs, batch_size)
    finally:
        model.train(was_training)


def evaluate(
    model: nn.Module,
    split: Split,
    batch_size: int = 256,
    class_weights: Optional[tuple[float, ...]] = None,
    coeffs: Optional[Tensor] = None,
) -> dict[str, float]:
    """Loss, accuracy and, for two classes, AUROC of a model on a split.

    Args:
        model, split, batch_size, coeffs: as :func:`predict`.
        class_weights: weight of each class in the loss.

    Returns:
        ``{"loss", "accuracy"}`` plus ``"auroc"`` when there are two classes.

    Raises:
        ValueError: bad arguments, non-finite logits or loss (no metrics are made up).
    """
    logits = predict(model, split, batch_size, coeffs)
    weight = None
    if class_weights is not None:  # TrainConfig checks the values, _class_weight the count
        weight = _class_weight(TrainConfig(class_weights=class_weights), logits.shape[-1],
                               logits.device)
    return _metrics(logits, split.y.to(logits.device), weight)


@torch.no_grad()
def predict_ensemble(models: list[nn.Module], split: Split, batch_size: int = 256) -> Tensor:
    """Log of the mean of the members' class probabilities, for every series of a split::

        log( (softmax(logits_1) + ... + softmax(logits_K)) / K )

    usable as logits (their softmax is the averaged probabilities).

    Args:
        models: the members (same classes), each as :func:`predict` takes it.
        split, batch_size: as :func:`predict`.

    Returns:
        ``(batch, classes)`` log-probabilities on the first member's device.
    """
    if not models:
        raise ValueError("models: expected at least one model, got none")
    device = _device_of(models[0])
    probabilities = [predict(model, split, batch_size).softmax(-1).to(device)
                     for model in models]
    classes = {p.shape[-1] for p in probabilities}
    if len(classes) != 1:
        raise ValueError(f"models: expected members with the same classes, got "
                         f"{sorted(classes)} outputs")
    return torch.stack(probabilities).mean(0).clamp_min(torch.finfo(torch.float32).tiny).log()


def evaluate_ensemble(models: list[nn.Module], split: Split, batch_size: int = 256
                      ) -> dict[str, float]:
    """Loss, accuracy and, for two classes, AUROC of the averaged probabilities
    (:func:`predict_ensemble`) on a split, as :func:`evaluate` gives them for one model."""
    logits = predict_ensemble(models, split, batch_size)
    return _metrics(logits, split.y.to(logits.device), None)


# ------------------------------------------------------------------------- the loop
def _carve_validation(dataset: Dataset, config: TrainConfig) -> tuple[Split, Optional[Split]]:
    if dataset.val is not None or config.val_fraction == 0:
        return dataset.train, dataset.val
    train = dataset.train
    parts = stratified_split(train.y, [1 - config.val_fraction, config.val_fraction],
                             split_generator(config.seed, "validation"))
    if len(parts[0]) == 0:
        raise ValueError(f"val_fraction: {config.val_fraction} of the {len(train)} training "
                         "series leaves none for training; lower it")
    if len(parts[1]) == 0:
        if config.patience is not None:
            raise ValueError(f"val_fraction: {config.val_fraction} of the {len(train)} training "
                             "series rounds to an empty validation split (it is taken class by "
                             "class), which patience needs; raise it")
        return train, None

    def select(index: Tensor) -> Split:
        index = index.to(train.x.device)
        return Split(train.x[index], train.lengths[index], train.y[index], train.times,
                     None if train.static is None else train.static[index])

    return select(parts[0]), select(parts[1])


def _warmup_factor(step: int, config: TrainConfig, total_steps: int) -> float:
    """Learning-rate factor after ``step`` steps: linear warm-up, then cosine or constant::

        factor = (step + 1) / warmup                                    step < warmup
        factor = r + (1 - r) (1 + cos(pi (step - warmup) / (total - warmup))) / 2   cosine
    """
    warmup = config.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    ratio = config.min_lr_ratio
    return ratio + (1.0 - ratio) * (1.0 + math.cos(math.pi * progress)) / 2.0


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    if config.warmup_steps:
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: _warmup_factor(step, config, total_steps))
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=total_steps, eta_min=config.lr * config.min_lr_ratio)
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=PLATEAU_FACTOR, patience=config.plateau_patience)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def _score(metrics: Optional[dict[str, float]], monitor: str) -> float:
    """Larger is better; NaN (e.g. AUROC of a one-class split) never wins."""
    if metrics is None:
        return -math.inf
    if monitor == "accuracy_then_loss":
        return metrics["accuracy"] - TIE_BREAK_WEIGHT * math.atan(metrics["loss"])
    value = metrics[monitor]
    if math.isnan(value):
        return -math.inf
    return -value if monitor == "loss" else value


def _all_finite(tensors: list[Tensor]) -> bool:
    """Whether every entry is finite (one reduction: a NaN or inf anywhere makes the sum so)."""
    return bool(torch.isfinite(torch.stack([t.detach().float().sum() for t in tensors]).sum()))


def _state_copy(module: nn.Module) -> dict[str, Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def _plain_config(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise ValueError("model: expected a model of fwplab.build_model (it records its "
                         "arguments in model.config, which checkpoints need)")
    return dict(config)


class _Trainer:
    """The state of one training run: splits, optimiser, schedule, best weights, history."""

    def __init__(self, model: nn.Module, dataset: Dataset, config: TrainConfig,
                 out_dir: Optional[Path], run_info: Optional[dict[str, Any]]) -> None:
        self.rank, self.world = _world()
        if config.batch_size % self.world:
            raise ValueError(f"batch_size: {config.batch_size} must be divisible by the number "
                             f"of processes ({self.world})")
        if len(dataset.train) == 0 or len(dataset.test) == 0:
            raise ValueError(f"dataset: expected series in the train and test splits, got "
                             f"{len(dataset.train)} and {len(dataset.test)}")
        expected = (getattr(model, "input_channels", None), getattr(model, "output_channels", None))
        if expected[1] is not None and expected[1] != dataset.num_classes:
            raise ValueError(f"model: it has {expected[1]} outputs but the dataset "
                             f"{dataset.name!r} has {dataset.num_classes} classes")
        if expected[0] is not None and expected[0] != dataset.input_channels:
            raise ValueError(f"model: it expects {expected[0]} input channels but the dataset "
                             f"{dataset.name!r} has {dataset.input_channels}")
        if config.monitor == "auroc" and dataset.num_classes != 2:
            raise ValueError(f"monitor: 'auroc' needs two classes, the dataset has "
                             f"{dataset.num_classes}")
        self.model, self.dataset, self.config = model, dataset, config
        self.model_config = _plain_config(model)
        self.run_info = dict(run_info or {})
        self.device = _device_of(model)
        self.weight = _class_weight(config, dataset.num_classes, self.device)
        self.classifier = getattr(model, "classifier", None)
        if config.grad_scale != 1.0 and not isinstance(self.classifier, nn.Module):
            raise ValueError("grad_scale: the model has no final linear layer named 'classifier'")

        train, val = _carve_validation(dataset, config)
        if config.patience is not None and val is None:
            raise ValueError("patience: early stopping needs a validation split; set "
                             "val_fraction > 0 or use a dataset that has one")
        self.splits = {"train": _on_device(train, self.device),
                       "test": _on_device(dataset.test, self.device)}
        if val is not None:
            self.splits["val"] = _on_device(val, self.device)
        self.coeffs = {name: _split_coeffs(model, split) for name, split in self.splits.items()}

        self.local_batch = config.batch_size // self.world
        self.sampler = DistributedSampler(range(len(train)), num_replicas=self.world,
                                          rank=self.rank, shuffle=True, seed=config.seed,
                                          drop_last=False)
        self.steps_per_epoch = math.ceil(len(self.sampler) / self.local_batch)
        self.network = DistributedDataParallel(model) if self.world > 1 else model
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.scheduler = _scheduler(self.optimizer, config, config.epochs * self.steps_per_epoch)

        self.checkpoint = None if out_dir is None else out_dir / CHECKPOINT_NAME
        self.history = History(out=out_dir if self.rank == 0 else None)
        self.best_state = _state_copy(model)
        self.best_score = -math.inf
        self.stale_epochs = 0
        self.epoch = 0  # the last completed epoch
        self.finished = False
        self.fresh = True  # False once restored from a checkpoint
        self.fingerprint = dataset_fingerprint(dataset) if out_dir is not None else None

    # -------------------------------------------------------------- checkpoints
    def restore(self, saved: dict[str, Any], allow_changed_data: bool) -> None:
        """Continue from a checkpoint of the same run (on the same data unless allowed)."""
        _check_resumable(saved, self.checkpoint, self.model_config, self.config,
                         self.dataset.name, self.fingerprint, allow_changed_data)
        _load_weights(self.checkpoint, self.model, saved["model"], "weights")
        _check_optimizer_state(self.checkpoint, saved["optimizer"], self.optimizer)
        _check_scheduler_state(self.checkpoint, saved["scheduler"], self.scheduler)
        scratch = build_model(**self.model_config).to(self.device)
        _load_weights(self.checkpoint, scratch, saved["best_model"], "best weights")
        _load_states(self.checkpoint, saved, self.optimizer, self.scheduler)
        self.best_state = saved["best_model"]
        self.best_score = saved["best_score"]
        self.stale_epochs = saved["stale_epochs"]
        self.epoch = saved["epoch"]
        self.finished = saved["finished"]
        self.history.records = [EpochRecord(**record) for record in saved["history"]]
        self.history.best_epoch = saved["best_epoch"]
        self.history.stopped_early = saved["stopped_early"]
        self.history.seconds = saved["seconds"]
        self.fresh = False

    def save(self) -> None:
        """Write the checkpoint atomically (rank 0 only)."""
        if self.checkpoint is None or self.rank != 0:
            return
        content = {
            "format": CHECKPOINT_FORMAT,
            "model_config": self.model_config,
            "model": self.model.state_dict(),
            "best_model": self.best_state,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(),
            "epoch": self.epoch,
            "finished": self.finished,
            "history": [asdict(record) for record in self.history.records],
            "best_epoch": self.history.best_epoch,
            "best_score": self.best_score,
            "stale_epochs": self.stale_epochs,
            "stopped_early": self.history.stopped_early,
            "seconds": self.history.seconds,
            "train_config": asdict(self.config),
            "dataset": self.dataset.name,
            "run": self.run_info,
            "data_fingerprint": self.fingerprint,
            "class_names": list(self.dataset.class_names),
        }
        _atomic_write(self.checkpoint, lambda target: torch.save(content, target))

    def check_writable(self) -> None:
        """Write and delete a trial checkpoint as large as the final one (rank 0 only).

        Its size is the current checkpoint's plus two copies of the parameters (the
        optimiser's moment estimates, which appear after the first step), so a full
        disk or a file-size limit stops the run before any training.
        """
        if self.checkpoint is None or self.rank != 0:
            return
        extra = 2 * sum(p.numel() * p.element_size() for p in self.parameters)
        _write_trial_checkpoint(self.checkpoint, {
            "model": self.model.state_dict(), "best_model": self.best_state,
            "optimizer": self.optimizer.state_dict(), "history": []}, extra)

    def _diverged(self, what: str, step: int) -> TrainingDiverged:
        if self.checkpoint is None:
            kept = "no files written"
        elif not self.history.records:
            kept = "no checkpoint was written yet (it diverged before the first epoch ended)"
        else:
            kept = f"kept the last good checkpoint {self.checkpoint} (epoch {self.epoch})"
        return TrainingDiverged(
            f"non-finite {what} at epoch {self.epoch + 1}, step {step}; {kept}; try a smaller "
            f"learning rate (--lr) or solver step (--step-size): {self._step_hint()}")

    def _step_hint(self) -> str:
        """The solver step the model takes, and how to make it smaller."""
        step = getattr(self.model, "step_size", None)
        times = self.splits["train"].times
        if step is None and len(times) > 1:
            step = float((times[1:] - times[:-1]).min())
        if step is None:
            return "pass a smaller --step-size (step_size=)"
        return (f"the solver's step is {step:.3g} time units (the smallest observation gap "
                f"unless given); pass e.g. --step-size {step / 4:.3g} (step_size=)")

    # ----------------------------------------------------------------- training
    def _step(self, index: Tensor, step: int) -> tuple[Tensor, float]:
        """One optimisation step on series ``index``: (loss sum, correct, count), grad norm."""
        y, inputs = _batch(self.splits["train"], self.coeffs["train"], index)
        try:
            logits = self.network(**inputs)
        except NonFiniteOutputError as error:
            if self.fresh and step == 1 and self.epoch == 0:
                # Untrained weights: the inputs are out of scale, not the learning rate.
                raise NonFiniteOutputError(f"train split: {error}; {self._step_hint()}"
                                           ) from None
            logits = None
        if logits is None:
            stats = torch.tensor([0.0, 0.0, float(len(y)), 1.0], dtype=torch.float64,
                                 device=self.device)
        else:
            loss = F.cross_entropy(logits, y, weight=self.weight)
            stats = torch.stack([loss.detach().double() * len(y),
                                 (logits.detach().argmax(-1) == y).sum().double(),
                                 torch.tensor(float(len(y)), dtype=torch.float64,
                                              device=self.device),
                                 (~torch.isfinite(loss.detach())).double()])
        if self.world > 1:
            dist.all_reduce(stats)  # every rank stops together
        if stats[3] > 0:
            raise self._diverged("loss", step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_scale != 1.0:
            for parameter in self.classifier.parameters():
                if parameter.grad is not None:
                    parameter.grad.mul_(self.config.grad_scale)
        norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.config.grad_clip or math.inf)
        if not torch.isfinite(norm):
            raise self._diverged("gradient", step)
        self.optimizer.step()
        if not _all_finite(self.parameters):
            raise self._diverged("weights", step)
        if self.config.schedule != "plateau":
            self.scheduler.step()
        return stats[:3], float(norm)

    def train_epoch(self, bar: tqdm) -> EpochRecord:
        """One pass over the training split, then validation and best-weight bookkeeping."""
        started = time.perf_counter()
        epoch = self.epoch + 1
        self.model.train()
        self.sampler.set_epoch(epoch - 1)
        order = torch.tensor(list(self.sampler), device=self.device)
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        norms = []
        for step, start in enumerate(range(0, len(order), self.local_batch), start=1):
            stats, norm = self._step(order[start:start + self.local_batch], step)
            totals += stats
            norms.append(norm)
            bar.update(1)
            bar.set_postfix(epoch=f"{epoch}/{self.config.epochs}",
                            loss=f"{float(totals[0] / totals[2]):.3f}",
                            acc=f"{float(totals[1] / totals[2]):.3f}", refresh=False)
        train_loss = float(totals[0] / totals[2])
        if self.config.schedule == "plateau":
            self.scheduler.step(train_loss)
        val = self.evaluate("val") if "val" in self.splits else None
        record = EpochRecord(
            epoch=epoch, train_loss=train_loss, train_accuracy=float(totals[1] / totals[2]),
            val_loss=None if val is None else val["loss"],
            val_accuracy=None if val is None else val["accuracy"],
            val_auroc=None if val is None else val.get("auroc"),
            lr=float(self.optimizer.param_groups[0]["lr"]),
            grad_norm=sum(norms) / len(norms), seconds=time.perf_counter() - started)
        if val is not None:
            bar.set_postfix(epoch=f"{epoch}/{self.config.epochs}", loss=f"{train_loss:.3f}",
                            acc=f"{record.train_accuracy:.3f}",
                            val_acc=f"{val['accuracy']:.3f}", refresh=False)

        self.history.records.append(record)
        score = _score(val, self.config.monitor)
        if val is None or score > self.best_score:
            self.best_score, self.stale_epochs, self.history.best_epoch = score, 0, epoch
            self.best_state = _state_copy(self.model)
        else:
            self.stale_epochs += 1
        if self.config.patience is not None and self.stale_epochs >= self.config.patience:
            self.history.stopped_early = True
        self.epoch = epoch
        self.finished = self.history.stopped_early or epoch == self.config.epochs
        return record

    def evaluate(self, name: str) -> dict[str, float]:
        """Metrics of the current weights on one split."""
        split = self.splits[name]
        try:
            logits = _evaluation_logits(self.model, split, self.coeffs[name],
                                        self.config.eval_batch_size)
            return _metrics(logits, split.y, self.weight)
        except ValueError as error:  # non-finite logits or loss: no metrics are made up
            raise NonFiniteOutputError(f"{name} split: {error}") from None

    def finish(self) -> History:
        """Load the best weights and evaluate them on every split."""
        self.model.load_state_dict(self.best_state)
        self.history.train = self.evaluate("train")
        self.history.val = self.evaluate("val") if "val" in self.splits else None
        self.history.test = self.evaluate("test")
        return self.history


def fit(
    model: nn.Module,
    dataset: Dataset,
    config: Optional[TrainConfig] = None,
    *,
    out: Optional[PathLike] = None,
    resume: bool = False,
    progress: bool = True,
    callback: Optional[Callable[[EpochRecord], None]] = None,
    run_info: Optional[dict[str, Any]] = None,
    allow_changed_data: bool = False,
    **overrides: Any,
) -> History:
    """Train a model on a dataset; the model ends holding its best weights.

    Args:
        model: from :func:`fwplab.build_model`, already on the device to train on.
        dataset: train, optional validation and test splits; moved to the model's device.
        config: hyperparameters; default :class:`TrainConfig`.
        out: run folder for ``checkpoint.pt`` (every epoch) and ``metrics.json``
            (at the end); None writes nothing.
        resume: continue from ``out/checkpoint.pt`` (model, optimizer, schedule, RNG
            states, history) when it exists; the configuration must be the saved one.
        progress: show a ``tqdm`` progress bar with live loss and accuracy when stderr
            is a terminal; otherwise about :data:`LOG_LINES` lines per run.
        callback: called with each epoch's :class:`EpochRecord` after its checkpoint.
        run_info: plain values stored in the checkpoint and ``metrics.json`` (the
            CLI records how to reload the dataset).
        allow_changed_data: resume even though the dataset's fingerprint differs from
            the one the checkpoint recorded (the new fingerprint is recorded from then on).
        **overrides: fields of :class:`TrainConfig`, e.g. ``epochs=20, lr=1e-3``.

    A fresh run seeds torch's and Python's global random generators with
    ``config.seed`` (dropout draws from them); a resumed run restores their states.

    With ``out``, only one process at a time may write the folder (a second one is
    refused while the first runs); a trial checkpoint is written and deleted before
    training; if the run fails before its first checkpoint, the folders it created
    are removed again.

    Returns:
        History: per-epoch records and the final train/val/test metrics.

    Raises:
        TrainingDiverged: non-finite loss, gradient or weights (the message names the
            epoch and step and the checkpoint kept).
        ValueError: bad arguments, a checkpoint that does not match, changed data,
            another process writing ``out``, non-finite logits from out-of-scale inputs.
        OSError: ``out`` cannot be written (one line; nothing partial is left).
    """
    session_start = time.perf_counter()
    config = TrainConfig(**{**asdict(config or TrainConfig()), **overrides})
    if out is not None and not str(out).strip():
        raise ValueError(f"out: expected a folder name, got {str(out)!r}")
    out_dir = None if out is None else Path(out)
    if resume and out_dir is None:
        raise ValueError("resume: needs out= (the run folder holding checkpoint.pt)")
    with _run_folder(out_dir, _world()[0]):
        if out_dir is not None and not resume and any(
                (out_dir / name).exists() for name in (CHECKPOINT_NAME, METRICS_NAME)):
            raise ValueError(f"out: {out_dir} already holds a run; resume it or choose another "
                             "folder")
        trainer = _Trainer(model, dataset, config, out_dir, run_info)
        if resume and trainer.checkpoint.exists():
            trainer.restore(load_checkpoint(trainer.checkpoint, map_location=trainer.device),
                            allow_changed_data)
        else:
            torch.manual_seed(config.seed)
            random.seed(config.seed)
        trainer.check_writable()

        history = trainer.history
        progress = progress and trainer.rank == 0
        interactive = progress and sys.stderr.isatty()
        desc = f"{trainer.model_config['name']} on {dataset.name}"
        prepare_kernel(model)  # a first build says so before the bar starts its clock
        bar = tqdm(total=config.epochs * trainer.steps_per_epoch,
                   initial=trainer.epoch * trainer.steps_per_epoch,
                   disable=not interactive, unit="step", dynamic_ncols=True, desc=desc)
        try:
            while not trainer.finished and trainer.epoch < config.epochs:
                record = trainer.train_epoch(bar)
                history.seconds += time.perf_counter() - session_start
                session_start = time.perf_counter()
                if config.time_limit is not None and not trainer.finished \
                        and _past_time_limit(history.seconds, config.time_limit, trainer):
                    history.stopped_early = trainer.finished = history.time_limited = True
                    if trainer.rank == 0:
                        print(f"fwplab: TIME LIMIT: training stopped after epoch {record.epoch} "
                              f"of {config.epochs} ({history.seconds:.0f} s >= time_limit "
                              f"{config.time_limit:g} s); this result depends on the "
                              "machine's speed", file=sys.stderr, flush=True)
                if progress and not interactive:
                    _log_epoch(desc, record, config.epochs, trainer.finished)
                trainer.save()
                if callback is not None and trainer.rank == 0:
                    callback(record)
        finally:
            bar.close()

        trainer.finish()
        history.seconds += time.perf_counter() - session_start
        if out_dir is not None and trainer.rank == 0:
            _write_json(out_dir / METRICS_NAME, _metrics_document(
                model, trainer.model_config, dataset, config, history, trainer.world, run_info))
    return history


#: Lines a non-interactive run (no terminal) prints per model instead of a progress bar.
LOG_LINES = 10


def _log_epoch(desc: str, record: EpochRecord, epochs: int, last: bool) -> None:
    """One line on stderr for every ``epochs / LOG_LINES`` epochs (and the last)."""
    if record.epoch % max(1, epochs // LOG_LINES) and not last:
        return
    val = "" if record.val_accuracy is None else f", val_acc {record.val_accuracy:.3f}"
    print(f"{desc}: epoch {record.epoch}/{epochs}, loss {record.train_loss:.3f}, acc "
          f"{record.train_accuracy:.3f}{val}", file=sys.stderr, flush=True)


def _past_time_limit(seconds: float, limit: float, trainer: "_Trainer") -> bool:
    """Whether training time passed ``limit``; under torchrun, whether it did on any process
    (all processes stop after the same epoch)."""
    past = torch.tensor(float(seconds >= limit), device=trainer.device)
    if trainer.world > 1:
        dist.all_reduce(past, op=dist.ReduceOp.MAX)
    return bool(past)


def _evaluation_logits(model: nn.Module, split: Split, coeffs: Optional[Tensor],
                       batch_size: int) -> Tensor:
    model.eval()
    try:
        with torch.no_grad():
            return _shard_logits(model, split, coeffs, batch_size)
    finally:
        model.train()


def _metrics_document(model: nn.Module, model_config: dict[str, Any], dataset: Dataset,
                      config: TrainConfig, history: History, world: int,
                      run_info: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The content of ``metrics.json``."""
    document: dict[str, Any] = {
        "model": model_config["name"],
        "dataset": dataset.name,
        "class_names": list(dataset.class_names),
        "test_accuracy": history.test["accuracy"],
        "train_accuracy": history.train["accuracy"],
        "val_accuracy": None if history.val is None else history.val["accuracy"],
        "test_loss": history.test["loss"],
        "epochs": len(history.records),
        "best_epoch": history.best_epoch,
        "stopped_early": history.stopped_early,
        "time_limited": history.time_limited,
        "seconds": round(history.seconds, 3),
        "parameters": count_parameters(model),
        "processes": world,
        "device": str(_device_of(model)),
    }
    if "auroc" in history.test:
        document["test_auroc"] = history.test["auroc"]
        document["train_auroc"] = history.train["auroc"]
    document["model_config"] = model_config
    document["train_config"] = asdict(config)
    document["run"] = dict(run_info or {})
    document["history"] = [asdict(record) for record in history.records]
    return document

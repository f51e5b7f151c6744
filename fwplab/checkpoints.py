"""Run folders: checkpoints written atomically, read back safely and checked field by field.

What :func:`fwplab.train.fit` keeps on disk, and how a run continues from it:

- :func:`load_checkpoint` loads ``checkpoint.pt`` with ``torch.load(weights_only=True)``
  (tensors and plain Python values only) and checks every field (presence, type, the
  history's records, the random generators' states, ``epoch`` within the run's epochs),
  so a damaged or crafted file fails in one line instead of a traceback later;
  :func:`load_model` rebuilds the trained model from it;
- every file is written through a temporary file renamed into place (``_atomic_write``):
  a full disk or an interrupt leaves the previous version, never half a file;
  ``metrics.json`` is strict JSON (``null`` for undefined numbers), one line per epoch;
- one process at a time writes a run folder (``_RunFolderLock``: an advisory lock the
  operating system releases when the process dies);
- a resumed run is checked against the checkpoint: the same model and training settings,
  an optimiser and schedule state that fit this run, and the same data
  (:func:`dataset_fingerprint`, SHA-256 of every split's tensors).

The names are also importable from :mod:`fwplab.train`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Union

try:  # POSIX: an advisory lock the operating system releases when the process dies
    import fcntl
except ImportError:  # Windows: an exclusive-create lock file instead (see _RunFolderLock)
    fcntl = None

import torch
from torch import Tensor, nn

from .data.dataset import Dataset
from .models import build_model, check_model_config

if TYPE_CHECKING:
    from .train import TrainConfig

__all__ = ["CHECKPOINT_NAME", "METRICS_NAME", "LOCK_NAME", "load_checkpoint", "load_model",
           "dataset_fingerprint"]

#: The checkpoint of a run folder (written after every epoch).
CHECKPOINT_NAME = "checkpoint.pt"
#: The run's results (written at the end).
METRICS_NAME = "metrics.json"
CHECKPOINT_FORMAT = 1
#: The lock file that makes one process the only writer of a run folder.
LOCK_NAME = ".fwplab-lock"
#: Temporary files of _atomic_write: ".<name>.<pid>.tmp".
_TEMPORARY = re.compile(r"\.(checkpoint\.pt|metrics\.json|ensemble\.pt)\.\d+\.tmp")

PathLike = Union[str, Path]


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temporary file in the same folder and ``os.replace``.

    On any failure (a full disk, a file-size limit, an interrupt) the temporary file
    is deleted and ``path`` keeps its previous content.

    Raises:
        OSError: one line naming ``path`` and the reason.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except (OSError, RuntimeError) as error:  # torch.save reports write errors as RuntimeError
        reason = " ".join(str(error).split()) or type(error).__name__
        raise OSError(f"{path}: could not be written ({reason[:200]}); its previous version, "
                      "if any, is kept") from None
    finally:
        if temporary.exists():
            temporary.unlink()


def _write_trial_checkpoint(checkpoint: Path, content: dict[str, Any], extra: int) -> None:
    """Write ``content`` and ``extra`` more bytes next to ``checkpoint``, then delete it:
    a full disk or a file-size limit stops a run before any training.

    Raises:
        OSError: one line naming the folder and the reason.
    """
    # The name of a checkpoint's temporary file: a trial cut short is cleaned up alike.
    trial = checkpoint.with_name(f".{checkpoint.name}.{os.getpid()}.tmp")
    try:
        torch.save(content, trial)
        with open(trial, "ab") as handle:
            for start in range(0, extra, 1 << 20):
                handle.write(bytes(min(1 << 20, extra - start)))
            handle.flush()
            os.fsync(handle.fileno())
    except (OSError, RuntimeError) as error:  # torch.save reports OSErrors as RuntimeError
        reason = " ".join(str(error).split()) or type(error).__name__
        raise OSError(f"{checkpoint.parent}: cannot write checkpoints there "
                      f"({reason[:200]}); nothing was trained") from None
    finally:
        trial.unlink(missing_ok=True)


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _compact(record: dict[str, Any]) -> dict[str, Any]:
    """A history record with floats to 6 significant digits (seconds: milliseconds)."""
    return {key: round(value, 3) if key == "seconds" else
            float(f"{value:.6g}") if isinstance(value, float) else value
            for key, value in record.items()}


def _write_json(path: Path, content: dict[str, Any]) -> None:
    """Strict JSON, indented, with one line per record of a ``history`` list."""
    content = _json_safe(content)
    history = content.get("history")
    if isinstance(history, list) and history and all(isinstance(r, dict) for r in history):
        rest = {key: value for key, value in content.items() if key != "history"}
        head = json.dumps(rest, indent=2, allow_nan=False)[:-2] if rest else "{"
        lines = ",\n".join("    " + json.dumps(_compact(record), allow_nan=False)
                            for record in history)
        text = f'{head}{"," if rest else ""}\n  "history": [\n{lines}\n  ]\n}}\n'
    else:
        text = json.dumps(content, indent=2, allow_nan=False) + "\n"
    _atomic_write(path, lambda target: target.write_text(text))


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


#: Every field of a checkpoint and the type it must have (bool is not accepted as int).
_CHECKPOINT_FIELDS: dict[str, tuple[type, ...]] = {
    "format": (int,), "model_config": (dict,), "model": (dict,), "best_model": (dict,),
    "optimizer": (dict,), "scheduler": (dict,), "rng": (dict,), "epoch": (int,),
    "finished": (bool,), "history": (list,), "best_epoch": (int,), "best_score": (int, float),
    "stale_epochs": (int,), "stopped_early": (bool,), "seconds": (int, float),
    "train_config": (dict,), "dataset": (str,), "run": (dict,),
}
#: Fields a checkpoint may lack (older checkpoints have no data fingerprint).
_OPTIONAL_FIELDS: dict[str, tuple[type, ...]] = {"data_fingerprint": (str,),
                                                 "class_names": (list,)}
#: The types of an EpochRecord's fields as stored in a checkpoint.
_RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "epoch": (int,), "train_loss": (int, float), "train_accuracy": (int, float),
    "val_loss": (int, float, type(None)), "val_accuracy": (int, float, type(None)),
    "val_auroc": (int, float, type(None)), "lr": (int, float), "grad_norm": (int, float),
    "seconds": (int, float),
}


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("None" if t is type(None) else t.__name__ for t in types)


def _check_state_dict(path: Path, name: str, state: dict[str, Any]) -> None:
    bad = next((key for key, value in state.items()
                if not isinstance(key, str) or not isinstance(value, Tensor)), None)
    if bad is not None:
        raise ValueError(f"{path}: field {name!r} must map names to tensors; entry {bad!r} "
                         f"holds {type(state[bad]).__name__}")


def _check_rng(path: Path, rng: dict[str, Any]) -> None:
    torch_state = rng.get("torch")
    if not (isinstance(torch_state, Tensor) and torch_state.dtype == torch.uint8
            and torch_state.dim() == 1):
        raise ValueError(f"{path}: field 'rng' must hold torch's generator state (a uint8 "
                         "tensor) under 'torch'")
    python_state = rng.get("python")
    valid = (isinstance(python_state, (tuple, list)) and len(python_state) == 3
             and _type_ok(python_state[0], (int,))
             and isinstance(python_state[1], (tuple, list))
             and all(_type_ok(item, (int,)) for item in python_state[1])
             and _type_ok(python_state[2], (int, float, type(None))))
    if not valid:
        raise ValueError(f"{path}: field 'rng' must hold Python's random state (version, "
                         "integers, gauss) under 'python'")
    cuda = rng.get("cuda")
    if cuda is not None and not (isinstance(cuda, (list, tuple))
                                 and all(isinstance(item, Tensor) for item in cuda)):
        raise ValueError(f"{path}: field 'rng' must hold a list of tensors under 'cuda'")


def _check_history(path: Path, history: list[Any], epoch: int) -> None:
    if len(history) != epoch:
        raise ValueError(f"{path}: field 'history' must hold one record per completed epoch "
                         f"({epoch}), holds {len(history)}")
    for index, record in enumerate(history):
        where = f"{path}: history record {index + 1}"
        if not isinstance(record, dict) or set(record) != set(_RECORD_FIELDS):
            got = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"{where} must have the fields {sorted(_RECORD_FIELDS)}, got {got}")
        for key, types in _RECORD_FIELDS.items():
            if not _type_ok(record[key], types):
                raise ValueError(f"{where}: {key!r} must be {_type_names(types)}, got "
                                 f"{type(record[key]).__name__}")
        if record["epoch"] != index + 1:
            raise ValueError(f"{where}: 'epoch' must be {index + 1}, got {record['epoch']}")


def _like(saved: Any, fresh: Any) -> bool:
    """Whether ``saved`` has the structure and value types of ``fresh`` (a state_dict of
    the same optimiser or schedule): the same keys, lengths, and numbers where numbers are
    (integers where integers are; no NaN)."""
    if isinstance(fresh, bool) or isinstance(fresh, str):
        return type(saved) is type(fresh)
    if isinstance(fresh, int):
        return _type_ok(saved, (int,))
    if isinstance(fresh, float):
        return _type_ok(saved, (int, float)) and not math.isnan(saved)
    if fresh is None:
        return saved is None or (_type_ok(saved, (int, float)) and not math.isnan(saved))
    if isinstance(fresh, dict):
        return isinstance(saved, dict) and set(saved) == set(fresh) and all(
            _like(saved[key], value) for key, value in fresh.items())
    if isinstance(fresh, (list, tuple)):
        return isinstance(saved, (list, tuple)) and len(saved) == len(fresh) and all(
            _like(a, b) for a, b in zip(saved, fresh, strict=True))
    if isinstance(fresh, Tensor):
        return isinstance(saved, Tensor) and saved.shape == fresh.shape
    return type(saved) is type(fresh)


#: Per-parameter entries of AdamW's state.
_ADAM_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def _check_optimizer_state(path: Path, saved: Any, optimizer: torch.optim.Optimizer) -> None:
    """Refuse an optimiser state that does not fit ``optimizer`` (one line naming the part)."""
    where = f"{path}: field 'optimizer'"
    fresh = optimizer.state_dict()
    if not isinstance(saved, dict) or set(saved) != {"state", "param_groups"}:
        raise ValueError(f"{where} must hold 'state' and 'param_groups'")
    if not _like(saved["param_groups"], fresh["param_groups"]):
        raise ValueError(f"{where}: 'param_groups' must have this run's {len(fresh['param_groups'])}"
                         f" group(s) with the keys {sorted(fresh['param_groups'][0])} and "
                         "numbers as hyperparameters")
    for group, own in zip(saved["param_groups"], fresh["param_groups"], strict=True):
        if list(group["params"]) != list(own["params"]) or not all(
                value >= 0 for key, value in group.items()
                if _type_ok(value, (int, float)) and key != "params"):
            raise ValueError(f"{where}: 'param_groups' must index this run's parameters and "
                             "hold non-negative hyperparameters")
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    state = saved["state"]
    if not isinstance(state, dict):
        raise ValueError(f"{where}: 'state' must be a dict")
    for index, entry in state.items():
        if not _type_ok(index, (int,)) or not 0 <= index < len(parameters):
            raise ValueError(f"{where}: 'state' names parameter {index!r}, the model has "
                             f"{len(parameters)}")
        shape = tuple(parameters[index].shape)
        if not isinstance(entry, dict) or set(entry) - {"step", *_ADAM_MOMENTS}:
            raise ValueError(f"{where}: the state of parameter {index} must hold 'step' and "
                             f"the moments {list(_ADAM_MOMENTS[:2])}")
        for name in _ADAM_MOMENTS:
            moment = entry.get(name)
            if name in entry and not (isinstance(moment, Tensor) and moment.is_floating_point()
                                      and tuple(moment.shape) == shape):
                raise ValueError(f"{where}: the state of parameter {index}: {name!r} must be "
                                 f"a float tensor of shape {shape}")
        step = entry.get("step")
        value = float(step) if isinstance(step, Tensor) and step.numel() == 1 else step
        if not (_type_ok(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{where}: the state of parameter {index}: 'step' must be a "
                             "non-negative number")


def _check_scheduler_state(path: Path, saved: Any, scheduler: Any) -> None:
    """Refuse a schedule state unlike the state of this run's schedule (one line)."""
    fresh = scheduler.state_dict()
    if not _like(saved, fresh):
        raise ValueError(f"{path}: field 'scheduler' must be the state of this run's "
                         f"{type(scheduler).__name__} (keys {sorted(fresh)}, numbers where "
                         "it has numbers)")
    epoch = saved.get("last_epoch")
    if epoch is not None and epoch < 0:
        raise ValueError(f"{path}: field 'scheduler': 'last_epoch' must be >= 0, got {epoch}")


def _validate_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Check every field of a loaded checkpoint; raise one line naming the first problem."""
    missing = sorted(set(_CHECKPOINT_FIELDS) - set(checkpoint))
    if missing:
        raise ValueError(f"{path}: not a complete fwplab checkpoint; missing field(s) "
                         f"{', '.join(missing)}")
    for name, types in {**_CHECKPOINT_FIELDS, **_OPTIONAL_FIELDS}.items():
        if name in checkpoint and not _type_ok(checkpoint[name], types):
            raise ValueError(f"{path}: field {name!r} must be {_type_names(types)}, got "
                             f"{type(checkpoint[name]).__name__}")
    model_config = checkpoint["model_config"]
    if not all(_type_ok(model_config.get(key), (int,)) for key in ("input_channels",
                                                                  "output_channels")):
        raise ValueError(f"{path}: field 'model_config' must give the model's integer "
                         "input_channels and output_channels")
    for name in ("model", "best_model"):
        _check_state_dict(path, name, checkpoint[name])
    try:  # shapes against the saved tensors before anything is allocated
        check_model_config(model_config, checkpoint["model"])
    except ValueError as error:
        raise ValueError(f"{path}: field 'model_config': {error}") from None
    _check_rng(path, checkpoint["rng"])
    from .train import TrainConfig  # here: fwplab.train imports this module

    try:
        config = TrainConfig(**checkpoint["train_config"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: field 'train_config' is not a valid TrainConfig "
                         f"({' '.join(str(error).split())})") from None
    epoch = checkpoint["epoch"]
    if not 0 <= epoch <= config.epochs:
        raise ValueError(f"{path}: field 'epoch' must lie in [0, {config.epochs}] (the run's "
                         f"epochs), got {epoch}")
    if not checkpoint["finished"] and epoch == config.epochs:
        raise ValueError(f"{path}: field 'finished' is false but all {epoch} epochs are done")
    _check_history(path, checkpoint["history"], epoch)
    for name in ("best_epoch", "stale_epochs"):
        if not 0 <= checkpoint[name] <= epoch:
            raise ValueError(f"{path}: field {name!r} must lie in [0, {epoch}], got "
                             f"{checkpoint[name]}")
    if not (math.isfinite(checkpoint["seconds"]) and checkpoint["seconds"] >= 0):
        raise ValueError(f"{path}: field 'seconds' must be a non-negative number, got "
                         f"{checkpoint['seconds']}")


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device, None] = "cpu"
                    ) -> dict[str, Any]:
    """Load a checkpoint written by :func:`fit` safely (``weights_only=True``) and check it.

    Every field is checked (presence, type, history records, random-generator states,
    ``epoch`` within the run's epochs), so a damaged or crafted file fails here in one
    line instead of later in a traceback. Error messages never quote the file's bytes.

    Args:
        path: a ``checkpoint.pt`` or the run folder holding it.
        map_location: where tensors go.

    Returns:
        The checkpoint dictionary: ``model`` and ``best_model`` state_dicts,
        ``model_config`` (the arguments of :func:`fwplab.build_model`),
        ``optimizer``, ``scheduler``, ``rng``, ``epoch``, ``history``, ``train_config``,
        ``data_fingerprint``, ...

    Raises:
        ValueError: missing file, not a fwplab checkpoint, or a field that is missing
            or invalid (one line naming the file and the field).
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise ValueError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise ValueError(f"{path}: not a readable fwplab checkpoint ({type(error).__name__}; "
                         "fwplab loads only tensors and plain Python values)") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a fwplab checkpoint (format {CHECKPOINT_FORMAT} expected)")
    _validate_checkpoint(path, checkpoint)
    return checkpoint


def _load_weights(path: Path, model: nn.Module, state: dict[str, Tensor], what: str) -> None:
    """``model.load_state_dict(state)`` with a one-line error naming the checkpoint."""
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        details = " ".join(str(error).split())
        raise ValueError(f"{path}: the saved {what} do not fit the model "
                         f"{getattr(model, 'name', type(model).__name__)} ({details[:300]})"
                         ) from None


def load_model(path: PathLike, map_location: Union[str, torch.device, None] = "cpu",
               best: bool = True) -> nn.Module:
    """Rebuild a trained model from a checkpoint (see :func:`load_checkpoint`).

    Args:
        path: a ``checkpoint.pt`` or the run folder holding it.
        map_location: where the weights go.
        best: the best epoch's weights (what ``metrics.json`` reports); False gives
            the last epoch's.

    Returns:
        The model in eval mode.

    Raises:
        ValueError: as :func:`load_checkpoint`, or weights that do not fit the model.
    """
    checkpoint = load_checkpoint(path, map_location)
    source = Path(path) / CHECKPOINT_NAME if Path(path).is_dir() else Path(path)
    model = build_model(**checkpoint["model_config"])
    _load_weights(source, model, checkpoint["best_model" if best else "model"], "weights")
    return model.to(map_location).eval() if map_location is not None else model.eval()


def dataset_fingerprint(dataset: Dataset) -> str:
    """SHA-256 of a dataset's content: every split's tensors, class and channel names.

    Two loads of the same files with the same options give the same fingerprint; a
    changed value, label or series anywhere gives another. :func:`fit` stores it in
    the checkpoint and compares it on resume.
    """
    digest = hashlib.sha256()
    digest.update(repr((dataset.name, dataset.class_names, dataset.channel_names,
                        dataset.static_names)).encode())
    for key in ("train", "val", "test"):
        split = getattr(dataset, key)
        digest.update(key.encode())
        if split is None:
            continue
        for tensor in (split.x, split.lengths, split.y, split.times, split.static):
            if tensor is None:
                digest.update(b"none")
                continue
            flat = tensor.detach().cpu().contiguous()
            digest.update(f"{flat.dtype}{tuple(flat.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


class _RunFolderLock:
    """Makes this process the only writer of a run folder, and cleans up after a failure.

    On POSIX it holds ``fcntl.flock`` on ``LOCK_NAME`` inside the folder: the operating
    system releases it when the process ends in any way (SIGKILL included), so a
    stale lock never blocks a later run. Without ``fcntl`` (Windows) the lock file is
    created exclusively and deleted at the end; after a crash it must be deleted by hand,
    which the refusal message says.

    Entering creates the folder (and missing parents) and removes temporary files
    that an interrupted checkpoint write left behind. Leaving deletes the lock file,
    and the folders it created if they are empty again (a run that failed before its
    first checkpoint leaves nothing).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.created: list[Path] = []
        self.handle: Optional[int] = None
        self.lock_path = folder / LOCK_NAME

    def _create_folder(self) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"out: {self.folder} exists and is not a folder")
        missing = [self.folder, *self.folder.parents]
        self.created = [p for p in missing if not p.exists()][::-1]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            self.created = [p for p in self.created if p.exists()]
            self._remove_created()
            raise OSError(f"{self.folder}: cannot create the run folder ({error.strerror or error})"
                          ) from None

    def __enter__(self) -> "_RunFolderLock":
        self._create_folder()
        try:
            self._acquire()
        except BaseException:
            self._remove_created()
            raise
        for orphan in self.folder.iterdir():
            if _TEMPORARY.fullmatch(orphan.name):
                orphan.unlink(missing_ok=True)  # left by a write that a signal cut short
        return self

    def _refusal(self) -> ValueError:
        try:
            owner = self.lock_path.read_text().strip() or "unknown"
        except OSError:
            owner = "unknown"
        extra = "" if fcntl is not None else f" (if no run is active, delete {self.lock_path})"
        return ValueError(f"out: another fwplab run (process {owner}) is writing {self.folder}; "
                          f"wait for it to end or choose another folder{extra}")

    def _acquire(self) -> None:
        for _ in range(10):  # retried only when the lock file is replaced meanwhile
            try:
                flags = os.O_RDWR | os.O_CREAT | (os.O_EXCL if fcntl is None else 0)
                handle = os.open(self.lock_path, flags, 0o644)
            except FileExistsError:
                raise self._refusal() from None
            except OSError as error:
                raise OSError(f"{self.folder}: cannot write there ({error.strerror or error})"
                              ) from None
            if fcntl is not None:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(handle)
                    raise self._refusal() from None
                try:
                    same = os.stat(self.lock_path).st_ino == os.fstat(handle).st_ino
                except FileNotFoundError:
                    same = False
                if not same:  # the previous writer deleted the file as we opened it
                    os.close(handle)
                    continue
            os.ftruncate(handle, 0)
            os.write(handle, f"{os.getpid()}\n".encode())
            self.handle = handle
            return
        raise self._refusal()

    def _remove_created(self) -> None:
        for folder in reversed(self.created):
            try:
                folder.rmdir()
            except OSError:
                break  # not empty: something of value is there

    def __exit__(self, *exc_info: Any) -> None:
        if self.handle is not None:
            self.lock_path.unlink(missing_ok=True)
            os.close(self.handle)  # releases the flock
            self.handle = None
        self._remove_created()


@contextmanager
def _run_folder(folder: Optional[Path], rank: int) -> Iterator[None]:
    """The lock of :class:`_RunFolderLock` on rank 0 when there is a folder; else nothing."""
    if folder is None or rank != 0:
        yield
        return
    with _RunFolderLock(folder):
        yield



def _check_resumable(saved: dict[str, Any], path: Path, model_config: dict[str, Any],
                     config: TrainConfig, dataset_name: str, fingerprint: Optional[str],
                     allow_changed_data: bool) -> None:
    """Refuse a checkpoint of another model, other settings or (unless allowed) other data."""
    if saved["model_config"] != model_config:
        raise ValueError(f"{path}: the checkpoint's model {saved['model_config']} differs from "
                         f"the model given {model_config}")
    differing = sorted(key for key, value in asdict(config).items()
                       if _plain(saved["train_config"].get(key)) != _plain(value))
    if differing:
        details = ", ".join(f"{key}={saved['train_config'].get(key)!r} (saved) vs "
                            f"{getattr(config, key)!r}" for key in differing)
        raise ValueError(f"{path}: resume needs the saved training settings; {details}")
    if saved["dataset"] != dataset_name:
        raise ValueError(f"{path}: the checkpoint was trained on {saved['dataset']!r}, not "
                         f"{dataset_name!r}")
    recorded = saved.get("data_fingerprint")
    if recorded is not None and recorded != fingerprint and not allow_changed_data:
        raise ValueError(f"{path}: the data differs from the data this run was "
                         f"trained on (fingerprint {recorded[:12]} saved, "
                         f"{fingerprint[:12]} now); resume on the original data, or "
                         "accept the change with allow_changed_data=True "
                         "(--allow-changed-data)")


def _load_states(path: Path, saved: dict[str, Any], optimizer: torch.optim.Optimizer,
                 scheduler: Any) -> None:
    """Load the saved optimiser, schedule and random generator states (checked before by
    :func:`_check_optimizer_state` and :func:`_check_scheduler_state`); one line naming
    the state that does not fit."""
    for what, key, load in (("optimizer state", "optimizer", optimizer.load_state_dict),
                            ("schedule state", "scheduler", scheduler.load_state_dict),
                            ("random generator state", "rng", _set_rng_state)):
        try:
            load(saved[key])
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as error:
            details = " ".join(str(error).split()) or type(error).__name__
            raise ValueError(f"{path}: the saved {what} does not fit this run "
                             f"({details[:200]})") from None


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value

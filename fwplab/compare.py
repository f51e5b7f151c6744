"""``fwplab compare``: models x data sets (or environments) x seeds in one resumable command.

::

    fwplab compare --models delta_cde,gru,discrete_delta,ncde \\
        --data japanese-vowels spirals A_TRAIN.ts:A_TEST.ts --seeds 0,1,2 --out runs/compare
    fwplab compare --models latent-ode,latent-ode-rfwp --envs swimmer,hopper \\
        --seeds 1,2,3 --rl-preset small --out runs/compare-rl

Exactly one of ``--data`` (the train grid) and ``--envs`` (the RL grid) is given.

**The train grid.** Every cell is one ``fwplab train`` run (the same settings a single
run would get: a preset for data that has one, settings adapted to the data otherwise)
in ``OUT/runs/DATA-MODEL-seedS``; it is finished once its ``metrics.json`` exists.
At the end it writes, from every finished cell:

- ``OUT/results.csv``: one row per run (accuracies, seconds, parameters, epochs);
- ``OUT/results.md``: a Markdown table, one row per data set and model: mean +- std
  test accuracy over seeds, mean seconds, parameters, seeds finished;
- ``OUT/results.png``: test accuracy of each model on each data set (mean, with the
  standard deviation as error bars).

A model of :data:`CLASSIFIER_BASELINES` (``rocket``: MiniRocket and a ridge classifier
through aeon, :mod:`fwplab.rocket`; ``pip install 'fwplab[baselines]'``) sits in the grid
beside the trained models, e.g. ``--models delta_cde,gru,rocket``: its cell is one
``fwplab baseline --model rocket --seed S`` run on the same data and ``--missing-rate``
(:func:`run_baseline`: no training loop, so ``--epochs`` and ``--device`` do not apply),
with its own folder, settings record and ``metrics.json`` (test and train accuracy, seed,
seconds; no parameter count, blank in the tables). Without aeon such a grid is refused in
one line before any cell runs.

**The RL grid.** The models are world models of ``fwplab rl`` (``latent-ode``,
``latent-ode-rfwp``, ``latent-ode-cfwp``), the environments its continuous-action
semi-MDPs (``hopper``, ``swimmer``, ``half_cheetah``). Every cell is one ``fwplab rl
--preset P --env E --model M --seed S`` run (``--rl-preset P``, default ``small``; with
``--epochs N`` and ``--corrected`` passed on) in ``OUT/runs/ENV-MODEL-seedS``. Its
``metrics.json`` is rewritten after every epoch, so a cell is finished once that file
counts all the epochs of its settings (``epochs_done == config.epochs``). At the end:

- ``OUT/results.csv``: one row per run (:data:`RL_RESULT_FIELDS`): the last and best
  evaluation return, the last world-model test MSE, epochs, real decisions, seconds
  (summed over the epochs), world-model parameters;
- ``OUT/results.md``: one row per environment and model: mean +- std over seeds of the
  final evaluation return and of the final world-model test MSE, parameters, seeds;
- ``OUT/results.png``: per environment, the evaluation return per epoch (epoch 0 is the
  random phase) and the world-model test MSE per epoch (from epoch 1), the mean over
  seeds (up to the last epoch all of them reached) with a shaded +-1 std band, one line
  per model.

**Both grids.** An unfinished cell with a ``checkpoint.pt`` is continued with
``--resume``, a finished one is read back, so running the same command again after an
interruption finishes the grid without repeating work. A run that fails is reported in
one line and left out of the tables (its folder stays for inspection); the command then
ends with exit status 1. Besides:

- *Signals.* The first Ctrl-C, SIGTERM or SIGHUP stops the grid: the cell in training
  stops too (keeping its last checkpoint), no further cell starts, no table is written,
  and one line on stderr says how many cells finished and to run the same command again;
  the exit status is 128 + the signal's number (:class:`GridStopped` from the functions).
- *Settings.* Before a cell first runs, its settings (:func:`cell_settings`: the
  ``fwplab`` flags but ``--out``, ``--device`` and ``--no-progress``, data and rules files
  by their contents' hash) are written to ``OUT/runs/CELL/compare-cell.json``. A started
  cell (a checkpoint or metrics) is reused only when that record equals the settings
  asked; otherwise the command refuses in one line naming the cell and the differing
  settings, before running anything, or with ``--retrain-mismatched`` deletes such cells
  and trains them afresh.
- *Independent runs.* A model, seed, data set or environment named twice is refused.
- *Size.* A grid of more than :data:`MAX_CELLS` cells needs ``--max-cells N``.
- *Corrupt results.* An unreadable ``metrics.json`` is one failure line naming the file;
  the grid goes on without that cell.
- *Jobs.* ``--launcher local`` or ``slurm`` runs each unfinished cell as a submitit job
  (:mod:`fwplab.launch`); ``--status OUT`` lists every cell as pending, running, done or
  failed (with the job's last error line and log) and changes nothing; ``--collect OUT``
  writes the tables and the plot from the finished cells, naming the missing ones. The
  grid's cells are recorded in ``OUT/grid.json`` for both.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import importlib.util
import io
import itertools
import json
import os
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from tqdm.auto import tqdm

from .grid_results import (
    RESULT_FIELDS,
    RL_RESULT_FIELDS,
    Row,
    plot_results,
    plot_rl_results,
    write_rl_tables,
    write_tables,
)
from .launch import LAUNCHERS, Resources, job_state, read_jobs, run_local, submit
from .rl.envs import ENVS
from .rl.presets import RL_PRESETS
from .rl.world_models import WORLD_MODELS
from .checkpoints import _write_json
from .train import LOCK_NAME

try:  # POSIX: whether a cell's folder lock is held (a run writing it)
    import fcntl
except ImportError:  # Windows: the lock file's presence
    fcntl = None  # type: ignore[assignment]

__all__ = ["DataSource", "parse_data", "compare", "compare_rl", "status", "cell_settings",
           "GridStopped", "write_tables", "write_rl_tables", "plot_results", "plot_rl_results",
           "run_baseline", "RESULT_FIELDS", "RL_RESULT_FIELDS", "MAX_CELLS", "CELL_RECORD",
           "GRID_RECORD", "CLASSIFIER_BASELINES"]

#: The environments of the RL grid: those with continuous actions.
_RL_ENVS = tuple(name for name, spec in ENVS.items() if spec.continuous_actions)
#: The signals that stop a grid: Ctrl-C, SIGTERM, SIGHUP.
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                      if hasattr(signal, name))
#: Exit statuses of a run stopped by one of them (128 + the signal's number).
_INTERRUPTED = frozenset(128 + int(signum) for signum in _STOP_SIGNALS)
#: The largest grid run without an explicit ``--max-cells``.
MAX_CELLS = 200
#: Classifiers of the train grid fitted by ``fwplab baseline`` (no training loop), by name.
CLASSIFIER_BASELINES = ("rocket",)
#: The ``fwplab train`` flags of the grid a baseline cell takes too (the others set training).
_BASELINE_FLAGS = ("--missing-rate",)
#: The exit status of a failed command.
_EXIT_ERROR = 1



@dataclass(frozen=True)
class DataSource:
    """One data set of the grid: a name of ``fwplab train --dataset`` or a TRAIN/TEST pair.

    Attributes:
        label: the name used in folders and tables.
        argv: the ``fwplab train`` arguments that load it.
    """

    label: str
    argv: tuple[str, ...]


def parse_data(item: str, dataset_names: Sequence[str]) -> DataSource:
    """A :class:`DataSource` from ``NAME``, ``TRAIN.ts:TEST.ts`` or ``X_TRAIN.ts``.

    ``X_TRAIN.ts`` alone stands for the pair ``X_TRAIN.ts:X_TEST.ts``.

    Raises:
        ValueError: not a dataset name, and not an existing ``.ts`` pair.
    """
    if item in dataset_names:
        return DataSource(item, ("--dataset", item))
    if ":" in item:
        train, test = item.rsplit(":", 1)
    elif item.endswith("_TRAIN.ts"):
        train, test = item, item[: -len("_TRAIN.ts")] + "_TEST.ts"
    else:
        raise ValueError(f"--data: expected a dataset name ({', '.join(dataset_names)}), "
                         f"TRAIN.ts:TEST.ts or X_TRAIN.ts, got {item!r}")
    for path in (train, test):
        if not Path(path).is_file():
            raise ValueError(f"--data: {path}: file not found")
    label = Path(train).name.removesuffix(".ts").removesuffix("_TRAIN") or "data"
    return DataSource(label, ("--train", train, "--test", test))


# ----------------------------------------------------------------------- cells
@dataclass(frozen=True)
class _Cell:
    """One run of a grid: its row key (data set or environment, model, seed), its folder
    and the ``fwplab`` arguments of a fresh run (``argv[0]`` is the sub-command)."""

    first: str
    model: str
    seed: int
    folder: Path
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.first} / {self.model} / seed {self.seed}"


class GridStopped(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP stopped a grid: the finished cells are kept, and running
    the same command again finishes it (interrupted cells resume from their checkpoints).

    Attributes:
        signum: the signal's number.
        finished: cells finished when it stopped.
        total: cells of the grid.
    """

    def __init__(self, signum: int, finished: int, total: int) -> None:
        super().__init__(signum)
        self.signum, self.finished, self.total = signum, finished, total

    def __str__(self) -> str:
        return (f"stopped by {signal.Signals(self.signum).name} with {self.finished} of "
                f"{self.total} cells finished (kept); run the same command again to finish "
                "the grid")


class _Unreadable(ValueError):
    """A cell's ``metrics.json`` that cannot be read."""


def _unique(flag: str, items: Sequence[Any]) -> None:
    twice = [str(item) for item in dict.fromkeys(i for i in items if items.count(i) > 1)]
    if twice:
        raise ValueError(f"{flag}: {', '.join(twice)} named more than once "
                         f"({','.join(map(str, items))}); name each once, so that every cell "
                         "is an independent run")


def _grid_cells(heads: dict[str, tuple[str, ...]], models: Sequence[str], seeds: Sequence[int],
                out: Path, extra_argv: Sequence[str]) -> list[_Cell]:
    """The cells of ``heads`` x models x seeds, in ``out/runs/FIRST-MODEL-seedS``; a fresh
    run's argv is the head (the sub-command and the data set's or environment's flags), then
    ``--model M --seed S --out FOLDER --no-progress`` and ``extra_argv``.

    Raises:
        ValueError: a model or a seed is named twice.
    """
    _unique("--models", list(models))
    _unique("--seeds", list(seeds))
    cells = []
    for (first, head), model, seed in itertools.product(heads.items(), models, seeds):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in first)
        folder = out / "runs" / f"{safe}-{model}-seed{seed}"
        cells.append(_Cell(first, model, seed, folder, (
            *head, "--model", model, "--seed", str(seed), "--out", str(folder), "--no-progress",
            *extra_argv)))
    return cells


#: Flags of a cell's argv that say where it runs, not what it computes (left out of its
#: settings record), and whether each takes a value.
_PLACE_FLAGS = {"--out": True, "--device": True, "--no-progress": False}
#: Flags whose value is a file: the record holds the file's content hash.
_FILE_FLAGS = ("--train", "--test", "--rules-from")


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return "sha256:" + sha.hexdigest()[:16]


def _file_digest(path: str) -> str:
    stat = os.stat(path)
    return _digest(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


def cell_settings(argv: Sequence[str]) -> dict[str, str]:
    """The canonical settings record of a cell's ``fwplab`` argv: ``{"command": SUB,
    FLAG: VALUE, ...}`` without ``--out``, ``--device`` and ``--no-progress``, a flag
    without a value as ``"on"``, a repeated flag's values joined by commas, and files
    (``--train``, ``--test``, ``--rules-from``) by their contents' SHA-256.

    Two runs with the same record train the same model on the same data with the same
    settings (the device aside).
    """
    settings = {"command": argv[0]}
    tokens, i = list(argv[1:]), 0
    while i < len(tokens):
        flag = tokens[i]
        valued = i + 1 < len(tokens) and not tokens[i + 1].startswith("--")
        value = tokens[i + 1] if valued else "on"
        i += 2 if valued else 1
        if flag in _PLACE_FLAGS:
            continue
        if flag in _FILE_FLAGS:
            value = _file_digest(value)
        settings[flag] = f"{settings[flag]},{value}" if flag in settings else value
    return settings


#: The settings record a grid writes into each cell's folder before the cell first runs.
CELL_RECORD = "compare-cell.json"


def _recorded_settings(folder: Path) -> dict[str, str] | None:
    try:
        record = json.loads((folder / CELL_RECORD).read_text())
        return record["settings"] if isinstance(record.get("settings"), dict) else None
    except (OSError, ValueError, AttributeError):
        return None


def _settings_difference(recorded: dict[str, str] | None, asked: dict[str, str]) -> str:
    if recorded is None:
        return f"no readable {CELL_RECORD} (made by hand or by an older fwplab)"
    flags = [flag for flag in dict.fromkeys([*asked, *recorded])
             if recorded.get(flag) != asked.get(flag)]
    return "; ".join(f"{flag} {recorded.get(flag, 'not given')} (asked "
                     f"{asked.get(flag, 'not given')})" for flag in flags)


def _started(folder: Path) -> bool:
    return (folder / "metrics.json").is_file() or (folder / "checkpoint.pt").is_file()


def _folder_busy(folder: Path) -> bool:
    """Whether a live process holds the cell's run-folder lock (``fwplab train/rl``)."""
    lock = folder / LOCK_NAME
    if fcntl is None or not lock.is_file():
        return lock.is_file()
    try:
        handle = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(handle)  # closing releases a lock taken here
    return False


def _check_settings(cells: Sequence[_Cell], retrain_mismatched: bool,
                    in_flight: Sequence[str] = ()) -> None:
    """Refuse a started cell whose recorded settings differ from those asked, or (with
    ``retrain_mismatched``) delete it so that it trains afresh.

    Raises:
        ValueError: one line naming the first such cell, the differing settings and the fix.
    """
    mismatched = []
    for cell in cells:
        if _started(cell.folder) or cell.folder.name in in_flight:
            asked = cell_settings(cell.argv)
            recorded = _recorded_settings(cell.folder)
            if recorded != asked:
                mismatched.append((cell, _settings_difference(recorded, asked)))
    if not mismatched:
        return
    cell, difference = mismatched[0]
    more = f" (and {len(mismatched) - 1} more cells)" if len(mismatched) > 1 else ""
    if not retrain_mismatched:
        raise ValueError(f"{cell.folder} was trained with other settings than asked: "
                         f"{difference}{more}; pass --retrain-mismatched to delete and retrain "
                         "such cells, or choose another --out")
    busy = [c.folder for c, _ in mismatched if _folder_busy(c.folder) or c.folder.name in in_flight]
    if busy:
        raise ValueError(f"{busy[0]} has other settings than asked and is still being written "
                         "(a run or a job in flight); stop it first, then retrain")
    for cell, _ in mismatched:
        shutil.rmtree(cell.folder)


def _begin(cell: _Cell) -> None:
    """Write the cell's settings record (before its first run; a no-op once it started)."""
    if not _started(cell.folder):
        cell.folder.mkdir(parents=True, exist_ok=True)
        _write_json(cell.folder / CELL_RECORD, {"settings": cell_settings(cell.argv),
                                                 "argv": list(cell.argv)})


def _cell_argv(cell: _Cell) -> list[str]:
    """A fresh run's argv, or ``--resume`` when the cell has a checkpoint."""
    if (cell.folder / "checkpoint.pt").is_file():
        return [cell.argv[0], "--resume", str(cell.folder), "--no-progress"]
    return list(cell.argv)


@contextmanager
def _grid_signals() -> Iterator[dict[str, Any]]:
    """Catch Ctrl-C, SIGTERM and SIGHUP for the grid's time (main thread only).

    Yields a dict: ``signum`` (``None`` until a signal comes; then the first one) and
    ``in_cell`` (set by the caller while a cell trains: a signal then also raises
    ``KeyboardInterrupt`` there, so the cell stops at once and keeps its checkpoint).
    """
    state: dict[str, Any] = {"signum": None, "in_cell": False}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def stop(signum: int, frame: Any) -> None:
        state["signum"] = state["signum"] or signum
        if state["in_cell"]:
            raise KeyboardInterrupt(signum)

    previous = {signum: signal.signal(signum, stop) for signum in _STOP_SIGNALS}
    try:
        yield state
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _read_cell(cell: _Cell, read_row: Callable[[_Cell], Row | None]) -> Row | None:
    try:
        return read_row(cell)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
        raise _Unreadable(f"{cell.folder / 'metrics.json'}: unreadable metrics ("
                          f"{' '.join(str(error).split()) or type(error).__name__}); delete "
                          "the cell's folder to train it again") from None


def _run_cells(
    cells: Sequence[_Cell],
    train_main: Callable[[list[str]], int],
    read_row: Callable[[_Cell], Row | None],
    progress: bool,
) -> tuple[list[Row], list[str]]:
    """Run, resume or read back every cell under one progress bar; ``(rows, failures)``.

    Raises:
        GridStopped: a signal came; the cell in training stopped too.
    """
    rows, failures = [], []
    bar = tqdm(cells, disable=not progress, unit="run", desc="fwplab compare", dynamic_ncols=True)
    with _grid_signals() as stop:
        for cell in bar:
            if stop["signum"]:
                break
            bar.set_postfix_str(str(cell), refresh=True)
            try:
                row = _read_cell(cell, read_row)
            except _Unreadable as error:
                failures.append(f"{cell}: {error}")
                continue
            if row is None:
                argv = _cell_argv(cell)
                try:
                    _begin(cell)
                    stop["in_cell"] = True
                    with redirect_stdout(io.StringIO()):  # the bar is the command's output
                        status = train_main(argv)
                except KeyboardInterrupt:
                    status = 128 + (stop["signum"] or signal.SIGINT)
                except OSError as error:
                    status = _EXIT_ERROR
                    failures.append(f"{cell}: {' '.join(str(error).split())}")
                    continue
                finally:
                    stop["in_cell"] = False
                if status in _INTERRUPTED:
                    stop["signum"] = stop["signum"] or status - 128
                try:
                    row = _read_cell(cell, read_row)
                except _Unreadable as error:
                    failures.append(f"{cell}: {error}")
                    continue
                if row is None:
                    if not stop["signum"]:
                        failures.append(f"{cell}: fwplab {' '.join(argv)} ended with status "
                                        f"{status}")
                    continue
            rows.append(row)
    bar.close()
    if stop["signum"]:
        raise GridStopped(int(stop["signum"]), len(rows), len(cells))
    return rows, failures


def _read_metrics(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "metrics.json").read_text())


def _train_row(cell: _Cell) -> Row | None:
    if not (cell.folder / "metrics.json").is_file():
        return None
    metrics = _read_metrics(cell.folder)
    return {"data": cell.first, "model": cell.model, "seed": cell.seed,
            **{field: metrics[field] for field in RESULT_FIELDS[3:-1]},
            "folder": str(cell.folder)}


def _rl_row(cell: _Cell) -> Row | None:
    if not (cell.folder / "metrics.json").is_file():
        return None
    metrics = _read_metrics(cell.folder)
    if metrics["epochs_done"] != metrics["config"]["epochs"]:
        return None
    returns = metrics["eval_return_curve"]
    mse = metrics["world_model_test_mse_curve"]
    return {"env": cell.first, "model": cell.model, "seed": cell.seed,
            "final_eval_return": returns[-1], "best_eval_return": max(returns),
            "final_world_model_test_mse": mse[-1], "epochs": metrics["epochs_done"],
            "decisions": metrics["decisions"],
            "seconds": sum(epoch["seconds"] for epoch in metrics["history"]),
            "parameters": metrics["parameters"], "folder": str(cell.folder),
            "eval_return_curve": returns, "world_model_test_mse_curve": mse}


#: The row reader of each kind of cell (``fwplab train``, ``baseline``, ``rl``).
_READERS: dict[str, Callable[[_Cell], Row | None]] = {"train": _train_row,
                                                      "baseline": _train_row, "rl": _rl_row}
#: The grid's record (its kind and its cells), for ``--status`` and ``--collect``.
GRID_RECORD = "grid.json"


def _write_grid(out: Path, cells: Sequence[_Cell]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / GRID_RECORD, {"cells": [
        {"first": c.first, "model": c.model, "seed": c.seed, "name": c.folder.name,
         "argv": list(c.argv)} for c in cells]})


def _read_grid(out: Path) -> list[_Cell]:
    path = out / GRID_RECORD
    try:
        record = json.loads(path.read_text())
        return [_Cell(str(c["first"]), str(c["model"]), int(c["seed"]),
                      out / "runs" / str(c["name"]), tuple(map(str, c["argv"])))
                for c in record["cells"]]
    except FileNotFoundError:
        raise ValueError(f"{path}: not found; expected the folder of a fwplab compare grid "
                         "(its --out)") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: unreadable grid record ({' '.join(str(error).split())}); "
                         "run the grid's fwplab compare command again to rewrite it") from None


def _run_grid(cells: list[_Cell], out: Path, train_main: Callable[[list[str]], int],
              progress: bool, retrain_mismatched: bool, max_cells: int, launcher: str,
              resources: Resources | None) -> tuple[list[Row], list[str]]:
    """Check the grid, record it, then run its cells in this process or as jobs."""
    if len(cells) > max_cells:
        raise ValueError(f"the grid has {len(cells)} cells, more than --max-cells {max_cells}; "
                         f"pass --max-cells {len(cells)} to run it")
    if launcher not in LAUNCHERS:
        raise ValueError(f"--launcher: expected one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    jobs = read_jobs(out) if launcher != "inprocess" else {}
    in_flight = [cell.folder.name for cell in cells if cell.folder.name in jobs
                 and job_state(out, jobs[cell.folder.name])[0] in ("pending", "running")]
    _check_settings(cells, retrain_mismatched, in_flight)
    _write_grid(out, cells)
    read_row = _READERS[cells[0].argv[0]] if cells else _train_row
    if launcher == "inprocess":
        return _run_cells(cells, train_main, read_row, progress)
    return _launch(cells, out, read_row, launcher, resources or Resources(), in_flight)


def _absolute(argv: list[str]) -> list[str]:
    """``argv`` with the paths it names made absolute: a job may start in another folder."""
    return [str(Path(token).resolve()) if i and argv[i - 1] in (*_FILE_FLAGS, "--out", "--resume")
            else token for i, token in enumerate(argv)]


def _launch(cells: list[_Cell], out: Path, read_row: Callable[[_Cell], Row | None],
            launcher: str, resources: Resources, in_flight: Sequence[str],
            ) -> tuple[list[Row], list[str]]:
    """Submit every unfinished cell not in flight as a job; ``local`` waits for them and
    returns the rows, ``slurm`` returns ``([], [])`` once submitted."""
    todo, failures = [], []
    for cell in cells:
        try:
            done = _read_cell(cell, read_row) is not None
        except _Unreadable as error:
            failures.append(f"{cell}: {error}")
            continue
        if not done and cell.folder.name not in in_flight:
            try:
                _begin(cell)
            except OSError as error:
                failures.append(f"{cell}: {' '.join(str(error).split())}")
                continue
            todo.append((cell.folder.name, _absolute(_cell_argv(cell))))
    if in_flight and launcher == "local":
        raise ValueError(f"{out / 'runs' / in_flight[0]}: its local job is still running "
                         "(from an earlier fwplab compare); wait for it to end or stop it")
    if launcher == "slurm":
        jobs = submit("slurm", todo, out, resources)
        ids = sorted({str(job.job_id).split("_")[0] for job in jobs.values()})
        print(f"fwplab compare: submitted {len(todo)} jobs (slurm {', '.join(ids) or 'none'}); "
              f"{len(in_flight)} already in flight; follow them with fwplab compare --status "
              f"{out}, then tabulate with fwplab compare --collect {out}")
        return [], failures
    with _grid_signals() as stop:
        run_local(todo, out, resources, lambda: bool(stop["signum"]))
    rows, submitted = [], {name for name, _ in todo}
    for cell in cells:
        try:
            row = _read_cell(cell, read_row)
        except _Unreadable:
            continue  # already reported
        if row is not None:
            rows.append(row)
        elif cell.folder.name in submitted and not stop["signum"]:
            record = read_jobs(out).get(cell.folder.name)
            failures.append(f"{cell}: " + (job_state(out, record)[1] if record else
                                           "did not finish"))
    if stop["signum"]:
        raise GridStopped(int(stop["signum"]), len(rows), len(cells))
    return rows, failures


def compare(
    models: Sequence[str],
    data: Sequence[DataSource],
    seeds: Sequence[int],
    out: Path,
    train_main: Callable[[list[str]], int],
    extra_argv: Sequence[str] = (),
    progress: bool = True,
    retrain_mismatched: bool = False,
    max_cells: int = MAX_CELLS,
    launcher: str = "inprocess",
    resources: Resources | None = None,
) -> tuple[list[Row], list[str]]:
    """Run (or read back, or resume) every ``fwplab train`` cell of models x data x seeds.

    Args:
        models: model names of ``fwplab train --model`` or of
            :data:`CLASSIFIER_BASELINES` (cells of ``fwplab baseline``), each once.
        data: the data sets.
        seeds: training seeds, each once.
        out: the comparison's folder.
        train_main: runs ``fwplab`` with the given arguments and returns its exit
            status (:func:`fwplab.cli.main`; the ``inprocess`` launcher only).
        extra_argv: further ``fwplab train`` flags given to every fresh run.
        progress: show one progress bar over the grid (``inprocess``).
        retrain_mismatched: delete and retrain a started cell whose recorded settings
            (:func:`cell_settings`) differ from those asked, instead of refusing.
        max_cells: refuse a grid of more cells.
        launcher: one of :data:`~fwplab.launch.LAUNCHERS` (see :mod:`fwplab.launch`).
        resources: each job's resources (``local``, ``slurm``).

    Returns:
        ``(rows, failures)``: one row per finished run (the fields of
        :data:`RESULT_FIELDS`) and one line per failed run (``slurm``: no rows, the jobs
        are submitted; collect them with ``fwplab compare --collect OUT``).

    Raises:
        ValueError: a repeated model or seed, too many cells, a started cell with other
            settings (one line naming it and them), a model of
            :data:`CLASSIFIER_BASELINES` without aeon.
        GridStopped: Ctrl-C, SIGTERM or SIGHUP stopped the grid.
    """
    heads = {source.label: ("train", *source.argv) for source in data}
    cells = _grid_cells(heads, models, seeds, out, extra_argv)
    if any(model in CLASSIFIER_BASELINES for model in models):
        _require_baseline_extra("--models", [m for m in models if m in CLASSIFIER_BASELINES])
        kept = [token for flag, value in itertools.pairwise(extra_argv)
                if flag in _BASELINE_FLAGS for token in (flag, value)]
        cells = [dataclasses.replace(cell, argv=(
            "baseline", *heads[cell.first][1:], "--model", cell.model, "--seed", str(cell.seed),
            "--out", str(cell.folder), *kept)) if cell.model in CLASSIFIER_BASELINES else cell
            for cell in cells]
    return _run_grid(cells, out, train_main, progress, retrain_mismatched, max_cells, launcher,
                     resources)


def compare_rl(
    models: Sequence[str],
    envs: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    train_main: Callable[[list[str]], int],
    preset: str = "small",
    extra_argv: Sequence[str] = (),
    progress: bool = True,
    retrain_mismatched: bool = False,
    max_cells: int = MAX_CELLS,
    launcher: str = "inprocess",
    resources: Resources | None = None,
) -> tuple[list[Row], list[str]]:
    """Run (or read back, or resume) every ``fwplab rl`` cell of world models x envs x seeds.

    Args:
        models: world-model names of ``fwplab rl --model``, each once.
        envs: environment names of ``fwplab rl --env``, each once.
        seeds: the runs' seeds, each once.
        out: the comparison's folder; cell ``(E, M, S)`` runs in ``out/runs/E-M-seedS``.
        train_main: runs ``fwplab`` with the given arguments and returns its exit
            status (:func:`fwplab.cli.main`).
        preset: ``fwplab rl --preset`` of every fresh run.
        extra_argv: further ``fwplab rl`` flags given to every fresh run.
        progress, retrain_mismatched, max_cells, launcher, resources: as for :func:`compare`.

    Returns:
        ``(rows, failures)``: one row per finished run (the fields of
        :data:`RL_RESULT_FIELDS`, plus its curves ``eval_return_curve``, epochs 0..E, and
        ``world_model_test_mse_curve``, epochs 1..E) and one line per failed run.

    Raises:
        ValueError, GridStopped: as for :func:`compare`.
    """
    _unique("--envs", list(envs))
    cells = _grid_cells({env: ("rl", "--preset", preset, "--env", env) for env in envs}, models,
                        seeds, out, extra_argv)
    return _run_grid(cells, out, train_main, progress, retrain_mismatched, max_cells, launcher,
                     resources)


# ------------------------------------------------------------------ baselines
def _require_baseline_extra(flag: str, names: Sequence[str]) -> None:
    """Raises ValueError (one line, the fix) when aeon, which the baselines ``names``
    (given by ``flag``) need, is not installed."""
    if importlib.util.find_spec("aeon") is None:
        raise ValueError(f"{flag} {','.join(names)}: needs aeon, which is not installed; pip "
                         "install 'fwplab[baselines]' (or 'aeon>=1.0')"
                         + (", or leave it out of --models" if flag == "--models" else ""))


def run_baseline(model: str, out: Path, seed: int = 0, dataset: str | None = None,
                 train: str | None = None, test: str | None = None,
                 missing_rate: float = 0.0) -> dict[str, Any]:
    """Fit a classifier of :data:`CLASSIFIER_BASELINES` and write ``out/metrics.json``
    (``fwplab baseline``; a cell of :func:`compare`).

    ``rocket``: :func:`fwplab.rocket.rocket_accuracy` with ``seed`` on the data set named
    ``dataset`` (:func:`fwplab.data.load_dataset`, no log-signature windows) or on the
    ``train``/``test`` pair (:func:`fwplab.data.load_ts_pair`), with ``missing_rate`` of
    every series' observations dropped (drawn from ``seed``).

    Returns:
        The metrics written: ``model``, ``seed``, ``kernels``, ``test_accuracy``,
        ``train_accuracy``, ``seconds`` (the fit and the predictions), ``data``,
        ``class_names``, and ``val_accuracy``, ``parameters``, ``epochs``, ``best_epoch``
        as ``None`` (the fields of :data:`RESULT_FIELDS` a trained model fills).

    Raises:
        ValueError: an unknown model, not exactly one of ``dataset`` and the pair, an
            ``out`` that holds a result already, aeon not installed (one line each).
    """
    if model not in CLASSIFIER_BASELINES:
        raise ValueError(f"model: expected one of {', '.join(CLASSIFIER_BASELINES)}, got "
                         f"{model!r}")
    if (dataset is None) == (train is None and test is None) or (train is None) != (
            test is None):
        given = ", ".join(f"--{name} {value}" for name, value in (
            ("dataset", dataset), ("train", train), ("test", test)) if value is not None)
        raise ValueError("expected either --dataset NAME or both --train TRAIN.ts and --test "
                         f"TEST.ts, got {given or 'none of them'}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    if (out / "metrics.json").exists():
        raise ValueError(f"--out {out}: already holds a result; delete it or choose another "
                         "folder")
    _require_baseline_extra("--model", [model])
    from .data import load_dataset, load_ts_pair
    from .rocket import ROCKET_KERNELS, rocket_accuracy

    if dataset is not None:
        data = load_dataset(dataset, missing_rate=missing_rate, seed=seed, logsig_depth=0)
        source: dict[str, Any] = {"dataset": dataset}
    else:
        data = load_ts_pair(train, test, missing_rate=missing_rate, seed=seed)
        source = {"train": str(Path(train).resolve()), "test": str(Path(test).resolve())}
    start = time.perf_counter()
    result = rocket_accuracy(data, seed=seed)
    metrics = {"model": model, "seed": seed, "kernels": ROCKET_KERNELS,
               "test_accuracy": result.test_accuracy, "train_accuracy": result.train_accuracy,
               "val_accuracy": None, "seconds": round(time.perf_counter() - start, 3),
               "parameters": None, "epochs": None, "best_epoch": None,
               "data": {**source, "missing_rate": missing_rate},
               "class_names": list(data.class_names)}
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "metrics.json", metrics)
    return metrics


# ------------------------------------------------------------------ the command
def _comma_list(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        try:
            return [kind(item) for item in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of "
                                             f"{kind.__name__}, got {text!r}") from None
    return parse


def _key_value(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not (equals and key.strip()):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (an sbatch option without its "
                                         f"dashes, e.g. account=abc), got {text!r}")
    return key.strip().lstrip("-"), value


def add_parser(commands: Any, model_names: Sequence[str],
               positive_int: Callable[[str], int]) -> argparse.ArgumentParser:
    """Add the ``compare`` sub-command to the ``fwplab`` parser and return it
    (``positive_int``: the command's parser of positive integers)."""
    parser = commands.add_parser(
        "compare", help="train models x data sets (or world models x environments) x seeds; "
                        "write a CSV, a Markdown table, a plot",
        description="Train every model on every data set (--data: fwplab train) or every "
                    "world model on every environment (--envs: fwplab rl) with every seed "
                    "(resumable: run the same command again to finish an interrupted grid); "
                    "write OUT/results.csv, OUT/results.md and OUT/results.png. Cells run in "
                    "this process, as local jobs or as Slurm jobs (--launcher).")
    parser.add_argument("--models", type=_comma_list(str), metavar="M1,M2",
                        help=f"models: {', '.join(model_names)}; baselines fitted without "
                             f"training: {', '.join(CLASSIFIER_BASELINES)} (MiniRocket, pip "
                             "install 'fwplab[baselines]'); with --envs world models: "
                             f"{', '.join(WORLD_MODELS)}")
    parser.add_argument("--data", nargs="+", metavar="DATA",
                        help="dataset names, TRAIN.ts:TEST.ts pairs or X_TRAIN.ts files")
    parser.add_argument("--envs", type=_comma_list(str), metavar="E1,E2",
                        help=f"instead of --data, RL environments: {', '.join(_RL_ENVS)}")
    parser.add_argument("--seeds", type=_comma_list(int), default=[0], metavar="S1,S2",
                        help="training seeds (default 0)")
    parser.add_argument("--out", metavar="DIR", help="the comparison's folder")
    parser.add_argument("--epochs", metavar="N",
                        help="fwplab train --epochs (or fwplab rl --epochs) for every run")
    parser.add_argument("--missing-rate", metavar="R", help="fwplab train --missing-rate")
    parser.add_argument("--device", metavar="DEVICE", help="fwplab train/rl --device")
    parser.add_argument("--rl-preset", choices=list(RL_PRESETS),
                        help="with --envs: fwplab rl --preset (default small)")
    parser.add_argument("--corrected", action="store_true",
                        help="with --envs: fwplab rl --corrected")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--retrain-mismatched", action="store_true",
                        help="delete and retrain started cells whose recorded settings differ "
                             "from those asked (default: refuse)")
    parser.add_argument("--max-cells", type=positive_int, default=MAX_CELLS, metavar="N",
                        help=f"refuse a grid of more cells (default {MAX_CELLS})")
    jobs = parser.add_argument_group("cells as jobs (pip install 'fwplab[cluster]')")
    jobs.add_argument("--launcher", choices=LAUNCHERS, default="inprocess",
                      help="inprocess (default): one cell after another here; local: each cell "
                           "a subprocess job (waits for them); slurm: each cell a job of one "
                           "Slurm array (submits and returns)")
    jobs.add_argument("--gpus-per-cell", type=int, metavar="N", help="GPUs per job")
    jobs.add_argument("--cpus-per-cell", type=positive_int, metavar="N",
                      help="CPU cores (torch threads) per job (default 1)")
    jobs.add_argument("--time", type=positive_int, metavar="MIN",
                      help="wall-clock limit of a job in minutes (default 1440)")
    jobs.add_argument("--partition", metavar="NAME", help="Slurm partition")
    jobs.add_argument("--slurm-option", type=_key_value, action="append", metavar="KEY=VALUE",
                      help="a further #SBATCH --KEY=VALUE line (repeatable), e.g. account=abc")
    jobs.add_argument("--max-in-flight", type=positive_int, metavar="N",
                      help="at most N jobs at once (local: default cores / --cpus-per-cell; "
                           "slurm: the array's parallelism)")
    jobs.add_argument("--status", metavar="OUT",
                      help="list each cell of the grid in OUT as pending, running, done or "
                           "failed (with the job's last error line and log); changes nothing")
    jobs.add_argument("--collect", metavar="OUT",
                      help="write the tables and the plot of the grid in OUT from its finished "
                           "cells, naming the missing ones")
    return parser


def _refuse(args: argparse.Namespace, flags: Sequence[str], grid: str) -> None:
    given = [flag for flag in flags if getattr(args, flag, None)]
    if given:
        raise ValueError(", ".join("--" + flag.replace("_", "-") for flag in given)
                         + f": only for the {grid}")


def _train_grid(args: argparse.Namespace, train_main: Callable[[list[str]], int],
                dataset_names: Sequence[str], model_names: Sequence[str],
                options: dict[str, Any]) -> tuple[list[Row], list[str]]:
    _refuse(args, ("rl_preset", "corrected"), "--envs grid")
    known = [*model_names, *CLASSIFIER_BASELINES]
    unknown = [model for model in args.models if model not in known]
    if unknown:
        raise ValueError(f"--models: unknown {', '.join(unknown)}; expected some of "
                         f"{', '.join(known)}")
    data = [parse_data(item, dataset_names) for item in args.data]
    labels = [source.label for source in data]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--data: two data sets share a name ({', '.join(labels)}); rename a "
                         "file, or name each data set once")
    extra: list[str] = []
    for flag in ("epochs", "missing_rate", "device"):
        if getattr(args, flag) is not None:
            extra += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    for file in getattr(args, "rules_from", None) or ():
        extra += ["--rules-from", file]
    return compare(args.models, data, args.seeds, Path(args.out), train_main, extra,
                   progress=not args.no_progress, **options)


def _rl_grid(args: argparse.Namespace, train_main: Callable[[list[str]], int],
             options: dict[str, Any]) -> tuple[list[Row], list[str]]:
    _refuse(args, ("missing_rate", "rules_from"), "--data grid")
    unknown = [model for model in args.models if model not in WORLD_MODELS]
    if unknown:
        raise ValueError(f"--models: with --envs expected world models "
                         f"({', '.join(WORLD_MODELS)}), got {', '.join(unknown)}")
    unknown = [env for env in args.envs if env not in _RL_ENVS]
    if unknown:
        raise ValueError(f"--envs: expected continuous-action environments "
                         f"({', '.join(_RL_ENVS)}), got {', '.join(unknown)}")
    extra = ["--epochs", str(args.epochs)] if args.epochs is not None else []
    extra += ["--corrected"] if args.corrected else []
    extra += ["--device", args.device] if args.device is not None else []
    return compare_rl(args.models, args.envs, args.seeds, Path(args.out), train_main,
                      args.rl_preset or "small", extra, progress=not args.no_progress,
                      **options)


_JOB_FLAGS = ("gpus_per_cell", "cpus_per_cell", "time", "max_in_flight")
_SLURM_FLAGS = ("partition", "slurm_option")


def _resources(args: argparse.Namespace) -> Resources | None:
    if args.launcher == "inprocess":
        _refuse(args, (*_JOB_FLAGS, *_SLURM_FLAGS), "--launcher local or slurm")
        return None
    if args.launcher == "local":
        _refuse(args, _SLURM_FLAGS, "--launcher slurm")
    if args.gpus_per_cell is not None and args.gpus_per_cell < 0:
        raise ValueError(f"--gpus-per-cell: expected 0 or more, got {args.gpus_per_cell}")
    if (args.device or "").startswith("cuda") and not args.gpus_per_cell:
        raise ValueError(f"--device {args.device} with --launcher {args.launcher}: each job "
                         "sees only the GPUs it asks for; add --gpus-per-cell 1")
    return Resources(gpus_per_cell=args.gpus_per_cell or 0,
                     cpus_per_cell=args.cpus_per_cell or 1, time_min=args.time or 24 * 60,
                     partition=args.partition, slurm_options=dict(args.slurm_option or ()),
                     max_in_flight=args.max_in_flight)


def _grid_state(out: Path) -> tuple[list[_Cell], Callable[[_Cell], Row | None],
                                    dict[str, dict[str, str]]]:
    cells = _read_grid(out)
    return cells, _READERS.get(cells[0].argv[0] if cells else "train", _train_row), read_jobs(out)


def status(out: Path) -> list[tuple[_Cell, str, str]]:
    """``(cell, state, detail)`` for every cell of the grid in ``out``, reading only.

    ``state`` is ``done``, ``running`` (its job runs, or a process holds its folder),
    ``pending`` (queued, or not started; ``detail`` says which and whether a checkpoint
    waits to be resumed) or ``failed`` (its job ended without finishing it, or its
    ``metrics.json`` is unreadable; ``detail`` is the last error line and the log's path).
    """
    cells, read_row, jobs = _grid_state(out)
    listed = []
    for cell in cells:
        try:
            done = _read_cell(cell, read_row) is not None
        except _Unreadable as error:
            listed.append((cell, "failed", str(error)))
            continue
        record = jobs.get(cell.folder.name)
        if done:
            listed.append((cell, "done", str(cell.folder)))
        elif _folder_busy(cell.folder):
            listed.append((cell, "running", f"a process writes {cell.folder}"))
        elif record is not None:
            listed.append((cell, *job_state(out, record)))
        elif (cell.folder / "checkpoint.pt").is_file():
            listed.append((cell, "pending", "interrupted; its checkpoint resumes when the "
                                            "grid's command runs again"))
        else:
            listed.append((cell, "pending", "not started"))
    return listed


def _print_status(out: Path) -> int:
    listed = status(out)
    width = max((len(str(cell)) for cell, _, _ in listed), default=0)
    for cell, state, detail in listed:
        print(f"{state:<8} {str(cell):<{width}}  {detail}")
    counts = {state: sum(s == state for _, s, _ in listed)
              for state in ("done", "running", "pending", "failed")}
    print(f"fwplab compare: {len(listed)} cells: "
          + ", ".join(f"{n} {state}" for state, n in counts.items()))
    return 0


def _collect(out: Path) -> tuple[list[Row], list[str], str]:
    """The rows of the finished cells of the grid in ``out``, one line per missing or
    unreadable cell, and the grid's kind."""
    cells, read_row, _ = _grid_state(out)
    rows, failures, missing = [], [], []
    for cell in cells:
        try:
            row = _read_cell(cell, read_row)
        except _Unreadable as error:
            failures.append(f"{cell}: {error}")
            continue
        if row is None:
            missing.append(str(cell))
        else:
            rows.append(row)
    if missing:
        failures.append(f"{len(missing)} of {len(cells)} cells not finished, left out: "
                        + ", ".join(missing))
    return rows, failures, "rl" if cells and cells[0].argv[0] == "rl" else "train"


def run(args: argparse.Namespace, train_main: Callable[[list[str]], int],
        dataset_names: Sequence[str], model_names: Sequence[str]) -> int:
    """Run ``fwplab compare`` from parsed arguments; returns the exit status."""
    if args.status is not None or args.collect is not None:
        given = [flag for flag in ("models", "data", "envs", "out")
                 if getattr(args, flag) is not None]
        if given or (args.status is not None and args.collect is not None):
            raise ValueError("--status OUT and --collect OUT read a grid's folder: give one of "
                             "them alone (not with " + ", ".join(
                                 ["--" + flag for flag in given] or ["each other"]) + ")")
        if args.status is not None:
            return _print_status(Path(args.status))
        out = Path(args.collect)
        rows, failures, kind = _collect(out)
        return _report(rows, failures, out, kind)
    if args.models is None or args.out is None:
        raise ValueError("expected --models and --out (or --status OUT, or --collect OUT)")
    if (args.data is None) == (args.envs is None):
        raise ValueError("expected exactly one of --data (fwplab train grid) and --envs "
                         "(fwplab rl grid)")
    if any(seed < 0 for seed in args.seeds):
        raise ValueError(f"--seeds: expected non-negative integers, got {args.seeds}")
    if args.epochs is not None and not (args.epochs.isdigit() and int(args.epochs) > 0):
        raise ValueError(f"--epochs: expected a positive integer, got {args.epochs!r}")
    options = {"retrain_mismatched": args.retrain_mismatched, "max_cells": args.max_cells,
               "launcher": args.launcher, "resources": _resources(args)}
    try:
        if args.envs is None:
            rows, failures = _train_grid(args, train_main, dataset_names, model_names, options)
        else:
            rows, failures = _rl_grid(args, train_main, options)
    except GridStopped as stopped:
        print(f"fwplab compare: {stopped}", file=sys.stderr)
        return 128 + stopped.signum
    if args.launcher == "slurm":
        for failure in failures:
            print(f"fwplab compare: failed: {failure}")
        return 1 if failures else 0
    return _report(rows, failures, Path(args.out), "train" if args.envs is None else "rl")


def _report(rows: list[Row], failures: list[str], out: Path, kind: str) -> int:
    """Print the failures, write and print the tables; the exit status."""
    write, plot = (write_tables, plot_results) if kind == "train" else (write_rl_tables,
                                                                       plot_rl_results)
    for failure in failures:
        print(f"fwplab compare: failed: {failure}")
    if not rows:
        raise ValueError("no run finished, so there is nothing to tabulate")
    csv_path, md_path = write(rows, out)
    plot_path = plot(rows, out)
    print(md_path.read_text(), end="")
    print(f"fwplab compare: {len(rows)} runs; wrote {csv_path}, {md_path}, {plot_path}")
    return 1 if failures else 0

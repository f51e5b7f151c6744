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
ends with exit status 1. A run stopped by Ctrl-C, SIGTERM or SIGHUP stops the grid too.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import signal
import statistics
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from .rl.envs import ENVS
from .rl.presets import RL_PRESETS
from .rl.world_models import WORLD_MODELS

__all__ = ["DataSource", "parse_data", "compare", "compare_rl", "write_tables",
           "write_rl_tables", "plot_results", "plot_rl_results", "RESULT_FIELDS",
           "RL_RESULT_FIELDS"]

#: Columns of ``results.csv`` of the train grid.
RESULT_FIELDS = ("data", "model", "seed", "test_accuracy", "train_accuracy", "val_accuracy",
                 "seconds", "parameters", "epochs", "best_epoch", "folder")
#: Columns of ``results.csv`` of the RL grid.
RL_RESULT_FIELDS = ("env", "model", "seed", "final_eval_return", "best_eval_return",
                    "final_world_model_test_mse", "epochs", "decisions", "seconds",
                    "parameters", "folder")
#: The environments of the RL grid: those with continuous actions.
_RL_ENVS = tuple(name for name, spec in ENVS.items() if spec.continuous_actions)
#: Exit statuses of a run stopped by Ctrl-C, SIGTERM or SIGHUP (128 + the signal's number).
_INTERRUPTED = frozenset(128 + int(getattr(signal, name))
                         for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

Row = dict[str, Any]


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


def _grid_cells(heads: dict[str, tuple[str, ...]], models: Sequence[str], seeds: Sequence[int],
                out: Path, extra_argv: Sequence[str]) -> list[_Cell]:
    """The cells of ``heads`` x models x seeds, in ``out/runs/FIRST-MODEL-seedS``; a fresh
    run's argv is the head (the sub-command and the data set's or environment's flags), then
    ``--model M --seed S --out FOLDER --no-progress`` and ``extra_argv``."""
    cells = []
    for (first, head), model, seed in itertools.product(heads.items(), models, seeds):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in first)
        folder = out / "runs" / f"{safe}-{model}-seed{seed}"
        cells.append(_Cell(first, model, seed, folder, (
            *head, "--model", model, "--seed", str(seed), "--out", str(folder), "--no-progress",
            *extra_argv)))
    return cells


def _run_cells(
    cells: Sequence[_Cell],
    train_main: Callable[[list[str]], int],
    finished: Callable[[Path], bool],
    read_row: Callable[[_Cell], Row],
    progress: bool,
) -> tuple[list[Row], list[str]]:
    """Run, resume or read back every cell under one progress bar; ``(rows, failures)``."""
    rows, failures = [], []
    bar = tqdm(cells, disable=not progress, unit="run", desc="fwplab compare", dynamic_ncols=True)
    for cell in bar:
        bar.set_postfix_str(str(cell), refresh=True)
        if not finished(cell.folder):
            if (cell.folder / "checkpoint.pt").is_file():
                argv = [cell.argv[0], "--resume", str(cell.folder), "--no-progress"]
            else:
                argv = list(cell.argv)
            with redirect_stdout(io.StringIO()):  # the bar is the command's output
                status = train_main(argv)
            if status != 0 or not finished(cell.folder):
                stopped = status in _INTERRUPTED
                failures.append(f"{cell}: fwplab {' '.join(argv)} ended with status {status}"
                                + ("; the grid stops here (interrupted), run the same command "
                                   "again to finish it" if stopped else ""))
                if stopped:
                    break
                continue
        rows.append(read_row(cell))
    bar.close()
    return rows, failures


def _read_metrics(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "metrics.json").read_text())


def _train_finished(folder: Path) -> bool:
    return (folder / "metrics.json").is_file()


def _train_row(cell: _Cell) -> Row:
    metrics = _read_metrics(cell.folder)
    return {"data": cell.first, "model": cell.model, "seed": cell.seed,
            **{field: metrics[field] for field in RESULT_FIELDS[3:-1]},
            "folder": str(cell.folder)}


def compare(
    models: Sequence[str],
    data: Sequence[DataSource],
    seeds: Sequence[int],
    out: Path,
    train_main: Callable[[list[str]], int],
    extra_argv: Sequence[str] = (),
    progress: bool = True,
) -> tuple[list[Row], list[str]]:
    """Run (or read back, or resume) every ``fwplab train`` cell of models x data x seeds.

    Args:
        models: model names of ``fwplab train --model``.
        data: the data sets.
        seeds: training seeds.
        out: the comparison's folder.
        train_main: runs ``fwplab`` with the given arguments and returns its exit
            status (:func:`fwplab.cli.main`).
        extra_argv: further ``fwplab train`` flags given to every fresh run.
        progress: show one progress bar over the grid.

    Returns:
        ``(rows, failures)``: one row per finished run (the fields of
        :data:`RESULT_FIELDS`) and one line per failed run.
    """
    cells = _grid_cells({source.label: ("train", *source.argv) for source in data}, models,
                        seeds, out, extra_argv)
    return _run_cells(cells, train_main, _train_finished, _train_row, progress)


def _rl_finished(folder: Path) -> bool:
    try:
        metrics = _read_metrics(folder)
    except (OSError, ValueError):  # no run yet, or a file where the folder should be
        return False
    return metrics.get("epochs_done") == metrics.get("config", {}).get("epochs")


def _rl_row(cell: _Cell) -> Row:
    metrics = _read_metrics(cell.folder)
    returns = metrics["eval_return_curve"]
    mse = metrics["world_model_test_mse_curve"]
    return {"env": cell.first, "model": cell.model, "seed": cell.seed,
            "final_eval_return": returns[-1], "best_eval_return": max(returns),
            "final_world_model_test_mse": mse[-1], "epochs": metrics["epochs_done"],
            "decisions": metrics["decisions"],
            "seconds": sum(epoch["seconds"] for epoch in metrics["history"]),
            "parameters": metrics["parameters"], "folder": str(cell.folder),
            "eval_return_curve": returns, "world_model_test_mse_curve": mse}


def compare_rl(
    models: Sequence[str],
    envs: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    train_main: Callable[[list[str]], int],
    preset: str = "small",
    extra_argv: Sequence[str] = (),
    progress: bool = True,
) -> tuple[list[Row], list[str]]:
    """Run (or read back, or resume) every ``fwplab rl`` cell of world models x envs x seeds.

    Args:
        models: world-model names of ``fwplab rl --model``.
        envs: environment names of ``fwplab rl --env``.
        seeds: the runs' seeds.
        out: the comparison's folder; cell ``(E, M, S)`` runs in ``out/runs/E-M-seedS``.
        train_main: runs ``fwplab`` with the given arguments and returns its exit
            status (:func:`fwplab.cli.main`).
        preset: ``fwplab rl --preset`` of every fresh run.
        extra_argv: further ``fwplab rl`` flags given to every fresh run.
        progress: show one progress bar over the grid.

    Returns:
        ``(rows, failures)``: one row per finished run (the fields of
        :data:`RL_RESULT_FIELDS`, plus its curves ``eval_return_curve``, epochs 0..E, and
        ``world_model_test_mse_curve``, epochs 1..E) and one line per failed run.
    """
    cells = _grid_cells({env: ("rl", "--preset", preset, "--env", env) for env in envs}, models,
                        seeds, out, extra_argv)
    return _run_cells(cells, train_main, _rl_finished, _rl_row, progress)


# ---------------------------------------------------------------------- tables
def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _mean_std_text(values: list[float], spec: str) -> str:
    mean, std = _mean_std(values)
    return f"{mean:{spec}} +- {std:{spec}}"


def _groups(rows: list[Row], first: str) -> dict[tuple[str, str], list[Row]]:
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row[first], row["model"]), []).append(row)
    return groups


def _write_tables(rows: list[Row], out: Path, fields: Sequence[str], columns: Sequence[str],
                  summary: Callable[[list[Row]], list[str]]) -> tuple[Path, Path]:
    """``results.csv`` (``fields`` of every row) and ``results.md``: per ``(fields[0],
    model)`` group the cells ``summary(group)`` under ``columns``, then parameters, seeds."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "results.csv", out / "results.md"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    header = [fields[0], "model", *columns, "parameters", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (first, model), group in _groups(rows, fields[0]).items():
        cells = [first, model, *summary(group), f"{group[0]['parameters']:,}", str(len(group))]
        lines.append("| " + " | ".join(cells) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def write_tables(rows: list[Row], out: Path) -> tuple[Path, Path]:
    """Write the train grid's ``results.csv`` (every run) and ``results.md`` (mean +- std
    test accuracy and mean seconds per data set and model).

    Returns:
        The paths of the two files.
    """
    return _write_tables(
        rows, out, RESULT_FIELDS, ("test accuracy (mean +- std)", "seconds (mean)"),
        lambda group: [_mean_std_text([row["test_accuracy"] for row in group], ".4f"),
                       f"{statistics.fmean(row['seconds'] for row in group):.1f}"])


def write_rl_tables(rows: list[Row], out: Path) -> tuple[Path, Path]:
    """Write the RL grid's ``results.csv`` (every run, :data:`RL_RESULT_FIELDS`) and
    ``results.md`` (mean +- std over seeds of the final evaluation return and the final
    world-model test MSE per environment and model).

    Returns:
        The paths of the two files.
    """
    return _write_tables(
        rows, out, RL_RESULT_FIELDS,
        ("final evaluation return (mean +- std)", "final world-model test MSE (mean +- std)"),
        lambda group: [_mean_std_text([row["final_eval_return"] for row in group], ".2f"),
                       _mean_std_text([row["final_world_model_test_mse"] for row in group],
                                      ".4g")])


# ----------------------------------------------------------------------- plots
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def _save(figure: Any, out: Path) -> Path:
    figure.tight_layout()
    path = out / "results.png"
    figure.savefig(path, dpi=120)
    _pyplot().close(figure)
    return path


def _firsts_and_models(groups: dict[tuple[str, str], list[Row]]) -> tuple[list[str], list[str]]:
    return (list(dict.fromkeys(first for first, _ in groups)),
            list(dict.fromkeys(model for _, model in groups)))


def plot_results(rows: list[Row], out: Path) -> Path:
    """Bar chart of the mean test accuracy per data set and model (std as error bars)."""
    plt = _pyplot()
    groups = _groups(rows, "data")
    datasets, models = _firsts_and_models(groups)
    width = 0.8 / max(1, len(models))
    figure, axes = plt.subplots(figsize=(max(4.0, 1.6 * len(datasets) * max(1, len(models)) / 2),
                                         3.5))
    for k, model in enumerate(models):
        stats = [_mean_std([row["test_accuracy"] for row in groups[(data, model)]])
                 if (data, model) in groups else (math.nan, 0.0) for data in datasets]
        axes.bar([i + k * width for i in range(len(datasets))], [s[0] for s in stats], width,
                 yerr=[s[1] for s in stats], label=model, capsize=3)
    axes.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(datasets))],
                    datasets)
    axes.set_ylabel("test accuracy")
    axes.set_ylim(0, 1)
    axes.legend(fontsize="small", bbox_to_anchor=(1.02, 1.0), loc="upper left")
    return _save(figure, out)


def _band(axes: Any, curves: list[list[float]], first_epoch: int, label: str,
          color: str) -> None:
    """Mean over ``curves`` (cut to the epochs all of them reached) with a +-1 std band."""
    length = min(len(curve) for curve in curves)
    stats = [_mean_std([curve[i] for curve in curves]) for i in range(length)]
    epochs = range(first_epoch, first_epoch + length)
    mean = [m for m, _ in stats]
    axes.plot(epochs, mean, marker="." if length < 30 else None, label=label, color=color)
    axes.fill_between(epochs, [m - s for m, s in stats], [m + s for m, s in stats],
                      color=color, alpha=0.2, linewidth=0)


def plot_rl_results(rows: list[Row], out: Path) -> Path:
    """Per environment (a column): the evaluation return per epoch (top; epoch 0 is the
    random phase) and the world-model test MSE per epoch (bottom, log scale), the mean over
    seeds with a shaded +-1 std band, one line per model. ``rows`` as from :func:`compare_rl`.
    """
    plt = _pyplot()
    groups = _groups(rows, "env")
    envs, models = _firsts_and_models(groups)
    colors = {model: f"C{k}" for k, model in enumerate(models)}
    figure, axes = plt.subplots(2, len(envs), figsize=(4.5 * len(envs) + 1.5, 6.0),
                                squeeze=False)
    for column, env in enumerate(envs):
        top, bottom = axes[0][column], axes[1][column]
        for model in models:
            group = groups.get((env, model))
            if group:
                _band(top, [row["eval_return_curve"] for row in group], 0, model, colors[model])
                _band(bottom, [row["world_model_test_mse_curve"] for row in group], 1, model,
                      colors[model])
        top.set_title(env)
        top.set_ylabel("evaluation return")
        bottom.set_ylabel("world-model test MSE")
        bottom.set_yscale("log")
        bottom.set_xlabel("epoch")
        for panel in (top, bottom):
            panel.xaxis.get_major_locator().set_params(integer=True)
    axes[0][-1].legend(fontsize="small", bbox_to_anchor=(1.02, 1.0), loc="upper left")
    return _save(figure, out)


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


def add_parser(commands: Any, model_names: Sequence[str]) -> argparse.ArgumentParser:
    """Add the ``compare`` sub-command to the ``fwplab`` parser and return it."""
    parser = commands.add_parser(
        "compare", help="train models x data sets (or world models x environments) x seeds; "
                        "write a CSV, a Markdown table, a plot",
        description="Train every model on every data set (--data: fwplab train) or every "
                    "world model on every environment (--envs: fwplab rl) with every seed "
                    "(resumable: run the same command again to finish an interrupted grid); "
                    "write OUT/results.csv, OUT/results.md and OUT/results.png.")
    parser.add_argument("--models", type=_comma_list(str), required=True, metavar="M1,M2",
                        help=f"models: {', '.join(model_names)}; with --envs world models: "
                             f"{', '.join(WORLD_MODELS)}")
    parser.add_argument("--data", nargs="+", metavar="DATA",
                        help="dataset names, TRAIN.ts:TEST.ts pairs or X_TRAIN.ts files")
    parser.add_argument("--envs", type=_comma_list(str), metavar="E1,E2",
                        help=f"instead of --data, RL environments: {', '.join(_RL_ENVS)}")
    parser.add_argument("--seeds", type=_comma_list(int), default=[0], metavar="S1,S2",
                        help="training seeds (default 0)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the comparison's folder")
    parser.add_argument("--epochs", metavar="N",
                        help="fwplab train --epochs (or fwplab rl --epochs) for every run")
    parser.add_argument("--missing-rate", metavar="R", help="fwplab train --missing-rate")
    parser.add_argument("--device", metavar="DEVICE", help="fwplab train/rl --device")
    parser.add_argument("--rl-preset", choices=list(RL_PRESETS),
                        help="with --envs: fwplab rl --preset (default small)")
    parser.add_argument("--corrected", action="store_true",
                        help="with --envs: fwplab rl --corrected")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _refuse(args: argparse.Namespace, flags: Sequence[str], grid: str) -> None:
    given = [flag for flag in flags if getattr(args, flag, None)]
    if given:
        raise ValueError(", ".join("--" + flag.replace("_", "-") for flag in given)
                         + f": only for the {grid} grid")


def _train_grid(args: argparse.Namespace, train_main: Callable[[list[str]], int],
                dataset_names: Sequence[str], model_names: Sequence[str],
                ) -> tuple[list[Row], list[str]]:
    _refuse(args, ("rl_preset", "corrected"), "--envs")
    unknown = [model for model in args.models if model not in model_names]
    if unknown:
        raise ValueError(f"--models: unknown {', '.join(unknown)}; expected some of "
                         f"{', '.join(model_names)}")
    data = [parse_data(item, dataset_names) for item in args.data]
    labels = [source.label for source in data]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--data: two data sets share a name ({', '.join(labels)}); rename a "
                         "file")
    extra: list[str] = []
    for flag in ("epochs", "missing_rate", "device"):
        if getattr(args, flag) is not None:
            extra += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    for file in args.rules_from or ():
        extra += ["--rules-from", file]
    return compare(args.models, data, args.seeds, Path(args.out), train_main, extra,
                   progress=not args.no_progress)


def _rl_grid(args: argparse.Namespace, train_main: Callable[[list[str]], int],
             ) -> tuple[list[Row], list[str]]:
    _refuse(args, ("missing_rate", "rules_from"), "--data")
    unknown = [model for model in args.models if model not in WORLD_MODELS]
    if unknown:
        raise ValueError(f"--models: with --envs expected world models "
                         f"({', '.join(WORLD_MODELS)}), got {', '.join(unknown)}")
    unknown = [env for env in args.envs if env not in _RL_ENVS]
    if unknown:
        raise ValueError(f"--envs: expected continuous-action environments "
                         f"({', '.join(_RL_ENVS)}), got {', '.join(unknown)}")
    if len(set(args.envs)) != len(args.envs):
        raise ValueError(f"--envs: an environment is named twice ({', '.join(args.envs)})")
    extra = ["--epochs", str(args.epochs)] if args.epochs is not None else []
    extra += ["--corrected"] if args.corrected else []
    extra += ["--device", args.device] if args.device is not None else []
    return compare_rl(args.models, args.envs, args.seeds, Path(args.out), train_main,
                      args.rl_preset or "small", extra, progress=not args.no_progress)


def run(args: argparse.Namespace, train_main: Callable[[list[str]], int],
        dataset_names: Sequence[str], model_names: Sequence[str]) -> int:
    """Run ``fwplab compare`` from parsed arguments; returns the exit status."""
    if (args.data is None) == (args.envs is None):
        raise ValueError("expected exactly one of --data (fwplab train grid) and --envs "
                         "(fwplab rl grid)")
    if any(seed < 0 for seed in args.seeds):
        raise ValueError(f"--seeds: expected non-negative integers, got {args.seeds}")
    if args.epochs is not None and not (args.epochs.isdigit() and int(args.epochs) > 0):
        raise ValueError(f"--epochs: expected a positive integer, got {args.epochs!r}")
    if args.envs is None:
        rows, failures = _train_grid(args, train_main, dataset_names, model_names)
        write, plot = write_tables, plot_results
    else:
        rows, failures = _rl_grid(args, train_main)
        write, plot = write_rl_tables, plot_rl_results
    for failure in failures:
        print(f"fwplab compare: failed: {failure}")
    if not rows:
        raise ValueError("no run finished, so there is nothing to tabulate")
    out = Path(args.out)
    csv_path, md_path = write(rows, out)
    plot_path = plot(rows, out)
    print(md_path.read_text(), end="")
    print(f"fwplab compare: {len(rows)} runs; wrote {csv_path}, {md_path}, {plot_path}")
    return 1 if failures else 0

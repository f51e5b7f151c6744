"""The results of a grid of runs (:mod:`fwplab.compare`): its tables and its plot.

A row is one finished run (a dict with the fields below). ``results.csv`` holds every
row, ``results.md`` the mean +- std over seeds per (data set or environment, model), and
``results.png`` the same as a bar chart (train grid) or as curves over epochs (RL grid).
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["Row", "RESULT_FIELDS", "RL_RESULT_FIELDS", "write_tables", "write_rl_tables",
           "plot_results", "plot_rl_results"]

#: One finished run of a grid: field name -> value.
Row = dict[str, Any]
#: Columns of ``results.csv`` of the train grid.
RESULT_FIELDS = ("data", "model", "seed", "test_accuracy", "train_accuracy", "val_accuracy",
                 "seconds", "parameters", "epochs", "best_epoch", "folder")
#: Columns of ``results.csv`` of the RL grid.
RL_RESULT_FIELDS = ("env", "model", "seed", "final_eval_return", "best_eval_return",
                    "final_world_model_test_mse", "epochs", "decisions", "seconds",
                    "parameters", "folder")


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
        parameters = group[0]["parameters"]
        cells = [first, model, *summary(group), "" if parameters is None else f"{parameters:,}",
                 str(len(group))]
        lines.append("| " + " | ".join(cells) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def write_tables(rows: list[Row], out: Path) -> tuple[Path, Path]:
    """Write the train grid's ``results.csv`` (every run) and ``results.md`` (mean +- std
    test accuracy and mean seconds per data set and model; a baseline without parameters,
    ``rocket``, has a blank parameter count).

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

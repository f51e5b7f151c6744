"""``fwplab compare``: models x data sets x seeds in one resumable command.

::

    fwplab compare --models delta_cde,gru,discrete_delta,ncde \\
        --data japanese-vowels spirals A_TRAIN.ts:A_TEST.ts --seeds 0,1,2 --out runs/compare

Every cell of the grid is one ``fwplab train`` run (the same settings a single run
would get: a preset for data that has one, settings adapted to the data otherwise)
in ``OUT/runs/DATA-MODEL-seedS``. A finished cell (its ``metrics.json`` exists) is
read back, an interrupted one is continued with ``--resume``, so running the same
command again after an interruption finishes the grid without repeating work.
At the end it writes, from every finished cell:

- ``OUT/results.csv``: one row per run (accuracies, seconds, parameters, epochs);
- ``OUT/results.md``: a Markdown table, one row per data set and model: mean +- std
  test accuracy over seeds, mean seconds, parameters, seeds finished;
- ``OUT/results.png``: test accuracy of each model on each data set (mean, with the
  standard deviation as error bars).

A run that fails is reported in one line and left out of the tables (its folder
stays for inspection); the command then ends with exit status 1.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

__all__ = ["DataSource", "parse_data", "compare", "write_tables", "plot_results", "RESULT_FIELDS"]

#: Columns of ``results.csv``.
RESULT_FIELDS = ("data", "model", "seed", "test_accuracy", "train_accuracy", "val_accuracy",
                 "seconds", "parameters", "epochs", "best_epoch", "folder")


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


def _cell_folder(out: Path, data: DataSource, model: str, seed: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in data.label)
    return out / "runs" / f"{safe}-{model}-seed{seed}"


def _row(data: DataSource, model: str, seed: int, folder: Path) -> dict[str, Any]:
    metrics = json.loads((folder / "metrics.json").read_text())
    return {"data": data.label, "model": model, "seed": seed,
            "test_accuracy": metrics["test_accuracy"],
            "train_accuracy": metrics["train_accuracy"],
            "val_accuracy": metrics["val_accuracy"], "seconds": metrics["seconds"],
            "parameters": metrics["parameters"], "epochs": metrics["epochs"],
            "best_epoch": metrics["best_epoch"], "folder": str(folder)}


def compare(
    models: Sequence[str],
    data: Sequence[DataSource],
    seeds: Sequence[int],
    out: Path,
    train_main: Callable[[list[str]], int],
    extra_argv: Sequence[str] = (),
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Run (or read back, or resume) every cell of models x data x seeds.

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
    cells = [(source, model, seed) for source in data for model in models for seed in seeds]
    rows, failures = [], []
    bar = tqdm(cells, disable=not progress, unit="run", desc="fwplab compare", dynamic_ncols=True)
    for source, model, seed in bar:
        folder = _cell_folder(out, source, model, seed)
        bar.set_postfix_str(f"{source.label} / {model} / seed {seed}", refresh=True)
        if not (folder / "metrics.json").is_file():
            if (folder / "checkpoint.pt").is_file():
                argv = ["train", "--resume", str(folder), "--no-progress"]
            else:
                argv = ["train", *source.argv, "--model", model, "--seed", str(seed),
                        "--out", str(folder), "--no-progress", *extra_argv]
            with redirect_stdout(io.StringIO()):  # the bar is the command's output
                status = train_main(argv)
            if status != 0 or not (folder / "metrics.json").is_file():
                failures.append(f"{source.label} / {model} / seed {seed}: fwplab "
                                f"{' '.join(argv)} ended with status {status}")
                continue
        rows.append(_row(source, model, seed, folder))
    bar.close()
    return rows, failures


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _groups(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["data"], row["model"]), []).append(row)
    return groups


def write_tables(rows: list[dict[str, Any]], out: Path) -> tuple[Path, Path]:
    """Write ``results.csv`` (every run) and ``results.md`` (mean +- std per data set and model).

    Returns:
        The paths of the two files.
    """
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "results.csv", out / "results.md"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RESULT_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| data | model | test accuracy (mean +- std) | seconds (mean) | parameters | seeds |",
             "|---|---|---|---|---|---|"]
    for (data, model), group in _groups(rows).items():
        mean, std = _mean_std([row["test_accuracy"] for row in group])
        seconds = statistics.fmean(row["seconds"] for row in group)
        lines.append(f"| {data} | {model} | {mean:.4f} +- {std:.4f} | {seconds:.1f} | "
                     f"{group[0]['parameters']:,} | {len(group)} |")
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def plot_results(rows: list[dict[str, Any]], out: Path) -> Path:
    """Bar chart of the mean test accuracy per data set and model (std as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    groups = _groups(rows)
    datasets = list(dict.fromkeys(data for data, _ in groups))
    models = list(dict.fromkeys(model for _, model in groups))
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
    figure.tight_layout()
    path = out / "results.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


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
        "compare", help="train models x data sets x seeds; write a CSV, a Markdown table, a plot",
        description="Train every model on every data set with every seed (resumable: run the "
                    "same command again to finish an interrupted grid); write OUT/results.csv, "
                    "OUT/results.md and OUT/results.png.")
    parser.add_argument("--models", type=_comma_list(str), required=True, metavar="M1,M2",
                        help=f"models: {', '.join(model_names)}")
    parser.add_argument("--data", nargs="+", required=True, metavar="DATA",
                        help="dataset names, TRAIN.ts:TEST.ts pairs or X_TRAIN.ts files")
    parser.add_argument("--seeds", type=_comma_list(int), default=[0], metavar="S1,S2",
                        help="training seeds (default 0)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the comparison's folder")
    parser.add_argument("--epochs", metavar="N", help="fwplab train --epochs for every run")
    parser.add_argument("--missing-rate", metavar="R", help="fwplab train --missing-rate")
    parser.add_argument("--device", metavar="DEVICE", help="fwplab train --device")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace, train_main: Callable[[list[str]], int],
        dataset_names: Sequence[str], model_names: Sequence[str]) -> int:
    """Run ``fwplab compare`` from parsed arguments; returns the exit status."""
    unknown = [model for model in args.models if model not in model_names]
    if unknown:
        raise ValueError(f"--models: unknown {', '.join(unknown)}; expected some of "
                         f"{', '.join(model_names)}")
    if any(seed < 0 for seed in args.seeds):
        raise ValueError(f"--seeds: expected non-negative integers, got {args.seeds}")
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
    out = Path(args.out)
    rows, failures = compare(args.models, data, args.seeds, out, train_main, extra,
                             progress=not args.no_progress)
    for failure in failures:
        print(f"fwplab compare: failed: {failure}")
    if not rows:
        raise ValueError("no run finished, so there is nothing to tabulate")
    csv_path, md_path = write_tables(rows, out)
    plot = plot_results(rows, out)
    print(md_path.read_text(), end="")
    print(f"fwplab compare: {len(rows)} runs; wrote {csv_path}, {md_path}, {plot}")
    return 1 if failures else 0


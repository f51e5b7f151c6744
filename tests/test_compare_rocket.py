"""``fwplab compare --models ...,rocket``: the MiniRocket baseline as a cell beside trained
models (the accuracy :func:`fwplab.rocket.rocket_accuracy` gives, per seed; a blank parameter
count), its settings record (reused across ``--epochs``, refused on other data settings),
``fwplab baseline`` alone, a local job; without aeon one line before any cell runs."""

import csv
import json
import math
import random
import sys
from pathlib import Path

import pytest

from fwplab.cli import main
from test_train import one_thread  # noqa: F401 (autouse fixture)

FLAGS = ["--epochs", "1", "--device", "cpu", "--no-progress"]


def write_noisy_pair(folder: Path, n_train: int = 20, n_test: int = 30, steps: int = 40,
                     seed: int = 0) -> tuple[Path, Path]:
    """A univariate ``.ts`` pair, two classes: a bump early or late (jittered) in strong
    noise, hard enough that MiniRocket's accuracy moves with its seed."""
    rng = random.Random(seed)
    header = ["@problemName Noisy", "@timeStamps false", "@missing false", "@univariate true",
              "@equalLength true", f"@seriesLength {steps}", "@classLabel true a b", "@data"]

    def line(index: int) -> str:
        label = "ab"[index % 2]
        centre = (12 if label == "a" else 20) + rng.uniform(-6, 6)
        values = [math.exp(-((t - centre) / 3) ** 2) + 0.8 * rng.gauss(0, 1)
                  for t in range(steps)]
        return ",".join(f"{v:.5f}" for v in values) + ":" + label

    paths = []
    for name, count in (("TRAIN", n_train), ("TEST", n_test)):
        path = folder / f"Noisy_{name}.ts"
        path.write_text("\n".join(header + [line(i) for i in range(count)]) + "\n")
        paths.append(path)
    return paths[0], paths[1]


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv") as handle:
        return list(csv.DictReader(handle))


def test_rocket_beside_a_model_gives_the_accuracy_rocket_accuracy_gives(tmp_path, capsys):
    pytest.importorskip("aeon")
    from fwplab.data import load_ts_pair
    from fwplab.rocket import rocket_accuracy

    train, test = write_noisy_pair(tmp_path)
    out = tmp_path / "cmp"
    assert main(["compare", "--models", "gru,rocket", "--data", str(train), "--seeds", "0,1",
                 "--missing-rate", "0.3", "--out", str(out), *FLAGS]) == 0
    rows = {(row["model"], int(row["seed"])): row for row in _rows(out)}
    assert set(rows) == {(m, s) for m in ("gru", "rocket") for s in (0, 1)}
    direct = {seed: rocket_accuracy(load_ts_pair(train, test, missing_rate=0.3, seed=seed),
                                    seed=seed).test_accuracy for seed in (0, 1)}
    assert direct[0] != direct[1]  # the seed matters here, so equality per seed says something
    for seed in (0, 1):
        row = rows[("rocket", seed)]
        assert float(row["test_accuracy"]) == direct[seed]
        assert row["parameters"] == row["epochs"] == row["val_accuracy"] == ""
        metrics = json.loads((Path(row["folder"]) / "metrics.json").read_text())
        assert (metrics["model"], metrics["seed"], metrics["kernels"]) == ("rocket", seed, 10_000)
        assert metrics["seconds"] > 0 and metrics["data"]["missing_rate"] == 0.3
        record = json.loads((Path(row["folder"]) / "compare-cell.json").read_text())
        assert record["settings"]["command"] == "baseline"
        assert record["settings"]["--missing-rate"] == "0.3"
        assert "--epochs" not in record["settings"]  # no training loop
    table = (out / "results.md").read_text().splitlines()
    assert table[2].startswith("| Noisy | gru |") and not table[2].endswith("|  | 2 |")
    assert table[3].startswith("| Noisy | rocket |") and table[3].endswith("|  | 2 |")
    assert (out / "results.png").stat().st_size > 1000


def test_a_rocket_cell_is_reused_across_epochs_and_refused_on_other_data(tmp_path, capsys):
    pytest.importorskip("aeon")
    train, _ = write_noisy_pair(tmp_path, n_train=10, n_test=6)
    out = tmp_path / "cmp"
    base = ["compare", "--models", "rocket", "--data", str(train), "--out", str(out),
            "--no-progress"]
    assert main([*base, "--epochs", "1"]) == 0
    metrics = out / "runs" / "Noisy-rocket-seed0" / "metrics.json"
    stamp = metrics.stat().st_mtime_ns
    assert main([*base, "--epochs", "7"]) == 0  # epochs do not apply: read back
    assert metrics.stat().st_mtime_ns == stamp
    capsys.readouterr()
    assert main([*base, "--missing-rate", "0.5"]) == 1
    assert capsys.readouterr().err == (
        f"fwplab compare: error: {metrics.parent} was trained with other settings than asked: "
        "--missing-rate not given (asked 0.5); pass --retrain-mismatched to delete and retrain "
        "such cells, or choose another --out\n")


def test_without_aeon_a_grid_with_rocket_is_one_line_before_any_cell(tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.setitem(sys.modules, "aeon", None)  # as if not installed
    train, _ = write_noisy_pair(tmp_path, n_train=6, n_test=4)
    out = tmp_path / "cmp"
    assert main(["compare", "--models", "gru,rocket", "--data", str(train), "--out", str(out),
                 *FLAGS]) == 1
    assert capsys.readouterr().err == (
        "fwplab compare: error: --models rocket: needs aeon, which is not installed; pip "
        "install 'fwplab[baselines]' (or 'aeon>=1.0'), or leave it out of --models\n")
    assert not out.exists()  # not even the gru cell ran
    alone = tmp_path / "alone"
    assert main(["baseline", "--model", "rocket", "--train", str(train), "--test",
                 str(tmp_path / "Noisy_TEST.ts"), "--out", str(alone)]) == 1
    assert capsys.readouterr().err == (
        "fwplab baseline: error: --model rocket: needs aeon, which is not installed; pip "
        "install 'fwplab[baselines]' (or 'aeon>=1.0')\n")
    assert not alone.exists()


@pytest.mark.parametrize("argv, message", [
    (["--model", "rocket", "--dataset", "spirals", "--train", "A_TRAIN.ts"],
     "expected either --dataset NAME or both --train TRAIN.ts and --test TEST.ts, got "
     "--dataset spirals, --train A_TRAIN.ts"),
    (["--model", "rocket"], "expected either --dataset NAME or both --train TRAIN.ts and "
                            "--test TEST.ts, got none of them"),
    (["--model", "gru", "--dataset", "spirals"], "argument --model: invalid choice: 'gru' "
                                                 "(choose from rocket)"),
])
def test_fwplab_baseline_bad_arguments_are_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "b"
    try:
        status = main(["baseline", *argv, "--out", str(out)])
    except SystemExit as exit_:  # argparse's refusal
        status = exit_.code
    assert status == (2 if "invalid choice" in message else 1)
    err = capsys.readouterr().err
    assert err.startswith("fwplab baseline: error: ") and message in err
    assert err.count("\n") == 1 and not out.exists()


def test_fwplab_baseline_alone_and_a_folder_holding_a_result(tmp_path, capsys):
    pytest.importorskip("aeon")
    from fwplab.data import load_ts_pair
    from fwplab.rocket import rocket_accuracy

    train, test = write_noisy_pair(tmp_path, n_train=10, n_test=8)
    out = tmp_path / "b"
    argv = ["baseline", "--model", "rocket", "--train", str(train), "--test", str(test),
            "--seed", "3", "--out", str(out)]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] == rocket_accuracy(load_ts_pair(train, test, seed=3),
                                                       seed=3).test_accuracy
    assert metrics["class_names"] == ["a", "b"]
    assert capsys.readouterr().out.startswith("fwplab baseline: rocket test accuracy ")
    assert main(argv) == 1
    assert capsys.readouterr().err == (f"fwplab baseline: error: --out {out}: already holds a "
                                       "result; delete it or choose another folder\n")


def test_a_rocket_cell_runs_as_a_local_job(tmp_path, capsys):
    pytest.importorskip("aeon")
    pytest.importorskip("submitit")
    train, test = write_noisy_pair(tmp_path, n_train=10, n_test=8)
    out = tmp_path / "cmp"
    grid = ["compare", "--models", "rocket", "--data", f"{train}:{test}", "--seeds", "2",
            "--no-progress"]
    assert main([*grid, "--out", str(out), "--launcher", "local"]) == 0, capsys.readouterr()
    assert "Noisy-rocket-seed2" in json.loads((out / "jobs.json").read_text())
    inprocess = tmp_path / "here"
    assert main([*grid, "--out", str(inprocess)]) == 0
    assert [row["test_accuracy"] for row in _rows(out)] == [
        row["test_accuracy"] for row in _rows(inprocess)]

"""``fwplab compare``: two tiny sets x two models x two seeds end to end, resuming an
interrupted grid, the tables and the plot, bad arguments; the first signal stops the grid,
the bound on cells, reuse only with the settings asked, corrupt metrics, repeated names."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fwplab.cli import main
from fwplab.compare import DataSource, GridStopped, compare, parse_data
from test_train import one_thread, write_ts_pair  # noqa: F401 (autouse fixture)

FLAGS = ["--epochs", "2", "--device", "cpu", "--no-progress"]


def _two_sets(tmp_path):
    first = tmp_path / "first"
    second = tmp_path / "second"
    first.mkdir()
    second.mkdir()
    a_train, a_test = write_ts_pair(first, n_train=12, n_test=6, classes="ab")
    b_train, b_test = write_ts_pair(second, n_train=12, n_test=6, seed=1, classes="abc")
    b_train = b_train.rename(second / "Other_TRAIN.ts")
    b_test = b_test.rename(second / "Other_TEST.ts")
    return [f"{a_train}:{a_test}", str(b_train)]


def _compare(data, out, models="gru,discrete_delta"):
    return main(["compare", "--models", models, "--data", *data, "--seeds", "0,1",
                 "--out", str(out), *FLAGS])


def test_two_sets_two_models_two_seeds_end_to_end(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert _compare(_two_sets(tmp_path), out) == 0
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8
    assert {(r["data"], r["model"]) for r in rows} == {
        (d, m) for d in ("Tiny", "Other") for m in ("gru", "discrete_delta")}
    for row in rows:
        metrics = json.loads((Path(row["folder"]) / "metrics.json").read_text())
        assert metrics["model"] == row["model"]
        assert metrics["train_config"]["seed"] == int(row["seed"])
        assert float(row["test_accuracy"]) == pytest.approx(metrics["test_accuracy"])
    table = (out / "results.md").read_text().splitlines()
    assert table[0].startswith("| data | model | test accuracy (mean +- std)")
    assert len(table) == 2 + 4 and all(line.endswith("| 2 |") for line in table[2:])
    assert (out / "results.png").stat().st_size > 1000
    assert "wrote" in capsys.readouterr().out


def test_an_interrupted_grid_is_finished_without_repeating_work(tmp_path):
    data = _two_sets(tmp_path)[:1]
    out = tmp_path / "cmp"
    assert _compare(data, out, models="gru") == 0
    finished = out / "runs" / "Tiny-gru-seed0"
    interrupted = out / "runs" / "Tiny-gru-seed1"
    stamp = (finished / "metrics.json").stat().st_mtime_ns
    (interrupted / "metrics.json").unlink()  # as if stopped after the last checkpoint
    assert _compare(data, out, models="gru") == 0
    assert (finished / "metrics.json").stat().st_mtime_ns == stamp  # read back, not rerun
    assert (interrupted / "metrics.json").is_file()  # continued with --resume
    with open(out / "results.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 2


def test_a_failed_run_is_reported_and_the_others_tabulated(tmp_path, capsys):
    data = _two_sets(tmp_path)[:1]
    out = tmp_path / "cmp"
    blocker = out / "runs" / "Tiny-gru-seed1"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the run folder should be")
    assert _compare(data, out, models="gru") == 1
    printed = capsys.readouterr()
    assert "failed: Tiny / gru / seed 1" in printed.out
    with open(out / "results.csv") as handle:
        assert [row["seed"] for row in csv.DictReader(handle)] == ["0"]


def test_data_items_are_names_pairs_or_train_files(tmp_path):
    train, test = write_ts_pair(tmp_path)
    assert parse_data("spirals", ("spirals",)) == DataSource("spirals", ("--dataset", "spirals"))
    assert parse_data(str(train), ()) == DataSource("Tiny", ("--train", str(train), "--test",
                                                             str(test)))
    with pytest.raises(ValueError, match="--data: expected a dataset name"):
        parse_data("nothing", ("spirals",))
    with pytest.raises(ValueError, match="missing_TEST.ts: file not found"):
        parse_data(f"{train}:{tmp_path}/missing_TEST.ts", ())


@pytest.mark.parametrize("argv, message", [
    (["--models", "gru,nope", "--data", "spirals"], "--models: unknown nope"),
    (["--models", "gru", "--data", "spirals", "spirals"], "two data sets share a name"),
])
def test_bad_arguments_are_one_line(tmp_path, capsys, argv, message):
    assert main(["compare", *argv, "--out", str(tmp_path / "x"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fwplab compare: error:") and message in err and "\n" not in err


def _fake_cell(calls, signal_at=None):
    """Stands for ``fwplab train``: writes a finished ``metrics.json`` at ``--out``; call
    number ``signal_at`` first sends this process Ctrl-C and carries on (a cell that
    finishes although interrupted)."""

    def cell(argv):
        calls.append(argv)
        if len(calls) == signal_at:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # the signal lands here
            except KeyboardInterrupt:
                pass
        folder = Path(argv[argv.index("--out") + 1])
        seed = int(argv[argv.index("--seed") + 1])
        (folder / "metrics.json").write_text(json.dumps({
            "test_accuracy": 0.5 + seed / 100, "train_accuracy": 1.0, "val_accuracy": None,
            "seconds": 1.0, "parameters": 10, "epochs": 1, "best_epoch": 1}))
        return 0

    return cell


def test_the_first_signal_stops_the_whole_grid_and_the_rerun_finishes_it(tmp_path):
    calls = []
    source = [DataSource("spirals", ("--dataset", "spirals"))]
    with pytest.raises(GridStopped) as stopped:
        compare(["gru"], source, range(6), tmp_path, _fake_cell(calls, signal_at=2),
                progress=False)
    assert len(calls) == 2  # the cell in training ends; no further cell starts
    assert (stopped.value.signum, stopped.value.finished, stopped.value.total) == (
        signal.SIGINT, 2, 6)
    assert str(stopped.value) == ("stopped by SIGINT with 2 of 6 cells finished (kept); run the "
                                  "same command again to finish the grid")
    rest = []
    rows, failures = compare(["gru"], source, range(6), tmp_path, _fake_cell(rest),
                             progress=False)
    assert [row["seed"] for row in rows] == list(range(6)) and failures == []
    assert [argv[argv.index("--seed") + 1] for argv in rest] == ["2", "3", "4", "5"]


def test_sigterm_between_cells_stops_the_command_cleanly(tmp_path):
    """In a process of its own: before the fix, SIGTERM outside a cell's training killed the
    command on the spot (no message, exit -15); now the grid stops before the next cell."""
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from pathlib import Path
from fwplab.compare import DataSource, compare, GridStopped
from test_compare import _fake_cell
calls = []
inner = _fake_cell(calls)
def cell(argv):
    status = inner(argv)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGTERM)
    return status
try:
    compare(["gru"], [DataSource("spirals", ("--dataset", "spirals"))], range(5),
            Path({str(tmp_path)!r}), cell, progress=False)
except GridStopped as stopped:
    print(len(calls), stopped)
    sys.exit(128 + stopped.signum)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 143, done.stderr
    assert done.stdout == ("2 stopped by SIGTERM with 2 of 5 cells finished (kept); run the "
                           "same command again to finish the grid\n")


def test_a_grid_past_the_bound_needs_max_cells(tmp_path, capsys):
    out = tmp_path / "x"
    seeds = ",".join(map(str, range(201)))
    assert main(["compare", "--models", "gru", "--data", "spirals", "--seeds", seeds,
                 "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err == ("fwplab compare: error: the grid has 201 cells, more than --max-cells 200; "
                   "pass --max-cells 201 to run it\n")
    assert not out.exists()


def test_cells_are_reused_only_with_the_settings_asked(tmp_path, capsys):
    data = _two_sets(tmp_path)[:1]
    out = tmp_path / "cmp"
    base = ["compare", "--models", "gru", "--data", *data, "--seeds", "0", "--out", str(out),
            "--epochs", "1", "--device", "cpu", "--no-progress"]
    assert main(base) == 0
    folder = out / "runs" / "Tiny-gru-seed0"
    stamp = (folder / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*base, "--missing-rate", "0.5"]) == 1
    assert capsys.readouterr().err == (
        f"fwplab compare: error: {folder} was trained with other settings than asked: "
        "--missing-rate not given (asked 0.5); pass --retrain-mismatched to delete and retrain "
        "such cells, or choose another --out\n")
    train = Path(data[0].split(":")[0])
    train.write_text(train.read_text().replace("@problemName Tiny", "@problemName Tiny2"))
    assert main(base) == 1
    assert "--train sha256:" in capsys.readouterr().err  # the data changed under the cell
    assert (folder / "metrics.json").stat().st_mtime_ns == stamp
    assert main([*base, "--missing-rate", "0.5", "--retrain-mismatched"]) == 0
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["run"]["data"]["missing_rate"] == 0.5
    assert main([*base, "--missing-rate", "0.5"]) == 0  # now the same settings: read back


def test_a_corrupt_metrics_file_is_one_line_and_the_grid_goes_on(tmp_path, capsys):
    rows, failures = compare(["gru"], [DataSource("spirals", ("--dataset", "spirals"))],
                             [0, 1, 2], tmp_path, _fake_cell([]), progress=False)
    corrupt = tmp_path / "runs" / "spirals-gru-seed1" / "metrics.json"
    corrupt.write_text("{not json")
    rows, failures = compare(["gru"], [DataSource("spirals", ("--dataset", "spirals"))],
                             [0, 1, 2], tmp_path, _fake_cell([]), progress=False)
    assert [row["seed"] for row in rows] == [0, 2]
    assert failures == [f"spirals / gru / seed 1: {corrupt}: unreadable metrics (Expecting "
                        "property name enclosed in double quotes: line 1 column 2 (char 1)); "
                        "delete the cell's folder to train it again"]


@pytest.mark.parametrize("models, seeds, message", [
    ("gru", "0,1,0", "--seeds: 0 named more than once (0,1,0)"),
    ("gru,gru", "0", "--models: gru named more than once (gru,gru)"),
])
def test_repeated_models_or_seeds_are_refused_in_one_line(tmp_path, capsys, models, seeds,
                                                          message):
    out = tmp_path / "x"
    assert main(["compare", "--data", "spirals", "--out", str(out), "--no-progress",
                 "--models", models, "--seeds", seeds]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fwplab compare: error:") and message in err and "\n" not in err
    assert not out.exists()

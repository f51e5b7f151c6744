"""``fwplab compare``: two tiny sets x two models x two seeds end to end, resuming an
interrupted grid, the tables and the plot, and bad arguments."""

import csv
import json
from pathlib import Path

import pytest

from fwplab.cli import main
from fwplab.compare import DataSource, parse_data
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

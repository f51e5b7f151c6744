"""``fwplab predict`` and :func:`fwplab.predict_run`: a run applied to its own TEST
file reproduces the run's test accuracy and probabilities (one model and an ensemble);
the CSV names the classes; series the run cannot take and a lost training file are
refused in one line."""

import csv
import io
import json
import shutil

import pytest
import torch

from fwplab.adaptive import ENSEMBLE_NAME, load_data
from fwplab.cli import main
from fwplab.models import build_model
from fwplab.inference import predict_run
from fwplab.train import METRICS_NAME, load_checkpoint, load_model
from fwplab.train import predict as logits_of
from test_train import one_thread, write_ts_pair  # noqa: F401 (autouse fixture)

TINY = ["--hidden", "8", "--heads", "2", "--batch-size", "8", "--epochs", "1", "--no-progress"]
#: Probabilities recomputed here vs predict's (a log and an exp apart for one model).
ATOL_PROBABILITY = 1e-6


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A one-model run and a two-model ensemble on the same tiny ``.ts`` pair."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("predict")
    train, test = write_ts_pair(folder, n_train=12, n_test=9, classes="xyz")
    out = {}
    for name, extra in (("single", []), ("ensemble", ["--ensemble", "2"])):
        out[name] = folder / name
        assert main(["train", "--train", str(train), "--test", str(test), "--out",
                     str(out[name]), *TINY, *extra]) == 0
    torch.set_num_threads(threads)
    return train, test, out


def _members(run):
    if (run / ENSEMBLE_NAME).is_file():
        content = torch.load(run / ENSEMBLE_NAME, weights_only=True)
        models = []
        for state in content["states"]:
            model = build_model(**content["model_config"])
            model.load_state_dict(state)
            models.append(model.eval())
        return models
    return [load_model(run)]


@pytest.mark.parametrize("kind, members", [("single", 1), ("ensemble", 2)])
def test_predicting_the_test_file_reproduces_the_run(runs, kind, members):
    _, test, out = runs
    run = out[kind]
    metrics = json.loads((run / METRICS_NAME).read_text())
    assert metrics.get("ensemble", {}).get("members", 1) == members
    table = predict_run(run, test)
    dataset = load_data(load_checkpoint(run)["run"]["data"])  # the run's own test split
    models = _members(run)
    assert len(models) == members
    expected = torch.stack([logits_of(model, dataset.test).softmax(-1)
                            for model in models]).mean(0)
    torch.testing.assert_close(table.probabilities, expected, atol=ATOL_PROBABILITY, rtol=0)
    truth = [dataset.class_names[label] for label in dataset.test.y.tolist()]
    accuracy = float(torch.tensor([p == t for p, t in zip(table.predicted, truth,
                                                          strict=True)]).float().mean())
    assert accuracy == metrics["test_accuracy"]  # to the last digit


def test_the_csv_names_the_classes_and_gives_every_probability(runs, tmp_path, capsys):
    _, test, out = runs
    target = tmp_path / "predictions.csv"
    assert main(["predict", str(out["ensemble"]), "--data", str(test), "--out",
                 str(target)]) == 0
    assert "9 series" in capsys.readouterr().out
    rows = list(csv.reader(io.StringIO(target.read_text())))
    assert rows[0] == ["series", "class", "p(x)", "p(y)", "p(z)"]
    assert [row[0] for row in rows[1:]] == [str(i) for i in range(1, 10)]
    for row in rows[1:]:
        probabilities = [float(p) for p in row[2:]]
        assert row[1] == "xyz"[probabilities.index(max(probabilities))]
        assert sum(probabilities) == pytest.approx(1, abs=1e-5)
    assert main(["predict", str(out["ensemble"]), "--data", str(test)]) == 0
    assert capsys.readouterr().out == target.read_text()  # no --out: the same table on stdout


def _rewrite(test, target, line):
    """``test`` with its header kept and each data line passed through ``line``."""
    lines = test.read_text().splitlines()
    start = lines.index("@data") + 1
    target.write_text("\n".join(lines[:start] + [line(text) for text in lines[start:]]) + "\n")
    return target


def test_series_without_labels_get_the_same_probabilities(runs, tmp_path):
    _, test, out = runs
    unlabelled = _rewrite(test, tmp_path / "X.ts", lambda text: text.rsplit(":", 1)[0])
    unlabelled.write_text(unlabelled.read_text().replace("@classLabel true x y z",
                                                         "@classLabel false"))
    assert torch.equal(predict_run(out["single"], unlabelled).probabilities,
                       predict_run(out["single"], test).probabilities)


def test_a_series_the_run_cannot_take_is_refused_in_one_line_naming_it(runs, tmp_path, capsys):
    _, test, out = runs
    univariate = _rewrite(test, tmp_path / "uni.ts",
                          lambda text: f"{text.split(':')[0]}:{text.rsplit(':', 1)[1]}")
    univariate.write_text(univariate.read_text().replace("@univariate false", "@univariate true")
                          .replace("@dimensions 2", "@dimensions 1"))
    lines = test.read_text().splitlines()
    start = lines.index("@data") + 1
    lines.insert(start + 1, "?,?,?,?:?,?,?,?:x")  # the second series: nothing observed
    missing = tmp_path / "missing.ts"
    missing.write_text("\n".join(lines) + "\n")
    for data, words in ((univariate, ["series 1 has 1 channels", "trained on 2"]),
                        (missing, [f"line {start + 2}", "no observed value"])):
        target = tmp_path / "out.csv"
        assert main(["predict", str(out["single"]), "--data", str(data), "--out",
                     str(target)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(data) in err and "Traceback" not in err
        assert all(word in err for word in words), err
        assert not target.exists()


def test_a_run_whose_training_file_is_gone_is_refused_in_one_line(runs, tmp_path, capsys):
    train, test, _ = runs
    copy = tmp_path / "Copy_TRAIN.ts"
    copy.write_text(train.read_text())
    run = tmp_path / "run"
    assert main(["train", "--train", str(copy), "--test", str(test), "--out", str(run),
                 *TINY]) == 0
    copy.unlink()
    capsys.readouterr()
    assert main(["predict", str(run), "--data", str(test)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "training file" in err and str(copy) in err
    with pytest.raises(ValueError, match="not a fwplab|checkpoint not found"):
        predict_run(tmp_path / "nothing", test)


def test_an_ensemble_file_claiming_huge_sizes_is_refused_before_building(runs, tmp_path):
    _, test, out = runs
    run = tmp_path / "crafted"
    shutil.copytree(out["ensemble"], run)
    content = torch.load(run / ENSEMBLE_NAME, weights_only=True)
    content["model_config"] = dict(content["model_config"], hidden_channels=10**6)
    torch.save(content, run / ENSEMBLE_NAME)
    with pytest.raises(ValueError, match=r"ensemble.pt: model config: the saved weights do not "
                                         r"fit delta_cde as configured"):
        predict_run(run, test)


def test_a_long_series_run_reproduces_itself_and_sees_the_series_level(tmp_path):
    """Long series become log-signature windows whose path starts at each series' first
    value: prediction replays that (the run's accuracy to the last digit), and the same
    series shifted by a constant get other probabilities (from 0 they would get the same)."""
    from fwplab.presets import LONG_SERIES
    from test_adaptive_budget import write_univariate_pair

    train, test = write_univariate_pair(tmp_path, length=LONG_SERIES + 3)
    run = tmp_path / "long"
    assert main(["train", "--train", str(train), "--test", str(test), "--out", str(run),
                 *TINY]) == 0
    metrics = json.loads((run / METRICS_NAME).read_text())
    assert metrics["run"]["data"]["options"]["logsig_level"] is True
    table = predict_run(run, test)
    dataset = load_data(load_checkpoint(run)["run"]["data"])
    truth = [dataset.class_names[label] for label in dataset.test.y.tolist()]
    accuracy = float(torch.tensor([p == t for p, t in zip(table.predicted, truth,
                                                          strict=True)]).float().mean())
    assert accuracy == metrics["test_accuracy"]
    head, rows = test.read_text().split("@data\n")
    shifted = tmp_path / "shifted.ts"
    shifted.write_text(head + "@data\n" + "".join(
        ",".join(f"{float(v) + 3:.2f}" for v in values.split(",")) + ":" + label + "\n"
        for values, label in (row.rsplit(":", 1) for row in rows.splitlines())))
    moved = predict_run(run, shifted).probabilities
    assert (moved - table.probabilities).abs().max() > 1e-3

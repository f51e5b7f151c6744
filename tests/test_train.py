"""The training loop: metrics, batching with precomputed coefficients, best-model
selection, seeding, gradient scaling, divergence handling and checkpoints.

Also home of what the other training tests import: the :func:`one_thread` fixture,
:func:`tiny_dataset` (tensors) and :func:`write_ts_pair` (``.ts`` files).
"""

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fwplab.train
from fwplab import build_model
from fwplab.data import Dataset, Split
from fwplab.paths import interpolation_coeffs
from fwplab.train import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    TrainConfig,
    TrainingDiverged,
    _carve_validation,
    auroc,
    evaluate,
    fit,
    load_checkpoint,
    load_model,
    predict,
)

#: Logits of a batch cut to its longest series vs the whole padded split.
ATOL_TRIMMED_BATCH = 1e-5
#: Recorded gradient norm vs one computed by hand.
RTOL_GRAD_NORM = 1e-4
TINY_MODEL = dict(hidden_channels=8, num_heads=2)
METRICS_KEYS = {"model", "dataset", "test_accuracy", "train_accuracy", "epochs", "seconds",
                "parameters"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from a second thread, and on a shared 2-core machine
    intra-op threads waiting on each other slow training down many times."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_dataset(n_train: int = 30, n_test: int = 15, classes: int = 3, seed: int = 0) -> Dataset:
    """Separable variable-length series with a time channel and NaN after each end."""
    generator = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        time = 7
        y = torch.arange(n) % classes
        lengths = torch.randint(4, time + 1, (n,), generator=generator)
        t = torch.arange(time, dtype=torch.float32)
        slope = (y.float() - (classes - 1) / 2).reshape(n, 1, 1)
        values = slope * t.reshape(1, time, 1) / time + 0.1 * torch.randn(
            n, time, 2, generator=generator)
        x = torch.cat([t.expand(n, time).unsqueeze(-1), values], -1)
        x[torch.arange(time) >= lengths.unsqueeze(-1)] = math.nan
        return Split(x, lengths, y, t)

    return Dataset("tiny", split(n_train), None, split(n_test),
                   tuple("abcdefgh"[:classes]), ("time", "x0", "x1"))


def write_ts_pair(folder: Path, n_train: int = 24, n_test: int = 12, seed: int = 0,
                  classes: str = "abc") -> tuple[Path, Path]:
    """A multivariate, variable-length ``.ts`` TRAIN/TEST pair with '?' missing values."""
    rng = random.Random(seed)
    header = ["# written by tests/test_train.py", "@problemName Tiny", "@timeStamps false",
              "@missing true", "@univariate false", "@dimensions 2", "@equalLength false",
              f"@classLabel true {' '.join(classes)}", "@data"]

    def line(index: int) -> str:
        label = classes[index % len(classes)]
        slope = classes.index(label) - (len(classes) - 1) / 2
        length = rng.randint(4, 7)
        dimensions = []
        for offset in range(2):
            values = [slope * t / length + offset + 0.1 * rng.gauss(0, 1) for t in range(length)]
            dimensions.append(",".join(
                "?" if 0 < t < length - 1 and rng.random() < 0.2 else f"{v:.5f}"
                for t, v in enumerate(values)))
        return ":".join(dimensions) + ":" + label

    paths = []
    for name, count in (("TRAIN", n_train), ("TEST", n_test)):
        path = folder / f"Tiny_{name}.ts"
        path.write_text("\n".join(header + [line(i) for i in range(count)]) + "\n")
        paths.append(path)
    return paths[0], paths[1]


def tiny_model(dataset: Dataset, seed: int = 0, **options):
    torch.manual_seed(seed)
    return build_model("delta_cde", dataset.input_channels, dataset.num_classes,
                       **{**TINY_MODEL, **options})


# ------------------------------------------------------------------------- metrics
def test_auroc_equals_the_pairwise_probability_with_ties():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (40,), generator=generator).float()  # many ties
    labels = torch.randint(0, 2, (40,), generator=generator)
    positives, negatives = scores[labels == 1], scores[labels == 0]
    difference = positives.reshape(-1, 1) - negatives.reshape(1, -1)
    expected = float(((difference > 0).double() + 0.5 * (difference == 0).double()).mean())
    assert auroc(scores, labels) == pytest.approx(expected, rel=1e-12)
    assert auroc(torch.tensor([0.1, 0.2, 0.9]), torch.tensor([0, 0, 1])) == 1.0
    assert auroc(torch.tensor([0.9, 0.2, 0.1]), torch.tensor([1, 0, 0])) == 1.0
    assert auroc(torch.tensor([0.9, 0.2, 0.1]), torch.tensor([0, 1, 1])) == 0.0
    assert math.isnan(auroc(torch.tensor([0.3, 0.4]), torch.tensor([1, 1])))
    with pytest.raises(ValueError, match="scores, labels: expected two tensors of shape"):
        auroc(torch.zeros(3), torch.zeros(4))


def test_evaluate_reports_auroc_for_two_classes():
    dataset = tiny_dataset(classes=2)
    metrics = evaluate(tiny_model(dataset), dataset.test)
    assert set(metrics) == {"loss", "accuracy", "auroc"}
    assert 0.0 <= metrics["auroc"] <= 1.0


def test_precomputed_coefficients_cut_per_batch_give_the_models_own_logits():
    dataset = tiny_dataset()
    model = tiny_model(dataset).eval()
    split = dataset.test
    batched = predict(model, split, batch_size=4)  # batches cut to their longest series
    with torch.no_grad():
        whole = model(split.x, split.times, split.lengths)  # coefficients computed inside
    torch.testing.assert_close(batched, whole, atol=ATOL_TRIMMED_BATCH, rtol=0)
    coeffs = interpolation_coeffs(split.x, split.times, split.lengths)
    torch.testing.assert_close(predict(model, split, batch_size=4, coeffs=coeffs), batched,
                               atol=0, rtol=0)


def test_coefficients_are_computed_once_per_split(monkeypatch):
    dataset = tiny_dataset()
    model = tiny_model(dataset)
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return interpolation_coeffs(*args, **kwargs)

    monkeypatch.setattr(fwplab.train, "interpolation_coeffs", counting)
    first = evaluate(model, dataset.test)
    assert evaluate(model, dataset.test) == first
    fit(model, dataset, epochs=1, batch_size=8, progress=False)
    assert calls == [dataset.test.x.shape, dataset.train.x.shape]


# ----------------------------------------------------------------------- the loop
def test_validation_split_is_stratified_disjoint_and_seeded():
    dataset = tiny_dataset(n_train=60)
    config = TrainConfig(val_fraction=0.2, seed=3)
    train, val = _carve_validation(dataset, config)
    assert len(train) + len(val) == 60
    assert torch.bincount(val.y).tolist() == [4, 4, 4]
    rows = {tuple(row.nan_to_num(-9).flatten().tolist()) for row in train.x}
    assert not any(tuple(row.nan_to_num(-9).flatten().tolist()) in rows for row in val.x)
    again = _carve_validation(dataset, config)[1]
    assert torch.equal(again.x.nan_to_num(-9), val.x.nan_to_num(-9))
    other = _carve_validation(dataset, TrainConfig(val_fraction=0.2, seed=4))[1]
    assert not torch.equal(other.x.nan_to_num(-9), val.x.nan_to_num(-9))


def test_fit_learns_and_keeps_the_best_validation_epoch():
    dataset = tiny_dataset(n_train=45)
    model = tiny_model(dataset)
    history = fit(model, dataset, epochs=6, batch_size=8, lr=1e-2, val_fraction=0.2,
                  progress=False)
    assert len(history.records) == 6
    assert history.records[-1].train_loss < history.records[0].train_loss
    best = history.records[history.best_epoch - 1]
    assert best.val_accuracy == max(r.val_accuracy for r in history.records)
    # the model holds the best epoch's weights: re-evaluating reproduces its score
    assert history.val["accuracy"] == best.val_accuracy
    assert history.val["loss"] == pytest.approx(best.val_loss, rel=1e-6)
    assert history.test["accuracy"] > 1 / 3
    assert history.curve("val_accuracy") == [r.val_accuracy for r in history.records]


def test_fit_is_reproducible_with_a_seed_and_changes_with_another():
    dataset = tiny_dataset()
    runs = [fit(tiny_model(dataset, dropout=0.2), dataset, epochs=2, batch_size=8, seed=seed,
                progress=False) for seed in (1, 1, 2)]
    assert runs[0].curve("train_loss") == runs[1].curve("train_loss")
    assert runs[0].curve("train_loss") != runs[2].curve("train_loss")


def test_patience_stops_early():
    dataset = tiny_dataset(n_train=45)
    history = fit(tiny_model(dataset), dataset, epochs=30, batch_size=16, lr=1e-9,
                  val_fraction=0.2, patience=2, schedule="constant", progress=False)
    assert history.stopped_early
    assert len(history.records) == history.best_epoch + 2


def test_grad_scale_multiplies_the_final_layer_gradient():
    dataset = tiny_dataset(n_train=12)
    model = tiny_model(dataset)
    reference = tiny_model(dataset)
    history = fit(model, dataset, epochs=1, batch_size=12, grad_scale=100.0, progress=False)
    split = dataset.train
    loss = F.cross_entropy(reference(split.x, split.times, split.lengths), split.y)
    loss.backward()
    squares = sum(
        float((p.grad * (100.0 if name.startswith("classifier.") else 1.0)).square().sum())
        for name, p in reference.named_parameters())
    assert history.records[0].grad_norm == pytest.approx(math.sqrt(squares), rel=RTOL_GRAD_NORM)


def test_non_finite_weights_stop_training_and_keep_the_last_good_checkpoint(tmp_path):
    dataset = tiny_dataset()
    model = tiny_model(dataset)

    def poison(record):
        if record.epoch == 1:
            with torch.no_grad():
                model.classifier.weight[0, 0] = math.nan

    with pytest.raises(TrainingDiverged, match=r"non-finite loss at epoch 2, step 1; kept the "
                       r"last good checkpoint .*checkpoint\.pt \(epoch 1\); try a smaller "
                       r"learning rate"):
        fit(model, dataset, epochs=3, batch_size=8, out=tmp_path, callback=poison,
            progress=False)
    saved = load_checkpoint(tmp_path)
    assert saved["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values())
    assert not (tmp_path / METRICS_NAME).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]


def test_checkpoint_and_metrics_files(tmp_path):
    dataset = tiny_dataset()
    model = tiny_model(dataset)
    history = fit(model, dataset, epochs=2, batch_size=8, out=tmp_path, progress=False)
    metrics = json.loads((tmp_path / METRICS_NAME).read_text())
    assert METRICS_KEYS <= set(metrics)
    assert metrics["test_accuracy"] == history.test["accuracy"]
    assert metrics["epochs"] == 2 and metrics["model"] == "delta_cde"
    raw = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert {"model", "best_model", "model_config", "optimizer", "scheduler", "rng", "epoch",
            "history", "train_config"} <= set(raw)
    restored = load_model(tmp_path)
    torch.testing.assert_close(predict(restored, dataset.test), predict(model, dataset.test),
                               atol=0, rtol=0)
    with pytest.raises(ValueError, match="already holds a run"):
        fit(tiny_model(dataset), dataset, epochs=1, out=tmp_path, progress=False)


def test_bad_settings_raise_clear_errors():
    dataset = tiny_dataset()
    with pytest.raises(ValueError, match="epochs: expected a positive integer, got 0"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="schedule: expected one of"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="class_weights: expected 3 weights"):
        fit(tiny_model(dataset), dataset, epochs=1, class_weights=(1.0, 2.0), progress=False)
    with pytest.raises(ValueError, match="monitor: 'auroc' needs two classes"):
        fit(tiny_model(dataset), dataset, epochs=1, monitor="auroc", progress=False)
    with pytest.raises(ValueError, match="resume: needs out="):
        fit(tiny_model(dataset), dataset, epochs=1, resume=True, progress=False)

"""Standardising each step over the training series: the transform (training statistics,
step by step, the same for every split), the rule that chooses it from the training split
(fixed-position differences yes, shapes at random shifts no, unequal lengths no) and a run
with it on, whose predictions reproduce its test accuracy."""

import json
import math

import pytest
import torch

from fwplab.adaptive import adapt_data, fit_adaptive, load_data
from fwplab.data import Dataset, Split
from fwplab.data.transforms import nearest_class_mean_accuracy, standardise_positions
from fwplab.inference import predict_run
from fwplab.presets import LONG_SERIES, POSITION_MEAN_ACCURACY
from fwplab.train import METRICS_NAME
from fwplab.train import predict as logits_of
from test_train import one_thread  # noqa: F401 (autouse fixture)

STEPS = LONG_SERIES + 72
CLASSES = "abc"


def _series(kind: str, label: int, generator: torch.Generator) -> torch.Tensor:
    """One series of :data:`STEPS` steps of class ``label``.

    ``bumps``: a shared curve plus a small bump at the class's fixed step (spectra-like);
    ``shifted``: the class's shape (bump, dip, step) at a random position on noise."""
    t = torch.arange(STEPS, dtype=torch.float64)
    noise = 0.1 * torch.randn(STEPS, generator=generator, dtype=torch.float64)
    if kind == "bumps":
        where = 40 + 50 * label
        return torch.sin(t / 20) * 2 + 0.4 * torch.exp(-((t - where) / 4) ** 2) + noise
    where = float(torch.randint(20, STEPS - 40, (1,), generator=generator))
    bump = torch.exp(-((t - where) / 6) ** 2)
    shape = (bump, -bump, ((t > where) & (t < where + 20)).to(t.dtype))[label]
    return shape + noise


def _write(folder, kind: str, train: int = 30, test: int = 15, seed: int = 0):
    """A univariate TRAIN/TEST ``.ts`` pair of equal-length series of three classes."""
    generator = torch.Generator().manual_seed(seed)
    header = ["@problemName Positions", "@timeStamps false", "@missing false",
              "@univariate true", "@equalLength true", f"@seriesLength {STEPS}",
              f"@classLabel true {' '.join(CLASSES)}", "@data"]
    paths = []
    for part, count in (("TRAIN", train), ("TEST", test)):
        rows = [",".join(f"{v:.6f}" for v in _series(kind, i % 3, generator).tolist())
                + f":{CLASSES[i % 3]}" for i in range(count)]
        path = folder / f"{kind}_{part}.ts"
        path.write_text("\n".join(header + rows) + "\n")
        paths.append(path)
    return paths


def _spec(train, test) -> dict:
    return {"train": str(train), "test": str(test), "missing_rate": 0.0, "seed": 0,
            "options": {}}


@pytest.mark.parametrize("kind, fires", [("bumps", True), ("shifted", False)])
def test_the_rule_fires_where_classes_differ_at_fixed_positions_only(tmp_path, kind, fires):
    spec = _spec(*_write(tmp_path, kind))
    dataset, choices = adapt_data(spec, load_data(spec))
    accuracy = nearest_class_mean_accuracy(load_data(_spec(spec["train"], spec["test"])).train, 1)
    assert (accuracy >= POSITION_MEAN_ACCURACY) is fires
    assert bool(spec["options"].get("standardise_positions")) is fires
    line = next(choice.line() for choice in choices if choice.name == "position scale")
    assert f"{accuracy:.3f}" in line and line.startswith(
        "position scale = each step" if fires else "position scale = off")


def _dataset(train_x: torch.Tensor, test_x: torch.Tensor) -> Dataset:
    def split(x):
        times = torch.arange(x.shape[1], dtype=x.dtype)
        channels = torch.stack([times.expand(len(x), -1), x], dim=-1)
        return Split(channels, torch.full((len(x),), x.shape[1]), torch.arange(len(x)) % 2, times)

    return Dataset("d", split(train_x), None, split(test_x), ("a", "b"), ("time", "v"))


def test_each_step_uses_the_training_statistics_at_that_step_alone():
    generator = torch.Generator().manual_seed(1)
    train = torch.randn(12, 9, generator=generator, dtype=torch.float64) * torch.arange(1, 10)
    test = torch.randn(5, 9, generator=generator, dtype=torch.float64)
    result = standardise_positions(_dataset(train, test), [1])
    assert result.channel_names == ("time", "v", "position:v")
    assert torch.equal(result.train.x[..., :2], _dataset(train, test).train.x)  # kept beside
    standardised = result.train.x[..., 2]
    torch.testing.assert_close(standardised.mean(0), torch.zeros(9, dtype=torch.float64))
    torch.testing.assert_close(standardised.std(0, correction=0),
                               torch.ones(9, dtype=torch.float64))
    mean, spread = train.mean(0), train.std(0, correction=0)
    torch.testing.assert_close(result.test.x[..., 2], (test - mean) / spread)
    assert torch.equal(result.test.x[..., :2], _dataset(train, test).test.x)
    # Changing the training series after step 4 leaves steps 0..4 of every split as they were.
    later = train.clone()
    later[:, 5:] = later[:, 5:] * 7 + 3
    changed = standardise_positions(_dataset(later, test), [1])
    assert torch.equal(changed.test.x[:, :5], result.test.x[:, :5])


def test_a_series_of_another_length_is_refused_in_one_line():
    dataset = _dataset(torch.randn(6, 9, dtype=torch.float64), torch.randn(3, 9,
                                                                           dtype=torch.float64))
    shorter = Split(dataset.test.x, torch.tensor([9, 7, 9]), dataset.test.y, dataset.test.times)
    with pytest.raises(ValueError, match=r"^x: expected series of 9 steps .* got one of 7; "
                                         r"give equal-length series$"):
        standardise_positions(Dataset("d", dataset.train, None, shorter, ("a", "b"),
                                      ("time", "v")), [1])


def test_a_constant_step_stays_finite_and_a_lone_class_is_classified_among_the_others():
    train = torch.randn(6, 9, dtype=torch.float64)
    train[:, 3] = 2.0
    result = standardise_positions(_dataset(train, train[:2]), [1])
    assert bool(torch.isfinite(result.train.x).all()) and bool((result.train.x[:, 3, 2] == 0).all())
    labels = torch.tensor([0, 0, 0, 1, 1, 2])  # class 2 has one series
    split = Split(result.train.x, result.train.lengths, labels, result.train.times)
    assert 0 <= nearest_class_mean_accuracy(split, 2) <= 5 / 6
    assert not math.isnan(nearest_class_mean_accuracy(split, 2))


def test_prediction_reproduces_a_run_with_position_scale(tmp_path):
    train, test = _write(tmp_path, "bumps", train=24, test=12)
    out = tmp_path / "run"
    fitted = fit_adaptive((str(train), str(test)), seed=0, out=out, progress=False,
                          model_options={"hidden_channels": 8, "num_heads": 2},
                          train_options={"epochs": 8})
    assert fitted.spec["options"]["standardise_positions"] is True
    assert "position:dim0" in fitted.dataset.channel_names
    metrics = json.loads((out / METRICS_NAME).read_text())
    assert metrics["run"]["adaptive"]["position scale"]["value"].startswith("each step")
    table = predict_run(out, test)
    truth = [CLASSES[i % 3] for i in range(12)]
    correct = sum(p == t for p, t in zip(table.predicted, truth, strict=True))
    assert correct == round(metrics["test_accuracy"] * 12)
    model = fitted.model.eval()
    expected = logits_of(model, fitted.dataset.test).softmax(-1)
    torch.testing.assert_close(table.probabilities, expected, atol=1e-6, rtol=0)

"""The adaptive policy reads no clock; timestamps' unit does not change the inputs;
an unwritable ensemble.pt stops the run before training; bad optimiser state is one line."""

import json
import time

import pytest
import torch

import fwplab.adaptive
import fwplab.train
from fwplab.adaptive import ENSEMBLE_NAME, fit_adaptive, load_data
from fwplab.cli import main
from test_train import one_thread, write_ts_pair  # noqa: F401 (autouse fixture)

SMALL = {"hidden_channels": 8, "num_heads": 2}


def _run(tmp_path, name, train, test):
    fit = fit_adaptive((train, test), seed=0, out=tmp_path / name, progress=False,
                       model_options=SMALL, ensemble=2)
    return json.loads((tmp_path / name / "metrics.json").read_text()), fit


def test_a_slow_machine_gets_the_same_metrics(tmp_path, monkeypatch):
    train, test = write_ts_pair(tmp_path, n_train=8, n_test=6)
    fast, _ = _run(tmp_path, "fast", train, test)
    real_step = fwplab.train._Trainer._step
    clock = time.perf_counter

    def slow_step(self, *args, **kwargs):
        time.sleep(0.002)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(fwplab.train._Trainer, "_step", slow_step)
    # every clock the policy and the loop could read runs 10,000 times faster
    monkeypatch.setattr(time, "perf_counter", lambda: 1e4 * clock())
    slow, _ = _run(tmp_path, "slow", train, test)
    for key in ("test_accuracy", "train_accuracy", "test_loss", "epochs"):
        assert fast[key] == slow[key]
    assert fast["ensemble"]["member_test_accuracy"] == slow["ensemble"]["member_test_accuracy"]
    assert fast["run"]["adaptive"] == slow["run"]["adaptive"]


def _timestamped(folder, name, scale, offset):
    """A two-class set whose observation times are irregular, in units of ``scale``."""
    generator = torch.Generator().manual_seed(0)
    paths = []
    for part, count in (("TRAIN", 12), ("TEST", 6)):
        lines = [f"@problemName {name}", "@timeStamps true", "@univariate true",
                 "@classLabel true a b", "@data"]
        for index in range(count):
            label = "ab"[index % 2]
            gaps = 1 + torch.rand(10, generator=generator)
            times = torch.cumsum(gaps, 0) - gaps[0]
            values = torch.sin(times * (1 if label == "a" else 2))
            points = ",".join(f"({offset + scale * float(t)!r},{float(v)!r})"
                              for t, v in zip(times, values, strict=True))
            lines.append(f"{points}:{label}")
        path = folder / f"{name}_{part}.ts"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def test_the_unit_of_time_does_not_change_the_inputs(tmp_path):
    loaded = []
    for scale, offset in ((1, 0), (30, 0), (1000, 0), (1, 1.7e9)):
        train, test = _timestamped(tmp_path, f"T{scale}_{int(offset)}", scale, offset)
        spec = {"missing_rate": 0.0, "seed": 0, "options": {}, "train": str(train),
                "test": str(test)}
        loaded.append((load_data(spec), spec["time_unit"]))
    first = loaded[0][0]
    for dataset, _ in loaded[1:]:
        assert torch.allclose(dataset.train.x, first.train.x, atol=1e-6, equal_nan=True)
        assert torch.allclose(dataset.test.x, first.test.x, atol=1e-6, equal_nan=True)
    assert [unit for _, unit in loaded][1] == pytest.approx(30 * loaded[0][1])


def test_an_unwritable_ensemble_file_stops_the_run_before_training(tmp_path, capsys,
                                                                    monkeypatch):
    train, test = write_ts_pair(tmp_path, n_train=8, n_test=6)
    out = tmp_path / "run"
    (out / ENSEMBLE_NAME).mkdir(parents=True)
    fits = []
    monkeypatch.setattr(fwplab.adaptive, "fit", lambda *a, **k: fits.append(1))
    assert main(["train", "--train", str(train), "--test", str(test), "--ensemble", "2",
                 "--hidden", "8", "--heads", "2", "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ensemble" in err and "nothing was trained" in err
    assert fits == []


@pytest.mark.parametrize("field, change, words", [
    ("optimizer", lambda s: s["state"][0].update(exp_avg=torch.zeros(3)), "exp_avg"),
    ("optimizer", lambda s: s["param_groups"][0].update(lr="fast"), "param_groups"),
    ("scheduler", lambda s: s.update(last_epoch="x"), "scheduler"),
])
def test_bad_optimizer_or_scheduler_state_is_one_line(tmp_path, capsys, field, change, words):
    train, test = write_ts_pair(tmp_path, n_train=8, n_test=6)
    out = tmp_path / "run"
    assert main(["train", "--train", str(train), "--test", str(test), "--epochs", "2",
                 "--hidden", "8", "--heads", "2", "--out", str(out), "--no-progress"]) == 0
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    checkpoint.update(epoch=1, finished=False, history=checkpoint["history"][:1], best_epoch=1,
                      stale_epochs=0, stopped_early=False)
    change(checkpoint[field])
    torch.save(checkpoint, out / "checkpoint.pt")
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err

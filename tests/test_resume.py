"""Checkpoints and resume: an interrupted run, resumed, ends exactly where an
uninterrupted one does (CPU), including a process killed with SIGKILL or stopped
with SIGTERM mid-run; a crash while writing a checkpoint leaves the previous one
intact."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import fwplab.train
from fwplab.cli import main
from fwplab.train import CHECKPOINT_NAME, METRICS_NAME, fit, load_checkpoint
from test_train import (  # noqa: F401 (one_thread: autouse fixture)
    one_thread,
    tiny_dataset,
    tiny_model,
    write_ts_pair,
)

#: Seconds to wait for the first checkpoint of the subprocess run.
CHECKPOINT_WAIT_S = 120
POLL_S = 0.01
#: metrics.json entries that may differ between sessions (wall time).
TIMING_KEYS = ("seconds",)


class Interrupted(Exception):
    pass


def _comparable(metrics: dict) -> dict:
    """metrics.json without wall times."""
    kept = {key: value for key, value in metrics.items() if key not in TIMING_KEYS}
    kept["history"] = [{k: v for k, v in record.items() if k != "seconds"}
                       for record in metrics["history"]]
    return kept


def test_interrupted_and_resumed_run_ends_like_an_uninterrupted_one(tmp_path):
    dataset = tiny_dataset()
    settings = dict(epochs=4, batch_size=8, val_fraction=0.2, progress=False)
    whole = fit(tiny_model(dataset, dropout=0.2), dataset, out=tmp_path / "whole", **settings)

    def stop_after_epoch_2(record):
        if record.epoch == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        fit(tiny_model(dataset, dropout=0.2), dataset, out=tmp_path / "parts",
            callback=stop_after_epoch_2, **settings)
    assert load_checkpoint(tmp_path / "parts")["epoch"] == 2
    assert not (tmp_path / "parts" / METRICS_NAME).exists()
    # a fresh model object: everything comes back from the checkpoint
    resumed = fit(tiny_model(dataset, seed=99, dropout=0.2), dataset, out=tmp_path / "parts",
                  resume=True, **settings)

    assert resumed.curve("train_loss") == whole.curve("train_loss")
    assert resumed.test == whole.test and resumed.best_epoch == whole.best_epoch
    first, second = (json.loads((tmp_path / name / METRICS_NAME).read_text())
                     for name in ("whole", "parts"))
    assert _comparable(first) == _comparable(second)
    final = [load_checkpoint(tmp_path / name)["model"] for name in ("whole", "parts")]
    assert all(torch.equal(final[0][key], final[1][key]) for key in final[0])


def test_resume_refuses_other_settings(tmp_path):
    dataset = tiny_dataset()
    fit(tiny_model(dataset), dataset, epochs=1, batch_size=8, lr=0.002, out=tmp_path,
        progress=False)
    with pytest.raises(ValueError, match=r"resume needs the saved training settings; "
                       r"lr=0.002 \(saved\) vs 0.01"):
        fit(tiny_model(dataset), dataset, epochs=1, batch_size=8, lr=0.01, out=tmp_path,
            resume=True, progress=False)
    with pytest.raises(ValueError, match="the checkpoint's model .* differs from the model"):
        fit(tiny_model(dataset, hidden_channels=4), dataset, epochs=1, batch_size=8,
            out=tmp_path, resume=True, progress=False)


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    dataset = tiny_dataset()
    real_save = torch.save
    calls = []

    def save_then_crash(content, target):
        if "epoch" in content:  # a checkpoint, not the trial write before training
            calls.append(target)
        if len(calls) == 2:  # the second epoch's checkpoint: half written, then the crash
            target.write_bytes(b"partial")
            raise OSError("disk full")
        real_save(content, target)

    monkeypatch.setattr(fwplab.train.torch, "save", save_then_crash)
    with pytest.raises(OSError, match=r"checkpoint.pt: could not be written \(disk full\); its "
                       r"previous version, if any, is kept"):
        fit(tiny_model(dataset), dataset, epochs=3, batch_size=8, out=tmp_path, progress=False)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["epoch"] == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == [CHECKPOINT_NAME]


@pytest.mark.parametrize("stop, status", [
    (signal.SIGKILL, -signal.SIGKILL),  # no cleanup at all: the lock dies with the process
    (signal.SIGTERM, 128 + signal.SIGTERM),  # fwplab train stops like Ctrl-C
])
def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path, stop, status):
    train, test = write_ts_pair(tmp_path, n_train=60, n_test=12)
    flags = ["--train", str(train), "--test", str(test), "--epochs", "4", "--hidden", "8",
             "--heads", "2", "--batch-size", "4", "--val-fraction", "0.2", "--dropout", "0.1",
             "--device", "cpu", "--no-progress"]
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "fwplab", "train", *flags,
                                "--out", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})  # as one_thread
    deadline = time.monotonic() + CHECKPOINT_WAIT_S
    try:
        while not (killed / CHECKPOINT_NAME).exists() and process.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(POLL_S)
        process.send_signal(stop)
    finally:
        process.wait()
    assert process.returncode == status
    assert not (killed / METRICS_NAME).exists()  # it died before the end
    assert load_checkpoint(killed)["epoch"] < 4

    whole = tmp_path / "whole"
    assert main(["train", *flags, "--out", str(whole)]) == 0
    assert main(["train", "--resume", str(killed), "--no-progress"]) == 0
    first, second = (json.loads((folder / METRICS_NAME).read_text()) for folder in (whole, killed))
    assert _comparable(first) == _comparable(second)
    assert not math.isnan(first["test_loss"])

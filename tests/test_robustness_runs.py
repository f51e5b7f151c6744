"""Runs that cannot lose results (issue 12, items 4-8 and 10): one writer per run
folder, unique default folders, checkpoints validated on load, data fingerprints,
write failures before training, truthful interrupt messages, strict JSON.

Every CLI case checks the exit status, the single stderr line and what is on disk.
"""

import copy
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import fwplab.cli
import fwplab.train
from fwplab.train import CHECKPOINT_NAME, LOCK_NAME, METRICS_NAME, fit, load_checkpoint, load_model
from test_bad_input import EXIT_FLAGS, EXIT_INPUT, _assert_one_line, _run
from test_train import one_thread, tiny_dataset, tiny_model, write_ts_pair  # noqa: F401

TINY = ["--hidden", "8", "--heads", "2", "--batch-size", "8", "--no-progress", "--device", "cpu"]
#: Seconds to wait for a helper process to take the lock.
LOCK_WAIT_S = 60


def _flags(tmp_path, epochs=1):
    train, test = write_ts_pair(tmp_path)
    return ["train", "--train", str(train), "--test", str(test), "--epochs", str(epochs), *TINY]


def _assert_interrupt_line(err, pattern, tmp_path, inputs):
    """As ``_assert_one_line``, for the line of an interrupted run (not an error)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.fullmatch("fwplab train: " + pattern, lines[0]), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(inputs)


def _inputs(tmp_path):
    return ["Tiny_TRAIN.ts", "Tiny_TEST.ts"]


@pytest.fixture
def lock_holder():
    """Start a process that holds a run folder's lock as a running fwplab train would."""
    processes = []

    def hold(folder):
        folder.mkdir(parents=True, exist_ok=True)
        code = textwrap.dedent(f"""
            import fcntl, os, sys, time
            fd = os.open({str(folder / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, f"{{os.getpid()}}\\n".encode())
            print("locked", flush=True)
            time.sleep({LOCK_WAIT_S})
        """)
        process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                   text=True)
        processes.append(process)
        assert process.stdout.readline().strip() == "locked"
        return process

    yield hold
    for process in processes:
        process.kill()
        process.wait()


def test_a_second_writer_is_refused_until_the_first_dies(tmp_path, capsys, lock_holder):
    flags = _flags(tmp_path)
    run = tmp_path / "run"
    holder = lock_holder(run)
    code, _, err = _run([*flags, "--out", str(run)], capsys)
    assert code == EXIT_INPUT
    _assert_one_line(err, rf"out: another fwplab run \(process {holder.pid}\) is writing {run}; "
                     r"wait for it to end or choose another folder", tmp_path,
                     _inputs(tmp_path) + ["run"])
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # the holder's file, untouched
    holder.kill()  # SIGKILL: the operating system releases the lock
    holder.wait()
    code, _, _ = _run([*flags, "--out", str(run)], capsys)
    assert code == 0
    assert sorted(p.name for p in run.iterdir()) == [CHECKPOINT_NAME, METRICS_NAME]


def test_resume_while_the_original_still_runs_is_refused(tmp_path, capsys, lock_holder):
    flags = _flags(tmp_path)
    run = tmp_path / "run"
    assert _run([*flags, "--out", str(run)], capsys)[0] == 0
    before = load_checkpoint(run)
    holder = lock_holder(run)
    code, _, err = _run(["train", "--resume", str(run), "--no-progress"], capsys)
    assert code == EXIT_INPUT
    _assert_one_line(err, rf"another fwplab run \(process {holder.pid}\) is writing", tmp_path,
                     _inputs(tmp_path) + ["run"])
    assert torch.equal(load_checkpoint(run)["rng"]["torch"], before["rng"]["torch"])


def test_two_fits_on_one_folder_in_one_process(tmp_path):
    dataset = tiny_dataset()
    refusals = []

    def start_another(record):
        with pytest.raises(ValueError, match=r"out: another fwplab run \(process \d+\) is "
                           r"writing") as error:
            fit(tiny_model(dataset), dataset, epochs=1, batch_size=8, out=tmp_path / "run",
                resume=True, progress=False)
        refusals.append(str(error.value))

    fit(tiny_model(dataset), dataset, epochs=1, batch_size=8, out=tmp_path / "run",
        callback=start_another, progress=False)
    assert len(refusals) == 1
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [CHECKPOINT_NAME, METRICS_NAME]


def test_default_folders_are_unique_and_out_must_not_be_empty(tmp_path, capsys, monkeypatch):
    flags = _flags(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fwplab.cli.time, "strftime", lambda pattern: "20260101-000000")
    assert _run(flags, capsys)[0] == 0
    assert _run(flags, capsys)[0] == 0
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    stem = f"Tiny-delta_cde-20260101-000000-{os.getpid()}"
    assert folders == [stem, f"{stem}-1"]
    for argv in ([*flags, "--out", ""], ["train", "--resume", ""]):
        code, _, err = _run(argv, capsys)
        assert code == EXIT_FLAGS
        _assert_one_line(err, r"argument --(out|resume): expected a folder name, got ''",
                         tmp_path, _inputs(tmp_path) + ["runs"])
    with pytest.raises(ValueError, match=r"out: expected a folder name, got ''"):
        fit(tiny_model(tiny_dataset()), tiny_dataset(), epochs=1, out="", progress=False)


# ------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    """A finished 2-epoch run written by ``fwplab train``: (folder, checkpoint dict)."""
    folder = tmp_path_factory.mktemp("saved")
    flags = _flags(folder, epochs=2)
    torch.set_num_threads(1)
    assert fwplab.cli.main([*flags, "--out", str(folder / "run")]) == 0
    return folder, load_checkpoint(folder / "run")


def _edit(checkpoint, change):
    edited = copy.deepcopy(checkpoint)
    change(edited)
    return edited


def _set(key, value):
    return lambda c: c.__setitem__(key, value)


def _history_record_without_loss(c):
    c["history"] = [dict(c["history"][0]), c["history"][1]]
    del c["history"][0]["train_loss"]


BROKEN = {
    "epoch beyond the run's epochs": (_set("epoch", 5), r"field 'epoch' must lie in \[0, 2\] "
                                      r"\(the run's epochs\), got 5"),
    "a missing field": (lambda c: c.pop("optimizer"), r"missing field\(s\) optimizer"),
    "a wrong type": (_set("epoch", "2"), r"field 'epoch' must be int, got str"),
    "a bool for an int": (_set("best_epoch", True), r"field 'best_epoch' must be int, got bool"),
    "a history of the wrong length": (lambda c: c["history"].pop(), r"field 'history' must hold "
                                      r"one record per completed epoch \(2\), holds 1"),
    "a history record without a field": (_history_record_without_loss,
                                         r"history record 1 must have the fields"),
    "a broken generator state": (_set("rng", {"torch": torch.zeros(3), "python": (3, [1], None)}),
                                 r"field 'rng' must hold torch's generator state"),
    "a non-tensor weight": (lambda c: c["model"].__setitem__("classifier.bias", [0.0]),
                            r"field 'model' must map names to tensors; entry 'classifier.bias' "
                            r"holds list"),
    "an invalid training setting": (lambda c: c.__setitem__("train_config", {
        **c["train_config"], "lr": -1.0}), r"field 'train_config' is not a valid TrainConfig "
                                    r"\(lr: expected a positive number, got -1.0\)"),
    "an unknown model": (lambda c: c.__setitem__("model_config", {
        **c["model_config"], "name": "lstm"}),
        r"field 'model_config': name: expected one of \[.*\], got 'lstm'"),
    "data settings that fwplab train cannot have written": (
        lambda c: c.__setitem__("run", {**c["run"], "data": {"train": 1}}),
        r"field run.data must have the keys missing_rate, seed, options"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_checkpoint_is_refused_in_one_line(case, saved_checkpoint, tmp_path, capsys):
    folder, checkpoint = saved_checkpoint
    change, pattern = BROKEN[case]
    run = tmp_path / "run"
    run.mkdir()
    torch.save(_edit(checkpoint, change), run / CHECKPOINT_NAME)
    code, out, err = _run(["train", "--resume", str(run), "--no-progress"], capsys)
    assert code == EXIT_INPUT and out == ""
    _assert_one_line(err, pattern, tmp_path, ["run"])
    assert sorted(p.name for p in run.iterdir()) == [CHECKPOINT_NAME]


def test_mis_shaped_weights_and_format_only_files(saved_checkpoint, tmp_path, capsys):
    _, checkpoint = saved_checkpoint
    run = tmp_path / "run"
    run.mkdir()

    def shrink(c):
        c["model"] = {**c["model"], "classifier.bias": torch.zeros(7)}

    torch.save(_edit(checkpoint, shrink), run / CHECKPOINT_NAME)
    code, _, err = _run(["train", "--resume", str(run), "--no-progress"], capsys)
    assert code == EXIT_INPUT
    _assert_one_line(err, r"checkpoint.pt: field 'model_config': model config: the saved "
                     r"weights do not fit delta_cde as configured \(shapes classifier.bias: "
                     r"config gives \(3,\), saved \(7,\)\)", tmp_path, ["run"])
    torch.save({"format": 1}, run / CHECKPOINT_NAME)
    with pytest.raises(ValueError, match=r"not a complete fwplab checkpoint; missing field"):
        load_model(run)
    (run / CHECKPOINT_NAME).write_text("first line of some private file\n")
    with pytest.raises(ValueError) as error:
        load_checkpoint(run)
    assert "private" not in str(error.value) and "\n" not in str(error.value)


def test_a_crafted_data_path_does_not_echo_the_file(saved_checkpoint, tmp_path, capsys):
    _, checkpoint = saved_checkpoint
    private = tmp_path / "private.txt"
    private.write_text("password=hunter2\n")
    run = tmp_path / "run"
    run.mkdir()

    def point_at_private(c):
        c["run"] = {**c["run"], "data": {**c["run"]["data"], "train": str(private),
                                         "test": str(private)}}

    torch.save(_edit(checkpoint, point_at_private), run / CHECKPOINT_NAME)
    code, _, err = _run(["train", "--resume", str(run), "--no-progress"], capsys)
    assert code == EXIT_INPUT
    _assert_one_line(err, rf"{private}, line 1: expected a '@' header line before @data",
                     tmp_path, ["private.txt", "run"])
    assert "hunter2" not in err


def test_resume_on_changed_data_is_refused_unless_allowed(saved_checkpoint, capsys):
    folder, _ = saved_checkpoint
    run = folder / "run"
    train = folder / "Tiny_TRAIN.ts"
    original = train.read_text()
    try:
        train.write_text(original.replace("@data\n", "@data\n# edited\n").replace(
            ":a\n", ":b\n", 1))
        code, _, err = _run(["train", "--resume", str(run), "--no-progress"], capsys)
        assert code == EXIT_INPUT
        _assert_one_line(err, r"checkpoint.pt: the data differs from the data this run was "
                         r"trained on \(fingerprint [0-9a-f]{12} saved, [0-9a-f]{12} now\); "
                         r".*--allow-changed-data", folder, ["Tiny_TRAIN.ts", "Tiny_TEST.ts", "run"])
        code, _, err = _run(["train", "--resume", str(run), "--no-progress",
                             "--allow-changed-data"], capsys)
        assert code == 0 and err == ""
    finally:
        train.write_text(original)


# ------------------------------------------------------------------ write failures
def test_a_file_size_limit_stops_the_run_before_training(tmp_path):
    flags = _flags(tmp_path)
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        from fwplab.cli import main
        raise SystemExit(main({[*flags, "--out", str(tmp_path / "run")]!r}))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert result.returncode == EXIT_INPUT
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "cannot write checkpoints there" in lines[0] and "nothing was trained" in lines[0]
    assert "run folder" in result.stdout and "epoch" not in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(_inputs(tmp_path))


def test_an_unwritable_out_is_refused_before_training(tmp_path, capsys):
    flags = _flags(tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    code, _, err = _run([*flags, "--out", str(tmp_path / "a-file" / "run")], capsys)
    assert code == EXIT_INPUT
    _assert_one_line(err, r"a-file/run: cannot create the run folder", tmp_path,
                     _inputs(tmp_path) + ["a-file"])
    if os.geteuid() != 0:  # root writes into read-only folders
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, err = _run([*flags, "--out", str(locked / "run")], capsys)
        assert code == EXIT_INPUT and "cannot create the run folder" in err
        assert list(locked.iterdir()) == []


def test_sigterm_during_a_checkpoint_write_leaves_no_temporary_file(tmp_path, capsys,
                                                                    monkeypatch):
    flags = _flags(tmp_path, epochs=3)
    run = tmp_path / "run"
    real_save = torch.save
    writes = []

    def save_then_terminate(content, target):
        if "epoch" in content:  # a checkpoint, not the trial write before training
            writes.append(target)
        if len(writes) == 2:  # the second epoch's checkpoint, half written
            target.write_bytes(b"partial")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this
        real_save(content, target)

    monkeypatch.setattr(fwplab.train.torch, "save", save_then_terminate)
    code, _, err = _run([*flags, "--out", str(run)], capsys)
    assert code == 128 + signal.SIGTERM
    _assert_interrupt_line(err, rf"interrupted \(SIGTERM\); {run / CHECKPOINT_NAME} holds epoch 1; "
                     rf"continue with: fwplab train --resume {run}", tmp_path,
                     _inputs(tmp_path) + ["run"])
    assert sorted(p.name for p in run.iterdir()) == [CHECKPOINT_NAME]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is gone again
    monkeypatch.undo()
    (run / f".{CHECKPOINT_NAME}.999999.tmp").write_bytes(b"orphan of a SIGKILL")
    assert _run(["train", "--resume", str(run), "--no-progress"], capsys)[0] == 0
    assert sorted(p.name for p in run.iterdir()) == [CHECKPOINT_NAME, METRICS_NAME]


def test_ctrl_c_before_the_first_checkpoint_says_nothing_was_kept(tmp_path, capsys,
                                                                   monkeypatch):
    flags = _flags(tmp_path)

    def interrupted(self, bar):
        raise KeyboardInterrupt

    monkeypatch.setattr(fwplab.train._Trainer, "train_epoch", interrupted)
    code, _, err = _run([*flags, "--out", str(tmp_path / "run")], capsys)
    assert code == 130
    _assert_interrupt_line(err, r"interrupted \(SIGINT\) before the first checkpoint; nothing was "
                     r"kept, so start the run again", tmp_path, _inputs(tmp_path))


# ---------------------------------------------------------------------- metrics
def test_metrics_json_is_strict_json_with_null_for_undefined_numbers(tmp_path, capsys):
    train, test = write_ts_pair(tmp_path, classes="ab")
    lines = test.read_text().splitlines()
    test.write_text("\n".join(line for line in lines if not line.endswith(":b")) + "\n")
    run = tmp_path / "run"
    code, _, _ = _run(["train", "--train", str(train), "--test", str(test), "--epochs", "1",
                       "--val-fraction", "0.25", *TINY, "--out", str(run)], capsys)
    assert code == 0

    def refuse(constant):
        raise AssertionError(f"bare {constant} in metrics.json")

    metrics = json.loads((run / METRICS_NAME).read_text(), parse_constant=refuse)
    assert metrics["test_auroc"] is None  # one class in the test file: AUROC undefined
    assert isinstance(metrics["train_auroc"], float)

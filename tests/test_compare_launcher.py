"""``fwplab compare --launcher``: cells as submitit jobs. The local executor runs real cells
(two at once, a killed job reported failed with its log, ``--collect`` naming the missing
cell, the rerun resubmitting it alone, the same table as in this process); the Slurm path
runs up to ``sbatch`` (fake ``srun``/``sbatch``/``sacct`` on the PATH: the generated array
script, the job record, ``--status`` from the scheduler's states, resubmission)."""

import csv
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from fwplab.cli import main
from test_train import one_thread, write_ts_pair  # noqa: F401 (autouse fixture)

submitit = pytest.importorskip("submitit")


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv") as handle:
        return list(csv.DictReader(handle))


def _jobs(out: Path) -> dict[str, dict[str, str]]:
    return json.loads((out / "jobs.json").read_text())


def _kill_job(controller: int) -> None:
    """SIGKILL a local job: its task (the cell) first, then its controller."""
    children = Path(f"/proc/{controller}/task/{controller}/children")
    for child in children.read_text().split() if children.is_file() else ():
        os.kill(int(child), 9)
    os.kill(controller, 9)


def test_local_jobs_a_killed_one_collect_and_resubmission(tmp_path, capsys):
    train, test = write_ts_pair(tmp_path, n_train=12, n_test=6, classes="ab")
    out = tmp_path / "cmp"
    grid = ["compare", "--models", "gru", "--data", f"{train}:{test}", "--seeds", "0,1",
            "--epochs", "1", "--device", "cpu", "--no-progress"]
    argv = [*grid, "--out", str(out), "--launcher", "local", "--max-in-flight", "2"]
    ended: dict[str, int] = {}
    thread = threading.Thread(target=lambda: ended.update(status=main(argv)))
    thread.start()
    deadline = time.monotonic() + 60
    while "Tiny-gru-seed1" not in (_jobs(out) if (out / "jobs.json").is_file() else {}):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    jobs = _jobs(out)
    assert set(jobs) == {"Tiny-gru-seed0", "Tiny-gru-seed1"}  # both in flight at once
    _kill_job(int(jobs["Tiny-gru-seed1"]["job_id"]))
    thread.join(timeout=120)
    log = jobs["Tiny-gru-seed1"]["stderr"]
    printed = capsys.readouterr().out
    assert ended["status"] == 1, printed
    assert "fwplab compare: failed: Tiny / gru / seed 1: " in printed
    assert f"(log {log})" in printed
    assert [row["seed"] for row in _rows(out)] == ["0"], printed

    assert main(["compare", "--status", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("done     Tiny / gru / seed 0")
    assert lines[1].startswith("failed   Tiny / gru / seed 1") and lines[1].endswith(
        f"(log {log})")
    assert lines[2] == "fwplab compare: 2 cells: 1 done, 0 running, 0 pending, 1 failed"

    (out / "results.csv").unlink()
    assert main(["compare", "--collect", str(out)]) == 1
    assert ("fwplab compare: failed: 1 of 2 cells not finished, left out: Tiny / gru / seed 1"
            in capsys.readouterr().out)
    assert [row["seed"] for row in _rows(out)] == ["0"]

    assert main(argv) == 0  # the same command resubmits the failed cell alone
    again = _jobs(out)
    assert again["Tiny-gru-seed0"] == jobs["Tiny-gru-seed0"]
    assert again["Tiny-gru-seed1"]["job_id"] != jobs["Tiny-gru-seed1"]["job_id"]
    local = _rows(out)

    here = tmp_path / "here"
    assert main([*grid, "--out", str(here)]) == 0  # the same grid in this process
    fields = ("data", "model", "seed", "test_accuracy", "train_accuracy", "epochs")
    assert ([{f: row[f] for f in fields} for row in local]
            == [{f: row[f] for f in fields} for row in _rows(here)])


def _fake_slurm(folder: Path) -> Path:
    """``srun``, ``sbatch`` (keeps each script, answers job 4242, then 4243, ...) and
    ``sacct`` (prints ``sacct.txt``) in ``folder``."""
    scripts = {
        "srun": "#!/bin/sh\nexit 0\n",
        "sbatch": ('#!/bin/sh\nn=$(ls "$FAKE_SLURM"/submitted-*.sh 2>/dev/null | wc -l)\n'
                   'cp "$1" "$FAKE_SLURM/submitted-$n.sh"\n'
                   'echo "Submitted batch job $((4242 + n))"\n'),
        "sacct": '#!/bin/sh\ncat "$FAKE_SLURM/sacct.txt"\n',
    }
    for name, text in scripts.items():
        path = folder / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return folder


def test_slurm_array_script_status_and_resubmission(tmp_path, capsys, monkeypatch):
    fake = _fake_slurm(tmp_path)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(fake))
    out = tmp_path / "cmp"
    argv = ["compare", "--models", "gru", "--data", "spirals", "--seeds", "0,1,2",
            "--epochs", "3", "--out", str(out), "--no-progress", "--launcher", "slurm",
            "--partition", "gpu", "--gpus-per-cell", "1", "--cpus-per-cell", "4",
            "--time", "600", "--slurm-option", "account=lab", "--slurm-option", "qos=long",
            "--max-in-flight", "2"]
    assert main(argv) == 0
    assert capsys.readouterr().out == (
        f"fwplab compare: submitted 3 jobs (slurm 4242); 0 already in flight; follow them with "
        f"fwplab compare --status {out}, then tabulate with fwplab compare --collect {out}\n")
    script = (fake / "submitted-0.sh").read_text()
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --partition=gpu",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --time=600", "#SBATCH --account=lab", "#SBATCH --qos=long",
                 "#SBATCH --job-name=fwplab-compare",
                 f"#SBATCH --output={out / 'jobs' / '%A_%a_0_log.out'}"):
        assert line in script.splitlines()
    assert "-m submitit.core._submit" in script
    jobs = _jobs(out)
    assert [jobs[f"spirals-gru-seed{s}"]["job_id"] for s in range(3)] == [
        "4242_0", "4242_1", "4242_2"]
    submitted = submitit.core.utils.DelayedSubmission.load(out / "jobs" / "4242_1_submitted.pkl")
    folder = out / "runs" / "spirals-gru-seed1"
    assert submitted.args == (["train", "--dataset", "spirals", "--model", "gru", "--seed", "1",
                               "--out", str(folder), "--no-progress", "--epochs", "3"], 4)
    assert json.loads((folder / "compare-cell.json").read_text())["settings"]["--epochs"] == "3"

    (fake / "sacct.txt").write_text("JobID|State|NodeList\n4242_0|RUNNING|n1\n4242_1|PENDING|"
                                    "\n4242_2|TIMEOUT|n2\n")
    log = out / "jobs" / "4242_2_0_log.err"
    log.write_text("fwplab train: interrupted (SIGTERM); continue with fwplab train --resume\n")
    assert main(["compare", "--status", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("running  spirals / gru / seed 0") and "slurm job 4242_0" in lines[0]
    assert lines[1].startswith("pending  spirals / gru / seed 1")
    assert lines[2].startswith("failed   spirals / gru / seed 2") and lines[2].endswith(
        f"TIMEOUT: fwplab train: interrupted (SIGTERM); continue with fwplab train --resume "
        f"(log {log})")
    assert main(argv) == 0  # the failed cell alone goes again; the others are in flight
    assert capsys.readouterr().out.startswith(
        "fwplab compare: submitted 1 jobs (slurm 4243); 2 already in flight")
    assert "#SBATCH --array" not in (fake / "submitted-1.sh").read_text()
    assert _jobs(out)["spirals-gru-seed2"]["job_id"] == "4243"
    assert _jobs(out)["spirals-gru-seed0"]["job_id"] == "4242_0"


def test_a_refused_submission_records_nothing(tmp_path, capsys, monkeypatch):
    fake = _fake_slurm(tmp_path)
    (fake / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: invalid partition' >&2\n"
                                 "exit 1\n")
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "cmp"
    assert main(["compare", "--models", "gru", "--data", "spirals", "--seeds", "0,1",
                 "--out", str(out), "--no-progress", "--launcher", "slurm",
                 "--partition", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.endswith("fwplab compare: error: --launcher slurm: the submission failed (sbatch: "
                        "error: invalid partition); nothing was submitted, run the same command "
                        "again once fixed\n")
    assert not (out / "jobs.json").exists()
    assert not [p for p in (out / "jobs").iterdir() if p.suffix == ".pkl"]


@pytest.mark.parametrize("flags, message", [
    (["--partition", "gpu"], "--partition: only for the --launcher local or slurm"),
    (["--launcher", "local", "--slurm-option", "account=x"],
     "--slurm-option: only for the --launcher slurm"),
    (["--launcher", "slurm", "--slurm-option", "account"], "expected KEY=VALUE"),
    (["--status", "nowhere"], "nowhere/grid.json: not found"),
])
def test_bad_launcher_flags_are_one_line(tmp_path, capsys, flags, message):
    head = [] if "--status" in flags else ["--models", "gru", "--data", "spirals", "--out",
                                           str(tmp_path / "x")]
    try:
        status = main(["compare", *head, "--no-progress", *flags])
    except SystemExit as exit:  # a flag argparse refuses
        status = exit.code
    assert status in (1, 2)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err

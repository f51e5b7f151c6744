"""Cells of ``fwplab compare`` as jobs: on this machine or on a Slurm cluster, via submitit.

``fwplab compare --launcher local`` runs every unfinished cell of the grid as one job of
submitit's local executor (a subprocess each, at most ``--max-in-flight`` at once, the
command waiting for them); ``--launcher slurm`` submits them to Slurm as one job array
(``--max-in-flight`` becomes the array's parallelism, ``%N`` in ``--array``) and returns.
A job runs :func:`run_cell`: the same ``fwplab train ...`` (or ``fwplab rl ...``) command
line as the in-process grid, so each cell keeps its folder, its lock, its checkpoints and
its settings record.

The jobs' logs are in ``OUT/jobs/`` (``JOB_0_log.out``, ``JOB_0_log.err``); which job
runs which cell is recorded in ``OUT/jobs.json``, rewritten whole (a temporary file,
then a rename) after every submission. Ctrl-C, SIGTERM and SIGHUP are held back from the
``sbatch`` call to the record's rename, so an interrupted Slurm submission never leaves a
job unrecorded nor a half-written record; a local job starts with the signals free (so
that stopping the grid stops it) while ``fwplab compare`` notes a signal and stops the
grid only after the record is written.

submitit is an optional dependency: ``pip install 'fwplab[cluster]'``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
from contextlib import contextmanager, nullcontext, redirect_stderr, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .checkpoints import _write_json

__all__ = ["LAUNCHERS", "Resources", "CellFailed", "run_cell", "submit", "read_jobs",
           "job_state", "run_local", "JOBS_NAME"]

#: The ways ``fwplab compare`` runs its cells.
LAUNCHERS = ("inprocess", "local", "slurm")
#: The record of submitted jobs, in the comparison's folder.
JOBS_NAME = "jobs.json"
#: Slurm states of a job that has not ended yet.
_SLURM_WAITING = {"PENDING", "REQUEUED", "READY", "CONFIGURING", "RESV_DEL_HOLD", "REQUEUE_HOLD",
                  "REQUEUE_FED", "SUSPENDED"}
_SLURM_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "PREEMPTED"}


@dataclass(frozen=True)
class Resources:
    """What each job of the grid asks for.

    Attributes:
        gpus_per_cell: GPUs per job (local: ``CUDA_VISIBLE_DEVICES=0..N-1`` in each job).
        cpus_per_cell: CPU cores per job; the job's torch uses that many threads.
        time_min: the wall-clock limit of a job, in minutes (local jobs are stopped at it).
        partition: the Slurm partition (Slurm only).
        slurm_options: further ``#SBATCH --KEY=VALUE`` lines, passed through (Slurm only).
        max_in_flight: at most this many jobs at once (local: submitted as others end;
            Slurm: the array's parallelism); ``None``: local, one per ``cpus_per_cell``
            cores of this machine; Slurm, the whole array.
    """

    gpus_per_cell: int = 0
    cpus_per_cell: int = 1
    time_min: int = 24 * 60
    partition: str | None = None
    slurm_options: dict[str, str] = field(default_factory=dict)
    max_in_flight: int | None = None


class CellFailed(RuntimeError):
    """A cell's ``fwplab`` command ended with a non-zero status (in a job)."""


class _LastLine(io.TextIOBase):
    """Passes text to ``stream`` and keeps the last non-empty line written."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.last, self.partial = stream, "", ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        for line in lines:
            if line.strip():
                self.last = line.strip()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def run_cell(argv: Sequence[str], threads: int) -> None:
    """The body of one job: ``fwplab ARGV`` in this process with ``threads`` torch threads;
    SIGTERM stops it as Ctrl-C does (a cell in training keeps its last checkpoint).

    Raises:
        CellFailed: the command ended with a non-zero status; the message holds the status
            and the command's last line on stderr (``fwplab train: error: ...``).
    """
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signum)

    # submitit ignores SIGTERM in a job (Slurm's preemption notice); a cell stops on it
    # as on Ctrl-C, while training too (where fwplab's own handler takes over)
    signal.signal(signal.SIGTERM, stop)
    tee = _LastLine(sys.stderr)
    try:
        import torch

        from .cli import main

        torch.set_num_threads(threads)
        with redirect_stderr(tee):
            status = main(list(argv))
    except KeyboardInterrupt as interrupt:
        signum = interrupt.args[0] if interrupt.args else signal.SIGINT
        raise CellFailed(f"fwplab {' '.join(argv)} stopped by {signal.Signals(signum).name} "
                         "before its training started") from None
    if status != 0:
        last = tee.last or tee.partial.strip()
        raise CellFailed(f"fwplab {' '.join(argv)} ended with status {status}"
                         + (f": {last}" if last else ""))


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise ValueError("--launcher: local and slurm need submitit; install it with pip "
                         "install 'fwplab[cluster]' (or pip install submitit)") from None
    return submitit


def _executor(launcher: str, folder: Path, resources: Resources, count: int) -> Any:
    submitit = _submitit()
    if launcher == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=resources.time_min,
                                   gpus_per_node=resources.gpus_per_cell)
        return executor
    try:
        executor = submitit.SlurmExecutor(folder=folder)
    except RuntimeError:
        raise ValueError("--launcher slurm: no srun on this machine's PATH; submit from a "
                         "Slurm login node (or use --launcher local)") from None
    options: dict[str, Any] = {
        "job_name": "fwplab-compare", "time": resources.time_min,
        "cpus_per_task": resources.cpus_per_cell,
        "array_parallelism": min(count, resources.max_in_flight or count)}
    if resources.gpus_per_cell:
        options["gpus_per_node"] = resources.gpus_per_cell
    if resources.partition:
        options["partition"] = resources.partition
    if resources.slurm_options:
        options["additional_parameters"] = dict(resources.slurm_options)
    executor.update_parameters(**options)
    return executor


def read_jobs(out: Path) -> dict[str, dict[str, str]]:
    """``OUT/jobs.json``: per cell folder name, its last job (``launcher``, ``job_id``,
    ``stdout``, ``stderr``); empty when nothing was submitted.

    Raises:
        ValueError: the file is not such a record.
    """
    path = out / JOBS_NAME
    if not path.is_file():
        return {}
    try:
        jobs = json.loads(path.read_text())
        if not (isinstance(jobs, dict) and all(isinstance(job, dict) and "job_id" in job
                                               for job in jobs.values())):
            raise ValueError("expected an object of jobs")
    except ValueError as error:
        raise ValueError(f"{path}: unreadable record of jobs ({error}); delete it if no job "
                         "of this grid is in flight") from None
    return jobs


@contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP wait until the block ends (POSIX, main thread)."""
    held = {signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP")
                                             else [])}
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def submit(launcher: str, cells: Sequence[tuple[str, Sequence[str]]], out: Path,
           resources: Resources) -> dict[str, Any]:
    """Submit one job per ``(name, argv)`` cell (Slurm: one array) and record them.

    Args:
        launcher: ``"local"`` or ``"slurm"``.
        cells: the folder name of each cell under ``OUT/runs`` and its ``fwplab`` argv.
        out: the comparison's folder; logs go to ``out/jobs``, the record to
            ``out/jobs.json`` (merged with the jobs recorded before).
        resources: what each job asks for.

    Returns:
        The submitit job of each cell, by name.
    """
    if not cells:
        return {}
    folder = out.resolve() / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    executor = _executor(launcher, folder, resources, len(cells))
    recorded = read_jobs(out)
    before = set(folder.iterdir())
    # Slurm: sbatch and the record together; local: not around the job's start, whose
    # processes would inherit the held signals (and then ignore a cancel)
    with _signals_held() if launcher == "slurm" else nullcontext():
        try:
            if launcher == "slurm" and len(cells) > 1:
                with executor.batch():
                    jobs = [executor.submit(run_cell, list(argv), resources.cpus_per_cell)
                            for _, argv in cells]
            else:
                jobs = [executor.submit(run_cell, list(argv), resources.cpus_per_cell)
                        for _, argv in cells]
        except Exception as error:  # sbatch refused, or the jobs' folder is not writable
            for path in set(folder.iterdir()) - before:  # the jobs' pickles, the script
                path.unlink(missing_ok=True)
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            raise ValueError(f"--launcher {launcher}: the submission failed ("
                             f"{lines[-1] if lines else type(error).__name__}); nothing was "
                             "submitted, run the same command again once fixed") from None
        for (name, _), job in zip(cells, jobs, strict=True):
            recorded[name] = {"launcher": launcher, "job_id": str(job.job_id),
                              "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}
        with _signals_held():
            _write_json(out / JOBS_NAME, recorded)
    return {name: job for (name, _), job in zip(cells, jobs, strict=True)}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    command = Path(f"/proc/{pid}/cmdline")
    try:  # a reused pid runs something else
        return b"submitit" in command.read_bytes()
    except OSError:
        return True


def _failure_line(record: dict[str, str]) -> str:
    """The job's ``CellFailed`` message (or its last stderr line), then its log's path."""
    path = Path(record.get("stderr", ""))
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()
                 if line.strip()]
    except OSError:
        lines = []
    failed = [line.split("CellFailed: ", 1)[1] for line in lines if "CellFailed: " in line]
    last = failed[-1] if failed else (lines[-1] if lines else
                                      "the job ended without a result (killed, out of time or "
                                      "its node lost)")
    return f"{last} (log {path})"


def job_state(out: Path, record: dict[str, str]) -> tuple[str, str]:
    """``(state, detail)`` of a recorded job whose cell is not finished: ``pending``,
    ``running`` or ``failed`` (then ``detail`` is its last error line and its log's path).
    Asks the scheduler (``sacct``) for Slurm jobs; changes nothing."""
    job_id = record["job_id"]
    if record.get("launcher") == "local":
        if job_id.isdigit() and _pid_alive(int(job_id)):
            return "running", f"local job {job_id}"
        return "failed", _failure_line(record)
    submitit = _submitit()
    info = submitit.SlurmJob(folder=out / "jobs", job_id=job_id).get_info(mode="force")
    state = (info.get("State") or "UNKNOWN").split()[0].upper()  # "CANCELLED by 0" too
    if state in _SLURM_WAITING or state == "UNKNOWN":
        return "pending", f"slurm job {job_id} {state}"
    if state in _SLURM_RUNNING:
        return "running", f"slurm job {job_id} {state}"
    return "failed", f"slurm job {job_id} {state}: {_failure_line(record)}"


def run_local(cells: Sequence[tuple[str, Sequence[str]]], out: Path, resources: Resources,
              stopped: Callable[[], bool], poll_s: float = 0.2) -> list[str]:
    """Run ``cells`` as local jobs, at most ``max_in_flight`` at once, until all end.

    Args:
        cells: the folder name of each cell and its ``fwplab`` argv, submitted in order.
        stopped: true once the grid must stop (a signal came): then the jobs in flight
            get SIGTERM (each cell keeps its last checkpoint), nothing more is submitted,
            and the function returns once they ended.

    Returns:
        The names of the cells whose jobs ended, in the order they ended.
    """
    bound = resources.max_in_flight or max(1, (os.cpu_count() or 1) // resources.cpus_per_cell)
    queue, flight, ended = list(cells), {}, []
    while queue or flight:
        if stopped():
            while flight:  # again every second: a job still starting may miss the first
                for job in flight.values():  # the controller passes SIGTERM on to its cell
                    with suppress(ProcessLookupError):
                        os.kill(int(job.job_id), signal.SIGTERM)
                deadline = time.monotonic() + 1.0
                while flight and time.monotonic() < deadline:
                    flight = {name: job for name, job in flight.items() if not job.done()}
                    time.sleep(poll_s)
            return ended
        while queue and len(flight) < bound:
            flight.update(submit("local", [queue.pop(0)], out, resources))
        for name in [name for name, job in flight.items() if job.done()]:
            flight.pop(name)
            ended.append(name)
        time.sleep(poll_s)
    return ended

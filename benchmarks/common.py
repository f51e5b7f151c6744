"""Shared helpers of the benchmark scripts: inputs, timing, memory, tables and JSON.

Timing: every configuration runs once to warm up, then the configurations take
turns (round robin) for ``repeats`` rounds in one process, and the median wall
time of each is reported, so that load from other processes hits all of them alike.

Memory, two ways:

* saved bytes: the bytes of every tensor autograd keeps between the forward and
  the backward (``torch.autograd.graph.saved_tensors_hooks``; each storage once).
  Deterministic; it is what checkpointing and the adjoint reduce.
* peak RSS growth: a fresh Python process per configuration sets up the model and
  inputs, then runs one forward+backward; the growth of the process's peak
  resident memory over its resident memory after set-up (Linux: ``VmHWM`` reset
  through ``/proc/self/clear_refs``; elsewhere ``ru_maxrss``). It includes transient
  buffers (the backward's own), allocator slack and libraries loaded on first use.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

#: The paper's Speech Commands setting (docs/maths.md, section 7).
SPEECH_COMMANDS = dict(length=161, channels=21, hidden_channels=80, num_heads=4,
                       ff_channels=320, classes=10)


def random_series(batch: int, length: int, channels: int, seed: int = 0,
                  device: str = "cpu") -> torch.Tensor:
    """Random observations ``(batch, length, channels)`` with a time channel first."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, channels, generator=generator)
    x[..., 0] = torch.arange(length, dtype=x.dtype)
    return x.to(device)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_round_robin(runs: dict[str, Callable[[], None]], repeats: int, warmup: int = 1,
                     device: str = "cpu", progress: bool = True) -> dict[str, list[float]]:
    """Wall times (seconds) of every run over ``repeats`` rounds after ``warmup`` rounds."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(warmup + repeats):
        for name, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
        if progress:
            label = "warm-up" if round_index < warmup else f"round {round_index - warmup + 1}"
            print(f"  {label}/{repeats} done", file=sys.stderr, flush=True)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def saved_tensor_bytes(forward: Callable[[], torch.Tensor]) -> int:
    """Bytes autograd saves for the backward of ``forward()`` (each storage counted once)."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = forward()
    del loss
    return sum(storages.values())


def _proc_status_bytes(field: str) -> Optional[int]:
    """A memory field of /proc/self/status (Linux) in bytes, or None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_rss_bytes() -> int:
    """The peak resident memory of this process image, in bytes.

    On Linux the high-water mark of the process's own memory map (``VmHWM``: it starts
    afresh at ``exec``, unlike ``ru_maxrss``, which a child inherits from its parent).
    """
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    maximum = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maximum if platform.system() == "Darwin" else maximum * 1024


def rss_growth_in_subprocess(script: Path, arguments: list[str]) -> Optional[int]:
    """Run ``script --measure-rss ...`` in a fresh process and read the growth it prints."""
    command = [sys.executable, str(script), "--measure-rss", *arguments]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in result.stdout.splitlines():
        if line.startswith("RSS_GROWTH "):
            return int(line.split()[1])
    print(f"  memory measurement failed: {result.stderr.strip()[-300:]}", file=sys.stderr)
    return None


def report_rss_growth(run: Callable[[], None]) -> None:
    """In the measuring child: run once and print the growth of the peak RSS."""
    current = _proc_status_bytes("VmRSS")
    try:  # Linux: restart the high-water mark at the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        current = None
    before = current if current is not None else peak_rss_bytes()
    run()
    print(f"RSS_GROWTH {peak_rss_bytes() - before}")


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """Print ``rows`` as a table; ``columns`` are (key, header, format)."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append([("-" if row.get(key) is None else format(row[key], spec))
                      for key, _, spec in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for index, line in enumerate(cells):
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def environment() -> dict:
    """Where the numbers come from."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "processor": platform.processor(),
            "python": platform.python_version()}


def matmul_gflops(device: str = "cpu", size: int = 1024, repeats: int = 5) -> float:
    """Measured float32 matrix-product rate (GFLOP/s), the yardstick of the floor estimate."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def write_json(path: Optional[str], payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2))
        print(f"wrote {path}")

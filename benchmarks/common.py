"""Helpers of the benchmark scripts only: peak memory in a subprocess, tables and JSON.

Inputs, timing (medians in one process after warm-up, round robin), saved-tensor
bytes, FLOP counts and the matrix-product rate come from :mod:`fwplab.benchmarking`,
which notebook 6 uses too. Memory is measured two ways:

* saved bytes (:func:`fwplab.benchmarking.saved_tensor_bytes`): the bytes of every
  tensor autograd keeps between the forward and the backward. Deterministic; it is
  what checkpointing and the adjoint reduce.
* peak RSS growth (here): a fresh Python process per configuration sets up the model and
  inputs, then runs one forward+backward; the growth of the process's peak
  resident memory over its resident memory after set-up (Linux: ``VmHWM`` reset
  through ``/proc/self/clear_refs``; elsewhere ``ru_maxrss``). It includes transient
  buffers (the backward's own), allocator slack and libraries loaded on first use.
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch


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


def write_json(path: Optional[str], payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2))
        print(f"wrote {path}")


def matmul_rate(rows: int = 1000, width: int = 128, repeats: int = 50) -> float:
    """GFLOP/s of one float32 ``rows x width @ width x width`` product (best of repeats): the
    rate of the world models' products, which are this shape when planning."""
    a, b = torch.randn(rows, width), torch.randn(width, width)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * rows * width * width / best / 1e9

"""Choosing where the notebooks and examples run, and how the host process keeps memory."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

import torch

__all__ = ["pick_device", "retain_freed_memory"]

#: glibc ``mallopt`` parameters and the values :func:`retain_freed_memory` sets: blocks
#: up to 32 MiB (glibc's largest mmap threshold on 64-bit) come from the heap, and up to
#: 2 GiB - 1 of freed memory at its top stays with the process.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEPT_MMAP_THRESHOLD = 32 * 2**20
_KEPT_TRIM_THRESHOLD = 2**31 - 1
_retained = False


def pick_device(prefer: str = "cuda", verbose: bool = True) -> torch.device:
    """CUDA when a GPU is present (and ``prefer`` is ``"cuda"``), else the CPU.

    Args:
        prefer: ``"cuda"`` (use a GPU when there is one) or ``"cpu"``.
        verbose: print one line saying which device was chosen and why.

    Returns:
        The chosen ``torch.device``.
    """
    if prefer not in ("cuda", "cpu"):
        raise ValueError(f"prefer: expected 'cuda' or 'cpu', got {prefer!r}")
    if prefer == "cuda" and torch.cuda.is_available():
        device = torch.device("cuda")
        reason = f"CUDA GPU: {torch.cuda.get_device_name(device)}"
    else:
        device = torch.device("cpu")
        reason = "no CUDA GPU found" if prefer == "cuda" else "CPU requested"
        reason += f"; {torch.get_num_threads()} CPU threads"
    if verbose:
        print(f"Running on {device.type} ({reason}).")
    return device


def retain_freed_memory() -> bool:
    """Keep the memory the process frees for reuse instead of handing it back (glibc).

    A training step on the CPU allocates and frees the same few hundred megabytes of
    tensors every step. glibc's ``malloc`` by default returns freed memory at the top of
    its heap to the operating system once more than a threshold is free, so the next step
    takes page faults and zero-filled pages for all of it again: about a fifth of a
    ``delta_cde`` forward+backward at the Speech Commands shape (``python
    benchmarks/speed.py`` measures both). This sets glibc's trim threshold to 2 GiB and
    its mmap threshold to 32 MiB (fixed, no longer adapted): the peak memory is
    unchanged, but the process keeps what it freed (up to 2 GiB) until it exits. The
    CUDA caching allocator does the same for GPU memory. It cannot be undone within the
    process; ``fwplab train`` and ``fwplab compare`` call it.

    Returns:
        ``True`` when it is in effect (Linux with glibc), ``False`` where it does
        nothing (other C libraries and systems).
    """
    global _retained
    if _retained:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # The mmap threshold first: setting either fixes both (glibc stops adapting them).
    _retained = bool(mallopt(_M_MMAP_THRESHOLD, _KEPT_MMAP_THRESHOLD)
                     and mallopt(_M_TRIM_THRESHOLD, _KEPT_TRIM_THRESHOLD))
    return _retained

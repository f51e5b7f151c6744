"""Choosing where the notebooks and examples run."""

from __future__ import annotations

import torch

__all__ = ["pick_device"]


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

"""Synthetic spirals: the two-class toy problem of the torchcde example.

Each series is a noisy 2-D spiral that decays toward the origin, starting at a
random angle ``phi``; class 0 turns anticlockwise, class 1 (the mirror image)
clockwise::

    t_k  = 4 pi k / (length - 1),                 k = 0 .. length-1
    a(t) = ( cos(phi + t), sin(phi + t) ) / (1 + t / 2)     anticlockwise (class 0)
    c(t) = (-cos(phi + t), sin(phi + t) ) / (1 + t / 2)     clockwise     (class 1)
    x_k  = a(t_k) or c(t_k)  + noise * N(0, I)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["SPIRAL_CLASSES", "make_spirals"]

SPIRAL_CLASSES = ("anticlockwise", "clockwise")


def make_spirals(
    n_samples: int = 256, length: int = 100, noise: float = 0.01, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw balanced, shuffled spirals.

    Args:
        n_samples: number of series, half of each class (an odd extra one is anticlockwise).
        length: number of time points per series (at least 2).
        noise: standard deviation of the Gaussian observation noise.
        seed: seeds every random draw (start angles, noise, order).

    Returns:
        (x, y, t): ``x`` of shape ``(n_samples, length, 2)`` (the two coordinates, no time
        channel), ``y`` of shape ``(n_samples,)`` int64 (0 anticlockwise, 1 clockwise),
        ``t`` of shape ``(length,)`` the common observation times in ``[0, 4 pi]``.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples: expected a positive integer, got {n_samples}")
    if length < 2:
        raise ValueError(f"length: expected at least 2 time points, got {length}")
    if noise < 0:
        raise ValueError(f"noise: expected a non-negative standard deviation, got {noise}")
    generator = torch.Generator().manual_seed(seed)
    t = torch.linspace(0.0, 4 * math.pi, length)
    start = torch.rand(n_samples, 1, generator=generator) * 2 * math.pi
    decay = 1 + 0.5 * t
    first = torch.cos(start + t) / decay
    second = torch.sin(start + t) / decay
    y = (torch.arange(n_samples) < n_samples // 2).long()
    first = torch.where(y.unsqueeze(-1) == 1, -first, first)
    x = torch.stack([first, second], dim=-1)
    x = x + noise * torch.randn(x.shape, generator=generator)
    order = torch.randperm(n_samples, generator=generator)
    return x[order], y[order], t

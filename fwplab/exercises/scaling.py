"""Exercises of notebook 6, "Scaling and speed": counting the solver's and the update's work."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ..solvers import stage_points
from . import exercise

#: Observation times of exercise 06.stage-points: the Speech Commands series (one unit apart).
OBSERVATIONS = 161
#: torchdiffeq's rk4 (the 3/8 rule) evaluates the vector field this often per step.
RK4_STAGES = 4

#: Head sizes the rank-one update exercise is checked at.
HEAD_SIZES = (8, 20, 64)


def _stage_counts() -> tuple[int, int]:
    grid = torch.arange(float(OBSERVATIONS))  # the default step is the smallest gap: 1
    steps = OBSERVATIONS - 1
    return RK4_STAGES * steps, len(stage_points(grid, "rk4"))


@exercise(
    "06.stage-points",
    f"A series of {OBSERVATIONS} observation times one unit apart is solved with rk4 at the "
    "default step (one step per gap). How many times does the torchdiffeq reference evaluate "
    "the vector field, and at how many distinct times does the fast path evaluate the slow "
    "net? Give a pair (reference, fast).",
    solution=_stage_counts,
    wrong_answers=lambda: [(RK4_STAGES * OBSERVATIONS, 481), (640, 640), (640, 480),
                           (480, 481), (640, 3 * OBSERVATIONS)],
)
def _judge_stage_counts(answer: Any) -> Optional[str]:
    reference, fast = (int(value) for value in answer)
    expected_reference, expected_fast = _stage_counts()
    steps = OBSERVATIONS - 1
    hints = []
    if reference != expected_reference:
        hints.append(f"the reference: {OBSERVATIONS} observation times make {steps} steps, "
                     "and every step evaluates the field at each of its stages")
    if fast != expected_fast:
        hints.append("the fast path: a step's last stage is the next step's first, so each "
                     "step owns all its stage times but one; count the final grid point too")
    return "; ".join(hints) or None


def _rank_one_flops() -> Callable[[int], int]:
    return lambda d: 4 * d * d + d


@exercise(
    "06.rank-one-flops",
    "Write flops(d): the floating point operations (multiplications and additions) of one "
    "delta-rule update W <- W + beta (v - W k) k^T of a d x d fast weight, for one head and "
    "one series.",
    solution=_rank_one_flops,
    wrong_answers=lambda: [lambda d: 2 * d * d, lambda d: 2 * d**3 + 2 * d * d,
                           lambda d: 3 * d * d, lambda d: d * d + 2 * d],
)
def _judge_rank_one_flops(answer: Any) -> Optional[str]:
    for d in HEAD_SIZES:
        count = float(answer(d))
        low, high = 4 * d * d, 4 * d * d + 3 * d  # conventions differ only in O(d) terms
        if low <= count <= high:
            continue
        if count >= d**3:
            return (f"flops({d}) = {count:g} grows like d^3: no step multiplies two d x d "
                    "matrices; W k is a matrix-vector product")
        return (f"flops({d}) = {count:g}: count W k (d^2 products and about as many sums), "
                "the outer product (d^2) and adding it to W (d^2)")
    return None

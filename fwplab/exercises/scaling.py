"""Exercises of notebook 6, "Scaling and speed": counting the solver's and the update's work."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ..solvers import stage_points
from . import as_count, exercise, fresh_generator, fresh_int

#: Observation times of exercise 06.stage-points: the Speech Commands series (one unit apart).
OBSERVATIONS = 161
#: torchdiffeq's rk4 (the 3/8 rule) evaluates the vector field this often per step.
RK4_STAGES = 4

#: Head sizes the rank-one update exercise is always checked at (random ones are added).
HEAD_SIZES = (8, 20, 64)
#: Accepted range of the rank-one update's count: 4 d^2 plus or minus this many d (counting
#: conventions, e.g. whether W k takes d^2 or d (d - 1) additions, differ only in O(d) terms).
FLOPS_LINEAR_SLACK = 3


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
                           (480, 481), (640, 3 * OBSERVATIONS), (640.9, 481.9)],
)
def _judge_stage_counts(answer: Any) -> Optional[str]:
    counts = [as_count(value) for value in answer]
    if len(counts) != 2 or None in counts:
        return f"give two whole numbers (reference, fast), got {answer!r}"
    reference, fast = counts
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
                           lambda d: 3 * d * d, lambda d: d * d + 2 * d,
                           {8: 264, 20: 1620, 64: 16448}.get,  # a table of the checked sizes
                           lambda d: 4 * d * d + d + 0.5],
)
def _judge_rank_one_flops(answer: Any) -> Optional[str]:
    if not callable(answer):
        return f"expected a function flops(d), got {type(answer).__name__}"
    generator = fresh_generator()
    sizes = list(HEAD_SIZES) + [fresh_int(generator, 2, 4096) for _ in range(3)]
    for d in sizes:
        raw = answer(d)
        count = as_count(raw)
        if count is None:
            return f"flops({d}) should be a whole number of operations, got {raw!r}"
        slack = FLOPS_LINEAR_SLACK * d  # conventions differ only in O(d) terms
        low, high = 4 * d * d - slack, 4 * d * d + slack
        if low <= count <= high:
            continue
        if count >= d**3:
            return (f"flops({d}) = {count:g} grows like d^3: no step multiplies two d x d "
                    "matrices; W k is a matrix-vector product")
        return (f"flops({d}) = {count:g}: count W k (d^2 products and about as many sums), "
                "the outer product (d^2) and adding it to W (d^2)")
    return None

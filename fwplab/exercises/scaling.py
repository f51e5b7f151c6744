"""Exercises of notebook 6, "Scaling and speed": counting the work per evaluation."""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..benchmarking import field_outputs
from . import exercise

#: The sizes of exercise 06.field-outputs: hidden size, input channels, heads.
HIDDEN, CHANNELS, HEADS = 64, 21, 4

#: Head sizes the rank-one update exercise is checked at.
HEAD_SIZES = (8, 20, 64)


def _outputs() -> tuple[int, int]:
    return (field_outputs("ncde", HIDDEN, CHANNELS, HEADS),
            field_outputs("delta_cde", HIDDEN, CHANNELS, HEADS))


@exercise(
    "06.field-outputs",
    f"How many numbers does the vector field compute per evaluation and series for a Neural "
    f"CDE with hidden size H = {HIDDEN} on C = {CHANNELS} input channels, and how many does "
    f"the slow net of a delta_cde with the same H and {HEADS} heads? Give a pair "
    "(ncde, delta_cde).",
    solution=_outputs,
    wrong_answers=lambda: [(HIDDEN, 2 * HIDDEN + HEADS), (HIDDEN * CHANNELS, 2 * HIDDEN),
                           (HIDDEN * CHANNELS, HIDDEN * CHANNELS), (HIDDEN**2 * CHANNELS, 132)],
)
def _judge_outputs(answer: Any) -> Optional[str]:
    ncde, fwp = (int(value) for value in answer)
    expected_ncde, expected_fwp = _outputs()
    hints = []
    if ncde != expected_ncde:
        hints.append("the Neural CDE's field is a matrix that multiplies dX: how many rows and "
                     "columns has it?" if ncde != HIDDEN**2 * CHANNELS else
                     "H^2 C counts the last layer's weights; count its outputs instead")
    if fwp != expected_fwp:
        hints.append("the slow net outputs a key and a value per hidden unit and one rate per "
                     "head, and none of that depends on C")
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

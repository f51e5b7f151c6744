"""Exercises of notebook 2, fast weights are linear Transformers (keys ``"02.*"``).

Each judge tests a property numerically: answers that are functions are run on random
inputs and compared with the package (:mod:`fwplab.discrete`,
:mod:`fwplab.rules.fast_weight`); answers that are numbers are checked by storing pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import Tensor

from ..discrete import fast_weight_attention, fast_weight_recurrent, retrieval_error, store_pairs
from ..rules.fast_weight import delta_update
from . import as_count, as_tensor, exercise, fresh_float, fresh_generator, fresh_int
from . import package_pass_through, uses_a_loop

#: Float64 round-off allowed between an answer and the package's result.
ATOL = 1e-10
#: Dimension of the memory in the capacity question.
MEMORY_DIM = 16


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _close(answer: Any, expected: Tensor) -> Optional[str]:
    """``None`` when ``answer`` is a tensor (torch or NumPy) equal to ``expected``, else what is off."""
    try:
        answer = as_tensor(answer)
    except TypeError as error:
        return str(error)
    if answer.shape != expected.shape:
        return f"expected shape {tuple(expected.shape)}, got {tuple(answer.shape)}"
    if not torch.allclose(answer.to(expected.dtype), expected, rtol=0.0, atol=ATOL):
        return "wrong values"
    return None


# ---------------------------------------------------------------- 02.linear-attention


def _attention_inputs(generator: torch.Generator, time: int, d_k: int,
                      d_v: int) -> tuple[Tensor, ...]:
    """Non-negative key and query features ``(time, d_k)`` and values ``(time, d_v)``."""
    phi_k = torch.rand(time, d_k, generator=generator, dtype=torch.float64)
    values = torch.randn(time, d_v, generator=generator, dtype=torch.float64)
    phi_q = torch.rand(time, d_k, generator=generator, dtype=torch.float64)
    return phi_k, values, phi_q


def _hebbian_outputs(phi_k: Tensor, values: Tensor, phi_q: Tensor) -> Tensor:
    """The package's Hebbian FWP on one sequence and one head, features given."""
    outputs = fast_weight_recurrent(
        phi_k[None, :, None],
        values[None, :, None],
        phi_q[None, :, None],
        rule="hebb",
        feature_map="identity",
    )
    return outputs[0, :, 0]


def _linear_attention_solution() -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    def causal_linear_attention(phi_k: Tensor, values: Tensor, phi_q: Tensor) -> Tensor:
        return torch.tril(phi_q @ phi_k.T) @ values

    return causal_linear_attention


def _linear_attention_wrong_answers() -> list:
    return [
        lambda phi_k, v, phi_q: (phi_q @ phi_k.T) @ v,
        lambda phi_k, v, phi_q: torch.tril(phi_q @ phi_k.T, diagonal=-1) @ v,
        lambda phi_k, v, phi_q: torch.tril(phi_k @ phi_q.T) @ v,
        lambda phi_k, v, phi_q: (
            (torch.tril(phi_q @ phi_k.T) / torch.tril(phi_q @ phi_k.T).sum(-1, keepdim=True)) @ v
        ),
        lambda phi_k, v, phi_q: torch.tril(phi_q @ phi_k.T),
        _looped_attention,
        lambda phi_k, v, phi_q: fast_weight_attention(
            phi_k[None, :, None], v[None, :, None], phi_q[None, :, None],
            feature_map="identity")[0, :, 0],
    ]


def _looped_attention(phi_k: Tensor, values: Tensor, phi_q: Tensor) -> Tensor:
    """Right values, but computed with a Python loop over time (the question forbids it)."""
    rows = []
    for t in range(phi_q.shape[0]):
        rows.append((phi_k[: t + 1] @ phi_q[t]) @ values[: t + 1])
    return torch.stack(rows)


@exercise(
    "02.linear-attention",
    "Write causal_linear_attention(phi_k, v, phi_q) for one head, with the feature maps "
    "already applied (phi_k, phi_q of shape (time, d_k), v of shape (time, d_v)): return "
    "the (time, d_v) outputs y_t = sum_{s<=t} v_s (phi_k[s] . phi_q[t]), without a loop "
    "over time (the check reads your function's code for for/while loops and comprehensions).",
    solution=_linear_attention_solution,
    wrong_answers=_linear_attention_wrong_answers,
)
def _judge_linear_attention(answer: Any) -> Optional[str]:
    if not callable(answer):
        return "pass a function causal_linear_attention(phi_k, v, phi_q)."
    refused = package_pass_through(answer, ("fast_weight_attention", "fast_weight_recurrent"))
    if refused:
        return refused
    if uses_a_loop(answer):
        return ("your function loops (a for or while loop, or a comprehension, in its code); "
                "compute all outputs at once with a masked matrix product")
    generator = fresh_generator()
    sizes = [(1, fresh_int(generator, 2, 6), fresh_int(generator, 1, 6))]
    sizes += [(fresh_int(generator, 2, 20), fresh_int(generator, 1, 8), fresh_int(generator, 1, 8))
              for _ in range(2)]
    for time, d_k, d_v in sizes:
        phi_k, values, phi_q = _attention_inputs(generator, time, d_k, d_v)
        problem = _close(answer(phi_k, values, phi_q), _hebbian_outputs(phi_k, values, phi_q))
        if problem is None:
            continue
        if problem.startswith("wrong values"):
            first = answer(phi_k[:1], values[:1], phi_q[:1])
            if _close(first, _hebbian_outputs(phi_k[:1], values[:1], phi_q[:1])) is not None:
                return (
                    "already the first output is off: y_1 = v_1 (phi_k[1] . phi_q[1]). Check "
                    "which of the two features the rows of the score matrix belong to, and "
                    "that nothing divides the scores."
                )
            return (
                f"wrong values for a sequence of length {time}: output t may use the steps "
                "s = 1..t and no later one (a causal mask), the diagonal s = t included."
            )
        return f"{problem} for a sequence of length {time} with d_k = {d_k}, d_v = {d_v}."
    return None


# ---------------------------------------------------------------- 02.delta-step


def _delta_inputs(generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, float]:
    d_v, d_k = fresh_int(generator, 1, 8), fresh_int(generator, 2, 8)
    weight = torch.randn(d_v, d_k, generator=generator, dtype=torch.float64)
    key = torch.softmax(torch.randn(d_k, generator=generator, dtype=torch.float64), -1)
    value = torch.randn(d_v, generator=generator, dtype=torch.float64)
    return weight, key, value, fresh_float(generator, 0.1, 1.5)


def _delta_step_solution() -> Callable[[Tensor, Tensor, Tensor, float], Tensor]:
    def delta_step(weight: Tensor, key: Tensor, value: Tensor, beta: float) -> Tensor:
        return weight + beta * torch.outer(value - weight @ key, key)

    return delta_step


def _delta_step_wrong_answers() -> list:
    return [
        lambda W, k, v, beta: W + beta * torch.outer(v, k),
        lambda W, k, v, beta: beta * torch.outer(v - W @ k, k),
        lambda W, k, v, beta: W + beta * torch.outer(v, k) - torch.outer(W @ k, k),
        lambda W, k, v, beta: W + beta * torch.outer(k, v - W @ k),
        lambda W, k, v, beta: W + delta_update(W, k, v, torch.tensor([beta], dtype=W.dtype)),
    ]


@exercise(
    "02.delta-step",
    "Write delta_step(W, k, v, beta) returning the fast weight after one delta-rule write "
    "of the value v (shape (d_v,)) under the key k (shape (d_k,), features applied) into "
    "W (shape (d_v, d_k)) at the rate beta (a float).",
    solution=_delta_step_solution,
    wrong_answers=_delta_step_wrong_answers,
)
def _judge_delta_step(answer: Any) -> Optional[str]:
    if not callable(answer):
        return "pass a function delta_step(W, k, v, beta)."
    refused = package_pass_through(answer, ("delta_update", "delta_rule", "fast_weight_recurrent",
                                            "fast_weight_attention", "store_pairs"))
    if refused:
        return refused
    generator = fresh_generator()
    for _ in range(3):
        weight, key, value, beta = _delta_inputs(generator)
        rate = torch.tensor([beta], dtype=torch.float64)
        expected = weight + delta_update(weight, key, value, rate)
        problem = _close(answer(weight.clone(), key, value, beta), expected)
        if problem is None:
            continue
        if problem.startswith("expected shape"):
            return f"{problem}: the write is an outer product (value) x (key), like W itself."
        hebb = weight + beta * torch.outer(value, key)
        if _close(answer(weight.clone(), key, value, beta), hebb) is None:
            return (
                "that is the Hebbian write; the delta rule first reads what W already "
                "returns for k and writes only the difference."
            )
        if _close(answer(weight.clone(), key, value, beta), expected - weight) is None:
            return "that is the change of W; return the new fast weight."
        return (
            f"wrong values at beta = {beta:g}: the rate multiplies the whole difference "
            "between the value and what W retrieves."
        )
    return None


# ---------------------------------------------------------------- 02.orthonormal-rate


def _orthonormal_pairs(num_pairs: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    generator = _generator(seed)
    basis, _ = torch.linalg.qr(
        torch.randn(MEMORY_DIM, MEMORY_DIM, generator=generator, dtype=torch.float64)
    )
    values = torch.randn(1, num_pairs, MEMORY_DIM, generator=generator, dtype=torch.float64)
    return basis.T[:num_pairs].unsqueeze(0), values


#: Pairs stored in exercise 02.orthonormal-rate, and the (rate, sweeps) the judge always
#: tries (rates above 2 included: there the error grows); random cases are added.
ORTHONORMAL_PAIRS = 10
RATE_SWEEP_CASES = ((0.5, 1), (0.3, 3), (1.5, 2), (1.0, 1), (2.5, 1), (3.0, 2))


def _measured_error(rate: float, sweeps: int) -> float:
    keys, values = _orthonormal_pairs(ORTHONORMAL_PAIRS)
    weight = store_pairs(keys, values, "delta", rate=rate, sweeps=sweeps)
    return retrieval_error(weight, keys, values).item()


def _orthonormal_rate_solution(beta: float, sweeps: int) -> float:
    return (1 - beta) ** (2 * sweeps)


@exercise(
    "02.orthonormal-rate",
    f"A {MEMORY_DIM} x {MEMORY_DIM} delta-rule fast weight starts at W = 0 and writes "
    f"N <= {MEMORY_DIM} pairs with orthonormal keys at the rate beta, the whole list `sweeps` "
    "times over. Write error(beta, sweeps) returning its normalised retrieval error "
    "sum_i |W k_i - v_i|^2 / sum_i |v_i|^2.",
    solution=lambda: _orthonormal_rate_solution,
    wrong_answers=lambda: [lambda beta, sweeps: (1 - beta) ** sweeps,
                           lambda beta, sweeps: (1 - beta) ** 2,
                           lambda beta, sweeps: 0.0,
                           lambda beta, sweeps: beta ** (2 * sweeps),
                           lambda beta, sweeps: min(1.0, (1 - beta) ** (2 * sweeps))],
)
def _judge_orthonormal_rate(answer: Any) -> Optional[str]:
    if not callable(answer):
        return "pass a function error(beta, sweeps)."
    generator = fresh_generator()
    cases = list(RATE_SWEEP_CASES) + [(fresh_float(generator, 0.05, 3.5), fresh_int(generator, 1, 4))
                                      for _ in range(3)]
    for rate, sweeps in cases:
        given = float(as_tensor(answer(rate, sweeps)).reshape(()))
        expected = _measured_error(rate, sweeps)
        if abs(given - expected) > 1e-9 * (1 + expected):
            return (
                f"at beta = {rate} and {sweeps} sweep(s) store_pairs measures an error of "
                f"{expected:.4g}, you said {given:.4g}. With orthonormal keys a write of "
                "pair i leaves every other pair's read-out alone: follow W k_i through the "
                "writes of pair i only."
            )
    return None


# ---------------------------------------------------------------- 02.repeated-writes

#: (key length, logit scale, tolerance) of keys the judge of 02.repeated-writes always tries;
#: random cases are added.
REPEATED_WRITE_CASES = ((4, 1.0, 1e-3), (16, 3.0, 0.05), (32, 0.5, 0.01))


def _writes_needed_by_simulation(key: Tensor, tolerance: float,
                                 generator: torch.Generator) -> int:
    """Delta writes of one pair at rate 1 until ``|v - W k|`` is below ``tolerance`` of its start."""
    weight = torch.randn(4, key.shape[-1], generator=generator, dtype=torch.float64)
    value = torch.randn(4, generator=generator, dtype=torch.float64)
    start, writes = (value - weight @ key).norm(), 0
    while (value - weight @ key).norm() >= tolerance * start:
        weight = weight + delta_update(weight, key, value, torch.ones(1, dtype=torch.float64))
        writes += 1
    return writes


def _writes_needed(phi: Tensor, tolerance: float) -> int:
    shrink = 1 - phi.pow(2).sum()
    return math.ceil(math.log(tolerance) / math.log(float(shrink)))


def _repeated_writes_wrong_answers() -> list:
    return [
        lambda phi, tolerance: math.ceil(math.log(tolerance) / math.log(1 - float(phi.norm()))),
        lambda phi, tolerance: 1,
        lambda phi, tolerance: math.floor(math.log(tolerance)
                                          / math.log(1 - float(phi.pow(2).sum()))),
        lambda phi, tolerance: math.ceil(math.log(tolerance) / math.log(1 - float(phi.max()))),
    ]


@exercise(
    "02.repeated-writes",
    "The delta rule writes the same pair (softmax key phi, value v) again and again at beta = 1, "
    "starting from some W. Write writes_needed(phi, tolerance) returning the smallest number of "
    "writes after which |v - W phi| is below tolerance times its size before the first write.",
    solution=lambda: _writes_needed,
    wrong_answers=_repeated_writes_wrong_answers,
)
def _judge_repeated_writes(answer: Any) -> Optional[str]:
    if not callable(answer):
        return "pass a function writes_needed(phi, tolerance)."
    generator = fresh_generator()
    cases = list(REPEATED_WRITE_CASES) + [
        (fresh_int(generator, 2, 40), fresh_float(generator, 0.3, 4.0),
         10 ** -fresh_float(generator, 0.5, 4.0)) for _ in range(3)]
    for dim, scale, tolerance in cases:
        logits = scale * torch.randn(dim, generator=generator, dtype=torch.float64)
        key = torch.softmax(logits, -1)
        raw = answer(key, tolerance)
        given = as_count(raw)
        if given is None:
            return f"return a whole number of writes, got {raw!r}"
        expected = _writes_needed_by_simulation(key, tolerance, generator)
        if given != expected:
            return (
                f"for a softmax key of length {dim} and tolerance {tolerance:g}, {expected} "
                f"writes were needed, you said {given}. Apply one write W' = W + (v - W phi) "
                "phi^T and compare v - W' phi with v - W phi: every write scales the gap by "
                "the same factor."
            )
    return None

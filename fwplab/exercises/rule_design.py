"""Exercises of notebook 8, "Design your own learning rule"."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..rules.fast_weight import oja_update
from . import as_tensor, exercise, fresh_float, fresh_generator, fresh_int, package_pass_through

#: Relative tolerance of the float64 comparisons.
TOLERANCE = 1e-8
#: Decay rates, rates and times the judge of "08.decay-solution" tries.
DECAY_CASES = ((0.5, 0.8, 0.3), (2.0, 0.2, 1.7), (0.1, 1.0, 4.0))
#: Steps of the judge's RK4 reference solve of the decaying Hebb rule.
RK4_STEPS = 2000
#: Batch and head dimensions, and the size d, of the judge's random fields.
FIELD_SHAPE, SIZE = (3, 2), 5  # sizes of the former fixed cases; the judges now draw theirs
#: The structures a rule record can declare.
STRUCTURES = ("hebb", "delta", "oja", "general")


def _outer(a: Tensor, b: Tensor) -> Tensor:
    return a.unsqueeze(-1) * b.unsqueeze(-2)


def _random_case(generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random ``W (..., d, d)``, softmax key, tanh value and sigmoid rate ``(..., 1)``, float64,
    of random leading dimensions and size d."""
    leading = (fresh_int(generator, 1, 4), fresh_int(generator, 1, 3))
    size = fresh_int(generator, 2, 7)

    def draw(*shape: int) -> Tensor:
        return torch.randn(*leading, *shape, generator=generator, dtype=torch.float64)

    return (draw(size, size), torch.softmax(draw(size), -1), torch.tanh(draw(size)),
            torch.sigmoid(draw(1)))


# ------------------------------------------------------------------ 08.decay-solution
def _decay_solution(W0: Tensor, key: Tensor, value: Tensor, rate: float, decay: float,
                    t: float) -> Tensor:
    target = rate * _outer(value, key) / decay
    return target + (W0 - target) * math.exp(-decay * t)


def _decay_reference(W0: Tensor, key: Tensor, value: Tensor, rate: float, decay: float,
                     t: float) -> Tensor:
    """RK4 solve of ``dW/dt = rate v k^T - decay W`` (independent of the closed form)."""
    write = rate * _outer(value, key)

    def field(W: Tensor) -> Tensor:
        return write - decay * W

    h, W = t / RK4_STEPS, W0.clone()
    for _ in range(RK4_STEPS):
        k1 = field(W)
        k2 = field(W + h / 2 * k1)
        k3 = field(W + h / 2 * k2)
        k4 = field(W + h * k3)
        W = W + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return W


def _wrong_decays() -> list[Callable]:
    def fixed_point_only(W0, key, value, rate, decay, t):
        return rate * _outer(value, key) / decay

    def no_division(W0, key, value, rate, decay, t):
        target = rate * _outer(value, key)
        return target + (W0 - target) * math.exp(-decay * t)

    def start_forgotten(W0, key, value, rate, decay, t):
        return rate * _outer(value, key) / decay * (1 - math.exp(-decay * t)) + W0

    return [fixed_point_only, no_division, start_forgotten]


@exercise(
    "08.decay-solution",
    "Hebb with decay, dW/dt = beta v k^T - lambda W, with the key k, the value v and the rate "
    "beta held fixed: write W_at(W0, key, value, rate, decay, t) returning W(t) from W(0) = W0 "
    "(shape (d, d)), key and value (shape (d,)) and the numbers rate = beta, decay = lambda "
    "and t.",
    solution=lambda: _decay_solution,
    wrong_answers=_wrong_decays,
)
def _judge_decay(answer: Any) -> Optional[str]:
    if not callable(answer):
        return ("expected a function W_at(W0, key, value, rate, decay, t), got "
                f"{type(answer).__name__}")
    generator = fresh_generator()
    size = fresh_int(generator, 2, 7)
    W0 = torch.randn(size, size, generator=generator, dtype=torch.float64)
    key = torch.softmax(torch.randn(size, generator=generator, dtype=torch.float64), -1)
    value = torch.tanh(torch.randn(size, generator=generator, dtype=torch.float64))
    cases = list(DECAY_CASES) + [(fresh_float(generator, 0.1, 2.0), fresh_float(generator, 0.1, 1.0),
                                  fresh_float(generator, 0.1, 4.0))]
    for decay, rate, t in cases:
        expected = _decay_reference(W0, key, value, rate, decay, t)
        got = as_tensor(answer(W0.clone(), key, value, rate, decay, t), torch.float64)
        if got.shape != expected.shape:
            return f"expected W(t) of shape {tuple(expected.shape)}, got {tuple(got.shape)}"
        if not torch.allclose(got, expected, rtol=TOLERANCE, atol=TOLERANCE):
            return (f"wrong at lambda={decay}, beta={rate}, t={t}: where is dW/dt zero, and how "
                    "fast does the distance to that point shrink?")
    return None


# ------------------------------------------------------------------ 08.oja-style-field
def _oja_style_field(W: Optional[Tensor], key: Tensor, value: Tensor, rate: Tensor) -> Tensor:
    if W is not None:
        key = key - torch.matmul(W.transpose(-1, -2), value.unsqueeze(-1)).squeeze(-1)
    return rate.unsqueeze(-1) * _outer(value, key)


def _wrong_oja_fields() -> list[Callable]:
    def through_W_k(W, key, value, rate):
        if W is not None:
            value = value - torch.matmul(W, key.unsqueeze(-1)).squeeze(-1)
        return rate.unsqueeze(-1) * _outer(value, key)

    def no_rate(W, key, value, rate):
        return _oja_style_field(W, key, value, torch.ones_like(rate))

    def transposed(W, key, value, rate):
        return _oja_style_field(W, key, value, rate).transpose(-1, -2)

    def ignores_none(W, key, value, rate):
        key = key - torch.matmul(W.transpose(-1, -2), value.unsqueeze(-1)).squeeze(-1)
        return rate.unsqueeze(-1) * _outer(value, key)

    return [through_W_k, no_rate, transposed, ignores_none, oja_update]


@exercise(
    "08.oja-style-field",
    "Write field(W, key, value, rate), the continuous Oja-style FWP update "
    "dW/dt = beta v (k - W^T v)^T, on activated controls with leading batch and head "
    "dimensions: W (..., d, d) or None (then only the W-independent part beta v k^T), "
    "key and value (..., d), rate (..., 1).",
    solution=lambda: _oja_style_field,
    wrong_answers=_wrong_oja_fields,
)
def _judge_oja_field(answer: Any) -> Optional[str]:
    if not callable(answer):
        return f"expected a function field(W, key, value, rate), got {type(answer).__name__}"
    refused = package_pass_through(answer, ("oja_update", "softmax_oja_update", "RULES",
                                            "get_rule"))
    if refused:
        return refused
    W, key, value, rate = _random_case(fresh_generator())
    start = as_tensor(answer(None, key, value, rate), torch.float64)
    if start.shape != W.shape:
        return f"with W=None, expected shape {tuple(W.shape)}, got {tuple(start.shape)}"
    if not torch.allclose(start, _oja_style_field(None, key, value, rate), rtol=TOLERANCE,
                          atol=TOLERANCE):
        return ("with W=None the field is the W-independent part beta v k^T: rows follow the "
                "value, columns the key, scaled by the rate")
    got = as_tensor(answer(W, key, value, rate), torch.float64)
    if got.shape != W.shape:
        return f"expected dW/dt of shape {tuple(W.shape)}, got {tuple(got.shape)}"
    if not torch.allclose(got, _oja_style_field(W, key, value, rate), rtol=TOLERANCE,
                          atol=TOLERANCE):
        return ("the correction goes through the key: subtract W^T v (transpose only the last "
                "two dimensions) from k before the outer product")
    return None


# ------------------------------------------------------------------ 08.structure
#: The rules of "08.structure": name -> (formula, structure, hint for a wrong structure).
STRUCTURE_QUIZ = {
    "anti_hebb": ("-beta v k^T", "general",
                  "the 'hebb' fast path computes exactly +beta v k^T with the declared "
                  "activations; would a sign flip pass the registry's check?"),
    "hebb_decay": ("beta v k^T - lambda W", "general",
                   "-lambda W depends on W, and it is not a rank-one correction through W k "
                   "or W^T v"),
    "my_delta": ("beta (v - W k) k^T", "delta",
                 "a rank-one correction through W k: 'general' would run, but slowly"),
    "oja_style": ("beta v (k - W^T v)^T", "oja",
                  "a rank-one correction through W^T v: 'general' would run, but slowly"),
    "sanger": ("beta (v k^T - tril(v v^T) W)", "general",
               "tril(v v^T) has rank up to d, so its correction is not rank one"),
}


def _structure_solution() -> dict[str, str]:
    return {name: structure for name, (_, structure, _) in STRUCTURE_QUIZ.items()}


def _wrong_structures() -> list[dict[str, str]]:
    right = _structure_solution()
    return [
        {**right, "anti_hebb": "hebb"},
        {**right, "hebb_decay": "hebb"},
        {**right, "sanger": "oja"},
        {name: "general" for name in right},
    ]


@exercise(
    "08.structure",
    "For each rule (default activations), give the most specific structure ('hebb', 'delta', "
    "'oja' or 'general') the registry accepts for it, as a dict name -> structure: "
    + "; ".join(f"{name}: dW/dt = {formula}" for name, (formula, _, _) in STRUCTURE_QUIZ.items())
    + ".",
    solution=_structure_solution,
    wrong_answers=_wrong_structures,
)
def _judge_structure(answer: Any) -> Optional[str]:
    if not isinstance(answer, dict) or set(answer) != set(STRUCTURE_QUIZ):
        return f"expected a dict with the keys {sorted(STRUCTURE_QUIZ)}"
    for name, (formula, structure, hint) in STRUCTURE_QUIZ.items():
        if answer[name] not in STRUCTURES:
            return f"{name}: expected one of {STRUCTURES}, got {answer[name]!r}"
        if answer[name] != structure:
            return f"{name} (dW/dt = {formula}): {hint}"
    return None

"""Exercises of notebook 1, learning rules as ODEs (keys ``"01.*"``).

Each judge checks a numerical property: a student's function is compared with
the package on random inputs, a number with a tolerance.
"""

from __future__ import annotations


import torch

from ..rules.classic import delta_stability_bound, discrete_update, least_squares_weights
from . import as_number, as_tensor, close_number, exercise, fresh_float, fresh_generator, fresh_int
from . import near_miss, package_pass_through

#: The small data set of the LMS exercises: four inputs ``(4, 2)`` and their targets ``(4, 1)``.
EXERCISE_INPUTS = torch.tensor(
    [[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]], dtype=torch.float64
)
EXERCISE_TARGETS = torch.tensor([[1.0], [0.0], [2.0], [1.0]], dtype=torch.float64)


def _moments() -> tuple[torch.Tensor, torch.Tensor]:
    count = EXERCISE_INPUTS.shape[0]
    C_xx = EXERCISE_INPUTS.mT @ EXERCISE_INPUTS / count
    C_yx = EXERCISE_TARGETS.mT @ EXERCISE_INPUTS / count
    return C_xx, C_yx


def _as_number(answer: object) -> float:
    return as_number(answer)


# ----------------------------------------------------------------------------- 01.oja-euler-step


def _oja_step_solution():
    def oja_step(w, x, eta):
        y = (w * x).sum(-1, keepdim=True)
        return w + eta * y * (x - y * w)

    return oja_step


def _oja_step_wrong_answers():
    def hebb_step(w, x, eta):
        return w + eta * (w * x).sum(-1, keepdim=True) * x

    def plus_sign(w, x, eta):
        y = (w * x).sum(-1, keepdim=True)
        return w + eta * y * (x + y * w)

    def update_only(w, x, eta):
        y = (w * x).sum(-1, keepdim=True)
        return eta * y * (x - y * w)

    def package_oja(w, x, eta):  # the package's own update handed back
        return discrete_update("oja", w, x, lr=eta)

    return [hebb_step, plus_sign, update_only, package_oja]


@exercise(
    "01.oja-euler-step",
    "Write oja_step(w, x, eta): one Euler step of Oja's rule dw/dt = y (x - y w), y = w.x, "
    "for weights w (batch, n), inputs x (batch, n) and a step eta; return the new weights.",
    solution=_oja_step_solution,
    wrong_answers=_oja_step_wrong_answers,
)
def _judge_oja_step(answer):
    if not callable(answer):
        return "pass a function oja_step(w, x, eta)."
    refused = package_pass_through(answer, ("discrete_update",))
    if refused:
        return refused
    generator = fresh_generator()
    for _ in range(3):
        batch, n = fresh_int(generator, 2, 9), fresh_int(generator, 2, 7)
        eta = fresh_float(generator, 0.05, 0.6)
        w = torch.randn(batch, n, generator=generator, dtype=torch.float64)
        x = torch.randn(batch, n, generator=generator, dtype=torch.float64)
        try:
            result = as_tensor(answer(w.clone(), x.clone(), eta), torch.float64)
        except TypeError as error:
            return f"{error}: return the new weights."
        if result.shape != w.shape:
            return f"return a tensor shaped like w {tuple(w.shape)}, one row per weight vector."
        if not torch.allclose(result, discrete_update("oja", w, x, lr=eta), rtol=1e-9, atol=1e-9):
            return (
                "the result differs from w + eta * F(w, x): check the sign of the decay term "
                "-y^2 w and that you return the new weights, not only the change."
            )
    return None


# ----------------------------------------------------------------------------- 01.batch-lms-bound


@exercise(
    "01.batch-lms-bound",
    "The averaged (full-batch) delta rule W <- W + eta (C_yx - W C_xx) learns from the four inputs "
    "x = (2, 0), (0, 1), (1, 1), (1, -1), with C_xx = E[x x^T] their mean outer product. Below "
    "which constant step eta_max does it converge for every start (a number)?",
    solution=lambda: delta_stability_bound(_moments()[0]),
    wrong_answers=lambda: [
        2 / float(_moments()[0].trace()),
        1 / float(torch.linalg.eigvalsh(_moments()[0])[-1]),
        2 / float(torch.linalg.eigvalsh(EXERCISE_INPUTS.mT @ EXERCISE_INPUTS)[-1]),
    ],
)
def _judge_batch_bound(answer):
    value = _as_number(answer)
    C_xx = _moments()[0]
    if close_number(value, delta_stability_bound(C_xx)):
        return None
    if near_miss(value, delta_stability_bound(C_xx)):
        return near_miss(value, delta_stability_bound(C_xx))
    if close_number(value, 2 / float(C_xx.trace())):
        return (
            "2 / tr C is the online rule's mean-square rule of thumb; the batch rule needs lambda."
        )
    if close_number(
        value, 2 / float(torch.linalg.eigvalsh(EXERCISE_INPUTS.mT @ EXERCISE_INPUTS)[-1])
    ):
        return "C_xx is the mean of x x^T over the samples, not their sum."
    return (
        "the error shrinks like (I - eta C_xx)^k: when does every |1 - eta lambda_i| stay below 1?"
    )


# ----------------------------------------------------------------------------- 01.oja-norm


@exercise(
    "01.oja-norm",
    "A variant of Oja's rule decays four times as strongly: dw/dt = C w - 4 (w^T C w) w. "
    "Starting from a generic w, what norm |w| does it converge to (a number)?",
    solution=lambda: 0.5,
    wrong_answers=lambda: [1.0, 4.0, 2.0, 0.25],
)
def _judge_oja_norm(answer):
    value = _as_number(answer)
    if close_number(value, 0.5):
        return None
    if near_miss(value, 0.5):
        return near_miss(value, 0.5)
    return (
        "at a fixed point w = r u with C u = lambda u the field is lambda r u - 4 lambda r^3 u; "
        "solve for the r > 0 where it vanishes."
    )


# ----------------------------------------------------------------------------- 01.lms-fixed-point


@exercise(
    "01.lms-fixed-point",
    "LMS learns a 1 x 2 matrix W from the inputs x = (2, 0), (0, 1), (1, 1), (1, -1) with targets "
    "y = 1, 0, 2, 1. Give the fixed point W* of its averaged ODE dW/dt = C_yx - W C_xx "
    "(a tensor of shape (1, 2)).",
    solution=lambda: least_squares_weights(*_moments()),
    wrong_answers=lambda: [
        _moments()[1],
        EXERCISE_TARGETS.mT @ EXERCISE_INPUTS,
        torch.tensor([[1.0, -0.5]], dtype=torch.float64),
    ],
)
def _judge_lms_fixed_point(answer):
    answer = as_tensor(answer, torch.float64)
    if answer.numel() != 2:
        return f"give two numbers, the 1 x 2 matrix W*, not {answer.numel()}."
    expected = least_squares_weights(*_moments())
    if all(close_number(float(a), float(b))
           for a, b in zip(answer.flatten(), expected.flatten(), strict=True)):
        return None
    if all(close_number(float(a), float(b))
           for a, b in zip(answer.flatten(), _moments()[1].flatten(), strict=True)):
        return "that is C_yx; at the fixed point C_yx = W C_xx, so W still has to be solved for."
    return "set dW/dt = 0: C_yx = W* C_xx, with both moments means over the four samples."

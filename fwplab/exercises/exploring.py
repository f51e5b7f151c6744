"""Exercises of notebook 5, "Exploring fast weights"."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..models import ContinuousFWP, build_model
from ..widgets.explorer import cut_predictions
from . import as_tensor, exercise, fresh_float, fresh_generator, fresh_int

#: Tolerance of the probability comparisons (float32 models).
PROBABILITY_TOLERANCE = 1e-5
#: Relative tolerance of the float64 comparisons.
TOLERANCE = 1e-9
#: Cut points of the judge's former fixed check of "05.cut-prediction" (the judge now draws a
#: fresh model, series and cut points; a lookup table of these outputs is a recorded wrong answer).
CUT_POINTS = (1, 3, 6)
#: RK4 steps of the reference solve of the delta rule in "05.delta-error-decay".
RK4_STEPS = 400
#: Channels, classes, hidden size and heads of the judges' small random delta_cde.
CHANNELS, CLASSES, HIDDEN, HEADS = 3, 4, 16, 2


def _small_model(seed: int = 0) -> ContinuousFWP:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model("delta_cde", CHANNELS, CLASSES, hidden_channels=HIDDEN,
                            num_heads=HEADS)
    return model.eval()


def _series(seed: int = 0, length: int = 8) -> Tensor:
    """One series ``(1, length, CHANNELS)``: a time channel and two random channels."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, length, CHANNELS, generator=generator)
    x[..., 0] = torch.arange(float(length))
    return x


# ------------------------------------------------------------------ 05.cut-prediction
def _cut_solution(model: ContinuousFWP, x: Tensor, i: int) -> Tensor:
    with torch.no_grad():
        return torch.softmax(model(x[:, : i + 1]), -1)[0]


def _wrong_cuts() -> list[Callable]:
    def streamed(model, x, i):
        with torch.no_grad():
            return torch.softmax(model(x, stream=True), -1)[0, i]

    def one_too_short(model, x, i):
        return _cut_solution(model, x, i - 1) if i > 1 else _cut_solution(model, x, i)

    def whole_series(model, x, i):
        with torch.no_grad():
            return torch.softmax(model(x), -1)[0]

    # a lookup table of the outputs on the model, series and cut points once checked
    table = {i: _cut_solution(_small_model(), _series(), i) for i in CUT_POINTS}

    def looked_up(model, x, i):
        return table[i] if i in table else _cut_solution(_small_model(), _series(), 1)

    return [streamed, one_too_short, whole_series, looked_up]


@exercise(
    "05.cut-prediction",
    "Write cut(model, x, i) returning the class probabilities (shape (classes,)) that model "
    "gives for the single series x (shape (1, time, channels)) cut after its time point i, "
    "as if the observations after t_i had never arrived (1 <= i < time).",
    solution=lambda: _cut_solution,
    wrong_answers=_wrong_cuts,
)
def _judge_cut(answer: Any) -> Optional[str]:
    if not callable(answer):
        return f"expected a function cut(model, x, i), got {type(answer).__name__}"
    generator = fresh_generator()
    length = fresh_int(generator, 6, 10)
    model = _small_model(fresh_int(generator, 0, 2**31))
    x = _series(fresh_int(generator, 0, 2**31), length)
    expected = cut_predictions(model, x)
    with torch.no_grad():
        streamed = torch.softmax(model(x, stream=True), -1)[0]
    cut_points = sorted({1, length - 2, fresh_int(generator, 2, length - 2)})
    for i in cut_points:
        probabilities = as_tensor(answer(model, x, i), expected.dtype)
        if probabilities.shape != expected[i].shape:
            return (f"expected probabilities of shape {tuple(expected[i].shape)}, "
                    f"got {tuple(probabilities.shape)}")
        if (probabilities - expected[i]).abs().max() <= PROBABILITY_TOLERANCE:
            continue
        if (probabilities - streamed[i]).abs().max() <= PROBABILITY_TOLERANCE:
            return ("this is the streamed read-out of the whole series at t_i; its natural "
                    "cubic path before t_i already depends on later observations: run the "
                    "model on the cut series itself")
        if (probabilities - expected[i - 1]).abs().max() <= PROBABILITY_TOLERANCE:
            return "the cut series should keep time point i too: i + 1 time points in all"
        return f"at i = {i} the probabilities differ from the model's on the cut series"
    return None


# -------------------------------------------------------------- 05.crosstalk-rate
def _crosstalk_rate_solution(W: Tensor, k: Tensor, v: Tensor, beta: float,
                             other_key: Tensor, other_value: Tensor) -> Tensor:
    written_error = v - W @ k
    other_error = other_value - W @ other_key
    return -2 * beta * (k @ other_key) * (other_error @ written_error)


def _wrong_crosstalk_rates() -> list[Callable]:
    def own_pair(W, k, v, beta, other_key, other_value):
        error = v - W @ k
        return -2 * beta * (k @ k) * (error @ error)

    def key_norm_instead_of_overlap(W, k, v, beta, other_key, other_value):
        return _crosstalk_rate_solution(W, k, v, beta, other_key, other_value) * (
            (k @ k) / (k @ other_key))

    def hebb(W, k, v, beta, other_key, other_value):
        return -2 * beta * (k @ other_key) * ((other_value - W @ other_key) @ v)

    def sign_flipped(W, k, v, beta, other_key, other_value):
        return -_crosstalk_rate_solution(W, k, v, beta, other_key, other_value)

    return [own_pair, key_norm_instead_of_overlap, hebb, sign_flipped]


@exercise(
    "05.crosstalk-rate",
    "Write rate(W, k, v, beta, other_key, other_value) returning d/dt |other_value - W "
    "other_key|^2, the rate at which the delta rule dW/dt = beta (v - W k) k^T, writing the "
    "pair (k, v), changes the recall error of another stored pair (other_key, other_value); "
    "keys and values have shape (d,), beta is a number, W has shape (d, d), all held fixed.",
    solution=lambda: _crosstalk_rate_solution,
    wrong_answers=_wrong_crosstalk_rates,
)
def _judge_crosstalk_rate(answer: Any) -> Optional[str]:
    if not callable(answer):
        return ("expected a function rate(W, k, v, beta, other_key, other_value), got "
                f"{type(answer).__name__}")
    generator = fresh_generator()
    for _ in range(4):
        d = fresh_int(generator, 2, 8)
        W = torch.randn(d, d, dtype=torch.float64, generator=generator)
        k, other_key = torch.softmax(torch.randn(2, d, dtype=torch.float64,
                                                 generator=generator), -1)
        v, other_value = torch.tanh(torch.randn(2, d, dtype=torch.float64, generator=generator))
        beta = float(torch.rand((), dtype=torch.float64, generator=generator))
        expected = float(_crosstalk_rate_solution(W, k, v, beta, other_key, other_value))
        value = as_tensor(answer(W, k, v, beta, other_key, other_value), torch.float64)
        if value.numel() != 1:
            return f"expected one number, got shape {tuple(value.shape)}"
        if abs(float(value) - expected) > TOLERANCE * (1 + abs(expected)):
            if abs(float(value) + expected) <= TOLERANCE * (1 + abs(expected)):
                return "the sign is off: d/dt |e|^2 = 2 e . de/dt, and de/dt = -(dW/dt) k'"
            return ("dW/dt is an outer product with k: work out how fast the other read-out "
                    "W k' moves (dW/dt applied to k'), then differentiate |v' - W k'|^2")
    return None


# -------------------------------------------------------------- 05.delta-error-decay
def _decay_solution(e0: Tensor, k: Tensor, beta: float, t: float) -> Tensor:
    return e0 * torch.exp(-beta * (k @ k) * t)


def _wrong_decays() -> list[Callable]:
    def no_key_norm(e0, k, beta, t):
        return e0 * torch.exp(torch.as_tensor(-beta * t, dtype=e0.dtype))

    def linear(e0, k, beta, t):
        return e0 * (1 - beta * (k @ k) * t)

    def squared_rate(e0, k, beta, t):
        return e0 * torch.exp(-2 * beta * (k @ k) * t)

    return [no_key_norm, linear, squared_rate]


def _delta_rule_error(W0: Tensor, k: Tensor, v: Tensor, beta: float, t: float) -> Tensor:
    """``v - W(t) k`` for ``dW/dt = beta (v - W k) k^T`` from ``W0``, by fine RK4 steps."""

    def field(W: Tensor) -> Tensor:
        return beta * torch.outer(v - W @ k, k)

    W, h = W0, t / RK4_STEPS
    for _ in range(RK4_STEPS):
        a = field(W)
        b = field(W + h / 2 * a)
        c = field(W + h / 2 * b)
        d = field(W + h * c)
        W = W + h / 6 * (a + 2 * b + 2 * c + d)
    return v - W @ k


@exercise(
    "05.delta-error-decay",
    "While the key k, the value v and the rate beta stay fixed, the delta rule "
    "dW/dt = beta (v - W k) k^T drives the recall error e(t) = v - W(t) k. Write "
    "error_after(e0, k, beta, t) returning e(t) from e(0) = e0 (shape (d,)), the key k "
    "(shape (d,)) and the numbers beta and t.",
    solution=lambda: _decay_solution,
    wrong_answers=_wrong_decays,
)
def _judge_decay(answer: Any) -> Optional[str]:
    if not callable(answer):
        return f"expected a function error_after(e0, k, beta, t), got {type(answer).__name__}"
    generator = fresh_generator()
    for t in (fresh_float(generator, 0.2, 1.0), fresh_float(generator, 1.0, 3.0),
              fresh_float(generator, 3.0, 6.0)):
        d = fresh_int(generator, 2, 8)
        W0 = torch.randn(d, d, dtype=torch.float64, generator=generator)
        k = torch.softmax(2 * torch.randn(d, dtype=torch.float64, generator=generator), -1)
        v = torch.tanh(torch.randn(d, dtype=torch.float64, generator=generator))
        beta = 0.2 + float(torch.rand((), dtype=torch.float64, generator=generator))
        expected = _delta_rule_error(W0, k, v, beta, t)
        value = as_tensor(answer(v - W0 @ k, k, beta, t), torch.float64)
        if value.shape != expected.shape:
            return f"expected shape {tuple(expected.shape)}, got {tuple(value.shape)}"
        if (value - expected).abs().max() > 1e-8 * (1 + expected.abs().max()):
            return ("solving the delta rule gives a different e(t): write de/dt = -(dW/dt) k, "
                    "put in the rule, and solve the linear ODE you get")
    return None

"""Exercises of notebook 3, "Continuous-time fast weight programmers"."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..discrete import fast_weight_recurrent
from ..models import build_model
from ..rules.fast_weight import delta_rule
from . import as_count, as_tensor, exercise, fresh_generator, fresh_int, package_pass_through

#: Relative tolerance of the float64 comparisons.
TOLERANCE = 1e-9
#: (hidden H, input channels C, heads) on which the output counts are checked.
SIZES = ((64, 13, 4), (32, 3, 2), (80, 21, 4), (16, 8, 16))


def _close(ours: Tensor, reference: Tensor) -> bool:
    ours = as_tensor(ours, reference.dtype)
    if ours.shape != reference.shape:
        return False
    return bool((ours - reference).abs().max() <= TOLERANCE * (1 + reference.abs().max()))


def _random_controls(generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fast weights ``(batch, heads, d, d)``, key logits and value pre-activations
    ``(batch, heads, d)``, rate logits ``(batch, heads, 1)``, of random sizes."""
    batch, heads, d = (fresh_int(generator, 1, 4), fresh_int(generator, 1, 4),
                       fresh_int(generator, 2, 7))
    W = 0.5 * torch.randn(batch, heads, d, d, dtype=torch.float64, generator=generator)
    key, value = (2 * torch.randn(batch, heads, d, dtype=torch.float64, generator=generator)
                  for _ in range(2))
    rate = torch.randn(batch, heads, 1, dtype=torch.float64, generator=generator)
    return W, key, value, rate


def _delta_field(W: Optional[Tensor], key: Tensor, value: Tensor, rate: Tensor) -> Tensor:
    key, value, rate = key.softmax(-1), value.tanh(), rate.sigmoid()
    if W is not None:
        value = value - (W @ key.unsqueeze(-1)).squeeze(-1)
    return _outer(rate * value, key)


def _post_tanh_field(W: Optional[Tensor], key: Tensor, value: Tensor, rate: Tensor) -> Tensor:
    key, rate = key.softmax(-1), rate.sigmoid()
    if W is not None:
        value = value - (W @ key.unsqueeze(-1)).squeeze(-1)
    return _outer(rate * value.tanh(), key)


def _outer(a: Tensor, b: Tensor) -> Tensor:
    return a.unsqueeze(-1) * b.unsqueeze(-2)


def _wrong_fields() -> list[Callable]:
    def no_correction(W, key, value, rate):
        return _outer(rate.sigmoid() * value.tanh(), key.softmax(-1))

    def squash_after(W, key, value, rate):
        return _post_tanh_field(W, key, value, rate)

    def raw_rate(W, key, value, rate):
        field = _delta_field(W, key, value, rate)
        return field / rate.sigmoid().unsqueeze(-1) * rate.unsqueeze(-1)

    def transposed(W, key, value, rate):
        return _delta_field(None if W is None else W.transpose(-1, -2), key, value, rate)

    return [no_correction, squash_after, raw_rate, transposed, delta_rule,
            lambda W, key, value, rate: delta_rule(W, key, value, rate)]


@exercise(
    "03.delta-field",
    "Write field(W, key, value, rate) returning delta_cde's dW/dt (shape (..., d, d)) from the "
    "fast weights W (..., d, d), the key logits and value pre-activations (..., d) and the rate "
    "logits (..., 1), with the activations applied inside; field(None, key, value, rate) must "
    "return the initial fast weight W(t0).",
    solution=lambda: _delta_field,
    wrong_answers=_wrong_fields,
)
def _judge_delta_field(answer: Any) -> Optional[str]:
    if not callable(answer):
        return f"expected a function field(W, key, value, rate), got {type(answer).__name__}"
    refused = package_pass_through(answer, ("delta_rule", "delta_update", "RULES", "get_rule"))
    if refused:
        return refused
    generator = fresh_generator()
    for _ in range(3):
        W, key, value, rate = _random_controls(generator)
        initial = answer(None, key, value, rate)
        if not _close(initial, delta_rule(None, key, value, rate)):
            return ("with W=None your field should give W(t0): the write of the first "
                    "observation, rate times value times key^T, after the activations")
        if not _close(answer(W, key, value, rate), delta_rule(W, key, value, rate)):
            if _close(answer(W, key, value, rate), delta_rule(W, key, value, rate, post_tanh=True)):
                return "squash the value with tanh before subtracting W k, not after"
            return ("the write corrects the value by what W already returns for the key: "
                    "(v - W k) k^T, with k the softmax of the key logits")
    return None


def _euler_and_pairs(seed: int = 0):
    """A ``delta_ode`` solved with Euler steps of size 1 and its controls (float64)."""
    torch.manual_seed(seed)
    model = build_model("delta_ode", 3, 2, hidden_channels=8, num_heads=2,
                        method="euler", step_size=1.0).double()
    x = torch.randn(1, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        W_euler = model.fast_weight_trajectory(x)[0]  # (time, heads, d, d)
        key, value, rate = model.slow_net(x, None)  # (1, time, heads, .)
    return W_euler, key, value.tanh(), rate.sigmoid()


def _written_by(indices: list[int], key: Tensor, value: Tensor, rate: Tensor) -> Tensor:
    """NB2's delta-rule FWP from W = 0 fed the pairs ``indices`` in order: its final W."""
    chosen = torch.tensor(indices)
    _, W = fast_weight_recurrent(key[:, chosen], value[:, chosen], key[:, chosen],
                                 rate[:, chosen], rule="delta", return_final_weight=True)
    return W[0]


@exercise(
    "03.euler-writes",
    "delta_ode solved by Euler steps of size 1 on observations at t = 0, 1, ..., 5: its W(t = 3) "
    "equals notebook 2's delta-rule FWP, started at W = 0, fed the (key, value, rate) pairs of "
    "which observations, in order? Give a list of indices.",
    solution=lambda: [0, 0, 1, 2],
    wrong_answers=lambda: [[0, 1, 2, 3], [1, 2, 3], [0, 1, 2], [0, 0, 1, 2, 3]],
)
def _judge_euler_writes(answer: Any) -> Optional[str]:
    indices = list(answer)
    if not indices or not all(isinstance(i, int) and 0 <= i <= 5 for i in indices):
        return f"expected a non-empty list of observation indices between 0 and 5, got {answer!r}"
    W_euler, key, value, rate = _euler_and_pairs()
    if _close(_written_by(indices, key, value, rate), W_euler[3]):
        return None
    if indices == [0, 1, 2, 3]:
        return "that is notebook 2's alignment; which controls does the Euler step from t to t + 1 use?"
    return ("W(t0) already holds one write of observation 0, and the step from t to t + 1 "
            "uses the controls at t")


def _output_counts(hidden: int, channels: int, heads: int) -> tuple[int, int]:
    head_dim = hidden // heads
    return hidden * channels, heads * (head_dim + 1) + hidden


def _built_counts(hidden: int, channels: int, heads: int) -> tuple[int, int]:
    """The same counts read from the layers of the models ``build_model`` builds."""
    ncde = build_model("ncde", channels, 2, hidden_channels=hidden)
    fwp = build_model("delta_cde", channels, 2, hidden_channels=hidden, num_heads=heads)
    slow_net = fwp.slow_net
    return (ncde.field.mlp[-1].out_features,
            slow_net.kb_proj.out_features + slow_net.value_proj.out_features)


@exercise(
    "03.field-outputs",
    "Write counts(hidden, channels, heads) returning (ncde, fwp): how many numbers the learned "
    "network outputs at each solver stage in a Neural CDE (its vector field) and in a "
    "delta_cde (its slow net: keys, rates and values), for hidden size H, C input channels "
    "and the given number of heads.",
    solution=lambda: _output_counts,
    wrong_answers=lambda: [
        lambda H, C, heads: (H * C, H * H // heads),
        lambda H, C, heads: (H * H * C, heads * (H // heads + 1) + H),
        lambda H, C, heads: (H * C, 2 * H),
        lambda H, C, heads: (H, heads * (H // heads + 1) + H),
    ],
)
def _judge_field_outputs(answer: Any) -> Optional[str]:
    if not callable(answer):
        return f"expected a function counts(hidden, channels, heads), got {type(answer).__name__}"
    generator = fresh_generator()
    sizes = list(SIZES)
    for _ in range(2):
        heads = fresh_int(generator, 1, 8)
        sizes.append((heads * fresh_int(generator, 1, 12), fresh_int(generator, 1, 30), heads))
    for size in sizes:
        counts = [as_count(n) for n in answer(*size)]
        if len(counts) != 2 or None in counts:
            return f"return two whole numbers (ncde, fwp), got {answer(*size)!r}"
        ncde, fwp = counts
        expected_ncde, expected_fwp = _built_counts(*size)
        if ncde != expected_ncde:
            return ("a Neural CDE's vector field is a matrix that multiplies dX/dt: how many "
                    f"entries has it? (H, C, heads = {size})")
        if fwp != expected_fwp:
            return ("count the slow net's outputs, not the fast weights: per head a key of "
                    f"size d and one rate, plus the values (H, C, heads = {size})")
    return None

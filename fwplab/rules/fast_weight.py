"""Fast weight learning rules: the discrete updates (docs/maths.md, section 3) and the
continuous rule table of the paper's models (docs/maths.md, sections 4.1, 4.2 and 4.4).

Every fast weight ``W`` maps keys to values: ``W`` has shape ``(..., d_value, d_key)``
and a read-out is ``W q``. The leading ``...`` dimensions are batch and heads.

The three outer-product updates, on keys and values that are already features::

    hebb_update:  dW = beta * v k^T
    delta_update: dW = beta * (v - W k) k^T
    oja_update:   dW = beta * v (k - W^T v)^T

The continuous rules take the raw outputs of the slow net (key logits, value
pre-activations, rate logits) and apply the paper's activations::

    hebb:             dW/dt = (sigma(b) * tanh v) softmax(k)^T
    hebb_unsquashed:  dW/dt = (b * v) softmax(k)^T
    oja:              dW/dt = (tanh v) (sigma(b) * softmax(k - W^T tanh v))^T
    delta:            dW/dt = sigma(b) * (tanh v - W softmax k) softmax(k)^T
                      post_tanh: sigma(b) * tanh(v - W softmax k) softmax(k)^T

``oja`` is the softmax Oja rule: the softmax acts *after* subtracting ``W^T v``
(as the official code does), so it has no linear-attention form and no link to
PCA. ``hebb_unsquashed`` is the Hebb rule of the official ``hebb_cde``: the rate
logit ``b`` scales the value directly (no sigmoid, so it may be negative) and the
value is not squashed. Passing ``W=None`` leaves the W-dependent part out: that is
the initial fast weight ``W(t0)`` of every continuous model (docs/maths.md, section 4.3).

:data:`RULES` holds one :class:`~fwplab.rules.record.FastWeightRule` per rule: its
field on activated controls, the activations of the raw key, value and rate, and the
structure the fixed-grid solvers (:mod:`fwplab.solvers`) exploit. The functions above
on raw controls are the readable reference each record is tested against.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .record import FastWeightRule

__all__ = [
    "hebb_update",
    "delta_update",
    "oja_update",
    "hebb_rule",
    "unsquashed_hebb_rule",
    "oja_rule",
    "delta_rule",
    "softmax_oja_update",
    "post_tanh_delta_update",
    "RULES",
    "FAST_WEIGHT_RULES",
    "get_rule",
]


def _outer(a: Tensor, b: Tensor) -> Tensor:
    """Batched outer product ``a b^T``: ``(..., m), (..., n) -> (..., m, n)``."""
    return a.unsqueeze(-1) * b.unsqueeze(-2)


def _matvec(W: Tensor, x: Tensor) -> Tensor:
    """Batched ``W x``: ``(..., m, n), (..., n) -> (..., m)``."""
    return torch.matmul(W, x.unsqueeze(-1)).squeeze(-1)


def hebb_update(W: Optional[Tensor], key: Tensor, value: Tensor, rate: Tensor) -> Tensor:
    """Hebbian update ``beta v k^T`` (does not depend on ``W``).

    Args:
        W: fast weights ``(..., d_v, d_k)`` or ``None``; unused.
        key: ``(..., d_k)``.
        value: ``(..., d_v)``.
        rate: ``(..., 1)`` or broadcastable to ``(..., d_v)``.

    Returns:
        ``(..., d_v, d_k)``.
    """
    return _outer(rate * value, key)


def delta_update(W: Optional[Tensor], key: Tensor, value: Tensor, rate: Tensor) -> Tensor:
    """Delta-rule update ``beta (v - W k) k^T``; ``W=None`` gives ``beta v k^T``.

    Shapes as :func:`hebb_update`.
    """
    if W is not None:
        value = value - _matvec(W, key)
    return _outer(rate * value, key)


def oja_update(W: Optional[Tensor], key: Tensor, value: Tensor, rate: Tensor) -> Tensor:
    """Oja-style update ``beta v (k - W^T v)^T``; ``W=None`` gives ``beta v k^T``.

    Shapes as :func:`hebb_update`.
    """
    if W is not None:
        key = key - _matvec(W.transpose(-1, -2), value)
    return _outer(value, rate * key)


def hebb_rule(
    W: Optional[Tensor], key: Tensor, value: Tensor, rate: Tensor, post_tanh: bool = False
) -> Tensor:
    """Continuous Hebb rule ``dW/dt = (sigma(b) tanh v) softmax(k)^T``.

    Args:
        W: fast weights ``(..., d, d)`` or ``None`` (unused: Hebb ignores ``W``).
        key: key logits ``(..., d)``.
        value: value pre-activations ``(..., d)``.
        rate: rate logits ``(..., 1)``.
        post_tanh: must be False (it is a delta-rule option).

    Returns:
        ``dW/dt`` of shape ``(..., d, d)``.
    """
    _check_post_tanh("hebb", post_tanh)
    return hebb_update(None, torch.softmax(key, -1), torch.tanh(value), torch.sigmoid(rate))


def unsquashed_hebb_rule(
    W: Optional[Tensor], key: Tensor, value: Tensor, rate: Tensor, post_tanh: bool = False
) -> Tensor:
    """The official ``hebb_cde``'s Hebb rule: the rate logit scales the raw value.

    ::

        dW/dt = (b * v) softmax(k)^T

    Neither ``b`` nor ``v`` is squashed, so the rate may be negative (anti-Hebbian)
    and the update is unbounded. Arguments as :func:`hebb_rule`.
    """
    _check_post_tanh("hebb_unsquashed", post_tanh)
    return hebb_update(None, torch.softmax(key, -1), value, rate)


def oja_rule(
    W: Optional[Tensor], key: Tensor, value: Tensor, rate: Tensor, post_tanh: bool = False
) -> Tensor:
    """The softmax Oja rule ``dW/dt = (tanh v) (sigma(b) softmax(k - W^T tanh v))^T``.

    The softmax acts after the subtraction. Arguments as :func:`hebb_rule`.
    """
    _check_post_tanh("oja", post_tanh)
    value = torch.tanh(value)
    if W is not None:
        key = key - _matvec(W.transpose(-1, -2), value)
    return _outer(value, torch.sigmoid(rate) * torch.softmax(key, -1))


def delta_rule(
    W: Optional[Tensor], key: Tensor, value: Tensor, rate: Tensor, post_tanh: bool = False
) -> Tensor:
    """Continuous delta rule ``dW/dt = sigma(b) (tanh v - W softmax k) softmax(k)^T``.

    With ``post_tanh`` the squashing moves after the subtraction:
    ``sigma(b) tanh(v - W softmax k) softmax(k)^T``. Arguments as :func:`hebb_rule`.
    """
    key = torch.softmax(key, -1)
    rate = torch.sigmoid(rate)
    if not post_tanh:
        return delta_update(W, key, torch.tanh(value), rate)
    if W is not None:
        value = value - _matvec(W, key)
    return _outer(rate * torch.tanh(value), key)


def _check_post_tanh(name: str, post_tanh: bool) -> None:
    if post_tanh:
        raise ValueError(f"post_tanh: expected a rule that has this option (the delta rule), "
                         f"got {name!r}")


def softmax_oja_update(W: Optional[Tensor], key: Tensor, value: Tensor, rate: Tensor) -> Tensor:
    """The softmax Oja rule's field on activated values and rates, raw key logits.

    ::

        dW/dt = v (b softmax(k - W^T v))^T      (W = None: v (b softmax(k))^T)

    Shapes as :func:`hebb_update`.
    """
    if W is not None:
        key = key - _matvec(W.transpose(-1, -2), value)
    return _outer(value, rate * torch.softmax(key, -1))


def post_tanh_delta_update(W: Optional[Tensor], key: Tensor, value: Tensor,
                           rate: Tensor) -> Tensor:
    """The post-tanh delta rule's field on activated keys and rates, raw values.

    ::

        dW/dt = b tanh(v - W k) k^T             (W = None: b tanh(v) k^T)

    Shapes as :func:`hebb_update`.
    """
    if W is not None:
        value = value - _matvec(W, key)
    return _outer(rate * torch.tanh(value), key)


_HEBB_UNSQUASHED = FastWeightRule(
    "hebb_unsquashed", hebb_update, value="identity", rate="identity", structure="hebb",
    label="official Hebb: dW = (b v) k^T (b, v raw)", default_layout="keys_from_path",
    builtin=True,
)

_DELTA_POST_TANH = FastWeightRule(
    "delta", post_tanh_delta_update, value="identity", structure="delta", correction="tanh",
    label="delta, post tanh: dW = b tanh(v - W k) k^T", discrete=None, builtin=True,
)

#: Every continuous fast weight rule, by name: the package's own and those registered
#: with :func:`fwplab.rules.register_rule`.
RULES: dict[str, FastWeightRule] = {
    "hebb": FastWeightRule(
        "hebb", hebb_update, structure="hebb", label="Hebb: dW = b v k^T",
        discrete=hebb_update, options={"keys_from_path": _HEBB_UNSQUASHED},
        default_layout="keys_from_path", builtin=True,
    ),
    "hebb_unsquashed": _HEBB_UNSQUASHED,
    "oja": FastWeightRule(
        "oja", softmax_oja_update, key="identity", structure="oja", correction="softmax",
        label="softmax Oja: dW = v (b softmax(k - W^T v))^T", discrete=oja_update,
        default_layout="keys_from_path", builtin=True,
    ),
    "delta": FastWeightRule(
        "delta", delta_update, structure="delta", label="delta: dW = b (v - W k) k^T",
        discrete=delta_update, options={"post_tanh": _DELTA_POST_TANH}, builtin=True,
    ),
}

#: The same registry under its former name.
FAST_WEIGHT_RULES = RULES


def get_rule(name: str) -> FastWeightRule:
    """Return the rule record called ``name`` (a key of :data:`RULES`).

    The record is callable on the slow net's raw controls,
    ``rule(W, key, value, rate, post_tanh=False)``, like :func:`delta_rule`.

    Raises:
        ValueError: ``name`` is not registered.
    """
    if not isinstance(name, str) or name not in RULES:
        raise ValueError(f"rule: expected one of {sorted(RULES)}, got {name!r}")
    return RULES[name]

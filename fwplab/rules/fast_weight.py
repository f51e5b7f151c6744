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

:data:`RULE_ACTIVATIONS` lists the activation each rule applies to the raw key,
value and rate; the fixed-grid solvers (:mod:`fwplab.solvers`) read it from here.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = [
    "hebb_update",
    "delta_update",
    "oja_update",
    "hebb_rule",
    "unsquashed_hebb_rule",
    "oja_rule",
    "delta_rule",
    "FAST_WEIGHT_RULES",
    "RULE_ACTIVATIONS",
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
        raise ValueError(f"post_tanh applies to the delta rule only, not to {name!r}")


Rule = Callable[..., Tensor]

#: The continuous learning rules of the paper's models, chosen by name.
FAST_WEIGHT_RULES: dict[str, Rule] = {
    "hebb": hebb_rule,
    "hebb_unsquashed": unsquashed_hebb_rule,
    "oja": oja_rule,
    "delta": delta_rule,
}

#: The activations (key, value, rate) each rule applies to the raw controls, by name
#: (``"delta_post_tanh"``: the delta rule with ``post_tanh``). ``"identity"`` marks a
#: control the rule uses raw or activates only after its W-dependent part: the Oja key
#: gets its softmax after the subtraction, the post-tanh value its tanh.
RULE_ACTIVATIONS: dict[str, tuple[str, str, str]] = {
    "hebb": ("softmax", "tanh", "sigmoid"),
    "hebb_unsquashed": ("softmax", "identity", "identity"),
    "delta": ("softmax", "tanh", "sigmoid"),
    "delta_post_tanh": ("softmax", "identity", "sigmoid"),
    "oja": ("identity", "tanh", "sigmoid"),
}


def get_rule(name: str) -> Rule:
    """Return the continuous rule called ``name`` (one of ``FAST_WEIGHT_RULES``)."""
    try:
        return FAST_WEIGHT_RULES[name]
    except KeyError:
        raise ValueError(
            f"unknown learning rule {name!r}; expected one of {sorted(FAST_WEIGHT_RULES)}"
        ) from None

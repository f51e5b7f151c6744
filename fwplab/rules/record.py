"""One record per fast weight learning rule: :class:`FastWeightRule`.

A record says everything the rest of the package needs to know about a rule:

* ``field(W, key, value, rate) -> dW/dt`` on *activated* controls, ``W`` of shape
  ``(..., d, d)`` (rows index the value, columns the key) or ``None`` for the
  W-independent part that gives the initial fast weight ``W(t0)``;
* the activations the slow net's raw controls go through first (``key``,
  ``value``, ``rate``: names of :data:`ACTIVATIONS`);
* the ``structure`` the fixed-grid solvers may exploit (docs/maths.md, section 4.6)::

      "hebb":    dW/dt = b v k^T                      (no W: a sum, no time loop)
      "delta":   dW/dt = b g(v - W k) k^T             (rank one through W k)
      "oja":     dW/dt = v (b g(k - W^T v))^T         (rank one through W^T v)
      "general": anything else                        (torchdiffeq only)

  where ``g`` is the record's ``correction`` (``"linear"``: ``g(z) = z``,
  ``"tanh"``, ``"softmax"``) applied after the subtraction;
* ``options``: named variants (``post_tanh`` of the delta rule, the official
  ``hebb_cde``'s Hebb rule in the ``keys_from_path`` layout), each a record itself;
* a ``label`` for widgets and the optional ``discrete`` update.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field as dataclass_field
from types import MappingProxyType
from typing import Optional

import torch
from torch import Tensor

__all__ = [
    "ACTIVATIONS",
    "CORRECTIONS",
    "STRUCTURES",
    "FastWeightRule",
    "activate",
    "structure_field",
]


def _softmax(x: Tensor) -> Tensor:
    return torch.softmax(x, -1)


def _identity(x: Tensor) -> Tensor:
    return x


#: Activations of the slow net's controls, by name (softmax over the last dimension).
ACTIVATIONS: Mapping[str, Callable[[Tensor], Tensor]] = MappingProxyType({
    "identity": _identity,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softmax": _softmax,
})

#: The ``g`` applied after the subtraction in the rank-one structures.
CORRECTIONS: Mapping[str, Callable[[Tensor], Tensor]] = MappingProxyType({
    "linear": _identity,
    "tanh": torch.tanh,
    "softmax": _softmax,
})

#: The structures a rule may declare (see the module docstring).
STRUCTURES = ("hebb", "delta", "oja", "general")


def activate(name: str, x: Tensor) -> Tensor:
    """Apply the activation called ``name`` (one of :data:`ACTIVATIONS`) to ``x (..., d)``."""
    return ACTIVATIONS[_check_name("activation", name, ACTIVATIONS)](x)


def _check_name(what: str, name, choices) -> str:
    if not isinstance(name, str) or name not in choices:
        raise ValueError(f"{what}: expected one of {sorted(choices)}, got {name!r}")
    return name


def _outer(a: Tensor, b: Tensor) -> Tensor:
    return a.unsqueeze(-1) * b.unsqueeze(-2)


def _matvec(W: Tensor, x: Tensor) -> Tensor:
    return torch.matmul(W, x.unsqueeze(-1)).squeeze(-1)


def structure_field(structure: str, correction: str, W: Optional[Tensor], key: Tensor,
                    value: Tensor, rate: Tensor) -> Tensor:
    """The field a structure promises, on activated controls (the solvers' contract).

    ::

        hebb:   b v k^T
        delta:  b g(v - W k) k^T          (W = None: b g(v) k^T)
        oja:    v (b g(k - W^T v))^T      (W = None: v (b g(k))^T)

    Args:
        structure: ``"hebb"``, ``"delta"`` or ``"oja"``.
        correction: ``g``, one of :data:`CORRECTIONS`.
        W: ``(..., d, d)`` or ``None``.
        key, value: ``(..., d)``.
        rate: ``(..., 1)``.

    Returns:
        ``(..., d, d)``.
    """
    g = CORRECTIONS[_check_name("correction", correction, CORRECTIONS)]
    if structure == "hebb":
        return _outer(rate * value, key)
    if structure == "delta":
        if W is not None:
            value = value - _matvec(W, key)
        return _outer(rate * g(value), key)
    if structure == "oja":
        if W is not None:
            key = key - _matvec(W.transpose(-1, -2), value)
        return _outer(value, rate * g(key))
    raise ValueError(f"structure: expected one of ('hebb', 'delta', 'oja'), got {structure!r}")


@dataclass(frozen=True)
class FastWeightRule:
    """A continuous fast weight learning rule (see the module docstring).

    Attributes:
        name: the registry key; models are called ``f"{name}_cde"`` and ``f"{name}_ode"``.
        field: ``field(W, key, value, rate) -> dW/dt`` on activated controls:
            ``W (..., d, d)`` or ``None``, ``key (..., d)``, ``value (..., d)``,
            ``rate (..., 1)``; returns ``(..., d, d)``.
        key, value, rate: activations of the raw controls (:data:`ACTIVATIONS`).
        structure: one of :data:`STRUCTURES`.
        correction: ``g`` of the ``"delta"`` and ``"oja"`` structures (:data:`CORRECTIONS`).
        label: a one-line description for widgets.
        discrete: the discrete update ``dW(W, key, value, rate)``, or ``None``.
        options: option name -> the record that runs when the option is on.
        default_layout: the CDE layout a model gets when none is asked for.
        builtin: one of the package's own rules (cannot be unregistered).
    """

    name: str
    field: Callable[..., Tensor]
    key: str = "softmax"
    value: str = "tanh"
    rate: str = "sigmoid"
    structure: str = "general"
    correction: str = "linear"
    label: str = ""
    discrete: Optional[Callable[..., Tensor]] = None
    options: Mapping[str, "FastWeightRule"] = dataclass_field(default_factory=dict)
    default_layout: str = "keys_from_derivative"
    builtin: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"name: expected a Python identifier, got {self.name!r}")
        if not callable(self.field):
            raise ValueError(f"field: expected a function field(W, key, value, rate), got "
                             f"{type(self.field).__name__}")
        for what in ("key", "value", "rate"):
            _check_name(what, getattr(self, what), ACTIVATIONS)
        _check_name("structure", self.structure, STRUCTURES)
        _check_name("correction", self.correction, CORRECTIONS)
        if self.discrete is not None and not callable(self.discrete):
            raise ValueError(f"discrete: expected a function or None, got "
                             f"{type(self.discrete).__name__}")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        if not self.label:
            object.__setattr__(self, "label", self.name)

    @property
    def activations(self) -> tuple[str, str, str]:
        """The activations of (key, value, rate)."""
        return (self.key, self.value, self.rate)

    @property
    def has_time_loop(self) -> bool:
        """Whether the field depends on ``W`` (every structure but ``"hebb"``)."""
        return self.structure != "hebb"

    def option(self, name: str, enabled: bool = True) -> "FastWeightRule":
        """The record that runs with option ``name`` on (``self`` when ``enabled`` is False).

        Raises:
            ValueError: the rule has no such option.
        """
        if not enabled:
            return self
        if name not in self.options:
            raise ValueError(f"{name}: expected a rule that has this option (the delta rule), "
                             f"got {self.name!r}")
        return self.options[name]

    def activate(self, key: Tensor, value: Tensor, rate: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Activated controls from the slow net's raw ones (shapes unchanged)."""
        return activate(self.key, key), activate(self.value, value), activate(self.rate, rate)

    def __call__(self, W: Optional[Tensor], key: Tensor, value: Tensor, rate: Tensor,
                 post_tanh: bool = False) -> Tensor:
        """``dW/dt`` from the raw controls: activations, then :attr:`field`.

        Args:
            W: ``(..., d, d)`` or ``None`` (the W-independent part: ``W(t0)``).
            key: key logits ``(..., d)``.
            value: value pre-activations ``(..., d)``.
            rate: rate logits ``(..., 1)``.
            post_tanh: run the ``post_tanh`` option (delta rule only).

        Returns:
            ``(..., d, d)``.
        """
        rule = self.option("post_tanh", post_tanh)
        return rule.field(W, *rule.activate(key, value, rate))

"""Register your own fast weight learning rule (docs/maths.md, section 4.6).

::

    import torch, fwplab

    def decaying_hebb(W, key, value, rate):
        update = (rate * value).unsqueeze(-1) * key.unsqueeze(-2)  # b v k^T
        return update if W is None else update - 0.1 * W           # W = None: W(t0)

    fwplab.register_rule("decaying_hebb", decaying_hebb)
    model = fwplab.build_model("decaying_hebb_cde", input_channels=4, output_channels=3)

The field receives activated controls (by default ``key = softmax``, ``value = tanh``,
``rate = sigmoid``, as the delta rule) and ``W = None`` for the initial fast weight.
A rule declared with a structure other than ``"general"`` runs on the fast
fixed-grid solvers; :func:`register_rule` checks on one fixed random draw that the
field equals that structure's formula, so a declaration wrong on that draw fails at
once; the fast solvers compute the structure's formula, never the field, so a field
that agrees only on that draw (a clipped delta rule) runs without its difference.
:func:`load_rules_from` runs a Python file that registers rules
(the command line's ``--rules-from FILE``).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch
from torch import Tensor

from .fast_weight import RULES
from .record import FastWeightRule, structure_field

__all__ = [
    "STRUCTURE_ATOL",
    "register_rule",
    "unregister_rule",
    "load_rules_from",
    "on_registry_change",
]

#: Largest difference (float64) between a field and its declared structure at registration.
STRUCTURE_ATOL = 1e-9

_LISTENERS: list[Callable[[str, Optional[FastWeightRule]], None]] = []


def on_registry_change(listener: Callable[[str, Optional[FastWeightRule]], None]) -> None:
    """Call ``listener(name, record)`` after each registration (``record=None``: removal).

    Lets modules that import :mod:`fwplab.rules` (the model table) follow the registry
    without the rules importing them.
    """
    _LISTENERS.append(listener)


def _notify(name: str, record: Optional[FastWeightRule]) -> None:
    for listener in _LISTENERS:
        listener(name, record)


def _check_field(record: FastWeightRule) -> None:
    """Run the field on random float64 inputs: shapes, and the declared structure."""
    generator = torch.Generator().manual_seed(0)
    batch, d = (2, 3), 4
    raw = [torch.randn(*batch, d, generator=generator, dtype=torch.float64) for _ in range(2)]
    raw.append(torch.randn(*batch, 1, generator=generator, dtype=torch.float64))
    key, value, rate = record.activate(*raw)
    W = torch.randn(*batch, d, d, generator=generator, dtype=torch.float64)
    outputs = {}
    for what, weight in (("W", W), ("None", None)):
        try:
            out = record.field(weight, key, value, rate)
        except Exception as error:  # the user's code: report what it raised, in one line
            raise ValueError(f"field: raised {type(error).__name__}: {error} when called with "
                             f"W={what}, key {tuple(key.shape)}, value {tuple(value.shape)}, "
                             f"rate {tuple(rate.shape)}") from error
        if not isinstance(out, Tensor) or out.shape != (*batch, d, d):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"field: expected dW/dt of shape {(*batch, d, d)} for W={what}, "
                             f"got {got}")
        outputs[what] = out
    if record.structure == "general":
        return
    for what, weight in (("W", W), ("None", None)):
        promised = structure_field(record.structure, record.correction, weight, key, value, rate)
        gap = float((outputs[what] - promised).abs().max())
        if not gap <= STRUCTURE_ATOL:
            raise ValueError(
                f"structure: expected a field of structure {record.structure!r} (correction "
                f"{record.correction!r}), got one that differs from it by {gap:.3g} at "
                f"W={what}; declare structure='general' (solved by torchdiffeq)")


def register_rule(
    name: str,
    field: Callable[..., Tensor],
    *,
    key: str = "softmax",
    value: str = "tanh",
    rate: str = "sigmoid",
    structure: str = "general",
    correction: str = "linear",
    label: Optional[str] = None,
    discrete: Optional[Callable[..., Tensor]] = None,
    replace: bool = False,
) -> FastWeightRule:
    """Add a learning rule to :data:`fwplab.rules.RULES`; its models follow.

    After it, ``build_model(f"{name}_cde", ...)`` and ``build_model(f"{name}_ode", ...)``
    build models with the layout and parameter names of ``delta_cde`` / ``delta_ode``.

    Args:
        name: a Python identifier, not a built-in rule's name.
        field: ``field(W, key, value, rate) -> dW/dt`` on activated controls:
            ``W (..., d, d)`` or ``None`` (then return the W-independent part, which
            gives ``W(t0)``), ``key (..., d)``, ``value (..., d)``, ``rate (..., 1)``.
        key, value, rate: activations of the slow net's raw controls
            (``"softmax"``, ``"tanh"``, ``"sigmoid"``, ``"identity"``).
        structure: ``"general"`` (torchdiffeq), or ``"hebb"`` (``b v k^T``),
            ``"delta"`` (``b g(v - W k) k^T``), ``"oja"`` (``v (b g(k - W^T v))^T``)
            for the fast fixed-grid solvers; checked numerically here.
        correction: ``g`` of the delta and Oja structures: ``"linear"``, ``"tanh"``
            or ``"softmax"``.
        label: a one-line description for widgets; default ``name``.
        discrete: the discrete update ``dW(W, key, value, rate)``, or ``None``.
        replace: allow replacing a rule registered before under ``name``.

    Returns:
        The new :class:`~fwplab.rules.record.FastWeightRule`.

    Raises:
        ValueError: a bad name or activation, a name already taken (without
            ``replace``), a field that fails on small random inputs, returns the
            wrong shape or is not the structure it declares.
    """
    existing = RULES.get(name) if isinstance(name, str) else None
    if existing is not None and existing.builtin:
        raise ValueError(f"name: expected a name other than the built-in rules "
                         f"{sorted(n for n, r in RULES.items() if r.builtin)}, got {name!r}")
    if existing is not None and not replace:
        raise ValueError(f"name: expected a new rule name, got {name!r}, registered already; "
                         "pass replace=True to replace it")
    if label is not None and not isinstance(label, str):
        raise ValueError(f"label: expected a string or None, got {type(label).__name__}")
    record = FastWeightRule(name, field, key=key, value=value, rate=rate, structure=structure,
                            correction=correction, label=label or "", discrete=discrete)
    _check_field(record)
    RULES[name] = record
    _notify(name, record)
    return record


def unregister_rule(name: str) -> None:
    """Remove a rule added with :func:`register_rule` (and its models).

    Raises:
        ValueError: ``name`` is not a registered user rule (built-ins cannot be removed).
    """
    users = sorted(n for n, r in RULES.items() if not r.builtin)
    if not isinstance(name, str) or name not in users:
        raise ValueError(f"name: expected a rule added with register_rule {users}, got {name!r}")
    del RULES[name]
    _notify(name, None)


def load_rules_from(path) -> ModuleType:
    """Run the Python file ``path``, which registers rules with :func:`register_rule`.

    Args:
        path: a ``.py`` file.

    Returns:
        The file as a module (kept in ``sys.modules`` under ``fwplab_user_rules_<stem>``).

    Raises:
        ValueError: the file is missing or not a ``.py`` file, or running it failed.
    """
    file = Path(path)
    if file.suffix != ".py" or not file.is_file():
        raise ValueError(f"rules file: expected an existing .py file, got {str(path)!r}")
    module_name = f"fwplab_user_rules_{file.stem}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise ValueError(f"{file}: running it failed with {type(error).__name__}: {error}") \
            from error
    return module

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

:func:`register_rule` runs the field on :data:`CHECK_DRAWS`, fixed random draws of
raw controls (ordinary ones, rate logits of +40 and -40 where the sigmoid saturates,
key, value and rate logits 30 times larger, a fast weight 10 times larger), each in
float32 and float64, with ``W`` and with ``W=None``. Every output must be a finite
tensor of shape ``(..., d, d)`` with the inputs' dtype and device that needs no
gradient (a rule's own parameters would never be trained). A rule declared with a
structure other than ``"general"`` runs on the fast fixed-grid solvers, which compute
the structure's formula and never call the field; so on every draw the field must
equal that formula (within :data:`STRUCTURE_ATOL` in float64,
:data:`STRUCTURE_ATOL_FLOAT32` in float32, relative to ``1 +`` the formula's largest
entry). A field that agrees only on some draws (a clipped delta rule, one that skips
writes when the rate saturates) is refused with the difference and the draw. The
draws are points, not a proof: a field that differs from its formula only elsewhere
still passes.

:func:`rule_fingerprint` summarises a rule by its outputs on a fixed probe; models
record it so that a model is never rebuilt under a different rule of the same name.
:func:`load_rules_from` runs a Python file that registers rules
(the command line's ``--rules-from FILE``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from .fast_weight import RULES
from .record import FastWeightRule, structure_field

__all__ = [
    "CHECK_DRAWS",
    "STRUCTURE_ATOL",
    "STRUCTURE_ATOL_FLOAT32",
    "register_rule",
    "rule_fingerprint",
    "unregister_rule",
    "load_rules_from",
    "on_registry_change",
]

#: Largest difference between a field and its declared structure's formula in float64,
#: relative to ``1 +`` the formula's largest entry.
STRUCTURE_ATOL = 1e-9
#: The same in float32 (a field may sum in another order than the formula).
STRUCTURE_ATOL_FLOAT32 = 1e-5


class _Draw(NamedTuple):
    """Scales and offsets of the raw controls and ``W`` of one check draw (randn based)."""

    key_scale: float = 1.0
    value_scale: float = 1.0
    rate_scale: float = 1.0
    rate_offset: float = 0.0
    weight_scale: float = 1.0


#: The draws :func:`register_rule` runs every field on, by name, each in float32 and
#: float64 (batch ``(2, 3)``, ``d = 4``).
CHECK_DRAWS: dict[str, _Draw] = {
    "ordinary controls": _Draw(),
    "saturated rates (rate logits near +40)": _Draw(rate_offset=40.0),
    "vanishing rates (rate logits near -40)": _Draw(rate_offset=-40.0),
    "large controls (logits x30)": _Draw(key_scale=30.0, value_scale=30.0, rate_scale=30.0),
    "large fast weight (W x10)": _Draw(weight_scale=10.0),
}

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


def _draw(draw: _Draw, dtype: torch.dtype, seed: int) -> tuple[Tensor, ...]:
    """Raw ``key, value (2, 3, 4)``, ``rate (2, 3, 1)`` and ``W (2, 3, 4, 4)`` of one draw."""
    generator = torch.Generator().manual_seed(seed)
    batch, d = (2, 3), 4

    def normal(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)

    key = draw.key_scale * normal(*batch, d)
    value = draw.value_scale * normal(*batch, d)
    rate = draw.rate_offset + draw.rate_scale * normal(*batch, 1)
    return key, value, rate, draw.weight_scale * normal(*batch, d, d)


def _check_no_parameters(name: str, field: Callable[..., Tensor]) -> None:
    """Refuse a field that is an ``nn.Module`` with trainable parameters (never trained)."""
    if isinstance(field, nn.Module):
        trained = [n for n, p in field.named_parameters() if p.requires_grad]
        if trained:
            raise ValueError(
                f"rule {name!r}: field: expected a function without learnable parameters, got "
                f"a module with parameters {trained}, which no model trains (it is not one of "
                "the model's modules); use constants (tensors that do not require grad)")


def _call_field(record: FastWeightRule, weight: Optional[Tensor], controls: tuple[Tensor, ...],
                where: str) -> Tensor:
    """``record.field(weight, *controls)``, checked: shape, dtype, device, finite, no grad."""
    key, value, rate = controls
    expected = (*key.shape[:-1], key.shape[-1], key.shape[-1])
    prefix = f"rule {record.name!r}: field"
    try:
        with torch.enable_grad():
            out = record.field(weight, key, value, rate)
    except Exception as error:  # the user's code: report what it raised, in one line
        message = " ".join(str(error).split())
        raise ValueError(f"{prefix}: raised {type(error).__name__}: {message} when called "
                         f"with {where}, key {tuple(key.shape)}, value {tuple(value.shape)}, "
                         f"rate {tuple(rate.shape)}") from error
    if not isinstance(out, Tensor) or out.shape != expected:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{prefix}: expected dW/dt of shape {expected} for {where}, got {got}")
    if out.dtype != key.dtype:
        raise ValueError(f"{prefix}: expected dW/dt in the inputs' dtype {key.dtype} for "
                         f"{where}, got {out.dtype}; compute with the given tensors (new ones "
                         "with dtype=key.dtype)")
    if out.device != key.device:
        raise ValueError(f"{prefix}: expected dW/dt on the inputs' device {key.device} for "
                         f"{where}, got {out.device}; create new tensors with "
                         "device=key.device")
    if out.requires_grad:
        raise ValueError(f"{prefix}: expected dW/dt that needs no gradient for inputs that "
                         f"need none ({where}), got one that requires grad: the field holds "
                         "learnable tensors, which no model trains; use constants (detach them)")
    if not bool(torch.isfinite(out).all()):
        bad = "nan" if bool(torch.isnan(out).any()) else "inf"
        raise ValueError(f"{prefix}: expected finite dW/dt for {where}, got {bad}; make the "
                         "field finite for every control the activations can give")
    return out


def _check_field(record: FastWeightRule) -> None:
    """Run the field on every draw of :data:`CHECK_DRAWS` in float32 and float64.

    Checks each output (:func:`_call_field`) and, for a structure other than
    ``"general"``, that it equals the structure's formula.
    """
    _check_no_parameters(record.name, record.field)
    tolerances = {torch.float64: STRUCTURE_ATOL, torch.float32: STRUCTURE_ATOL_FLOAT32}
    for dtype, tolerance in tolerances.items():
        for seed, (label, draw) in enumerate(CHECK_DRAWS.items()):
            key, value, rate, W = _draw(draw, dtype, seed)
            activated = record.activate(key, value, rate)
            for what, weight in (("W", W), ("None", None)):
                where = f"W={what} on the draw '{label}' in {str(dtype)[6:]}"
                out = _call_field(record, weight, activated, where)
                if record.structure == "general":
                    continue
                promised = structure_field(record.structure, record.correction, weight,
                                           *activated)
                gap = float((out - promised).abs().max())
                limit = tolerance * (1.0 + float(promised.abs().max()))
                if not gap <= limit:
                    raise ValueError(
                        f"rule {record.name!r}: structure: expected a field equal to the "
                        f"{record.structure!r} formula (correction {record.correction!r}), "
                        f"which the fast solvers compute instead of the field, got one that "
                        f"differs from it by {gap:.3g} (tolerance {limit:.3g}) at {where}; "
                        "declare structure='general' (solved by torchdiffeq)")


def rule_fingerprint(record: FastWeightRule) -> str:
    """A short hash of what ``record`` computes: its outputs on a fixed probe.

    The probe is fixed float64 raw controls on the CPU (no random generator involved)
    for a batch of 2 with ``d = 3``, with a fixed ``W`` and with ``W=None``; the outputs,
    rounded to 8 significant digits, and the record's activations, structure and
    correction are hashed (SHA-256, first 16 hex digits). A field that reads a global
    (a decay constant reassigned after registering) gets a new fingerprint when the
    global changes, which a hash of its source would miss.

    Raises:
        ValueError: the field fails on the probe (as :func:`register_rule` would).
    """
    digest = hashlib.sha256(repr((record.activations, record.structure,
                                  record.correction)).encode())
    with torch.device("cpu"):  # also inside a caller's torch.device("meta") (shape probes)
        options = dict(dtype=torch.float64)
        grid = torch.arange(1, 2 * 3 + 1, **options).reshape(2, 3)
        key, value = torch.sin(1.3 * grid), torch.cos(0.7 * grid)
        rate = torch.tensor([[0.4], [-1.1]], **options)
        W = torch.sin(torch.arange(2 * 3 * 3, **options)).reshape(2, 3, 3)
        activated = record.activate(key, value, rate)
        for what, weight in (("W", W), ("None", None)):
            out = _call_field(record, weight, activated, f"W={what} on the fingerprint probe")
            digest.update(",".join(f"{v + 0.0:.7e}" for v in out.flatten().tolist()).encode())
    return digest.hexdigest()[:16]


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
            for the fast fixed-grid solvers; checked on every draw of :data:`CHECK_DRAWS`.
        correction: ``g`` of the delta and Oja structures: ``"linear"``, ``"tanh"``
            or ``"softmax"``.
        label: a one-line description for widgets; default ``name``.
        discrete: the discrete update ``dW(W, key, value, rate)``, or ``None``.
        replace: allow replacing a rule registered before under ``name``.

    Returns:
        The new :class:`~fwplab.rules.record.FastWeightRule`.

    Raises:
        ValueError: a bad name or activation, a name already taken (without
            ``replace``), a field with learnable parameters, or one that on a draw of
            :data:`CHECK_DRAWS` fails, returns the wrong shape, dtype or device,
            non-finite values or a tensor that requires grad, or differs from the
            structure it declares; every message names the rule.
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
        ValueError: the file is missing or not a ``.py`` file, running it failed, or it
            called ``sys.exit`` (which would end the program having done nothing).
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
    except SystemExit as stop:
        del sys.modules[module_name]
        raise ValueError(f"{file}: running it called sys.exit({stop.code!r}); a rules file "
                         "must only define and register rules") from None
    except Exception as error:
        del sys.modules[module_name]
        message = " ".join(str(error).split())
        raise ValueError(f"{file}: running it failed with {type(error).__name__}: {message}") \
            from error
    return module

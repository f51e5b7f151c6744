"""The paper's continuous-time Fast Weight Programmers and the Neural CDE baseline.

Every model maps raw observations ``x`` of shape ``(batch, time, channels)``
(NaN where missing; optional shared ``times (time,)`` and per-series
``lengths (batch,)``) to logits ``(batch, classes)``. Build them by name with
:func:`build_model`; load weights trained with the official code with
:func:`load_official_state_dict` (defined in :mod:`fwplab.official`, re-exported here).

A continuous FWP (docs/maths.md, section 4) has ``heads`` fast weight matrices
``W_h(t)`` of size ``d x d`` (``hidden = heads * d``) driven by the input path
``x(t)`` and its derivative ``dx/dt(t)``. ``W`` maps keys to values (rows index
the value, columns the key)::

    ODE-driven (hebb_ode, oja_ode, delta_ode):
        u(t) = LN(A x(t) + a);  [k, v, b] = B u(t) + c         (per head: d, d, 1)
    CDE-driven, layout "keys_from_derivative" (delta_cde; docs/maths.md, section 4.2):
        u(t) = LN(A dx/dt(t) + a);  [k, b] = B u(t) + c;  v = V x(t) + e
    CDE-driven, layout "keys_from_path" (hebb_cde, oja_cde as the official code
    builds them; docs/maths.md, section 4.4):
        u(t) = LN(A x(t) + a);  [k, b] = B u(t) + c;  v = D dx/dt(t) + f
    (CDE option v_layernorm: v <- V2 LN(v) + e2)

    dW/dt = rule(W, k, v, b)                 (fwplab.rules.fast_weight)
    W(t0) = rule(None, k(t0), v(t0), b(t0))  (the W-free part of the update)

The rule is a record of :data:`fwplab.rules.RULES`: ``hebb``, ``oja`` (the softmax
Oja rule), ``delta`` or one added with :func:`fwplab.rules.register_rule` (its
models ``NAME_cde`` and ``NAME_ode`` then appear in :data:`MODELS`); in the
``keys_from_path`` layout Hebb is the official ``hebb_unsquashed`` rule
``dW/dt = (b v) softmax(k)^T``. Each series is read out at its own last
observation time ``T``, the query computed from the same input as the keys::

    q = softmax(Q u(T)), per head
    o = concat_h W_h(T) q_h      (keys_from_path: concat_h W_h(T)^T q_h)
    z = P o;  z = z + FF(LN(z));  logits = L z
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torchcde
from torch import Tensor, nn

from . import kernels, solvers
from .baselines import DiscreteDeltaFWP, GRUBaseline
from .paths import (INTERPOLATIONS, ObservedBatch, batch_coeffs, check_coeffs, check_observations,
                    control_path, integration_grid)
from .official import OFFICIAL_NAMES, OFFICIAL_UNUSED, load_official_state_dict
from .rules import RULES, FastWeightRule, get_rule, on_registry_change, rule_fingerprint
from .solvers import SOLVERS, SolverOptions

__all__ = [
    "MODELS",
    "SOLVERS",
    "DIVERGENCE_BOUND",
    "NonFiniteOutputError",
    "LAYOUTS",
    "SolverOptions",
    "ContinuousFWP",
    "NeuralCDE",
    "build_model",
    "check_model_config",
    "OFFICIAL_NAMES",
    "OFFICIAL_UNUSED",
    "load_official_state_dict",
    "count_parameters",
]


class NonFiniteOutputError(ValueError):
    """A forward pass whose logits are not finite, or whose fast weights diverge.

    The message gives the inputs' scale, or for diverging fast weights the rule, the
    method and step size, and the fix.
    """


#: Largest Frobenius norm of one head's fast weight that :meth:`ContinuousFWP.forward`
#: accepts for a rule whose field depends on ``W`` (every structure but ``"hebb"``): a
#: stable rule of this package keeps ``|W|_F`` near ``sqrt(d) / decay``, so only a
#: diverging solve (a step beyond the rule's stability limit) gets this far.
DIVERGENCE_BOUND = 1e6


#: Largest size (channels, heads, layers) a model accepts: one weight matrix of
#: ``MAX_SIZE**2`` float32 entries already needs 16 EB.
MAX_SIZE = 2**31


def _check_sizes(**sizes) -> None:
    """Refuse sizes that are not positive integers (``None`` passes where it is a default)."""
    for name, value in sizes.items():
        if value is None and name == "ff_channels":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            default = " or None" if name == "ff_channels" else ""
            raise ValueError(f"{name}: expected a positive integer{default}, got {value!r}")
        if value > MAX_SIZE:
            raise ValueError(f"{name}: expected at most {MAX_SIZE} (more needs more memory "
                             f"than any machine has), got {value}")


class _SolverOption:
    """A model attribute read from, and written into, its frozen :class:`SolverOptions`."""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, model, owner=None):
        return self if model is None else getattr(model.solver_options, self.name)

    def __set__(self, model, value) -> None:
        model.solver_options = dataclasses.replace(model.solver_options, **{self.name: value})


def _check_input_dtype(module: nn.Module, x: Tensor) -> None:
    """Refuse inputs whose dtype differs from the model's weights (one line, not torch's)."""
    weight = next(module.parameters(), None)
    if weight is not None and x.dtype != weight.dtype:
        raise ValueError(f"x: the model's weights are {weight.dtype} but x is {x.dtype}; "
                         f"convert x (x.to({weight.dtype})) or the model (model.to(...))")


def _check_finite_output(module: nn.Module, out: Tensor, batch: ObservedBatch) -> Tensor:
    """Return ``out``, or raise :class:`NonFiniteOutputError` saying what is out of scale."""
    if bool(torch.isfinite(out).all()):
        return out
    if not all(bool(torch.isfinite(p).all()) for p in module.parameters()):
        raise NonFiniteOutputError("model: its weights are not finite, so are its logits")
    largest = float(torch.nan_to_num(batch.x.abs(), nan=0.0).max())
    gaps = batch.times[1:] - batch.times[:-1]
    raise NonFiniteOutputError(
        f"x: the logits are not finite for inputs of magnitude up to {largest:.3g} and "
        f"observation times {float(gaps.min()):.3g} to {float(gaps.max()):.3g} apart; if these "
        "are large, standardise the inputs (fwplab.load_dataset does) and rescale the times, "
        "otherwise the weights are out of scale")


#: CDE layouts of :class:`ContinuousFWP` (see its ``layout`` argument).
LAYOUTS = ("keys_from_derivative", "keys_from_path")


def _needs_path_gradient(pieces: kernels.PathPieces) -> bool:
    """Whether a gradient must flow into the path (the fused kernel gives none)."""
    return torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (pieces.coefficients, pieces.slopes,
                                                    pieces.offset))


class SlowNet(nn.Module):
    """The slow net: controls (key logits, value pre-activations, rate logits) from the path.

    Args:
        driver: ``"ode"`` (everything from ``x``) or ``"cde"``.
        input_channels: ``C``.
        hidden_channels: ``H = heads * d``.
        num_heads: number of heads.
        v_layernorm: CDE only: ``v <- V2 LN(v) + e2``.
        layout: CDE only, one of :data:`LAYOUTS`: ``"keys_from_derivative"`` (keys
            and rates from ``dx/dt``, values ``V x + e``) or ``"keys_from_path"``
            (keys and rates from ``x``, values ``D dx/dt + f``).
    """

    def __init__(
        self,
        driver: str,
        input_channels: int,
        hidden_channels: int,
        num_heads: int,
        v_layernorm: bool = False,
        layout: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.driver = driver
        self.layout = layout
        self.num_heads = num_heads
        self.head_dim = hidden_channels // num_heads
        self.input_proj = nn.Linear(input_channels, hidden_channels)
        self.input_norm = nn.LayerNorm(hidden_channels)
        if driver == "ode":
            self.kvb_proj = nn.Linear(hidden_channels, num_heads * (2 * self.head_dim + 1))
        else:
            self.kb_proj = nn.Linear(hidden_channels, num_heads * (self.head_dim + 1))
            if layout == "keys_from_path":
                self.derivative_value_proj = nn.Linear(input_channels, hidden_channels)
            else:
                self.value_proj = nn.Linear(input_channels, hidden_channels)
            if v_layernorm:
                self.value_norm = nn.LayerNorm(hidden_channels)
                self.value_net = nn.Linear(hidden_channels, hidden_channels)
        self.v_layernorm = v_layernorm

    @property
    def uses_derivative(self) -> bool:
        """Whether the controls need ``dx/dt`` (every CDE layout)."""
        return self.driver == "cde"

    @property
    def keys_from_derivative(self) -> bool:
        """Whether keys, rates and queries come from ``dx/dt`` (values then from ``x``)."""
        return self.driver == "cde" and self.layout != "keys_from_path"

    def features(self, x: Tensor, dx: Optional[Tensor]) -> Tensor:
        """``u = LN(A . + a)`` of the keys' input, ``dx/dt`` or ``x``: ``(..., C) -> (..., H)``."""
        return self.input_norm(self.input_proj(dx if self.keys_from_derivative else x))

    def values(self, x: Tensor, dx: Optional[Tensor]) -> Tensor:
        """CDE value pre-activations ``V x + e`` or ``D dx/dt + f``: ``(..., C) -> (..., H)``."""
        if self.keys_from_derivative:
            value = self.value_proj(x)
        else:
            value = self.derivative_value_proj(dx)
        if self.v_layernorm:
            value = self.value_net(self.value_norm(value))
        return value

    def fused(self) -> Optional[kernels.FusedSlowNet]:
        """This slow net as the fused kernel computes it, or ``None`` (``v_layernorm``)."""
        if self.v_layernorm:
            return None
        heads, d = self.num_heads, self.head_dim
        norm = self.input_norm
        feature = "dx" if self.keys_from_derivative else "x"
        if self.driver == "ode":
            joint, value = self.kvb_proj, None
            key, value_at, rate = (0, 0, 2 * d + 1), (0, d, 2 * d + 1), (0, 2 * d, 2 * d + 1)
            value_input = None
        else:
            joint = self.kb_proj
            value = self.value_proj if self.keys_from_derivative else self.derivative_value_proj
            key, value_at, rate = (0, 0, d + 1), (1, 0, d), (0, d, d + 1)
            value_input = "x" if self.keys_from_derivative else "dx"
        return kernels.FusedSlowNet(
            feature, value_input, self.input_proj.weight, self.input_proj.bias, norm.weight,
            norm.bias, norm.eps, joint.weight, joint.bias,
            None if value is None else value.weight, None if value is None else value.bias,
            key, value_at, rate, heads)

    def forward(self, x: Tensor, dx: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Raw controls at points of the path.

        Args:
            x: path values ``(..., C)``.
            dx: path derivatives ``(..., C)`` (CDE) or ``None`` (ODE).

        Returns:
            key logits ``(..., heads, d)``, value pre-activations ``(..., heads, d)``
            and rate logits ``(..., heads, 1)``.
        """
        u = self.features(x, dx)
        heads, d = self.num_heads, self.head_dim
        # One matrix product for the joint projection; the controls are column slices of
        # it, which the compiled kernel reads in place (and returns one gradient for).
        if self.driver == "ode":
            key, value, rate = self.kvb_proj(u).unflatten(-1, (heads, 2 * d + 1)).split(
                (d, d, 1), -1)
            return key, value, rate
        key, rate = self.kb_proj(u).unflatten(-1, (heads, d + 1)).split((d, 1), -1)
        return key, self.values(x, dx).unflatten(-1, (heads, d)), rate


class FeedForward(nn.Module):
    """Transformer feed-forward block ``z + Dropout(L2 Dropout(ReLU(L1 LN(z))))``."""

    def __init__(self, channels: int, ff_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.hidden = nn.Linear(channels, ff_channels)
        self.output = nn.Linear(ff_channels, channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, z: Tensor) -> Tensor:
        return z + self.dropout(self.output(self.dropout(torch.relu(self.hidden(self.norm(z))))))


class _FastWeightField(nn.Module):
    """``dW/dt`` at time ``t`` for torchdiffeq; holds every parameter it uses (adjoint).

    ``rule`` is the record that runs (options such as ``post_tanh`` already chosen).
    """

    def __init__(self, slow_net: SlowNet, rule: FastWeightRule, path) -> None:
        super().__init__()
        self.slow_net = slow_net
        self.rule = rule
        self.path = path

    def forward(self, t: Tensor, W: Tensor) -> Tensor:
        dx = self.path.derivative(t) if self.slow_net.uses_derivative else None
        key, value, rate = self.slow_net(self.path.evaluate(t), dx)
        return self.rule(W, key, value, rate)


class ContinuousFWP(nn.Module):
    """A continuous-time Fast Weight Programmer (docs/maths.md, section 4).

    Args:
        rule: a name in :data:`fwplab.rules.RULES`: ``"hebb"``, ``"oja"`` (the softmax
            Oja rule), ``"delta"`` or a rule added with :func:`fwplab.rules.register_rule`.
        driver: ``"ode"`` or ``"cde"``.
        input_channels: channels of ``x`` (the time channel included).
        output_channels: number of classes.
        hidden_channels: ``H = num_heads * d``.
        num_heads: number of fast weight matrices.
        ff_channels: width of the feed-forward block (a positive integer); ``None``:
            ``4 * H``.
        interpolation: ``"natural_cubic"`` (the paper's), ``"hermite_cubic"`` or ``"linear"``.
        post_tanh: delta rule only: squash after subtracting ``W k``.
        v_layernorm: CDE only: LayerNorm and a linear map on the values.
        layout: CDE only (ODE models take ``None`` only), one of :data:`LAYOUTS`:
            ``"keys_from_derivative"``: keys and rates from ``dx/dt``, values from
            ``x``, read-out ``W q``, the Hebb rule ``hebb`` (``sigma(b) tanh(v)``);
            ``"keys_from_path"``: the official ``FastWeightCDE`` (docs/maths.md,
            section 4.4): keys and rates from ``x``, values from ``dx/dt``, read-out
            ``W^T q`` with the query from ``x(T)``, Hebb is ``hebb_unsquashed``
            (``b v``: rate logit, raw value). ``None`` picks the rule record's
            ``default_layout``, the layout the official code gives the rule:
            ``keys_from_derivative`` for delta and registered rules,
            ``keys_from_path`` for Hebb and Oja. Every rule runs in either layout;
            delta in ``keys_from_path`` (which the official code does not have)
            learns ``W k ~ v``, values of the derivative from keys of the path.
        dropout: dropout after the out projection and in the feed-forward block.
        adjoint: continuous adjoint gradients (``odeint_adjoint``), as the paper.
        method: any torchdiffeq method.
        step_size: largest solver step; default the smallest observation gap.
        rtol, atol: tolerances of adaptive methods.
        solver: how the fast weight ODE is solved (:data:`SOLVERS`; chosen by
            :func:`fwplab.solvers.select_solver`):
            ``"reference"`` (torchdiffeq, any method, ``adjoint`` honoured);
            ``"stepwise"``, ``"fast"`` or ``"kernel"`` (fixed-grid methods only:
            controls precomputed at every stage, exact backprop; see
            :mod:`fwplab.solvers`); ``"fused"`` (the compiled kernel computing the
            slow net's controls itself inside its time loop, no gradient into the
            inputs; not with ``v_layernorm`` or heads that do not divide
            :func:`fwplab.kernels.lanes`); ``"auto"`` picks ``"fused"`` (else
            ``"kernel"``) on CPU for float32/float64 when the kernel builds
            (environment variable ``FWPLAB_KERNEL=0`` turns it off), else ``"fast"``,
            and the reference for adaptive methods, ``adjoint=True`` or a rule of the
            ``"general"`` structure (which refuses the fixed-grid solvers).
        checkpoint_every: ``"fast"``, ``"kernel"`` and ``"fused"``: keep the fast
            weights every this many steps and recompute the others in the backward
            (bounded memory); ``None`` keeps every step (``"fast"``) or every 16
            (the kernels).

    The solver arguments live in :attr:`solver_options` (a
    :class:`fwplab.solvers.SolverOptions`); ``model.method`` and the others read and
    replace them there.

    Raises:
        ValueError: an unknown rule, driver, layout, interpolation, method or solver,
            sizes that are not positive integers, an option the rule or driver does not
            have, a fixed-grid solver for a general rule.
    """

    method = _SolverOption()
    step_size = _SolverOption()
    rtol = _SolverOption()
    atol = _SolverOption()
    adjoint = _SolverOption()
    solver = _SolverOption()
    checkpoint_every = _SolverOption()

    def __init__(
        self,
        rule: str,
        driver: str,
        input_channels: int,
        output_channels: int,
        hidden_channels: int = 64,
        num_heads: int = 16,
        ff_channels: Optional[int] = None,
        interpolation: str = "natural_cubic",
        post_tanh: bool = False,
        v_layernorm: bool = False,
        layout: Optional[str] = None,
        dropout: float = 0.0,
        adjoint: bool = False,
        method: str = "rk4",
        step_size: Optional[float] = None,
        rtol: float = 1e-3,
        atol: float = 1e-4,
        solver: str = "auto",
        checkpoint_every: Optional[int] = None,
    ) -> None:
        super().__init__()
        record = get_rule(rule)
        if driver not in ("ode", "cde"):
            raise ValueError(f"driver: expected 'ode' or 'cde', got {driver!r}")
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"layout: expected one of {LAYOUTS} or None, got {layout!r}")
        if layout is not None and driver != "cde":
            raise ValueError(f"layout: expected None for the ODE-driven {rule}_{driver}, "
                             f"got {layout!r}")
        if driver == "cde" and layout is None:
            layout = record.default_layout
        _check_sizes(input_channels=input_channels, output_channels=output_channels,
                     hidden_channels=hidden_channels, num_heads=num_heads,
                     ff_channels=ff_channels)
        if hidden_channels % num_heads:
            raise ValueError(f"hidden_channels: expected a multiple of num_heads "
                             f"({num_heads}), got {hidden_channels}")
        record.option("post_tanh", post_tanh)  # refuses the option where the rule lacks it
        if v_layernorm and driver != "cde":
            raise ValueError(f"v_layernorm: expected False for the ODE-driven {rule}_{driver}, "
                             "got True")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation: expected one of {sorted(INTERPOLATIONS)}, got {interpolation!r}"
            )
        self.solver_options = SolverOptions(method=method, step_size=step_size, rtol=rtol,
                                            atol=atol, adjoint=adjoint, solver=solver,
                                            checkpoint_every=checkpoint_every)
        self.solver_options.check_rule(record)
        self.rule = rule
        self.driver = driver
        self.layout = layout
        self.input_channels = input_channels
        self.output_channels = output_channels
        self.hidden_channels = hidden_channels
        self.num_heads = num_heads
        self.head_dim = hidden_channels // num_heads
        self.interpolation = interpolation
        self.post_tanh = post_tanh

        self.slow_net = SlowNet(driver, input_channels, hidden_channels, num_heads, v_layernorm,
                                layout)
        self.query_proj = nn.Linear(hidden_channels, hidden_channels)
        self.out_proj = nn.Linear(hidden_channels, hidden_channels)
        self.dropout = nn.Dropout(dropout)
        self.feed_forward = FeedForward(hidden_channels, ff_channels or 4 * hidden_channels, dropout)
        self.classifier = nn.Linear(hidden_channels, output_channels)

    @property
    def name(self) -> str:
        return f"{self.rule}_{self.driver}"

    def extra_repr(self) -> str:
        layout = f", layout={self.layout!r}" if self.layout is not None else ""
        return (f"rule={self.rule!r}, driver={self.driver!r}{layout}, heads={self.num_heads}, "
                f"head_dim={self.head_dim}, method={self.method!r}, adjoint={self.adjoint}")

    # ----------------------------------------------------------------- solving
    @property
    def fast_weight_rule(self) -> FastWeightRule:
        """The record that runs: the rule's, with ``post_tanh`` and the layout's variant.

        In the ``keys_from_path`` layout the Hebb rule is the official
        ``hebb_unsquashed``. Read from :data:`fwplab.rules.RULES` at each call, so a
        rule registered again with ``replace=True`` takes effect.
        """
        record = get_rule(self.rule).option("post_tanh", self.post_tanh)
        if self.layout is not None and self.layout in record.options:
            record = record.options[self.layout]
        return record

    def uses_fast_path(self) -> bool:
        """Whether a fixed-grid solver with precomputed controls runs (see ``solver``)."""
        return solvers.uses_fast_path(self.fast_weight_rule, self.solver_options)

    def selected_solver(self, device=None, dtype: Optional[torch.dtype] = None) -> str:
        """The solver that runs for inputs on ``device`` with ``dtype``.

        Args:
            device: default the device of the model's parameters.
            dtype: default the dtype of the model's parameters.

        Returns:
            ``"reference"``, ``"stepwise"``, ``"fast"``, ``"kernel"`` or ``"fused"``
            (:func:`fwplab.solvers.select_solver`; ``"auto"`` fuses the slow net into
            the kernel unless it has ``v_layernorm`` or its heads do not divide
            :func:`fwplab.kernels.lanes`).
        """
        parameter = next(self.parameters())
        device = torch.device(device) if device is not None else parameter.device
        dtype = dtype or parameter.dtype
        fuses = kernels.supports(device, dtype) and self._fuses(dtype)
        return solvers.select_solver(self.fast_weight_rule, self.solver_options, device, dtype,
                                     fuses=fuses)

    def _check_fuses(self, net: Optional[kernels.FusedSlowNet], pieces: kernels.PathPieces,
                     dtype: torch.dtype) -> None:
        """Refuse ``solver="fused"`` where the fused kernel cannot run ``net`` (this slow
        net's :meth:`SlowNet.fused`), in one line."""
        if net is None:
            raise ValueError("solver: 'fused' runs slow nets without v_layernorm; use 'kernel'")
        if not kernels.fuses_heads(self.num_heads, dtype):
            raise ValueError(f"solver: 'fused' needs num_heads dividing {kernels.lanes(dtype)} "
                             f"in {dtype}, got {self.num_heads}; use 'kernel'")
        if _needs_path_gradient(pieces):
            raise ValueError("solver: 'fused' gives no gradient with respect to the inputs "
                             "(they require grad); use 'kernel'")

    def _fuses(self, dtype: torch.dtype) -> bool:
        """Whether the fused kernel can run this model's slow net in ``dtype``."""
        return self.slow_net.fused() is not None and kernels.fuses_heads(self.num_heads, dtype)

    def _path(self, batch: ObservedBatch, coeffs: Optional[Tensor]):
        if coeffs is None:
            coeffs = batch_coeffs(batch, self.interpolation)
        else:
            check_coeffs(coeffs, batch.x, self.interpolation)
        return control_path(coeffs, batch.times, self.interpolation)

    def _stage_controls(self, path, points: Tensor) -> solvers.StageControls:
        """The slow net's raw controls at ``points (points,)`` in one batched pass, time first.

        Returns:
            :class:`fwplab.solvers.StageControls`, each ``(points, batch, heads, .)``.
        """
        x, dx = path.at_points(points, derivative=self.slow_net.uses_derivative)
        return solvers.StageControls(*self.slow_net(x, dx))

    def _fast_weights(self, path, times: Tensor, at: Optional[Tensor] = None) -> Tensor:
        """The fast weights at the observation times.

        Args:
            path: the control path.
            times: observation times ``(time,)``.
            at: optional index into ``times`` for each series ``(batch,)``.

        Returns:
            ``W`` at every observation time, ``(time, batch, heads, d, d)``, or with
            ``at`` each series' ``W`` at its own time, ``(batch, heads, d, d)``
            (the fast paths then compute and keep only those states). ``W`` maps
            keys to values in every layout.
        """
        t0 = times[0]
        dx0 = path.derivative(t0) if self.slow_net.uses_derivative else None
        key, value, rate = self.slow_net(path.evaluate(t0), dx0)
        rule = self.fast_weight_rule
        W0 = rule(None, key, value, rate)
        series = torch.arange(W0.shape[0], device=W0.device)
        grid = integration_grid(times, self.step_size)
        solver = self.selected_solver(W0.device, W0.dtype)
        if solver == "reference":
            field = _FastWeightField(self.slow_net, rule, path)
            W = solvers.solve_reference(
                field, W0, times, grid, self.method, self.adjoint, self.rtol, self.atol
            )
            return W if at is None else W[at, series]
        keep = torch.searchsorted(grid, times)
        if at is not None:
            keep, position = torch.unique(keep[at], return_inverse=True)
        points = solvers.stage_points(grid, self.method)
        pieces = path.pieces(points) if solver == solvers.FUSED else None
        if pieces is not None and _needs_path_gradient(pieces) and self.solver == "auto":
            solver, pieces = "kernel", None  # the fused kernel differentiates no path
        if pieces is not None:
            net = self.slow_net.fused()
            self._check_fuses(net, pieces, W0.dtype)
            W = solvers.solve_fused(rule, net, pieces, W0,
                                    grid[1:] - grid[:-1], self.method, keep,
                                    self.checkpoint_every)
            return W if at is None else W[position, series]
        controls = self._stage_controls(path, points)
        W = solvers.solve_fixed_grid(
            rule, controls, W0, grid[1:] - grid[:-1], self.method, keep,
            backend=solver, checkpoint_every=self.checkpoint_every,
        )
        return W if at is None else W[position, series]

    # ---------------------------------------------------------------- read-out
    def query(self, path, at: Tensor) -> Tensor:
        """``softmax(Q u(t))`` per head at ``at (time,)``: ``(batch, time, heads, d)``.

        ``path`` is the model's control path of the series (:func:`fwplab.paths.control_path`
        of their interpolation coefficients).

        ``u`` is the keys' feature: ``LN(A x + a)`` (ODE, ``keys_from_path``) or
        ``LN(A dx/dt + a)`` (``keys_from_derivative``).
        """
        dx = path.derivative(at) if self.slow_net.uses_derivative else None
        u = self.slow_net.features(path.evaluate(at), dx)
        q = self.query_proj(u).reshape(*u.shape[:-1], self.num_heads, self.head_dim)
        return torch.softmax(q, -1)

    def read_out(self, W: Tensor, q: Tensor) -> Tensor:
        """``W (..., heads, d, d), q (..., heads, d) -> logits (..., classes)``.

        ``o = concat_h W_h q_h``, or ``concat_h W_h^T q_h`` in the ``keys_from_path``
        layout, then the out projection, the feed-forward block and the classifier.
        """
        if self.layout == "keys_from_path":
            o = torch.matmul(q.unsqueeze(-2), W).squeeze(-2).flatten(-2)
        else:
            o = torch.matmul(W, q.unsqueeze(-1)).squeeze(-1).flatten(-2)
        z = self.feed_forward(self.dropout(self.out_proj(o)))
        return self.classifier(z)

    def fast_weight_trajectory(
        self,
        x: Tensor,
        times: Optional[Tensor] = None,
        lengths: Optional[Tensor] = None,
        coeffs: Optional[Tensor] = None,
    ) -> Tensor:
        """The fast weights at every observation time.

        Args: as :meth:`forward`.

        Returns:
            ``W(t)`` of shape ``(batch, time, heads, d, d)``, as the model stores
            it: ``W`` maps keys to values (the ``keys_from_path`` layout reads it
            out transposed). Values after a series' end continue the solution on
            the shared grid.
        """
        batch = check_observations(x, times, lengths, self.input_channels)
        _check_input_dtype(self, batch.x)
        path = self._path(batch, coeffs)
        return self._fast_weights(path, batch.times).movedim(0, 1)

    def forward(
        self,
        x: Tensor,
        times: Optional[Tensor] = None,
        lengths: Optional[Tensor] = None,
        coeffs: Optional[Tensor] = None,
        stream: bool = False,
    ) -> Tensor:
        """Logits at each series' last observation time.

        Args:
            x: observations ``(batch, time, channels)``, NaN where missing, the
                time channel included when the data has one.
            times: shared observation times ``(time,)``; default ``0 .. time - 1``.
            lengths: observations per series ``(batch,)``; default all ``time``.
            coeffs: precomputed :func:`fwplab.paths.interpolation_coeffs` of
                ``x`` (same ``times``, ``lengths`` and interpolation).
            stream: return the read-out at every observation time instead.

        Returns:
            ``(batch, classes)``, or ``(batch, time, classes)`` with ``stream``.

        Raises:
            ValueError: bad inputs (shapes, dtype other than the weights', no series);
                :class:`NonFiniteOutputError` when the logits are not finite (inputs
                far out of scale, e.g. values near 1e19 or times 1e9 apart) or the fast
                weights diverge (not finite, or a head's Frobenius norm beyond
                :data:`DIVERGENCE_BOUND`, for rules whose field depends on ``W``): a
                rule too stiff for the step, e.g. ``dW/dt = b v k^T - 3.5 W`` with
                ``rk4`` at step 1; the message names the rule, the step and the fix.
        """
        batch = check_observations(x, times, lengths, self.input_channels)
        _check_input_dtype(self, batch.x)
        path = self._path(batch, coeffs)
        if stream:
            W = self._fast_weights(path, batch.times).movedim(0, 1)  # (batch, time, heads, d, d)
            self._check_fast_weights(W, batch)
            q = self.query(path, batch.times)
            return _check_finite_output(self, self.read_out(W, q), batch)
        last = batch.lengths - 1
        # Only each series' final fast weights and query: the fast paths then compute no
        # other states, and the query is evaluated at the distinct final times only.
        ends, position = torch.unique(last, return_inverse=True)
        series = torch.arange(last.shape[0], device=last.device)
        q = self.query(path, batch.times[ends])[series, position]
        W = self._fast_weights(path, batch.times, at=last)
        self._check_fast_weights(W, batch)
        return _check_finite_output(self, self.read_out(W, q), batch)

    def _check_fast_weights(self, W: Tensor, batch: ObservedBatch) -> None:
        """Raise :class:`NonFiniteOutputError` naming the rule and the step when ``W`` diverges.

        ``W (..., d, d)`` diverges when it is not finite or some head's Frobenius norm
        exceeds :data:`DIVERGENCE_BOUND`; rules of the ``"hebb"`` structure are not
        checked (their field does not depend on ``W``, so their solve cannot diverge;
        non-finite logits then come from the inputs, which the logits' check reports).
        """
        record = self.fast_weight_rule
        if record.structure == "hebb":
            return
        weights = W.detach()
        # One pass and one sync in W's dtype on every forward; the float64 norm and the
        # finiteness check only once that says W is beyond the bound (or NaN).
        if float(torch.linalg.matrix_norm(weights).amax()) <= DIVERGENCE_BOUND:
            return
        finite = bool(torch.isfinite(weights).all())
        norm = (float(torch.linalg.matrix_norm(weights.double()).max()) if finite
                else float("inf"))
        if norm <= DIVERGENCE_BOUND:
            return
        if not all(bool(torch.isfinite(p).all()) for p in self.parameters()):
            raise NonFiniteOutputError("model: its weights are not finite, so are its logits")
        gaps = batch.times[1:] - batch.times[:-1]
        spacing = (f"observation times {float(gaps.min()):.3g} to {float(gaps.max()):.3g} apart"
                   if gaps.numel() else "one observation time")
        largest = float(torch.nan_to_num(batch.x.abs(), nan=0.0).max())
        if solvers.is_fixed_grid(self.method) and gaps.numel():
            grid = integration_grid(batch.times, self.step_size)
            step = float((grid[1:] - grid[:-1]).max())
            solve = f"method {self.method!r} at step size {step:.3g}"
            fix = (f"pass a smaller step_size (model.step_size = {step / 4:.3g}; the rule's "
                   "stability limit: step times its decay rate below 2 for 'euler', 2.78 for "
                   "'rk4') or rescale the times (divide them by a constant)")
        else:
            solve = f"method {self.method!r} (rtol {self.rtol:g}, atol {self.atol:g})"
            fix = "tighten rtol and atol or rescale the times (divide them by a constant)"
        if finite:
            raise NonFiniteOutputError(
                f"{self.name}: the fast weights of rule {record.name!r} reach Frobenius norm "
                f"{norm:.3g} (beyond {DIVERGENCE_BOUND:.0e}) with {solve}, {spacing}: the rule "
                f"is too stiff for this step or grows without bound; {fix}")
        raise NonFiniteOutputError(
            f"x: the logits are not finite for inputs of magnitude up to {largest:.3g} and "
            f"{spacing}: the fast weights of rule {record.name!r} diverge with {solve}; if "
            "the inputs or the gaps are large, standardise the inputs (fwplab.load_dataset "
            f"does) and rescale the times, otherwise the rule is too stiff for this step: {fix}")


class _NeuralCDEField(nn.Module):
    """``f(z) = tanh(MLP(z))`` reshaped to ``(hidden, input)``."""

    def __init__(self, input_channels: int, hidden_channels: int, width: int, depth: int) -> None:
        super().__init__()
        self.input_channels = input_channels
        self.hidden_channels = hidden_channels
        layers: list[nn.Module] = []
        size = hidden_channels
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        layers.append(nn.Linear(size, hidden_channels * input_channels))
        self.mlp = nn.Sequential(*layers)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        out = torch.tanh(self.mlp(z))
        return out.reshape(*z.shape[:-1], self.hidden_channels, self.input_channels)


class NeuralCDE(nn.Module):
    """The Neural CDE baseline of Kidger et al. (2020) (docs/maths.md, section 4.5).

    ::

        dz = f(z) dX,  f(z) = tanh(MLP(z)) in R^{H x C},  z(t0) = Linear(x(t0)),
        logits = Linear(z(T))

    solved with ``torchcde.cdeint``. The vector field has ``H * C`` outputs per
    evaluation, which is the scaling limit the continuous FWPs avoid.

    Args:
        input_channels, output_channels, hidden_channels: ``C``, classes, ``H``.
        ff_channels: width of the MLP's hidden layers; default ``H``.
        num_layers: hidden layers of the MLP.
        interpolation, adjoint, method, step_size, rtol, atol: as :class:`ContinuousFWP`
            (kept in :attr:`solver_options`, solved by ``torchcde.cdeint``).

    Raises:
        ValueError: sizes that are not positive integers, an unknown interpolation or
            method, a step size that is not a positive number.
    """

    def __init__(
        self,
        input_channels: int,
        output_channels: int,
        hidden_channels: int = 64,
        ff_channels: Optional[int] = None,
        num_layers: int = 1,
        interpolation: str = "natural_cubic",
        adjoint: bool = False,
        method: str = "rk4",
        step_size: Optional[float] = None,
        rtol: float = 1e-3,
        atol: float = 1e-4,
    ) -> None:
        super().__init__()
        _check_sizes(input_channels=input_channels, output_channels=output_channels,
                     hidden_channels=hidden_channels, num_layers=num_layers,
                     ff_channels=ff_channels)
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation: expected one of {sorted(INTERPOLATIONS)}, got {interpolation!r}"
            )
        self.solver_options = SolverOptions(method=method, step_size=step_size, rtol=rtol,
                                            atol=atol, adjoint=adjoint, solver="reference")
        self.input_channels = input_channels
        self.output_channels = output_channels
        self.hidden_channels = hidden_channels
        self.interpolation = interpolation
        self.initial = nn.Linear(input_channels, hidden_channels)
        self.field = _NeuralCDEField(
            input_channels, hidden_channels, ff_channels or hidden_channels, num_layers
        )
        self.classifier = nn.Linear(hidden_channels, output_channels)

    name = "ncde"
    method = _SolverOption()
    step_size = _SolverOption()
    rtol = _SolverOption()
    atol = _SolverOption()
    adjoint = _SolverOption()

    def forward(
        self,
        x: Tensor,
        times: Optional[Tensor] = None,
        lengths: Optional[Tensor] = None,
        coeffs: Optional[Tensor] = None,
        stream: bool = False,
    ) -> Tensor:
        """Logits at each series' last observation time; arguments as :meth:`ContinuousFWP.forward`."""
        batch = check_observations(x, times, lengths, self.input_channels)
        _check_input_dtype(self, batch.x)
        if coeffs is None:
            coeffs = batch_coeffs(batch, self.interpolation)
        else:
            check_coeffs(coeffs, batch.x, self.interpolation)
        path = control_path(coeffs, batch.times, self.interpolation)
        z0 = self.initial(path.evaluate(batch.times[0]))
        options = None
        if solvers.is_fixed_grid(self.method):
            grid = integration_grid(batch.times, self.step_size)
            options = {"grid_constructor": solvers.grid_constructor(grid)}
        z = torchcde.cdeint(
            X=path, func=self.field, z0=z0, t=batch.times, adjoint=self.adjoint,
            method=self.method, options=options, rtol=self.rtol, atol=self.atol,
        )  # (batch, time, hidden)
        if stream:
            return _check_finite_output(self, self.classifier(z), batch)
        index = torch.arange(z.shape[0], device=z.device)
        return _check_finite_output(self, self.classifier(z[index, batch.lengths - 1]), batch)


#: Model names and the (rule, driver) of each continuous FWP; ``ncde``, ``gru`` and
#: ``discrete_delta`` are the baselines.
#: Registering a rule (:func:`fwplab.rules.register_rule`) adds its ``NAME_cde`` and
#: ``NAME_ode`` here; unregistering removes them. An entry that is a callable builds the
#: model itself: ``entry(input_channels, output_channels, **hparams)``.
MODELS: dict[str, object] = {
    "delta_cde": ("delta", "cde"),
    "hebb_cde": ("hebb", "cde"),
    "oja_cde": ("oja", "cde"),
    "delta_ode": ("delta", "ode"),
    "hebb_ode": ("hebb", "ode"),
    "oja_ode": ("oja", "ode"),
    "ncde": None,
    "gru": GRUBaseline,  # discrete baselines on the observations (fwplab.baselines)
    "discrete_delta": DiscreteDeltaFWP,
}


def build_model(name: str, input_channels: int, output_channels: int, **hparams) -> nn.Module:
    """Build a model by name (one of :data:`MODELS`).

    Args:
        name: ``delta_cde``, ``hebb_cde``, ``oja_cde``, ``delta_ode``, ``hebb_ode``,
            ``oja_ode``, ``ncde``, or ``NAME_cde`` / ``NAME_ode`` of a registered rule.
        input_channels: channels of ``x`` (the time channel included).
        output_channels: number of classes.
        **hparams: keyword arguments of :class:`ContinuousFWP` (or
            :class:`NeuralCDE`): ``hidden_channels``, ``num_heads``,
            ``ff_channels``, ``interpolation``, ``post_tanh``, ``v_layernorm``,
            ``layout``, ``adjoint``, ``method``, ``step_size``, ...

    Returns:
        An ``nn.Module`` with ``forward(x, times=None, lengths=None) -> (batch, classes)``;
        its ``config`` attribute holds this call's arguments, so
        ``build_model(**model.config)`` builds the same architecture again. CDE-driven
        FWPs record their layout there even when it was left to its default, so
        that the config stays valid when the rule changes (``hebb_cde`` and
        ``delta_cde`` have different default layouts).

    Raises:
        ValueError: an unknown name, or an argument the model does not take (the
            Neural CDE has no ``num_heads``) or refuses.
    """
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"name: expected one of {list(MODELS)}, got {name!r}"
                         + _unregistered_rule_hint(name))
    spec = MODELS[name]
    saved_fingerprint = hparams.pop("rule_fingerprint", None)
    config = dict(name=name, input_channels=input_channels, output_channels=output_channels,
                  **hparams)
    fingerprint = _check_rule_fingerprint(name, spec, saved_fingerprint)
    try:
        if spec is None:
            model = NeuralCDE(input_channels, output_channels, **hparams)
        elif isinstance(spec, tuple):
            model = ContinuousFWP(spec[0], spec[1], input_channels, output_channels, **hparams)
        else:
            model = spec(input_channels, output_channels, **hparams)
    except TypeError as error:
        raise ValueError(f"{name}: {str(error).splitlines()[0]}") from None
    if getattr(model, "layout", None) is not None:
        config["layout"] = model.layout
    if fingerprint is not None:
        config["rule_fingerprint"] = fingerprint
    model.config = config
    return model


def _unregistered_rule_hint(name) -> str:
    """For ``NAME_cde`` / ``NAME_ode`` of a rule not registered: the rule and the fix."""
    if not isinstance(name, str) or not name.endswith(("_cde", "_ode")):
        return ""
    rule = name[:-4]
    if not rule.isidentifier() or rule in RULES:
        return ""
    return (f"; it names the rule {rule!r}, which is not registered in this process: "
            f"register it first (fwplab.register_rule({rule!r}, field, ...), or "
            "--rules-from FILE on the command line)")


def _check_rule_fingerprint(name: str, spec, saved: Optional[str]) -> Optional[str]:
    """The fingerprint of a registered rule's model (``None`` for other models).

    Refuses a ``saved`` fingerprint that differs from the rule registered now, or one
    given for a model that has none.
    """
    rule = spec[0] if isinstance(spec, tuple) else None
    current = None if rule is None or RULES[rule].builtin else rule_fingerprint(RULES[rule])
    if saved is None or saved == current:
        return current
    if current is None:
        raise ValueError(f"rule_fingerprint: expected none for {name} (only models of rules "
                         f"added with register_rule have one), got {saved!r}")
    raise ValueError(
        f"rule_fingerprint: the model {name} was built with another rule called {rule!r} "
        f"(fingerprint {saved}) than the one registered now ({current}): its outputs on a "
        "fixed probe differ; register the rule it was built with (fwplab.register_rule("
        f"{rule!r}, ..., replace=True) or --rules-from FILE), or leave 'rule_fingerprint' out "
        "of the config to use the current rule on purpose")


def check_model_config(config: dict, state_dict: Optional[dict] = None) -> None:
    """Check a saved model config (and its weights) before building anything.

    The model is first built on the ``meta`` device (shapes only, no memory), so a
    config claiming sizes of 10**6 channels costs nothing; then every weight's shape
    must equal the saved tensor's. Loading code calls this before
    ``build_model(**config)`` and ``load_state_dict``.

    Args:
        config: ``model.config`` as saved (``name``, ``input_channels``,
            ``output_channels``, hyperparameters, ``rule_fingerprint``).
        state_dict: the saved weights, name -> tensor, or ``None`` (config only).

    Raises:
        ValueError: an unknown model (a rule not registered is named with the fix), a
            rule fingerprint that differs from the rule registered now, arguments the
            model refuses, or weights whose names or shapes differ from the config's
            (one line naming the first differences).
    """
    required = ("name", "input_channels", "output_channels")
    if not isinstance(config, dict) or not all(key in config for key in required):
        got = sorted(config) if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"model config: expected a dict with the keys {list(required)}, "
                         f"got {got}")
    try:
        with torch.device("meta"):
            probe = build_model(**config)
    except (RuntimeError, OverflowError):  # sizes beyond any address space
        raise ValueError(f"model config: {config.get('name')!r} with "
                         f"{ {k: v for k, v in config.items() if k != 'name'} } has weight "
                         "matrices too large for any memory") from None
    if state_dict is None:
        return
    expected = {key: tuple(value.shape) for key, value in probe.state_dict().items()}
    saved = {key: tuple(value.shape) for key, value in state_dict.items()
             if isinstance(value, Tensor)}
    problems = []
    missing = [key for key in expected if key not in saved]
    unexpected = [key for key in saved if key not in expected]
    shapes = [f"{key}: config gives {expected[key]}, saved {saved[key]}"
              for key in expected if key in saved and saved[key] != expected[key]]
    if missing:
        problems.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    if unexpected:
        problems.append(f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
    if shapes:
        problems.append("shapes " + "; ".join(shapes[:3]) + (" ..." if len(shapes) > 3 else ""))
    if problems:
        raise ValueError(f"model config: the saved weights do not fit {config.get('name')} "
                         f"as configured ({'; '.join(problems)}); the config and the weights "
                         "do not belong together")


def _follow_registry(rule: str, record: Optional[FastWeightRule]) -> None:
    """Keep the models of registered rules in :data:`MODELS` (see :func:`build_model`)."""
    for driver in ("cde", "ode"):
        if record is None:
            MODELS.pop(f"{rule}_{driver}", None)
        else:
            MODELS[f"{rule}_{driver}"] = (rule, driver)


for _name, _record in RULES.items():
    if not _record.builtin:
        _follow_registry(_name, _record)
on_registry_change(_follow_registry)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

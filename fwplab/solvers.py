"""Solvers for the fast weight ODEs: the torchdiffeq reference path and the fast fixed-grid paths.

All of them integrate ``dW/dt = F(W, c(t))`` where the controls ``c(t)`` (keys,
values, rates) depend on the input path only, never on ``W``:

* :func:`solve_reference` hands a vector field to ``torchdiffeq.odeint`` (or
  ``odeint_adjoint``): any torchdiffeq method, the plain reference.
* :func:`solve_fixed_grid` is numerically the same explicit Runge-Kutta scheme
  on the same grid, but takes the controls at every stage point of the grid,
  computed beforehand in one batched pass (:class:`StageControls`, laid out by
  :func:`stage_points`), so only the W-dependent part stays in the time loop.

The fixed-grid paths run the rules whose record
(:class:`fwplab.rules.FastWeightRule`) declares a structure they can exploit; a
``"general"`` rule runs on the reference only. The delta and Oja structures are
rank one. Writing them in one form, with ``M = W`` (delta) or ``M = W^T`` (Oja), a
fixed factor ``f``, a target ``c`` and the record's correction ``g``::

    delta:      f = softmax(k),  c = tanh(v),  g(z) = z
    post-tanh:  f = softmax(k),  c = v,        g(z) = tanh(z)
    Oja:        f = tanh(v),     c = k,        g(z) = softmax(z)

    stage i of step n:   u_i = M_n f_i + h sum_{j<i} a_ij (f_j . f_i) r_j
                         r_i = beta_i g(c_i - u_i)
    step:                M_{n+1} = M_n + h sum_i b_i r_i f_i^T

so a step costs two batched matrix products (``M_n F`` and the update) and a
few vector operations. Rules of the Hebb structure (``hebb`` and the official
``hebb_cde``'s ``hebb_unsquashed``) do not depend on ``W`` at all: their solution
is a sum of stage updates (a cumulative sum for whole trajectories), with no time
loop. Each rule's activations come from its record. :func:`select_solver` picks the
fastest correct path for a rule, a method and the inputs' device and dtype.

Four implementations of the delta and Oja recurrence (``backend``):

* ``"stepwise"``: the loop above written with ordinary tensor operations;
  autograd records every operation (readable; the reference for the others).
* ``"fast"``: the same loop run without recording, and one hand-written
  backward for the whole recurrence (one autograd node instead of thousands).
  With ``checkpoint_every=K`` it keeps ``M`` every ``K`` steps only and
  recomputes the steps in between during the backward (bounded memory).
* ``"kernel"``: a compiled C++ recurrence (:mod:`fwplab.kernels`), the batch
  in the innermost dimension, checkpoints every ``K`` steps (16 by default).
* ``"triton"``: the same recurrence for CUDA GPUs, written with Triton
  (:mod:`fwplab.kernels.triton_recurrence`): one program per series and head keeps ``M``
  on chip across the steps, checkpoints every ``K`` steps (16 by default); runs on the
  CPU only in Triton's interpreter (``TRITON_INTERPRET=1``, for tests).

:func:`solve_fused` (the models' solver ``"fused"``) runs the same compiled
recurrence but computes the controls itself, from the path's pieces and the slow
net's weights (:class:`fwplab.kernels.FusedSlowNet`), one segment of ``K`` steps at a
time inside the time loop: the controls are never stored, and the backward
recomputes each segment's controls and returns the slow net's parameter gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence, Union

import torch
import torchdiffeq
from torch import Tensor, nn

from . import kernels
from .kernels import triton_recurrence
from .rules import FastWeightRule, get_rule
from .rules.record import CORRECTIONS
from .rules.record import activate as _activate_by_name

__all__ = [
    "TABLEAUS",
    "FIXED_GRID_BACKENDS",
    "FIXED_GRID_SOLVERS",
    "FUSED",
    "KERNEL_CHECKPOINT_EVERY",
    "ButcherTableau",
    "StageLayout",
    "StageControls",
    "RecurrenceSpec",
    "SOLVERS",
    "SolverOptions",
    "activate",
    "has_time_loop",
    "kernel_runs",
    "select_solver",
    "solve_fused",
    "uses_fast_path",
    "grid_constructor",
    "is_fixed_grid",
    "stage_layout",
    "stage_points",
    "stage_view",
    "solve_reference",
    "solve_fixed_grid",
]


class ButcherTableau(NamedTuple):
    """An explicit Runge-Kutta scheme: stage nodes ``c``, coefficients ``a``, weights ``b``."""

    c: Sequence[float]
    a: Sequence[Sequence[float]]
    b: Sequence[float]


#: The fixed-grid methods of torchdiffeq with the exact stages torchdiffeq uses
#: (its ``rk4`` is the 3/8 rule, stages at t, t+h/3, t+2h/3, t+h).
TABLEAUS: dict[str, ButcherTableau] = {
    "euler": ButcherTableau(c=(0.0,), a=((),), b=(1.0,)),
    "midpoint": ButcherTableau(c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0)),
    "heun2": ButcherTableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5)),
    "heun3": ButcherTableau(
        c=(0.0, 1 / 3, 2 / 3), a=((), (1 / 3,), (0.0, 2 / 3)), b=(0.25, 0.0, 0.75)
    ),
    "rk4": ButcherTableau(
        c=(0.0, 1 / 3, 2 / 3, 1.0),
        a=((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
        b=(0.125, 0.375, 0.375, 0.125),
    ),
}

#: Implementations of the delta and Oja recurrences (see the module docstring).
FIXED_GRID_BACKENDS = ("stepwise", "fast", "kernel", "triton")

#: The solver that runs the slow net inside the compiled kernel (:func:`solve_fused`).
FUSED = "fused"

#: Every solver that integrates on a fixed grid.
FIXED_GRID_SOLVERS = (*FIXED_GRID_BACKENDS, FUSED)

#: Steps between stored fast weights in the compiled kernel when none is asked for.
KERNEL_CHECKPOINT_EVERY = 16


def is_fixed_grid(method: str) -> bool:
    """Whether torchdiffeq's ``method`` steps on a fixed grid."""
    from torchdiffeq._impl.odeint import SOLVERS
    from torchdiffeq._impl.solvers import FixedGridODESolver

    if method not in SOLVERS:
        raise ValueError(f"method: unknown torchdiffeq method {method!r}; expected one of "
                         f"{sorted(SOLVERS)}")
    return issubclass(SOLVERS[method], FixedGridODESolver)


class StageLayout(NamedTuple):
    """Where the stages of a step sit among the distinct stage points of the grid.

    A step from ``t_n`` to ``t_{n+1}`` owns ``per_step`` points: ``t_n`` and the
    interior stage times ``t_n + c h`` (``0 < c < 1``) in increasing order; a stage
    at ``c = 1`` is the next step's first point. Stage ``i`` of step ``n`` is point
    ``n * per_step + offsets[i]``, and there are ``steps * per_step + 1`` points.
    """

    per_step: int
    offsets: tuple[int, ...]


def stage_layout(method: str) -> StageLayout:
    """The :class:`StageLayout` of fixed-grid ``method`` (a key of :data:`TABLEAUS`)."""
    if method not in TABLEAUS:
        raise ValueError(f"method: expected a fixed-grid method in {sorted(TABLEAUS)}, "
                         f"got {method!r}")
    nodes = TABLEAUS[method].c
    interior = sorted({c for c in nodes if 0.0 < c < 1.0})
    per_step = 1 + len(interior)
    offsets = tuple(0 if c == 0.0 else per_step if c == 1.0 else 1 + interior.index(c)
                    for c in nodes)
    return StageLayout(per_step, offsets)


def stage_points(grid: Tensor, method: str) -> Tensor:
    """The distinct times at which ``method`` evaluates the vector field on ``grid``.

    Args:
        grid: fixed-solver grid ``(steps + 1,)``.
        method: a key of :data:`TABLEAUS`.

    Returns:
        ``(steps * per_step + 1,)`` in increasing order (see :class:`StageLayout`);
        grid points are copied exactly, interior points are ``t_n + c (t_{n+1} - t_n)``
        as torchdiffeq computes them.
    """
    layout = stage_layout(method)
    interior = sorted({c for c in TABLEAUS[method].c if 0.0 < c < 1.0})
    t0, step = grid[:-1], grid[1:] - grid[:-1]
    columns = [t0] + [t0 + step * c for c in interior]
    assert len(columns) == layout.per_step
    return torch.cat([torch.stack(columns, dim=-1).reshape(-1), grid[-1:]])


class StageControls(NamedTuple):
    """The slow net's raw controls at the stage points of a grid, time first.

    Each is ``(points, batch, heads, d)`` (``rate``: ``(points, batch, heads, 1)``)
    with the points of :func:`stage_points`: key logits, value pre-activations and
    rate logits, before the rule's activations
    (the record's ``key``, ``value`` and ``rate``), which
    :func:`solve_fixed_grid` applies (the compiled kernel inside its loop).
    """

    key: Tensor
    value: Tensor
    rate: Tensor


def activate(name: str, x: Tensor) -> Tensor:
    """``"identity"``, ``"tanh"``, ``"sigmoid"`` or ``"softmax"`` (over the last dimension).

    Raises:
        ValueError: any other name.
    """
    return _activate_by_name(name, x)


def solve_reference(
    field: nn.Module,
    W0: Tensor,
    times: Tensor,
    grid: Optional[Tensor],
    method: str = "rk4",
    adjoint: bool = False,
    rtol: float = 1e-3,
    atol: float = 1e-4,
) -> Tensor:
    """Integrate with torchdiffeq and return the state at every observation time.

    Args:
        field: module with ``forward(t, W) -> dW/dt``, holding every parameter
            (required by the adjoint).
        W0: initial state ``(batch, ...)``.
        times: observation times ``(time,)``.
        grid: fixed-solver grid through every observation time (ignored by
            adaptive methods).
        method: any torchdiffeq method.
        adjoint: use ``odeint_adjoint`` (continuous adjoint gradients).
        rtol, atol: tolerances of adaptive methods.

    Returns:
        ``(time, batch, ...)``.
    """
    options = None
    if is_fixed_grid(method):
        options = {"grid_constructor": grid_constructor(grid)}
    if adjoint:
        return torchdiffeq.odeint_adjoint(
            field, W0, times, method=method, options=options, rtol=rtol, atol=atol,
            adjoint_params=tuple(field.parameters()),
        )
    return torchdiffeq.odeint(field, W0, times, method=method, options=options, rtol=rtol, atol=atol)


def grid_constructor(grid: Tensor):
    """A torchdiffeq ``grid_constructor`` stepping on ``grid`` over any part of it.

    The adjoint integrates backwards between consecutive output times (torchdiffeq
    passes those times in decreasing order); both directions step on the same points.
    """

    def construct(func, y0, t: Tensor) -> Tensor:
        points = grid.to(t.device, t.dtype)
        low, high = (t[0], t[-1]) if t[-1] >= t[0] else (t[-1], t[0])
        points = points[(points >= low) & (points <= high)]
        return points if t[-1] >= t[0] else points.flip(0)

    return construct


# --------------------------------------------------------------------------- selection
#: Solver choices of :class:`fwplab.models.ContinuousFWP` (its ``solver`` argument).
SOLVERS = ("auto", "reference", *FIXED_GRID_SOLVERS)

RuleLike = Union[str, FastWeightRule]


def _record(rule: RuleLike) -> FastWeightRule:
    return rule if isinstance(rule, FastWeightRule) else get_rule(rule)


@dataclass(frozen=True)
class SolverOptions:
    """How a model integrates its differential equation; checked when built.

    Attributes:
        method: any torchdiffeq method.
        step_size: largest solver step; ``None``: the smallest observation gap.
        rtol, atol: tolerances of adaptive methods.
        adjoint: continuous adjoint gradients (``odeint_adjoint``).
        solver: one of :data:`SOLVERS` (the Neural CDE takes ``"reference"`` only).
        checkpoint_every: ``"fast"``, ``"kernel"``, ``"triton"``, ``"fused"`` and
            ``"auto"``: steps between stored fast weights (``None``: every step, or every
            :data:`KERNEL_CHECKPOINT_EVERY` in the kernels).

    Raises:
        ValueError: an unknown method or solver, a fixed-grid solver with an adaptive
            method, a step size or ``checkpoint_every`` that is not a positive number,
            ``checkpoint_every`` with a solver that stores every step.
    """

    method: str = "rk4"
    step_size: Optional[float] = None
    rtol: float = 1e-3
    atol: float = 1e-4
    adjoint: bool = False
    solver: str = "auto"
    checkpoint_every: Optional[int] = None

    def __post_init__(self) -> None:
        step = self.step_size
        if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float))
                                 or not math.isfinite(step) or step <= 0):
            raise ValueError(f"step_size: expected a positive number or None, got {step!r}")
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name}: expected a non-negative number, got {value!r}")
        if not isinstance(self.adjoint, bool):
            raise ValueError(f"adjoint: expected True or False, got {self.adjoint!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver: expected one of {SOLVERS}, got {self.solver!r}")
        is_fixed_grid(self.method)  # validates the method name
        if self.solver in FIXED_GRID_SOLVERS and self.method not in TABLEAUS:
            raise ValueError(f"solver={self.solver!r} needs a fixed-grid method in "
                             f"{sorted(TABLEAUS)}, got {self.method!r}")
        every = self.checkpoint_every
        if every is not None and (isinstance(every, bool) or not isinstance(every, int)
                                  or every < 1):
            raise ValueError(f"checkpoint_every: expected a positive integer or None, "
                             f"got {every!r}")
        if every is not None and self.solver in ("reference", "stepwise"):
            raise ValueError(f"checkpoint_every applies to solver 'fast', 'kernel', 'triton', "
                             f"'fused' or 'auto', not {self.solver!r}")

    def check_rule(self, rule: RuleLike) -> None:
        """Refuse a fixed-grid ``solver`` for a rule of the ``"general"`` structure."""
        record = _record(rule)
        if self.solver in FIXED_GRID_SOLVERS and record.structure == "general":
            raise ValueError(f"solver: expected 'auto' or 'reference' for rule {record.name!r} "
                             f"(structure 'general': torchdiffeq only), got {self.solver!r}")


def has_time_loop(rule: RuleLike) -> bool:
    """Whether ``rule`` (a record or a name) depends on ``W`` (every structure but Hebb)."""
    return _record(rule).has_time_loop


def _loop_operands(rule: FastWeightRule) -> tuple[bool, tuple[str, str, str]]:
    """Whether the loop runs on ``W^T`` (Oja), and the activations of (fixed, target, rate).

    Oja in the delta form: ``M = W^T``, the fixed factor is the value, the target the key.
    """
    if rule.structure == "oja":
        return True, (rule.value, rule.key, rule.rate)
    return False, (rule.key, rule.value, rule.rate)


def kernel_runs(rule: RuleLike) -> bool:
    """Whether the compiled kernel's tables cover ``rule`` (it may still fail to build).

    Only the rank-one structures (delta, Oja) have a kernel: Hebb needs none (no time
    loop) and a general rule has none.
    """
    record = _record(rule)
    return record.structure in ("delta", "oja") and kernels.supports_rule(
        record.correction, _loop_operands(record)[1])


def _triton_runs(rule: FastWeightRule, method: str, device, dtype: torch.dtype) -> bool:
    """Whether ``"auto"`` picks the Triton recurrence: CUDA tensors of float32/float64,
    Triton installed, ``FWPLAB_TRITON`` not ``0``, and the rule and method in its tables
    (never on the CPU, where its interpreter is for tests only)."""
    spec = RecurrenceSpec(rule.correction, TABLEAUS[method], stage_layout(method), (0,),
                          KERNEL_CHECKPOINT_EVERY)
    return (torch.device(device).type == "cuda" and triton_recurrence.enabled()
            and triton_recurrence.supports(device, dtype)
            and triton_recurrence.supports_rule(rule.correction, _loop_operands(rule)[1])
            and triton_recurrence.supports_spec(spec))


def uses_fast_path(rule: RuleLike, options: SolverOptions) -> bool:
    """Whether a fixed-grid solver with precomputed controls runs for ``rule``."""
    if options.solver == "auto":
        return (options.method in TABLEAUS and not options.adjoint
                and _record(rule).structure != "general")
    return options.solver != "reference"


def select_solver(rule: RuleLike, options: SolverOptions, device, dtype: torch.dtype,
                  fuses: bool = False) -> str:
    """The solver that runs ``rule`` with ``options`` on inputs of ``device`` and ``dtype``.

    ``"auto"`` picks the fastest correct path: torchdiffeq (``"reference"``) for
    adaptive methods, the adjoint and general rules; for delta and Oja structures, the
    Triton recurrence (``"triton"``) on CUDA float32/float64 when Triton is installed (and
    ``FWPLAB_TRITON`` is not ``0``), the compiled kernel on CPU float32/float64 when it
    builds (and ``FWPLAB_KERNEL`` is not ``0``), with the slow net inside it (``"fused"``)
    when the caller's slow net ``fuses``; ``"fast"`` otherwise.

    Returns:
        ``"reference"``, ``"stepwise"``, ``"fast"``, ``"kernel"``, ``"triton"`` or
        ``"fused"``.
    """
    options.check_rule(rule)
    if options.solver != "auto":
        return options.solver
    if not uses_fast_path(rule, options):
        return "reference"
    if not kernel_runs(rule):  # Hebb (no time loop) or not in the kernel's tables
        return "fast"
    if _triton_runs(_record(rule), options.method, device, dtype):
        return "triton"
    if kernels.enabled() and kernels.supports(device, dtype) and kernels.available():
        return FUSED if fuses else "kernel"
    return "fast"


# --------------------------------------------------------------------------- fixed grid


class RecurrenceSpec(NamedTuple):
    """The non-tensor arguments of a rank-one recurrence.

    ``nonlinearity`` is ``"linear"``, ``"tanh"`` or ``"softmax"`` (the ``g`` of the
    module docstring); ``keep`` lists the grid indices whose states are returned;
    ``checkpoint_every`` is ``None`` (store every state) or the number of steps
    between stored states.
    """

    nonlinearity: str
    tableau: ButcherTableau
    layout: StageLayout
    keep: tuple[int, ...]
    checkpoint_every: Optional[int]


def solve_fixed_grid(
    rule: RuleLike,
    controls: StageControls,
    W0: Tensor,
    steps: Tensor,
    method: str = "rk4",
    keep: Optional[Tensor] = None,
    backend: str = "fast",
    checkpoint_every: Optional[int] = None,
) -> Tensor:
    """Explicit Runge-Kutta on a fixed grid with precomputed stage controls.

    Args:
        rule: a :class:`fwplab.rules.FastWeightRule` of the Hebb, delta or Oja
            structure, or its name in :data:`fwplab.rules.RULES` (activations and
            correction from the record; ``post_tanh``: pass ``rule.option("post_tanh")``).
        controls: raw controls at the stage points (:class:`StageControls`),
            each ``(points, batch, heads, d)``.
        W0: initial fast weights ``(batch, heads, d, d)``.
        steps: step sizes ``(steps,)``.
        method: a key of :data:`TABLEAUS`.
        keep: grid indices (0 = initial time) whose states to return, increasing;
            default all.
        backend: one of :data:`FIXED_GRID_BACKENDS` (delta and Oja; the Hebb
            structure has no time loop and ignores it).
        checkpoint_every: ``"fast"``, ``"kernel"`` and ``"triton"``: store ``W`` every
            this many steps and recompute the rest in the backward; ``None`` stores every
            step (``"fast"``) or every :data:`KERNEL_CHECKPOINT_EVERY` (the kernels).

    Returns:
        ``(len(keep), batch, heads, d, d)``.
    """
    rule = _record(rule)
    if rule.structure == "general":
        raise ValueError(f"rule: expected a rule of structure 'hebb', 'delta' or 'oja', got "
                         f"{rule.name!r} (structure 'general': use solve_reference)")
    if backend not in FIXED_GRID_BACKENDS:
        raise ValueError(f"backend: expected one of {FIXED_GRID_BACKENDS}, got {backend!r}")
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int)
                                         or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every: expected a positive integer or None, "
                         f"got {checkpoint_every!r}")
    tableau, layout = TABLEAUS[method], stage_layout(method)
    n_steps = steps.shape[0]
    points = controls.key.shape[0]
    if points != n_steps * layout.per_step + 1:
        raise ValueError(f"controls: expected {n_steps * layout.per_step + 1} stage points "
                         f"for {n_steps} {method} steps, got {points}")
    if keep is None:
        keep = torch.arange(n_steps + 1)
    keep = tuple(int(i) for i in keep.tolist())
    steps = steps.to(W0.dtype)
    if not rule.has_time_loop:
        controls = StageControls(*rule.activate(*controls))
        return _hebb_fixed_grid(controls, W0, steps, tableau, layout, keep)

    batch, heads = W0.shape[:2]
    oja, activations = _loop_operands(rule)
    fixed, target = (controls.value, controls.key) if oja else (controls.key, controls.value)
    M0 = W0.transpose(-1, -2) if oja else W0
    flat = batch * heads
    fixed = fixed.reshape(points, flat, -1)
    target = target.reshape(points, flat, -1)
    rate = controls.rate.reshape(points, flat, 1)
    M0 = M0.reshape(flat, *M0.shape[-2:])
    if backend == "kernel":
        if not kernels.supports(W0.device, W0.dtype):
            raise ValueError(f"backend: the compiled kernel runs CPU float32/float64 tensors, "
                             f"got {W0.dtype} on {W0.device}")
        if not kernel_runs(rule):
            raise ValueError(f"backend: the compiled kernel has no {rule.name!r} rule; "
                             "use 'fast'")
        spec = RecurrenceSpec(rule.correction, tableau, layout, keep,
                              checkpoint_every or KERNEL_CHECKPOINT_EVERY)
        states = kernels.recurrence(fixed, target, rate, M0, steps, spec, activations)
    elif backend == "triton":
        if not triton_recurrence.supports_rule(rule.correction, activations):
            raise ValueError(f"backend: the Triton recurrence has no {rule.name!r} rule; "
                             "use 'fast'")
        spec = RecurrenceSpec(rule.correction, tableau, layout, keep,
                              checkpoint_every or KERNEL_CHECKPOINT_EVERY)
        states = triton_recurrence.recurrence(fixed, target, rate, M0, steps, spec, activations)
    else:
        fixed, target, rate = (activate(a, x) for a, x in zip(activations, (fixed, target, rate),
                                                               strict=True))
        if backend == "stepwise":
            states = _stepwise_recurrence(fixed, target, rate, M0, steps, rule.correction,
                                          tableau, layout, keep)
        else:
            spec = RecurrenceSpec(rule.correction, tableau, layout, keep, checkpoint_every)
            states = _FastRecurrence.apply(fixed.contiguous(), target.contiguous(),
                                           rate.contiguous(), M0.contiguous(), steps, spec)
    states = states.reshape(len(keep), batch, heads, *M0.shape[-2:])
    return states.transpose(-1, -2) if oja else states


def solve_fused(
    rule: RuleLike,
    net: kernels.FusedSlowNet,
    path: kernels.PathPieces,
    W0: Tensor,
    steps: Tensor,
    method: str = "rk4",
    keep: Optional[Tensor] = None,
    checkpoint_every: Optional[int] = None,
) -> Tensor:
    """:func:`solve_fixed_grid` with backend ``"kernel"``, the slow net run inside the kernel.

    The controls are not passed but computed by the kernel from the path at the stage
    points, one segment of ``checkpoint_every`` steps at a time (forward, and again in
    the backward), so they never leave the cache; the gradients go to ``W0`` and the
    slow net's parameters (not to the path).

    Args:
        rule: a rule of the delta or Oja structure the kernel runs (:func:`kernel_runs`).
        net: the slow net (:class:`fwplab.kernels.FusedSlowNet`).
        path: the path's pieces at the stage points of the grid
            (:class:`fwplab.kernels.PathPieces`).
        W0, steps, method, keep, checkpoint_every: as :func:`solve_fixed_grid`.

    Returns:
        ``(len(keep), batch, heads, d, d)``.
    """
    rule = _record(rule)
    if not kernel_runs(rule):
        raise ValueError(f"rule: the fused kernel runs delta and Oja rules in its tables, "
                         f"got {rule.name!r}")
    if not kernels.supports(W0.device, W0.dtype):
        raise ValueError(f"W0: the fused kernel runs CPU float32/float64 tensors, "
                         f"got {W0.dtype} on {W0.device}")
    tableau, layout = TABLEAUS[method], stage_layout(method)
    n_steps = steps.shape[0]
    if path.piece.shape[0] != n_steps * layout.per_step + 1:
        raise ValueError(f"path: expected {n_steps * layout.per_step + 1} stage points for "
                         f"{n_steps} {method} steps, got {path.piece.shape[0]}")
    keep = tuple(int(i) for i in (torch.arange(n_steps + 1) if keep is None else keep).tolist())
    oja, activations = _loop_operands(rule)
    batch, heads = W0.shape[:2]
    M0 = (W0.transpose(-1, -2) if oja else W0).reshape(batch * heads, *W0.shape[-2:])
    spec = RecurrenceSpec(rule.correction, tableau, layout, keep,
                          checkpoint_every or KERNEL_CHECKPOINT_EVERY)
    states = kernels.fused_recurrence(net, path, M0, steps.to(W0.dtype), spec, activations, oja)
    states = states.reshape(len(keep), batch, heads, *M0.shape[-2:])
    return states.transpose(-1, -2) if oja else states


def stage_view(points: Tensor, layout: StageLayout, n_steps: int) -> Tensor:
    """Controls at the stages of every step: ``(points, ...) -> (steps, stages, ...)``.

    A strided view (no copy) when the stages of a step are consecutive points, as
    in every method of :data:`TABLEAUS`; a gathered copy otherwise.
    """
    stages = len(layout.offsets)
    if layout.offsets == tuple(range(stages)):
        stride = points.stride()
        return points.as_strided((n_steps, stages, *points.shape[1:]),
                                 (layout.per_step * stride[0], *stride),
                                 points.storage_offset())
    index = (torch.arange(n_steps, device=points.device).unsqueeze(-1) * layout.per_step
             + torch.tensor(layout.offsets, device=points.device))
    return points[index]


#: Hebb keeps at most this many states as separate sums over the steps before them;
#: more kept states (trajectories) come from one cumulative sum over all steps.
HEBB_SEPARATE_SUMS = 8


def _hebb_fixed_grid(controls, W0, steps, tableau, layout, keep):
    """Hebb: ``W(t_n) = W0 + sum_{m<n} h_m sum_i b_i beta_i v_i k_i^T``, no time loop.

    A few kept states are each one contraction over the stages before them (no
    ``(steps, d, d)`` intermediate); many are a cumulative sum of per-step updates.
    """
    n_steps = steps.shape[0]
    key, value, rate = (stage_view(c, layout, n_steps) for c in controls)
    weights = steps.unsqueeze(-1) * torch.tensor(tableau.b, dtype=W0.dtype, device=W0.device)
    value = value * (rate * weights.reshape(*weights.shape, 1, 1, 1))
    if len(keep) <= HEBB_SEPARATE_SUMS:
        return torch.stack([W0 + torch.einsum("nsbhv,nsbhk->bhvk", value[:n], key[:n])
                            for n in keep])
    increments = torch.einsum("nsbhv,nsbhk->nbhvk", value, key)
    states = torch.cat([W0.unsqueeze(0), increments]).cumsum(0)
    return states[torch.tensor(keep, device=states.device)]


def _stepwise_recurrence(fixed, target, rate, M0, steps, nonlinearity, tableau, layout, keep):
    """The recurrence of the module docstring, every operation recorded by autograd.

    Arguments as :class:`_FastRecurrence`; returns ``(len(keep), N, d_out, d_in)``.
    """
    n_steps, stages = steps.shape[0], len(tableau.c)
    f, c, beta = (stage_view(x, layout, n_steps).unbind(0) for x in (fixed, target, rate))
    gram = [fi @ fi.transpose(-1, -2) for fi in (x.transpose(0, 1) for x in f)]  # (N, S, S)
    keep_set = set(keep)
    kept = [M0] if 0 in keep_set else []
    M = M0
    for n in range(n_steps):
        h = steps[n]
        projected = torch.einsum("nok,snk->sno", M, f[n])  # M_n f_i for every stage i
        factors = []
        for i in range(stages):
            u = projected[i]
            for j, a_ij in enumerate(tableau.a[i]):
                if a_ij != 0.0:
                    u = u + (h * a_ij) * gram[n][:, j, i].unsqueeze(-1) * factors[j]
            factors.append(beta[n][i] * CORRECTIONS[nonlinearity](c[n][i] - u))
        update = sum((h * b_i) * r.unsqueeze(-1) * f[n][i].unsqueeze(-2)
                     for i, (r, b_i) in enumerate(zip(factors, tableau.b, strict=True))
                     if b_i != 0.0)
        M = M + update
        if n + 1 in keep_set:
            kept.append(M)
    return torch.stack(kept)


class _StepOperands(NamedTuple):
    """Per-step views and coefficients shared by the forward and backward of a recurrence.

    ``f, c``: ``(steps, stages, N, .)`` views of the point tensors;
    ``signed_rate``: the same view of ``-beta`` (linear, tanh) or ``beta`` (softmax), so
    that ``r = signed_rate * activation`` (see :func:`_forward_step`);
    ``coupling[n, q] = h_n a_ij (f_i . f_j)`` for the ``q``-th pair ``(i, j, a_ij)`` of
    ``pairs`` (the ``a_ij != 0``): ``(steps, pairs, N, 1)``; ``couplings_of[i]``: the
    ``(q, j)`` of stage ``i``; ``weights[n, i] = h_n b_i``: ``(steps, stages)``.
    """

    f: Tensor
    c: Tensor
    signed_rate: Tensor
    coupling: Tensor
    steps: Tensor
    weights: Tensor
    pairs: tuple[tuple[int, int, float], ...]
    couplings_of: tuple[tuple[tuple[int, int], ...], ...]


def _step_operands(fixed, target, rate, steps, spec: RecurrenceSpec,
                   coupling: Optional[Tensor] = None) -> _StepOperands:
    n_steps = steps.shape[0]
    tableau = spec.tableau
    f = stage_view(fixed, spec.layout, n_steps)
    pairs = tuple((i, j, a_ij) for i, row in enumerate(tableau.a)
                  for j, a_ij in enumerate(row) if a_ij != 0.0)
    if coupling is None:
        coupling = fixed.new_empty(n_steps, len(pairs), fixed.shape[1], 1)
        for q, (i, j, a_ij) in enumerate(pairs):
            torch.mul((f[:, i] * f[:, j]).sum(-1, keepdim=True),
                      (steps * a_ij).reshape(-1, 1, 1), out=coupling[:, q])
    couplings_of = tuple(tuple((q, j) for q, (row, j, _) in enumerate(pairs) if row == i)
                         for i in range(len(tableau.c)))
    weights = steps.unsqueeze(-1) * torch.tensor(tableau.b, dtype=fixed.dtype,
                                                 device=fixed.device)
    signed_rate = rate if spec.nonlinearity == "softmax" else -rate
    return _StepOperands(f, stage_view(target, spec.layout, n_steps),
                         stage_view(signed_rate, spec.layout, n_steps), coupling, steps,
                         weights, pairs, couplings_of)


def _forward_step(ops: _StepOperands, nonlinearity: str, n: int, M: Tensor,
                  activation: Tensor, factors: Tensor, out: Tensor) -> None:
    """One step ``M_n -> M_{n+1}`` written into ``out``; records what the backward needs.

    ``activation (N, d_out, S)`` receives ``e = u - c`` (linear), ``tanh(e)`` (tanh) or
    ``softmax(-e)`` (softmax), and ``factors (N, d_out, S)`` receives
    ``r = signed_rate * activation``: ``-beta e = beta (c - u)``,
    ``-beta tanh(e) = beta tanh(c - u)`` or ``beta softmax(c - u)``.
    """
    f_t = ops.f[n].permute(1, 2, 0)  # (N, d_in, S)
    c_t = ops.c[n].permute(1, 2, 0)  # (N, d_out, S)
    signed_rate, coupling = ops.signed_rate[n], ops.coupling[n]
    linear = nonlinearity == "linear"
    e = activation if linear else torch.empty_like(activation)
    torch.baddbmm(c_t, M, f_t, beta=-1, out=e)  # M_n f_i - c_i
    for i, couplings in enumerate(ops.couplings_of):
        e_i = e[..., i]
        for q, j in couplings:
            e_i.addcmul_(factors[..., j], coupling[q])
        if nonlinearity == "tanh":
            torch.tanh(e_i, out=activation[..., i])
        elif nonlinearity == "softmax":
            activation[..., i] = torch.softmax(e_i.neg(), -1)
        torch.mul(activation[..., i], signed_rate[i], out=factors[..., i])
    out.copy_(M).baddbmm_(factors * ops.weights[n], ops.f[n].transpose(0, 1))


class _FastRecurrence(torch.autograd.Function):
    """The rank-one recurrence with one hand-written backward.

    Inputs: ``fixed (points, N, d_in)``, ``target (points, N, d_out)``,
    ``rate (points, N, 1)``, ``M0 (N, d_out, d_in)``, ``steps (steps,)`` and a
    :class:`RecurrenceSpec`. Output: ``M`` at the kept grid indices,
    ``(len(keep), N, d_out, d_in)``.

    The backward walks the steps in reverse. With ``e_i = u_i - c_i`` and
    ``gM = dL/dM_{n+1}``::

        dL/dr_i = h b_i gM f_i          (then, for i = S-1..0:)
        dL/de_i = J_i^T dL/dr_i;  dL/dr_j += h a_ij (f_i . f_j) dL/de_i   (j < i)
        dL/dM_n = gM + sum_i dL/de_i f_i^T
        dL/df_i = h b_i gM^T r_i + M_n^T dL/de_i + Gram terms;  dL/dc_i = -dL/de_i

    and the per-stage sums (rates, Gram terms, scattering stages onto points)
    run once per segment of steps as large batched operations.
    """

    @staticmethod
    def forward(ctx, fixed, target, rate, M0, steps, spec: RecurrenceSpec):
        ops = _step_operands(fixed, target, rate, steps, spec)
        n_steps, stages = steps.shape[0], len(spec.tableau.c)
        flat, d_out, d_in = M0.shape
        every = spec.checkpoint_every
        stored = range(0, n_steps + 1) if every is None else range(0, n_steps + 1, every)
        states = M0.new_empty(len(stored), flat, d_out, d_in)
        states[0] = M0
        kept = M0.new_empty(len(spec.keep), flat, d_out, d_in)
        position = {index: k for k, index in enumerate(spec.keep)}
        if every is None:
            activations = M0.new_empty(n_steps, flat, d_out, stages)
            factors = M0.new_empty(n_steps, flat, d_out, stages)
        else:
            activations = M0.new_empty(1, flat, d_out, stages)
            factors = M0.new_empty(1, flat, d_out, stages)
            scratch = M0.new_empty(2, flat, d_out, d_in)
        M = states[0]
        for n in range(n_steps):
            record = n if every is None else 0
            if every is None:
                out = states[n + 1]
            elif (n + 1) % every == 0:
                out = states[(n + 1) // every]
            else:
                out = scratch[n % 2]
            _forward_step(ops, spec.nonlinearity, n, M, activations[record], factors[record], out)
            M = out
            if every is not None and n + 1 in position:
                kept[position[n + 1]] = M
        if every is None:
            if spec.keep != tuple(range(n_steps + 1)):
                kept = states[torch.tensor(spec.keep, device=states.device)]
            else:
                kept = states
            ctx.save_for_backward(fixed, target, rate, steps, ops.coupling, states, activations,
                                  factors)
        else:
            if 0 in position:
                kept[position[0]] = M0
            ctx.save_for_backward(fixed, target, rate, steps, ops.coupling, states)
        ctx.spec = spec
        return kept

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_kept):
        spec: RecurrenceSpec = ctx.spec
        fixed, target, rate, steps, coupling, states, *recorded = ctx.saved_tensors
        ops = _step_operands(fixed, target, rate, steps, spec, coupling)
        n_steps = steps.shape[0]
        every = spec.checkpoint_every or n_steps
        grads = (torch.zeros_like(fixed), torch.zeros_like(target), torch.zeros_like(rate))
        position = {index: k for k, index in enumerate(spec.keep)}
        gM = torch.zeros_like(states[0])
        if n_steps in position:
            gM += grad_kept[position[n_steps]]
        for start in reversed(range(0, n_steps, every)):
            stop = min(start + every, n_steps)
            if recorded:
                segment = (states[start : stop + 1], *(r[start:stop] for r in recorded))
            else:
                segment = _recompute_segment(ops, spec.nonlinearity, states[start // every],
                                             start, stop)
            _backward_segment(ops, spec, start, stop, segment, gM, grad_kept, position, grads)
        return (*grads, gM, None, None)


def _recompute_segment(ops, nonlinearity, M_start, start, stop):
    """States, activations and factors of steps ``start..stop-1`` from ``M_start``."""
    flat, d_out, d_in = M_start.shape
    stages = ops.f.shape[1]
    states = M_start.new_empty(stop - start + 1, flat, d_out, d_in)
    states[0] = M_start
    activations = M_start.new_empty(stop - start, flat, d_out, stages)
    factors = torch.empty_like(activations)
    for k, n in enumerate(range(start, stop)):
        _forward_step(ops, nonlinearity, n, states[k], activations[k], factors[k], states[k + 1])
    return states, activations, factors


def _backward_segment(ops, spec, start, stop, segment, gM, grad_kept, position, grads):
    """Backpropagate ``gM = dL/dM_stop`` through steps ``stop-1..start`` (in place).

    Accumulates the gradients of the point tensors into ``grads`` and leaves
    ``dL/dM_start`` in ``gM``.
    """
    states, activations, factors = segment
    nonlinearity = spec.nonlinearity
    grad_e = torch.empty_like(activations)  # dL/de per step and stage
    grad_r = torch.empty_like(activations)  # dL/dr per step and stage
    length, flat, _, stages = activations.shape
    grad_f = ops.f.new_empty(length, flat, stages, ops.f.shape[-1])  # (steps, N, S, d_in)
    for k in reversed(range(length)):
        n = start + k
        f_n = ops.f[n].transpose(0, 1)  # (N, S, d_in)
        torch.bmm(gM, f_n.transpose(1, 2), out=grad_r[k]).mul_(ops.weights[n])
        torch.bmm((factors[k] * ops.weights[n]).transpose(1, 2), gM, out=grad_f[k])
        signed_rate, coupling = ops.signed_rate[n], ops.coupling[n]
        if nonlinearity == "tanh":  # dr/de = signed_rate (1 - tanh(e)^2)
            slope = (1 - activations[k].square()) * signed_rate.permute(1, 2, 0)
        for i in reversed(range(stages)):
            g_r, g_e = grad_r[k][..., i], grad_e[k][..., i]
            if nonlinearity == "linear":
                torch.mul(g_r, signed_rate[i], out=g_e)
            elif nonlinearity == "tanh":
                torch.mul(g_r, slope[..., i], out=g_e)
            else:  # r = beta y, y = softmax(-e): dL/de = r (<g_r, y> - g_r)
                y = activations[k][..., i]
                torch.mul(torch.sub((g_r * y).sum(-1, keepdim=True), g_r), factors[k][..., i],
                          out=g_e)
            for q, j in ops.couplings_of[i]:
                grad_r[k][..., j].addcmul_(g_e, coupling[q])
        gM.baddbmm_(grad_e[k], f_n)
        grad_f[k].baddbmm_(grad_e[k].transpose(1, 2), states[k])
        if n in position:
            gM += grad_kept[position[n]]
    steps = slice(start, stop)
    # Rates: r = beta y with y = -e (linear), -tanh(e) (tanh), softmax(-e).
    grad_rate = (grad_r * activations).sum(2)  # (steps, N, S)
    if nonlinearity != "softmax":
        grad_rate = grad_rate.neg()
    # Gram terms: coupling_ij = h a_ij (f_i . f_j), symmetric in f_i and f_j.
    f_segment = ops.f[steps]  # (steps, S, N, d_in)
    for i, j, a_ij in ops.pairs:
        grad_gram = (grad_e[..., i] * factors[..., j]).sum(-1)  # (steps, N)
        grad_gram = grad_gram.mul_(ops.steps[steps].unsqueeze(-1) * a_ij).unsqueeze(-1)
        grad_f[:, :, i].addcmul_(grad_gram, f_segment[:, j])
        grad_f[:, :, j].addcmul_(grad_gram, f_segment[:, i])
    grad_fixed, grad_target, grad_rate_points = grads
    per_step = spec.layout.per_step
    for i, offset in enumerate(spec.layout.offsets):
        rows = slice(start * per_step + offset, (stop - 1) * per_step + offset + 1, per_step)
        grad_fixed[rows] += grad_f[:, :, i]
        grad_target[rows] -= grad_e[..., i]
        grad_rate_points[rows] += grad_rate[..., i : i + 1]

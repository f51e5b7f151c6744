"""The latent flow of the world models: ``z(t)`` under an autonomous ODE ``dz/dt = f(z)``.

:func:`flow` integrates a batch of latents ``z`` of shape ``(batch, latent)`` from ``t = 0``
through an ascending grid of times ``0 = g_0 < g_1 < ... < g_{G-1}`` and returns the
states at every grid time, shape ``(G, batch, latent)``. One solve serves the whole batch:
a batch whose samples wait different gaps is solved once on ``[0] + sorted unique gaps``
and each sample reads the row of its own gap.

It computes what ``torchdiffeq.odeint(lambda t, z: f(z), z, grid, method=...)`` computes,
the same algorithm with the same floating point decisions, only with less Python and
memory traffic per stage:

``"dopri5"`` (adaptive, the world models' solver)
    Dormand-Prince 5(4) with first-same-as-last. Its first step comes from Hairer's
    heuristic (two evaluations of ``f``); a step ``h`` is accepted when the error ratio
    ``r = rms(e / (atol + rtol max(|y_0|, |y_1|)))`` over the *whole* batch is at most 1,
    ``e`` the difference of the 5th and 4th order solutions, and the next step is
    ``h min(10, max(0.9 r^(-1/5), 0.2 if rejected else 1))`` (``10 h`` when ``r = 0``).
    Times live in float64, the state and the stage coefficients ``h a_ij`` in the
    state's dtype. Grid times inside an accepted step ``[t_0, t_1]`` are read off the
    quartic through ``y_0, y_1``, the midpoint estimate ``y_0 + h sum_j c_j k_j`` and
    the end slopes ``f(y_0), f(y_1)``, at ``x = (t - t_0) / (t_1 - t_0)``.
``"euler"``, ``"midpoint"``, ``"rk4"`` (fixed grid)
    Steps of ``step_size`` from 0 (the last one shortened to end on ``g_{G-1}``), or
    without ``step_size`` one step per grid interval; times in the grid's dtype; a grid
    time between two steps is interpolated linearly.
    ``"rk4"`` is torchdiffeq's 3/8 rule (stages at ``t, t+h/3, t+2h/3, t+h``).

The results are torchdiffeq's bit for bit (float32 and float64 on the CPU, tested),
with the same number of evaluations of ``f``. That takes more than the same formulas: at
small steps the error estimate is a difference of nearly equal float32 sums, so a sum
rounded in another order changes the error ratio by percents, the next step size, and
then the whole step sequence. So every stage sum ``y_0 + sum_j (h a_ij) k_j`` rounds each
product and adds the products in the order ``torch.sum`` adds them (probed once per dtype
and device among the orders of PyTorch's CPU sum kernel; where none fits, ``torch.sum``
itself is used), and the dense output is formed operation by operation like torchdiffeq's.

Two execution paths give the same numbers. Without autograd (``torch.no_grad()``, or
nothing requiring a gradient) every intermediate lives in per-call buffers updated in
place, and a field built by :func:`mlp_field` writes its layers into preallocated
buffers with ``addmm``. With autograd every operation is out of place, so plain
backpropagation through the solver gives torchdiffeq's gradients, including the
dependence of the first step size (and of the times it shifts) on ``z`` and on the
field's parameters; the later step sizes are constants for autograd, as there.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["METHODS", "FlowMethod", "MLPField", "flow", "mlp_field"]


class FlowMethod(NamedTuple):
    """A solver of :func:`flow`: adaptive or on a fixed grid, its order and its cost.

    ``evaluations_per_step``: evaluations of ``f`` per (attempted) step; dopri5 reuses its
    last stage as the next step's first (plus two evaluations once, for the first step).
    """

    adaptive: bool
    order: int
    evaluations_per_step: int


#: The methods of :func:`flow`, by name.
METHODS: dict[str, FlowMethod] = {
    "dopri5": FlowMethod(adaptive=True, order=5, evaluations_per_step=6),
    "euler": FlowMethod(adaptive=False, order=1, evaluations_per_step=1),
    "midpoint": FlowMethod(adaptive=False, order=2, evaluations_per_step=2),
    "rk4": FlowMethod(adaptive=False, order=4, evaluations_per_step=4),
}

# Dormand-Prince 5(4): stage i (i = 0..5) feeds f with y_0 + h sum_j _BETA[i][j] k_j; the
# last stage is the 5th order solution, k_6 = f(y_1).
_BETA = (
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
# 5th minus 4th order weights over k_0..k_6 (the local error estimate is h sum_j e_j k_j).
_ERROR = (
    35 / 384 - 1951 / 21600,
    0.0,
    500 / 1113 - 22642 / 50085,
    125 / 192 - 451 / 720,
    -2187 / 6784 - -12231 / 42400,
    11 / 84 - 649 / 6300,
    -1.0 / 60.0,
)
# Weights of the midpoint estimate y(t_0 + h/2) ~ y_0 + h sum_j m_j k_j (Shampine).
_MID = (
    6025192743 / 30085553152 / 2,
    0.0,
    51252292925 / 65400821598 / 2,
    -2691868925 / 45128329728 / 2,
    187940372067 / 1594534317056 / 2,
    -1776094331 / 19743644256 / 2,
    11237099 / 235043384 / 2,
)
_SAFETY, _IFACTOR, _DFACTOR = 0.9, 10.0, 0.2
_THIRD = 1 / 3


class MLPField:
    """``f(z) = L_n(tanh(... tanh(L_1(z))))`` over the given ``nn.Linear`` layers.

    Calling it evaluates the layers like ``nn.Sequential(L_1, Tanh, ..., L_n)`` (autograd
    safe). :func:`flow` without autograd calls :meth:`write` instead, which runs the same
    ``addmm`` products into preallocated buffers (bit-identical results, no allocation).
    The field holds references to the layers, not copies: training them updates it.
    """

    def __init__(self, linears: Sequence[nn.Linear]):
        linears = list(linears)
        if not linears or not all(isinstance(layer, nn.Linear) for layer in linears):
            raise ValueError(f"a non-empty list of nn.Linear expected, got {linears!r}")
        for before, after in itertools.pairwise(linears):
            if before.out_features != after.in_features:
                raise ValueError(f"layer widths must chain, got {before} followed by {after}")
        self.linears = linears
        self._hidden: list[Tensor] = []

    def __call__(self, z: Tensor) -> Tensor:
        """``f(z)``, ``z`` of shape ``(..., in_features)`` -> ``(..., out_features)``."""
        h = z
        for index, layer in enumerate(self.linears):
            if index:
                h = torch.tanh(h)
            h = F.linear(h, layer.weight, layer.bias)
        return h

    def write(self, z: Tensor, out: Tensor) -> Tensor:
        """``f(z)`` for ``z`` of shape ``(batch, in_features)`` into ``out``, without autograd."""
        shapes = [(z.shape[0], layer.out_features) for layer in self.linears[:-1]]
        if [tuple(h.shape) for h in self._hidden] != shapes or (
            self._hidden and (self._hidden[0].dtype, self._hidden[0].device) != (z.dtype, z.device)
        ):
            self._hidden = [torch.empty(shape, dtype=z.dtype, device=z.device) for shape in shapes]
        h = z
        with torch.no_grad():
            for index, layer in enumerate(self.linears):
                target = self._hidden[index] if index < len(self._hidden) else out
                if layer.bias is None:
                    torch.mm(h, layer.weight.t(), out=target)
                else:
                    torch.addmm(layer.bias, h, layer.weight.t(), out=target)
                if index < len(self._hidden):
                    target.tanh_()
                h = target
        return out


def mlp_field(linears: Sequence[nn.Linear]) -> MLPField:
    """The field ``z -> L_n(tanh(... tanh(L_1(z))))`` of :class:`MLPField` over ``linears``."""
    return MLPField(linears)


def flow(func: Callable[[Tensor], Tensor], z: Tensor, grid: Tensor, *, method: str = "dopri5",
         rtol: float = 1e-5, atol: float = 1e-6, step_size: Optional[float] = None) -> Tensor:
    """Flow ``z`` under ``dz/dt = func(z)`` and return the states at the grid times.

    Args:
        func: the autonomous field, ``(batch, latent) -> (batch, latent)`` (an ``nn.Module``
            or an :class:`MLPField`, whose no-autograd evaluations then use buffers).
        z: the initial states ``z(0)``, shape ``(batch, latent)``, any float dtype/device.
        grid: the times, shape ``(G,)``, ``grid[0] == 0``, strictly ascending.
        method: a key of :data:`METHODS`.
        rtol, atol: dopri5's tolerances (the world models use ``atol = rtol / 10``).
        step_size: the step of the fixed-grid methods; ``None``: one step per grid interval
            (as torchdiffeq without ``step_size``). Not for dopri5.

    Returns:
        ``(G, batch, latent)``: row ``g`` is ``z(grid[g])`` (row 0 is ``z``).

    Raises:
        ValueError: a bad grid, method, tolerance or step size.
        FloatingPointError: the state or its derivative became non-finite, or dopri5's
            step size underflowed (the flow is too stiff or diverges over the gaps).
    """
    times = _check(z, grid, method, rtol, atol, step_size)
    if len(times) == 1:
        return z.unsqueeze(0).clone()
    fast = not (torch.is_grad_enabled() and (z.requires_grad or _has_trainable(func, z)))
    work = _Work(func, z, fast)
    with torch.set_grad_enabled(not fast):
        if METHODS[method].adaptive:
            return _dopri5(work, z, times, float(rtol), float(atol))
        steps, gaps = _fixed_times(grid, step_size)
        grid_rnd = _rounder(grid.dtype)

        def fraction(t: float, t0: float, t1: float) -> float:
            return grid_rnd(grid_rnd(t - t0) / grid_rnd(t1 - t0))

        return _fixed_grid(work, method, z, times, steps, gaps, fraction)


def _has_trainable(func: Callable, z: Tensor) -> bool:
    """Whether autograd would record ``func``: it has (or reads) a tensor needing a gradient."""
    if isinstance(func, MLPField):
        return any(p.requires_grad for layer in func.linears for p in layer.parameters())
    if isinstance(func, nn.Module):
        return any(p.requires_grad for p in func.parameters())
    return func(z[:1]).requires_grad


def _check(z: Tensor, grid: Tensor, method: str, rtol: float, atol: float,
           step_size: Optional[float]) -> list[float]:
    """Validate the arguments of :func:`flow`; the grid times as Python floats."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    if not isinstance(z, Tensor) or not z.is_floating_point() or z.numel() == 0:
        raise ValueError(f"z must be a non-empty float tensor (batch, latent), got {z!r:.60}")
    if not isinstance(grid, Tensor) or grid.dim() != 1 or len(grid) == 0:
        raise ValueError(f"grid must be a non-empty 1-D tensor of times, got {grid!r:.60}")
    if not grid.is_floating_point():
        raise ValueError(f"grid must be a float tensor, got dtype {grid.dtype}")
    times = grid.detach().tolist()
    if times[0] != 0:
        raise ValueError(f"grid[0] must be 0 (the time of z), got {times[0]}")
    if any(not later > earlier for earlier, later in itertools.pairwise(times)) or not all(
            math.isfinite(t) for t in times):
        raise ValueError(f"grid must be finite and strictly ascending, got {times}")
    if METHODS[method].adaptive:
        if step_size is not None:
            raise ValueError(f"step_size is for the fixed-grid methods, got {step_size} "
                             f"with {method!r}")
        if not (rtol >= 0 and atol >= 0 and rtol + atol > 0):
            raise ValueError(f"rtol, atol >= 0 (not both 0) expected, got {rtol}, {atol}")
    elif step_size is not None and not 0 < step_size < math.inf:
        raise ValueError(f"method {method!r} needs a finite step_size > 0 or None, "
                         f"got {step_size}")
    return times


def _rounder(dtype: torch.dtype) -> Callable[[float], float]:
    """Rounding of a Python float to ``dtype`` (the result as a Python float).

    For float32 a float64 operation on float32 values followed by this rounding equals the
    float32 operation (53 >= 2 * 24 + 2 bits), so scalar arithmetic can stay in Python.
    """
    if dtype == torch.float64:
        return float
    if dtype == torch.float32:
        return lambda value: float(np.float32(value))
    return lambda value: torch.tensor(value, dtype=dtype).item()


class _Work:
    """The field evaluations and scratch tensors of one call of :func:`flow`.

    In the no-autograd path ``buffer(name)`` is a per-call tensor shaped like ``z`` and
    ``reuse(t)`` is ``t`` (operations then write in place); in the autograd path both give
    ``None`` (``out=None``: every operation makes a new tensor).
    """

    def __init__(self, func: Callable[[Tensor], Tensor], z: Tensor, fast: bool):
        self.func, self.fast = func, fast
        self._shape, self._dtype, self._device = z.shape, z.dtype, z.device
        self._buffers: dict[str, Tensor] = {}
        self._writes = fast and isinstance(func, MLPField) and z.dim() == 2

    def buffer(self, name: str) -> Optional[Tensor]:
        if not self.fast:
            return None
        if name not in self._buffers:
            self._buffers[name] = torch.empty(self._shape, dtype=self._dtype, device=self._device)
        return self._buffers[name]

    def reuse(self, tensor: Tensor) -> Optional[Tensor]:
        return tensor if self.fast else None

    def evaluate(self, y: Tensor, slot: str) -> Tensor:
        """``func(y)``; written into the buffer ``slot`` for an :class:`MLPField` (no autograd)."""
        if self._writes:
            return self.func.write(y, self.buffer(slot))
        k = self.func(y)
        if self.fast and k.untyped_storage().data_ptr() == y.untyped_storage().data_ptr():
            k = k.clone()  # a view of the input buffer, which the next stage overwrites
        return k


_Tree = tuple  # items added left to right; an item is a stage index or a tuple of them (a lane)


def _sum_candidates(count: int) -> list[_Tree]:
    """How the CPU kernel of ``torch.sum`` may add ``count <= 7`` values along a contiguous
    last dimension: four scalar partial sums (the values past the first four join the
    first), or ``width``-lane vectors (the scalar tail first, then the lane sums in order)."""
    scalar = tuple(range(count)) if count <= 4 else (0, *range(4, count), 1, 2, 3)
    trees = [scalar]
    for width in (2, 4, 8, 16):
        vectors = count // width
        if vectors:
            lanes = tuple(tuple(lane + width * v for v in range(vectors)) for lane in range(width))
            trees.append(tuple(range(vectors * width, count)) + lanes)
    return trees


def _fold(tree: _Tree, value: Callable[[int], Tensor]) -> Tensor:
    """``value(j)`` added along ``tree`` with out-of-place operations."""
    total = None
    for item in tree:
        term = _fold(item, value) if isinstance(item, tuple) else value(item)
        total = term if total is None else total + term
    return total


@functools.lru_cache(maxsize=None)
def _sum_tree(count: int, dtype: torch.dtype, device: torch.device) -> Optional[_Tree]:
    """The order in which ``torch.sum(x, -1)`` adds ``x``'s ``count`` last entries on this
    device and dtype (probed once), or None when none of the known orders reproduces it."""
    generator = torch.Generator().manual_seed(count)
    probe = torch.randn(512, count, generator=generator, dtype=torch.float64)
    probe *= 10.0 ** (6 * torch.rand(512, count, generator=generator, dtype=torch.float64) - 3)
    probe = probe.to(dtype=dtype, device=device)
    reference = probe.sum(-1)
    for tree in _sum_candidates(count):
        if torch.equal(_fold(tree, lambda j: probe[:, j]), reference):
            return tree
    return None


def _prune(tree: _Tree, keep: Callable[[int], bool]) -> _Tree:
    """``tree`` without the stages that ``keep`` rejects (and without emptied lanes)."""
    items = []
    for item in tree:
        if isinstance(item, tuple):
            item = _prune(item, keep)
            if len(item) == 1:
                item = item[0]
        if item != () and (isinstance(item, tuple) or keep(item)):
            items.append(item)
    return tuple(items)


def _combine(work: _Work, y0: Optional[Tensor], ks: Sequence[Tensor], coefficients: Sequence,
             out: Optional[Tensor]) -> Tensor:
    """``y_0 + sum_j c_j k_j`` as torchdiffeq forms it (``y0 + torch.sum(k * c, -1)``): every
    product rounded, the products added in ``torch.sum``'s order, then ``y_0``.

    Coefficients are floats (float zeros are left out: adding a zero changes nothing), or
    tensors that carry the first step's gradient.
    """
    tree = _sum_tree(len(coefficients), ks[0].dtype, ks[0].device)
    if tree is None:  # an unknown summation order: torchdiffeq's own operations
        total = torch.stack([k * c for k, c in zip(ks[:len(coefficients)], coefficients, strict=True)], -1).sum(-1)
        total = total if y0 is None else y0 + total
        return out.copy_(total) if work.fast else total
    tree = _prune(tree, lambda j: isinstance(coefficients[j], Tensor) or coefficients[j] != 0)
    if not work.fast:
        total = _fold(tree, lambda j: ks[j] * coefficients[j])
        return total if y0 is None else y0 + total
    product, lane = work.buffer("product"), work.buffer("lane")

    def accumulate(items: _Tree, target: Tensor) -> Tensor:
        for index, item in enumerate(items):
            into = target if index == 0 else lane if isinstance(item, tuple) else product
            if isinstance(item, tuple):
                term = accumulate(item, into)
            else:
                term = torch.mul(ks[item], coefficients[item], out=into)
            if index:
                target.add_(term)
        return target

    accumulate(tree, out)
    return out if y0 is None else out.add_(y0)


def _rms(x: Tensor) -> Tensor:
    """Root mean square over all elements (torchdiffeq's default norm), a 0-dim tensor."""
    return x.abs().pow(2).mean().sqrt()


def _first_step(work: _Work, y0: Tensor, f0: Tensor, rtol: float, atol: float) -> Tensor:
    """Hairer's starting step for a 4th order error estimate, in ``y0``'s dtype (0-dim).

    ``h_0 = 0.01 d_0 / d_1`` (``1e-6`` when ``d_0`` or ``d_1 < 1e-5``),
    ``h_1 = (0.01 / max(d_1, d_2))^(1/5)`` and the step is ``min(100 h_0, h_1)``, with
    ``d_0 = rms(y_0 / s)``, ``d_1 = rms(f_0 / s)``, ``d_2 = rms((f(y_0 + h_0 f_0) - f_0) / s) / h_0``
    and ``s = atol + rtol |y_0|``.
    """
    scale = atol + y0.abs() * rtol
    d0 = _rms(y0 / scale).abs()
    d1 = _rms(f0 / scale).abs()
    if d0 < 1e-5 or d1 < 1e-5:
        h0 = torch.tensor(1e-6, dtype=y0.dtype, device=y0.device)
    else:
        h0 = 0.01 * d0 / d1
    h0 = h0.abs()
    f1 = work.evaluate(y0 + h0 * f0, "k1")
    d2 = torch.abs(_rms((f1 - f0) / scale) / h0)
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = torch.max(torch.tensor(1e-6, dtype=y0.dtype, device=y0.device), h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / 5.0)
    return torch.min(100 * h0, h1.abs())


def _interpolate(work: _Work, y0: Tensor, y1: Tensor, y_mid: Tensor, f0: Tensor, f1: Tensor,
                 dt, xs: Sequence, outs: Sequence[Optional[Tensor]],
                 rnd: Callable[[float], float]) -> list[Tensor]:
    """The dense output of one dopri5 step at the fractions ``xs`` of the step.

    The quartic ``p(x) = e + d x + c x^2 + b x^3 + a x^4`` with ``p(0) = y_0``, ``p(1) = y_1``,
    ``p(1/2) = y_mid``, ``p'(0) = h f_0``, ``p'(1) = h f_1``: its coefficients and its value
    are formed operation by operation as torchdiffeq forms them, so that they round alike.
    """
    buffer, reuse = work.buffer, work.reuse
    tmp = buffer("fit_tmp")
    a = torch.mul(torch.sub(f1, f0, out=buffer("fit_a")), 2 * dt, out=buffer("fit_a"))
    a = torch.sub(a, torch.mul(torch.add(y1, y0, out=tmp), 8, out=tmp), out=reuse(a))
    a = torch.add(a, torch.mul(y_mid, 16, out=tmp), out=reuse(a))
    b = torch.sub(torch.mul(f0, 5, out=buffer("fit_b")), torch.mul(f1, 3, out=tmp),
                  out=buffer("fit_b"))
    b = torch.add(torch.mul(b, dt, out=reuse(b)), torch.mul(y0, 18, out=tmp), out=reuse(b))
    b = torch.add(b, torch.mul(y1, 14, out=tmp), out=reuse(b))
    b = torch.sub(b, torch.mul(y_mid, 32, out=tmp), out=reuse(b))
    c = torch.mul(torch.sub(f1, torch.mul(f0, 4, out=tmp), out=buffer("fit_c")), dt,
                  out=buffer("fit_c"))
    c = torch.sub(c, torch.mul(y0, 11, out=tmp), out=reuse(c))
    c = torch.sub(c, torch.mul(y1, 5, out=tmp), out=reuse(c))
    c = torch.add(c, torch.mul(y_mid, 16, out=tmp), out=reuse(c))
    d = torch.mul(f0, dt, out=buffer("fit_d"))
    values = []
    for x, out in zip(xs, outs, strict=True):
        total = torch.add(torch.mul(d, x, out=out), y0, out=out)
        power = x
        for coefficient in (c, b, a):
            power = power * x if isinstance(power, Tensor) else rnd(power * x)
            total = torch.add(total, torch.mul(coefficient, power, out=tmp), out=out)
        values.append(total)
    return values


def _diverged(method: str, step: float, time: float, end: float) -> FloatingPointError:
    return FloatingPointError(
        f"{method} met a non-finite state or derivative at t={time:.6g} (of {end:.6g}) with "
        f"step size {step:.3g}: the flow diverges; use smaller gaps or smaller steps")


def _dopri5(work: _Work, z: Tensor, times: list[float], rtol: float, atol: float) -> Tensor:
    """Adaptive Dormand-Prince 5(4) through ``times`` (see the module docstring)."""
    rnd, fast, buffer, end = _rounder(z.dtype), work.fast, work.buffer, times[-1]
    beta = [[rnd(b) for b in row] for row in _BETA]
    error = [rnd(e) for e in _ERROR]
    mid = [rnd(m) for m in _MID]
    slots = [f"k{j}" for j in range(7)]  # buffers of the stages (MLPField, no autograd)
    y0 = buffer("y_a").copy_(z) if fast else z
    spare = buffer("y_b")
    ks: list[Tensor] = [work.evaluate(y0, slots[0])] * 7
    h = _first_step(work, y0, ks[0], rtol, atol)
    dt = float(h.item())
    # With autograd the first step depends on z and the field, and so do the times after
    # it once it is accepted: they carry ``shift`` (value 0, the first step's gradient).
    h_grad = h if h.requires_grad else None
    shift: Optional[Tensor] = None
    with torch.no_grad():
        a0 = torch.abs(y0, out=buffer("abs_a"))
    a_spare = buffer("abs_b")
    if fast:
        rows = torch.empty((len(times),) + tuple(z.shape), dtype=z.dtype, device=z.device)
        rows[0].copy_(z)
    outs: list[Tensor] = [z]
    t0, index, first = 0.0, 1, True
    while index < len(times):
        if not math.isfinite(dt):
            raise _diverged("dopri5", dt, t0, end)
        if not t0 + dt > t0:
            raise FloatingPointError(
                f"dopri5 step size {dt:.3g} underflowed at t={t0:.6g} (of {end:.6g}): the flow "
                f"is too stiff or diverges; use smaller gaps or a fixed-grid method "
                f"(method='rk4', step_size=...)")
        t1 = t0 + dt
        dt_r = rnd(dt)
        step = h_grad if first and h_grad is not None else dt_r
        for i, row in enumerate(beta):
            if isinstance(step, Tensor):
                coefficients = [step * b for b in row]
            else:
                coefficients = [rnd(b * dt_r) for b in row]
            y = _combine(work, y0, ks, coefficients, spare if i == 5 else buffer("stage"))
            ks[i + 1] = work.evaluate(y, slots[i + 1])
        y1 = y
        with torch.no_grad():  # the error ratio only decides: no gradient flows through it
            err = _combine(work, None, ks, [rnd(e * dt_r) for e in error], buffer("err"))
            a1 = torch.abs(y1, out=a_spare)
            tol = torch.maximum(a0, a1, out=buffer("tol")).mul_(rtol).add_(atol)
            # |x|^2 = x * x exactly: torchdiffeq's rms norm with one pass less
            ratio = float(err.div_(tol).mul_(err).mean().sqrt().item())
        if math.isnan(ratio):
            raise _diverged("dopri5", dt, t0, end)
        if ratio <= 1:
            count = 0
            while index + count < len(times) and times[index + count] <= t1:
                count += 1
            if count:
                weights = [step * m if isinstance(step, Tensor) else rnd(m * dt_r) for m in mid]
                y_mid = _combine(work, y0, ks, weights, buffer("y_mid"))
                xs = []
                for t in times[index:index + count]:
                    if shift is not None:  # both ends of the step carry the shift
                        x = ((t - t0) - shift) / (t1 - t0)
                    elif first and h_grad is not None:  # the step is the first step itself
                        x = t / h_grad.double()
                    else:
                        x = (t - t0) / (t1 - t0)
                    xs.append(x.to(z.dtype) if isinstance(x, Tensor) else rnd(x))
                targets = list(rows[index:index + count]) if fast else [None] * count
                outs += _interpolate(work, y0, y1, y_mid, ks[0], ks[6], step, xs, targets, rnd)
                index += count
            if first and h_grad is not None:
                shift = h_grad.double() - t1
            y0, spare, a0, a_spare = y1, y0, a1, a0
            ks[0], ks[6], slots[0], slots[6] = ks[6], ks[0], slots[6], slots[0]
            t0 = t1
        dt = _next_step(dt, ratio)
        first = False
    return rows if fast else torch.stack(outs)


def _next_step(dt: float, ratio: float) -> float:
    """``h min(10, max(0.9 r^(-1/5), 0.2 if r >= 1 else 1))``, ``10 h`` for ``r = 0`` (float64)."""
    if ratio == 0:
        return dt * _IFACTOR
    floor = 1.0 if ratio < 1 else _DFACTOR
    return dt * min(_IFACTOR, max(_SAFETY / ratio ** (1.0 / 5.0), floor))


def _fixed_times(grid: Tensor, step_size: Optional[float]) -> tuple[list[float], list[float]]:
    """torchdiffeq's fixed grid in the grid's dtype: the times ``n * step_size`` (the last one
    replaced by ``grid[-1]``), or the grid itself without a step size; and their differences."""
    steps = grid.detach().cpu()
    if step_size is not None:
        count = torch.ceil(steps[-1] / float(step_size) + 1).item()
        steps = torch.arange(0, count, dtype=grid.dtype) * float(step_size)
        steps[-1] = grid[-1]
    return steps.tolist(), (steps[1:] - steps[:-1]).tolist()


def _fixed_step(work: _Work, method: str, y0: Tensor, dt: float,
                out: Optional[Tensor]) -> Tensor:
    """The increment ``y_1 - y_0`` of one fixed-grid step, torchdiffeq's operations in order."""
    buffer, reuse = work.buffer, work.reuse
    k1 = work.evaluate(y0, "k0")
    if method == "euler":
        return torch.mul(k1, dt, out=out)
    s = buffer("stage")
    if method == "midpoint":
        y_mid = torch.add(y0, torch.mul(k1, 0.5 * dt, out=s), out=s)
        return torch.mul(work.evaluate(y_mid, "k1"), dt, out=out)
    # rk4, the 3/8 rule
    k2 = work.evaluate(torch.add(y0, torch.mul(torch.mul(k1, dt, out=s), _THIRD, out=s), out=s),
                       "k1")
    y = torch.mul(torch.sub(k2, torch.mul(k1, _THIRD, out=s), out=s), dt, out=s)
    k3 = work.evaluate(torch.add(y0, y, out=s), "k2")
    y = torch.mul(torch.add(torch.sub(k1, k2, out=s), k3, out=s), dt, out=s)
    k4 = work.evaluate(torch.add(y0, y, out=s), "k3")
    d = torch.add(k1, torch.mul(torch.add(k2, k3, out=out), 3, out=out), out=out)
    d = torch.mul(torch.add(d, k4, out=reuse(d)), dt, out=reuse(d))
    return torch.mul(d, 0.125, out=reuse(d))


def _fixed_grid(work: _Work, method: str, z: Tensor, times: list[float], steps: list[float],
                gaps: list[float], fraction: Callable[[float, float, float], float]) -> Tensor:
    """A fixed-grid method over ``steps``; grid times between two steps are interpolated
    linearly, ``y_0 + (t - t_0) / (t_1 - t_0) (y_1 - y_0)``."""
    fast, buffer = work.fast, work.buffer
    if fast:
        rows = torch.empty((len(times),) + tuple(z.shape), dtype=z.dtype, device=z.device)
        rows[0].copy_(z)
    outs: list[Tensor] = [z]
    y0, spare, index = z, buffer("y_a"), 1
    for t0, t1, dt in zip(steps[:-1], steps[1:], gaps, strict=True):
        y1 = torch.add(y0, _fixed_step(work, method, y0, dt, spare), out=spare)
        while index < len(times) and t1 >= times[index]:
            t, target = times[index], rows[index] if fast else None
            if t == t0 or t == t1:
                value = y0 if t == t0 else y1
                value = target.copy_(value) if fast else value
            else:
                value = torch.mul(torch.sub(y1, y0, out=target), fraction(t, t0, t1), out=target)
                value = torch.add(y0, value, out=target)
            outs.append(value)
            index += 1
        spare = (buffer("y_b") if y0 is z else y0) if fast else None  # never write into z
        y0 = y1
    result = rows if fast else torch.stack(outs)
    if not bool(torch.isfinite(result[-1]).all()):  # non-finite values stay non-finite
        finite = torch.isfinite(result.detach().flatten(1)).all(1).tolist()
        raise _diverged(method, gaps[0], times[finite.index(False)], times[-1])
    return result

"""The delta, post-tanh delta and Oja recurrences for CUDA GPUs, written with Triton.

The same computation as :class:`fwplab.kernels.KernelRecurrence` (the compiled CPU
kernel) and :class:`fwplab.solvers._FastRecurrence` (the pure-PyTorch fast path): for
recurrence ``n`` (one series and head) and step ``s`` of any fixed-grid tableau with up
to four stages, with ``M`` the fast weights ``(d_out, d_in)``::

    f_i = act_f(fixed[p_i, n]),  c_i = act_c(target[p_i, n]),  beta_i = act_r(rate[p_i, n])
    u_i = M_s f_i + h sum_{j<i} a_ij (f_j . f_i) r_j,     r_i = beta_i g(c_i - u_i)
    M_{s+1} = M_s + h sum_i b_i r_i f_i^T

at the stage points ``p_i = s * per_step + offset_i`` (:class:`fwplab.solvers.StageLayout`).
One Triton program runs one recurrence: ``M`` stays in registers across all steps, the
controls' activations, every stage, the update and the stores of the kept states are
computed on chip, and ``M`` goes to memory only every ``K`` steps (the checkpoints) and
at the kept grid indices (each series' own length: variable lengths).

The backward is one more kernel, one program per recurrence: for each segment of ``K``
steps, last first, it recomputes the segment forward from its checkpoint (keeping the
segment's states, factors ``r_i`` and activations in a per-program scratch buffer), then
walks it in reverse with the hand-written adjoint of :class:`fwplab.solvers._FastRecurrence`,
and scatters the gradients of the raw controls onto the stage points (a point shared by
two steps, the ``c = 1`` stage and the next step's first, is carried in registers and
written once). Controls may be column slices of a larger array (the slow net's joint
projection): they are read in place through their strides.

Triton is optional (``pip install "fwplab[gpu]"``): it is imported only when a recurrence
runs. The kernels run compiled on CUDA tensors, or in Triton's interpreter (numpy, on the
CPU) when ``TRITON_INTERPRET=1`` is set at the call: that is how the tests check them on
machines without a GPU. Both modes are built from the same functions (:func:`_build`), so
a process can use either. Tensors are float32 or float64 (state and controls in one dtype).
"""

from __future__ import annotations

import os
import types
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "ACTIVATIONS",
    "NONLINEARITIES",
    "MAX_STAGES",
    "TritonRecurrence",
    "available",
    "compile_for",
    "enabled",
    "interpreted",
    "recurrence",
    "supports",
    "supports_rule",
    "supports_spec",
]

#: Codes of the rule's correction ``g`` in the kernels.
NONLINEARITIES = {"linear": 0, "tanh": 1, "softmax": 2}
#: Codes of the controls' activations in the kernels.
ACTIVATIONS = {"identity": 0, "tanh": 1, "softmax": 2, "sigmoid": 3}
#: Most stages of a tableau the kernels unroll.
MAX_STAGES = 4

#: ``triton.language`` in the namespaces :func:`_build` makes; the kernels below read it
#: from there, so importing this module does not import Triton.
tl: Any = None


def available() -> bool:
    """Whether Triton imports (the ``gpu`` extra is installed)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def enabled() -> bool:
    """Whether the ``"auto"`` solver may pick this path (``FWPLAB_TRITON`` is not ``0``)."""
    return os.environ.get("FWPLAB_TRITON", "1").strip() != "0"


def interpreted() -> bool:
    """Whether Triton's interpreter is asked for (``TRITON_INTERPRET=1``, read at each call)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def supports(device, dtype: torch.dtype) -> bool:
    """Whether the kernels run tensors of ``dtype`` on ``device``: float32 or float64, on
    CUDA (compiled) or, with :func:`interpreted`, on the CPU; Triton must import."""
    kind = torch.device(device).type
    return (dtype in (torch.float32, torch.float64) and available()
            and (kind == "cuda" or (kind == "cpu" and interpreted())))


def supports_rule(nonlinearity: str, activations: tuple[str, str, str]) -> bool:
    """Whether the kernels hold a recurrence's correction ``g`` and the activations of the
    fixed factor, the target and the rate (the CPU kernel's tables)."""
    return nonlinearity in NONLINEARITIES and all(a in ACTIVATIONS for a in activations)


def supports_spec(spec) -> bool:
    """Whether the kernels unroll ``spec``'s tableau (a :class:`fwplab.solvers.RecurrenceSpec`):
    at most :data:`MAX_STAGES` stages, the first at the step's start, and no interior stage
    point shared by two stages (every method of :data:`fwplab.solvers.TABLEAUS`)."""
    offsets, per_step = spec.layout.offsets, spec.layout.per_step
    interior = [o for o in offsets if 0 < o < per_step]
    return (len(offsets) <= MAX_STAGES and offsets[0] == 0
            and len(interior) == len(set(interior)))


# ------------------------------------------------------------------ the Triton functions
# Plain functions here; _build turns them into Triton functions (compiled or interpreted).
# Masked lanes (past d_in or d_out in the power-of-two blocks) hold zeros throughout. A
# block mask is narrowed by a scalar condition with tl.where (Triton 3.9's interpreter
# refuses the mask of a block & scalar).


# Only built-in operations of triton.language (tl.reduce with its own combine functions
# rather than tl.sum and tl.max, tl.full rather than tl.zeros, a sigmoid of our own): the
# others are Triton functions themselves, which an interpreted kernel can call only if
# Triton was imported with TRITON_INTERPRET=1 already set (and at a high cost per call).


def _sum(x, axis):
    return tl.reduce(x, axis, tl.standard._sum_combine)


def _max(x, axis):
    return tl.reduce(x, axis, tl.standard._elementwise_max)


def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


def _tanh(x):
    t = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -y, y)


def _activate(x, mask, CODE: tl.constexpr):
    """The activation ``CODE`` of a vector (softmax over its unmasked lanes)."""
    if CODE == 1:
        y = _tanh(x)
    elif CODE == 2:
        z = tl.where(mask, x, -float("inf"))
        z = tl.exp(z - _max(z, 0))
        y = z / _sum(z, 0)
    elif CODE == 3:
        y = _sigmoid(x)
    else:
        y = x
    return tl.where(mask, y, 0.0)


def _activate_scalar(x, CODE: tl.constexpr):
    """The activation of the rate, one number (a softmax over one entry is 1)."""
    if CODE == 1:
        y = _tanh(x)
    elif CODE == 2:
        y = x * 0.0 + 1.0
    elif CODE == 3:
        y = _sigmoid(x)
    else:
        y = x
    return y


def _activation_grad(g, y, mask, CODE: tl.constexpr):
    """``dL/dx`` from ``g = dL/dy`` and the activated ``y`` of a vector."""
    if CODE == 1:
        out = g * (1.0 - y * y)
    elif CODE == 2:
        out = y * (g - _sum(g * y, 0))
    elif CODE == 3:
        out = g * y * (1.0 - y)
    else:
        out = g
    return tl.where(mask, out, 0.0)


def _activation_grad_scalar(g, y, CODE: tl.constexpr):
    if CODE == 1:
        out = g * (1.0 - y * y)
    elif CODE == 2:
        out = g * 0.0
    elif CODE == 3:
        out = g * y * (1.0 - y)
    else:
        out = g
    return out


def _controls(fixed, target, rate, sfp, sfn, stp, stn, srp, srn, point, n, oi, oo, mi, mo,
              AF: tl.constexpr, AC: tl.constexpr, AR: tl.constexpr):
    """The activated controls ``f (d_in), c (d_out), beta`` of recurrence ``n`` at ``point``."""
    point = tl.cast(point, tl.int64)
    f = tl.load(fixed + point * sfp + n * sfn + oi, mask=mi, other=0.0)
    c = tl.load(target + point * stp + n * stn + oo, mask=mo, other=0.0)
    beta = tl.load(rate + point * srp + n * srn)
    return (_activate(f, mi, AF), _activate(c, mo, AC), _activate_scalar(beta, AR))


def _factor(e, beta, mo, G: tl.constexpr):
    """``r = beta g(-e)`` for ``e = u - c``, and the activation the backward needs:
    ``e`` (linear), ``tanh(e)`` (tanh) or ``softmax(-e)`` (softmax)."""
    if G == 0:
        act = e
        r = -beta * e
    elif G == 1:
        act = _tanh(e)
        r = -beta * act
    else:
        z = tl.where(mo, -e, -float("inf"))
        z = tl.exp(z - _max(z, 0))
        act = z / _sum(z, 0)
        r = beta * act
    return tl.where(mo, act, 0.0), tl.where(mo, r, 0.0)


def _factor_grad(gr, act, r, beta, G: tl.constexpr):
    """``dL/de`` from ``dL/dr`` (see :func:`_factor`)."""
    if G == 0:
        ge = -beta * gr
    elif G == 1:
        ge = -beta * (1.0 - act * act) * gr
    else:
        ge = r * (_sum(gr * act, 0) - gr)
    return ge


def _stages(M, h, s, fixed, target, rate, sfp, sfn, stp, stn, srp, srn, n, oi, oo, mi, mo,
            S: tl.constexpr, PS: tl.constexpr, O1: tl.constexpr, O2: tl.constexpr,
            O3: tl.constexpr, A10: tl.constexpr, A20: tl.constexpr, A21: tl.constexpr,
            A30: tl.constexpr, A31: tl.constexpr, A32: tl.constexpr, G: tl.constexpr,
            AF: tl.constexpr, AC: tl.constexpr, AR: tl.constexpr):
    """Every stage of step ``s`` from ``M = M_s``: fixed factors, activations, factors."""
    base = s * PS
    f0, c0, b0 = _controls(fixed, target, rate, sfp, sfn, stp, stn, srp, srn, base, n,
                           oi, oo, mi, mo, AF, AC, AR)
    a0, r0 = _factor(_sum(M * f0[None, :], 1) - c0, b0, mo, G)
    f1 = f0 * 0.0
    f2 = f1
    f3 = f1
    a1 = a0 * 0.0
    a2 = a1
    a3 = a1
    r1 = a1
    r2 = a1
    r3 = a1
    if S > 1:
        f1, c1, b1 = _controls(fixed, target, rate, sfp, sfn, stp, stn, srp, srn, base + O1,
                               n, oi, oo, mi, mo, AF, AC, AR)
        e1 = _sum(M * f1[None, :], 1) - c1
        if A10 != 0.0:
            e1 += (h * A10 * _sum(f0 * f1, 0)) * r0
        a1, r1 = _factor(e1, b1, mo, G)
    if S > 2:
        f2, c2, b2 = _controls(fixed, target, rate, sfp, sfn, stp, stn, srp, srn, base + O2,
                               n, oi, oo, mi, mo, AF, AC, AR)
        e2 = _sum(M * f2[None, :], 1) - c2
        if A20 != 0.0:
            e2 += (h * A20 * _sum(f0 * f2, 0)) * r0
        if A21 != 0.0:
            e2 += (h * A21 * _sum(f1 * f2, 0)) * r1
        a2, r2 = _factor(e2, b2, mo, G)
    if S > 3:
        f3, c3, b3 = _controls(fixed, target, rate, sfp, sfn, stp, stn, srp, srn, base + O3,
                               n, oi, oo, mi, mo, AF, AC, AR)
        e3 = _sum(M * f3[None, :], 1) - c3
        if A30 != 0.0:
            e3 += (h * A30 * _sum(f0 * f3, 0)) * r0
        if A31 != 0.0:
            e3 += (h * A31 * _sum(f1 * f3, 0)) * r1
        if A32 != 0.0:
            e3 += (h * A32 * _sum(f2 * f3, 0)) * r2
        a3, r3 = _factor(e3, b3, mo, G)
    return f0, f1, f2, f3, a0, a1, a2, a3, r0, r1, r2, r3


def _update(M, h, f0, f1, f2, f3, r0, r1, r2, r3, S: tl.constexpr, B0: tl.constexpr,
            B1: tl.constexpr, B2: tl.constexpr, B3: tl.constexpr):
    """``M + h sum_i b_i r_i f_i^T``."""
    if B0 != 0.0:
        M += (h * B0) * r0[:, None] * f0[None, :]
    if S > 1 and B1 != 0.0:
        M += (h * B1) * r1[:, None] * f1[None, :]
    if S > 2 and B2 != 0.0:
        M += (h * B2) * r2[:, None] * f2[None, :]
    if S > 3 and B3 != 0.0:
        M += (h * B3) * r3[:, None] * f3[None, :]
    return M


def _forward_kernel(fixed, target, rate, sfp, sfn, stp, stn, srp, srn, M0, steps, keep_position,
                    kept, checkpoints, n_steps, flat, d_in, d_out, every,
                    BI: tl.constexpr, BO: tl.constexpr, S: tl.constexpr, PS: tl.constexpr,
                    O1: tl.constexpr, O2: tl.constexpr, O3: tl.constexpr,
                    A10: tl.constexpr, A20: tl.constexpr, A21: tl.constexpr,
                    A30: tl.constexpr, A31: tl.constexpr, A32: tl.constexpr,
                    B0: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr, B3: tl.constexpr,
                    G: tl.constexpr, AF: tl.constexpr, AC: tl.constexpr, AR: tl.constexpr):
    """One recurrence per program: the kept states and the checkpoints every ``every`` steps."""
    n = tl.program_id(0).to(tl.int64)
    oi = tl.arange(0, BI)
    oo = tl.arange(0, BO)
    mi = oi < d_in
    mo = oo < d_out
    size = d_out * d_in
    square = oo[:, None] * d_in + oi[None, :]
    inside = mo[:, None] & mi[None, :]
    M = tl.load(M0 + n * size + square, mask=inside, other=0.0)
    tl.store(checkpoints + n * size + square, M, mask=inside)
    where = tl.load(keep_position)
    tl.store(kept + (tl.maximum(where, 0) * flat + n) * size + square, M,
             mask=tl.where(where >= 0, inside, False))
    for s in range(n_steps):
        h = tl.load(steps + s)
        f0, f1, f2, f3, a0, a1, a2, a3, r0, r1, r2, r3 = _stages(
            M, h, s, fixed, target, rate, sfp, sfn, stp, stn, srp, srn, n, oi, oo, mi, mo,
            S, PS, O1, O2, O3, A10, A20, A21, A30, A31, A32, G, AF, AC, AR)
        M = _update(M, h, f0, f1, f2, f3, r0, r1, r2, r3, S, B0, B1, B2, B3)
        where = tl.load(keep_position + s + 1)
        tl.store(kept + (tl.maximum(where, 0) * flat + n) * size + square, M,
                 mask=tl.where(where >= 0, inside, False))
        stored = (s + 1) // every
        tl.store(checkpoints + (stored.to(tl.int64) * flat + n) * size + square, M,
                 mask=tl.where((s + 1) % every == 0, inside, False))


def _stage_grads(gr, act, r, beta, mo, G: tl.constexpr):
    """``dL/de`` and ``dL/dbeta`` of one stage (``r = beta y`` with ``y = -e``, ``-tanh(e)``
    or ``softmax(-e)``)."""
    ge = tl.where(mo, _factor_grad(gr, act, r, beta, G), 0.0)
    gbeta = _sum(gr * act, 0)
    if G != 2:
        gbeta = -gbeta
    return ge, gbeta


def _couple(ge_i, f_i, r_j, f_j, gr_j, gf_i, gf_j, ha):
    """The Gram term ``h a_ij (f_i . f_j) r_j`` of stage ``i``: gradients to ``r_j``, ``f_i``
    and ``f_j``."""
    gr_j += (ha * _sum(f_i * f_j, 0)) * ge_i
    gram = ha * _sum(ge_i * r_j, 0)
    gf_i += gram * f_j
    gf_j += gram * f_i
    return gr_j, gf_i, gf_j


def _later_stage_grads(gM, ge, gf, gb, f, c, b, Mn, next_f, next_c, next_r, carry_f, carry_c,
                       carry_r, grad_fixed, grad_target, grad_rate, base, flat, n, d_in, d_out,
                       oi, oo, mi, mo, OFFSET: tl.constexpr, PS: tl.constexpr, AF: tl.constexpr,
                       AC: tl.constexpr, AR: tl.constexpr):
    """Stage k > 0 of a step, walked back: its share of dL/dM and its raw controls'
    gradients, added to the step's first point (``OFFSET == 0``), carried to the next
    step's first point (``OFFSET == PS``), or stored at its own point in between.

    Returns ``(gM, next_f, next_c, next_r, carry_f, carry_c, carry_r)``."""
    gM += ge[:, None] * f[None, :]
    gf += _sum(Mn * ge[:, None], 0)
    g_f = _activation_grad(gf, f, mi, AF)
    g_c = _activation_grad(-ge, c, mo, AC)
    g_r = _activation_grad_scalar(gb, b, AR)
    if OFFSET == 0:
        next_f += g_f
        next_c += g_c
        next_r += g_r
    elif OFFSET == PS:
        carry_f += g_f
        carry_c += g_c
        carry_r += g_r
    else:
        p = (base + OFFSET).to(tl.int64) * flat + n
        tl.store(grad_fixed + p * d_in + oi, g_f, mask=mi)
        tl.store(grad_target + p * d_out + oo, g_c, mask=mo)
        tl.store(grad_rate + p, g_r)
    return gM, next_f, next_c, next_r, carry_f, carry_c, carry_r


def _backward_kernel(fixed, target, rate, sfp, sfn, stp, stn, srp, srn, steps, keep_position,
                     checkpoints, grad_kept, scratch_M, scratch_act, scratch_r,
                     grad_fixed, grad_target, grad_rate, grad_M0,
                     n_steps, flat, d_in, d_out, every,
                     BI: tl.constexpr, BO: tl.constexpr, S: tl.constexpr, PS: tl.constexpr,
                     O1: tl.constexpr, O2: tl.constexpr, O3: tl.constexpr,
                     A10: tl.constexpr, A20: tl.constexpr, A21: tl.constexpr,
                     A30: tl.constexpr, A31: tl.constexpr, A32: tl.constexpr,
                     B0: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr, B3: tl.constexpr,
                     G: tl.constexpr, AF: tl.constexpr, AC: tl.constexpr, AR: tl.constexpr):
    """One recurrence per program: segments last first, each recomputed from its checkpoint
    into the scratch buffers, then walked in reverse."""
    n = tl.program_id(0).to(tl.int64)
    oi = tl.arange(0, BI)
    oo = tl.arange(0, BO)
    mi = oi < d_in
    mo = oo < d_out
    size = d_out * d_in
    square = oo[:, None] * d_in + oi[None, :]
    inside = mo[:, None] & mi[None, :]
    where = tl.load(keep_position + n_steps)
    gM = tl.load(grad_kept + (tl.maximum(where, 0) * flat + n) * size + square,
                 mask=tl.where(where >= 0, inside, False), other=0.0)
    # Gradients of the raw controls at point (s + 1) * PS, written once step s is done.
    carry_f = tl.full((BI,), 0.0, gM.dtype)
    carry_c = tl.full((BO,), 0.0, gM.dtype)
    carry_r = _sum(carry_f, 0)
    segments = (n_steps + every - 1) // every
    for q in range(segments):
        start = (segments - 1 - q) * every
        length = tl.minimum(every, n_steps - start)
        M = tl.load(checkpoints + ((start // every).to(tl.int64) * flat + n) * size + square,
                    mask=inside, other=0.0)
        tl.debug_barrier()
        for k in range(length):
            s = start + k
            h = tl.load(steps + s)
            slot = n * every + k
            tl.store(scratch_M + slot * size + square, M, mask=inside)
            f0, f1, f2, f3, a0, a1, a2, a3, r0, r1, r2, r3 = _stages(
                M, h, s, fixed, target, rate, sfp, sfn, stp, stn, srp, srn, n, oi, oo, mi, mo,
                S, PS, O1, O2, O3, A10, A20, A21, A30, A31, A32, G, AF, AC, AR)
            row = slot * S * d_out + oo
            tl.store(scratch_act + row, a0, mask=mo)
            tl.store(scratch_r + row, r0, mask=mo)
            if S > 1:
                tl.store(scratch_act + row + d_out, a1, mask=mo)
                tl.store(scratch_r + row + d_out, r1, mask=mo)
            if S > 2:
                tl.store(scratch_act + row + 2 * d_out, a2, mask=mo)
                tl.store(scratch_r + row + 2 * d_out, r2, mask=mo)
            if S > 3:
                tl.store(scratch_act + row + 3 * d_out, a3, mask=mo)
                tl.store(scratch_r + row + 3 * d_out, r3, mask=mo)
            M = _update(M, h, f0, f1, f2, f3, r0, r1, r2, r3, S, B0, B1, B2, B3)
        tl.debug_barrier()
        for kk in range(length):
            k = length - 1 - kk
            s = start + k
            h = tl.load(steps + s)
            slot = n * every + k
            Mn = tl.load(scratch_M + slot * size + square, mask=inside, other=0.0)
            row = slot * S * d_out + oo
            base = s * PS
            # Stage 0 (every method has one); the others below, under their stage count.
            f0, c0, b0 = _controls(fixed, target, rate, sfp, sfn, stp, stn, srp, srn, base, n,
                                   oi, oo, mi, mo, AF, AC, AR)
            a0 = tl.load(scratch_act + row, mask=mo, other=0.0)
            r0 = tl.load(scratch_r + row, mask=mo, other=0.0)
            gr0 = (h * B0) * _sum(gM * f0[None, :], 1)
            gf0 = (h * B0) * _sum(gM * r0[:, None], 0)
            f1 = f0 * 0.0
            f2 = f1
            f3 = f1
            gf1 = f1
            gf2 = f1
            gf3 = f1
            gr1 = gr0 * 0.0
            gr2 = gr1
            ge1 = gr1
            ge2 = gr1
            ge3 = gr1
            gb1 = _sum(gr1, 0)
            gb2 = gb1
            gb3 = gb1
            if S > 1:
                f1, c1, b1 = _controls(fixed, target, rate, sfp, sfn, stp, stn, srp, srn,
                                       base + O1, n, oi, oo, mi, mo, AF, AC, AR)
                a1 = tl.load(scratch_act + row + d_out, mask=mo, other=0.0)
                r1 = tl.load(scratch_r + row + d_out, mask=mo, other=0.0)
                gr1 = (h * B1) * _sum(gM * f1[None, :], 1)
                gf1 = (h * B1) * _sum(gM * r1[:, None], 0)
            if S > 2:
                f2, c2, b2 = _controls(fixed, target, rate, sfp, sfn, stp, stn, srp, srn,
                                       base + O2, n, oi, oo, mi, mo, AF, AC, AR)
                a2 = tl.load(scratch_act + row + 2 * d_out, mask=mo, other=0.0)
                r2 = tl.load(scratch_r + row + 2 * d_out, mask=mo, other=0.0)
                gr2 = (h * B2) * _sum(gM * f2[None, :], 1)
                gf2 = (h * B2) * _sum(gM * r2[:, None], 0)
            if S > 3:
                f3, c3, b3 = _controls(fixed, target, rate, sfp, sfn, stp, stn, srp, srn,
                                       base + O3, n, oi, oo, mi, mo, AF, AC, AR)
                a3 = tl.load(scratch_act + row + 3 * d_out, mask=mo, other=0.0)
                r3 = tl.load(scratch_r + row + 3 * d_out, mask=mo, other=0.0)
                gr3 = (h * B3) * _sum(gM * f3[None, :], 1)
                gf3 = (h * B3) * _sum(gM * r3[:, None], 0)
                ge3, gb3 = _stage_grads(gr3, a3, r3, b3, mo, G)
                if A30 != 0.0:
                    gr0, gf3, gf0 = _couple(ge3, f3, r0, f0, gr0, gf3, gf0, h * A30)
                if A31 != 0.0:
                    gr1, gf3, gf1 = _couple(ge3, f3, r1, f1, gr1, gf3, gf1, h * A31)
                if A32 != 0.0:
                    gr2, gf3, gf2 = _couple(ge3, f3, r2, f2, gr2, gf3, gf2, h * A32)
            if S > 2:
                ge2, gb2 = _stage_grads(gr2, a2, r2, b2, mo, G)
                if A20 != 0.0:
                    gr0, gf2, gf0 = _couple(ge2, f2, r0, f0, gr0, gf2, gf0, h * A20)
                if A21 != 0.0:
                    gr1, gf2, gf1 = _couple(ge2, f2, r1, f1, gr1, gf2, gf1, h * A21)
            if S > 1:
                ge1, gb1 = _stage_grads(gr1, a1, r1, b1, mo, G)
                if A10 != 0.0:
                    gr0, gf1, gf0 = _couple(ge1, f1, r0, f0, gr0, gf1, gf0, h * A10)
            ge0, gb0 = _stage_grads(gr0, a0, r0, b0, mo, G)
            # dL/dM_s and the fixed factors' M_s^T dL/de terms.
            gM += ge0[:, None] * f0[None, :]
            gf0 += _sum(Mn * ge0[:, None], 0)
            # Raw-control gradients of each stage; stage 0 sits at point s * PS (carried).
            next_f = _activation_grad(gf0, f0, mi, AF)
            next_c = _activation_grad(-ge0, c0, mo, AC)
            next_r = _activation_grad_scalar(gb0, b0, AR)
            if S > 1:
                gM, next_f, next_c, next_r, carry_f, carry_c, carry_r = _later_stage_grads(
                    gM, ge1, gf1, gb1, f1, c1, b1, Mn, next_f, next_c, next_r, carry_f,
                    carry_c, carry_r, grad_fixed, grad_target, grad_rate, base, flat, n, d_in,
                    d_out, oi, oo, mi, mo, O1, PS, AF, AC, AR)
            if S > 2:
                gM, next_f, next_c, next_r, carry_f, carry_c, carry_r = _later_stage_grads(
                    gM, ge2, gf2, gb2, f2, c2, b2, Mn, next_f, next_c, next_r, carry_f,
                    carry_c, carry_r, grad_fixed, grad_target, grad_rate, base, flat, n, d_in,
                    d_out, oi, oo, mi, mo, O2, PS, AF, AC, AR)
            if S > 3:
                gM, next_f, next_c, next_r, carry_f, carry_c, carry_r = _later_stage_grads(
                    gM, ge3, gf3, gb3, f3, c3, b3, Mn, next_f, next_c, next_r, carry_f,
                    carry_c, carry_r, grad_fixed, grad_target, grad_rate, base, flat, n, d_in,
                    d_out, oi, oo, mi, mo, O3, PS, AF, AC, AR)
            p = (base + PS).to(tl.int64) * flat + n
            tl.store(grad_fixed + p * d_in + oi, carry_f, mask=mi)
            tl.store(grad_target + p * d_out + oo, carry_c, mask=mo)
            tl.store(grad_rate + p, carry_r)
            carry_f = next_f
            carry_c = next_c
            carry_r = next_r
            where = tl.load(keep_position + s)
            gM += tl.load(grad_kept + (tl.maximum(where, 0) * flat + n) * size + square,
                          mask=tl.where(where >= 0, inside, False), other=0.0)
        tl.debug_barrier()
    tl.store(grad_fixed + n * d_in + oi, carry_f, mask=mi)
    tl.store(grad_target + n * d_out + oo, carry_c, mask=mo)
    tl.store(grad_rate + n, carry_r)
    tl.store(grad_M0 + n * size + square, gM, mask=inside)


_FUNCTIONS = ("_sum", "_max", "_sigmoid", "_tanh", "_activate", "_activate_scalar",
              "_activation_grad", "_activation_grad_scalar", "_controls", "_factor",
              "_factor_grad", "_stages", "_update", "_stage_grads", "_couple",
              "_later_stage_grads",
              "_forward_kernel", "_backward_kernel")
_KERNELS = ("_forward_kernel", "_backward_kernel")
_BUILT: dict[bool, dict[str, Any]] = {}


def _build(interpret: bool) -> dict[str, Any]:
    """The Triton functions of this module, compiled (``interpret=False``) or interpreted.

    Each mode gets its own namespace holding ``triton.language`` and that mode's versions
    of every function, looked up by name in the kernels' globals: a compiled kernel calls
    compiled functions; an interpreted kernel calls the helpers as plain Python (the
    interpreter has patched ``triton.language`` for the kernel's run), which skips the
    interpreter's per-call patching, most of its time.
    """
    if interpret not in _BUILT:
        import triton
        import triton.language as language
        from triton.runtime.interpreter import InterpretedFunction

        namespace = dict(globals(), tl=language, triton=triton)
        for name in _FUNCTIONS:
            plain = globals()[name]
            function = types.FunctionType(plain.__code__, namespace, name, plain.__defaults__)
            function.__module__, function.__qualname__ = plain.__module__, plain.__qualname__
            function.__doc__ = plain.__doc__
            if not interpret:
                namespace[name] = triton.JITFunction(function)
            elif name in _KERNELS:
                namespace[name] = InterpretedFunction(function)
            else:  # called as plain Python inside the interpreted kernel (much faster)
                namespace[name] = function
        _BUILT[interpret] = namespace
    return _BUILT[interpret]


# ------------------------------------------------------------------ the autograd wrapper


def _block(size: int) -> int:
    return 1 << max(size - 1, 0).bit_length()


def _constants(spec, activations: tuple[str, str, str], d_in: int, d_out: int) -> dict:
    """The constexpr arguments of both kernels: block sizes, tableau, codes."""
    tableau, layout = spec.tableau, spec.layout
    stages = len(tableau.c)
    offsets = (*layout.offsets, 0, 0, 0)
    a = [[0.0] * 4 for _ in range(4)]
    for i, row in enumerate(tableau.a):
        for j, a_ij in enumerate(row):
            a[i][j] = float(a_ij)
    b = [*map(float, tableau.b), 0.0, 0.0, 0.0]
    return dict(BI=_block(d_in), BO=_block(d_out), S=stages, PS=layout.per_step,
                O1=offsets[1], O2=offsets[2], O3=offsets[3], A10=a[1][0], A20=a[2][0],
                A21=a[2][1], A30=a[3][0], A31=a[3][1], A32=a[3][2], B0=b[0], B1=b[1],
                B2=b[2], B3=b[3], G=NONLINEARITIES[spec.nonlinearity],
                AF=ACTIVATIONS[activations[0]], AC=ACTIVATIONS[activations[1]],
                AR=ACTIVATIONS[activations[2]])


#: Compile options: fused multiply-adds on (as the CPU kernel's ``-ffp-contract=fast``),
#: said explicitly since Triton's default is changing.
_COMPILE_OPTIONS = {"enable_fp_fusion": True}


def _launch_options(interpret: bool, d_in: int, d_out: int) -> dict:
    """Warps per program (one recurrence: its ``M`` block spread over the threads)."""
    if interpret:
        return {}
    cells = _block(d_in) * _block(d_out)
    return {"num_warps": 1 if cells <= 256 else 2 if cells <= 1024 else 4, **_COMPILE_OPTIONS}


def _rows(control: Tensor) -> Tensor:
    """``control (points, N, d)`` with unit stride along ``d`` (a view where it has one)."""
    return control if control.stride(-1) == 1 or control.shape[-1] == 1 else control.contiguous()


def _strides(fixed: Tensor, target: Tensor, rate: Tensor) -> tuple[int, ...]:
    return (fixed.stride(0), fixed.stride(1), target.stride(0), target.stride(1),
            rate.stride(0), rate.stride(1))


def _check(fixed, target, rate, M0, steps, spec, activations) -> bool:
    """Refuse what the kernels cannot run, in one line; returns whether to interpret."""
    tensors = (fixed, target, rate, M0)
    if not all(t.device == M0.device and t.dtype == M0.dtype for t in tensors) or \
            M0.dtype not in (torch.float32, torch.float64):
        raise ValueError("the Triton recurrence takes controls and M0 of one dtype (float32 or "
                         "float64) on one device; got "
                         f"{[(t.dtype, str(t.device)) for t in tensors]}")
    interpret = interpreted()
    if M0.device.type != "cuda" and not interpret:
        raise ValueError(f"the Triton recurrence runs CUDA tensors (CPU tensors only in Triton's "
                         f"interpreter, TRITON_INTERPRET=1), got {M0.device}; on the CPU use "
                         f"solver 'auto'")
    if not available():
        raise ValueError("the Triton recurrence needs Triton; install it with "
                         "pip install 'fwplab[gpu]'")
    if not supports_rule(spec.nonlinearity, activations):
        raise ValueError(f"the Triton recurrence runs corrections {sorted(NONLINEARITIES)} and "
                         f"activations {sorted(ACTIVATIONS)}, got {spec.nonlinearity!r} and "
                         f"{activations}")
    if not supports_spec(spec):
        raise ValueError(f"method: the Triton recurrence runs tableaus of up to {MAX_STAGES} "
                         f"stages on distinct stage points, got {len(spec.tableau.c)} stages at "
                         f"offsets {spec.layout.offsets}")
    every = spec.checkpoint_every
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"spec.checkpoint_every: expected a positive integer, got {every!r}")
    points = steps.shape[0] * spec.layout.per_step + 1
    flat, d_out, d_in = M0.shape
    shapes = [tuple(t.shape) for t in (fixed, target, rate)]
    expected = [(points, flat, d_in), (points, flat, d_out), (points, flat, 1)]
    if shapes != expected:
        raise ValueError(f"controls: expected shapes {expected} for {steps.shape[0]} steps and "
                         f"M0 {tuple(M0.shape)}, got {shapes}")
    return interpret


class TritonRecurrence(torch.autograd.Function):
    """The recurrence of :class:`fwplab.solvers._FastRecurrence` in two Triton kernels.

    Inputs: raw controls ``fixed (points, N, d_in)``, ``target (points, N, d_out)``,
    ``rate (points, N, 1)`` (any strides; column slices are read in place), ``M0 (N,
    d_out, d_in)``, ``steps (steps,)``, a :class:`fwplab.solvers.RecurrenceSpec` whose
    ``checkpoint_every`` is set, and the names of the activations of the fixed factor, the
    target and the rate, which the kernels apply. Returns ``M`` at the kept grid indices
    ``(len(keep), N, d_out, d_in)``; gradients go to the controls and ``M0`` (not to
    ``steps``). The backward keeps a scratch buffer of ``N * K * (d_out d_in + 2 S d_out)``
    numbers while it runs (``K = checkpoint_every``).
    """

    @staticmethod
    def forward(ctx, fixed, target, rate, M0, steps, spec, activations):
        interpret = _check(fixed, target, rate, M0, steps, spec, activations)
        fixed, target, rate = _rows(fixed), _rows(target), _rows(rate)
        M0 = M0.contiguous()
        flat, d_out, d_in = M0.shape
        n_steps = steps.shape[0]
        every = spec.checkpoint_every
        steps_on = steps.detach().to(M0.device, M0.dtype).contiguous()
        keep_position = torch.full((n_steps + 1,), -1, dtype=torch.int64)
        keep_position[torch.tensor(spec.keep, dtype=torch.int64)] = torch.arange(len(spec.keep))
        keep_position = keep_position.to(M0.device)
        kept = M0.new_empty(len(spec.keep), flat, d_out, d_in)
        checkpoints = M0.new_empty(n_steps // every + 1, flat, d_out, d_in)
        if flat:
            _build(interpret)["_forward_kernel"][(flat,)](
                fixed, target, rate, *_strides(fixed, target, rate), M0, steps_on,
                keep_position, kept, checkpoints, n_steps, flat, d_in, d_out, every,
                **_constants(spec, activations, d_in, d_out),
                **_launch_options(interpret, d_in, d_out))
        ctx.save_for_backward(fixed, target, rate, steps_on, keep_position, checkpoints)
        ctx.spec, ctx.activations, ctx.interpret = spec, activations, interpret
        return kept

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_kept):
        fixed, target, rate, steps, keep_position, checkpoints = ctx.saved_tensors
        spec, activations = ctx.spec, ctx.activations
        _, flat, d_out, d_in = checkpoints.shape
        n_steps, every = steps.shape[0], spec.checkpoint_every
        stages = len(spec.tableau.c)
        # One segment when K >= n_steps: the kernel then takes n_steps as its K (the same
        # single segment from checkpoint 0), so the scratch holds no more steps than there are.
        length = max(min(every, n_steps), 1)
        new = checkpoints.new_empty
        grads = (new(fixed.shape[0], flat, d_in), new(target.shape[0], flat, d_out),
                 new(rate.shape[0], flat, 1))
        grad_M0 = new(flat, d_out, d_in)
        if flat:
            _build(ctx.interpret)["_backward_kernel"][(flat,)](
                fixed, target, rate, *_strides(fixed, target, rate), steps, keep_position,
                checkpoints, grad_kept.contiguous(), new(flat, length, d_out, d_in),
                new(flat, length, stages, d_out), new(flat, length, stages, d_out),
                *grads, grad_M0, n_steps, flat, d_in, d_out, length,
                **_constants(spec, activations, d_in, d_out),
                **_launch_options(ctx.interpret, d_in, d_out))
        return (*grads, grad_M0, None, None, None)


def recurrence(fixed: Tensor, target: Tensor, rate: Tensor, M0: Tensor, steps: Tensor, spec,
               activations: tuple[str, str, str]) -> Tensor:
    """Run :class:`TritonRecurrence` (arguments as there; the signature of
    :func:`fwplab.kernels.recurrence`).

    Returns:
        ``(len(keep), N, d_out, d_in)``.
    """
    return TritonRecurrence.apply(fixed, target, rate, M0, steps, spec, activations)


#: The kernels' integer arguments (strides and sizes).
_INTEGERS = ("sfp", "sfn", "stp", "stn", "srp", "srn", "n_steps", "flat", "d_in", "d_out", "every")


def compile_for(capability: int = 90, d: int = 20, method: str = "rk4",
                nonlinearity: str = "linear",
                activations: tuple[str, str, str] = ("softmax", "tanh", "sigmoid"),
                dtype: torch.dtype = torch.float32) -> dict[str, int]:
    """Compile both kernels for a CUDA GPU of compute ``capability`` (90: H100/H200),
    without needing one (Triton ships ``ptxas``): a check that they build for the device.

    Returns:
        The size in bytes of each kernel's binary (``cubin``), by kernel name.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ..solvers import TABLEAUS, RecurrenceSpec, stage_layout

    spec = RecurrenceSpec(nonlinearity, TABLEAUS[method], stage_layout(method), (0,), 16)
    constants = _constants(spec, activations, d, d)
    pointer = {torch.float32: "*fp32", torch.float64: "*fp64"}[dtype]
    namespace = _build(False)
    sizes = {}
    for name in ("_forward_kernel", "_backward_kernel"):
        kernel = namespace[name]
        signature = {}
        for parameter in kernel.params:
            argument = parameter.name
            if argument in constants:
                signature[argument] = "constexpr"
            elif argument == "keep_position":
                signature[argument] = "*i64"
            elif argument in _INTEGERS:
                signature[argument] = "i32"
            else:
                signature[argument] = pointer
        source = ASTSource(fn=kernel, signature=signature, constexprs=constants)
        binary = triton.compile(source, target=GPUTarget("cuda", capability, 32),
                                options=dict(_COMPILE_OPTIONS, num_warps=_launch_options(
                                    False, d, d)["num_warps"]))
        sizes[name] = len(binary.asm["cubin"])
    return sizes

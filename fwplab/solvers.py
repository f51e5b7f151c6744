"""Solvers for the fast weight ODEs: the torchdiffeq reference path and the fast fixed-grid path.

Both integrate ``dW/dt = F(W, c(t))`` where the controls ``c(t)`` (keys, values,
rates) depend on the input path only, never on ``W``:

* :func:`solve_reference` hands a vector field to ``torchdiffeq.odeint`` (or
  ``odeint_adjoint``): any torchdiffeq method, the plain reference.
* :func:`solve_fixed_grid` is numerically the same explicit Runge-Kutta scheme
  on the same grid, but evaluates the controls at every stage time of every step
  in one batched pass (:class:`StageControls`), leaving only the W-dependent part
  in the time loop. Every rule's update is rank one, ``F_i = a_i b_i^T``, so a
  stage needs ``W k_i`` (delta) or ``W^T v_i`` (Oja) only::

      W_stage_i k = W_n k + h * sum_{j<i} a_ij r_j (k_j . k)      (delta)

  and the step is ``W_{n+1} = W_n + h * sum_i b_i r_i k_i^T``: two batched
  matrix products per step plus a few vector operations. Hebb does not depend
  on ``W`` at all, so its solution is a weighted sum of stage updates with no
  time loop.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
import torchdiffeq
from torch import Tensor, nn

__all__ = [
    "TABLEAUS",
    "ButcherTableau",
    "StageControls",
    "grid_constructor",
    "is_fixed_grid",
    "stage_times",
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


def is_fixed_grid(method: str) -> bool:
    """Whether torchdiffeq's ``method`` steps on a fixed grid."""
    from torchdiffeq._impl.odeint import SOLVERS
    from torchdiffeq._impl.solvers import FixedGridODESolver

    if method not in SOLVERS:
        raise ValueError(f"method: unknown torchdiffeq method {method!r}; expected one of "
                         f"{sorted(SOLVERS)}")
    return issubclass(SOLVERS[method], FixedGridODESolver)


def stage_times(grid: Tensor, method: str) -> Tensor:
    """Times at which ``method`` evaluates the vector field on ``grid``.

    Returns:
        ``(steps, stages)``: ``t_n + c_i h_n``, with ``c_i = 1`` mapped to ``t_{n+1}``
        exactly.
    """
    tableau = TABLEAUS[method]
    t0, t1 = grid[:-1], grid[1:]
    columns = [t1 if c == 1.0 else t0 + (t1 - t0) * c for c in tableau.c]
    return torch.stack(columns, dim=-1)


class StageControls(NamedTuple):
    """Activated controls at every stage of every step, each ``(batch, steps, stages, heads, ...)``.

    ``key`` is ``softmax(k)`` for Hebb and delta and the key logits for Oja (whose
    softmax comes after the W-dependent subtraction); ``value`` is ``tanh(v)``
    except for the post-tanh delta rule, where it is ``v``; ``rate`` is
    ``sigma(b)`` of shape ``(..., 1)``.
    """

    key: Tensor
    value: Tensor
    rate: Tensor


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


def solve_fixed_grid(
    rule: str,
    controls: StageControls,
    W0: Tensor,
    steps: Tensor,
    method: str = "rk4",
    keep: Optional[Tensor] = None,
) -> Tensor:
    """Explicit Runge-Kutta on a fixed grid with precomputed stage controls.

    Args:
        rule: ``"hebb"``, ``"delta"``, ``"delta_post_tanh"`` or ``"oja"``.
        controls: activated controls at every stage, ``(batch, steps, stages, heads, d)``.
        W0: initial fast weights ``(batch, heads, d, d)``.
        steps: step sizes ``(steps,)``.
        method: a key of :data:`TABLEAUS`.
        keep: sorted grid indices (0 = initial time) whose states to return;
            default all.

    Returns:
        ``(len(keep), batch, heads, d, d)``.
    """
    tableau = TABLEAUS[method]
    n_steps = steps.shape[0]
    if keep is None:
        keep = torch.arange(n_steps + 1)
    h = steps.to(W0.dtype).reshape(n_steps, 1, 1, 1)
    if rule == "hebb":
        return _hebb_fixed_grid(controls, W0, h, tableau, keep)
    return _rank_one_fixed_grid(rule, controls, W0, h, tableau, keep)


def _hebb_fixed_grid(controls, W0, h, tableau, keep):
    """Hebb: ``W(t_n) = W0 + sum_{m<n} h_m sum_i b_i beta v k^T``, a cumulative sum."""
    b = torch.tensor(tableau.b, dtype=W0.dtype, device=W0.device).reshape(1, 1, -1, 1, 1)
    value = controls.rate * controls.value * b
    increments = torch.einsum("bnshv,bnshk->nbhvk", value, controls.key) * h.unsqueeze(1)
    states = torch.cat([W0.unsqueeze(0), W0.unsqueeze(0) + increments.cumsum(0)])
    return states[keep.to(states.device)]


def _rank_one_fixed_grid(rule, controls, W0, h, tableau, keep):
    """Delta and Oja: a Python loop over steps, vector work inside a step."""
    key, value, rate = controls
    n_steps, n_stages = key.shape[1], key.shape[2]
    oja = rule == "oja"
    # The fixed factor of each stage's rank-one update: k_i (delta) or v_i (Oja),
    # and its Gram matrix within a step, for the low-rank stage corrections.
    fixed = value if oja else key
    gram = torch.einsum("bnihd,bnjhd->bnhij", fixed, fixed)
    fixed_t = fixed.permute(1, 0, 3, 4, 2)  # (steps, batch, heads, d, stages)
    key_t, value_t, rate_t = (c.transpose(0, 1) for c in (key, value, rate))
    gram_t = gram.transpose(0, 1)
    b = torch.tensor(tableau.b, dtype=W0.dtype, device=W0.device)
    keep_set = set(keep.tolist())
    kept = [W0] if 0 in keep_set else []
    W = W0
    for n in range(n_steps):
        hn = h[n]
        # W_n k_i (delta) or W_n^T v_i (Oja) for every stage: (batch, heads, d, stages)
        projected = torch.matmul(W.transpose(-1, -2) if oja else W, fixed_t[n])
        factors = []  # the W-dependent factor r_i (delta) or s_i (Oja) of each stage
        for i in range(n_stages):
            u = projected[..., i]
            for j, a_ij in enumerate(tableau.a[i]):
                if a_ij != 0.0:
                    u = u + (hn * a_ij) * gram_t[n][..., j, i].unsqueeze(-1) * factors[j]
            beta = rate_t[n][:, i]
            if rule == "delta":
                r = beta * (value_t[n][:, i] - u)
            elif rule == "delta_post_tanh":
                r = beta * torch.tanh(value_t[n][:, i] - u)
            else:
                r = beta * torch.softmax(key_t[n][:, i] - u, -1)
            factors.append(r)
        weighted = torch.stack([f * (hn * w) for f, w in zip(factors, b.tolist(), strict=True)], dim=-1)
        if oja:
            W = W + torch.matmul(fixed_t[n], weighted.transpose(-1, -2))
        else:
            W = W + torch.matmul(weighted, fixed_t[n].transpose(-1, -2))
        if n + 1 in keep_set:
            kept.append(W)
    return torch.stack(kept)


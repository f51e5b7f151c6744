"""Classic learning rules as ordinary differential equations (docs/maths.md, section 2).

A discrete learning rule ``w <- w + eta F(w)`` is one Euler step of size ``eta``
of the ODE ``dw/dt = F(w)``. This module gives the vector fields ``F`` of three
classic rules, for a single data sample and averaged over the data, acting on a
batch of weights at once::

    Hebb:   dw/dt = y x,            y = w.x       averaged: dw/dt = C w
    Oja:    dw/dt = y (x - y w),    y = w.x       averaged: dw/dt = C w - (w^T C w) w
    delta:  dW/dt = (y - W x) x^T                 averaged: dW/dt = C_yx - W C_xx

Here ``C = C_xx = E[x x^T]`` and ``C_yx = E[y x^T]`` (see :func:`covariance`).
Hebb and Oja weights have shape ``(batch, n)``; delta-rule weights map inputs
``x`` in ``R^n`` to targets ``y`` in ``R^m`` and have shape ``(batch, m, n)``.

Every vector field takes the weights first and then its data: one sample
(``x``, or ``x, y``) or the data averages (``C``, or ``C_xx, C_yx``). The rule
table :data:`CLASSIC_RULES` names them; every function that takes a ``rule``
accepts a name from that table or any callable with the same calling
convention. The module also gives the discrete updates, integration with
torchdiffeq, the closed-form solutions of the averaged ODEs and the analytic
facts the rules are measured against (principal components, least squares,
the stability bounds of the delta rule).

Two kinds of discrete rule appear. The *averaged* (full-batch) rule steps with
the data-averaged field, ``w <- w + eta F_mean(w)`` (:func:`discrete_trajectory`);
it is exactly Euler's method for the averaged ODE. The *online* (stochastic)
rule steps with one sample at a time, ``w <- w + eta_k F(w, x_k)``
(:func:`online_trajectory`); by stochastic approximation it follows the
averaged ODE at time ``t_k = eta_0 + ... + eta_{k-1}`` when the steps are
small. The delta rule's three step-size bounds differ accordingly:
:func:`delta_stability_bound` (averaged rule, ``2 / lambda_max``),
:func:`lms_sample_bound` (one online step, ``2 / |x|^2``) and
:func:`lms_mean_square_bound` (online rule in mean square, about ``2 / tr C``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torchdiffeq import odeint

__all__ = [
    "CLASSIC_RULES",
    "FIXED_GRID_METHODS",
    "PrincipalComponents",
    "convergence_order",
    "covariance",
    "delta_field",
    "delta_mean_field",
    "delta_mean_solution",
    "delta_stability_bound",
    "discrete_trajectory",
    "discrete_update",
    "get_classic_rule",
    "hebb_field",
    "hebb_mean_field",
    "hebb_mean_solution",
    "integrate_rule",
    "integration_errors",
    "learning_times",
    "least_squares_weights",
    "lms_mean_square_bound",
    "lms_sample_bound",
    "oja_field",
    "oja_mean_field",
    "oja_mean_solution",
    "online_trajectory",
    "principal_components",
    "step_schedule",
    "steps_to_reach",
]

VectorField = Callable[..., Tensor]

#: torchdiffeq methods that step on a fixed grid; :func:`integrate_rule` requires a
#: ``step_size`` for them (without one torchdiffeq steps only at the output times).
FIXED_GRID_METHODS = frozenset(
    {
        "euler",
        "midpoint",
        "heun2",
        "heun3",
        "rk4",
        "explicit_adams",
        "implicit_adams",
        "fixed_adams",
    }
)


# ----------------------------------------------------------------------------- checks


def _describe(value: object) -> str:
    """A short account of ``value`` for an error message: never a large tensor's contents."""
    if isinstance(value, Tensor):
        if value.numel() == 1:
            return f"a tensor holding {value.item()!r}"
        return f"a tensor of shape {tuple(value.shape)}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    return type(value).__name__


def _check_tensor(name: str, value: object, ndims: Sequence[int], expected: str) -> Tensor:
    """Check that ``value`` is a floating point tensor with one of ``ndims`` dimensions."""
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{name}: expected a torch.Tensor of shape {expected}, got {type(value).__name__}"
        )
    if not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating point tensor, got dtype {value.dtype}")
    if value.dim() not in ndims:
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(value.shape)}")
    return value


def _check_finite(name: str, value: Tensor) -> None:
    bad = ~torch.isfinite(value)
    if bool(bad.any()):
        raise ValueError(
            f"{name}: expected finite values, got {int(bad.sum())} of {value.numel()} "
            f"NaN or infinite"
        )


def _first_bad(name: str, values: Tensor, good: Tensor) -> str:
    """``name[i] = v`` for the first entry of the 1-D ``values`` where ``good`` is false."""
    index = int((~good).nonzero()[0, 0])
    return f"{name}[{index}] = {float(values[index])}"


def _check_positive(name: str, value: object) -> float:
    """Return ``value`` as a float after checking it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise TypeError(f"{name}: expected a positive finite number, got {type(value).__name__}")
    if isinstance(value, Tensor) and value.numel() != 1:
        raise ValueError(
            f"{name}: expected a single positive finite number, "
            f"got a tensor of shape {tuple(value.shape)}"
        )
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name}: expected a positive finite number, got {number}")
    return number


def _check_count(name: str, value: object, context: str = "") -> int:
    """Check a non-negative int (not a bool): TypeError for another type, ValueError if < 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected a non-negative int{context}, got {_describe(value)}")
    if value < 0:
        raise ValueError(f"{name}: expected a non-negative int{context}, got {value!r}")
    return value


def _check_sample(name: str, x: object, batch: int, size: int, expected: str) -> Tensor:
    """Check a data sample of shape ``(size,)`` or ``(batch, size)``."""
    x = _check_tensor(name, x, (1, 2), expected)
    if x.shape[-1] != size or (x.dim() == 2 and x.shape[0] != batch):
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(x.shape)}")
    _check_finite(name, x)
    return x


def _sample_shape(size_name: str, batch: int, size: int) -> str:
    return f"({size_name},) or (batch, {size_name}) with batch = {batch}, {size_name} = {size}"


def _check_matrix(
    name: str, value: object, rows: int | None, columns: int, expected: str
) -> Tensor:
    """Check a finite ``(rows, columns)`` matrix; ``rows=None`` accepts any number of rows."""
    value = _check_tensor(name, value, (2,), expected)
    if value.shape[1] != columns or (rows is not None and value.shape[0] != rows):
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(value.shape)}")
    _check_finite(name, value)
    return value


def _check_symmetric(name: str, value: object) -> Tensor:
    """Check a finite symmetric ``(n, n)`` matrix."""
    value = _check_tensor(name, value, (2,), "(n, n)")
    value = _check_matrix(name, value, value.shape[1], value.shape[1], "(n, n)")
    if not torch.allclose(value, value.mT):
        asymmetry = float((value - value.mT).abs().max())
        raise ValueError(
            f"{name}: expected a symmetric matrix, got max |{name} - {name}^T| = {asymmetry}"
        )
    return value


def _check_times(t: object) -> Tensor:
    t = _check_tensor("t", t, (1,), "(time,)")
    _check_finite("t", t)
    if t.numel() < 2 or not bool((t[1:] > t[:-1]).all()):
        if t.numel() <= 8:
            got = str(t.tolist())
        else:
            i = int((t[1:] <= t[:-1]).nonzero()[0, 0]) + 1
            got = f"t[{i}] = {float(t[i])} after t[{i - 1}] = {float(t[i - 1])} ({t.numel()} times)"
        raise ValueError(f"t: expected at least 2 strictly increasing times, got {got}")
    return t


def _vector_weights(w: object, name: str = "w") -> Tensor:
    return _check_tensor(name, w, (2,), "(batch, n)")


def _matrix_weights(W: object, name: str = "W") -> Tensor:
    return _check_tensor(name, W, (3,), "(batch, m, n)")


# ----------------------------------------------------------------------------- vector fields


def hebb_field(w: Tensor, x: Tensor) -> Tensor:
    """Hebb's rule for one sample: ``dw/dt = y x`` with ``y = w.x``.

    Args:
        w: weights ``(batch, n)``.
        x: one input ``(n,)`` shared by the batch, or one per weight vector ``(batch, n)``.

    Returns:
        ``dw/dt`` of shape ``(batch, n)``.
    """
    w = _vector_weights(w)
    x = _check_sample("x", x, *w.shape, _sample_shape("n", *w.shape))
    output = (w * x).sum(-1, keepdim=True)
    return output * x


def oja_field(w: Tensor, x: Tensor) -> Tensor:
    """Oja's rule for one sample: ``dw/dt = y (x - y w)`` with ``y = w.x``.

    Args:
        w: weights ``(batch, n)``.
        x: one input ``(n,)`` shared by the batch, or one per weight vector ``(batch, n)``.

    Returns:
        ``dw/dt`` of shape ``(batch, n)``.
    """
    w = _vector_weights(w)
    x = _check_sample("x", x, *w.shape, _sample_shape("n", *w.shape))
    output = (w * x).sum(-1, keepdim=True)
    return output * (x - output * w)


def delta_field(W: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Delta (Widrow-Hoff, LMS) rule for one sample: ``dW/dt = (y - W x) x^T``.

    Args:
        W: weights ``(batch, m, n)`` mapping inputs to targets.
        x: one input ``(n,)`` or one per weight matrix ``(batch, n)``.
        y: its target ``(m,)`` or one per weight matrix ``(batch, m)``.

    Returns:
        ``dW/dt`` of shape ``(batch, m, n)``.
    """
    W = _matrix_weights(W)
    batch, m, n = W.shape
    x = _check_sample("x", x, batch, n, _sample_shape("n", batch, n))
    y = _check_sample("y", y, batch, m, _sample_shape("m", batch, m))
    error = y - torch.matmul(W, x.unsqueeze(-1)).squeeze(-1)
    return error.unsqueeze(-1) * x.unsqueeze(-2)


def hebb_mean_field(w: Tensor, C: Tensor) -> Tensor:
    """Hebb's rule averaged over the data: ``dw/dt = C w``.

    Args:
        w: weights ``(batch, n)``.
        C: input second moment ``E[x x^T]`` of shape ``(n, n)``.

    Returns:
        ``dw/dt`` of shape ``(batch, n)``.
    """
    w = _vector_weights(w)
    n = w.shape[1]
    C = _check_matrix("C", C, n, n, f"(n, n) with n = {n}")
    return w @ C.mT


def oja_mean_field(w: Tensor, C: Tensor) -> Tensor:
    """Oja's rule averaged over the data: ``dw/dt = C w - (w^T C w) w``.

    Args:
        w: weights ``(batch, n)``.
        C: input second moment ``E[x x^T]`` of shape ``(n, n)``.

    Returns:
        ``dw/dt`` of shape ``(batch, n)``.
    """
    Cw = hebb_mean_field(w, C)
    return Cw - (w * Cw).sum(-1, keepdim=True) * w


def delta_mean_field(W: Tensor, C_xx: Tensor, C_yx: Tensor) -> Tensor:
    """Delta rule averaged over the data: ``dW/dt = C_yx - W C_xx``.

    This is minus the gradient of the mean squared error ``E|y - W x|^2 / 2``.

    Args:
        W: weights ``(batch, m, n)``.
        C_xx: input second moment ``E[x x^T]`` of shape ``(n, n)``.
        C_yx: cross moment ``E[y x^T]`` of shape ``(m, n)``.

    Returns:
        ``dW/dt`` of shape ``(batch, m, n)``.
    """
    W = _matrix_weights(W)
    _, m, n = W.shape
    C_xx = _check_matrix("C_xx", C_xx, n, n, f"(n, n) with n = {n}")
    C_yx = _check_matrix("C_yx", C_yx, m, n, f"(m, n) with m = {m}, n = {n}")
    return C_yx - W @ C_xx


#: The classic rules by name: one-sample fields and their data averages.
CLASSIC_RULES: dict[str, VectorField] = {
    "hebb": hebb_field,
    "oja": oja_field,
    "delta": delta_field,
    "hebb_mean": hebb_mean_field,
    "oja_mean": oja_mean_field,
    "delta_mean": delta_mean_field,
}


def get_classic_rule(rule: str | VectorField) -> VectorField:
    """Return the field named ``rule`` in :data:`CLASSIC_RULES`; a callable passes through."""
    if isinstance(rule, str):
        try:
            return CLASSIC_RULES[rule]
        except KeyError:
            raise ValueError(
                f"rule: expected one of {sorted(CLASSIC_RULES)} or a callable, got {rule!r}"
            ) from None
    if not callable(rule):
        raise TypeError(
            f"rule: expected a name in CLASSIC_RULES or a callable, got {type(rule).__name__}"
        )
    return rule


# ----------------------------------------------------------------------------- discrete rules


def discrete_update(rule: str | VectorField, w: Tensor, *data: Tensor, lr: float) -> Tensor:
    """One step of the discrete learning rule, which is an Euler step of its ODE.

    ```
    w <- w + lr * F(w, *data)
    ```

    Args:
        rule: a name in :data:`CLASSIC_RULES` or a vector field ``F(w, *data)``.
        w: weights ``(batch, n)`` or ``(batch, m, n)``, as the rule expects.
        *data: the rule's data: a sample (``x`` or ``x, y``) or averages (``C`` or ``C_xx, C_yx``).
        lr: learning rate ``eta > 0``.

    Returns:
        The updated weights, shaped like ``w``.
    """
    field = get_classic_rule(rule)
    lr = _check_positive("lr", lr)
    return w + lr * field(w, *data)


def discrete_trajectory(
    rule: str | VectorField, w0: Tensor, num_steps: int, *data: Tensor, lr: float
) -> Tensor:
    """Iterate the discrete rule ``num_steps`` times on fixed data.

    ```
    w_{k+1} = w_k + lr * F(w_k, *data),   k = 0 .. num_steps - 1
    ```

    Iterate ``k`` approximates the ODE solution at time ``t = k * lr``.

    Args:
        rule: a name in :data:`CLASSIC_RULES` or a vector field ``F(w, *data)``.
        w0: initial weights ``(batch, n)`` or ``(batch, m, n)``.
        num_steps: number of updates (``>= 0``).
        *data: the rule's data, as in :func:`discrete_update`.
        lr: learning rate ``eta > 0``.

    Returns:
        The iterates ``(num_steps + 1, *w0.shape)``, starting with ``w0``.
    """
    field = get_classic_rule(rule)
    lr = _check_positive("lr", lr)
    _check_count("num_steps", num_steps)
    iterates = [w0]
    for _ in range(num_steps):
        iterates.append(iterates[-1] + lr * field(iterates[-1], *data))
    return torch.stack(iterates)


def step_schedule(
    initial: float,
    num_steps: int,
    decay_steps: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Step sizes of the online rule: constant, or decaying like ``1 / n``.

    ```
    eta_n = initial                          (decay_steps is None)
    eta_n = initial / (1 + n / decay_steps)  (otherwise),  n = 0 .. num_steps - 1
    ```

    The decaying schedule satisfies the stochastic-approximation conditions
    ``sum eta_n = infinity`` and ``sum eta_n^2 < infinity``: the online rule
    keeps moving, while its noise dies out.

    Args:
        initial: first step ``eta_0 > 0``.
        num_steps: number of steps (``>= 0``).
        decay_steps: ``n0 > 0``, the step index at which the step has halved; ``None``
            keeps the step constant.
        dtype: floating point dtype of the result.

    Returns:
        The steps ``(num_steps,)``.
    """
    initial = _check_positive("initial", initial)
    _check_count("num_steps", num_steps)
    steps = torch.full((num_steps,), initial, dtype=dtype)
    if decay_steps is None:
        return steps
    decay_steps = _check_positive("decay_steps", decay_steps)
    return steps / (1 + torch.arange(num_steps, dtype=dtype) / decay_steps)


def _online_steps(lr: object, num_samples: int, reference: Tensor) -> Tensor:
    """``lr`` as a tensor of ``num_samples`` positive steps on ``reference``'s device."""
    if isinstance(lr, Tensor) and lr.dim() == 1:
        if lr.numel() != num_samples:
            raise ValueError(
                f"lr: expected shape ({num_samples},), one step per sample, got {tuple(lr.shape)}"
            )
        good = torch.isfinite(lr) & (lr > 0)
        if not bool(good.all()):
            raise ValueError(
                f"lr: expected positive finite steps, got {_first_bad('lr', lr, good)}"
            )
        return lr.to(device=reference.device, dtype=reference.dtype)
    return torch.full(
        (num_samples,), _check_positive("lr", lr), dtype=reference.dtype, device=reference.device
    )


def online_trajectory(
    rule: str | VectorField, w0: Tensor, *samples: Tensor, lr: float | Tensor
) -> Tensor:
    """Run the online (stochastic) rule: one step per sample, in order.

    ```
    w_{k+1} = w_k + eta_k * F(w_k, x_k)          (Hebb, Oja)
    W_{k+1} = W_k + eta_k * F(W_k, x_k, y_k)      (delta: the LMS algorithm)
    ```

    Iterate ``k`` approximates the averaged ODE at time ``t_k`` of
    :func:`learning_times` when the steps are small.

    Args:
        rule: a one-sample field (``"hebb"``, ``"oja"``, ``"delta"``) or any callable
            ``F(w, *sample)``.
        w0: initial weights ``(batch, n)`` or ``(batch, m, n)``.
        *samples: the data, one row per step: ``x`` of shape ``(steps, n)`` (shared by
            the batch) or ``(steps, batch, n)``, and for the delta rule ``y`` of shape
            ``(steps, m)`` or ``(steps, batch, m)``.
        lr: one step size for all samples, or one per sample ``(steps,)``
            (e.g. from :func:`step_schedule`).

    Returns:
        The iterates ``(steps + 1, *w0.shape)``, starting with ``w0``.
    """
    field = get_classic_rule(rule)
    if not samples:
        raise ValueError("samples: expected x (and y for the delta rule), got none")
    samples = tuple(
        _check_tensor(name, sample, (2, 3), "(steps, size) or (steps, batch, size)")
        for name, sample in zip("xy", samples, strict=False)
    )
    num_samples = samples[0].shape[0]
    for name, sample in zip("xy", samples, strict=False):
        if sample.shape[0] != num_samples:
            raise ValueError(
                f"{name}: expected (steps, ...) with steps = {num_samples} like x, "
                f"got {tuple(sample.shape)}"
            )
    steps = _online_steps(lr, num_samples, w0)
    iterates = [w0]
    for k in range(num_samples):
        iterates.append(iterates[-1] + steps[k] * field(iterates[-1], *(s[k] for s in samples)))
    return torch.stack(iterates)


def learning_times(lr: float | Tensor, num_steps: int | None = None) -> Tensor:
    """ODE times of the iterates of a discrete or online rule: the summed steps.

    ```
    t_0 = 0,   t_k = eta_0 + ... + eta_{k-1}
    ```

    Args:
        lr: the steps ``(steps,)``, or one constant step (then ``num_steps`` is needed).
        num_steps: number of steps of a constant ``lr``.

    Returns:
        The times ``(steps + 1,)``.
    """
    if isinstance(lr, Tensor) and lr.dim() == 1:
        if num_steps is not None and num_steps != lr.numel():
            raise ValueError(
                f"num_steps: expected None or {lr.numel()}, the number of steps in lr, "
                f"got {_describe(num_steps)}"
            )
        steps = lr
    else:
        _check_count("num_steps", num_steps, " for a constant lr")
        steps = torch.full((num_steps,), _check_positive("lr", lr), dtype=torch.float64)
    return torch.cat([steps.new_zeros(1), steps.cumsum(0)])


def steps_to_reach(trajectory: Tensor, target: Tensor, tolerance: float) -> int | None:
    """First iterate whose relative distance to ``target`` is below ``tolerance``.

    ```
    k* = min { k : |w_k - target| < tolerance * |w_0 - target| }
    ```

    The norm is taken over each whole batch of weights at once.

    Args:
        trajectory: iterates ``(steps + 1, *weights)``, e.g. from :func:`online_trajectory`.
        target: the point approached, broadcastable to one iterate ``weights``.
        tolerance: relative distance in ``(0, 1)``.

    Returns:
        ``k*``, or ``None`` if no iterate gets that close.
    """
    trajectory = _check_tensor("trajectory", trajectory, range(2, 8), "(steps + 1, *weights)")
    tolerance = _check_positive("tolerance", tolerance)
    distances = (trajectory - target).flatten(1).norm(dim=-1)
    close = (distances < tolerance * distances[0]).nonzero()
    return int(close[0, 0]) if close.numel() else None


# ----------------------------------------------------------------------------- ODE integration


def integrate_rule(
    rule: str | VectorField,
    w0: Tensor,
    t: Tensor,
    *data: Tensor,
    method: str = "dopri5",
    step_size: float | None = None,
    rtol: float = 1e-7,
    atol: float = 1e-9,
) -> Tensor:
    """Solve the learning rule's ODE ``dw/dt = F(w, *data)`` with torchdiffeq.

    Fixed-grid methods (:data:`FIXED_GRID_METHODS`, e.g. ``"euler"``, ``"rk4"``)
    need ``step_size``; the solution at times between grid points is linearly
    interpolated by torchdiffeq. Adaptive methods (e.g. ``"dopri5"``) use
    ``rtol`` and ``atol`` and take no ``step_size``. torchdiffeq's ``"rk4"`` is
    the 3/8-rule variant (stages at ``t, t + h/3, t + 2h/3, t + h``).

    Args:
        rule: a name in :data:`CLASSIC_RULES` or a vector field ``F(w, *data)``.
        w0: initial weights ``(batch, n)`` or ``(batch, m, n)``.
        t: strictly increasing output times ``(time,)``; ``t[0]`` is the start.
        *data: the rule's data, as in :func:`discrete_update`.
        method: any torchdiffeq method name.
        step_size: solver step for fixed-grid methods.
        rtol: relative tolerance of adaptive methods.
        atol: absolute tolerance of adaptive methods.

    Returns:
        The solution ``(time, *w0.shape)`` at the times ``t``.
    """
    field = get_classic_rule(rule)
    t = _check_times(t)
    if not isinstance(method, str):
        raise TypeError(f"method: expected a torchdiffeq method name, got {type(method).__name__}")
    options = None
    if method in FIXED_GRID_METHODS:
        if step_size is None:
            raise ValueError(
                f"step_size: expected a positive number for the fixed-grid method {method!r}, "
                f"got None"
            )
        options = {"step_size": _check_positive("step_size", step_size)}
    elif step_size is not None:
        raise ValueError(
            f"step_size: expected None for {method!r} (it applies to the fixed-grid methods "
            f"{sorted(FIXED_GRID_METHODS)}), got {_describe(step_size)}"
        )
    return odeint(
        lambda _time, w: field(w, *data),
        w0,
        t,
        method=method,
        options=options,
        rtol=rtol,
        atol=atol,
    )


def hebb_mean_solution(w0: Tensor, C: Tensor, t: Tensor) -> Tensor:
    """Exact solution of the averaged Hebb ODE ``dw/dt = C w``.

    ```
    w(t) = exp(C t) w0
    ```

    Args:
        w0: initial weights ``(batch, n)``.
        C: input second moment ``(n, n)``.
        t: times ``(time,)`` measured from the start.

    Returns:
        ``w(t)`` of shape ``(time, batch, n)``.
    """
    w0 = _vector_weights(w0, "w0")
    n = w0.shape[1]
    C = _check_matrix("C", C, n, n, f"(n, n) with n = {n}")
    t = _check_tensor("t", t, (1,), "(time,)")
    propagators = torch.linalg.matrix_exp(t.to(C.dtype)[:, None, None] * C)
    return w0 @ propagators.mT


def oja_mean_solution(w0: Tensor, C: Tensor, t: Tensor) -> Tensor:
    """Exact solution of the averaged Oja ODE ``dw/dt = C w - (w^T C w) w``.

    Oja's flow is Hebb's flow renormalised: with ``v(t) = exp(C t) w0`` and ``C``
    symmetric positive semi-definite,

    ```
    w(t) = v(t) / sqrt(1 - |w0|^2 + |v(t)|^2)
    ```

    Args:
        w0: initial weights ``(batch, n)``.
        C: input second moment ``(n, n)``.
        t: times ``(time,)``, ``>= 0``, measured from the start.

    Returns:
        ``w(t)`` of shape ``(time, batch, n)``.
    """
    hebbian = hebb_mean_solution(w0, C, t)
    scale = 1 - w0.pow(2).sum(-1, keepdim=True) + hebbian.pow(2).sum(-1, keepdim=True)
    return hebbian / scale.sqrt()


def delta_mean_solution(W0: Tensor, C_xx: Tensor, C_yx: Tensor, t: Tensor) -> Tensor:
    """Exact solution of the averaged delta ODE ``dW/dt = C_yx - W C_xx``.

    The error ``W - W*`` decays along the eigenvectors of ``C_xx`` at the rates
    given by its eigenvalues:

    ```
    W(t) = W* + (W0 - W*) exp(-C_xx t),   W* = C_yx C_xx^{-1}
    ```

    Args:
        W0: initial weights ``(batch, m, n)``.
        C_xx: input second moment ``(n, n)``, invertible.
        C_yx: cross moment ``(m, n)``.
        t: times ``(time,)`` measured from the start.

    Returns:
        ``W(t)`` of shape ``(time, batch, m, n)``.
    """
    W0 = _matrix_weights(W0, "W0")
    fixed_point = least_squares_weights(C_xx, C_yx)
    if fixed_point.shape != W0.shape[1:]:
        m, n = fixed_point.shape
        raise ValueError(
            f"W0: expected shape (batch, m, n) with m = {m}, n = {n}, got {tuple(W0.shape)}"
        )
    t = _check_tensor("t", t, (1,), "(time,)")
    decay = torch.linalg.matrix_exp(-t.to(C_xx.dtype)[:, None, None] * C_xx)
    return fixed_point + (W0 - fixed_point) @ decay.unsqueeze(1)


# ----------------------------------------------------------------------------- analytic facts


def covariance(x: Tensor, y: Tensor | None = None, center: bool = False) -> Tensor:
    """Second moments of samples, the matrices the averaged rules use.

    ```
    C_xx = (1/N) sum_i x_i x_i^T          (y is None)
    C_yx = (1/N) sum_i y_i x_i^T          (y given)
    ```

    With ``center=True`` the sample means are subtracted first (the covariance
    proper). The default uncentred moments make the averaged vector fields
    equal the mean of the one-sample fields over the samples exactly.

    Args:
        x: inputs ``(samples, n)``.
        y: targets ``(samples, m)`` or ``None``.
        center: subtract the sample means first.

    Returns:
        ``C_xx`` of shape ``(n, n)``, or ``C_yx`` of shape ``(m, n)`` when ``y`` is given.
    """
    x = _check_tensor("x", x, (2,), "(samples, n)")
    _check_finite("x", x)
    if y is None:
        y = x
    else:
        y = _check_tensor("y", y, (2,), "(samples, m)")
        if y.shape[0] != x.shape[0]:
            raise ValueError(
                f"y: expected shape (samples, m) with samples = {x.shape[0]}, got {tuple(y.shape)}"
            )
        _check_finite("y", y)
    if center:
        x = x - x.mean(0)
        y = y - y.mean(0)
    return y.mT @ x / x.shape[0]


class PrincipalComponents(NamedTuple):
    """Eigen-decomposition of a symmetric matrix, largest eigenvalue first.

    Attributes:
        values: eigenvalues ``(n,)`` in descending order.
        vectors: unit eigenvectors as columns ``(n, n)``; ``vectors[:, 0]`` is the top one.
    """

    values: Tensor
    vectors: Tensor


def principal_components(C: Tensor) -> PrincipalComponents:
    """Eigenvalues and eigenvectors of ``C`` (via ``torch.linalg.eigh``), largest first.

    Each eigenvector's sign is fixed so that its largest-magnitude entry is
    positive. The top eigenvector is the stable fixed point of Oja's averaged
    rule (up to sign) and the direction along which Hebb's rule grows.

    Args:
        C: symmetric matrix ``(n, n)``.

    Returns:
        :class:`PrincipalComponents` with ``values (n,)`` and ``vectors (n, n)``.
    """
    C = _check_symmetric("C", C)
    values, vectors = torch.linalg.eigh(C)
    values, vectors = values.flip(0), vectors.flip(1)
    largest = vectors.abs().argmax(0, keepdim=True)
    signs = torch.sign(vectors.gather(0, largest))
    return PrincipalComponents(values, vectors * signs)


def least_squares_weights(C_xx: Tensor, C_yx: Tensor) -> Tensor:
    """Fixed point of the delta rule, the least-squares weights.

    ```
    W* = C_yx C_xx^{-1} = argmin_W E|y - W x|^2
    ```

    Args:
        C_xx: input second moment ``(n, n)``, invertible.
        C_yx: cross moment ``(m, n)``.

    Returns:
        ``W*`` of shape ``(m, n)``.
    """
    C_xx = _check_symmetric("C_xx", C_xx)
    n = C_xx.shape[0]
    C_yx = _check_matrix("C_yx", C_yx, None, n, f"(m, n) with n = {n}")
    return torch.linalg.solve(C_xx, C_yx, left=False)


def delta_stability_bound(C_xx: Tensor) -> float:
    """Largest stable learning rate of the *averaged* (full-batch) discrete delta rule.

    The error ``E_k = W_k - W*`` of ``W <- W + eta (C_yx - W C_xx)`` evolves as
    ``E_{k+1} = E_k (I - eta C_xx)``; it shrinks iff every ``|1 - eta lambda_i| < 1``:

    ```
    eta < 2 / lambda_max(C_xx)
    ```

    This is the bound of batch gradient descent. The online rule, one sample per
    step, needs smaller steps: see :func:`lms_sample_bound` and
    :func:`lms_mean_square_bound`.

    Args:
        C_xx: input second moment ``(n, n)``, positive definite.

    Returns:
        ``2 / lambda_max(C_xx)``.
    """
    largest = float(torch.linalg.eigvalsh(_check_symmetric("C_xx", C_xx))[-1])
    if largest <= 0:
        raise ValueError(
            f"C_xx: expected a positive definite matrix, got largest eigenvalue {largest}"
        )
    return 2.0 / largest


def lms_sample_bound(x: Tensor) -> Tensor:
    """Per-sample step bound of the online delta rule (LMS): ``2 / |x|^2``.

    One LMS step on the sample ``(x, y)`` multiplies that sample's error by
    ``1 - eta |x|^2``:

    ```
    y - W' x = (y - W x) (1 - eta |x|^2),    W' = W + eta (y - W x) x^T
    ```

    so at ``eta |x|^2 = 2`` the error flips sign with the same size, and past it
    the error grows.

    Args:
        x: inputs ``(samples, n)``.

    Returns:
        ``2 / |x_i|^2`` for every sample ``(samples,)``.
    """
    x = _check_tensor("x", x, (2,), "(samples, n)")
    _check_finite("x", x)
    return 2.0 / x.pow(2).sum(-1)


def lms_mean_square_bound(x: Tensor) -> float:
    """Largest constant step for which online LMS is stable in mean square.

    The samples are drawn independently, with replacement, from the rows of
    ``x``. Without target noise the error ``e_{k+1} = e_k (I - eta x_k x_k^T)``
    of each output has a second moment ``K = E[e^T e]`` that evolves linearly::

        K' = K - eta (C K + K C) + eta^2 E[x x^T K x x^T]
           = (I - eta A + eta^2 B) K,   A = C (+) C,  B = E[(x x^T) (x) (x x^T)]

    It decays iff ``eta < 1 / mu_max`` with ``mu_max`` the largest generalised
    eigenvalue of ``B v = mu A v``. It depends on the fourth moments of ``x``:
    it equals ``2 / tr C`` when every ``|x|^2`` equals ``tr C`` and is close to it
    when ``|x|^2`` varies little around its mean ``tr C`` (e.g. in many
    dimensions); for Gaussian inputs in few dimensions it is lower (``2 / (3 C)``
    in one dimension). It is never above :func:`delta_stability_bound`.

    Args:
        x: inputs ``(samples, n)`` whose second moment ``C = E[x x^T]`` is invertible.

    Returns:
        The mean-square stability bound ``1 / mu_max``.
    """
    x = _check_tensor("x", x, (2,), "(samples, n)")
    _check_finite("x", x)
    samples, n = x.shape
    C = covariance(x)
    identity = torch.eye(n, dtype=x.dtype, device=x.device)
    A = torch.kron(C, identity) + torch.kron(identity, C)
    outer = (x.unsqueeze(-1) * x.unsqueeze(-2)).reshape(samples, n * n)
    B = outer.mT @ outer / samples
    eigenvalues = torch.linalg.eigvalsh(C)
    if float(eigenvalues[0]) <= 1e-12 * float(eigenvalues[-1].abs()):
        raise ValueError(
            f"x: expected samples with an invertible second moment E[x x^T], got eigenvalues "
            f"from {float(eigenvalues[0])} to {float(eigenvalues[-1])}"
        )
    factor = torch.linalg.cholesky(A)
    half = torch.linalg.solve_triangular(factor, B, upper=False)
    whitened = torch.linalg.solve_triangular(factor, half.mT, upper=False)
    largest = float(torch.linalg.eigvalsh((whitened + whitened.mT) / 2)[-1])
    return 1.0 / largest


# ----------------------------------------------------------------------------- solver accuracy


def integration_errors(
    rule: str | VectorField,
    w0: Tensor,
    t_end: float,
    step_sizes: Sequence[float],
    *data: Tensor,
    method: str,
    reference: Tensor,
) -> Tensor:
    """Final-time error of a fixed-grid solver for several step sizes.

    ```
    error(h) = max |w_h(t_end) - w(t_end)|
    ```

    Args:
        rule: a name in :data:`CLASSIC_RULES` or a vector field ``F(w, *data)``.
        w0: initial weights ``(batch, n)`` or ``(batch, m, n)``.
        t_end: integration time ``> 0``.
        step_sizes: solver steps ``h``; ``t_end / h`` should be whole numbers.
        *data: the rule's data, as in :func:`discrete_update`.
        method: a fixed-grid torchdiffeq method (see :data:`FIXED_GRID_METHODS`).
        reference: the exact ``w(t_end)``, shaped like ``w0``.

    Returns:
        Errors ``(len(step_sizes),)``.
    """
    t_end = _check_positive("t_end", t_end)
    if method not in FIXED_GRID_METHODS:
        raise ValueError(
            f"method: expected one of {sorted(FIXED_GRID_METHODS)}, got {_describe(method)}"
        )
    if not isinstance(reference, Tensor):
        raise TypeError(
            f"reference: expected a torch.Tensor of shape {tuple(w0.shape)} like w0, "
            f"got {type(reference).__name__}"
        )
    if reference.shape != w0.shape:
        raise ValueError(
            f"reference: expected shape {tuple(w0.shape)} like w0, got {tuple(reference.shape)}"
        )
    times = torch.tensor([0.0, t_end], dtype=w0.dtype, device=w0.device)
    errors = [
        (integrate_rule(rule, w0, times, *data, method=method, step_size=h)[-1] - reference)
        .abs()
        .max()
        for h in step_sizes
    ]
    return torch.stack(errors)


def convergence_order(step_sizes: Sequence[float], errors: Tensor | Sequence[float]) -> float:
    """Measured order ``p`` of a solver: the least-squares slope of ``log error`` vs ``log h``.

    ```
    error(h) ~ K h^p   =>   log error = p log h + log K
    ```

    Args:
        step_sizes: step sizes ``(k,)``, ``k >= 2``, positive.
        errors: errors ``(k,)``, positive.

    Returns:
        The fitted slope ``p``.
    """
    log_steps = torch.log(torch.as_tensor(step_sizes, dtype=torch.float64).detach().cpu())
    log_errors = torch.log(torch.as_tensor(errors, dtype=torch.float64).detach().cpu())
    if log_steps.dim() != 1 or log_steps.numel() < 2:
        raise ValueError(
            f"step_sizes: expected shape (k,) with k >= 2, got {tuple(log_steps.shape)}"
        )
    if log_errors.shape != log_steps.shape:
        raise ValueError(
            f"errors: expected shape {tuple(log_steps.shape)} like step_sizes, "
            f"got {tuple(log_errors.shape)}"
        )
    for name, logs, values in (
        ("step_sizes", log_steps, step_sizes),
        ("errors", log_errors, errors),
    ):
        good = torch.isfinite(logs)
        if not bool(good.all()):
            values = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
            raise ValueError(
                f"{name}: expected positive finite values, got {_first_bad(name, values, good)}"
            )
    design = torch.stack([log_steps, torch.ones_like(log_steps)], dim=1)
    slope = torch.linalg.lstsq(design, log_errors.unsqueeze(1)).solution[0, 0]
    return float(slope)

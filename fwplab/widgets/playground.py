"""Learning-rule playground: discrete updates next to their ODE in a 2-D weight plane.

The plain functions compute and draw; :func:`rule_playground` wraps them in an
ipywidgets control (rule, learning rate, solver step). ipywidgets is imported
only inside that function, so the rest works without it.

For a rule ``F`` (the data-averaged Hebb, Oja or delta field of
:mod:`fwplab.rules.classic`) the playground shows, from several initial weights,

```
discrete:  w_{k+1} = w_k + lr F(w_k)        at times t_k = k lr
ODE:       dw/dt = F(w)                     solved by torchdiffeq with step step_size
```

The delta rule learns a ``1 x 2`` weight matrix, so all three rules live in the plane.

A fast weight rule added with :func:`fwplab.register_rule` is shown in the same plane
when its field takes a ``1 x 2`` fast weight (:func:`plane_rules`): the inputs ``x``
are its keys, the targets ``y`` its values, the rate is 1, and its ODE is the
data-averaged field (:func:`plane_field`)::

    dW/dt = mean_i field(W, x_i, y_i, 1)        W of shape (1, 2)

For the delta rule's field this is the delta rule above.

:func:`online_rule_trajectories` runs the *online* rule instead, one random sample
per step, next to the averaged ODE at the summed step sizes, and
:func:`sample_key_value_stream` draws the keys, values and rates that drive a
delta-rule fast weight programmer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from ..rules import RULES, FastWeightRule
from ..rules.classic import (
    convergence_order,
    covariance,
    discrete_trajectory,
    integrate_rule,
    learning_times,
    least_squares_weights,
    online_trajectory,
    principal_components,
    step_schedule,
)
from .still import figure_png, still_box

__all__ = [
    "PLANE_HORIZON",
    "RULE_HORIZONS",
    "KeyValueStream",
    "PlaygroundProblem",
    "RuleTrajectories",
    "draw_convergence",
    "draw_errors_over_time",
    "draw_rule_trajectories",
    "online_rule_trajectories",
    "plane_field",
    "plane_rules",
    "rule_playground",
    "rule_trajectories",
    "sample_key_value_stream",
    "sample_problem",
]

#: Time span shown for each rule: long enough to see Oja and delta settle and
#: Hebb grow by about ``exp(3)`` (``lambda_max`` is about 2 in :func:`sample_problem`).
RULE_HORIZONS: dict[str, float] = {"hebb": 1.5, "oja": 5.0, "delta": 8.0}
#: Time span shown for a registered fast weight rule (:func:`plane_rules`).
PLANE_HORIZON = 5.0
#: Samples :func:`plane_rules` tries a field on.
PLANE_TRIAL_SAMPLES = 3


class PlaygroundProblem(NamedTuple):
    """Samples of a 2-D regression problem and their second moments.

    Attributes:
        x: inputs ``(samples, 2)``.
        y: targets ``(samples, 1)``.
        C_xx: input second moment ``E[x x^T]`` of shape ``(2, 2)``.
        C_yx: cross moment ``E[y x^T]`` of shape ``(1, 2)``.
        starts: initial weights ``(starts, 2)``, one trajectory each.
    """

    x: Tensor
    y: Tensor
    C_xx: Tensor
    C_yx: Tensor
    starts: Tensor


def sample_problem(
    num_samples: int = 1000,
    num_starts: int = 5,
    variances: tuple[float, float] = (2.0, 0.5),
    angle: float = math.pi / 6,
    target_weights: tuple[float, float] = (1.0, -0.5),
    noise: float = 0.1,
    start_radius: float = 0.4,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> PlaygroundProblem:
    """Draw a seeded 2-D problem: correlated Gaussian inputs and noisy linear targets.

    ```
    x = R(angle) diag(sqrt(variances)) z,   z ~ N(0, I)
    y = target_weights . x + noise * e,     e ~ N(0, 1)
    ```

    The initial weights lie on a circle of radius ``start_radius``.

    Args:
        num_samples: number of samples.
        num_starts: number of initial weight vectors.
        variances: variances along the principal axes (the eigenvalues of ``C_xx``
            up to sampling error).
        angle: direction of the first principal axis, in radians.
        target_weights: true regression weights.
        noise: standard deviation of the target noise.
        start_radius: radius of the circle of initial weights.
        seed: seed of the random generator.
        dtype: floating point dtype of every tensor.

    Returns:
        :class:`PlaygroundProblem`.
    """
    generator = torch.Generator().manual_seed(seed)
    rotation = torch.tensor(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=dtype
    )
    scales = torch.tensor(variances, dtype=dtype).sqrt()
    x = (torch.randn(num_samples, 2, generator=generator, dtype=dtype) * scales) @ rotation.mT
    weights = torch.tensor(target_weights, dtype=dtype)
    y = x @ weights.unsqueeze(1) + noise * torch.randn(
        num_samples, 1, generator=generator, dtype=dtype
    )
    start_angles = 2 * math.pi * torch.arange(num_starts, dtype=dtype) / num_starts + 0.3
    starts = start_radius * torch.stack([start_angles.cos(), start_angles.sin()], dim=1)
    return PlaygroundProblem(x, y, covariance(x), covariance(x, y), starts)


def plane_field(rule: FastWeightRule):
    """The data-averaged field of a fast weight rule in the playground's plane.

    ```
    F(W, x, y) = mean_i field(W, x_i, y_i, 1)       W (..., 1, 2), x (samples, 2), y (samples, 1)
    ```

    The samples are the keys and values as they are (no activation): the plane shows
    what the rule does with the regression data of :func:`sample_problem`.

    Args:
        rule: a record of :data:`fwplab.rules.RULES`.

    Returns:
        ``F(W, x, y) -> dW/dt`` of ``W``'s shape, a vector field for
        :func:`~fwplab.rules.classic.integrate_rule`.
    """

    def averaged(W: Tensor, x: Tensor, y: Tensor) -> Tensor:
        samples = x.shape[0]
        weights = W.unsqueeze(-3).expand(*W.shape[:-2], samples, *W.shape[-2:])
        keys = x.expand(*W.shape[:-2], *x.shape)
        values = y.expand(*W.shape[:-2], *y.shape)
        rate = torch.ones_like(values[..., :1])
        return rule.field(weights, keys, values, rate).mean(-3)

    return averaged


def _fits_plane(rule: FastWeightRule) -> bool:
    """Whether ``rule.field`` takes a ``1 x 2`` fast weight and returns a finite one."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(PLANE_TRIAL_SAMPLES, 2, generator=generator, dtype=torch.float64)
    y = torch.randn(PLANE_TRIAL_SAMPLES, 1, generator=generator, dtype=torch.float64)
    W = torch.randn(2, 1, 2, generator=generator, dtype=torch.float64)
    try:
        update = plane_field(rule)(W, x, y)
    except Exception:  # a field written for square fast weights may fail in any way
        return False
    return isinstance(update, Tensor) and update.shape == W.shape and bool(
        torch.isfinite(update).all())


def plane_rules() -> dict[str, FastWeightRule]:
    """The rules added with :func:`fwplab.register_rule` that fit the plane, read now.

    A rule fits when its field takes a ``1 x 2`` fast weight (one value component, two
    key components) and returns a finite update of that shape. The built-in rules are
    left out: their classic forms are the playground's own Hebb, Oja and delta.

    Returns:
        Rule name -> record, in registration order.
    """
    return {name: rule for name, rule in RULES.items()
            if not rule.builtin and name not in RULE_HORIZONS and _fits_plane(rule)}


class RuleTrajectories(NamedTuple):
    """Discrete and ODE trajectories of one rule from every initial weight.

    Weights are flattened to the plane: delta-rule weights ``(1, 2)`` become ``(2,)``.

    Attributes:
        rule: ``"hebb"``, ``"oja"``, ``"delta"`` or a registered rule's name.
        lr: learning rate of the discrete rule.
        step_size: step of the ODE solver.
        discrete_times: ``(steps + 1,)``, the times ``k * lr``.
        discrete: discrete iterates ``(steps + 1, starts, 2)``.
        ode_times: ``(points,)``.
        ode: ODE solution ``(points, starts, 2)``.
        center: the point the rule's geometry is drawn around ``(2,)``: the origin
            for Hebb and Oja, the least-squares weights for the delta rule.
        eigenvalues: eigenvalues of ``C_xx``, largest first ``(2,)``.
        eigenvectors: its unit eigenvectors as columns ``(2, 2)``.
    """

    rule: str
    lr: float
    step_size: float
    discrete_times: Tensor
    discrete: Tensor
    ode_times: Tensor
    ode: Tensor
    center: Tensor
    eigenvalues: Tensor
    eigenvectors: Tensor

    def distances(self) -> tuple[Tensor, Tensor]:
        """Distance of every weight to :attr:`center`.

        Returns:
            Discrete distances ``(steps + 1, starts)`` and ODE distances ``(points, starts)``.
        """
        return (
            (self.discrete - self.center).norm(dim=-1),
            (self.ode - self.center).norm(dim=-1),
        )


def rule_trajectories(
    problem: PlaygroundProblem,
    rule: str,
    lr: float,
    step_size: float,
    method: str = "rk4",
    num_points: int = 201,
) -> RuleTrajectories:
    """Run the averaged rule both ways over its horizon.

    The horizon is :data:`RULE_HORIZONS` for the classic rules, :data:`PLANE_HORIZON`
    for a registered one. The discrete rule takes ``floor(horizon / lr)`` steps (at
    least one); the ODE is solved with the fixed-grid torchdiffeq ``method`` at step
    ``step_size`` and read out at ``num_points`` evenly spaced times.

    Args:
        problem: the data, from :func:`sample_problem`.
        rule: ``"hebb"``, ``"oja"``, ``"delta"`` (the classic rules) or a name of
            :func:`plane_rules` (a registered fast weight rule, ``W`` of shape ``(1, 2)``,
            drawn around the origin).
        lr: learning rate of the discrete rule, ``> 0``.
        step_size: step of the ODE solver, ``> 0``.
        method: a fixed-grid torchdiffeq method.
        num_points: number of ODE read-out times, ``>= 2``.

    Returns:
        :class:`RuleTrajectories`.
    """
    registered = plane_rules() if rule not in RULE_HORIZONS else {}
    if rule not in RULE_HORIZONS and rule not in registered:
        raise ValueError(f"rule: expected one of {[*RULE_HORIZONS, *registered]}, got {rule!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if not isinstance(num_points, int) or num_points < 2:
        raise ValueError(f"num_points must be an int >= 2, got {num_points!r}")
    horizon = RULE_HORIZONS.get(rule, PLANE_HORIZON)
    if rule in registered:
        field = plane_field(registered[rule])
        data = (problem.x, problem.y)
        w0 = problem.starts.unsqueeze(1)
        center = torch.zeros_like(problem.starts[0])
    elif rule == "delta":
        field = f"{rule}_mean"
        data = (problem.C_xx, problem.C_yx)
        w0 = problem.starts.unsqueeze(1)
        center = least_squares_weights(*data)[0]
    else:
        field = f"{rule}_mean"
        data = (problem.C_xx,)
        w0 = problem.starts
        center = torch.zeros_like(problem.starts[0])
    num_steps = max(1, math.floor(horizon / lr))
    discrete = discrete_trajectory(field, w0, num_steps, *data, lr=lr)
    ode_times = torch.linspace(0, horizon, num_points, dtype=w0.dtype, device=w0.device)
    ode = integrate_rule(field, w0, ode_times, *data, method=method, step_size=step_size)
    components = principal_components(problem.C_xx)
    return RuleTrajectories(
        rule=rule,
        lr=float(lr),
        step_size=float(step_size),
        discrete_times=lr * torch.arange(num_steps + 1, dtype=w0.dtype, device=w0.device),
        discrete=discrete.flatten(2),
        ode_times=ode_times,
        ode=ode.flatten(2),
        center=center,
        eigenvalues=components.values,
        eigenvectors=components.vectors,
    )


def online_rule_trajectories(
    problem: PlaygroundProblem,
    rule: str,
    lr: float,
    num_steps: int,
    decay_steps: float | None = None,
    starts: Tensor | None = None,
    seed: int = 0,
) -> RuleTrajectories:
    """Run the online rule on random samples next to the averaged ODE.

    Every step draws one sample of ``problem`` at random (with replacement) and
    applies the one-sample rule with step ``eta_k`` from
    :func:`~fwplab.rules.classic.step_schedule`; the averaged ODE is solved
    (torchdiffeq ``dopri5``) at the same times ``t_k = eta_0 + ... + eta_{k-1}``::

        online:  w_{k+1} = w_k + eta_k F(w_k, x_{i_k})
        ODE:     dw/dt = E[F(w, x)]

    Args:
        problem: the data, from :func:`sample_problem`.
        rule: ``"hebb"``, ``"oja"`` or ``"delta"``.
        lr: first step ``eta_0 > 0``.
        num_steps: number of online steps, ``>= 1``.
        decay_steps: ``n0`` of the decaying schedule ``eta_0 / (1 + k / n0)``;
            ``None`` keeps the step constant.
        starts: initial weights ``(starts, 2)``; default ``problem.starts``.
        seed: seed of the sample order.

    Returns:
        :class:`RuleTrajectories` whose ``discrete`` holds the online iterates,
        ``discrete_times`` and ``ode_times`` the times ``t_k`` ``(num_steps + 1,)``,
        and ``lr`` the first step.
    """
    if rule not in RULE_HORIZONS:
        raise ValueError(f"rule must be one of {sorted(RULE_HORIZONS)}, got {rule!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    starts = problem.starts if starts is None else starts
    steps = step_schedule(lr, num_steps, decay_steps, dtype=starts.dtype).to(starts.device)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randint(0, problem.x.shape[0], (num_steps,), generator=generator)
    order = order.to(problem.x.device)
    times = learning_times(steps)
    if rule == "delta":
        w0, center = starts.unsqueeze(1), least_squares_weights(problem.C_xx, problem.C_yx)[0]
        online = online_trajectory("delta", w0, problem.x[order], problem.y[order], lr=steps)
        ode = integrate_rule("delta_mean", w0, times, problem.C_xx, problem.C_yx)
    else:
        w0, center = starts, torch.zeros_like(starts[0])
        online = online_trajectory(rule, w0, problem.x[order], lr=steps)
        ode = integrate_rule(f"{rule}_mean", w0, times, problem.C_xx)
    components = principal_components(problem.C_xx)
    return RuleTrajectories(
        rule=rule,
        lr=float(lr),
        step_size=math.nan,
        discrete_times=times,
        discrete=online.flatten(2),
        ode_times=times,
        ode=ode.flatten(2),
        center=center,
        eigenvalues=components.values,
        eigenvectors=components.vectors,
    )


class KeyValueStream(NamedTuple):
    """Keys, values and learning rates that drive a delta-rule fast weight programmer.

    Attributes:
        keys: ``(samples, key_size)``.
        values: ``(samples, value_size)``.
        rates: ``(samples,)``, in ``(0, 1)``.
        key_logits: the logits the keys and rates are computed from ``(samples, key_size)``.
    """

    keys: Tensor
    values: Tensor
    rates: Tensor
    key_logits: Tensor


def sample_key_value_stream(
    num_samples: int,
    key_size: int = 4,
    value_size: int = 2,
    keys: str = "softmax",
    logit_scale: float = 1.0,
    rate_scale: float = 3.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> KeyValueStream:
    """Draw a seeded stream of keys, values and rates from one fixed distribution.

    ```
    z ~ N(0, logit_scale^2 I)
    k = softmax(z)               (keys="softmax": |k|_2 <= 1, about 1/sqrt(d) for small z)
    k = z / |z|                  (keys="unit")
    v = tanh(2 A z),             A ~ N(0, 1) of shape (value_size, key_size), fixed per seed
    beta = sigmoid(rate_scale * z_1)
    ```

    Values are a nonlinear function of the logits, so no linear map of the keys
    gives them exactly; the rates depend on the key, so weighting by them changes
    the best linear fit.

    Args:
        num_samples: number of samples.
        key_size: ``d``, the size of a key.
        value_size: the size of a value.
        keys: ``"softmax"`` or ``"unit"`` (unit-norm keys, the same logits normalised).
        logit_scale: standard deviation of the logits.
        rate_scale: how strongly the rate depends on the first logit.
        seed: seed of the random generator.
        dtype: floating point dtype of every tensor.

    Returns:
        :class:`KeyValueStream`.
    """
    if keys not in ("softmax", "unit"):
        raise ValueError(f"keys must be 'softmax' or 'unit', got {keys!r}")
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(value_size, key_size, generator=generator, dtype=dtype)
    logits = logit_scale * torch.randn(num_samples, key_size, generator=generator, dtype=dtype)
    if keys == "softmax":
        key_vectors = torch.softmax(logits, -1)
    else:
        key_vectors = logits / logits.norm(dim=-1, keepdim=True)
    values = torch.tanh(2 * logits @ mixing.mT)
    rates = torch.sigmoid(rate_scale * logits[:, 0])
    return KeyValueStream(key_vectors, values, rates, logits)


def _draw_weight_plane(ax: Axes, trajectories: RuleTrajectories, label: str = "discrete") -> None:
    """Trajectories in the weight plane with the eigenvectors of ``C_xx`` through the center.

    ``label`` names the iterates in :attr:`RuleTrajectories.discrete`; online
    iterates (many, noisy) are drawn as a thin line without markers.
    """
    ode = trajectories.ode.detach().cpu()
    discrete = trajectories.discrete.detach().cpu()
    center = trajectories.center.detach().cpu()
    finite = torch.cat([ode.reshape(-1, 2), discrete.reshape(-1, 2)])
    finite = finite[torch.isfinite(finite).all(dim=1)]
    reach = float((finite - center).norm(dim=1).max()) * 1.1
    for index, (value, vector) in enumerate(
        zip(trajectories.eigenvalues.cpu(), trajectories.eigenvectors.cpu().T, strict=True)
    ):
        ends = torch.stack([center - reach * vector, center + reach * vector])
        ax.plot(ends[:, 0], ends[:, 1], color="0.6", lw=1, ls="--" if index else "-")
        ax.annotate(
            f"$u_{index + 1}$ ($\\lambda_{index + 1}$ = {float(value):.2f})",
            (center + 0.6 * reach * vector).tolist(),
            color="0.4",
            fontsize=8,
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7},
        )
    if trajectories.rule == "oja":
        angles = torch.linspace(0, 2 * math.pi, 200)
        ax.plot(angles.cos(), angles.sin(), color="0.8", lw=1, label="unit circle")
    for start in range(ode.shape[1]):
        (line,) = ax.plot(
            ode[:, start, 0], ode[:, start, 1], lw=2, label="ODE" if start == 0 else None
        )
        ax.plot(
            discrete[:, start, 0],
            discrete[:, start, 1],
            "-" if label == "online" else "o:",
            color=line.get_color(),
            ms=3,
            lw=0.6 if label == "online" else 1,
            alpha=0.7 if label == "online" else 1,
            label=label if start == 0 else None,
        )
    ax.plot(
        *center.tolist(),
        "k*",
        ms=10,
        label="least squares" if trajectories.rule == "delta" else None,
    )
    ax.set_xlim(float(center[0]) - reach, float(center[0]) + reach)
    ax.set_ylim(float(center[1]) - reach, float(center[1]) + reach)
    ax.set_aspect("equal")
    ax.set_xlabel("$w_1$")
    ax.set_ylabel("$w_2$")
    ax.legend(loc="lower right", fontsize=8)


def draw_rule_trajectories(trajectories: RuleTrajectories, online: bool = False) -> Figure:
    """Draw the weight plane and the distance to the center over time.

    Left: every trajectory in the weight plane, ODE as lines and the discrete
    iterates as dots (online iterates as thin lines), with the eigenvectors of
    ``C_xx`` (and the unit circle for Oja). Right: ``|w|`` (Hebb, Oja) or
    ``|W - W*|`` (delta) against time on a log scale: a straight line is
    exponential growth or decay.

    Args:
        trajectories: from :func:`rule_trajectories` or :func:`online_rule_trajectories`.
        online: the iterates are online ones (from :func:`online_rule_trajectories`).

    Returns:
        A new matplotlib figure with two axes.
    """
    figure = Figure(figsize=(10, 4.5), layout="constrained")
    plane, distance = figure.subplots(1, 2)
    _draw_weight_plane(plane, trajectories, label="online" if online else "discrete")
    discrete_distance, ode_distance = (d.detach().cpu() for d in trajectories.distances())
    ode_times = trajectories.ode_times.detach().cpu()
    discrete_times = trajectories.discrete_times.detach().cpu()
    for start in range(ode_distance.shape[1]):
        (line,) = distance.plot(ode_times, ode_distance[:, start], lw=2)
        distance.plot(
            discrete_times,
            discrete_distance[:, start],
            "-" if online else "o:",
            color=line.get_color(),
            ms=3,
            lw=0.6 if online else 1,
        )
    distance.set_yscale("log")
    if online:
        distance.set_xlabel("time $t_k = \\eta_0 + \\dots + \\eta_{k-1}$ (online step $k$)")
        title = (
            f"{trajectories.rule}: online rule, first step {trajectories.lr:.3g}, vs averaged ODE"
        )
    else:
        distance.set_xlabel("time $t$ (discrete step $k$ at $t = k\\,\\eta$)")
        title = (
            f"{trajectories.rule}: discrete rule with learning rate {trajectories.lr:.3g} "
            f"vs ODE (step {trajectories.step_size:.3g})"
        )
    distance.set_ylabel("$|W - W^*|$" if trajectories.rule == "delta" else "$|w|$")
    figure.suptitle(title)
    return figure


def draw_convergence(step_sizes: Sequence[float], errors: Mapping[str, Tensor]) -> Figure:
    """Log-log plot of solver error against step size, one line per method.

    The legend gives each method's fitted order (:func:`~fwplab.rules.classic.convergence_order`):
    on log-log axes an error ``K h^p`` is a straight line of slope ``p``.

    Args:
        step_sizes: step sizes ``(k,)``.
        errors: method name -> errors ``(k,)``.

    Returns:
        A new matplotlib figure.
    """
    figure = Figure(figsize=(5, 4), layout="constrained")
    ax = figure.subplots()
    for method, method_errors in errors.items():
        order = convergence_order(step_sizes, method_errors)
        ax.loglog(
            step_sizes, method_errors.detach().cpu(), "o-", label=f"{method}: slope {order:.2f}"
        )
    ax.set_xlabel("step size $h$")
    ax.set_ylabel("error at the final time")
    ax.legend()
    return figure


def draw_errors_over_time(curves: Mapping[str, tuple[Tensor, Tensor]], ylabel: str) -> Figure:
    """Plot errors against time on a log scale, one line per named curve.

    Args:
        curves: name -> ``(times (points,), errors (points,))``.
        ylabel: label of the error axis.

    Returns:
        A new matplotlib figure.
    """
    figure = Figure(figsize=(6, 3.5), layout="constrained")
    ax = figure.subplots()
    for name, (times, errors) in curves.items():
        ax.plot(times.detach().cpu(), errors.detach().cpu(), lw=1.2, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("time $t$")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return figure


def rule_playground(problem: PlaygroundProblem):
    """Build the ipywidgets control: rule, learning rate and solver step redraw the figure.

    The rule menu offers the classic Hebb, Oja and delta rules and every rule of
    :func:`plane_rules`, read when the control is built. The figure is recomputed only
    when a control is released (``continuous_update=False``).

    Args:
        problem: the data, from :func:`sample_problem`.

    Returns:
        An ``ipywidgets.VBox`` holding the controls and the figure (with a still of the
        figure for static pages: :mod:`fwplab.widgets.still`).
    """
    import ipywidgets as widgets
    from IPython.display import display

    classic = [("Hebb's rule", "hebb"), ("Oja's rule", "oja"), ("delta rule (LMS)", "delta")]
    registered = [(f"registered: {record.label}", name) for name, record in plane_rules().items()]
    rule = widgets.Dropdown(options=classic + registered, value="oja", description="rule")
    lr = widgets.FloatLogSlider(
        value=0.1,
        base=10,
        min=-2,
        max=0.2,
        step=0.05,
        description="learning rate",
        continuous_update=False,
        readout_format=".3f",
    )
    step_size = widgets.FloatLogSlider(
        value=0.05,
        base=10,
        min=-2,
        max=0,
        step=0.05,
        description="ODE step",
        continuous_update=False,
        readout_format=".3f",
    )
    output = widgets.Output()
    shown = {}

    def redraw(_change: object = None) -> None:
        trajectories = rule_trajectories(problem, rule.value, lr.value, step_size.value)
        shown["figure"] = draw_rule_trajectories(trajectories)
        with output:
            output.clear_output(wait=True)
            display(shown["figure"])

    for control in (rule, lr, step_size):
        control.observe(redraw, names="value")
    redraw()
    return still_box([widgets.HBox([rule, lr, step_size]), output],
                     lambda: figure_png(shown["figure"]))

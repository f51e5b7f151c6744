"""Classic learning rules as ODEs (docs/maths.md, section 2): fields, Euler steps, fixed points,
orders, and the online (stochastic) rules with their step-size bounds."""

import math

import pytest
import torch
from torchdiffeq import odeint

from fwplab.rules.classic import (
    CLASSIC_RULES,
    convergence_order,
    covariance,
    delta_field,
    delta_mean_field,
    delta_mean_solution,
    delta_stability_bound,
    discrete_trajectory,
    discrete_update,
    get_classic_rule,
    hebb_field,
    hebb_mean_field,
    hebb_mean_solution,
    integrate_rule,
    integration_errors,
    learning_times,
    least_squares_weights,
    lms_mean_square_bound,
    lms_sample_bound,
    oja_field,
    oja_mean_field,
    oja_mean_solution,
    online_trajectory,
    principal_components,
    step_schedule,
    steps_to_reach,
)

RTOL_AVERAGE = 1e-12  # mean of one-sample fields vs the averaged field (round-off only)
RTOL_ODE = 1e-7  # dopri5 at rtol 1e-10 vs the closed-form solutions
ATOL_LSTSQ = 1e-10  # C_yx C_xx^{-1} vs torch.linalg.lstsq on the samples
ATOL_FIXED_POINT = 1e-8  # field at an exact fixed point
OJA_MIN_COSINE = 0.999  # |cos| between Oja's weights and the top eigenvector
ATOL_UNIT_NORM = 1e-3  # | |w| - 1 | after Oja has converged
ATOL_HEBB_RATE = 1e-3  # growth rate of log|w| vs lambda_max
ATOL_DELTA_CONVERGED = 1e-6  # |W - W*| after the averaged delta ODE has converged
STABILITY_MARGIN = 0.02  # learning rates 2 % above / below 2 / lambda_max
ORDER_TOLERANCE = 0.15  # measured convergence order vs the method's order

DOUBLE = torch.float64


@pytest.fixture
def data():
    """Correlated 3-D inputs and 2-D noisy linear targets, with their moments."""
    generator = torch.Generator().manual_seed(0)
    mixing = torch.tensor([[1.5, 0.0, 0.0], [0.6, 0.9, 0.0], [0.2, -0.3, 0.5]], dtype=DOUBLE)
    x = torch.randn(400, 3, generator=generator, dtype=DOUBLE) @ mixing.mT
    true_weights = torch.randn(2, 3, generator=generator, dtype=DOUBLE)
    y = x @ true_weights.mT + 0.1 * torch.randn(400, 2, generator=generator, dtype=DOUBLE)
    return {"x": x, "y": y, "C_xx": covariance(x), "C_yx": covariance(x, y)}


def weights_for(rule, batch, generator):
    """Random weights of the shape ``rule`` expects: ``(batch, 3)`` or ``(batch, 2, 3)``."""
    shape = (batch, 2, 3) if rule.startswith("delta") else (batch, 3)
    return 0.5 * torch.randn(*shape, generator=generator, dtype=DOUBLE)


def data_for(rule, data, sample=0):
    """The arguments after the weights: one sample or the data averages."""
    if rule == "delta":
        return (data["x"][sample], data["y"][sample])
    if rule == "delta_mean":
        return (data["C_xx"], data["C_yx"])
    if rule.endswith("_mean"):
        return (data["C_xx"],)
    return (data["x"][sample],)


@pytest.mark.parametrize("rule", sorted(CLASSIC_RULES))
def test_vector_fields_pass_gradcheck(rule, data):
    generator = torch.Generator().manual_seed(1)
    weights = weights_for(rule, 2, generator).requires_grad_()
    arguments = tuple(d.clone().requires_grad_() for d in data_for(rule, data))
    assert torch.autograd.gradcheck(CLASSIC_RULES[rule], (weights, *arguments))


@pytest.mark.parametrize(
    ("sample_field", "mean_field", "moments"),
    [
        (hebb_field, hebb_mean_field, ("C_xx",)),
        (oja_field, oja_mean_field, ("C_xx",)),
        (delta_field, delta_mean_field, ("C_xx", "C_yx")),
    ],
)
def test_averaged_field_is_the_mean_of_sample_fields(sample_field, mean_field, moments, data):
    generator = torch.Generator().manual_seed(2)
    weights = weights_for("delta" if sample_field is delta_field else "hebb", 4, generator)
    samples = zip(data["x"], data["y"], strict=True)
    if sample_field is delta_field:
        per_sample = [sample_field(weights, x, y) for x, y in samples]
    else:
        per_sample = [sample_field(weights, x) for x, _ in samples]
    averaged = mean_field(weights, *(data[name] for name in moments))
    torch.testing.assert_close(torch.stack(per_sample).mean(0), averaged, rtol=RTOL_AVERAGE, atol=0)


def test_sample_fields_take_one_sample_per_weight(data):
    generator = torch.Generator().manual_seed(3)
    w = weights_for("oja", 3, generator)
    x = data["x"][:3]
    per_row = torch.stack([oja_field(w[i : i + 1], x[i]) for i in range(3)]).flatten(0, 1)
    torch.testing.assert_close(oja_field(w, x), per_row, rtol=0, atol=0)


@pytest.mark.parametrize("rule", sorted(CLASSIC_RULES))
@pytest.mark.parametrize("lr", [0.037, 0.5])
def test_discrete_update_is_exactly_an_euler_step(rule, lr, data):
    generator = torch.Generator().manual_seed(4)
    w = weights_for(rule, 3, generator)
    arguments = data_for(rule, data)
    field = CLASSIC_RULES[rule]
    euler = odeint(
        lambda _t, v: field(v, *arguments),
        w,
        torch.tensor([0.0, lr], dtype=DOUBLE),
        method="euler",
        options={"step_size": lr},
    )[-1]
    assert torch.equal(discrete_update(rule, w, *arguments, lr=lr), euler)


@pytest.mark.parametrize("rule", ["hebb_mean", "oja_mean", "delta_mean"])
def test_discrete_trajectory_equals_euler_integration(rule, data):
    lr = 2.0**-5  # a power of two, so torchdiffeq's grid k * lr is exact
    generator = torch.Generator().manual_seed(5)
    w0 = weights_for(rule, 2, generator)
    arguments = data_for(rule, data)
    times = lr * torch.arange(33, dtype=DOUBLE)
    euler = integrate_rule(rule, w0, times, *arguments, method="euler", step_size=lr)
    assert torch.equal(discrete_trajectory(rule, w0, 32, *arguments, lr=lr), euler)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_of_one_and_dtype_are_kept(dtype, data):
    w0 = torch.tensor([[0.3, -0.2, 0.1]], dtype=dtype)
    C = data["C_xx"].to(dtype)
    times = torch.linspace(0, 1, 5, dtype=dtype)
    solution = integrate_rule("oja_mean", w0, times, C, method="rk4", step_size=0.05)
    assert solution.shape == (5, 1, 3) and solution.dtype == dtype
    assert discrete_trajectory(oja_mean_field, w0, 4, C, lr=0.1).shape == (5, 1, 3)


def test_closed_form_solutions_solve_the_averaged_odes(data):
    generator = torch.Generator().manual_seed(6)
    w0, W0 = weights_for("oja", 3, generator), weights_for("delta", 3, generator)
    times = torch.linspace(0, 2, 9, dtype=DOUBLE)
    cases = [
        ("hebb_mean", w0, (data["C_xx"],), hebb_mean_solution(w0, data["C_xx"], times)),
        ("oja_mean", w0, (data["C_xx"],), oja_mean_solution(w0, data["C_xx"], times)),
        (
            "delta_mean",
            W0,
            (data["C_xx"], data["C_yx"]),
            delta_mean_solution(W0, data["C_xx"], data["C_yx"], times),
        ),
    ]
    for rule, start, arguments, exact in cases:
        numerical = integrate_rule(rule, start, times, *arguments, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(numerical, exact, rtol=RTOL_ODE, atol=RTOL_ODE, msg=rule)


def test_principal_components_are_sorted_unit_eigenvectors(data):
    values, vectors = principal_components(data["C_xx"])
    assert bool((values[:-1] >= values[1:]).all())
    torch.testing.assert_close(data["C_xx"] @ vectors, vectors * values)
    torch.testing.assert_close(vectors.mT @ vectors, torch.eye(3, dtype=DOUBLE))
    largest = vectors.abs().argmax(0)
    assert bool((vectors[largest, torch.arange(3)] > 0).all())


def test_oja_converges_to_the_unit_top_eigenvector(data):
    generator = torch.Generator().manual_seed(7)
    w0 = weights_for("oja", 8, generator)
    top = principal_components(data["C_xx"]).vectors[:, 0]
    times = torch.tensor([0.0, 40.0], dtype=DOUBLE)
    final = integrate_rule("oja_mean", w0, times, data["C_xx"], method="rk4", step_size=0.05)[-1]
    norms = final.norm(dim=-1)
    cosines = (final @ top) / norms
    assert bool((cosines.abs() > OJA_MIN_COSINE).all()), cosines
    assert bool(((norms - 1).abs() < ATOL_UNIT_NORM).all()), norms


def test_oja_fixed_points_are_eigenvectors_and_only_the_top_is_stable(data):
    C = data["C_xx"]
    values, vectors = principal_components(C)
    for index in range(3):
        point = vectors[:, index].unsqueeze(0)
        torch.testing.assert_close(
            oja_mean_field(point, C), torch.zeros_like(point), rtol=0, atol=ATOL_FIXED_POINT
        )
        jacobian = torch.autograd.functional.jacobian(lambda w: oja_mean_field(w, C), point)
        growth = torch.linalg.eigvals(jacobian.reshape(3, 3)).real
        assert bool((growth < 0).all()) == (index == 0), (index, growth)
    top_jacobian = torch.autograd.functional.jacobian(
        lambda w: oja_mean_field(w, C), vectors[:, :1].mT
    ).reshape(3, 3)
    expected = torch.cat([values[1:] - values[0], -2 * values[:1]]).sort().values
    torch.testing.assert_close(torch.linalg.eigvals(top_jacobian).real.sort().values, expected)


def test_hebb_grows_without_bound_along_the_top_eigenvector(data):
    values, vectors = principal_components(data["C_xx"])
    w0 = torch.tensor([[0.3, -0.2, 0.1], [-0.1, 0.4, 0.2]], dtype=DOUBLE)
    times = torch.tensor([0.0, 9.0, 10.0], dtype=DOUBLE)
    solution = integrate_rule("hebb_mean", w0, times, data["C_xx"], rtol=1e-10, atol=1e-12)
    norms = solution.norm(dim=-1)
    assert bool((norms[1:] > norms[:-1]).all())
    rate = (norms[2] / norms[1]).log()
    torch.testing.assert_close(rate, values[0].expand(2), rtol=0, atol=ATOL_HEBB_RATE)
    cosines = (solution[-1] @ vectors[:, 0]) / norms[-1]
    assert bool((cosines.abs() > OJA_MIN_COSINE).all())


def test_delta_fixed_point_is_least_squares(data):
    fixed_point = least_squares_weights(data["C_xx"], data["C_yx"])
    lstsq = torch.linalg.lstsq(data["x"], data["y"]).solution.mT
    torch.testing.assert_close(fixed_point, lstsq, rtol=0, atol=ATOL_LSTSQ)
    torch.testing.assert_close(
        delta_mean_field(fixed_point.unsqueeze(0), data["C_xx"], data["C_yx"]),
        torch.zeros(1, 2, 3, dtype=DOUBLE),
        rtol=0,
        atol=ATOL_FIXED_POINT,
    )
    generator = torch.Generator().manual_seed(8)
    W0 = weights_for("delta", 4, generator)
    times = torch.tensor([0.0, 200.0], dtype=DOUBLE)
    final = integrate_rule("delta_mean", W0, times, data["C_xx"], data["C_yx"])[-1]
    assert float((final - lstsq).abs().max()) < ATOL_DELTA_CONVERGED


@pytest.mark.parametrize(
    ("factor", "diverges"), [(1 + STABILITY_MARGIN, True), (1 - STABILITY_MARGIN, False)]
)
def test_discrete_delta_rule_stability_bound(factor, diverges, data):
    bound = delta_stability_bound(data["C_xx"])
    torch.testing.assert_close(
        torch.tensor(bound, dtype=DOUBLE), 2 / torch.linalg.eigvalsh(data["C_xx"]).max()
    )
    fixed_point = least_squares_weights(data["C_xx"], data["C_yx"])
    W0 = torch.zeros(1, 2, 3, dtype=DOUBLE)
    steps = discrete_trajectory(
        "delta_mean", W0, 2000, data["C_xx"], data["C_yx"], lr=factor * bound
    )
    ratio = float((steps[-1] - fixed_point).norm() / (steps[0] - fixed_point).norm())
    assert (ratio > 1e3) if diverges else (ratio < 1e-3), ratio


@pytest.mark.parametrize(("method", "order"), [("euler", 1), ("rk4", 4), ("midpoint", 2)])
def test_solver_error_shrinks_at_its_order(method, order):
    C = torch.tensor([[2.0, 0.6], [0.6, 0.8]], dtype=DOUBLE)
    w0 = torch.tensor([[0.3, -0.2], [-0.4, 0.1], [0.2, 0.5]], dtype=DOUBLE)
    t_end = 2.0
    exact = oja_mean_solution(w0, C, torch.tensor([t_end], dtype=DOUBLE))[0]
    step_sizes = [t_end / 2**k for k in range(5, 9)]
    errors = integration_errors(
        "oja_mean", w0, t_end, step_sizes, C, method=method, reference=exact
    )
    assert bool((errors[1:] < errors[:-1]).all()), errors
    assert abs(convergence_order(step_sizes, errors) - order) < ORDER_TOLERANCE


def test_convergence_order_recovers_a_power_law():
    step_sizes = [0.1, 0.05, 0.025]
    assert math.isclose(convergence_order(step_sizes, [3 * h**2.5 for h in step_sizes]), 2.5)


def test_covariance_moments():
    x = torch.tensor([[1.0, 2.0], [3.0, 0.0], [2.0, 1.0]], dtype=DOUBLE)
    y = torch.tensor([[1.0], [0.0], [2.0]], dtype=DOUBLE)
    torch.testing.assert_close(covariance(x), x.mT @ x / 3)
    torch.testing.assert_close(covariance(x, y), y.mT @ x / 3)
    torch.testing.assert_close(covariance(x, center=True), torch.cov(x.mT, correction=0))


def test_table_and_lookup():
    assert set(CLASSIC_RULES) == {"hebb", "oja", "delta", "hebb_mean", "oja_mean", "delta_mean"}
    assert get_classic_rule("oja") is oja_field
    assert get_classic_rule(oja_mean_field) is oja_mean_field


def test_bad_shapes_and_types_name_the_argument():
    w, C = torch.zeros(2, 3, dtype=DOUBLE), torch.eye(3, dtype=DOUBLE)
    with pytest.raises(ValueError, match=r"w: expected shape \(batch, n\), got \(3,\)"):
        hebb_field(C[0], C[0])
    with pytest.raises(ValueError, match=r"x: expected shape \(n,\) or \(batch, n\)"):
        hebb_field(w, torch.ones(4, dtype=DOUBLE))
    with pytest.raises(ValueError, match=r"x: expected shape .* batch = 2, n = 3, got \(5, 3\)"):
        oja_field(w, torch.ones(5, 3, dtype=DOUBLE))
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        oja_field(w, [1.0, 2.0, 3.0])
    with pytest.raises(
        TypeError, match="w: expected a floating point tensor, got dtype torch.int64"
    ):
        oja_field(w.long(), C[0])
    with pytest.raises(ValueError, match=r"C: expected shape \(n, n\) with n = 3, got \(2, 2\)"):
        hebb_mean_field(w, torch.eye(2, dtype=DOUBLE))
    with pytest.raises(ValueError, match=r"W: expected shape \(batch, m, n\), got \(2, 3\)"):
        delta_field(w, C[0], C[0])
    with pytest.raises(ValueError, match=r"y: expected shape \(m,\) or \(batch, m\)"):
        delta_field(w.unsqueeze(1), C[0], C[:2, 0])
    with pytest.raises(ValueError, match=r"C_yx: expected shape \(m, n\) with m = 1, n = 3"):
        delta_mean_field(w.unsqueeze(1), C, torch.ones(2, 3, dtype=DOUBLE))
    with pytest.raises(ValueError, match=r"C_yx: expected shape \(m, n\) with n = 3"):
        least_squares_weights(C, torch.ones(2, 2, dtype=DOUBLE))
    with pytest.raises(
        ValueError, match=r"C: expected a symmetric matrix, got max \|C - C\^T\| = 2.0"
    ):
        principal_components(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(
        ValueError, match=r"y: expected shape \(samples, m\) with samples = 4, got \(3, 1\)"
    ):
        covariance(torch.ones(4, 2), torch.ones(3, 1))
    with pytest.raises(ValueError, match="rule: expected one of .*, got 'sanger'"):
        discrete_update("sanger", w, C, lr=0.1)


def test_non_finite_data_is_refused():
    w, C = torch.zeros(2, 3, dtype=DOUBLE), torch.eye(3, dtype=DOUBLE)
    with pytest.raises(ValueError, match="x: expected finite values, got 1 of 3 NaN or infinite"):
        oja_field(w, torch.tensor([1.0, math.nan, 0.0], dtype=DOUBLE))
    with pytest.raises(ValueError, match="C: expected finite values, got 9 of 9 NaN or infinite"):
        oja_mean_field(w, C * math.inf)
    with pytest.raises(ValueError, match="x: expected finite values, got 8 of 8 NaN or infinite"):
        covariance(torch.full((4, 2), math.nan))
    with pytest.raises(ValueError, match="t: expected finite values, got 1 of 2 NaN or infinite"):
        integrate_rule("oja_mean", w, torch.tensor([0.0, math.inf]), C)


@pytest.mark.parametrize("bad", [0.0, -0.1, math.nan, math.inf])
def test_learning_rate_and_step_size_must_be_positive(bad):
    w, C = torch.zeros(2, 3, dtype=DOUBLE), torch.eye(3, dtype=DOUBLE)
    times = torch.tensor([0.0, 1.0], dtype=DOUBLE)
    with pytest.raises(ValueError, match="lr: expected a positive finite number"):
        discrete_update("oja_mean", w, C, lr=bad)
    with pytest.raises(ValueError, match="lr: expected a positive finite number"):
        discrete_trajectory("oja_mean", w, 3, C, lr=bad)
    with pytest.raises(ValueError, match="step_size: expected a positive finite number"):
        integrate_rule("oja_mean", w, times, C, method="rk4", step_size=bad)


def test_solver_options_are_checked():
    w, C = torch.zeros(2, 3, dtype=DOUBLE), torch.eye(3, dtype=DOUBLE)
    times = torch.tensor([0.0, 1.0], dtype=DOUBLE)
    with pytest.raises(
        ValueError,
        match="step_size: expected a positive number for the fixed-grid method 'rk4', got None",
    ):
        integrate_rule("oja_mean", w, times, C, method="rk4")
    with pytest.raises(ValueError, match=r"step_size: expected None for 'dopri5' .*, got 0.1"):
        integrate_rule("oja_mean", w, times, C, step_size=0.1)
    with pytest.raises(
        ValueError, match=r"t: expected at least 2 strictly increasing times, got \[1.0, 0.0\]"
    ):
        integrate_rule("oja_mean", w, times.flip(0), C)
    with pytest.raises(ValueError, match="num_steps: expected a non-negative int, got -1"):
        discrete_trajectory("oja_mean", w, -1, C, lr=0.1)
    with pytest.raises(ValueError, match="method: expected one of .*, got 'dopri5'"):
        integration_errors("oja_mean", w, 1.0, [0.1], C, method="dopri5", reference=w)
    with pytest.raises(
        ValueError, match="C_xx: expected a positive definite matrix, got largest eigenvalue -1.0"
    ):
        delta_stability_bound(-C)
    with pytest.raises(
        ValueError, match=r"errors: expected positive finite values, got errors\[1\] = 0.0"
    ):
        convergence_order([0.1, 0.05], [1.0, 0.0])
    with pytest.raises(
        ValueError, match=r"step_sizes: expected shape \(k,\) with k >= 2, got \(1,\)"
    ):
        convergence_order([0.1], [1.0])


# ----------------------------------------------------------------------------- online rules


def gaussian_inputs(samples, generator):
    """2-D correlated Gaussian inputs with eigenvalues near 2 and 0.5."""
    mixing = torch.tensor([[1.2, 0.5], [0.5, 0.8]], dtype=DOUBLE)
    return torch.randn(samples, 2, generator=generator, dtype=DOUBLE) @ mixing.mT


def test_step_schedule_constant_and_decaying():
    torch.testing.assert_close(step_schedule(0.1, 3), torch.full((3,), 0.1, dtype=DOUBLE))
    decaying = step_schedule(0.2, 5, decay_steps=2)
    torch.testing.assert_close(decaying, 0.2 / (1 + torch.arange(5, dtype=DOUBLE) / 2))
    torch.testing.assert_close(learning_times(decaying)[-1], decaying.sum())
    torch.testing.assert_close(learning_times(0.5, 4), 0.5 * torch.arange(5, dtype=DOUBLE))


@pytest.mark.parametrize("rule", ["hebb", "oja", "delta"])
def test_online_trajectory_steps_once_per_sample(rule, data):
    generator = torch.Generator().manual_seed(9)
    w0 = weights_for(rule, 2, generator)
    samples = (data["x"][:4], data["y"][:4]) if rule == "delta" else (data["x"][:4],)
    steps = step_schedule(0.05, 4, decay_steps=1)
    iterates = online_trajectory(rule, w0, *samples, lr=steps)
    assert iterates.shape == (5, *w0.shape)
    expected = w0
    for k in range(4):
        expected = discrete_update(rule, expected, *(s[k] for s in samples), lr=float(steps[k]))
        torch.testing.assert_close(iterates[k + 1], expected, rtol=1e-14, atol=1e-14)


def test_online_oja_with_decaying_step_finds_the_top_eigenvector():
    generator = torch.Generator().manual_seed(10)
    x = gaussian_inputs(8000, generator)
    top = principal_components(covariance(x)).vectors[:, 0]
    w0 = torch.tensor([[0.3, 0.1], [-0.2, 0.4]], dtype=DOUBLE)
    decaying = online_trajectory("oja", w0, x, lr=step_schedule(0.05, 8000, decay_steps=500))[-1]
    constant = online_trajectory("oja", w0, x, lr=0.05)[-1]
    decaying_gap = 1 - (decaying @ top).abs() / decaying.norm(dim=-1)
    constant_gap = 1 - (constant @ top).abs() / constant.norm(dim=-1)
    assert bool((decaying_gap < 1e-3).all()), decaying_gap
    assert bool(((decaying.norm(dim=-1) - 1).abs() < 0.01).all())
    assert bool((decaying_gap < 0.2 * constant_gap).all()), (decaying_gap, constant_gap)


def test_online_lms_with_decaying_step_finds_least_squares(data):
    generator = torch.Generator().manual_seed(11)
    order = torch.randint(0, 400, (6000,), generator=generator)
    W0 = torch.zeros(1, 2, 3, dtype=DOUBLE)
    steps = step_schedule(0.05, 6000, decay_steps=1000)
    final = online_trajectory("delta", W0, data["x"][order], data["y"][order], lr=steps)[-1]
    lstsq = torch.linalg.lstsq(data["x"], data["y"]).solution.mT
    assert float((final - lstsq).norm() / lstsq.norm()) < 0.01


def test_online_oja_follows_the_averaged_ode_closer_for_smaller_steps():
    C = torch.tensor([[2.0, 0.6], [0.6, 0.8]], dtype=DOUBLE)
    factor = torch.linalg.cholesky(C)
    w0 = torch.tensor([[0.4, 0.1], [-0.1, 0.4]], dtype=DOUBLE)
    mean_deviation = []
    for lr in (0.04, 0.0025):
        deviations = []
        for seed in range(4):
            generator = torch.Generator().manual_seed(seed)
            steps = int(3 / lr)
            x = torch.randn(steps, 2, generator=generator, dtype=DOUBLE) @ factor.mT
            online = online_trajectory("oja", w0, x, lr=lr)
            ode = oja_mean_solution(w0, C, learning_times(lr, steps))
            deviations.append(float((online - ode).norm(dim=-1).max()))
        mean_deviation.append(sum(deviations) / len(deviations))
    # the deviation shrinks like sqrt(lr): 16x smaller steps, about 4x closer
    assert mean_deviation[1] < 0.15 and mean_deviation[0] / mean_deviation[1] > 2.5, mean_deviation


def test_one_lms_step_scales_the_sample_error_by_one_minus_eta_norm_squared():
    x = torch.tensor([1.0, 2.0, -1.0], dtype=DOUBLE)
    y = torch.tensor([0.5], dtype=DOUBLE)
    W = torch.tensor([[[0.2, -0.3, 0.4]]], dtype=DOUBLE)
    bound = float(lms_sample_bound(x.unsqueeze(0))[0])
    assert math.isclose(bound, 2 / 6)
    before = y - W[0] @ x
    for factor, expected in [(1.0, -1.0), (1.5, -2.0), (0.5, 0.0)]:
        after = y - discrete_update("delta", W, x, y, lr=factor * bound)[0] @ x
        torch.testing.assert_close(after, expected * before)


def test_mean_square_bound_is_two_over_trace_for_inputs_of_constant_norm():
    angles = torch.tensor([0.1, 0.5, 1.2, 2.0, 2.9], dtype=DOUBLE)
    x = 1.7 * torch.stack([angles.cos(), angles.sin()], dim=1)
    assert math.isclose(lms_mean_square_bound(x), 2 / float(covariance(x).trace()), rel_tol=1e-9)


def test_mean_square_bound_for_gaussian_inputs():
    generator = torch.Generator().manual_seed(12)
    one_dimensional = torch.randn(200000, 1, generator=generator, dtype=DOUBLE)
    assert math.isclose(lms_mean_square_bound(one_dimensional), 2 / 3, rel_tol=0.02)
    many = torch.randn(20000, 40, generator=generator, dtype=DOUBLE)
    trace = float(covariance(many).trace())
    # about 2 / tr C in many dimensions (2 / (tr C + 2) for N(0, I))
    assert math.isclose(lms_mean_square_bound(many), 2 / (trace + 2), rel_tol=0.03)
    x = gaussian_inputs(2000, generator)
    assert lms_mean_square_bound(x) < 2 / float(covariance(x).trace())
    assert lms_mean_square_bound(x) < delta_stability_bound(covariance(x))


@pytest.mark.parametrize(("factor", "decays"), [(0.95, True), (1.05, False)])
def test_mean_square_bound_separates_decay_from_growth(factor, decays):
    generator = torch.Generator().manual_seed(13)
    x = gaussian_inputs(500, generator)
    lr = factor * lms_mean_square_bound(x)
    contraction = torch.eye(2, dtype=DOUBLE) - lr * x.unsqueeze(-1) * x.unsqueeze(-2)
    second_moment = torch.eye(2, dtype=DOUBLE)  # E[e^T e] over draws of the samples
    for _ in range(400):
        second_moment = (contraction @ second_moment @ contraction).mean(0)
    size = float(second_moment.trace())
    assert (size < 1e-3) if decays else (size > 1e3), size


def test_online_lms_between_the_bounds_diverges_while_the_batch_rule_converges():
    generator = torch.Generator().manual_seed(14)
    x = gaussian_inputs(1000, generator)
    y = x @ torch.tensor([[1.0], [-0.5]], dtype=DOUBLE)
    C_xx, C_yx = covariance(x), covariance(x, y)
    lr = 0.5 * (2 / float(C_xx.trace()) + delta_stability_bound(C_xx))
    W0 = torch.zeros(1, 1, 2, dtype=DOUBLE)
    fixed_point = least_squares_weights(C_xx, C_yx)
    batch = discrete_trajectory("delta_mean", W0, 400, C_xx, C_yx, lr=lr)[-1]
    online = online_trajectory("delta", W0, x[:400], y[:400], lr=lr)[-1]
    assert float((batch - fixed_point).norm()) < 1e-6
    assert float((online - fixed_point).norm()) > 1e3


def test_steps_to_reach():
    trajectory = torch.tensor([[4.0], [2.0], [1.0], [0.5]], dtype=DOUBLE).unsqueeze(-1)
    assert steps_to_reach(trajectory, torch.zeros(1, 1, dtype=DOUBLE), 0.3) == 2
    assert steps_to_reach(trajectory, torch.zeros(1, 1, dtype=DOUBLE), 0.1) is None


def test_online_arguments_are_checked(data):
    w = torch.zeros(2, 3, dtype=DOUBLE)
    with pytest.raises(
        ValueError, match=r"lr: expected shape \(4,\), one step per sample, got \(3,\)"
    ):
        online_trajectory("oja", w, data["x"][:4], lr=torch.full((3,), 0.1, dtype=DOUBLE))
    with pytest.raises(ValueError, match=r"lr: expected positive finite steps, got lr\[1\] = -0.1"):
        online_trajectory("oja", w, data["x"][:2], lr=torch.tensor([0.1, -0.1], dtype=DOUBLE))
    with pytest.raises(
        ValueError, match=r"y: expected \(steps, ...\) with steps = 4 like x, got \(3, 2\)"
    ):
        online_trajectory("delta", w.unsqueeze(1), data["x"][:4], data["y"][:3], lr=0.1)
    with pytest.raises(ValueError, match="samples: expected x"):
        online_trajectory("oja", w, lr=0.1)
    with pytest.raises(ValueError, match="decay_steps: expected a positive finite number, got 0.0"):
        step_schedule(0.1, 3, decay_steps=0)
    with pytest.raises(TypeError, match="num_steps: expected a non-negative int for a constant lr"):
        learning_times(0.1)
    with pytest.raises(ValueError, match="x: expected samples with an invertible second moment"):
        lms_mean_square_bound(torch.ones(5, 2, dtype=DOUBLE))


# ----------------------------------------------------------------------------- error style

_W = torch.zeros(2, 3, dtype=DOUBLE)  # (batch, n) weights
_W3 = torch.zeros(2, 1, 3, dtype=DOUBLE)  # (batch, m, n) weights
_C = torch.eye(3, dtype=DOUBLE)
_T = torch.tensor([0.0, 1.0], dtype=DOUBLE)
_X = torch.ones(4, 3, dtype=DOUBLE)
_LONG = torch.linspace(1.0, 0.0, 10_000, dtype=DOUBLE)  # long enough to spot an echoed tensor

BAD_INPUTS = {
    "hebb_field w not a tensor": (lambda: hebb_field([0.0, 0.0], _C[0]), TypeError, "w"),
    "hebb_field x wrong shape": (
        lambda: hebb_field(_W, torch.ones(4, dtype=DOUBLE)),
        ValueError,
        "x",
    ),
    "oja_field w integer": (lambda: oja_field(_W.long(), _C[0]), TypeError, "w"),
    "oja_field x large and non-finite": (
        lambda: oja_field(torch.zeros(2, 10_000, dtype=DOUBLE), _LONG / 0),
        ValueError,
        "x",
    ),
    "delta_field W of 2 dims": (lambda: delta_field(_W, _C[0], _C[0]), ValueError, "W"),
    "delta_field y wrong size": (lambda: delta_field(_W3, _C[0], _C[:2, 0]), ValueError, "y"),
    "hebb_mean_field C wrong size": (
        lambda: hebb_mean_field(_W, torch.eye(2, dtype=DOUBLE)),
        ValueError,
        "C",
    ),
    "oja_mean_field C not a tensor": (lambda: oja_mean_field(_W, 1.0), TypeError, "C"),
    "delta_mean_field C_yx wrong shape": (
        lambda: delta_mean_field(_W3, _C, torch.ones(2, 3, dtype=DOUBLE)),
        ValueError,
        "C_yx",
    ),
    "get_classic_rule unknown name": (lambda: get_classic_rule("sanger"), ValueError, "rule"),
    "get_classic_rule not callable": (lambda: get_classic_rule(3), TypeError, "rule"),
    "discrete_update lr a string": (
        lambda: discrete_update("hebb_mean", _W, _C, lr="0.1"),
        TypeError,
        "lr",
    ),
    "discrete_update lr a vector": (
        lambda: discrete_update("hebb_mean", _W, _C, lr=_LONG),
        ValueError,
        "lr",
    ),
    "discrete_trajectory num_steps a float": (
        lambda: discrete_trajectory("hebb_mean", _W, 2.0, _C, lr=0.1),
        TypeError,
        "num_steps",
    ),
    "discrete_trajectory num_steps negative": (
        lambda: discrete_trajectory("hebb_mean", _W, -1, _C, lr=0.1),
        ValueError,
        "num_steps",
    ),
    "step_schedule initial zero": (lambda: step_schedule(0.0, 3), ValueError, "initial"),
    "step_schedule num_steps a bool": (lambda: step_schedule(0.1, True), TypeError, "num_steps"),
    "online_trajectory lr with a bad step": (
        lambda: online_trajectory("oja", _W, _X, lr=torch.tensor([0.1, 0.1, math.nan, 0.1])),
        ValueError,
        "lr",
    ),
    "online_trajectory lr wrong length": (
        lambda: online_trajectory("oja", _W, _X, lr=_LONG),
        ValueError,
        "lr",
    ),
    "online_trajectory no samples": (
        lambda: online_trajectory("oja", _W, lr=0.1),
        ValueError,
        "samples",
    ),
    "online_trajectory x not a tensor": (
        lambda: online_trajectory("oja", _W, [[1.0]], lr=0.1),
        TypeError,
        "x",
    ),
    "learning_times num_steps mismatch": (
        lambda: learning_times(torch.full((3,), 0.1), num_steps=4),
        ValueError,
        "num_steps",
    ),
    "learning_times num_steps missing": (lambda: learning_times(0.1), TypeError, "num_steps"),
    "steps_to_reach tolerance negative": (
        lambda: steps_to_reach(_X.unsqueeze(1), _X[0], -0.5),
        ValueError,
        "tolerance",
    ),
    "integrate_rule t decreasing and long": (
        lambda: integrate_rule("hebb_mean", _W, _LONG, _C),
        ValueError,
        "t",
    ),
    "integrate_rule method not a string": (
        lambda: integrate_rule("hebb_mean", _W, _T, _C, method=4),
        TypeError,
        "method",
    ),
    "integrate_rule fixed grid without step_size": (
        lambda: integrate_rule("hebb_mean", _W, _T, _C, method="euler"),
        ValueError,
        "step_size",
    ),
    "integrate_rule adaptive with step_size": (
        lambda: integrate_rule("hebb_mean", _W, _T, _C, step_size=0.1),
        ValueError,
        "step_size",
    ),
    "hebb_mean_solution t of 2 dims": (
        lambda: hebb_mean_solution(_W, _C, _T[None]),
        ValueError,
        "t",
    ),
    "oja_mean_solution w0 of 3 dims": (lambda: oja_mean_solution(_W3, _C, _T), ValueError, "w0"),
    "delta_mean_solution W0 wrong m": (
        lambda: delta_mean_solution(
            torch.zeros(2, 2, 3, dtype=DOUBLE), _C, torch.ones(1, 3, dtype=DOUBLE), _T
        ),
        ValueError,
        "W0",
    ),
    "covariance y wrong number of samples": (
        lambda: covariance(_X, torch.ones(3, 1, dtype=DOUBLE)),
        ValueError,
        "y",
    ),
    "principal_components C not symmetric": (
        lambda: principal_components(torch.tensor([[1.0, 2.0], [0.0, 1.0]])),
        ValueError,
        "C",
    ),
    "least_squares_weights C_yx wrong columns": (
        lambda: least_squares_weights(_C, torch.ones(2, 2, dtype=DOUBLE)),
        ValueError,
        "C_yx",
    ),
    "delta_stability_bound C_xx negative definite": (
        lambda: delta_stability_bound(-_C),
        ValueError,
        "C_xx",
    ),
    "lms_sample_bound x of 1 dim": (lambda: lms_sample_bound(_LONG), ValueError, "x"),
    "lms_mean_square_bound x singular": (
        lambda: lms_mean_square_bound(torch.ones(5, 2, dtype=DOUBLE)),
        ValueError,
        "x",
    ),
    "integration_errors t_end negative": (
        lambda: integration_errors("hebb_mean", _W, -1.0, [0.1], _C, method="euler", reference=_W),
        ValueError,
        "t_end",
    ),
    "integration_errors adaptive method": (
        lambda: integration_errors("hebb_mean", _W, 1.0, [0.1], _C, method="dopri5", reference=_W),
        ValueError,
        "method",
    ),
    "integration_errors reference not a tensor": (
        lambda: integration_errors("hebb_mean", _W, 1.0, [0.1], _C, method="euler", reference=0.0),
        TypeError,
        "reference",
    ),
    "integration_errors reference wrong shape": (
        lambda: integration_errors(
            "hebb_mean", _W, 1.0, [0.1], _C, method="euler", reference=_LONG
        ),
        ValueError,
        "reference",
    ),
    "convergence_order one step size": (
        lambda: convergence_order([0.1], [1.0]),
        ValueError,
        "step_sizes",
    ),
    "convergence_order errors wrong length": (
        lambda: convergence_order([0.1, 0.05], [1.0]),
        ValueError,
        "errors",
    ),
    "convergence_order a zero error": (
        lambda: convergence_order([0.1, 0.05], [1.0, 0.0]),
        ValueError,
        "errors",
    ),
    "convergence_order a negative step": (
        lambda: convergence_order([0.1, -0.05], [1.0, 0.5]),
        ValueError,
        "step_sizes",
    ),
}


@pytest.mark.parametrize("call, error, argument", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_errors_name_the_argument_and_what_was_expected(call, error, argument):
    """Every message reads ``<argument>: expected X, got Y`` on one short line."""
    with pytest.raises(error) as raised:
        call()
    assert raised.type is error
    message = str(raised.value)
    assert message.startswith(f"{argument}: expected "), message
    assert ", got " in message, message
    assert "\n" not in message and len(message) < 200, message

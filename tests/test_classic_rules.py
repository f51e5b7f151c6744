"""Classic learning rules as ODEs (docs/maths.md, section 2): fields, Euler steps, fixed points, orders."""

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
    least_squares_weights,
    oja_field,
    oja_mean_field,
    oja_mean_solution,
    principal_components,
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
    with pytest.raises(ValueError, match=r"w must have shape \(batch, n\), got \(3,\)"):
        hebb_field(C[0], C[0])
    with pytest.raises(ValueError, match=r"x must have shape \(n,\) or \(batch, n\)"):
        hebb_field(w, torch.ones(4, dtype=DOUBLE))
    with pytest.raises(ValueError, match=r"x must have shape .* batch = 2, n = 3, got \(5, 3\)"):
        oja_field(w, torch.ones(5, 3, dtype=DOUBLE))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        oja_field(w, [1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="w must be a floating point tensor"):
        oja_field(w.long(), C[0])
    with pytest.raises(ValueError, match=r"C must have shape \(n, n\) with n = 3"):
        hebb_mean_field(w, torch.eye(2, dtype=DOUBLE))
    with pytest.raises(ValueError, match=r"W must have shape \(batch, m, n\)"):
        delta_field(w, C[0], C[0])
    with pytest.raises(ValueError, match=r"y must have shape \(m,\) or \(batch, m\)"):
        delta_field(w.unsqueeze(1), C[0], C[:2, 0])
    with pytest.raises(ValueError, match=r"C_yx must have shape \(m, n\) with m = 1, n = 3"):
        delta_mean_field(w.unsqueeze(1), C, torch.ones(2, 3, dtype=DOUBLE))
    with pytest.raises(ValueError, match=r"C_yx must have shape \(m, n\) with n = 3"):
        least_squares_weights(C, torch.ones(2, 2, dtype=DOUBLE))
    with pytest.raises(ValueError, match="C must be symmetric"):
        principal_components(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"y must have shape \(samples, m\) with samples = 4"):
        covariance(torch.ones(4, 2), torch.ones(3, 1))
    with pytest.raises(ValueError, match="unknown classic rule 'sanger'"):
        discrete_update("sanger", w, C, lr=0.1)


def test_non_finite_data_is_refused():
    w, C = torch.zeros(2, 3, dtype=DOUBLE), torch.eye(3, dtype=DOUBLE)
    with pytest.raises(ValueError, match="x contains NaN or infinite values"):
        oja_field(w, torch.tensor([1.0, math.nan, 0.0], dtype=DOUBLE))
    with pytest.raises(ValueError, match="C contains NaN or infinite values"):
        oja_mean_field(w, C * math.inf)
    with pytest.raises(ValueError, match="x contains NaN or infinite values"):
        covariance(torch.full((4, 2), math.nan))
    with pytest.raises(ValueError, match="t contains NaN or infinite values"):
        integrate_rule("oja_mean", w, torch.tensor([0.0, math.inf]), C)


@pytest.mark.parametrize("bad", [0.0, -0.1, math.nan, math.inf])
def test_learning_rate_and_step_size_must_be_positive(bad):
    w, C = torch.zeros(2, 3, dtype=DOUBLE), torch.eye(3, dtype=DOUBLE)
    times = torch.tensor([0.0, 1.0], dtype=DOUBLE)
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        discrete_update("oja_mean", w, C, lr=bad)
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        discrete_trajectory("oja_mean", w, 3, C, lr=bad)
    with pytest.raises(ValueError, match="step_size must be a positive finite number"):
        integrate_rule("oja_mean", w, times, C, method="rk4", step_size=bad)


def test_solver_options_are_checked():
    w, C = torch.zeros(2, 3, dtype=DOUBLE), torch.eye(3, dtype=DOUBLE)
    times = torch.tensor([0.0, 1.0], dtype=DOUBLE)
    with pytest.raises(ValueError, match="step_size is required for the fixed-grid method 'rk4'"):
        integrate_rule("oja_mean", w, times, C, method="rk4")
    with pytest.raises(ValueError, match="step_size applies to fixed-grid methods"):
        integrate_rule("oja_mean", w, times, C, step_size=0.1)
    with pytest.raises(ValueError, match="t must hold at least 2 strictly increasing times"):
        integrate_rule("oja_mean", w, times.flip(0), C)
    with pytest.raises(ValueError, match="num_steps must be a non-negative int"):
        discrete_trajectory("oja_mean", w, -1, C, lr=0.1)
    with pytest.raises(ValueError, match="method must be one of"):
        integration_errors("oja_mean", w, 1.0, [0.1], C, method="dopri5", reference=w)
    with pytest.raises(ValueError, match="C_xx must be positive definite"):
        delta_stability_bound(-C)
    with pytest.raises(ValueError, match="step_sizes and errors must be positive and finite"):
        convergence_order([0.1, 0.05], [1.0, 0.0])
    with pytest.raises(ValueError, match="same length >= 2"):
        convergence_order([0.1], [1.0])

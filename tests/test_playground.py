"""Learning-rule playground: the trajectories it computes, its figures and its widget."""

import io
import math

import pytest
import torch
from matplotlib.figure import Figure

from fwplab.rules import RULES, register_rule, unregister_rule
from fwplab.rules.classic import delta_stability_bound, oja_mean_solution
from fwplab.widgets import playground
from fwplab.widgets.playground import (
    RULE_HORIZONS,
    draw_convergence,
    draw_errors_over_time,
    draw_rule_trajectories,
    PLANE_HORIZON,
    online_rule_trajectories,
    plane_rules,
    rule_playground,
    rule_trajectories,
    sample_key_value_stream,
    sample_problem,
)

ATOL_SAMPLE_MOMENTS = 0.15  # sampled C_xx vs the requested covariance (1000 samples)
EULER_HALVING_RATIO = (1.7, 2.3)  # halving the learning rate halves the discrete rule's error
ATOL_ODE_READOUT = 1e-4  # rk4 at step 0.01, read out by linear interpolation on its grid


@pytest.fixture(scope="module")
def problem():
    return sample_problem()


def test_sample_problem_is_seeded_and_has_the_requested_moments(problem):
    again = sample_problem()
    assert all(torch.equal(a, b) for a, b in zip(problem, again, strict=True))
    assert problem.x.shape == (1000, 2) and problem.y.shape == (1000, 1)
    assert problem.C_xx.shape == (2, 2) and problem.C_yx.shape == (1, 2)
    assert problem.starts.shape == (5, 2)
    angle = math.pi / 6
    axis = torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)
    normal = torch.tensor([-math.sin(angle), math.cos(angle)], dtype=torch.float64)
    requested = 2.0 * torch.outer(axis, axis) + 0.5 * torch.outer(normal, normal)
    torch.testing.assert_close(problem.C_xx, requested, rtol=0, atol=ATOL_SAMPLE_MOMENTS)
    assert not torch.equal(sample_problem(seed=1).x, problem.x)


@pytest.mark.parametrize("rule", sorted(RULE_HORIZONS))
def test_trajectories_have_matching_shapes_and_start_together(rule, problem):
    trajectories = rule_trajectories(problem, rule, lr=0.25, step_size=0.05)
    steps = math.floor(RULE_HORIZONS[rule] / 0.25)
    assert trajectories.discrete.shape == (steps + 1, 5, 2)
    assert trajectories.ode.shape == (201, 5, 2)
    torch.testing.assert_close(trajectories.discrete_times[-1].item(), steps * 0.25)
    torch.testing.assert_close(trajectories.ode_times[-1].item(), RULE_HORIZONS[rule])
    torch.testing.assert_close(trajectories.discrete[0], problem.starts, rtol=0, atol=0)
    torch.testing.assert_close(trajectories.ode[0], problem.starts, rtol=0, atol=0)


def test_ode_trajectory_matches_the_closed_form(problem):
    trajectories = rule_trajectories(problem, "oja", lr=0.1, step_size=0.01)
    exact = oja_mean_solution(problem.starts, problem.C_xx, trajectories.ode_times)
    torch.testing.assert_close(trajectories.ode, exact, rtol=0, atol=ATOL_ODE_READOUT)


def test_discrete_rule_error_is_first_order_in_the_learning_rate(problem):
    errors = []
    for lr in (0.02, 0.01):
        trajectories = rule_trajectories(problem, "oja", lr=lr, step_size=0.05)
        exact = oja_mean_solution(problem.starts, problem.C_xx, trajectories.discrete_times)
        errors.append(float((trajectories.discrete - exact).abs().max()))
    low, high = EULER_HALVING_RATIO
    assert low < errors[0] / errors[1] < high, errors


@pytest.mark.parametrize(("factor", "grows"), [(1.2, True), (0.9, False)])
def test_delta_trajectories_show_the_stability_bound(factor, grows, problem):
    lr = factor * delta_stability_bound(problem.C_xx)
    discrete_distance, ode_distance = rule_trajectories(
        problem, "delta", lr=lr, step_size=0.05
    ).distances()
    assert bool((ode_distance[-1] < ode_distance[0]).all())
    if grows:
        assert float(discrete_distance[-1].min()) > float(discrete_distance[0].max())
    else:
        assert bool((discrete_distance[-1] < discrete_distance[0]).all())


@pytest.mark.parametrize("rule", sorted(RULE_HORIZONS))
def test_draw_rule_trajectories_draws_every_trajectory(rule, problem):
    figure = draw_rule_trajectories(rule_trajectories(problem, rule, lr=0.2, step_size=0.1))
    assert isinstance(figure, Figure)
    plane, distance = figure.axes
    assert len(distance.lines) == 2 * 5
    assert len(plane.lines) >= 2 * 5 + 2  # ODE and discrete per start, two eigenvectors
    assert distance.get_yscale() == "log"
    figure.savefig(io.BytesIO(), format="png")


def test_draw_convergence_labels_the_fitted_orders():
    step_sizes = [0.1, 0.05, 0.025]
    errors = {
        "euler": torch.tensor([h for h in step_sizes]),
        "rk4": torch.tensor([h**4 for h in step_sizes]),
    }
    figure = draw_convergence(step_sizes, errors)
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert labels == ["euler: slope 1.00", "rk4: slope 4.00"]
    figure.savefig(io.BytesIO(), format="png")


def test_rule_playground_redraws_when_a_control_changes(problem, monkeypatch):
    pytest.importorskip("ipywidgets")
    drawn = []

    def record(trajectories):
        drawn.append((trajectories.rule, trajectories.lr))
        return Figure()

    monkeypatch.setattr(playground, "draw_rule_trajectories", record)
    widget = rule_playground(problem)
    rule, lr, step_size = widget.children[0].children
    assert drawn == [("oja", 0.1)]
    rule.value = "delta"
    lr.value = 0.5
    assert drawn[-2:] == [("delta", 0.1), ("delta", 0.5)]
    assert not (lr.continuous_update or step_size.continuous_update)


def test_bad_arguments_are_refused(problem):
    with pytest.raises(ValueError, match="rule: expected one of"):
        rule_trajectories(problem, "sanger", lr=0.1, step_size=0.1)
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        rule_trajectories(problem, "oja", lr=0.0, step_size=0.1)
    with pytest.raises(ValueError, match="step_size: expected a positive finite number"):
        rule_trajectories(problem, "oja", lr=0.1, step_size=-0.1)
    with pytest.raises(ValueError, match="num_points must be an int >= 2"):
        rule_trajectories(problem, "oja", lr=0.1, step_size=0.1, num_points=1)


@pytest.mark.parametrize("rule", sorted(RULE_HORIZONS))
def test_online_trajectories_start_together_on_summed_times(rule, problem):
    trajectories = online_rule_trajectories(problem, rule, lr=0.05, num_steps=40, decay_steps=10)
    assert trajectories.discrete.shape == trajectories.ode.shape == (41, 5, 2)
    steps = 0.05 / (1 + torch.arange(40, dtype=torch.float64) / 10)
    torch.testing.assert_close(trajectories.ode_times[-1], steps.sum())
    torch.testing.assert_close(trajectories.discrete[0], problem.starts, rtol=0, atol=0)
    again = online_rule_trajectories(problem, rule, lr=0.05, num_steps=40, decay_steps=10)
    assert torch.equal(again.discrete, trajectories.discrete)
    other = online_rule_trajectories(problem, rule, lr=0.05, num_steps=40, decay_steps=10, seed=1)
    assert not torch.equal(other.discrete, trajectories.discrete)


def test_online_oja_stays_near_its_ode_and_is_drawn(problem):
    trajectories = online_rule_trajectories(problem, "oja", lr=0.005, num_steps=400)
    assert float((trajectories.discrete - trajectories.ode).norm(dim=-1).max()) < 0.2
    figure = draw_rule_trajectories(trajectories, online=True)
    plane, distance = figure.axes
    assert len(distance.lines) == 2 * 5
    assert "online" in [text.get_text() for text in plane.get_legend().get_texts()]
    figure.savefig(io.BytesIO(), format="png")


@pytest.mark.parametrize("keys", ["softmax", "unit"])
def test_key_value_stream(keys):
    stream = sample_key_value_stream(500, key_size=6, value_size=3, keys=keys, seed=2)
    assert stream.keys.shape == (500, 6) and stream.values.shape == (500, 3)
    assert stream.rates.shape == (500,) and bool(((stream.rates > 0) & (stream.rates < 1)).all())
    norms = stream.keys.norm(dim=-1)
    if keys == "softmax":
        torch.testing.assert_close(stream.keys.sum(-1), torch.ones(500, dtype=torch.float64))
        assert bool((norms <= 1).all())
    else:
        torch.testing.assert_close(norms, torch.ones(500, dtype=torch.float64))
    assert torch.equal(sample_key_value_stream(500, 6, 3, keys, seed=2).keys, stream.keys)
    with pytest.raises(ValueError, match="keys must be 'softmax' or 'unit'"):
        sample_key_value_stream(5, keys="relu")


def test_draw_errors_over_time():
    times = torch.linspace(0, 1, 5)
    figure = draw_errors_over_time({"a": (times, times.exp()), "b": (times, 1 + times)}, "error")
    assert len(figure.axes[0].lines) == 2 and figure.axes[0].get_yscale() == "log"
    figure.savefig(io.BytesIO(), format="png")


DECAY = 0.5  # lambda of the decaying Hebb rule registered by the tests below


def _decaying_hebb(W, key, value, rate):
    write = rate.unsqueeze(-1) * value.unsqueeze(-1) * key.unsqueeze(-2)
    return write if W is None else write - DECAY * W


def _square_only(W, key, value, rate):  # needs d x d fast weights: W @ W
    write = rate.unsqueeze(-1) * value.unsqueeze(-1) * key.unsqueeze(-2)
    return write if W is None else write - W @ W


@pytest.fixture
def registered_rules():
    register_rule("test_decaying_hebb", _decaying_hebb, label="test: decaying Hebb")
    register_rule("test_square_only", _square_only)
    try:
        yield
    finally:
        unregister_rule("test_decaying_hebb")
        unregister_rule("test_square_only")


def test_registered_rules_that_fit_the_plane_are_offered(problem, registered_rules):
    assert "test_decaying_hebb" in plane_rules() and "test_square_only" not in plane_rules()
    assert not set(plane_rules()) & {name for name, rule in RULES.items() if rule.builtin}
    widget = rule_playground(problem)
    rule = widget.children[0].children[0]
    assert ("registered: test: decaying Hebb", "test_decaying_hebb") in rule.options
    assert all(value != "test_square_only" for _, value in rule.options)
    rule.value = "test_decaying_hebb"  # redraws without error


def test_registered_rule_runs_the_averaged_field(problem, registered_rules):
    # dW/dt = mean_i y_i x_i^T - lambda W = C_yx - lambda W: W(t) = W* + (W0 - W*) e^(-lambda t)
    trajectories = rule_trajectories(problem, "test_decaying_hebb", lr=0.1, step_size=0.05)
    fixed_point = problem.C_yx / DECAY
    closed_form = fixed_point + (problem.starts - fixed_point) * math.exp(-DECAY * PLANE_HORIZON)
    torch.testing.assert_close(trajectories.ode[-1], closed_form, rtol=0, atol=1e-6)
    # Euler: W_k = W* + (W0 - W*) (1 - lr lambda)^k
    steps = trajectories.discrete.shape[0] - 1
    iterate = fixed_point + (problem.starts - fixed_point) * (1 - 0.1 * DECAY) ** steps
    torch.testing.assert_close(trajectories.discrete[-1], iterate, rtol=0, atol=1e-9)
    assert trajectories.ode_times[-1].item() == PLANE_HORIZON
    assert isinstance(draw_rule_trajectories(trajectories), Figure)


def test_unregistered_rule_leaves_the_menu(problem):
    register_rule("test_passing_rule", _decaying_hebb)
    unregister_rule("test_passing_rule")
    assert "test_passing_rule" not in plane_rules()
    with pytest.raises(ValueError, match="rule: expected one of"):
        rule_trajectories(problem, "test_passing_rule", lr=0.1, step_size=0.1)

"""The latent flow solver reproduces torchdiffeq's odeint (values, evaluations, gradients)."""

import importlib
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchdiffeq
from torch import nn

from fwplab.rl.flow import METHODS, MLPField, flow, mlp_field
from test_train import one_thread  # noqa: F401 (autouse fixture)

flow_module = importlib.import_module("fwplab.rl.flow")  # the module, not the function
GRIDS = ([0.0, 1.0, 2.0, 5.0, 7.0], [0.0, 0.5, 2.0], [0.0, 3.0])


class Counted(nn.Module):
    """An ODE MLP (Lin-tanh-Lin-tanh-Lin) that counts its evaluations."""

    def __init__(self, latent: int, hidden: int, scale: float, seed: int,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, hidden),
                                 nn.Tanh(), nn.Linear(hidden, latent)).to(dtype)
        with torch.no_grad():
            for parameter in self.net.parameters():
                parameter.mul_(scale)
        self.calls = 0

    def forward(self, z):
        self.calls += 1
        return self.net(z)

    def linears(self):
        return [self.net[0], self.net[2], self.net[4]]


def reference(field: Counted, z, grid, **options):
    field.calls = 0
    solution = torchdiffeq.odeint(lambda t, y: field(y), z, grid, **options)
    return solution, field.calls


def ours(field: Counted, z, grid, **options):
    field.calls = 0
    solution = flow(field, z, grid, **options)
    return solution, field.calls




@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 3.0])
@pytest.mark.parametrize("grid", GRIDS)
def test_dopri5_is_torchdiffeq_bit_for_bit(dtype, scale, grid):
    field = Counted(16, 24, scale, seed=len(grid) + int(scale), dtype=dtype)
    z = torch.randn(48, 16, dtype=dtype)
    times = torch.tensor(grid)  # float32 times, as the world models pass them
    with torch.no_grad():
        expected, expected_calls = reference(field, z, times, method="dopri5", rtol=1e-5,
                                             atol=1e-6)
        got, calls = ours(field, z, times, rtol=1e-5, atol=1e-6)
        written = flow(mlp_field(field.linears()), z, times, rtol=1e-5, atol=1e-6)
    assert calls == expected_calls
    assert torch.equal(got, expected)  # same steps, same rounding: 0 difference
    assert torch.equal(written, expected)  # the MLPField's buffered evaluations too
    with_grad, _ = ours(field, z.clone().requires_grad_(), times, rtol=1e-5, atol=1e-6)
    assert torch.equal(with_grad.detach(), expected)  # the autograd path: same numbers


def test_dopri5_batch_of_one_and_known_summation_order_fallback(monkeypatch):
    field = Counted(8, 8, 3.0, seed=1)
    z = torch.randn(1, 8)
    grid = torch.tensor([0.0, 0.5, 2.0])
    with torch.no_grad():
        expected, expected_calls = reference(field, z, grid, method="dopri5", rtol=1e-5,
                                             atol=1e-6)
        got, calls = ours(field, z, grid)
        assert calls == expected_calls and torch.equal(got, expected)
        # where torch.sum's order is none of the known ones the solver uses torch.sum itself
        monkeypatch.setattr(flow_module, "_sum_tree", lambda *arguments: None)
        assert torch.equal(flow(field, z, grid), expected)


def test_dopri5_gradients_are_torchdiffeq_gradients():
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
        field = Counted(6, 10, 2.0, seed=3, dtype=dtype)
        z = torch.randn(5, 6, dtype=dtype, requires_grad=True)
        grid = torch.tensor([0.0, 0.5, 2.0, 3.0])
        weights = torch.randn(4, 5, 6, dtype=dtype)
        inputs = [z, *field.parameters()]
        expected = torch.autograd.grad(
            (reference(field, z, grid, method="dopri5", rtol=1e-5, atol=1e-6)[0] * weights).sum(),
            inputs)
        for func in (field, mlp_field(field.linears())):
            got = torch.autograd.grad((flow(func, z, grid) * weights).sum(), inputs)
            for a, b in zip(got, expected, strict=True):
                assert (a - b).abs().max() <= tolerance * b.abs().max()


def test_gradcheck_every_method():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    z = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    weight = net[0].weight.detach().clone().requires_grad_()
    grid = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)

    def field(y, w):
        return net[2](torch.tanh(nn.functional.linear(y, w, net[0].bias)))

    for method, step in (("dopri5", None), ("euler", 0.5), ("midpoint", 0.3), ("rk4", 0.3)):
        options = dict(rtol=1e-7, atol=1e-8) if step is None else dict(step_size=step)
        assert torch.autograd.gradcheck(
            lambda y, w, m=method, o=options: flow(lambda v: field(v, w), y, grid, method=m, **o),
            (z, weight))


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
@pytest.mark.parametrize("grid_dtype", [torch.float32, torch.float64])
def test_fixed_grid_methods_are_torchdiffeq_bit_for_bit(method, grid_dtype):
    field = Counted(8, 16, 1.0, seed=5)
    z = torch.randn(7, 8)
    for grid, step in (([0.0, 1.0, 2.0, 5.0, 7.0], 0.5), ([0.0, 1.0, 2.0, 5.0, 7.0], 0.3),
                       ([0.0, 0.5, 2.0], 1.0),  # 0.3 and 1.0: grid times between steps
                       ([0.0, 0.5, 2.0, 3.0], None)):  # None: one step per grid interval
        times = torch.tensor(grid, dtype=grid_dtype)
        with torch.no_grad():
            expected, expected_calls = reference(
                field, z, times, method=method, options=None if step is None else
                {"step_size": step})
            got, calls = ours(field, z, times, method=method, step_size=step)
            written = flow(mlp_field(field.linears()), z, times, method=method, step_size=step)
        steps = len(grid) - 1 if step is None else math.ceil(grid[-1] / step)
        assert calls == expected_calls == METHODS[method].evaluations_per_step * steps
        assert torch.equal(got, expected) and torch.equal(written, expected)
        with_grad, _ = ours(field, z.clone().requires_grad_(), times, method=method,
                            step_size=step)
        assert torch.equal(with_grad.detach(), expected)


def test_mlp_field_matches_the_module_and_leaves_inputs_alone():
    field = Counted(8, 12, 1.0, seed=2)
    function = mlp_field(field.linears())
    assert isinstance(function, MLPField)
    z = torch.randn(5, 8)
    kept = z.clone()
    out = torch.empty(5, 8)
    assert torch.equal(function.write(z, out), field.net(z))
    assert torch.equal(function(z), field.net(z))
    with torch.no_grad():
        flow(function, z, torch.tensor([0.0, 1.0]))
        flow(function, z, torch.tensor([0.0, 1.0]), method="rk4", step_size=0.25)
    assert torch.equal(z, kept)
    with pytest.raises(ValueError, match="nn.Linear"):
        mlp_field([])
    with pytest.raises(ValueError, match="chain"):
        mlp_field([nn.Linear(3, 4), nn.Linear(5, 3)])


def test_single_time_grid_returns_the_input():
    z = torch.randn(3, 4)
    for method, step in (("dopri5", None), ("rk4", 0.5)):
        out = flow(torch.tanh, z, torch.zeros(1), method=method, step_size=step)
        assert out.shape == (1, 3, 4) and torch.equal(out[0], z)


def test_bad_arguments_raise_one_line_value_errors():
    z = torch.randn(2, 3)
    cases = [
        (dict(grid=torch.tensor([0.0, 2.0, 1.0])), "ascending"),
        (dict(grid=torch.tensor([0.0, 1.0, 1.0])), "ascending"),
        (dict(grid=torch.tensor([0.5, 1.0])), r"grid\[0\] must be 0"),
        (dict(grid=torch.tensor([[0.0, 1.0]])), "1-D"),
        (dict(method="rk45"), "method must be one of"),
        (dict(method="euler", step_size=0.0), "needs a finite step_size"),
        (dict(step_size=0.1), "fixed-grid methods"),
        (dict(rtol=0.0, atol=0.0), "not both 0"),
    ]
    for arguments, message in cases:
        arguments = {"grid": torch.tensor([0.0, 1.0]), **arguments}
        with pytest.raises(ValueError, match=message) as raised:
            flow(torch.tanh, z, **arguments)
        assert "\n" not in str(raised.value)


def test_divergence_raises_floating_point_errors_naming_step_time_and_fix():
    z = torch.ones(2, 3)
    grid = torch.tensor([0.0, 2.0])  # dz/dt = z^2 from 1 blows up at t = 1
    underflow = r"step size \S+ underflowed at t=1 .*fixed-grid"
    with pytest.raises(FloatingPointError, match=underflow) as raised:
        flow(lambda y: y * y, z, grid)
    assert "\n" not in str(raised.value)
    with pytest.raises(FloatingPointError, match=r"non-finite state .* at t=20"):
        flow(lambda y: y * y, z, torch.tensor([0.0, 1.0, 20.0]), method="euler", step_size=0.5)
    with pytest.raises(FloatingPointError, match="non-finite"):
        flow(torch.tanh, torch.full((2, 3), float("nan")), grid)


def test_benchmark_runs_at_tiny_shapes(tmp_path):
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "rl_flow_speed.py"
    result = subprocess.run([sys.executable, str(script), "--smoke"], capture_output=True,
                            text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "GFLOP/s" in result.stdout and "flow dopri5" in result.stdout

"""The Triton recurrence, run by Triton's interpreter on the CPU (``TRITON_INTERPRET=1``).

Against the pure-PyTorch fast path (float64: states and gradients to round-off), against
torchdiffeq through the models (float32 logits within 1e-5, gradients within 1e-4
relative), float64 ``gradcheck``, and compiled for an H100/H200 (sm_90) without a GPU.
Sizes are tiny: the interpreter runs each operation through numpy, one program at a time.
"""

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (pip install 'fwplab[gpu]')")

import fwplab  # noqa: E402
from fwplab import solvers  # noqa: E402
from fwplab.kernels import triton_recurrence  # noqa: E402
from parity import TINY, assert_same_logits_and_gradients, series  # noqa: E402

#: Triton and fast path in float64: states and gradients.
FLOAT64_ATOL = 1e-11
#: The recurrences of the three rules: correction and activations (fixed, target, rate).
RULES = {"delta": ("linear", ("softmax", "tanh", "sigmoid")),
         "post_tanh": ("tanh", ("softmax", "identity", "sigmoid")),
         "oja": ("softmax", ("tanh", "identity", "sigmoid"))}


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    """Triton's interpreter for every test here, and for these tests only."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _inputs(activations, flat=2, d_in=3, d_out=2, n_steps=3, method="rk4", seed=0):
    """Random float64 raw controls, ``M0`` and irregular steps (non-power-of-two sizes)."""
    generator = torch.Generator().manual_seed(seed)
    points = n_steps * solvers.stage_layout(method).per_step + 1

    def draw(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    fixed, target, rate = draw(points, flat, d_in), draw(points, flat, d_out), draw(points, flat, 1)
    M0 = 0.3 * draw(flat, d_out, d_in)
    steps = 0.2 + 0.5 * torch.rand(n_steps, generator=generator, dtype=torch.float64)
    return [t.requires_grad_() for t in (fixed, target, rate, M0)], steps


def _spec(nonlinearity, method, keep, every):
    return solvers.RecurrenceSpec(nonlinearity, solvers.TABLEAUS[method],
                                  solvers.stage_layout(method), keep, every)


def _states_and_grads(run, tensors, weights):
    for tensor in tensors:
        tensor.grad = None
    states = run(*tensors)
    (states * weights).sum().backward()
    return states.detach(), [t.grad.clone() for t in tensors]


def _fast(spec, steps, activations):
    def run(fixed, target, rate, M0):
        controls = (solvers.activate(a, x) for a, x in zip(activations, (fixed, target, rate),
                                                            strict=True))
        return solvers._FastRecurrence.apply(*controls, M0, steps, spec._replace(
            checkpoint_every=None))
    return run


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("method, every", [("euler", 1), ("midpoint", 2), ("heun2", 2),
                                           ("heun3", 1), ("rk4", 2)])
def test_states_and_gradients_equal_the_fast_path(rule, method, every):
    """Each rule and method; kept states at 0, 1 and 3 (variable lengths); segments of
    ``every`` steps (the last one partial for 2)."""
    nonlinearity, activations = RULES[rule]
    tensors, steps = _inputs(activations, method=method)
    spec = _spec(nonlinearity, method, (0, 1, 3), every)
    weights = torch.randn(3, 2, 2, 3, generator=torch.Generator().manual_seed(1),
                          dtype=torch.float64)
    expected, expected_grads = _states_and_grads(_fast(spec, steps, activations), tensors,
                                                 weights)
    states, grads = _states_and_grads(
        lambda *t: triton_recurrence.recurrence(*t, steps, spec, activations), tensors, weights)
    torch.testing.assert_close(states, expected, atol=FLOAT64_ATOL, rtol=0)
    for grad, want, name in zip(grads, expected_grads, ("fixed", "target", "rate", "M0"),
                                strict=True):
        torch.testing.assert_close(grad, want, atol=FLOAT64_ATOL, rtol=0, msg=name)


@pytest.mark.parametrize("every", [1, 16])
def test_one_segment_per_step_or_one_for_all_steps_give_the_same_gradients(every):
    nonlinearity, activations = RULES["delta"]
    tensors, steps = _inputs(activations, n_steps=3)
    weights = torch.randn(2, 2, 2, 3, generator=torch.Generator().manual_seed(2),
                          dtype=torch.float64)
    spec = _spec(nonlinearity, "rk4", (2, 3), every)
    expected = _states_and_grads(_fast(spec, steps, activations), tensors, weights)
    got = _states_and_grads(
        lambda *t: triton_recurrence.recurrence(*t, steps, spec, activations), tensors, weights)
    for a, b in zip((got[0], *got[1]), (expected[0], *expected[1]), strict=True):
        torch.testing.assert_close(a, b, atol=FLOAT64_ATOL, rtol=0)


def test_float64_gradcheck_with_batch_one_and_column_slices():
    """One recurrence; keys and rates as columns of one array (read in place)."""
    nonlinearity, activations = RULES["delta"]
    generator = torch.Generator().manual_seed(3)
    points = 2 * 3 + 1
    joint = torch.randn(points, 1, 4, generator=generator, dtype=torch.float64,
                        requires_grad=True)
    target = torch.randn(points, 1, 3, generator=generator, dtype=torch.float64,
                         requires_grad=True)
    M0 = (0.3 * torch.randn(1, 3, 3, generator=generator, dtype=torch.float64)).requires_grad_()
    steps = torch.tensor([0.4, 0.7], dtype=torch.float64)
    spec = _spec(nonlinearity, "rk4", (1, 2), 1)
    assert torch.autograd.gradcheck(
        lambda j, c, m: triton_recurrence.recurrence(j[..., :3], c, j[..., 3:], m, steps, spec,
                                                     activations),
        (joint, target, M0), fast_mode=True)


@pytest.mark.parametrize("name, method, options", [
    ("delta_cde", "rk4", {}), ("delta_ode", "midpoint", {"post_tanh": True}),
    ("oja_cde", "heun3", {})])
def test_models_on_the_triton_solver_equal_torchdiffeq(name, method, options):
    """Float32 logits within 1e-5 and gradients within 1e-4 relative, variable lengths."""
    torch.manual_seed(0)
    reference = fwplab.build_model(name, 4, 3, **TINY, **options, method=method,
                                   solver="reference")
    model = fwplab.build_model(name, 4, 3, **TINY, **options, method=method, solver="triton",
                               checkpoint_every=2)
    assert model.selected_solver() == "triton"
    assert_same_logits_and_gradients(model, reference, series(batch=2, length=4),
                                      lengths=torch.tensor([4, 3]), what=name)


def test_auto_picks_triton_on_cuda_only_and_where_it_runs(monkeypatch):
    options = solvers.SolverOptions()
    cuda = torch.device("cuda")
    assert solvers.select_solver("delta", options, cuda, torch.float32) == "triton"
    assert solvers.select_solver("oja", options, cuda, torch.float64) == "triton"
    assert solvers.select_solver("delta", options, cuda, torch.bfloat16) == "fast"
    assert solvers.select_solver("hebb", options, cuda, torch.float32) == "fast"
    assert solvers.select_solver("delta", solvers.SolverOptions(method="dopri5"), cuda,
                                 torch.float32) == "reference"
    # The CPU never: the interpreter (set here) is for tests.
    assert solvers.select_solver("delta", options, "cpu", torch.float32) != "triton"
    monkeypatch.setenv("FWPLAB_TRITON", "0")
    assert solvers.select_solver("delta", options, cuda, torch.float32) == "fast"


def test_refuses_what_it_cannot_run_in_one_line(monkeypatch):
    nonlinearity, activations = RULES["delta"]
    tensors, steps = _inputs(activations)
    spec = _spec(nonlinearity, "rk4", (3,), 2)
    with pytest.raises(ValueError, match="one dtype .* on one device"):
        triton_recurrence.recurrence(*tensors[:3], tensors[3].float(), steps, spec, activations)
    with pytest.raises(ValueError, match="corrections .* got 'cubic'"):
        triton_recurrence.recurrence(*tensors, steps, spec._replace(nonlinearity="cubic"),
                                     activations)
    shared = spec._replace(layout=solvers.StageLayout(2, (0, 1, 1, 2)))
    assert not triton_recurrence.supports_spec(shared)
    with pytest.raises(ValueError, match="method: .* distinct stage points"):
        triton_recurrence.recurrence(*tensors, steps, shared, activations)
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="runs CUDA tensors .* got cpu"):
        triton_recurrence.recurrence(*tensors, steps, spec, activations)
    with pytest.raises(ValueError, match="runs CUDA tensors"):
        fwplab.build_model("delta_cde", 4, 3, **TINY, solver="triton")(series())


def test_the_kernels_compile_for_an_h100_without_a_gpu():
    """The compiled (not interpreted) path: Oja's softmax branches in float64 for sm_90."""
    sizes = triton_recurrence.compile_for(90, d=5, method="midpoint", nonlinearity="softmax",
                                          activations=RULES["oja"][1], dtype=torch.float64)
    assert set(sizes) == {"_forward_kernel", "_backward_kernel"}
    assert all(size > 1000 for size in sizes.values())

"""The pure-PyTorch fixed-grid solvers ("stepwise", "fast", checkpointed) against torchdiffeq."""

import pytest
import torch
import torchdiffeq

import fwplab
from parity import GRAD_RTOL, LOGITS_ATOL, TINY, logits_and_grads
from fwplab import solvers
from fwplab.models import MODELS

STATES_ATOL_FLOAT64 = 1e-12  # checkpointed vs stored states, float64
STAGE_TIME_ATOL = 1e-12
FWP_MODELS = [name for name, spec in MODELS.items() if isinstance(spec, tuple)]
FAST_FORMS = [("stepwise", None), ("fast", None), ("fast", 2), ("fast", 3)]
#: Each CDE model in the layout it does not default to (docs/maths.md, section 4.4).
OTHER_LAYOUT = {"delta_cde": "keys_from_path", "hebb_cde": "keys_from_derivative",
                "oja_cde": "keys_from_derivative"}
NONLINEARITIES = ("linear", "tanh", "softmax")


def _series(batch=3, length=9, channels=4, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(batch, length, channels)
    x[..., 0] = torch.arange(length, dtype=x.dtype)
    return x



def assert_fast_forms_equal_reference(name, x, lengths=None, times=None, forms=FAST_FORMS,
                                      **options):
    """Every fast form: logits within LOGITS_ATOL, parameter gradients within GRAD_RTOL."""
    torch.manual_seed(1)
    reference = fwplab.build_model(name, 4, 3, **TINY, **options, solver="reference")
    ref_logits, ref_grads = logits_and_grads(reference, x, lengths, times)
    for solver, checkpoint_every in forms:
        model = fwplab.build_model(name, 4, 3, **TINY, **options, solver=solver,
                                   checkpoint_every=checkpoint_every)
        model.load_state_dict(reference.state_dict())
        assert model.selected_solver() == solver
        logits, grads = logits_and_grads(model, x, lengths, times)
        torch.testing.assert_close(logits, ref_logits, atol=LOGITS_ATOL, rtol=0)
        assert grads.keys() == ref_grads.keys()
        for key, grad in ref_grads.items():
            scale = grad.abs().max().clamp(min=1e-6)
            assert (grads[key] - grad).abs().max() / scale < GRAD_RTOL, (solver, key)


@pytest.mark.parametrize("options", [{}, {"post_tanh": True}, {"v_layernorm": True},
                                     {"layout": "other"}],
                         ids=["plain", "post_tanh", "v_layernorm", "other_layout"])
@pytest.mark.parametrize("name", FWP_MODELS)
def test_fast_forms_equal_torchdiffeq(name, options):
    if options.get("post_tanh") and not name.startswith("delta"):
        pytest.skip("post_tanh is a delta-rule option")
    if (options.get("v_layernorm") or options.get("layout")) and name.endswith("ode"):
        pytest.skip("v_layernorm and layout are CDE options")
    if options.get("layout"):
        options = {"layout": OTHER_LAYOUT[name]}
    assert_fast_forms_equal_reference(name, _series(), lengths=torch.tensor([9, 4, 6]),
                                      **options)


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun2", "heun3", "rk4"])
def test_fast_forms_equal_torchdiffeq_for_every_method_on_irregular_times(method):
    times = torch.tensor([0.0, 0.5, 1.0, 2.0, 2.2, 3.0, 4.5, 5.0, 6.0])
    for name, options in (("delta_cde", {}), ("oja_ode", {}), ("delta_ode", {"post_tanh": True}),
                          ("hebb_cde", {}), ("oja_cde", {})):
        assert_fast_forms_equal_reference(name, _series(), lengths=torch.tensor([9, 6, 8]),
                                          times=times, method=method, **options)


@pytest.mark.parametrize("name", ["delta_cde", "oja_cde", "hebb_cde", "hebb_ode"])
def test_fast_forms_handle_batch_size_one(name):
    assert_fast_forms_equal_reference(name, _series(batch=1, length=6))


def _pair(name, solver, checkpoint_every=None):
    torch.manual_seed(1)
    reference = fwplab.build_model(name, 4, 3, **TINY, solver="reference")
    model = fwplab.build_model(name, 4, 3, **TINY, solver=solver,
                               checkpoint_every=checkpoint_every)
    model.load_state_dict(reference.state_dict())
    return model, reference


@pytest.mark.parametrize("name", ["delta_cde", "oja_ode", "hebb_cde", "oja_cde"])
def test_trajectory_of_fast_path_equals_reference(name):
    model, reference = _pair(name, "fast", 2)
    x = _series(length=6)
    with torch.no_grad():
        torch.testing.assert_close(model.fast_weight_trajectory(x),
                                   reference.fast_weight_trajectory(x), atol=LOGITS_ATOL, rtol=0)


@pytest.mark.parametrize("method", list(solvers.TABLEAUS))
def test_stage_points_are_the_times_torchdiffeq_evaluates(method):
    grid = torch.tensor([0.0, 0.3, 1.0, 1.5, 3.0], dtype=torch.float64)
    evaluated = []

    def field(t, y):
        evaluated.append(float(t))
        return torch.zeros_like(y)

    torchdiffeq.odeint(field, torch.zeros(1, dtype=torch.float64), grid, method=method,
                       options={"grid_constructor": solvers.grid_constructor(grid)})
    layout = solvers.stage_layout(method)
    points = solvers.stage_points(grid, method)
    assert points.shape == (4 * layout.per_step + 1,)
    stages = len(layout.offsets)
    expected = torch.tensor(evaluated[-4 * stages:], dtype=torch.float64).reshape(4, stages)
    ours = points[torch.arange(4).unsqueeze(-1) * layout.per_step + torch.tensor(layout.offsets)]
    torch.testing.assert_close(ours, expected, atol=STAGE_TIME_ATOL, rtol=0)


def _recurrence_inputs(nonlinearity, method, flat=3, d=3, n_steps=5, seed=0):
    """Random float64 activated controls for a rank-one recurrence."""
    torch.manual_seed(seed)
    layout = solvers.stage_layout(method)
    points = n_steps * layout.per_step + 1
    fixed = torch.rand(points, flat, d, dtype=torch.float64)
    fixed = fixed / fixed.sum(-1, keepdim=True)  # like softmax keys
    target = torch.randn(points, flat, d, dtype=torch.float64)
    rate = torch.rand(points, flat, 1, dtype=torch.float64)
    M0 = 0.3 * torch.randn(flat, d, d, dtype=torch.float64)
    steps = 0.2 + 0.5 * torch.rand(n_steps, dtype=torch.float64)
    return (*(t.requires_grad_() for t in (fixed, target, rate, M0)), steps)


def _spec(nonlinearity, method, keep, checkpoint_every):
    return solvers.RecurrenceSpec(nonlinearity, solvers.TABLEAUS[method],
                                  solvers.stage_layout(method), keep, checkpoint_every)


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("method, checkpoint_every", [("rk4", None), ("rk4", 2), ("heun3", 1),
                                                      ("midpoint", None), ("euler", 3)])
def test_hand_written_backward_passes_float64_gradcheck(nonlinearity, method, checkpoint_every):
    *tensors, steps = _recurrence_inputs(nonlinearity, method)
    spec = _spec(nonlinearity, method, (0, 2, 5), checkpoint_every)
    assert torch.autograd.gradcheck(
        lambda *t: solvers._FastRecurrence.apply(*t, steps, spec), tuple(tensors), fast_mode=True)


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_fast_recurrence_equals_stepwise_recurrence(nonlinearity):
    *tensors, steps = _recurrence_inputs(nonlinearity, "rk4", n_steps=9)
    keep = tuple(range(10))
    stepwise = solvers._stepwise_recurrence(*tensors, steps, nonlinearity, solvers.TABLEAUS["rk4"],
                                            solvers.stage_layout("rk4"), keep)
    for every in (None, 4):
        fast = solvers._FastRecurrence.apply(*tensors, steps, _spec(nonlinearity, "rk4", keep, every))
        torch.testing.assert_close(fast, stepwise, atol=STATES_ATOL_FLOAT64, rtol=0)


def _graph_size(tensor):
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return len(seen)


@pytest.mark.parametrize("name", ["hebb_cde", "delta_cde", "oja_ode"])
def test_fast_path_graph_does_not_grow_with_the_number_of_steps(name):
    """Hebb has no time loop; delta and Oja are one autograd node for the whole recurrence."""
    model = fwplab.build_model(name, 4, 3, **TINY, solver="fast")
    sizes = [_graph_size(model(_series(length=length))) for length in (5, 40)]
    assert sizes[0] == sizes[1]


def _saved_bytes(model, x):
    """Bytes autograd keeps between forward and backward (every saved tensor, once)."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x).sum()
    return sum(storages.values())


def test_checkpointing_bounds_the_memory_kept_for_backward():
    torch.manual_seed(5)
    x = _series(batch=8, length=65)
    kwargs = dict(hidden_channels=64, num_heads=2, ff_channels=16)
    full = fwplab.build_model("delta_cde", 4, 3, **kwargs, solver="fast")
    bounded = fwplab.build_model("delta_cde", 4, 3, **kwargs, solver="fast", checkpoint_every=16)
    states = 65 * 8 * 2 * 32 * 32 * 4  # every fast weight, float32
    assert _saved_bytes(full, x) - _saved_bytes(bounded, x) > 0.8 * states


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("checkpoint_every", [None, 4])
@pytest.mark.parametrize("name", ["delta_cde", "oja_ode", "hebb_cde"])
def test_fast_path_on_cuda_matches_cpu(name, checkpoint_every):
    model, _ = _pair(name, "fast", checkpoint_every)
    x = _series()
    cpu = logits_and_grads(model, x)
    cuda = logits_and_grads(model.cuda(), x.cuda())
    torch.testing.assert_close(cuda[0].cpu(), cpu[0], atol=LOGITS_ATOL, rtol=0)
    for key, grad in cpu[1].items():
        scale = grad.abs().max().clamp(min=1e-6)
        assert (cuda[1][key].cpu() - grad).abs().max() / scale < GRAD_RTOL, key


@pytest.mark.parametrize(
    "hparams, message",
    [
        ({"checkpoint_every": 0}, "checkpoint_every: expected a positive integer or None, got 0"),
        ({"checkpoint_every": 2.5}, "checkpoint_every: expected a positive integer"),
        ({"checkpoint_every": 4, "solver": "reference"}, "checkpoint_every applies to solver"),
        ({"solver": "fast", "method": "dopri5"}, "solver='fast' needs a fixed-grid method"),
        ({"solver": "kernel", "method": "dopri5"}, "solver='kernel' needs a fixed-grid method"),
        ({"solver": "compiled"}, "solver: expected one of"),
    ],
)
def test_bad_solver_options_raise_clear_errors(hparams, message):
    with pytest.raises(ValueError, match=message):
        fwplab.build_model("delta_cde", 4, 3, **hparams)


def test_solve_fixed_grid_rejects_bad_arguments():
    controls = solvers.StageControls(torch.zeros(7, 1, 1, 2), torch.zeros(7, 1, 1, 2),
                                     torch.zeros(7, 1, 1, 1))
    W0, steps = torch.zeros(1, 1, 2, 2), torch.ones(2)
    with pytest.raises(ValueError, match="rule: expected one of .*, got 'hopfield'"):
        solvers.solve_fixed_grid("hopfield", controls, W0, steps)
    with pytest.raises(ValueError, match="backend: expected one of"):
        solvers.solve_fixed_grid("delta", controls, W0, steps, backend="cuda")
    with pytest.raises(ValueError, match="controls: expected 7 stage points for 2 rk4 steps, got 5"):
        solvers.solve_fixed_grid("delta", solvers.StageControls(*(c[:5] for c in controls)), W0,
                                 steps)
    with pytest.raises(ValueError, match="method: expected a fixed-grid method"):
        solvers.stage_layout("dopri5")

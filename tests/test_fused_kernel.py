"""The fused kernel: the slow net computed inside the compiled time loop ("fused").

Checked against torchdiffeq (logits and gradients, every loop model and layout), the
unfused kernel, autograd in float64 (gradcheck of the hand-written backward with respect
to every slow-net parameter and W0), and for its selection and refusals.
"""

import ast
import subprocess
import sys

import pytest
import torch

import fwplab
from parity import GRAD_RTOL, LOGITS_ATOL, TINY, assert_same_logits_and_gradients, series
from fwplab import kernels, solvers
from fwplab.models import MODELS
from fwplab.rules import RULES
from test_kernel import _compiler_present

#: Models whose rule depends on W (a time loop for the kernel).
LOOP_MODELS = [name for name, spec in MODELS.items()
               if isinstance(spec, tuple) and RULES[spec[0]].has_time_loop]
OTHER_LAYOUT = {"delta_cde": "keys_from_path", "oja_cde": "keys_from_derivative"}
FLOAT64_ATOL = 1e-10  # fused kernel vs torchdiffeq in float64

pytestmark = pytest.mark.skipif(not _compiler_present(),
                                reason="no C++ compiler or ninja: the models fall back")


@pytest.fixture(scope="module", autouse=True)
def built_kernel():
    kernels.load()


def _pair(name, solver="fused", dtype=torch.float32, size=TINY, **options):
    """A model with ``solver`` and the torchdiffeq reference, same weights."""
    torch.manual_seed(1)
    reference = fwplab.build_model(name, 4, 3, **size, **options, solver="reference").to(dtype)
    model = fwplab.build_model(name, 4, 3, **size, **options, solver=solver).to(dtype)
    return model, reference


def _options(name):
    yield {}
    if "post_tanh" in RULES[MODELS[name][0]].options:
        yield {"post_tanh": True}
    if name in OTHER_LAYOUT:
        yield {"layout": OTHER_LAYOUT[name]}
    yield {"interpolation": "linear"}


@pytest.mark.parametrize("name, options", [(n, o) for n in LOOP_MODELS for o in _options(n)])
def test_fused_equals_torchdiffeq_on_variable_lengths(name, options):
    model, reference = _pair(name, **options)
    assert model.selected_solver() == "fused"
    x = series(batch=5, length=11)
    lengths = torch.tensor([11, 4, 9, 2, 11])
    assert_same_logits_and_gradients(model, reference, x, lengths=lengths, what=name)


@pytest.mark.parametrize("method", list(solvers.TABLEAUS))
def test_fused_equals_torchdiffeq_for_every_method_on_irregular_times(method):
    model, reference = _pair("delta_cde", method=method)
    times = torch.tensor([0.0, 0.3, 1.1, 1.2, 2.5, 3.0, 4.7])
    x = series(batch=4, length=7)
    x[..., 0] = times
    assert_same_logits_and_gradients(model, reference, x, times=times, what=method)


@pytest.mark.parametrize("name", LOOP_MODELS)
def test_fused_handles_batch_size_one(name):
    model, reference = _pair(name)
    assert_same_logits_and_gradients(model, reference, series(batch=1), what=name)


@pytest.mark.parametrize("checkpoint_every", [1, 3, 16, 40])
def test_fused_equals_the_unfused_kernel_for_any_heads_and_segment(checkpoint_every):
    """Groups holding lanes / heads series, a partial last group, segments of any length."""
    lanes = kernels.lanes(torch.float32)
    for heads in (h for h in (1, 2, 4, 8, 16) if lanes % h == 0):
        size = dict(hidden_channels=2 * heads if heads > 1 else 6, num_heads=heads,
                    ff_channels=8)
        model = fwplab.build_model("delta_cde", 4, 3, **size, solver="fused",
                                   checkpoint_every=checkpoint_every)
        unfused = fwplab.build_model("delta_cde", 4, 3, **size, solver="kernel")
        x = series(batch=7, length=13)
        assert_same_logits_and_gradients(model, unfused, x, lengths=torch.tensor(
            [13, 5, 13, 2, 8, 13, 9]), what=(heads, checkpoint_every))


@pytest.mark.parametrize("name", ["delta_cde", "oja_ode"])
def test_fused_equals_torchdiffeq_in_float64(name):
    model, reference = _pair(name, dtype=torch.float64)
    x = series(batch=3, dtype=torch.float64)
    assert_same_logits_and_gradients(model, reference, x, atol=FLOAT64_ATOL, grad_rtol=1e-9,
                                     what=name)


@pytest.mark.parametrize("threads", [1, 2])
def test_fused_gradients_do_not_depend_on_the_threads(threads):
    """Each thread sums its own parameter gradients; the totals are the same."""
    model, reference = _pair("delta_cde")
    restore = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        assert_same_logits_and_gradients(model, reference, series(batch=9), what=threads)
    finally:
        torch.set_num_threads(restore)


@pytest.mark.parametrize("driver, layout", [("ode", None), ("cde", "keys_from_derivative"),
                                            ("cde", "keys_from_path")])
@pytest.mark.parametrize("interpolation", ["natural_cubic", "linear"])
def test_fused_backward_passes_float64_gradcheck(driver, layout, interpolation):
    """The hand-written backward against finite differences, for every parameter and W0;
    9 series of 2 heads make several groups, so both threads sum gradients (and gradcheck
    asks that a second backward repeats them exactly)."""
    torch.manual_seed(0)
    model = fwplab.build_model(f"delta_{driver}", 3, 2, hidden_channels=6, num_heads=2,
                               ff_channels=4, layout=layout, interpolation=interpolation,
                               solver="fused").double()
    x = series(batch=9, length=6, channels=3, dtype=torch.float64)
    path = fwplab.paths.control_path(fwplab.interpolation_coeffs(x, interpolation=interpolation),
                                     torch.arange(6.0, dtype=torch.float64), interpolation)
    grid = torch.arange(6.0, dtype=torch.float64)
    pieces = path.pieces(solvers.stage_points(grid, "rk4"))
    net = model.slow_net.fused()
    parameters = tuple(p.detach().clone().requires_grad_() for p in net.parameters())
    W0 = (0.3 * torch.randn(9, 2, 3, 3, dtype=torch.float64)).requires_grad_()

    def solve(W0, *parameters):
        names = ("in_weight", "in_bias", "norm_weight", "norm_bias", "joint_weight",
                 "joint_bias", "value_weight", "value_bias")
        replaced = net._replace(**dict(zip(names, parameters, strict=False)))
        return solvers.solve_fused("delta", replaced, pieces, W0, grid[1:] - grid[:-1],
                                   "rk4", torch.tensor([0, 2, 5]), checkpoint_every=2)

    assert torch.autograd.gradcheck(solve, (W0, *parameters), fast_mode=True)


def test_auto_fuses_where_it_can_and_runs_the_unfused_kernel_elsewhere():
    assert fwplab.build_model("delta_cde", 4, 3, **TINY).selected_solver() == "fused"
    assert fwplab.build_model("delta_cde", 4, 3, **TINY, v_layernorm=True).selected_solver() \
        == "kernel"
    three_heads = dict(hidden_channels=6, num_heads=3, ff_channels=8)
    assert fwplab.build_model("delta_cde", 4, 3, **three_heads).selected_solver() == "kernel"
    assert fwplab.build_model("hebb_cde", 4, 3, **TINY).selected_solver() == "fast"
    model, reference = _pair("delta_cde", solver="auto")
    x = series(batch=2).requires_grad_()  # inputs needing gradients: the unfused kernel runs
    model.load_state_dict(reference.state_dict())
    model(x).sum().backward()
    from_auto = x.grad.clone()
    x.grad = None
    reference(x).sum().backward()
    torch.testing.assert_close(from_auto, x.grad, atol=LOGITS_ATOL, rtol=GRAD_RTOL)


@pytest.mark.parametrize("options, message", [
    (dict(v_layernorm=True), "solver: 'fused' runs slow nets without v_layernorm; use 'kernel'"),
    (dict(hidden_channels=6, num_heads=3, ff_channels=8),
     r"solver: 'fused' needs num_heads dividing {lanes} in torch.float32, got 3; use 'kernel'"),
])
def test_fused_refuses_a_slow_net_it_cannot_run_in_one_line(options, message):
    model = fwplab.build_model("delta_cde", 4, 3, **{**TINY, **options}, solver="fused")
    with pytest.raises(ValueError, match=message.format(lanes=kernels.lanes(torch.float32))):
        model(series())


def test_lanes_are_one_vector_register_and_refuse_other_dtypes():
    assert kernels.lanes(torch.float32) == 2 * kernels.lanes(torch.float64)
    assert kernels.lanes(torch.float32) in (4, 8, 16)
    with pytest.raises(ValueError, match="dtype: the kernel runs float32 and float64"):
        kernels.lanes(torch.float16)
    assert not kernels.fuses_heads(2, torch.float16)


def test_fused_refuses_inputs_that_need_gradients_and_rules_without_a_loop():
    model = fwplab.build_model("delta_cde", 4, 3, **TINY, solver="fused")
    with pytest.raises(ValueError, match="'fused' gives no gradient with respect to the inputs"):
        model(series().requires_grad_())
    with torch.no_grad():  # no gradient asked: it runs
        model(series().requires_grad_())
    hebb = fwplab.build_model("hebb_cde", 4, 3, **TINY, solver="fused")
    with pytest.raises(ValueError, match="the fused kernel runs delta and Oja rules"):
        hebb(series())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_kernel_threads_are_pytorchs_openmp_threads():
    """Built with OpenMP, the kernel loads no OpenMP runtime of its own: it finds the one
    PyTorch loaded, so its threads are PyTorch's (not rivals spinning on the same cores)."""
    if not kernels.uses_openmp():
        pytest.skip("the kernel was built without OpenMP (threads of its own)")
    # In a fresh process: this one may hold other libraries' runtimes (scikit-learn's).
    script = ("import torch\nfrom fwplab import kernels\nkernels.load()\n"
              "print(sorted({line.split()[-1] for line in open('/proc/self/maps')\n"
              "              if 'libgomp' in line or 'libomp' in line or 'libiomp' in line}))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    runtimes = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert len(runtimes) == 1 and "torch" in runtimes[0], runtimes


def test_fused_trajectory_and_stream_equal_the_unfused_kernel():
    """Every observation time kept (the explorer's trajectories, stream=True read-outs)."""
    model, _ = _pair("oja_cde")
    unfused, _ = _pair("oja_cde", solver="kernel")
    x = series(batch=5, length=10)
    with torch.no_grad():
        torch.testing.assert_close(model.fast_weight_trajectory(x),
                                   unfused.fast_weight_trajectory(x), atol=1e-6, rtol=0)
        torch.testing.assert_close(model(x, stream=True), unfused(x, stream=True),
                                   atol=LOGITS_ATOL, rtol=0)

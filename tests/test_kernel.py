"""The compiled CPU recurrence kernel: built here, checked against torchdiffeq and autograd."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fwplab
from parity import GRAD_RTOL, LOGITS_ATOL, OFFICIAL_ATOL, TINY, logits_and_grads
from fwplab import kernels, solvers
from fwplab.models import MODELS
from fwplab.rules import RULES

FLOAT64_ATOL = 1e-10  # kernel vs torchdiffeq in float64
STATES_ATOL = 1e-6  # kernel vs the pure-PyTorch fast path, float32 states
GOLDEN_CDE = Path(__file__).parent / "fixtures" / "official_cde_variants.pt"
OTHER_LAYOUT = {"delta_cde": "keys_from_path", "oja_cde": "keys_from_derivative"}
#: Models whose rule depends on W (a time loop for the kernel), read from the rule records.
LOOP_MODELS = [name for name, spec in MODELS.items()
               if isinstance(spec, tuple) and RULES[spec[0]].has_time_loop]
#: Every continuous FWP model.
FWP_MODELS = [name for name, spec in MODELS.items() if isinstance(spec, tuple)]
KERNEL_ACTIVATIONS = [("softmax", "tanh", "sigmoid"), ("softmax", "identity", "sigmoid"),
                      ("tanh", "identity", "sigmoid"), ("identity", "identity", "identity")]


def _compiler_present() -> bool:
    try:
        kernels.build.compiler()
    except RuntimeError:
        return False
    return True


pytestmark = pytest.mark.skipif(not (_compiler_present() and kernels.enabled()),
                                reason="no C++ compiler, or FWPLAB_KERNEL=0: the models fall back")


@pytest.fixture(scope="module", autouse=True)
def built_kernel():
    """Build (or load from the cache) once; a failed build fails every test here."""
    kernels.load()
    print(f"\nfwplab kernel ready after {kernels.build_seconds():.1f} s")


def _series(batch=3, length=9, channels=4, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    x = torch.randn(batch, length, channels, dtype=dtype)
    x[..., 0] = torch.arange(length, dtype=dtype)
    return x



def _compare(name, x, lengths=None, times=None, atol=LOGITS_ATOL, dtype=torch.float32,
             checkpoints=(None,), **options):
    """The kernel (at each checkpoint interval) against torchdiffeq: logits and gradients."""
    torch.manual_seed(1)
    reference = fwplab.build_model(name, 4, 3, **TINY, **options, solver="reference").to(dtype)
    ref_logits, ref_grads = logits_and_grads(reference, x, lengths, times)
    for checkpoint_every in checkpoints:
        kernel = fwplab.build_model(name, 4, 3, **TINY, **options, solver="kernel",
                                    checkpoint_every=checkpoint_every).to(dtype)
        kernel.load_state_dict(reference.state_dict())
        logits, grads = logits_and_grads(kernel, x, lengths, times)
        torch.testing.assert_close(logits, ref_logits, atol=atol, rtol=0)
        for key, grad in ref_grads.items():
            scale = grad.abs().max().clamp(min=1e-6)
            assert (grads[key] - grad).abs().max() / scale < GRAD_RTOL, (checkpoint_every, key)


@pytest.mark.parametrize("options", [{}, {"post_tanh": True}, {"v_layernorm": True},
                                     {"layout": "other"}],
                         ids=["plain", "post_tanh", "v_layernorm", "other_layout"])
@pytest.mark.parametrize("name", LOOP_MODELS)
def test_kernel_equals_torchdiffeq(name, options):
    if options.get("post_tanh") and not name.startswith("delta"):
        pytest.skip("post_tanh is a delta-rule option")
    if (options.get("v_layernorm") or options.get("layout")) and name.endswith("ode"):
        pytest.skip("v_layernorm and layout are CDE options")
    if options.get("layout"):
        options = {"layout": OTHER_LAYOUT[name]}
    _compare(name, _series(), lengths=torch.tensor([9, 4, 6]), checkpoints=(None, 1, 3),
             **options)


@pytest.mark.parametrize("method", list(solvers.TABLEAUS))
def test_kernel_equals_torchdiffeq_for_every_method_on_irregular_times(method):
    times = torch.tensor([0.0, 0.5, 1.0, 2.0, 2.2, 3.0, 4.5, 5.0, 6.0])
    for name, options in (("delta_cde", {}), ("oja_ode", {}), ("delta_ode", {"post_tanh": True}),
                          ("oja_cde", {})):
        _compare(name, _series(), lengths=torch.tensor([9, 6, 8]), times=times, method=method,
                 **options)


@pytest.mark.parametrize("name", FWP_MODELS)
def test_kernel_solver_handles_batch_size_one(name):
    """Every FWP (Hebb rules run their loop-free path under the kernel solver)."""
    _compare(name, _series(batch=1, length=6))


@pytest.mark.parametrize("name", ["delta_cde", "oja_ode"])
def test_kernel_equals_torchdiffeq_in_float64(name):
    _compare(name, _series(dtype=torch.float64), lengths=torch.tensor([9, 5, 7]),
             atol=FLOAT64_ATOL, dtype=torch.float64, post_tanh=name == "delta_cde")


def _kernel_inputs(activations, flat, d=3, n_steps=5, method="rk4", seed=0):
    """Random float64 raw controls; ``flat`` recurrences fill lane groups partly."""
    torch.manual_seed(seed)
    points = n_steps * solvers.stage_layout(method).per_step + 1
    fixed = torch.randn(points, flat, d, dtype=torch.float64)
    if activations[0] == "identity":
        fixed = fixed.softmax(-1)
    target = torch.randn(points, flat, d, dtype=torch.float64)
    rate = torch.randn(points, flat, 1, dtype=torch.float64)
    if activations[2] == "identity":
        rate = rate.sigmoid()
    M0 = 0.3 * torch.randn(flat, d, d, dtype=torch.float64)
    steps = 0.2 + 0.5 * torch.rand(n_steps, dtype=torch.float64)
    return (*(t.requires_grad_() for t in (fixed, target, rate, M0)), steps)


@pytest.mark.parametrize("method, checkpoint_every", [("rk4", 2), ("rk4", 16), ("heun3", 1),
                                                      ("heun2", 3), ("euler", 2)])
@pytest.mark.parametrize("nonlinearity, activations", [
    ("linear", KERNEL_ACTIVATIONS[0]), ("tanh", KERNEL_ACTIVATIONS[1]),
    ("softmax", KERNEL_ACTIVATIONS[2]), ("linear", KERNEL_ACTIVATIONS[3])])
def test_kernel_backward_passes_float64_gradcheck(nonlinearity, activations, method,
                                                  checkpoint_every):
    *tensors, steps = _kernel_inputs(activations, flat=3, method=method)
    spec = solvers.RecurrenceSpec(nonlinearity, solvers.TABLEAUS[method],
                                  solvers.stage_layout(method), (0, 3, 5), checkpoint_every)
    assert torch.autograd.gradcheck(
        lambda *t: kernels.recurrence(*t, steps, spec, activations), tuple(tensors),
        fast_mode=True)


@pytest.mark.parametrize("method", ["rk4", "midpoint"])
def test_kernel_reads_column_slices_in_place_float64_gradcheck(method):
    """Keys and rates as columns of one array (the slow net's joint projection)."""
    *_, steps = _kernel_inputs(KERNEL_ACTIVATIONS[0], flat=3, method=method)
    points, d = steps.shape[0] * solvers.stage_layout(method).per_step + 1, 3
    torch.manual_seed(2)
    joint = torch.randn(points, 3, d + 1, dtype=torch.float64, requires_grad=True)
    target = torch.randn(points, 3, d, dtype=torch.float64, requires_grad=True)
    M0 = (0.3 * torch.randn(3, d, d, dtype=torch.float64)).requires_grad_()
    spec = solvers.RecurrenceSpec("linear", solvers.TABLEAUS[method],
                                  solvers.stage_layout(method), (0, 2, 5), 2)
    arrays, operands = kernels.row_operands((joint[..., :d], target, joint[..., d:]))
    assert arrays[0] is joint and arrays[1] is target
    assert operands == (kernels.RowOperand(0, 0, d + 1), kernels.RowOperand(1, 0, d),
                        kernels.RowOperand(0, d, d + 1))
    assert torch.autograd.gradcheck(
        lambda j, c, m: kernels.recurrence(j[..., :d], c, j[..., d:], m, steps, spec,
                                           KERNEL_ACTIVATIONS[0]), (joint, target, M0),
        fast_mode=True)


def test_kernel_copies_controls_it_cannot_read_in_place():
    """A strided time slice is copied; columns that do not tile their array get zeros."""
    joint = torch.randn(9, 2, 8)
    every_other = joint[::2]
    arrays, operands = kernels.row_operands((every_other[..., :3], every_other[..., 3:6],
                                             every_other[..., 7:]))
    assert len(arrays) == 3 and all(a.is_contiguous() and a._base is None for a in arrays)
    assert operands == (kernels.RowOperand(0, 0, 3), kernels.RowOperand(1, 0, 3),
                        kernels.RowOperand(2, 0, 1))
    assert not kernels._covers_rows(
        (kernels.RowOperand(0, 0, 8), kernels.RowOperand(0, 5, 8), kernels.RowOperand(0, 7, 8)),
        (3, 2, 1), 0)


def test_delta_cde_kernel_reads_the_joint_projection_in_place(monkeypatch):
    seen = []
    row_operands = kernels.row_operands

    def spy(controls):
        arrays, operands = row_operands(controls)
        seen.append((controls, arrays))
        return arrays, operands

    monkeypatch.setattr(kernels, "row_operands", spy)
    fwplab.build_model("delta_cde", 4, 3, **TINY, solver="kernel")(_series())
    (key, _, rate), arrays = seen[0]
    assert len(arrays) == 2 and key._base is arrays[0] and rate._base is arrays[0]


@pytest.mark.parametrize("flat", [1, 17, 40])
def test_kernel_states_equal_the_fast_path_for_any_number_of_recurrences(flat):
    """Lane groups of 16 (float32): partial, single and several groups, one or two threads."""
    activations = KERNEL_ACTIVATIONS[0]
    fixed, target, rate, M0, steps = (t.detach().float() for t in
                                      _kernel_inputs(activations, flat=flat, d=5, n_steps=20))
    keep = tuple(range(21))
    spec = solvers.RecurrenceSpec("linear", solvers.TABLEAUS["rk4"], solvers.stage_layout("rk4"),
                                  keep, None)
    expected = solvers._FastRecurrence.apply(fixed.softmax(-1), target.tanh(), rate.sigmoid(),
                                             M0, steps, spec)
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            states = kernels.recurrence(fixed, target, rate, M0, steps,
                                        spec._replace(checkpoint_every=7), activations)
            torch.testing.assert_close(states, expected, atol=STATES_ATOL, rtol=0)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["hebb_cde", "oja_cde"])
def test_kernel_reproduces_the_official_fast_weight_cde(name):
    golden = torch.load(GOLDEN_CDE, weights_only=True)
    model = fwplab.build_model(name, **golden["config"], solver="kernel").eval()
    fwplab.load_official_state_dict(model, golden[name]["state_dict"])
    with torch.no_grad():
        logits = model(golden["x"], golden["times"])
    torch.testing.assert_close(logits, golden[name]["logits"], atol=OFFICIAL_ATOL, rtol=0)


def test_auto_falls_back_to_the_fast_path_for_a_rule_the_kernel_lacks(monkeypatch):
    codes = {k: v for k, v in kernels._NONLINEARITY_CODES.items() if k != "softmax"}
    monkeypatch.setattr(kernels, "_NONLINEARITY_CODES", codes)
    model = fwplab.build_model("oja_cde", 4, 3, **TINY)
    assert model.selected_solver() == "fast"
    assert fwplab.build_model("delta_cde", 4, 3, **TINY).selected_solver() == "fused"
    reference = fwplab.build_model("oja_cde", 4, 3, **TINY, solver="reference")
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(_series()), reference(_series()), atol=LOGITS_ATOL,
                                   rtol=0)
    with pytest.raises(ValueError, match="the compiled kernel has no 'oja' rule; use 'fast'"):
        fwplab.build_model("oja_cde", 4, 3, **TINY, solver="kernel")(_series())


def test_a_cached_kernel_loads_without_ninja_and_without_any_warning(tmp_path):
    """Without ``ninja`` on PATH every run warned and fell back; the kernel needs only a
    compiler (here a cache hit: the module's fixture built it)."""
    tools = tmp_path / "bin"
    tools.mkdir()
    compiler = kernels.build.compiler()[0]
    (tools / "c++").symlink_to(compiler)
    env = {**os.environ, "PATH": str(tools), "OMP_NUM_THREADS": "1"}
    env.pop("CXX", None)
    done = subprocess.run([sys.executable, "-W", "error", "-c",
                           "import torch; from fwplab import kernels; kernels.load(); "
                           "print(kernels.lanes(torch.float32))"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert shutil.which("ninja", path=str(tools)) is None
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]
    assert int(done.stdout) == kernels.lanes(torch.float32)


def test_prepare_builds_for_models_that_run_the_kernel_only(monkeypatch):
    model = fwplab.build_model("delta_cde", 4, 3, **TINY)
    assert kernels.prepare(model) and kernels.prepare(torch.nn.Sequential(model))
    assert not kernels.prepare(fwplab.build_model("delta_cde", 4, 3, **TINY, solver="fast"))
    assert not kernels.prepare(fwplab.build_model("hebb_cde", 4, 3, **TINY))
    assert not kernels.prepare(torch.nn.Linear(2, 2))
    assert not kernels.prepare(fwplab.build_model("delta_cde", 4, 3, **TINY).half())
    monkeypatch.setenv("FWPLAB_KERNEL", "0")
    assert not kernels.prepare(model)
    with pytest.raises(RuntimeError, match="^fwplab kernel: turned off by FWPLAB_KERNEL=0; "):
        kernels.load()


def test_auto_uses_the_kernel_on_cpu_unless_turned_off(monkeypatch):
    model = fwplab.build_model("delta_cde", 4, 3, **TINY)
    assert model.selected_solver() == "fused"
    assert fwplab.build_model("delta_cde", 4, 3, **TINY, v_layernorm=True).selected_solver() \
        == "kernel"
    assert model.selected_solver(dtype=torch.float16) == "fast"
    for layout in ("keys_from_path", "keys_from_derivative"):  # Hebb has no time loop
        assert fwplab.build_model("hebb_cde", 4, 3, **TINY, layout=layout).selected_solver() \
            == "fast"
    assert fwplab.build_model("delta_cde", 4, 3, **TINY, adjoint=True).selected_solver() == \
        "reference"
    monkeypatch.setenv("FWPLAB_KERNEL", "0")
    assert model.selected_solver() == "fast"


def test_failed_build_falls_back_with_one_notice(monkeypatch):
    monkeypatch.setattr(kernels._Build, "library", None)
    monkeypatch.setattr(kernels._Build, "error", "fwplab kernel build failed: no compiler")
    monkeypatch.setattr(kernels._Build, "warned", False)
    model = fwplab.build_model("delta_cde", 4, 3, **TINY)
    with pytest.warns(RuntimeWarning, match="no compiler; using the pure-PyTorch fast path"):
        assert model.selected_solver() == "fast"
    assert not kernels.available()  # the notice is given once
    with pytest.raises(RuntimeError, match="no compiler"):
        fwplab.build_model("delta_cde", 4, 3, **TINY, solver="kernel")(_series())


def test_kernel_rejects_tensors_it_cannot_run():
    model = fwplab.build_model("delta_cde", 4, 3, **TINY, solver="kernel").half()
    with pytest.raises(ValueError, match="backend: the compiled kernel runs CPU float32/float64"):
        model(_series().half())

"""fwplab.benchmarking: timing medians after warm-up, saved memory, work counts, solver timings."""

import pytest
import torch

from fwplab import build_model, interpolation_coeffs
from fwplab.kernels import triton_recurrence
from fwplab.benchmarking import (
    SOLVER_OPTIONS,
    fast_path_flops,
    field_outputs,
    matmul_gflops,
    median,
    median_seconds,
    _recurrence_functions,
    profile_step,
    random_series,
    recurrence_flops,
    saved_tensor_bytes,
    time_round_robin,
    time_recurrence_share,
    time_solvers,
)

TINY = dict(length=8, channels=4, hidden_channels=8, num_heads=2, ff_channels=16, classes=3)


def test_random_series_has_a_time_channel_and_is_seeded():
    x = random_series(3, 7, 4, seed=5)
    assert x.shape == (3, 7, 4)
    assert torch.equal(x[..., 0], torch.arange(7.0).expand(3, 7))
    assert torch.equal(x, random_series(3, 7, 4, seed=5))
    assert not torch.equal(x, random_series(3, 7, 4, seed=6))
    assert random_series(1, 2, 2).shape == (1, 2, 2)  # batch size 1
    with pytest.raises(ValueError, match="channels"):
        random_series(2, 3, 0)


def test_round_robin_warms_up_untimed_and_takes_turns():
    calls = []
    times = time_round_robin({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                             repeats=3, warmup=2)
    assert calls == ["a", "b"] * 5  # 2 warm-up rounds + 3 timed, in turns
    assert {name: len(values) for name, values in times.items()} == {"a": 3, "b": 3}
    assert all(value >= 0 for values in times.values() for value in values)
    lines = []
    time_round_robin({"a": lambda: None}, repeats=2, warmup=1, report=lines.append)
    assert len(lines) == 3 and "warm-up" in lines[0] and "round 2" in lines[-1]
    with pytest.raises(ValueError, match="repeats"):
        time_round_robin({"a": lambda: None}, repeats=0)


def test_median_seconds_ignores_the_slow_warm_up():
    import time

    durations = iter([0.2, 0.0, 0.0, 0.0])  # the first (warm-up) call is slow
    seconds = median_seconds(lambda: time.sleep(next(durations)), repeats=3, warmup=1)
    assert seconds < 0.1
    assert median([3.0, 1.0, 2.0]) == 2.0 and median([]) != median([])  # NaN when empty


def test_saved_tensor_bytes_counts_each_storage_once():
    a = torch.randn(100, requires_grad=True)
    b = torch.randn(100, requires_grad=True)
    assert saved_tensor_bytes(lambda: (a * b).sum()) == 2 * 100 * 4  # a and b are saved
    assert saved_tensor_bytes(lambda: (a * a).sum()) == 100 * 4  # one storage, saved twice
    assert saved_tensor_bytes(lambda: (a + b).sum()) == 0  # addition saves nothing


def test_matmul_rate_is_positive_and_keeps_the_thread_setting():
    assert matmul_gflops(size=64, repeats=2) > 0
    threads = torch.get_num_threads()
    assert matmul_gflops(size=64, repeats=2, threads=1) > 0
    assert torch.get_num_threads() == threads


def test_field_outputs():
    assert field_outputs("ncde", 64, 21, heads=4) == 64 * 21
    assert field_outputs("delta_cde", 64, 21, heads=4) == 2 * 64 + 4
    assert field_outputs("oja_cde", 64, 256, heads=4) == field_outputs("oja_cde", 64, 4, 4)
    # the slow net's output layers really have that many outputs
    model = build_model("delta_cde", 21, 3, hidden_channels=64, num_heads=4)
    slow = model.slow_net
    assert slow.kb_proj.out_features + slow.value_proj.out_features == 2 * 64 + 4
    with pytest.raises(ValueError, match="CDE-driven FWP"):
        field_outputs("delta_ode", 64, 21, heads=4)


def test_fast_path_flops():
    size = dict(channels=21, hidden=80, heads=4, length=161)
    one, two = (fast_path_flops("delta_cde", batch=b, **size) for b in (1, 2))
    assert two == pytest.approx(2 * one)  # linear in the batch
    hebb = fast_path_flops("hebb_cde", batch=1, **size)
    d, stages, steps = 20, 4, 160
    assert one - hebb == 3 * 4 * stages * d * d * 4 * steps  # the recurrence, 4 heads
    assert fast_path_flops("delta_ode", batch=1, **size) > 0
    assert fast_path_flops("delta_cde", batch=1, backward=False, **size) == pytest.approx(one / 3)
    recurrence = recurrence_flops("delta_cde", hidden=80, heads=4, length=161, batch=1)
    assert recurrence == one - hebb
    assert recurrence_flops("delta_cde", 80, 4, 161, 1, backward=False) == recurrence / 3
    assert recurrence_flops("hebb_cde", 80, 4, 161, 1) == 0
    with pytest.raises(ValueError, match="continuous FWP"):
        fast_path_flops("ncde", batch=1, **size)


def tiny_delta_cde(solver):
    """A small seeded delta_cde on ``solver`` with a batch of 3 series and their coefficients."""
    torch.manual_seed(0)
    model = build_model("delta_cde", 4, 3, hidden_channels=8, num_heads=2, ff_channels=16,
                        solver=solver)
    x = random_series(3, 8, 4)
    return model, x, interpolation_coeffs(x)


@pytest.mark.parametrize("solver", ["fast", "kernel"])
def test_profile_step_separates_the_recurrence(solver):
    model, x, coeffs = tiny_delta_cde(solver)
    found = profile_step(model, x, coeffs, repeats=2, top=5)
    assert 0 < found.recurrence_forward_s < found.forward_s
    assert 0 < found.recurrence_backward_s < found.backward_s
    assert 0 < found.outside_share < 1
    assert len(found.forward_ops) == len(found.backward_ops) == 5
    for ops in (found.forward_ops, found.backward_ops):
        seconds = [op[2] for op in ops]
        assert seconds == sorted(seconds, reverse=True) and seconds[-1] >= 0
    every = profile_step(model, x, coeffs, repeats=1, top=10_000)
    recurrence = {"fast": "_FastRecurrence", "kernel": "KernelRecurrence"}[solver]
    assert recurrence in {name for name, _, _ in every.forward_ops}
    assert recurrence + "Backward" in {name for name, _, _ in every.backward_ops}


@pytest.mark.parametrize("solver", ["fast", "kernel"])
def test_time_recurrence_share_times_the_recurrence_node_and_unwraps_it(solver):
    model, x, coeffs = tiny_delta_cde(solver)
    found = time_recurrence_share(model, x, coeffs, repeats=3)
    assert 0 < found.recurrence_forward_s < found.forward_s
    assert 0 < found.recurrence_backward_s < found.backward_s
    assert 0 < found.outside_share < 1
    # The functions are restored: a later pass runs no hooks and the gradients are plain.
    for function in _recurrence_functions():
        assert "apply" not in function.__dict__
    hebb = build_model("hebb_cde", 4, 3, hidden_channels=8, num_heads=2, ff_channels=16,
                       solver="fast")
    none = time_recurrence_share(hebb, x, coeffs, repeats=1)
    assert none.recurrence_forward_s == none.recurrence_backward_s == 0
    assert none.outside_share == 1


def test_time_solvers_same_weights_and_speedups():
    results = time_solvers("cpu", 2, ("reference", "fast", "fast-bounded"), shape=TINY,
                           repeats=1, warmup=1)
    assert [r.solver for r in results] == ["reference", "fast", "fast-bounded"]
    assert [r.runs for r in results] == ["reference", "fast", "fast"]
    assert results[0].speedup == 1.0
    for result in results:
        assert result.seconds > 0 and result.saved_mb > 0
        assert result.speedup == pytest.approx(results[0].seconds / result.seconds)
    with pytest.raises(ValueError, match="solvers"):
        time_solvers("cpu", 2, ("magic",), shape=TINY)


def test_solver_options_select_what_they_say():
    expected = {"reference": "reference", "adjoint": "reference", "stepwise": "stepwise",
                "fast": "fast", "fast-bounded": "fast", "kernel": "kernel"}
    for name, runs in expected.items():
        model = build_model("delta_cde", 4, 3, hidden_channels=8, num_heads=2,
                            **SOLVER_OPTIONS[name])
        assert model.selected_solver("cpu") == runs, name
        assert model.adjoint == (name == "adjoint")
    on_cuda = "triton" if triton_recurrence.available() and triton_recurrence.enabled() else "fast"
    assert build_model("delta_cde", 4, 3, hidden_channels=8, num_heads=2,
                       **SOLVER_OPTIONS["auto"]).selected_solver("cuda") == on_cuda


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_time_solvers_on_cuda():
    results = time_solvers("cuda", 4, ("reference", "fast", "auto"), shape=TINY, repeats=1)
    assert [r.runs for r in results] == ["reference", "fast", "fast"]  # no kernel on CUDA
    assert all(r.seconds > 0 for r in results)

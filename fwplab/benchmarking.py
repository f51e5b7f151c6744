"""Measuring speed and memory: the helpers shared by notebook 6 and ``benchmarks/``.

Timing: every run is called ``warmup`` times untimed (first calls allocate memory,
pick kernels, build caches), then the runs take turns (round robin) for ``repeats``
rounds, so that load from other processes hits all of them alike; the median wall
time of each is its result. On CUDA the device is synchronised around every call,
because kernels are launched asynchronously.

Memory: :func:`saved_tensor_bytes` counts the bytes of every tensor autograd keeps
between the forward and the backward (each storage once). It is deterministic, works
on any device, and is what checkpointing and the adjoint reduce.

Work: :func:`field_outputs` counts what a vector field computes per evaluation,
:func:`fast_path_flops` estimates the arithmetic of one forward+backward of the fast
fixed-grid path, and :func:`matmul_gflops` measures the rate at which this machine
multiplies matrices, the yardstick that turns a FLOP count into a time floor
(docs/maths.md, section 7).

:func:`time_solvers` puts these together: one model with the same weights solved
several ways on one device, e.g. the torchdiffeq reference, its adjoint and the fast
path at the paper's Speech Commands shape, batch 1024 on a GPU.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .models import build_model
from .paths import interpolation_coeffs
from .solvers import stage_layout

__all__ = [
    "SPEECH_COMMANDS",
    "SOLVER_OPTIONS",
    "SolverTiming",
    "random_series",
    "synchronize",
    "time_round_robin",
    "median",
    "median_seconds",
    "saved_tensor_bytes",
    "matmul_gflops",
    "field_outputs",
    "fast_path_flops",
    "recurrence_flops",
    "RECURRENCE_EVENTS",
    "StepProfile",
    "profile_step",
    "RecurrenceShare",
    "time_recurrence_share",
    "forward_backward",
    "time_solvers",
]

Device = Union[str, torch.device]

#: The paper's Speech Commands setting (docs/maths.md, section 7): observation times,
#: input channels (20 MFCCs and time), hidden size, heads, feed-forward width, classes.
SPEECH_COMMANDS = dict(length=161, channels=21, hidden_channels=80, num_heads=4,
                       ff_channels=320, classes=10)

#: How a continuous FWP is solved: ``build_model`` keyword arguments by name.
SOLVER_OPTIONS = {
    "reference": dict(solver="reference"),
    "adjoint": dict(solver="reference", adjoint=True),
    "stepwise": dict(solver="stepwise"),
    "fast": dict(solver="fast"),
    "fast-bounded": dict(solver="fast", checkpoint_every=16),
    "kernel": dict(solver="kernel"),
    "fused": dict(solver="fused"),
    "auto": dict(solver="auto"),
}


def random_series(batch: int, length: int, channels: int, seed: int = 0,
                  device: Device = "cpu") -> Tensor:
    """Random observations with a time channel first.

    Args:
        batch, length, channels: the shape ``(batch, length, channels)``.
        seed: seeds the draw (made on the CPU, so every device gets the same numbers).
        device: where the result lives.

    Returns:
        ``(batch, length, channels)``: channel 0 is ``0, 1, ..., length - 1``, the
        others standard normal.
    """
    if channels < 1:
        raise ValueError(f"channels: expected at least 1 (the time channel), got {channels}")
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, channels, generator=generator)
    x[..., 0] = torch.arange(length, dtype=x.dtype)
    return x.to(device)


def synchronize(device: Device) -> None:
    """Wait for every queued kernel of ``device`` (CUDA); nothing to wait for elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round_robin(runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                     device: Device = "cpu",
                     report: Optional[Callable[[str], None]] = None) -> dict[str, list[float]]:
    """Wall times of every run, taking turns, after untimed warm-up rounds.

    Args:
        runs: name -> a function to time (called without arguments).
        repeats: timed rounds; every run is called once per round.
        warmup: untimed rounds first.
        device: synchronised around every call (CUDA launches are asynchronous).
        report: called with a line after every round (e.g. ``print``), or None.

    Returns:
        name -> ``repeats`` wall times in seconds.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats >= 1 and warmup >= 0 expected, got {repeats} and {warmup}")
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(warmup + repeats):
        for name, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
        if report is not None:
            done = "warm-up" if round_index < warmup else f"round {round_index - warmup + 1}"
            report(f"  {done}/{repeats} done")
    return times


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values."""
    return statistics.median(values) if len(values) else float("nan")


def median_seconds(run: Callable[[], object], repeats: int = 3, warmup: int = 1,
                   device: Device = "cpu") -> float:
    """Median wall time (seconds) of ``run()`` over ``repeats`` calls after ``warmup`` calls."""
    return median(time_round_robin({"run": run}, repeats, warmup, device)["run"])


def saved_tensor_bytes(forward: Callable[[], Tensor]) -> int:
    """Bytes autograd keeps for the backward of ``forward()``.

    Every tensor saved for the backward while ``forward()`` runs is recorded; each
    storage is counted once, however many views of it are saved. Nothing is
    backpropagated.
    """
    storages: dict[tuple[str, int], int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        storages[str(tensor.device), storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = forward()
    del output
    return sum(storages.values())


def matmul_gflops(device: Device = "cpu", size: int = 1024, repeats: int = 5,
                  threads: Optional[int] = None) -> float:
    """The measured float32 matrix-product rate of ``device`` in GFLOP/s.

    The best of ``repeats`` timed products of two ``size x size`` matrices (one
    untimed product first); a product costs ``2 size^3`` floating point operations.
    ``threads``: CPU threads for the products (default: torch's current setting, which
    is restored afterwards).
    """
    if threads is not None:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return matmul_gflops(device, size, repeats)
        finally:
            torch.set_num_threads(previous)
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def field_outputs(name: str, hidden: int, channels: int, heads: int) -> int:
    """Numbers a model's vector field computes per evaluation and series.

    A Neural CDE's field ``f(z)`` is an ``H x C`` matrix; a CDE-driven FWP's slow
    net outputs keys and rates (``H + heads``) from ``dX/dt`` and values (``H``) from
    ``X``, whatever ``C`` is::

        ncde:       H * C
        *_cde FWP:  2 H + heads

    Args:
        name: ``"ncde"`` or a CDE-driven FWP (``"delta_cde"``, ``"hebb_cde"``, ``"oja_cde"``).
        hidden: ``H``.
        channels: ``C``, the input channels (time included).
        heads: FWP heads (ignored for ``"ncde"``).
    """
    if name == "ncde":
        return hidden * channels
    if name not in ("delta_cde", "hebb_cde", "oja_cde"):
        raise ValueError(f"name: expected 'ncde' or a CDE-driven FWP, got {name!r}")
    return 2 * hidden + heads


def fast_path_flops(name: str, channels: int, hidden: int, heads: int, length: int,
                    batch: int, method: str = "rk4", backward: bool = True) -> float:
    """Floating point operations of one forward+backward of the fast path (an estimate).

    Counted: the slow net's linear layers at every distinct stage point of the grid
    (``2 m n`` per row and layer of size ``m x n`` forward, twice that backward) and,
    for the delta and Oja rules, the recurrence's two rank-``S`` products per step
    and head (``4 S d^2`` forward, twice that backward; ``S`` stages, ``d = H / heads``).
    LayerNorm, activations and the read-out are left out: they are a small part.

    Args:
        name: a continuous FWP (``"delta_cde"``, ``"oja_ode"``, ...).
        channels, hidden, heads: ``C``, ``H`` and the number of heads.
        length: observation times (``length - 1`` solver steps).
        batch: series.
        method: fixed-grid Runge-Kutta method.
        backward: count the backward (otherwise the forward only, a third).
    """
    projections, recurrence = _fast_path_flop_parts(name, channels, hidden, heads, length,
                                                    batch, method)
    return (projections + recurrence) / (1 if backward else 3)


def recurrence_flops(name: str, hidden: int, heads: int, length: int, batch: int,
                     method: str = "rk4", backward: bool = True) -> float:
    """The recurrence's share of :func:`fast_path_flops` (0 for Hebb rules: no time loop)."""
    return _fast_path_flop_parts(name, 1, hidden, heads, length, batch, method)[1] / (
        1 if backward else 3)


def _fast_path_flop_parts(name, channels, hidden, heads, length, batch, method):
    """Forward+backward FLOP of the slow net's projections and of the recurrence."""
    layout = stage_layout(method)
    steps = length - 1
    points = steps * layout.per_step + 1
    d = hidden // heads
    if name.endswith("_cde"):  # A dX, [k, b] = B u, v = V X
        per_row = 2 * (channels * hidden + hidden * heads * (d + 1) + channels * hidden)
    elif name.endswith("_ode"):  # A X, [k, v, b] = B u
        per_row = 2 * (channels * hidden + hidden * heads * (2 * d + 1))
    else:
        raise ValueError(f"name: expected a continuous FWP (*_cde or *_ode), got {name!r}")
    projections = 3 * per_row * points * batch
    stages = len(layout.offsets)
    recurrence = 0 if name.startswith("hebb") else 3 * 4 * stages * d * d * heads
    return float(projections), float(recurrence * steps * batch)


#: Profiler event names of the recurrences' autograd nodes (forward; the backward adds
#: ``Backward``): the compiled kernel, the fused kernel (with the slow net inside) and the
#: pure-PyTorch fast path.
RECURRENCE_EVENTS = ("KernelRecurrence", "FusedKernelRecurrence", "_FastRecurrence")


@dataclass(frozen=True)
class StepProfile:
    """Where one forward and one backward of a model spend their time (torch.profiler).

    Attributes:
        forward_s, backward_s: wall time of the profiled forward and backward (means
            over the profiled repeats, profiler running).
        recurrence_forward_s, recurrence_backward_s: time inside the recurrence's
            autograd node (forward, backward), its children included.
        forward_ops, backward_ops: the most expensive operators by self time,
            ``(name, input shapes, seconds per call of the step)``, most expensive first.
    """

    forward_s: float
    backward_s: float
    recurrence_forward_s: float
    recurrence_backward_s: float
    forward_ops: tuple[tuple[str, str, float], ...]
    backward_ops: tuple[tuple[str, str, float], ...]

    @property
    def outside_share(self) -> float:
        """Share of forward+backward time spent outside the recurrence."""
        inside = self.recurrence_forward_s + self.recurrence_backward_s
        return 1.0 - inside / (self.forward_s + self.backward_s)


def profile_step(model: nn.Module, x: Tensor, coeffs: Tensor, repeats: int = 3,
                 top: int = 12) -> StepProfile:
    """Profile the forward and the backward of ``model`` separately, per operator.

    The loss is the sum of squared logits (as :func:`forward_backward`); one untimed
    forward+backward runs first.

    Args:
        model: a model taking ``(x, coeffs=coeffs)``.
        x, coeffs: its inputs.
        repeats: profiled forward+backward passes (times are means over them).
        top: operators listed per direction.
    """
    from torch.profiler import ProfilerActivity, profile

    forward_backward(model, x, coeffs)
    spans = {"forward": 0.0, "backward": 0.0}
    profiles = {}
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as forward_profile:
        losses = []
        for _ in range(repeats):
            start = time.perf_counter()
            losses.append(model(x, coeffs=coeffs).square().sum())
            spans["forward"] += time.perf_counter() - start
    profiles["forward"] = forward_profile
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as backward_profile:
        for loss in losses:
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            loss.backward()
            spans["backward"] += time.perf_counter() - start
    profiles["backward"] = backward_profile
    recurrence, ops = {}, {}
    for direction, suffix in (("forward", ""), ("backward", "Backward")):
        names = {name + suffix for name in RECURRENCE_EVENTS}
        events = profiles[direction].key_averages(group_by_input_shape=True)
        recurrence[direction] = sum(e.cpu_time_total for e in events if e.key in names) / 1e6
        ranked = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
        ops[direction] = tuple((e.key, str(e.input_shapes), e.self_cpu_time_total / 1e6 / repeats)
                               for e in ranked)
    return StepProfile(spans["forward"] / repeats, spans["backward"] / repeats,
                       recurrence["forward"] / repeats, recurrence["backward"] / repeats,
                       ops["forward"], ops["backward"])


@dataclass(frozen=True)
class RecurrenceShare:
    """Wall time of a forward and a backward pass and of the recurrence inside them.

    Timed in place, without a profiler (whose per-operator overhead, measured at B=128,
    made the forward of ``delta_cde`` 52 ms instead of 37 ms): medians over passes.

    Attributes:
        forward_s, backward_s: the whole model's forward and backward.
        recurrence_forward_s, recurrence_backward_s: the recurrence's autograd node in
            each (its ``apply``, and its backward from pre-hook to hook).
    """

    forward_s: float
    backward_s: float
    recurrence_forward_s: float
    recurrence_backward_s: float

    @property
    def outside_share(self) -> float:
        """Share of forward+backward time spent outside the recurrence."""
        inside = self.recurrence_forward_s + self.recurrence_backward_s
        return 1.0 - inside / (self.forward_s + self.backward_s)


def _recurrence_functions() -> tuple[type, ...]:
    from .kernels import FusedKernelRecurrence, KernelRecurrence
    from .solvers import _FastRecurrence
    return KernelRecurrence, FusedKernelRecurrence, _FastRecurrence


def time_recurrence_share(model: nn.Module, x: Tensor, coeffs: Tensor, repeats: int = 5
                          ) -> RecurrenceShare:
    """Time ``model``'s forward and backward, and its recurrence inside them.

    The recurrences' autograd functions (:data:`RECURRENCE_EVENTS`) are wrapped for the
    call: each ``apply`` is timed, and hooks on the node it returns time its backward.
    One untimed forward+backward runs first. A model whose rule has no time loop
    (Hebb) has no recurrence node: its recurrence times are 0.

    Args:
        model: a model taking ``(x, coeffs=coeffs)`` (loss: the sum of squared logits).
        x, coeffs: its inputs.
        repeats: timed passes (medians are reported).
    """
    inside = {"forward": 0.0, "backward": 0.0}
    started: list[float] = []

    def before(grad_outputs):
        started.append(time.perf_counter())

    def after(grad_inputs, grad_outputs):
        inside["backward"] += time.perf_counter() - started.pop()

    def timed(original: Callable) -> Callable:
        def apply(*args):
            start = time.perf_counter()
            out = original(*args)
            inside["forward"] += time.perf_counter() - start
            if out.grad_fn is not None:
                out.grad_fn.register_prehook(before)
                out.grad_fn.register_hook(after)
            return out
        return apply

    functions = _recurrence_functions()
    own = {function: function.__dict__.get("apply") for function in functions}
    for function in functions:
        function.apply = timed(function.apply)
    passes = {"forward": [], "backward": [], "recurrence_forward": [], "recurrence_backward": []}
    try:
        for round_ in range(repeats + 1):
            model.zero_grad(set_to_none=True)
            inside.update(forward=0.0, backward=0.0)
            start = time.perf_counter()
            loss = model(x, coeffs=coeffs).square().sum()
            middle = time.perf_counter()
            loss.backward()
            end = time.perf_counter()
            if round_:  # the first pass warms up
                passes["forward"].append(middle - start)
                passes["backward"].append(end - middle)
                passes["recurrence_forward"].append(inside["forward"])
                passes["recurrence_backward"].append(inside["backward"])
    finally:
        for function, apply in own.items():
            if apply is None:
                del function.apply
            else:
                function.apply = apply
    return RecurrenceShare(*(median(passes[key]) for key in (
        "forward", "backward", "recurrence_forward", "recurrence_backward")))


def forward_backward(model: nn.Module, x: Tensor, coeffs: Tensor) -> None:
    """One forward and backward of ``model`` on ``x`` (loss: the sum of squared logits)."""
    model.zero_grad(set_to_none=True)
    model(x, coeffs=coeffs).square().sum().backward()


@dataclass(frozen=True)
class SolverTiming:
    """One solver's result in :func:`time_solvers`.

    Attributes:
        solver: the name in :data:`SOLVER_OPTIONS`.
        runs: what actually ran (``model.selected_solver``): ``"reference"``,
            ``"stepwise"``, ``"fast"`` or ``"kernel"``.
        seconds: median forward+backward wall time.
        saved_mb: MiB autograd keeps for the backward.
        speedup: the first solver's seconds over this one's.
    """

    solver: str
    runs: str
    seconds: float
    saved_mb: float
    speedup: float


def time_solvers(device: Device, batch: int, solvers: Sequence[str] = ("reference", "adjoint",
                                                                        "fast"),
                 model: str = "delta_cde", shape: Optional[dict] = None, repeats: int = 3,
                 warmup: int = 1, seed: int = 0) -> list[SolverTiming]:
    """Forward+backward time and saved memory of one model solved several ways.

    Every solver gets the same weights (built with the same seed) and the same random
    series on ``device``; the interpolation coefficients are computed once, outside
    the timing. Speed-ups are relative to the first solver.

    Args:
        device: where the model and data live (``"cpu"``, ``"cuda"``, ...).
        batch: series per forward+backward.
        solvers: names in :data:`SOLVER_OPTIONS`, the baseline first.
        model: a continuous FWP name.
        shape: ``length``, ``channels``, ``hidden_channels``, ``num_heads``,
            ``ff_channels`` and ``classes``; default :data:`SPEECH_COMMANDS`.
        repeats, warmup: as :func:`time_round_robin`.
        seed: seeds the weights and the series.

    Returns:
        One :class:`SolverTiming` per solver, in the order given.
    """
    unknown = [name for name in solvers if name not in SOLVER_OPTIONS]
    if unknown or not solvers:
        raise ValueError(f"solvers: expected names from {list(SOLVER_OPTIONS)}, got "
                         f"{list(solvers)}")
    size = dict(SPEECH_COMMANDS if shape is None else shape)
    x = random_series(batch, size["length"], size["channels"], seed=seed, device=device)
    coeffs = interpolation_coeffs(x)
    models = {}
    for name in solvers:
        torch.manual_seed(seed)
        models[name] = build_model(
            model, size["channels"], size["classes"], hidden_channels=size["hidden_channels"],
            num_heads=size["num_heads"], ff_channels=size["ff_channels"],
            **SOLVER_OPTIONS[name]).to(device)
    times = time_round_robin({name: (lambda m=m: forward_backward(m, x, coeffs))
                              for name, m in models.items()}, repeats, warmup, device)
    baseline = median(times[solvers[0]])
    results = []
    for name, built in models.items():
        seconds = median(times[name])
        saved = saved_tensor_bytes(lambda m=built: m(x, coeffs=coeffs).square().sum())
        results.append(SolverTiming(name, built.selected_solver(), seconds, saved / 2**20,
                                    baseline / seconds))
    return results

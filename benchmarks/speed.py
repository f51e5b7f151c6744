"""Fast fixed-grid paths vs the torchdiffeq reference path of the same model.

At the paper's Speech Commands shape (161 observation times, 20 MFCC + time = 21
channels, hidden 80, 4 heads, feed-forward 320; batch 128 on CPU, 1024 on GPU)
this times the forward and the forward+backward of every solver of one model
with the same weights, in one process after warm-up (medians, see
fwplab.benchmarking), and measures memory (saved bytes, and peak RSS growth in a
subprocess, see common.py).

Solvers (``--solvers``): ``reference`` (torchdiffeq ``odeint``, backprop through
the solver), ``adjoint`` (``odeint_adjoint``, the paper's setting), ``stepwise``
(fixed-grid loop recorded op by op by autograd), ``fast`` (pure PyTorch, one
hand-written backward), ``fast-bounded`` (the same, fast weights kept every 16
steps and recomputed), ``kernel`` (compiled C++ recurrence, checkpoints every 16),
``fused`` (the same kernel computing the slow net's controls itself, segment by
segment inside the time loop: what ``auto`` runs on the CPU).

Every result is also given as a multiple of the compute floor: the FLOP count of
``fwplab.benchmarking.fast_path_flops`` at the float32 matrix-product rate measured
here (with the threads in use; the rates on 1 and 2 threads are printed too).
On the CPU the fast solvers are then timed again in the same process after
``fwplab.retain_freed_memory()`` (glibc keeps the memory a step frees instead of
returning it, so the next step's tensors take no page faults; ``--no-retain-freed-memory``
leaves this out): both tables are printed and saved. ``--profile`` adds, per batch and
fast solver: the share of forward+backward time spent outside the recurrence and the
recurrence's arithmetic rate per core as a fraction of the one-thread matrix-product
rate, timed in place without a profiler (``timed``:
``fwplab.benchmarking.time_recurrence_share``); a torch.profiler breakdown of the
forward and backward (most expensive operators; the profiler's overhead inflates small
operators, so its shares are printed beside the timed ones); and the kernel on 1 and 2
threads.

Examples::

    python benchmarks/speed.py --batch 32,128 --json benchmarks/results/speed_cpu.json
    python benchmarks/speed.py --device cuda --batch 1024 --solvers reference,fast
    python benchmarks/speed.py --batch 32,128 --profile --json benchmarks/results/speed_cpu.json
    python benchmarks/speed.py --smoke
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import common
import fwplab
from fwplab import kernels
from fwplab.benchmarking import (
    SOLVER_OPTIONS,
    SPEECH_COMMANDS,
    fast_path_flops,
    forward_backward,
    matmul_gflops,
    median,
    profile_step,
    time_recurrence_share,
    random_series,
    recurrence_flops,
    saved_tensor_bytes,
    time_round_robin,
)

SOLVERS = {name: options for name, options in SOLVER_OPTIONS.items() if name != "auto"}
DEFAULT_SOLVERS = "reference,adjoint,fast,fast-bounded,kernel,fused"
PROFILED_SOLVERS = ("fast", "kernel", "fused")  # one autograd node for the recurrence
RETAINED_SOLVERS = ("fast", "fast-bounded", "kernel", "fused")  # timed again, freed memory kept
#: The solvers whose recurrence node also computes the slow net (its FLOPs count inside).
FUSED_SOLVERS = ("fused",)
PROFILED_OPERATORS = 12
SMOKE = dict(length=12, channels=5, hidden_channels=8, num_heads=2, ff_channels=16, classes=3)


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="delta_cde", help="a continuous FWP name")
    parser.add_argument("--batch", default="128", help="batch sizes, comma separated")
    parser.add_argument("--solvers", default=DEFAULT_SOLVERS, help=f"from {list(SOLVERS)}")
    parser.add_argument("--post-tanh", action="store_true", help="delta rule with post_tanh")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--rss", default=None,
                        help="solvers whose peak RSS growth to measure in a subprocess "
                             "(default all on CPU; 'none' to skip)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--retain-freed-memory", action=argparse.BooleanOptionalAction,
                        default=True,
                        help="CPU: afterwards, time the fast solvers again in the same process "
                             "after fwplab.retain_freed_memory() (default: on)")
    parser.add_argument("--profile", action="store_true",
                        help="per-operator profile of the fast solvers, share outside the "
                             "recurrence, its rate vs the matrix-product rate, 1 vs 2 threads")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes, one round: checks that the script runs")
    parser.add_argument("--measure-rss", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def shape(arguments) -> dict:
    return SMOKE if arguments.smoke else SPEECH_COMMANDS


def build(arguments, config: str, batch: int):
    """The model of ``config`` (same weights for every config) and its inputs."""
    size = shape(arguments)
    torch.manual_seed(0)
    options = {"post_tanh": True} if arguments.post_tanh else {}
    model = fwplab.build_model(
        arguments.model, size["channels"], size["classes"],
        hidden_channels=size["hidden_channels"], num_heads=size["num_heads"],
        ff_channels=size["ff_channels"], **options, **SOLVERS[config],
    ).to(arguments.device)
    x = random_series(batch, size["length"], size["channels"], device=arguments.device)
    coeffs = fwplab.interpolation_coeffs(x)
    return model, x, coeffs


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def forward_only(model, x, coeffs) -> None:
    with torch.no_grad():
        model(x, coeffs=coeffs)


def floor_flops(arguments, batch: int, backward: bool = True) -> float:
    """Floating point operations of one forward(+backward) of the fast path (estimate)."""
    size = shape(arguments)
    return fast_path_flops(arguments.model, size["channels"], size["hidden_channels"],
                           size["num_heads"], size["length"], batch, backward=backward)


def profile(arguments, batch: int, configs: list[str], rates: dict[int, float]) -> dict:
    """The ``--profile`` section of one batch size (see the module docstring).

    Args:
        rates: measured matrix-product GFLOP/s by thread count (1 is required).
    """
    size = shape(arguments)
    threads = torch.get_num_threads()
    section = {"solvers": {}}
    for config in (c for c in configs if c in PROFILED_SOLVERS):
        flops = (fast_path_flops(arguments.model, size["channels"], size["hidden_channels"],
                                 size["num_heads"], size["length"], batch)
                 if config in FUSED_SOLVERS else
                 recurrence_flops(arguments.model, size["hidden_channels"], size["num_heads"],
                                  size["length"], batch))
        model, x, coeffs = build(arguments, config, batch)
        found = profile_step(model, x, coeffs, repeats=arguments.repeats,
                             top=PROFILED_OPERATORS)
        inside = found.recurrence_forward_s + found.recurrence_backward_s
        per_core = flops / inside / 1e9 / threads
        timed = time_recurrence_share(model, x, coeffs, repeats=arguments.repeats)
        timed_inside = timed.recurrence_forward_s + timed.recurrence_backward_s
        timed_per_core = flops / timed_inside / 1e9 / threads
        section["solvers"][config] = {
            "timed": {"forward_s": timed.forward_s, "backward_s": timed.backward_s,
                      "recurrence_forward_s": timed.recurrence_forward_s,
                      "recurrence_backward_s": timed.recurrence_backward_s,
                      "outside_share": timed.outside_share,
                      "recurrence_gflops_per_core": timed_per_core,
                      "recurrence_vs_matmul_per_core": timed_per_core / rates[1]},
            "forward_s": found.forward_s, "backward_s": found.backward_s,
            "recurrence_forward_s": found.recurrence_forward_s,
            "recurrence_backward_s": found.recurrence_backward_s,
            "outside_share": found.outside_share, "recurrence_gflop": flops / 1e9,
            "recurrence_gflops_per_core": per_core,
            "recurrence_vs_matmul_per_core": per_core / rates[1],
            "forward_ops": [list(op) for op in found.forward_ops],
            "backward_ops": [list(op) for op in found.backward_ops]}
        print(f"\ntimed, batch {batch}, {config} ({threads} threads; no profiler): forward "
              f"{timed.forward_s:.4f} s (recurrence {timed.recurrence_forward_s:.4f} s), backward "
              f"{timed.backward_s:.4f} s (recurrence {timed.recurrence_backward_s:.4f} s)")
        print(f"  outside the recurrence: {100 * timed.outside_share:.0f} % of fwd+bwd; "
              f"recurrence at {timed_per_core:.1f} GFLOP/s per core = "
              f"{100 * timed_per_core / rates[1]:.0f} % of the one-thread matrix-product rate")
        print(f"profile, batch {batch}, {config} ({threads} threads; profiler running): "
              f"forward {found.forward_s:.4f} s (recurrence {found.recurrence_forward_s:.4f} s), "
              f"backward {found.backward_s:.4f} s (recurrence {found.recurrence_backward_s:.4f} s)")
        print(f"  outside the recurrence: {100 * found.outside_share:.0f} % of fwd+bwd; "
              f"recurrence {flops / 1e9:.2f} GFLOP at {per_core:.1f} GFLOP/s per core = "
              f"{100 * per_core / rates[1]:.0f} % of the one-thread matrix-product rate "
              f"({rates[1]:.1f} GFLOP/s)")
        for direction, ops in (("forward", found.forward_ops), ("backward", found.backward_ops)):
            print(f"  {direction}, most expensive operators (self time per pass):")
            for name, shapes, seconds in ops:
                print(f"    {1e3 * seconds:8.2f} ms  {name[:40]:40s} {shapes[:70]}")
    for config in (c for c in ("kernel", "fused") if c in configs):
        section[f"{config}_threads"] = kernel_threads(arguments, batch, config)
    return section


def kernel_threads(arguments, batch: int, config: str) -> list[dict]:
    """A compiled solver's forward and forward+backward on 1 and 2 threads, in turns."""
    model, x, coeffs = build(arguments, config, batch)
    restore = torch.get_num_threads()

    def on(threads, run):
        def timed():
            torch.set_num_threads(threads)
            run(model, x, coeffs)
        return timed

    runs = {(threads, name): on(threads, run) for threads in (1, 2)
            for name, run in (("forward_s", forward_only),
                              ("forward_backward_s", forward_backward))}
    try:
        times = time_round_robin(runs, arguments.repeats, arguments.warmup, arguments.device)
    finally:
        torch.set_num_threads(restore)
    rows = [{"threads": threads, **{name: median(times[threads, name])
                                    for name in ("forward_s", "forward_backward_s")}}
            for threads in (1, 2)]
    print(f"{config}, batch {batch}: " + "; ".join(
        f"{row['threads']} thread(s) fwd {row['forward_s']:.4f} s, fwd+bwd "
        f"{row['forward_backward_s']:.4f} s" for row in rows))
    return rows


def measure(arguments, batch: int, configs: list[str]) -> list[dict]:
    built = {config: build(arguments, config, batch) for config in configs}
    for config, (model, _, _) in built.items():
        print(f"  {config}: solver {model.selected_solver(arguments.device)}", file=sys.stderr)
    print(f"batch {batch}: timing forward", file=sys.stderr)
    forward_times = time_round_robin(
        {c: (lambda b=b: forward_only(*b)) for c, b in built.items()},
        arguments.repeats, arguments.warmup, arguments.device, report=progress)
    print(f"batch {batch}: timing forward+backward", file=sys.stderr)
    backward_times = time_round_robin(
        {c: (lambda b=b: forward_backward(*b)) for c, b in built.items()},
        arguments.repeats, arguments.warmup, arguments.device, report=progress)
    rss = configs if arguments.rss is None else [
        c for c in arguments.rss.split(",") if c in configs]
    rows = []
    for config, (model, x, coeffs) in built.items():
        row = {"batch": batch, "solver": config, "runs": model.selected_solver(arguments.device),
               "forward_s": median(forward_times[config]),
               "forward_backward_s": median(backward_times[config]),
               "forward_times": forward_times[config],
               "forward_backward_times": backward_times[config],
               "saved_mb": saved_tensor_bytes(
                   lambda m=model, x=x, c=coeffs: m(x, coeffs=c).square().sum()) / 2**20}
        if arguments.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
            forward_backward(model, x, coeffs)
            row["peak_mb"] = (torch.cuda.max_memory_allocated() - start) / 2**20
        elif config in rss:
            growth = common.rss_growth_in_subprocess(Path(__file__), rss_arguments(
                arguments, config, batch))
            row["peak_mb"] = None if growth is None else growth / 2**20
        rows.append(row)
    reference = next((r for r in rows if r["solver"] == "reference"), None)
    adjoint = next((r for r in rows if r["solver"] == "adjoint"), None)
    for row in rows:
        if reference:
            row["forward_speedup"] = reference["forward_s"] / row["forward_s"]
            row["speedup"] = reference["forward_backward_s"] / row["forward_backward_s"]
        if adjoint and adjoint.get("peak_mb") and row.get("peak_mb") is not None:
            row["peak_vs_adjoint"] = row["peak_mb"] / adjoint["peak_mb"]
    return rows


def rss_arguments(arguments, config: str, batch: int) -> list[str]:
    flags = ["--config", config, "--batch", str(batch), "--model", arguments.model,
             "--device", arguments.device, "--threads", str(torch.get_num_threads())]
    return flags + (["--smoke"] if arguments.smoke else []) + (
        ["--post-tanh"] if arguments.post_tanh else [])


def run_batches(arguments, configs: list[str], gflops: float, rates: dict[int, float]) -> list[dict]:
    """Time (and with ``--profile`` profile) ``configs`` at every batch size; print tables."""
    results = []
    for batch in (int(b) for b in arguments.batch.split(",")):
        rows = measure(arguments, batch, configs)
        flops = floor_flops(arguments, batch)
        floor = flops / (gflops * 1e9)
        forward_floor = floor_flops(arguments, batch, backward=False) / (gflops * 1e9)
        for row in rows:
            row["floor_x"] = row["forward_backward_s"] / floor
            row["forward_floor_x"] = row["forward_s"] / forward_floor
        print(f"\n{arguments.model}, batch {batch}, {shape(arguments)}, "
              f"{torch.get_num_threads()} threads, device {arguments.device}")
        common.print_table(rows, [
            ("solver", "solver", "s"), ("runs", "runs", "s"),
            ("forward_s", "fwd s", ".4f"), ("forward_speedup", "fwd x", ".1f"),
            ("forward_floor_x", "fwd/floor", ".1f"),
            ("forward_backward_s", "fwd+bwd s", ".4f"), ("speedup", "fwd+bwd x", ".1f"),
            ("floor_x", "fwd+bwd/floor", ".1f"),
            ("saved_mb", "saved MB", ".1f"), ("peak_mb", "peak RSS MB", ".1f"),
            ("peak_vs_adjoint", "peak/adjoint", ".2f")])
        best = min(r["forward_backward_s"] for r in rows)
        print(f"floor: {flops / 1e9:.2f} GFLOP at the measured {gflops:.1f} GFLOP/s matrix "
              f"product rate = {floor:.3f} s (forward only {forward_floor:.4f} s); fastest "
              f"here {best:.3f} s = {best / floor:.1f}x the floor")
        result = {"batch": batch, "rows": rows, "floor_gflop": flops / 1e9,
                  "matmul_gflops": gflops, "matmul_gflops_by_threads": rates, "floor_s": floor,
                  "forward_floor_s": forward_floor}
        if arguments.profile:
            result["profile"] = profile(arguments, batch, configs, rates)
        results.append(result)
    return results


def main(argv=None) -> None:
    arguments = parse_arguments(argv)
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    if arguments.measure_rss:
        model, x, coeffs = build(arguments, arguments.config, int(arguments.batch))
        common.report_rss_growth(lambda: forward_backward(model, x, coeffs))
        return
    if arguments.smoke:
        arguments.batch, arguments.repeats = "4", 1
        arguments.rss = arguments.rss or "fast"
    configs = [c.strip() for c in arguments.solvers.split(",")]
    unknown = [c for c in configs if c not in SOLVERS]
    if unknown:
        raise SystemExit(f"--solvers: unknown {unknown}; expected names from {list(SOLVERS)}")
    if "kernel" in configs and not (arguments.device == "cpu" and kernels.available()):
        print("kernel: not available here (CPU only, needs a compiler); left out",
              file=sys.stderr)
        configs.remove("kernel")
    if "kernel" in configs:
        print(f"kernel ready after {kernels.build_seconds():.1f} s (build or cache)",
              file=sys.stderr)
    gflops = matmul_gflops(arguments.device)
    rates = ({count: matmul_gflops(arguments.device, threads=count) for count in (1, 2)}
             if arguments.device == "cpu" else {})
    if rates:
        print(f"float32 matrix products: {rates[1]:.1f} GFLOP/s on 1 thread, {rates[2]:.1f} "
              f"on 2; {gflops:.1f} with the {torch.get_num_threads()} threads in use",
              file=sys.stderr)
    results = run_batches(arguments, configs, gflops, rates)
    retained = []
    fast = [c for c in configs if c in RETAINED_SOLVERS]
    if arguments.retain_freed_memory and arguments.device == "cpu" and fast:
        if fwplab.retain_freed_memory():
            print("\n=== the same process after fwplab.retain_freed_memory() (glibc keeps freed "
                  "memory: no page faults on the next step's tensors) ===")
            retained = run_batches(argparse.Namespace(**{**vars(arguments), "rss": "none"}),
                                   fast, gflops, rates)
        else:
            print("retain_freed_memory: not glibc here; left out", file=sys.stderr)
    print("\nmemory: 'saved MB' = tensors autograd keeps for the backward; 'peak RSS MB' = "
          "growth of peak resident memory during one forward+backward in a fresh process")
    common.write_json(arguments.json, {
        "benchmark": "speed", "model": arguments.model, "post_tanh": arguments.post_tanh,
        "shape": shape(arguments), "device": arguments.device,
        "environment": common.environment(),
        "kernel_build_s": kernels.build_seconds(), "results": results,
        "results_freed_memory_retained": retained})


if __name__ == "__main__":
    main()

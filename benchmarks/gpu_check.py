"""One command that tells whether fwplab works, and how fast, on a CUDA GPU.

    python benchmarks/gpu_check.py                  # on a machine with CUDA (or: make gpu-check)
    python benchmarks/gpu_check.py --dry-run        # the same steps on the CPU at toy sizes (CI)

Steps, each recorded in one JSON report (default ``build/gpu_check.json``):

1. the machine: torch and CUDA versions, the device, its measured matrix-product rate;
2. the CUDA tests of the suite (``pytest -k "cuda or gpu"``);
3. parity: every model's logits on the device (automatic solver) against the CPU
   torchdiffeq reference with the same weights;
4. the Triton recurrence (solver ``"triton"``, :mod:`fwplab.kernels.triton_recurrence`):
   logits (within 1e-5) and parameter gradients (within 1e-4 of the largest) against the
   pure-PyTorch fast path, for the delta, post-tanh delta and Oja rules, every fixed-grid
   method, variable lengths and two checkpoint intervals; the dry run checks three cases
   in Triton's interpreter on the CPU and compiles both kernels for an H100/H200 (sm_90);
5. ``delta_cde`` forward+backward at the paper's Speech Commands shape (161 steps,
   21 channels, hidden 80, 4 heads, FF 320) at the paper's batch 1024 with the torchdiffeq
   reference, the adjoint, the fast path and the Triton recurrence (CUDA synchronised,
   medians), each also as a multiple of the compute floor (the FLOP estimate of
   :func:`fwplab.benchmarking.fast_path_flops` at the measured matrix-product rate);
6. one training epoch on a synthetic Speech-Commands-shaped set.

Without a CUDA GPU it says "no GPU found" and runs the dry run instead. It prints what it
skipped and why, and exits 1 on any mismatch or failure (the report is written first). On
one GPU it takes a few minutes; the dry run, well under one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import fwplab
from fwplab import solvers
from fwplab.benchmarking import (SPEECH_COMMANDS, fast_path_flops, forward_backward,
                                 matmul_gflops, median, random_series, saved_tensor_bytes,
                                 time_round_robin)
from fwplab.data import Dataset
from fwplab.data.dataset import Split
from fwplab.kernels import triton_recurrence
from fwplab.paths import interpolation_coeffs

REPO = Path(__file__).resolve().parents[1]
#: Largest |logit| difference accepted between the device and the CPU reference.
PARITY_ATOL = 1e-4
#: A toy shape for the dry run.
TOY_SHAPE = dict(length=12, channels=5, hidden_channels=16, num_heads=2, ff_channels=32,
                 classes=3)
#: The Triton recurrence against the fast path: largest |logit| difference, and gradient
#: difference over the largest gradient entry of each parameter.
TRITON_LOGITS_ATOL = 1e-5
TRITON_GRAD_RTOL = 1e-4
#: The rules the Triton recurrence runs: model name and options.
TRITON_MODELS = (("delta_cde", {}), ("delta_ode", {"post_tanh": True}), ("oja_cde", {}))
#: A shape small enough for Triton's interpreter (the dry run).
INTERPRETER_SHAPE = dict(length=4, channels=4, hidden_channels=8, num_heads=2, ff_channels=16,
                         classes=3)
#: Build options of each timed solver (delta_cde).
TIMED_SOLVERS = {"reference": dict(solver="reference"),
                 "adjoint": dict(solver="reference", adjoint=True),
                 "fast": dict(solver="fast"), "triton": dict(solver="triton")}
#: What the Triton recurrence aims at, at batch 1024 on one GPU: its speed-up over these.
TRITON_TARGETS = {"fast": 10.0, "adjoint": 100.0}
#: What the dry run checks, said when no GPU is found.
DRY_RUN_CHECKS = ("the same steps on the CPU at toy sizes: every model's logits against the "
                  "torchdiffeq reference, the Triton recurrence in Triton's interpreter "
                  "against the fast path and compiled for sm_90, solver timings, one "
                  "training epoch; no CUDA test runs and no GPU speed is measured")


def machine(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "cuda": torch.version.cuda,
            "matmul_gflops": round(matmul_gflops(device), 1)}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


def cuda_tests() -> dict:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k",
               "cuda or gpu", str(REPO / "tests")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    summary = (result.stdout.strip().splitlines() or [""])[-1]
    return {"command": " ".join(command[1:]), "returncode": result.returncode,
            "summary": summary, "ok": result.returncode == 0,
            "failures": result.stdout[-4000:] if result.returncode else ""}


def parity(device: torch.device, shape: dict) -> list[dict]:
    x = random_series(3, shape["length"], shape["channels"], seed=1)
    lengths = torch.tensor([shape["length"], shape["length"] - 2, 2])
    rows = []
    for name in fwplab.MODELS:
        torch.manual_seed(0)
        fast_weights = isinstance(fwplab.MODELS[name], tuple)  # a continuous FWP
        options = dict(num_heads=shape["num_heads"],
                       ff_channels=shape["ff_channels"]) if fast_weights else {}
        reference = fwplab.build_model(name, shape["channels"], shape["classes"],
                                       hidden_channels=shape["hidden_channels"], **options)
        on_device = fwplab.build_model(**reference.config).to(device)
        on_device.load_state_dict(reference.state_dict())
        if fast_weights:
            reference.solver = "reference"
        with torch.no_grad():
            expected = reference(x, lengths=lengths)
            got = on_device(x.to(device), lengths=lengths.to(device)).cpu()
        difference = float((got - expected).abs().max())
        solver = on_device.selected_solver() if fast_weights else "own"
        rows.append({"model": name, "solver": solver, "max_abs_difference": difference,
                     "ok": difference <= PARITY_ATOL})
    return rows


@contextlib.contextmanager
def _interpreter(on: bool):
    """``TRITON_INTERPRET=1`` inside (the Triton recurrence reads it at each call)."""
    before = os.environ.get("TRITON_INTERPRET")
    if on:
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if on:
            if before is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = before


def _logits_and_grads(model, x, lengths):
    model.zero_grad()
    logits = model(x, lengths=lengths)
    logits.square().sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                             if p.grad is not None}


def triton_parity(device: torch.device, dry_run: bool) -> list[dict]:
    """The Triton recurrence against the fast path on ``device`` (see step 4)."""
    if dry_run:
        cases = [(name, options, method, 2) for (name, options), method in
                 zip(TRITON_MODELS, ("rk4", "midpoint", "heun3"), strict=True)]
        shape = INTERPRETER_SHAPE
    else:
        cases = [(name, options, method, every) for name, options in TRITON_MODELS
                 for method in solvers.TABLEAUS for every in (None, 3)]
        shape = TOY_SHAPE
    x = random_series(3, shape["length"], shape["channels"], seed=2).to(device)
    lengths = torch.tensor([shape["length"], shape["length"] - 1, 2], device=device)
    rows = []
    with _interpreter(device.type == "cpu"):
        for name, options, method, every in cases:
            built = {}
            for solver in ("fast", "triton"):
                torch.manual_seed(0)
                built[solver] = fwplab.build_model(
                    name, shape["channels"], shape["classes"],
                    hidden_channels=shape["hidden_channels"], num_heads=shape["num_heads"],
                    ff_channels=shape["ff_channels"], method=method, solver=solver,
                    checkpoint_every=every, **options).to(device)
            expected, expected_grads = _logits_and_grads(built["fast"], x, lengths)
            logits, grads = _logits_and_grads(built["triton"], x, lengths)
            difference = float((logits - expected).abs().max())
            relative = max(float((grads[key] - grad).abs().max()
                                 / grad.abs().max().clamp(min=1e-6))
                           for key, grad in expected_grads.items())
            rows.append({"model": name, "options": options, "method": method,
                         "checkpoint_every": every, "max_abs_difference": difference,
                         "grad_relative_difference": relative,
                         "ok": difference <= TRITON_LOGITS_ATOL and relative <= TRITON_GRAD_RTOL})
    return rows


def triton_compile() -> dict:
    """Both kernels compiled for sm_90 (H100/H200) in float32 at the paper's head size."""
    start = time.perf_counter()
    sizes = triton_recurrence.compile_for(90, d=SPEECH_COMMANDS["hidden_channels"]
                                          // SPEECH_COMMANDS["num_heads"])
    return {"target": "cuda sm_90", "cubin_bytes": sizes,
            "seconds": round(time.perf_counter() - start, 1),
            "ok": all(size > 0 for size in sizes.values())}


def timings(device: torch.device, batch: int, shape: dict, repeats: int,
            names: tuple[str, ...], gflops: float) -> list[dict]:
    """``delta_cde`` forward+backward by solver: median seconds, the speed-up over the
    first, the MiB autograd keeps, and the multiple of the compute floor."""
    x = random_series(batch, shape["length"], shape["channels"], seed=0, device=device)
    coeffs = interpolation_coeffs(x)
    models = {}
    for name in names:
        torch.manual_seed(0)
        models[name] = fwplab.build_model(
            "delta_cde", shape["channels"], shape["classes"],
            hidden_channels=shape["hidden_channels"], num_heads=shape["num_heads"],
            ff_channels=shape["ff_channels"], **TIMED_SOLVERS[name]).to(device)
    times = time_round_robin({name: (lambda m=m: forward_backward(m, x, coeffs))
                              for name, m in models.items()}, repeats, 1, device)
    floor = fast_path_flops("delta_cde", shape["channels"], shape["hidden_channels"],
                            shape["num_heads"], shape["length"], batch) / (gflops * 1e9)
    baseline = median(times[names[0]])
    rows = []
    for name, model in models.items():
        seconds = median(times[name])
        saved = saved_tensor_bytes(lambda m=model: m(x, coeffs=coeffs).square().sum())
        rows.append({"solver": name, "runs": model.selected_solver(), "seconds": seconds,
                     "saved_mb": saved / 2**20, "speedup": baseline / seconds,
                     "floor_x": seconds / floor})
    return rows


def triton_speedups(rows: list[dict]) -> dict:
    """The Triton recurrence's speed-up over each solver of :data:`TRITON_TARGETS`."""
    seconds = {row["solver"]: row["seconds"] for row in rows}
    return {name: {"speedup": seconds[name] / seconds["triton"], "target": target,
                   "met": seconds[name] / seconds["triton"] >= target}
            for name, target in TRITON_TARGETS.items()}


def training_epoch(device: torch.device, series: int, shape: dict) -> dict:
    def split(seed: int) -> Split:
        x = random_series(series, shape["length"], shape["channels"], seed=seed)
        y = torch.randint(0, shape["classes"], (series,),
                          generator=torch.Generator().manual_seed(seed))
        return Split(x, torch.full((series,), shape["length"]), y,
                     torch.arange(shape["length"], dtype=torch.float32))

    channels = ("time",) + tuple(f"c{i}" for i in range(1, shape["channels"]))
    data = Dataset("synthetic-speech-commands-shape", split(0), None, split(1),
                   tuple(str(c) for c in range(shape["classes"])), channels)
    torch.manual_seed(0)
    model = fwplab.build_model("delta_cde", shape["channels"], shape["classes"],
                               hidden_channels=shape["hidden_channels"],
                               num_heads=shape["num_heads"],
                               ff_channels=shape["ff_channels"]).to(device)
    start = time.perf_counter()
    history = fwplab.fit(model, data, epochs=1, batch_size=min(128, series), progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    record = history.records[-1]
    loss = record.train_loss
    return {"series": series, "seconds": round(seconds, 3), "train_loss": loss,
            "ok": loss == loss and abs(loss) != float("inf")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="run every step on the CPU at toy sizes (what CI runs)")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "gpu_check.json",
                        help="the JSON report (default: build/gpu_check.json)")
    parser.add_argument("--batch", type=int, default=1024, help="timing batch on the GPU")
    args = parser.parse_args(argv)
    dry_run = args.dry_run or not torch.cuda.is_available()
    if dry_run and not args.dry_run:
        print(f"gpu_check: no GPU found (torch sees no CUDA device); running the dry run "
              f"instead: {DRY_RUN_CHECKS}")
    if dry_run:
        device, shape, batch, series, repeats = torch.device("cpu"), TOY_SHAPE, 8, 32, 1
    else:
        device, shape, batch, series, repeats = (torch.device("cuda"), SPEECH_COMMANDS,
                                                 args.batch, 1024, 3)
    report = {"dry_run": dry_run, "machine": machine(device), "skipped": {}}
    print(f"gpu_check on {report['machine'].get('device_name', device)}: "
          f"{report['machine']['matmul_gflops']} GFLOP/s float32 matrix products")
    if device.type == "cuda":
        report["cuda_tests"] = cuda_tests()
        print(f"CUDA tests: {report['cuda_tests']['summary']}")
    else:
        report["skipped"]["cuda_tests"] = "dry run: no GPU, the CUDA tests would all skip"
    report["parity"] = parity(device, TOY_SHAPE)
    for row in report["parity"]:
        print(f"parity {row['model']:10s} {row['solver']:9s} max |diff| "
              f"{row['max_abs_difference']:.2e}{'' if row['ok'] else '  MISMATCH'}")
    names = ("reference", "adjoint", "fast")
    if not triton_recurrence.available():
        report["skipped"]["triton"] = "Triton is not installed (pip install 'fwplab[gpu]')"
    else:
        report["triton_parity"] = triton_parity(device, dry_run)
        for row in report["triton_parity"]:
            print(f"triton parity {row['model']:9s} {row['method']:8s} "
                  f"K={row['checkpoint_every']}: max |diff| {row['max_abs_difference']:.2e}, "
                  f"gradients {row['grad_relative_difference']:.2e} of the largest"
                  f"{'' if row['ok'] else '  MISMATCH'}")
        if dry_run:
            report["triton_compile"] = triton_compile()
            print(f"triton kernels compiled for {report['triton_compile']['target']} in "
                  f"{report['triton_compile']['seconds']} s: "
                  f"{report['triton_compile']['cubin_bytes']} bytes")
            report["skipped"]["triton_timing"] = ("dry run: on the CPU the Triton recurrence "
                                                  "runs only in its interpreter; GPU speed is "
                                                  "not measured")
        else:
            names += ("triton",)
    report["timings"] = timings(device, batch, shape, repeats, names,
                                report["machine"]["matmul_gflops"])
    for row in report["timings"]:
        print(f"batch {batch}: {row['solver']:9s} ({row['runs']}) {row['seconds']:.3f} s "
              f"fwd+bwd, {row['speedup']:.1f}x the reference, {row['floor_x']:.1f}x the "
              f"compute floor, {row['saved_mb']:.0f} MiB saved")
    if "triton" in names:
        report["triton_speedups"] = triton_speedups(report["timings"])
        for name, row in report["triton_speedups"].items():
            print(f"triton: {row['speedup']:.1f}x the {name} solver (target "
                  f"{row['target']:.0f}x: {'met' if row['met'] else 'NOT met'})")
    report["training"] = training_epoch(device, series, shape)
    print(f"one epoch, {series} series: {report['training']['seconds']} s, "
          f"loss {report['training']['train_loss']:.3f}")
    for step, why in report["skipped"].items():
        print(f"skipped {step}: {why}")
    failures = [f"parity of {r['model']}" for r in report["parity"] if not r["ok"]]
    failures += [f"triton parity of {r['model']} {r['method']} K={r['checkpoint_every']}"
                 for r in report.get("triton_parity", ()) if not r["ok"]]
    failures += [name for name in ("cuda_tests", "triton_compile", "training")
                 if name in report and not report[name]["ok"]]
    report["failures"] = failures
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    print(f"report: {args.out}")
    if failures:
        print(f"gpu_check FAILED: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

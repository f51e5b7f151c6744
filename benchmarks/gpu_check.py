"""One command that tells whether fwplab works, and how fast, on a CUDA GPU.

    python benchmarks/gpu_check.py                  # on a machine with CUDA (or: make gpu-check)
    python benchmarks/gpu_check.py --dry-run        # the same steps on the CPU at toy sizes (CI)

Steps, each recorded in one JSON report (default ``build/gpu_check.json``):

1. the machine: torch and CUDA versions, the device, its measured matrix-product rate;
2. the CUDA tests of the suite (``pytest -k "cuda or gpu"``);
3. parity: every model's logits on the device (automatic solver) against the CPU
   torchdiffeq reference with the same weights;
4. ``delta_cde`` forward+backward at the paper's Speech Commands shape (161 steps,
   21 channels, hidden 80, 4 heads, FF 320) at batch 1024 with the torchdiffeq
   reference, the adjoint and the fast path (CUDA synchronised, medians);
5. one training epoch on a synthetic Speech-Commands-shaped set.

It prints what it skipped and why, and exits 1 on any mismatch or failure (the report is
written first). On one GPU it takes a few minutes; the dry run, well under one.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

import fwplab
from fwplab.benchmarking import SPEECH_COMMANDS, matmul_gflops, random_series, time_solvers
from fwplab.data import Dataset
from fwplab.data.dataset import Split

REPO = Path(__file__).resolve().parents[1]
#: Largest |logit| difference accepted between the device and the CPU reference.
PARITY_ATOL = 1e-4
#: A toy shape for the dry run.
TOY_SHAPE = dict(length=12, channels=5, hidden_channels=16, num_heads=2, ff_channels=32,
                 classes=3)


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


def timings(device: torch.device, batch: int, shape: dict, repeats: int) -> list[dict]:
    results = time_solvers(device, batch, ("reference", "adjoint", "fast"), shape=shape,
                           repeats=repeats)
    return [asdict(result) for result in results]


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
    if args.dry_run:
        device, shape, batch, series, repeats = torch.device("cpu"), TOY_SHAPE, 8, 32, 1
    elif torch.cuda.is_available():
        device, shape, batch, series, repeats = (torch.device("cuda"), SPEECH_COMMANDS,
                                                 args.batch, 1024, 3)
    else:
        print("gpu_check: no CUDA GPU on this machine; run with --dry-run to check the "
              "steps on the CPU", file=sys.stderr)
        return 2
    report = {"dry_run": args.dry_run, "machine": machine(device), "skipped": {}}
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
    report["timings"] = timings(device, batch, shape, repeats)
    for row in report["timings"]:
        print(f"batch {batch}: {row['solver']:9s} ({row['runs']}) {row['seconds']:.3f} s "
              f"fwd+bwd, {row['speedup']:.1f}x the reference, {row['saved_mb']:.0f} MiB saved")
    report["training"] = training_epoch(device, series, shape)
    print(f"one epoch, {series} series: {report['training']['seconds']} s, "
          f"loss {report['training']['train_loss']:.3f}")
    for step, why in report["skipped"].items():
        print(f"skipped {step}: {why}")
    failures = [f"parity of {r['model']}" for r in report["parity"] if not r["ok"]]
    failures += [name for name in ("cuda_tests", "training")
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

"""Continuous FWP vs Neural CDE as the hidden size and the number of input channels grow.

The Neural CDE's vector field outputs an ``H x C`` matrix at every evaluation
(its last layer has ``H * C`` outputs), the FWP's slow net only keys, values and
rates (``2 H + heads`` outputs for a CDE-driven FWP), whatever ``C`` is. This
times one forward+backward of each model (medians in one process after warm-up,
see fwplab.benchmarking) and measures memory (saved bytes, optional peak RSS
growth in a subprocess; see common.py) over

* ``hidden``: H in 32..512 with the Speech Commands channels (21);
* ``channels``: C in 4..256 at H = 128.

The FWP runs with ``solver="auto"`` (the compiled kernel on CPU when it builds),
the Neural CDE with torchcde and torchdiffeq's rk4, both on the same grid.

Examples::

    python benchmarks/scaling.py --json benchmarks/results/scaling_cpu.json
    python benchmarks/scaling.py --sweep hidden --hidden 32,128,512 --rss
    python benchmarks/scaling.py --smoke
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import common
import fwplab
from fwplab.benchmarking import (
    field_outputs,
    forward_backward,
    median,
    random_series,
    saved_tensor_bytes,
    time_round_robin,
)

MODELS = ("delta_cde", "ncde")
SMOKE = dict(batch=2, length=6, hidden="8,16", channels="3,6", fixed_hidden=8, fixed_channels=3)


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", default="hidden,channels", help="hidden and/or channels")
    parser.add_argument("--hidden", default="32,64,128,256,512", help="hidden sizes H")
    parser.add_argument("--channels", default="4,16,64,256", help="input channels C")
    parser.add_argument("--fixed-hidden", type=int, default=128, help="H of the channel sweep")
    parser.add_argument("--fixed-channels", type=int, default=21, help="C of the hidden sweep")
    parser.add_argument("--heads", type=int, default=4, help="FWP heads")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=32, help="observation times")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--rss", action="store_true",
                        help="also measure peak RSS growth, one subprocess per point")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes, one round: checks that the script runs")
    parser.add_argument("--measure-rss", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--point", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build(arguments, name: str, hidden: int, channels: int):
    torch.manual_seed(0)
    if name == "ncde":
        model = fwplab.build_model("ncde", channels, 10, hidden_channels=hidden)
    else:
        model = fwplab.build_model(name, channels, 10, hidden_channels=hidden,
                                   num_heads=arguments.heads, ff_channels=4 * hidden)
    x = random_series(arguments.batch, arguments.length, channels)
    return model, x, fwplab.interpolation_coeffs(x)


def sweep_points(arguments, sweep: str) -> list[tuple[int, int]]:
    if sweep == "hidden":
        return [(int(h), arguments.fixed_channels) for h in arguments.hidden.split(",")]
    return [(arguments.fixed_hidden, int(c)) for c in arguments.channels.split(",")]


def measure(arguments, sweep: str) -> list[dict]:
    rows = []
    for hidden, channels in sweep_points(arguments, sweep):
        built = {name: build(arguments, name, hidden, channels) for name in MODELS}
        print(f"{sweep}: H={hidden} C={channels}", file=sys.stderr)
        times = time_round_robin(
            {name: (lambda b=b: forward_backward(*b)) for name, b in built.items()},
            arguments.repeats, arguments.warmup)
        for name, (model, x, coeffs) in built.items():
            row = {"sweep": sweep, "model": name, "hidden": hidden, "channels": channels,
                   "solver": getattr(model, "selected_solver", lambda: "torchcde")(),
                   "parameters": fwplab.count_parameters(model),
                   "field_outputs": field_outputs(name, hidden, channels, arguments.heads),
                   "forward_backward_s": median(times[name]), "times": times[name],
                   "saved_mb": saved_tensor_bytes(
                       lambda m=model, x=x, c=coeffs: m(x, coeffs=c).square().sum()) / 2**20}
            if arguments.rss:
                growth = common.rss_growth_in_subprocess(Path(__file__), rss_arguments(
                    arguments, name, hidden, channels))
                row["peak_mb"] = None if growth is None else growth / 2**20
            rows.append(row)
        fwp, ncde = rows[-2], rows[-1]
        ncde["time_vs_fwp"] = ncde["forward_backward_s"] / fwp["forward_backward_s"]
        ncde["saved_vs_fwp"] = ncde["saved_mb"] / fwp["saved_mb"]
    return rows


def rss_arguments(arguments, name: str, hidden: int, channels: int) -> list[str]:
    return ["--model", name, "--point", f"{hidden},{channels}", "--batch", str(arguments.batch),
            "--length", str(arguments.length), "--heads", str(arguments.heads),
            "--threads", str(torch.get_num_threads())]


def main(argv=None) -> None:
    arguments = parse_arguments(argv)
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    if arguments.measure_rss:
        hidden, channels = (int(v) for v in arguments.point.split(","))
        model, x, coeffs = build(arguments, arguments.model, hidden, channels)
        common.report_rss_growth(lambda: forward_backward(model, x, coeffs))
        return
    if arguments.smoke:
        for key, value in SMOKE.items():
            setattr(arguments, key, value)
        arguments.repeats, arguments.heads = 1, 2
    sweeps = [s.strip() for s in arguments.sweep.split(",")]
    unknown = [s for s in sweeps if s not in ("hidden", "channels")]
    if unknown:
        raise SystemExit(f"--sweep: unknown {unknown}; expected 'hidden' and/or 'channels'")
    results = {}
    for sweep in sweeps:
        rows = measure(arguments, sweep)
        results[sweep] = rows
        print(f"\n{sweep} sweep: batch {arguments.batch}, {arguments.length} observation times, "
              f"rk4, {torch.get_num_threads()} threads")
        common.print_table(rows, [
            ("model", "model", "s"), ("solver", "solver", "s"), ("hidden", "H", "d"),
            ("channels", "C", "d"), ("parameters", "params", ","),
            ("field_outputs", "field outputs", ","),
            ("forward_backward_s", "fwd+bwd s", ".4f"), ("time_vs_fwp", "time/FWP", ".1f"),
            ("saved_mb", "saved MB", ".1f"), ("saved_vs_fwp", "saved/FWP", ".1f"),
            ("peak_mb", "peak RSS MB", ".1f")])
    common.write_json(arguments.json, {
        "benchmark": "scaling", "batch": arguments.batch, "length": arguments.length,
        "heads": arguments.heads, "environment": common.environment(), "results": results})


if __name__ == "__main__":
    main()

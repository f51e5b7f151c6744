"""The world models' latent flow: torchdiffeq's odeint vs fwplab.rl.flow, side by side.

The MPC planner flows a batch of latents (1000 x 128 by default) under an ODE MLP
(128-128-128-128, tanh) through the gaps [0, 1, ..., 7] about a million times per run, so
this flow is the hot spot of the RL system. In one process, with the same field and the
same z ~ N(0, 1), without autograd, this times (median of ``--repeats`` calls after a
warm-up, taking turns):

* ``torchdiffeq dopri5`` (rtol 1e-5, atol 1e-6: the official setting) and ``flow dopri5``
  with the field as an ``nn.Module`` and as :func:`fwplab.rl.flow.mlp_field` (its layers
  written into buffers);
* the fixed-grid ``rk4`` (step 0.5) and ``euler`` (step 1), torchdiffeq's and ours.

It prints the machine's matrix-product rate at the field's shape (one ``batch x latent``
by ``latent x latent`` product), then per run: ms per call, evaluations of the field
(NFE), ms per evaluation, the speed-up over torchdiffeq's dopri5, the time over the
matrix-product floor (3 products per evaluation at the measured rate), and the largest
absolute difference from torchdiffeq's dopri5 and from torchdiffeq's same method.

Examples::

    python benchmarks/rl_flow_speed.py                 # 1 thread
    python benchmarks/rl_flow_speed.py --threads 2
    python benchmarks/rl_flow_speed.py --smoke         # tiny shapes: checks that it runs
"""

from __future__ import annotations

import argparse

import torch
import torchdiffeq
from torch import nn

import common
from fwplab.benchmarking import median, time_round_robin
from fwplab.rl.flow import MLPField, flow, mlp_field


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--batch", type=int, default=1000, help="latents per solve (N)")
    parser.add_argument("--latent", type=int, default=128, help="latent and hidden width (D)")
    parser.add_argument("--gaps", type=int, default=7, help="the grid is 0, 1, ..., gaps")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per run")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes, one call: checks that the script runs")
    return parser.parse_args(argv)


class CountedField(nn.Module):
    """The ODE MLP with an evaluation counter (the counter costs nothing measurable)."""

    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width),
                                 nn.Tanh(), nn.Linear(width, width))
        self.calls = 0

    def forward(self, z):
        self.calls += 1
        return self.net(z)


class CountedMLPField(MLPField):
    """:class:`MLPField` with an evaluation counter."""

    calls = 0

    def __call__(self, z):
        self.calls += 1
        return super().__call__(z)

    def write(self, z, out):
        self.calls += 1
        return super().write(z, out)




def main(argv=None) -> None:
    arguments = parse_arguments(argv)
    if arguments.smoke:
        arguments.batch, arguments.latent, arguments.repeats = 8, 8, 1
    torch.set_num_threads(arguments.threads)
    N, D = arguments.batch, arguments.latent
    rate = common.matmul_rate(N, D)
    print(f"threads {arguments.threads}: a {N}x{D} @ {D}x{D} float32 matmul runs at "
          f"{rate:.1f} GFLOP/s")

    torch.manual_seed(0)
    field = CountedField(D)
    written = CountedMLPField(mlp_field([field.net[0], field.net[2], field.net[4]]).linears)
    z = torch.randn(N, D)
    grid = torch.arange(arguments.gaps + 1, dtype=torch.float32)
    tol = dict(rtol=1e-5, atol=1e-6)

    def reference(method: str, step=None):
        extra = tol if step is None else {"options": {"step_size": step}}
        return lambda: torchdiffeq.odeint(lambda t, y: field(y), z, grid, method=method, **extra)

    def ours(func, method: str, step=None):
        options = tol if step is None else {"step_size": step}
        return lambda: flow(func, z, grid, method=method, **options)

    runs = {  # name -> (call, counter, method of the torchdiffeq twin)
        "torchdiffeq dopri5": (reference("dopri5"), field, "dopri5"),
        "flow dopri5 (module)": (ours(field, "dopri5"), field, "dopri5"),
        "flow dopri5 (mlp_field)": (ours(written, "dopri5"), written, "dopri5"),
        "torchdiffeq rk4 h=0.5": (reference("rk4", 0.5), field, "rk4"),
        "flow rk4 h=0.5 (mlp_field)": (ours(written, "rk4", 0.5), written, "rk4"),
        "torchdiffeq euler h=1": (reference("euler", 1.0), field, "euler"),
        "flow euler h=1 (mlp_field)": (ours(written, "euler", 1.0), written, "euler"),
    }
    outputs, evaluations = {}, {}
    with torch.no_grad():
        for name, (call, counter, _) in runs.items():
            counter.calls = 0
            outputs[name] = call()
            evaluations[name] = counter.calls
        times = time_round_robin({name: run[0] for name, run in runs.items()},
                                 arguments.repeats, warmup=1)
    twins = {"dopri5": "torchdiffeq dopri5", "rk4": "torchdiffeq rk4 h=0.5",
             "euler": "torchdiffeq euler h=1"}
    base = median(times["torchdiffeq dopri5"])
    matmul_s = 2 * N * D * D / (rate * 1e9)
    rows = []
    for name, (_, _, method) in runs.items():
        seconds = median(times[name])
        twin = outputs[twins[method]]
        rows.append({
            "run": name, "ms": 1e3 * seconds, "nfe": evaluations[name],
            "ms_per_nfe": 1e3 * seconds / evaluations[name], "speedup": base / seconds,
            "floor_x": seconds / (3 * evaluations[name] * matmul_s),
            "diff_dopri5": (outputs[name] - outputs["torchdiffeq dopri5"]).abs().max().item(),
            "diff_twin": None if name.startswith("torchdiffeq") else
            (outputs[name] - twin).abs().max().item(),
        })
    print(f"N={N}, D={D}, grid 0..{arguments.gaps}, median of {arguments.repeats} calls, "
          f"no autograd")
    common.print_table(rows, [
        ("run", "run", ""), ("ms", "ms/call", ".2f"), ("nfe", "NFE", "d"),
        ("ms_per_nfe", "ms/NFE", ".3f"), ("speedup", "vs torchdiffeq dopri5", ".2f"),
        ("floor_x", "x matmul floor", ".2f"), ("diff_dopri5", "max|d| vs tdq dopri5", ".2e"),
        ("diff_twin", "max|d| vs tdq same method", ".2e")])
    common.write_json(arguments.json, {
        "environment": common.environment(), "matmul_gflops": rate, "batch": N, "latent": D,
        "grid": grid.tolist(), "repeats": arguments.repeats, "rows": rows,
        "times": {name: times[name] for name in runs}})


if __name__ == "__main__":
    main()

"""The compute of one appendix run: the official world models vs fwplab's, side by side.

One README run of the RL appendix (hopper, one model, one seed) makes about 400,000 MPC
decisions (1000 candidates x 10 imagined steps each) and about 110,000 world-model
training batches (128 chunks x 10 steps, gradients by the adjoint). This script times
both in one process, from one set of weights, against the official classes of
IDSIA/neuraldiffeq-fwp (``appendix_mujoco/``: ``LatentODE`` and ``RFWPLatentVAEModel``
with the Hebb rule, built as its ``MBRL`` builds them, dopri5 rtol 1e-5 atol 1e-6,
``odeint_adjoint``), and projects the hours of one run:

* decision: the official planner's search loop, written here as its ``mpc_search`` runs
  it (``combine_mf=True``: the actor's noisy proposals, the timer's gap, the official
  ``encode_next_latent_state`` and decoder, the model-side reward on unnormalised
  predictions, rewards discounted at their end time through its ``mm(...).diag()``, the
  critic's bootstrap, the mean first action of the top 50) vs :func:`fwplab.rl.plan`.
  Both use the same :class:`~fwplab.rl.ddpg.DDPG` (random initialisation), the same
  hopper reward (:meth:`~fwplab.rl.envs.SemiMDPEnv.model_reward`), the same
  :class:`~fwplab.rl.buffers.RunningStats`, the same filtered latent, and proposal noise
  from identically seeded ``torch.Generator`` s, so the chosen actions are comparable;
* training batch: the official ``compute_loss(train=True)`` + backward (adjoint) vs
  :func:`fwplab.rl.world_models.sequence_losses` + backward, on the same random chunks
  with the same reparametrisation noise (no optimiser step, so every repeat does the
  same work).

fwplab runs in three ways: ``faithful`` (dopri5 with the adjoint, the configuration the
agent builds: planning, which takes no gradient, goes through :func:`fwplab.rl.flow.flow`,
torchdiffeq's dopri5 step for step; training through torchdiffeq's adjoint),
``faithful, flow`` (the same weights with ``adjoint=False``: the same planning; its
training batch backpropagates through the solver, which is *not* the README's adjoint
gradient, so that column is only informative) and the fast options on a fixed grid
(``rk4`` with ``step_size`` 1 and 0.5, ``euler`` with 1: integer gaps fall on the grid).

Printed: the matrix-product rate (1000x128 @ 128x128 float32), torch's threads, then per
model a table of seconds per decision and per batch (medians of ``--repeats`` after a
warm-up, the variants taking turns), the speed-ups over the official code, the largest
difference of the chosen action from the official one, evaluations of the ODE MLP per
imagined step and per batch, and the projected hours of one run. ``--profile`` adds
where the time of fwplab's faithful decision goes.

Examples::

    python benchmarks/rl_speed.py --official /path/to/neuraldiffeq-fwp
    python benchmarks/rl_speed.py --official /path/to/neuraldiffeq-fwp --threads 2
    python benchmarks/rl_speed.py --quick            # tiny sizes, fwplab only, seconds
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path
from typing import Callable
from unittest import mock

import numpy as np
import torch
from torch import Tensor, nn

import common
from fwplab.benchmarking import median, time_round_robin
from fwplab.rl.buffers import RunningStats, TransitionBuffer
from fwplab.rl.ddpg import DDPG
from fwplab.rl.flow import MLPField
from fwplab.rl.envs import ENVS, make_env
from fwplab.rl.planner import PlannerConfig, plan
from fwplab.rl.world_models import (
    WorldModel,
    build_world_model,
    load_official_world_model,
    sequence_losses,
)

#: One README run (one env, one model, one seed): MPC decisions and training batches.
RUN_DECISIONS = 400_000
RUN_BATCHES = 110_000
DAY_HOURS = 24.0

FULL = dict(latent_dim=128, num_heads=16, ff_dim=512, ode_dim=128, encoder_width=20,
            candidates=1000, horizon=10, elite=50, batch=128, steps=10)
QUICK = dict(latent_dim=16, num_heads=4, ff_dim=32, ode_dim=16, encoder_width=5,
             candidates=50, horizon=3, elite=5, batch=8, steps=3)

#: fwplab's variants: name -> (WorldModelConfig options, what its batch column means).
VARIANTS = {
    "fwplab faithful": (dict(method="dopri5", adjoint=True), "adjoint"),
    "fwplab faithful, flow": (dict(method="dopri5", adjoint=False),
                              "backprop through dopri5 (not the adjoint)"),
    "fwplab fast rk4 h=1": (dict(method="rk4", step_size=1.0), "backprop through rk4"),
    "fwplab fast rk4 h=0.5": (dict(method="rk4", step_size=0.5), "backprop through rk4"),
    "fwplab fast euler h=1": (dict(method="euler", step_size=1.0), "backprop through euler"),
}
OFFICIAL = "official"


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", default=None,
                        help="root of a checkout of IDSIA/neuraldiffeq-fwp (with appendix_mujoco/)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both sides)")
    parser.add_argument("--models", default="latent-ode-rfwp,latent-ode",
                        help="comma-separated: latent-ode-rfwp, latent-ode")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after a warm-up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true",
                        help="profile fwplab's faithful decision (torch.profiler)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (latent 16, 50 candidates, 3 steps, batch 8)")
    parser.add_argument("--json", default=None, help="write the numbers here")
    return parser.parse_args(argv)


# ------------------------------------------------------------------ machine


class Counter:
    """Counts the evaluations of an ODE MLP while ``count`` runs: the calls of a module's
    forward (torchdiffeq, the official side) and, for a fwplab world model, the calls of the
    ``MLPField`` over its layers that :func:`fwplab.rl.flow.flow` evaluates instead."""

    def __init__(self, module: nn.Module):
        self.calls = 0
        self.first_layer = next(m for m in module.modules() if isinstance(m, nn.Linear))
        module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.calls += 1

    def _counted(self, method: Callable) -> Callable:
        def call(field, *args):
            if field.linears[0] is self.first_layer:
                self.calls += 1
            return method(field, *args)
        return call

    def count(self, run: Callable[[], object]) -> int:
        self.calls = 0
        with mock.patch.object(MLPField, "__call__", self._counted(MLPField.__call__)), \
                mock.patch.object(MLPField, "write", self._counted(MLPField.write)):
            run()
        return self.calls


# ------------------------------------------------------------------ official side
def official_model(root: str, name: str, sizes: dict, seed: int) -> nn.Module:
    """The official world model, built as the official ``MBRL.__init__`` builds it (hopper,
    ``--timer mlp --adjoint --ode_tol 1e-5 --add_data_first``, Hebb rule)."""
    directory = Path(root) / "appendix_mujoco"
    if not (directory / "model.py").is_file():
        raise ValueError(f"--official: expected a checkout with appendix_mujoco/model.py, "
                         f"got {root!r}")
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    import utils as official_utils  # the official tree's modules
    from model import (Decoder, DiffeqSolver, Encoder_z0_RNN, LatentODE, MLPTimer, ODEFunc,
                       RFWPLatentVAEModel)
    from torch.distributions.normal import Normal

    spec = ENVS["hopper"]
    cpu = torch.device("cpu")
    x_dim, L = spec.state_dim + spec.action_dim, sizes["latent_dim"]
    torch.manual_seed(seed)
    timer = MLPTimer(input_dim=x_dim + L, output_dim=spec.max_gap - spec.min_gap + 1,
                     min_t=spec.min_gap, max_t=spec.max_gap, max_time_length=1000, device=cpu)
    field = ODEFunc(ode_func_net=official_utils.create_net(
        L, L, n_layers=2, n_units=sizes["ode_dim"], nonlinear=nn.Tanh))
    solver = DiffeqSolver(field, "dopri5", odeint_rtol=1e-5, odeint_atol=1e-6, adjoint=True)
    encoder = Encoder_z0_RNN(L, x_dim, hidden_to_z0_units=sizes["encoder_width"], device=cpu)
    prior = Normal(torch.tensor([0.0]), torch.tensor([1.0]))
    decoder = Decoder(L, spec.state_dim, n_layers=0)
    common_parts = dict(input_dim=x_dim, latent_dim=L, eps_decay=0.0, encoder_z0=encoder,
                        decoder=decoder, diffeq_solver=solver, z0_prior=prior, timer=timer,
                        device=cpu)
    if name == "latent-ode":
        return LatentODE(**common_parts)
    return RFWPLatentVAEModel(**common_parts, num_heads=sizes["num_heads"],
                              ff_dim=sizes["ff_dim"], learning_rule="hebb",
                              add_data_first=True)


@torch.no_grad()
def official_decision(model: nn.Module, agent: DDPG, reward: Callable, stats: RunningStats,
                      s_hat: Tensor, latent: tuple[Tensor, ...], config: PlannerConfig,
                      generator: torch.Generator) -> Tensor:
    """The official ``MBRL.mpc_search(..., combine_mf=True)``, step for step, with the
    proposal noise drawn from ``generator``: ``s_hat (S,)``, ``latent`` in the official
    layout (``z (1, L)`` or ``(z (1, L), W (1, H d d))``) -> the action ``(A,)``."""
    K, H = config.candidates, config.horizon
    actions = torch.empty(K, H, agent.action_dim)
    states = torch.empty(K, H + 1, s_hat.shape[-1])
    gaps = torch.empty(K, H)
    states[:, 0, :] = s_hat.repeat(K, 1)
    fast_weight = len(latent) == 2
    current = tuple(part.repeat(K, 1) for part in latent) if fast_weight else latent[0].repeat(K, 1)
    for i in range(H):
        proposal = agent.actor(states[:, i, :])
        proposal += torch.empty_like(proposal).normal_(0, config.proposal_noise,
                                                       generator=generator)
        actions[:, i, :] = torch.clamp(proposal, -1, 1)
        data = torch.cat((states[:, i, :], actions[:, i, :]), dim=-1)
        z = current[0] if fast_weight else current
        gaps[:, i] = model.timer.deliver_dt_in_batch(torch.cat((data, z), dim=-1))
        following = model.encode_next_latent_state(data, current, gaps[:, i])
        states[:, i + 1, :] = model.decode_latent_traj(following)
        current = following
    rewards, alive = reward(stats.unnormalize(states), actions, gaps)
    ends = gaps.cumsum(dim=1)
    returns = torch.mm(rewards, (config.gamma ** ends).t()).diag()
    last = states[:, -1, :]
    value = agent.critic(last, torch.clamp(agent.actor(last), -1, 1)).squeeze(-1)
    returns[alive[:, -1]] += (config.gamma ** ends[:, -1] * value)[alive[:, -1]]
    elite = torch.topk(returns, config.elite, sorted=False)[1]
    return actions[elite, 0, :].mean(dim=0)


# ------------------------------------------------------------------ shared inputs
def filtered_start(model: WorldModel, stats: RunningStats, buffer: TransitionBuffer,
                   seed: int, decisions: int = 200) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Random-action hopper decisions: states into ``stats``, transitions into ``buffer``,
    and the world model's filtered latent (from the prior, as the planner's) over the last
    episode; returns the last normalised state ``(S,)`` and the latent (batch 1)."""
    env = make_env("hopper", seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    state, latent = env.reset(), model.initial_latent(1, generator=generator)
    for _ in range(decisions):
        stats.push(state)
        s_hat = stats.normalize(torch.as_tensor(state, dtype=torch.float32))
        action = rng.uniform(-1, 1, env.spec.action_dim)
        gap = env.time_gap(state)
        following, r, terminal = env.step(action, gap)
        buffer.push(state, None if terminal else following, action, r, gap)
        x = torch.cat([s_hat, torch.as_tensor(action, dtype=torch.float32)]).unsqueeze(0)
        with torch.no_grad():
            latent = model.step(x, latent, torch.tensor([float(gap)]))
        state = following
        if terminal:
            state, latent = env.reset(), model.initial_latent(1, generator=generator)
    env.close()
    stats.push(state)
    return stats.normalize(torch.as_tensor(state, dtype=torch.float32)), latent


def random_chunks(batch: int, steps: int, seed: int) -> dict[str, Tensor]:
    """Normalised-looking chunks: ``states (N, T+1, 12)``, ``actions (N, T, 3)``, ``times
    (N, T+1)``, ``lengths (N,)`` (one in eight shorter than ``T``, padded the official way:
    zero states and actions, repeated times)."""
    spec = ENVS["hopper"]
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(batch, steps + 1, spec.state_dim, generator=g)
    actions = torch.rand(batch, steps, spec.action_dim, generator=g) * 2 - 1
    gaps = torch.randint(spec.min_gap, spec.max_gap + 1, (batch, steps), generator=g)
    lengths = torch.full((batch,), steps)
    short = torch.arange(batch) % 8 == 7
    lengths[short] = torch.randint(1, steps, (int(short.sum()),), generator=g)
    for n, length in enumerate(lengths.tolist()):
        states[n, length + 1:] = 0
        actions[n, length:] = 0
        gaps[n, length:] = 0
    times = torch.cat([torch.zeros(batch, 1), gaps.float().cumsum(1)], 1)
    return dict(states=states, actions=actions, times=times, lengths=lengths)


# ------------------------------------------------------------------ one model
def measure_model(name: str, arguments: argparse.Namespace, sizes: dict) -> dict:
    spec = ENVS["hopper"]
    S, A = spec.state_dim, spec.action_dim
    model_sizes = {key: sizes[key] for key in ("latent_dim", "num_heads", "ff_dim", "ode_dim",
                                               "encoder_width")}
    official = None
    if arguments.official:
        official = official_model(arguments.official, name, sizes, arguments.seed)
        weights = copy.deepcopy(official.state_dict())
    models: dict[str, WorldModel] = {}
    for variant, (options, _) in VARIANTS.items():
        torch.manual_seed(arguments.seed)
        models[variant] = build_world_model(name, S, A, **model_sizes, **options)
        if official is not None:
            load_official_world_model(models[variant], weights)
        else:
            models[variant].load_state_dict(models["fwplab faithful"].state_dict())

    torch.manual_seed(arguments.seed + 1)
    agent = DDPG(S, A)
    stats = RunningStats(S)
    buffer = TransitionBuffer(10_000, S, A)
    s_hat, latent = filtered_start(models["fwplab faithful, flow"], stats, buffer, arguments.seed)
    official_latent = (latent[0], latent[1].flatten(1)) if len(latent) == 2 else latent
    reward = make_env("hopper", arguments.seed).model_reward
    config = PlannerConfig(candidates=sizes["candidates"], horizon=sizes["horizon"],
                           elite=sizes["elite"])

    def noise() -> torch.Generator:
        return torch.Generator().manual_seed(arguments.seed + 2)

    decisions: dict[str, Callable[[], Tensor]] = {}
    if official is not None:
        decisions[OFFICIAL] = lambda: official_decision(official, agent, reward, stats, s_hat,
                                                        official_latent, config, noise())
    for variant, model in models.items():
        decisions[variant] = (lambda m=model: plan(m, reward, stats, agent, s_hat, latent,
                                                   config, generator=noise()).action)

    chunks = random_chunks(sizes["batch"], sizes["steps"], arguments.seed + 3)
    eps = torch.randn(sizes["batch"], sizes["latent_dim"],
                      generator=torch.Generator().manual_seed(arguments.seed + 4))

    def official_batch() -> Tensor:
        official.zero_grad()
        torch.manual_seed(arguments.seed + 4)  # the reparametrisation draw is `eps`
        loss = official.compute_loss(chunks["states"], chunks["actions"], chunks["times"],
                                     chunks["lengths"], train=True)["total"]
        loss.backward()
        return loss.detach()

    def fwplab_batch(model: WorldModel) -> Tensor:
        model.zero_grad()
        loss = sequence_losses(model, chunks["states"], chunks["actions"], chunks["times"],
                               chunks["lengths"], train=True, noise=eps).losses["total"]
        loss.backward()
        return loss.detach()

    batches: dict[str, Callable[[], Tensor]] = {}
    if official is not None:
        batches[OFFICIAL] = official_batch
    for variant, model in models.items():
        batches[variant] = lambda m=model: fwplab_batch(m)

    counters = {variant: Counter(model.field) for variant, model in models.items()}
    if official is not None:
        counters[OFFICIAL] = Counter(official.diffeq_solver.ode_func)
    actions, nfe_decision, nfe_batch, losses = {}, {}, {}, {}
    for variant in decisions:
        nfe_decision[variant] = counters[variant].count(
            lambda v=variant: actions.__setitem__(v, decisions[v]()))
        nfe_batch[variant] = counters[variant].count(
            lambda v=variant: losses.__setitem__(v, batches[v]()))
    reference = OFFICIAL if official is not None else "fwplab faithful"

    print(f"  timing {len(decisions)} decision runs x ({arguments.repeats} + 1 warm-up)",
          flush=True)
    decision_times = time_round_robin(decisions, arguments.repeats, warmup=1)
    print(f"  timing {len(batches)} training-batch runs x ({arguments.repeats} + 1 warm-up)",
          flush=True)
    batch_times = time_round_robin(batches, arguments.repeats, warmup=1)
    ddpg_update = _ddpg_update_seconds(agent, buffer, stats, arguments.repeats)

    rows = []
    base_decision = median(decision_times[reference])
    base_batch = median(batch_times[reference])
    for variant in decisions:
        decision_s, batch_s = median(decision_times[variant]), median(batch_times[variant])
        hours = (RUN_DECISIONS * (decision_s + ddpg_update) + RUN_BATCHES * batch_s) / 3600
        rows.append({
            "run": variant,
            "decision_s": decision_s, "batch_s": batch_s,
            "decision_speedup": base_decision / decision_s,
            "batch_speedup": base_batch / batch_s,
            "action_diff": (actions[variant] - actions[reference]).abs().max().item(),
            "loss_diff": (losses[variant] - losses[reference]).abs().item(),
            "nfe_per_imagined_step": nfe_decision[variant] / sizes["horizon"],
            "nfe_per_batch": nfe_batch[variant],
            "run_hours": hours,
            "batch_gradient": "adjoint" if variant == OFFICIAL else VARIANTS[variant][1],
            "decision_times": decision_times[variant], "batch_times": batch_times[variant],
        })
    result = {"model": name, "reference": reference, "ddpg_update_s": ddpg_update,
              "rows": rows}
    if arguments.profile:
        result["profile"] = profile_decision(decisions["fwplab faithful, flow"], sizes,
                                             nfe_decision["fwplab faithful, flow"])
    return result


def _ddpg_update_seconds(agent: DDPG, buffer: TransitionBuffer, stats: RunningStats,
                         repeats: int) -> float:
    """Median seconds of one DDPG update (made after every real decision) on a copy."""
    if len(buffer) < agent.config.batch_size:
        return 0.0
    twin = copy.deepcopy(agent)
    rng = np.random.default_rng(0)
    return median(time_round_robin({"ddpg": lambda: twin.update(buffer, stats, rng)},
                                   max(repeats, 10), warmup=2)["ddpg"])


# ------------------------------------------------------------------ profile
MATMUL_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear")


def profile_decision(decision: Callable[[], Tensor], sizes: dict, nfe: int) -> dict:
    """Where one fwplab faithful decision's time goes: self CPU time of the matrix
    products vs the other operators vs what no operator accounts for (Python, dispatch)."""
    start = time.perf_counter()
    decision()
    wall = time.perf_counter() - start
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        decision()
        profiled_wall = time.perf_counter() - start
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / 1e6
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    field_flops = 2 * sizes["candidates"] * (2 * sizes["latent_dim"] * sizes["ode_dim"]
                                             + sizes["ode_dim"] ** 2)
    return {
        "wall_s": wall, "profiled_wall_s": profiled_wall,
        "operators_self_s": total, "matmul_self_s": matmul,
        "matmul_share_of_profiled_wall": matmul / profiled_wall,
        "other_operators_share": (total - matmul) / profiled_wall,
        "outside_operators_share": max(0.0, profiled_wall - total) / profiled_wall,
        "ode_mlp_gflop": nfe * field_flops / 1e9,
        "top_operators": [{"op": e.key, "self_s": e.self_cpu_time_total / 1e6,
                           "calls": e.count} for e in top],
    }


# ------------------------------------------------------------------ report
def print_model(result: dict, sizes: dict, rate: float) -> None:
    print(f"\n{result['model']} (hopper, latent {sizes['latent_dim']}, "
          f"{sizes['candidates']} candidates x {sizes['horizon']} imagined steps; "
          f"batch {sizes['batch']} chunks x {sizes['steps']} steps); "
          f"ratios and action difference vs {result['reference']}")
    common.print_table(result["rows"], [
        ("run", "run", ""), ("decision_s", "s/decision", ".3f"),
        ("decision_speedup", "x", ".2f"), ("batch_s", "s/batch", ".3f"),
        ("batch_speedup", "x", ".2f"), ("action_diff", "max|da|", ".1e"),
        ("loss_diff", "|dloss|", ".1e"), ("nfe_per_imagined_step", "NFE/img.step", ".1f"),
        ("nfe_per_batch", "NFE/batch(f+b)", "d"), ("run_hours", "run h", ".0f")])
    for row in result["rows"]:
        if row["batch_gradient"] not in ("adjoint",):
            print(f"  {row['run']}: batch gradient = {row['batch_gradient']}")
    print(f"  DDPG update: {1e3 * result['ddpg_update_s']:.2f} ms (one per decision, in 'run h')")
    if "profile" in result:
        p = result["profile"]
        print(f"  profile of 'fwplab faithful, flow' (one decision, {p['wall_s']:.3f} s, "
              f"{p['profiled_wall_s']:.3f} s under the profiler): matrix products "
              f"{100 * p['matmul_share_of_profiled_wall']:.0f}%, other operators "
              f"{100 * p['other_operators_share']:.0f}%, outside operators "
              f"{100 * p['outside_operators_share']:.0f}%; ODE MLP {p['ode_mlp_gflop']:.1f} GFLOP"
              f" = {p['ode_mlp_gflop'] / rate:.3f} s at {rate:.0f} GFLOP/s")
        for op in p["top_operators"]:
            print(f"    {op['op']:<32} {op['self_s']:8.3f} s  {op['calls']:7d} calls")


def projection(results: list[dict], threads: int, quick: bool) -> list[str]:
    sizes = "the --quick sizes, not the appendix's: " if quick else ""
    lines = [f"Projected compute of one full appendix run on this machine ({RUN_DECISIONS:,} "
             f"MPC decisions + {RUN_BATCHES:,} training batches + one DDPG update per "
             f"decision; {sizes}{threads} torch thread(s) per run; env steps, test passes and "
             f"evaluation episodes not counted):"]
    for result in results:
        for row in result["rows"]:
            verdict = "under" if row["run_hours"] < DAY_HOURS else "over"
            lines.append(f"  {result['model']:<16} {row['run']:<24} {row['run_hours']:8.1f} h "
                         f"= {row['run_hours'] / 24:5.2f} days ({verdict} one day)")
    if threads == 1:
        lines.append("  With 1 thread per run, the 2 cores run two seeds side by side: two runs "
                     "in these hours (if the cores do not slow each other down).")
    return lines


def main(argv=None) -> None:
    arguments = parse_arguments(argv)
    sizes = QUICK if arguments.quick else FULL
    torch.set_num_threads(arguments.threads)
    rate = common.matmul_rate()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); float32 matmul "
          f"1000x128 @ 128x128: {rate:.1f} GFLOP/s; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if arguments.official is None:
        print("no --official: the official side is skipped; fwplab alone (ratios vs "
              "fwplab faithful)")
    names = [n.strip() for n in arguments.models.split(",") if n.strip()]
    results = []
    for name in names:
        if name not in ("latent-ode", "latent-ode-rfwp"):
            raise ValueError(f"--models: expected latent-ode or latent-ode-rfwp, got {name!r}")
        print(f"{name}:", flush=True)
        result = measure_model(name, arguments, sizes)
        print_model(result, sizes, rate)
        results.append(result)
    lines = projection(results, arguments.threads, arguments.quick)
    print("\n" + "\n".join(lines))
    common.write_json(arguments.json, {
        "environment": common.environment(), "matmul_gflops": rate,
        "load_average": list(os.getloadavg()), "sizes": sizes, "quick": arguments.quick,
        "official": arguments.official is not None, "repeats": arguments.repeats,
        "run_decisions": RUN_DECISIONS, "run_batches": RUN_BATCHES,
        "results": results, "projection": lines})


if __name__ == "__main__":
    main()

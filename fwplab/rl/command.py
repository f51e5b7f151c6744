"""``fwplab rl``: train the appendix's agent with a world model on a semi-MDP.

::

    fwplab rl                                          # the small preset, latent-ode-rfwp, seed 1
    fwplab rl --model latent-ode --seed 2 --out runs/rl-b
    fwplab rl --preset appendix-hopper --model latent-ode-rfwp --seed 1 --device cuda  # the paper's
    fwplab rl --corrected                              # the four corrections (fwplab.rl.agent)
    fwplab rl --solver euler --step-size 1             # the fast option: a fixed grid
    fwplab rl --resume runs/rl-b                       # continue after the last finished epoch

Each epoch ends with ``OUT/checkpoint.pt`` and ``OUT/metrics.json`` (atomic writes; one
writer per folder). Bad input stops with one line and writes nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

import torch

from .agent import CHECKPOINT, train_agent
from .envs import ENVS
from .flow import METHODS
from .presets import RL_PRESETS, rl_preset
from .world_models import RULE_UPDATES, WORLD_MODELS

__all__ = ["add_parser", "run"]



def add_parser(commands: Any, positive_int, seed) -> argparse.ArgumentParser:
    """Add the ``rl`` sub-command to the ``fwplab`` parser and return it."""
    parser = commands.add_parser(
        "rl", help="model-based RL in a semi-MDP with a (fast-weight) latent ODE world model",
        description="Train the RL appendix's agent (MPC with DDPG proposals, a latent ODE "
                    "world model) on a semi-MDP; write DIR/metrics.json and DIR/checkpoint.pt "
                    "after every epoch.",
        epilog="Presets: " + "; ".join(f"{p.name}: {p.description}"
                                       for p in RL_PRESETS.values()))
    parser.add_argument("--preset", choices=list(RL_PRESETS), default="small",
                        help="the settings (default small)")
    parser.add_argument("--env", choices=[name for name, spec in ENVS.items()
                                          if spec.continuous_actions],
                        help="the semi-MDP (default: the preset's)")
    parser.add_argument("--model", choices=list(WORLD_MODELS),
                        default=None, help="the world model (default latent-ode-rfwp)")
    parser.add_argument("--rule", choices=list(RULE_UPDATES),
                        help="the fast-weight models' learning rule (default hebb)")
    parser.add_argument("--seed", type=seed, help="the seed (default 1)")
    parser.add_argument("--epochs", type=positive_int, help="model-based epochs")
    parser.add_argument("--solver", choices=list(METHODS),
                        help="the world model's ODE method (default dopri5, the official)")
    parser.add_argument("--step-size", type=float, metavar="H",
                        help="a fixed-grid solver's step (gaps are integers: 1 or 0.5 fit)")
    parser.add_argument("--no-adjoint", action="store_true",
                        help="train the world model by backpropagation through the solver "
                             "instead of torchdiffeq's adjoint (same forward pass; about 10x "
                             "faster per batch at the appendix's sizes)")
    parser.add_argument("--corrected", action="store_true",
                        help="keep the best world model, evaluate the planner too, discount "
                             "rewards at their start time, plan with the real reward's scale")
    parser.add_argument("--device", metavar="DEVICE",
                        help="cpu (default) or cuda: where the networks run")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch threads (default 1: the small networks run fastest so)")
    parser.add_argument("--out", metavar="DIR",
                        help="the run folder (default runs/rl-ENV-MODEL-seedS)")
    parser.add_argument("--resume", metavar="DIR", help="continue the run in DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


_SETTINGS = {"env": "env", "model": "model", "rule": "rule", "seed": "seed",
             "epochs": "epochs", "solver": "method", "step_size": "step_size"}


def run(args: argparse.Namespace, resolve_device: Callable[[str], torch.device]) -> int:
    """Run ``fwplab rl`` from parsed arguments; returns the exit status.

    ``resolve_device`` checks ``--device`` (default ``cpu``) as ``fwplab train`` does."""
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device or "cpu")
    given = {field: getattr(args, flag) for flag, field in _SETTINGS.items()
             if getattr(args, flag) is not None}
    if args.resume:
        extra = [flag for flag in ("corrected", "no_adjoint", "out") if getattr(args, flag)]
        if given or extra:
            raise ValueError("--resume: takes the settings saved in the run; drop "
                             + ", ".join("--" + f.replace("_", "-") for f in [*given, *extra]))
        folder = Path(args.resume)
        if not (folder / CHECKPOINT).is_file():
            raise ValueError(f"--resume: {folder / CHECKPOINT} does not exist")
        metrics = train_agent(out=folder, resume=True, progress=not args.no_progress,
                              device=device)
    else:
        if args.step_size is not None and given.get("method", "dopri5") == "dopri5":
            raise ValueError("--step-size: needs a fixed-grid --solver (rk4, midpoint, euler)")
        if args.corrected:
            given.update(keep_best_world_model=True, evaluate_planner=True, discount_at="start",
                         planning_reward="seconds")
        given.setdefault("model", "latent-ode-rfwp")
        if given.get("method", "dopri5") != "dopri5" or args.no_adjoint:
            given["adjoint"] = False
        config = rl_preset(args.preset, **given)
        folder = Path(args.out or f"runs/rl-{config.env}-{config.model}-seed{config.seed}")
        metrics = train_agent(config, folder, progress=not args.no_progress, device=device)
    last = metrics["history"][-1]
    print(f"fwplab rl: {metrics['model']} on {metrics['env']}, seed {metrics['seed']}: "
          f"{metrics['epochs_done']} epochs, {metrics['decisions']} decisions, last evaluation "
          f"return {last['eval_return']:.2f}; wrote {folder / 'metrics.json'}")
    return 0

"""Named settings of ``fwplab rl``: the appendix's two runs and a small one for a laptop.

The appendix's runs are its README command (Latent ODE-RNN or Latent ODE-RFWP with the
Hebbian rule, 16 heads of size 8, dopri5 at 1e-5 with the adjoint, 15,000 random
decisions, 80 epochs of 5,000 MPC decisions, 1,000 candidates over 10 decisions) on
Hopper and Swimmer, seeds 1-10: about 415,000 real decisions per run, days of compute
on a GPU (see the README's projection). ``small`` is the same algorithm at sizes that
run in minutes on 2 CPU cores: at about 1,800 decisions it shows the loop working
(finite losses, the world model's test error falling), not an agent that swims.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

from .agent import RLConfig

__all__ = ["RL_PRESETS", "RLPreset", "rl_preset"]


class RLPreset(NamedTuple):
    name: str
    description: str
    settings: dict


_SMALL = dict(
    env="swimmer", latent_dim=16, num_heads=4, ff_dim=32, ode_dim=16, encoder_width=8,
    rtol=1e-3, atol=1e-4, adjoint=False, max_steps=100, random_decisions=600, epochs=6,
    decisions_per_epoch=200, horizon=5, candidates=100, elite=10, model_batch=32,
    max_passes=10, patience_start=5, patience_min=2, eval_episodes=2)

#: One record per preset; :func:`rl_preset` builds its :class:`~fwplab.rl.agent.RLConfig`.
RL_PRESETS: dict[str, RLPreset] = {
    preset.name: preset for preset in (
        RLPreset("appendix-hopper", "the appendix's Hopper run (README command, GPU-days)",
                 dict(env="hopper")),
        RLPreset("appendix-swimmer", "the appendix's Swimmer run (README command, GPU-days)",
                 dict(env="swimmer")),
        RLPreset("small", "the same algorithm at laptop sizes on Swimmer (minutes on 2 cores)",
                 _SMALL),
    )
}


def rl_preset(name: str, **overrides) -> RLConfig:
    """The :class:`RLConfig` of preset ``name`` with ``overrides`` (e.g. ``model``, ``seed``)."""
    if name not in RL_PRESETS:
        raise ValueError(f"preset: expected one of {', '.join(RL_PRESETS)}, got {name!r}")
    known = {field.name for field in dataclasses.fields(RLConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown settings {', '.join(unknown)}")
    return RLConfig(**{**RL_PRESETS[name].settings, **overrides})

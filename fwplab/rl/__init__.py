"""Model-based RL in semi-Markov decision processes with fast-weight world models: the
paper's second system (its appendix), and fwplab's continuous-rule extension of it.

One concept per module:

- :mod:`~fwplab.rl.envs`: the semi-MDPs (MuJoCo Hopper, Swimmer, HalfCheetah whose gap
  depends on the state; a pure-numpy windy grid), :data:`ENVS`, :func:`make_env`;
- :mod:`~fwplab.rl.flow`: the latent flow's ODE solvers, torchdiffeq's dopri5 step for step;
- :mod:`~fwplab.rl.world_models`: ``latent-ode``, ``latent-ode-rfwp`` (the paper's),
  ``latent-ode-cfwp`` (fwplab's own), :data:`WORLD_MODELS`, the losses;
- :mod:`~fwplab.rl.buffers`: running statistics, transitions, trajectory chunks;
- :mod:`~fwplab.rl.ddpg`: the actor-critic;
- :mod:`~fwplab.rl.planner`: MPC with actor proposals and a critic bootstrap;
- :mod:`~fwplab.rl.agent`: the schedule, checkpoints and resume; :mod:`~fwplab.rl.presets`.

Needs the ``rl`` extra (``pip install 'fwplab[rl]'``: gymnasium and mujoco) for the
MuJoCo tasks only.
"""

from .agent import RLConfig, RLRun, load_run, train_agent
from .buffers import (
    ChunkBuffer,
    Chunks,
    RunningStats,
    TransitionBuffer,
    episode_chunks,
    normalized_chunks,
    split_chunks,
)
from .ddpg import DDPG, DDPGConfig
from .envs import ENVS, EnvSpec, SemiMDPEnv, make_env
from .flow import METHODS, flow
from .planner import Plan, PlannerConfig, plan
from .presets import RL_PRESETS, RLPreset, rl_preset
from .world_models import (
    RULE_UPDATES,
    WORLD_MODELS,
    SequenceResult,
    WorldModel,
    WorldModelConfig,
    build_world_model,
    load_official_world_model,
    official_parameter_name,
    sequence_losses,
)

__all__ = [
    "ENVS",
    "EnvSpec",
    "SemiMDPEnv",
    "make_env",
    "METHODS",
    "flow",
    "RULE_UPDATES",
    "WORLD_MODELS",
    "SequenceResult",
    "WorldModel",
    "WorldModelConfig",
    "build_world_model",
    "load_official_world_model",
    "official_parameter_name",
    "sequence_losses",
    "ChunkBuffer",
    "Chunks",
    "RunningStats",
    "TransitionBuffer",
    "episode_chunks",
    "normalized_chunks",
    "split_chunks",
    "DDPG",
    "DDPGConfig",
    "Plan",
    "PlannerConfig",
    "plan",
    "RLConfig",
    "RLRun",
    "load_run",
    "train_agent",
    "RL_PRESETS",
    "RLPreset",
    "rl_preset",
]

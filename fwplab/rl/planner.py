"""Model-predictive control with actor proposals and a critic bootstrap.

At each real decision, with the current normalised state ``s_hat`` and the world
model's filtered latent, the planner imagines ``K`` candidate futures of ``H``
decisions in one batch::

    a_i   = clip(actor(s_hat_i) + N(0, sigma^2), -1, 1)      proposal of the online actor
    g_i   = min_gap + argmax timer([s_hat_i; a_i; z_i])       the model's gap
    z_i+1 = model.step([s_hat_i; a_i], z_i, g_i);  s_hat_i+1 = decode(z_i+1)
    r_i, alive_i = env.model_reward(unnormalised s_hat_0..H, a, g)
    R     = sum_i gamma^(tau_i) r_i  (+ gamma^(tau_H-1) Q(s_hat_H, actor(s_hat_H)) if alive at H)

and executes the mean first action of the ``elite`` candidates with the highest ``R``
(one round, no refinement). ``tau_i`` is the time at which reward ``i`` is discounted:
the official code uses the decision's end time ``g_0 + ... + g_i`` (``discount_at="end"``);
the semi-MDP convention is its start time ``g_0 + ... + g_(i-1)`` (``"start"``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from ..baselines import _positive_ints
from .buffers import RunningStats
from .ddpg import DDPG
from .world_models import Latent, WorldModel

__all__ = ["PlannerConfig", "Plan", "plan"]

#: ``model_reward(states (K, H+1, S), actions (K, H, A), gaps (K, H)) -> (rewards, alive)``.
RewardFunction = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclasses.dataclass(frozen=True)
class PlannerConfig:
    """The search: ``candidates`` futures of ``horizon`` decisions, ``elite`` averaged.

    The appendix: 1000 candidates, horizon 10, elite 50, proposal noise 0.1, gamma 0.99 per
    time unit, rewards discounted at their decision's end time.
    """

    candidates: int = 1000
    horizon: int = 10
    elite: int = 50
    proposal_noise: float = 0.1
    gamma: float = 0.99
    discount_at: str = "end"

    def __post_init__(self) -> None:
        _positive_ints(candidates=self.candidates, horizon=self.horizon, elite=self.elite)
        if self.elite > self.candidates:
            raise ValueError(f"elite {self.elite} exceeds candidates {self.candidates}")
        if self.discount_at not in ("end", "start"):
            raise ValueError(f"discount_at: expected 'end' or 'start', got {self.discount_at!r}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma: expected a number in (0, 1], got {self.gamma!r}")


class Plan(NamedTuple):
    """The executed ``action (A,)`` and the search behind it: ``states (K, H+1, S)``
    (normalised), ``actions (K, H, A)``, ``gaps (K, H)``, ``returns (K,)``, ``elite (e,)``
    indices."""

    action: Tensor
    states: Tensor
    actions: Tensor
    gaps: Tensor
    returns: Tensor
    elite: Tensor


@torch.no_grad()
def plan(model: WorldModel, reward: RewardFunction, stats: RunningStats, agent: DDPG,
         s_hat: Tensor, latent: Latent, config: PlannerConfig = PlannerConfig(),
         generator: Optional[torch.Generator] = None) -> Plan:
    """One planning step (see the module docstring).

    Args:
        model: the world model. reward: the environment's model-side reward.
        stats: the running statistics (to unnormalise predictions for the reward).
        agent: the DDPG actor (proposals) and critic (bootstrap).
        s_hat: the current normalised state ``(S,)``. latent: the filtered latent, batch 1.
        generator: the proposal noise's generator; default torch's global one.
    """
    K, H = config.candidates, config.horizon
    states = [s_hat.expand(K, -1)]
    latent = tuple(part.expand(K, *part.shape[1:]) for part in latent)
    actions, gaps = [], []
    for _ in range(H):
        a = agent.act(states[-1], config.proposal_noise, generator)
        x = torch.cat([states[-1], a], -1)
        g = model.predict_gap(x, latent)
        latent = model.step(x, latent, g)
        states.append(model.decode(latent))
        actions.append(a)
        gaps.append(g)
    states_t, actions_t, gaps_t = (torch.stack(states, 1), torch.stack(actions, 1),
                                   torch.stack(gaps, 1))
    rewards, alive = reward(stats.unnormalize(states_t), actions_t, gaps_t)
    ends = gaps_t.cumsum(1)
    tau = ends if config.discount_at == "end" else ends - gaps_t
    returns = (config.gamma ** tau * rewards).sum(1)
    last = states_t[:, -1]
    bootstrap = config.gamma ** ends[:, -1] * agent.value(last, agent.act(last))
    returns = returns + torch.where(alive[:, -1], bootstrap, torch.zeros_like(bootstrap))
    elite = torch.topk(returns, config.elite, sorted=False).indices
    return Plan(actions_t[elite, 0].mean(0), states_t, actions_t, gaps_t, returns, elite)

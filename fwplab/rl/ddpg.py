"""DDPG (Lillicrap et al., 2016) on real semi-MDP transitions, with a per-time-unit discount.

Actor ``mu`` and critic ``Q`` read normalised states ``s_hat`` (see
:class:`~fwplab.rl.buffers.RunningStats`); ``mu'`` and ``Q'`` are target copies that follow
them slowly. One :meth:`DDPG.update` on a uniformly sampled batch of ``B`` transitions
``(s, a, r, gap, s')``::

    y      = r + gamma^gap * Q'(s_hat', mu'(s_hat'))     (y = r if s' is terminal; no gradient)
    L_Q    = (1/B) sum (Q(s_hat, a) - y)^2               one Adam step on Q   (critic_lr)
    L_mu   = -(1/B) sum Q(s_hat, mu(s_hat))              one Adam step on mu  (actor_lr),
                                                         with the critic just updated
    theta' <- (1 - tau) theta' + tau theta               for both targets

``gap`` is the raw time gap of the decision, so ``gamma`` is a discount per time unit. No
gradient clipping. The layers keep PyTorch's default initialisation and are built in the
reference's order (including one critic layer it builds and then replaces), so that with
the same global torch seed the initial weights are the reference's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .buffers import RunningStats, TransitionBuffer

__all__ = ["Actor", "Critic", "DDPGConfig", "DDPG"]


class Actor(nn.Module):
    """``mu(s) = tanh(Lin(h->A)(ReLU(Lin(h->h)(ReLU(Lin(S->h)(s))))))``, ``(N, S) -> (N, A)``."""

    def __init__(self, state_dim: int, action_dim: int, hidden: int = 64):
        super().__init__()
        self.fc1 = nn.Linear(state_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, action_dim)

    def forward(self, s_hat: Tensor) -> Tensor:
        return torch.tanh(self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(s_hat))))))


class Critic(nn.Module):
    """``Q(s, a) = Lin(h->1)(ReLU(Lin(h+A->h)([ReLU(Lin(S->h)(s)); a])))``, ``-> (N, 1)``."""

    def __init__(self, state_dim: int, action_dim: int, hidden: int = 64):
        super().__init__()
        first = nn.Linear(state_dim, hidden)
        # The reference builds a Lin(h->h) here and replaces it after the output layer:
        # drawing it keeps the global torch random stream, hence the initial weights, equal.
        nn.Linear(hidden, hidden)
        last = nn.Linear(hidden, 1)
        self.fc1, self.fc2, self.fc3 = first, nn.Linear(hidden + action_dim, hidden), last

    def forward(self, s_hat: Tensor, action: Tensor) -> Tensor:
        h = torch.relu(self.fc1(s_hat))
        return self.fc3(torch.relu(self.fc2(torch.cat((h, action), dim=-1))))


@dataclass(frozen=True)
class DDPGConfig:
    """Hyper-parameters: discount per time unit, hidden width, Adam rates, target rate,
    batch size, and the std of the Gaussian noise added to proposed actions (used by the
    planner and the evaluation through :meth:`DDPG.act`, not by the update)."""

    gamma: float = 0.99
    hidden: int = 64
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    tau: float = 1e-3
    batch_size: int = 128
    proposal_noise: float = 0.1

    def __post_init__(self):
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma: expected a number in (0, 1], got {self.gamma}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau: expected a number in (0, 1], got {self.tau}")
        if self.hidden < 1 or self.batch_size < 1:
            raise ValueError(f"hidden, batch_size: expected positive integers, got "
                             f"{self.hidden} and {self.batch_size}")


def _soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for t, p in zip(target.parameters(), source.parameters(), strict=True):
            t.copy_(t * (1.0 - tau) + p * tau)


class DDPG(nn.Module):
    """Actor, critic, their targets and their two Adam optimizers (see the module docstring).

    Move it with ``.to(device, dtype)`` before the first update. Its :meth:`state_dict`
    has its own layout (networks and optimizers), so keep it as a top-level object rather
    than a submodule of another module.
    """

    def __init__(self, state_dim: int, action_dim: int, config: Optional[DDPGConfig] = None):
        super().__init__()
        self.config = config = config if config is not None else DDPGConfig()
        self.state_dim, self.action_dim = state_dim, action_dim
        self.actor = Actor(state_dim, action_dim, config.hidden)
        self.target_actor = Actor(state_dim, action_dim, config.hidden)
        self.target_actor.load_state_dict(self.actor.state_dict())
        self.critic = Critic(state_dim, action_dim, config.hidden)
        self.target_critic = Critic(state_dim, action_dim, config.hidden)
        self.target_critic.load_state_dict(self.critic.state_dict())
        self.target_actor.requires_grad_(False)
        self.target_critic.requires_grad_(False)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)

    def _check(self, name: str, x: Tensor, dim: int) -> None:
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name}: expected a tensor of shape (batch, {dim}), got {shape}")

    def act(self, s_hat: Tensor, noise_std: float = 0.0,
            generator: Optional[torch.Generator] = None) -> Tensor:
        """``clip(mu(s_hat) + noise_std * eps, -1, 1)``, ``eps ~ N(0, I)`` drawn from
        ``generator`` (or the global torch stream), none drawn when ``noise_std == 0``.

        ``s_hat (N, S)`` -> ``(N, A)``, without gradient.
        """
        self._check("s_hat", s_hat, self.state_dim)
        if noise_std < 0:
            raise ValueError(f"noise_std: expected a non-negative number, got {noise_std}")
        with torch.no_grad():
            action = self.actor(s_hat)
            if noise_std > 0:
                action = action + torch.empty_like(action).normal_(0.0, noise_std,
                                                                    generator=generator)
            return action.clamp(-1.0, 1.0)

    def value(self, s_hat: Tensor, action: Tensor) -> Tensor:
        """Online critic ``Q(s_hat, a)``: ``(N, S), (N, A) -> (N,)``, without gradient."""
        self._check("s_hat", s_hat, self.state_dim)
        self._check("action", action, self.action_dim)
        with torch.no_grad():
            return self.critic(s_hat, action).squeeze(-1)

    def update(self, buffer: TransitionBuffer, stats: RunningStats,
               rng: np.random.Generator) -> Optional[dict[str, float]]:
        """One DDPG update on ``batch_size`` transitions drawn from ``buffer`` with ``rng``.

        Returns ``None`` (nothing drawn, nothing changed) while the buffer holds fewer than
        ``batch_size`` transitions, else ``{"critic_loss": L_Q, "actor_loss": L_mu}``.
        """
        config = self.config
        if len(buffer) < config.batch_size:
            return None
        batch = buffer.sample(config.batch_size, rng)
        weight = self.critic.fc1.weight
        batch = {name: value.to(weight.device) for name, value in batch.items()}
        state, next_state, action, reward, gap = (
            batch[name].to(weight.dtype) for name in ("state", "next_state", "action",
                                                      "reward", "gap"))
        live = ~batch["terminal"]
        s_hat = stats.normalize(state)
        with torch.no_grad():
            next_hat = stats.normalize(next_state[live])
            bootstrap = torch.zeros_like(reward)
            bootstrap[live] = self.target_critic(next_hat, self.target_actor(next_hat)).squeeze(-1)
            target = reward + config.gamma ** gap * bootstrap

        critic_loss = F.mse_loss(self.critic(s_hat, action).squeeze(-1), target)
        self.critic_optimizer.zero_grad()
        critic_loss.backward()
        self.critic_optimizer.step()

        actor_loss = -self.critic(s_hat, self.actor(s_hat)).mean()
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        self.actor_optimizer.step()

        _soft_update(self.target_actor, self.actor, config.tau)
        _soft_update(self.target_critic, self.critic, config.tau)
        return {"critic_loss": critic_loss.item(), "actor_loss": actor_loss.item()}

    def state_dict(self) -> dict:
        """``{"networks", "actor_optimizer", "critic_optimizer"}``: everything an exact resume
        needs (weights of all four networks and both Adam states)."""
        return {"networks": super().state_dict(),
                "actor_optimizer": self.actor_optimizer.state_dict(),
                "critic_optimizer": self.critic_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore networks, targets and both optimizers from :meth:`state_dict`."""
        super().load_state_dict(state["networks"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])

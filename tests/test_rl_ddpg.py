"""DDPG on semi-MDP transitions: one update against a hand-written computation, targets,
exact resume and the action rule."""

import copy
import io

import numpy as np
import pytest
import torch

from fwplab.rl.buffers import RunningStats, TransitionBuffer
from fwplab.rl.ddpg import DDPG, Actor, Critic, DDPGConfig

S, A = 4, 2


def _setup(seed: int = 0, count: int = 40):
    """A buffer with terminals and gaps 1..3, and statistics over its states."""
    rng = np.random.default_rng(seed)
    buffer, stats = TransitionBuffer(100, S, A), RunningStats(S)
    for i in range(count):
        state = rng.normal(2.0, 3.0, size=S)
        following = None if i % 5 == 4 else rng.normal(2.0, 3.0, size=S)
        buffer.push(state, following, rng.uniform(-1, 1, size=A), float(rng.normal()),
                    1 + i % 3)
        stats.push(state)
    return buffer, stats


def _adam_first_step(param: torch.Tensor, grad: torch.Tensor, lr: float) -> torch.Tensor:
    """Adam's first step (betas 0.9, 0.999, eps 1e-8) written out."""
    m, v = 0.1 * grad, 0.001 * grad ** 2
    return param - lr * (m / 0.1) / ((v / 0.001).sqrt() + 1e-8)


def test_update_equals_a_hand_written_step():
    torch.manual_seed(0)
    config = DDPGConfig(gamma=0.9, batch_size=16, tau=0.01)
    agent = DDPG(S, A, config)
    buffer, stats = _setup()
    mu, q = copy.deepcopy(agent.actor), copy.deepcopy(agent.critic)
    mu_t, q_t = copy.deepcopy(agent.target_actor), copy.deepcopy(agent.target_critic)

    batch = buffer.sample(16, np.random.default_rng(11))
    losses = agent.update(buffer, stats, np.random.default_rng(11))
    assert 0 < batch["terminal"].sum() < 16 and len(set(batch["gap"].tolist())) == 3

    mean, std = stats.mean.float(), stats.std.float()
    s_hat = (batch["state"] - mean) / std
    target = torch.empty(16)
    for i in range(16):
        target[i] = batch["reward"][i]
        if not batch["terminal"][i]:
            following = ((batch["next_state"][i] - mean) / std)[None]
            bootstrap = q_t(following, mu_t(following))[0, 0].detach()
            target[i] += 0.9 ** batch["gap"][i].item() * bootstrap
    critic_loss = ((q(s_hat, batch["action"])[:, 0] - target) ** 2).mean()
    grads = torch.autograd.grad(critic_loss, list(q.parameters()))
    with torch.no_grad():
        for p, g in zip(q.parameters(), grads, strict=True):
            p.copy_(_adam_first_step(p, g, 1e-3))
    actor_loss = -q(s_hat, mu(s_hat)).mean()
    grads = torch.autograd.grad(actor_loss, list(mu.parameters()))
    with torch.no_grad():
        for p, g in zip(mu.parameters(), grads, strict=True):
            p.copy_(_adam_first_step(p, g, 1e-4))

    assert losses["critic_loss"] == pytest.approx(critic_loss.item(), abs=1e-6)
    assert losses["actor_loss"] == pytest.approx(actor_loss.item(), abs=1e-6)
    for ours, ref, ref_target, ours_target in ((agent.critic, q, q_t, agent.target_critic),
                                               (agent.actor, mu, mu_t, agent.target_actor)):
        for p, r, t_old, t_new in zip(ours.parameters(), ref.parameters(),
                                      ref_target.parameters(), ours_target.parameters(),
                                      strict=True):
            torch.testing.assert_close(p, r, rtol=0, atol=1e-6)
            # the targets move by exactly tau towards the updated online networks
            torch.testing.assert_close(t_new, 0.99 * t_old + 0.01 * p, rtol=0, atol=1e-7)


def test_no_update_below_batch_size_and_targets_start_as_copies():
    torch.manual_seed(1)
    agent = DDPG(S, A, DDPGConfig(batch_size=41))
    before = copy.deepcopy(agent.state_dict())
    for online, target in ((agent.actor, agent.target_actor), (agent.critic, agent.target_critic)):
        assert all(torch.equal(a, b)
                   for a, b in zip(online.parameters(), target.parameters(), strict=True))
    buffer, stats = _setup(count=40)
    rng = np.random.default_rng(0)
    assert agent.update(buffer, stats, rng) is None
    assert rng.random() == np.random.default_rng(0).random()  # nothing drawn
    after = agent.state_dict()["networks"]
    assert all(torch.equal(before["networks"][k], after[k]) for k in after)


def test_state_dict_round_trip_gives_identical_next_updates():
    torch.manual_seed(2)
    config = DDPGConfig(batch_size=8)
    agent = DDPG(S, A, config)
    buffer, stats = _setup(count=30)
    rng = np.random.default_rng(4)
    for _ in range(3):
        agent.update(buffer, stats, rng)
    handle = io.BytesIO()
    torch.save(agent.state_dict(), handle)
    handle.seek(0)
    torch.manual_seed(99)
    resumed = DDPG(S, A, config)
    resumed.load_state_dict(torch.load(handle, weights_only=True))
    for _ in range(3):
        a = agent.update(buffer, stats, np.random.default_rng(5))
        b = resumed.update(buffer, stats, np.random.default_rng(5))
        assert a == b
    ours, theirs = agent.state_dict(), resumed.state_dict()
    assert all(torch.equal(ours["networks"][k], theirs["networks"][k])
               for k in ours["networks"])
    assert ours["critic_optimizer"]["state"][0]["step"].item() == 6


def test_act_is_clipped_deterministic_without_noise_and_seeded_with_noise():
    torch.manual_seed(3)
    agent = DDPG(S, A)
    s_hat = torch.randn(6, S)
    with torch.no_grad():
        plain = agent.actor(s_hat)
    assert torch.equal(agent.act(s_hat), plain)
    state = torch.get_rng_state()
    assert torch.equal(agent.act(s_hat, 0.0), agent.act(s_hat))
    assert torch.equal(torch.get_rng_state(), state)  # no noise, no draw
    noisy = agent.act(s_hat, 5.0, torch.Generator().manual_seed(0))
    assert noisy.abs().max() == 1.0 and bool((noisy.abs() <= 1).all())
    assert torch.equal(noisy, agent.act(s_hat, 5.0, torch.Generator().manual_seed(0)))
    one = agent.act(s_hat[:1], 0.1, torch.Generator().manual_seed(1))
    assert one.shape == (1, A) and not one.requires_grad
    value = agent.value(s_hat, plain)
    assert value.shape == (6,) and torch.equal(value, agent.critic(s_hat, plain)[:, 0].detach())


def test_networks_follow_the_stated_architecture():
    actor, critic = Actor(S, A, hidden=8), Critic(S, A, hidden=8)
    assert [tuple(p.shape) for p in actor.parameters()] == [(8, S), (8,), (8, 8), (8,), (A, 8),
                                                            (A,)]
    assert [tuple(p.shape) for p in critic.parameters()] == [(8, S), (8,), (8, 8 + A), (8,),
                                                             (1, 8), (1,)]
    s, a = torch.randn(3, S), torch.randn(3, A)
    h = torch.relu(critic.fc1(s))
    expected = critic.fc3(torch.relu(critic.fc2(torch.cat([h, a], -1))))
    assert torch.equal(critic(s, a), expected)
    assert actor(s).shape == (3, A) and bool((actor(s).abs() < 1).all())


def test_update_in_float64():
    torch.manual_seed(4)
    agent = DDPG(S, A, DDPGConfig(batch_size=8)).double()
    buffer, stats = _setup(count=20)
    losses = agent.update(buffer, stats, np.random.default_rng(0))
    assert all(np.isfinite(v) for v in losses.values())
    assert agent.critic.fc1.weight.dtype == torch.float64
    assert agent.act(torch.zeros(1, S, dtype=torch.float64)).dtype == torch.float64


def test_errors_name_what_was_expected():
    agent = DDPG(S, A)
    with pytest.raises(ValueError, match=r"s_hat: expected a tensor of shape \(batch, 4\)"):
        agent.act(torch.zeros(S))
    with pytest.raises(ValueError, match=r"action: expected a tensor of shape \(batch, 2\)"):
        agent.value(torch.zeros(1, S), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="noise_std"):
        agent.act(torch.zeros(1, S), -0.1)
    with pytest.raises(ValueError, match="tau"):
        DDPGConfig(tau=0.0)

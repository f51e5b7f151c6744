"""Exercises of notebook 9, "Continuous-time model-based RL with fast weights"."""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from ..rl.envs import ENVS, EnvSpec
from . import exercise

#: Absolute tolerance of the float64 comparisons.
TOLERANCE = 1e-9

# ------------------------------------------------------------------ 09.gap-rule
#: Environment records the gap judge tries: the three MuJoCo tasks and two made-up ones
#: where clipping matters (min_gap 2) and where max_gap - min_gap is odd.
GAP_RECORDS = (
    ENVS["hopper"],
    ENVS["swimmer"],
    ENVS["half_cheetah"],
    dataclasses.replace(ENVS["swimmer"], name="made-up-2-7", min_gap=2, max_gap=7),
    dataclasses.replace(ENVS["hopper"], name="made-up-1-8", min_gap=1, max_gap=8),
)
#: Random velocities per record.
GAP_VELOCITIES = 40


def _velocity_size(spec: EnvSpec) -> int:
    """The velocity block of a MuJoCo observation: ``nv = S / 2`` entries."""
    return spec.state_dim // 2


def _gap_before_rounding(velocity: np.ndarray, spec: EnvSpec) -> float:
    amp = (spec.max_gap - spec.min_gap) // 2
    c = np.cos(20 * np.pi * np.linalg.norm(velocity))
    return amp * c + amp + 1


def _gap_rule(velocity: np.ndarray, spec: EnvSpec) -> int:
    gap = round(float(_gap_before_rounding(velocity, spec)))
    return min(max(gap, spec.min_gap), spec.max_gap)


def _tie_near(norm: float, direction: np.ndarray, amp: int, target: float
              ) -> Optional[np.ndarray]:
    """A velocity along ``direction`` within 30 float steps of ``norm`` whose rule value, and
    two other orders of the same sum, are exactly ``target``; None if there is none."""
    for step in sorted(range(-30, 31), key=abs):
        velocity = direction * norm * (1 + step * 2.0 ** -52)
        cosine = np.cos(20 * np.pi * np.linalg.norm(velocity))
        values = (amp * cosine + amp + 1, amp * (cosine + 1) + 1, amp * cosine + (amp + 1))
        if all(value == target for value in values):
            return velocity
    return None


def _tie_velocities(spec: EnvSpec, generator: np.random.Generator) -> list[np.ndarray]:
    """One velocity per tie ``amp c + amp + 1 = k + 1/2`` with ``k`` even (where rounding
    half up and half to even disagree), searched near the norms that solve
    ``cos(20 pi n) = c`` on several branches, in random directions."""
    amp = (spec.max_gap - spec.min_gap) // 2
    found = []
    for target in np.arange(2.5, 2 * amp + 1, 2.0):
        c = (target - amp - 1) / amp
        for branch in range(12):
            theta = (-1) ** branch * math.acos(c) + 2 * math.pi * (branch // 2 + 1)
            direction = generator.normal(size=_velocity_size(spec))
            velocity = _tie_near(theta / (20 * math.pi), direction / np.linalg.norm(direction),
                                 amp, float(target))
            if velocity is not None:
                found.append(velocity)
                break
    return found


def _gap_cases() -> list[tuple[np.ndarray, EnvSpec, bool]]:
    """``(velocity, record, is_tie)``: random speeds of 0 to 10 for every record, then ties."""
    generator = np.random.default_rng(909)
    cases = []
    for spec in GAP_RECORDS:
        for _ in range(GAP_VELOCITIES):
            direction = generator.normal(size=_velocity_size(spec))
            speed = generator.uniform(0.0, 10.0)
            cases.append((direction / np.linalg.norm(direction) * speed, spec, False))
    for spec in (ENVS["swimmer"], ENVS["half_cheetah"]):
        cases += [(velocity, spec, True) for velocity in _tie_velocities(spec, generator)]
    return cases


def _wrong_gap_rules() -> list[Callable]:
    def half_up(velocity, spec):
        gap = math.floor(_gap_before_rounding(velocity, spec) + 0.5)
        return min(max(gap, spec.min_gap), spec.max_gap)

    def no_clip(velocity, spec):
        return round(float(_gap_before_rounding(velocity, spec)))

    def half_amplitude(velocity, spec):
        amp = (spec.max_gap - spec.min_gap) / 2
        gap = round(amp * np.cos(20 * np.pi * np.linalg.norm(velocity)) + amp + 1)
        return min(max(gap, spec.min_gap), spec.max_gap)

    def float_gap(velocity, spec):
        return float(np.clip(np.round(_gap_before_rounding(velocity, spec)), spec.min_gap,
                             spec.max_gap))

    return [half_up, no_clip, half_amplitude, float_gap]


@exercise(
    "09.gap-rule",
    "Write gap(velocity, spec): the number of time units a decision lasts, from the velocity "
    "block `velocity` (a float64 numpy array) of the current observation and the environment "
    "record `spec` (an EnvSpec; read spec.min_gap and spec.max_gap). With "
    "amp = (max_gap - min_gap) // 2 and c = np.cos(20 * np.pi * np.linalg.norm(velocity)), "
    "gap = clip(round(amp * c + amp + 1), min_gap, max_gap), round as Python's; return an int.",
    solution=lambda: _gap_rule,
    wrong_answers=_wrong_gap_rules,
)
def _judge_gap_rule(answer: Any) -> Optional[str]:
    if not callable(answer):
        return f"expected a function gap(velocity, spec), got {type(answer).__name__}"
    for velocity, spec, tie in _gap_cases():
        got = answer(velocity.copy(), spec)
        expected = _gap_rule(velocity, spec)
        try:
            index = operator.index(got)
        except TypeError:
            return (f"expected an int, got {type(got).__name__} {got!r}: env.step refuses a gap "
                    "that is not an integer")
        if index == expected:
            continue
        value = float(_gap_before_rounding(velocity, spec))
        if tie:
            return (f"at a tie ({spec.name}, amp c + amp + 1 = {value}) you returned {index}: "
                    "Python's round sends a half to the even neighbour, not up")
        if index < spec.min_gap or index > spec.max_gap:
            return (f"{spec.name}: gap {index} lies outside [{spec.min_gap}, {spec.max_gap}]: "
                    "clip after rounding")
        return (f"{spec.name} (min_gap {spec.min_gap}, max_gap {spec.max_gap}), "
                f"|v| = {np.linalg.norm(velocity):.4f}: expected another gap than {index}; "
                "amp is an integer, (max_gap - min_gap) // 2")
    return None


# ------------------------------------------------------------------ 09.candidate-returns
#: ``(K, H, gamma)`` of the return judge's random cases.
RETURN_CASES = ((1, 1, 0.99), (4, 3, 0.9), (3, 6, 0.5), (5, 10, 0.99))


def _candidate_returns(rewards: Tensor, gaps: Tensor, gamma: float, bootstrap: Tensor,
                       discount_at: str) -> Tensor:
    ends = gaps.cumsum(-1)
    tau = ends if discount_at == "end" else ends - gaps
    return (gamma ** tau * rewards).sum(-1) + gamma ** ends[:, -1] * bootstrap


def _returns_by_loop(rewards: Tensor, gaps: Tensor, gamma: float, bootstrap: Tensor,
                     discount_at: str) -> Tensor:
    """The judge's reference: one candidate at a time, the clock advanced decision by decision."""
    out = []
    for r, g, q in zip(rewards.tolist(), gaps.tolist(), bootstrap.tolist(), strict=True):
        clock, total = 0.0, 0.0
        for reward, gap in zip(r, g, strict=True):
            start, clock = clock, clock + gap
            total += gamma ** (clock if discount_at == "end" else start) * reward
        out.append(total + gamma ** clock * q)
    return torch.tensor(out, dtype=torch.float64)


def _return_cases():
    generator = torch.Generator().manual_seed(99)
    for K, H, gamma in RETURN_CASES:
        rewards = torch.randn(K, H, generator=generator, dtype=torch.float64)
        gaps = torch.randint(1, 8, (K, H), generator=generator).to(torch.float64)
        bootstrap = 5 * torch.randn(K, generator=generator, dtype=torch.float64)
        yield rewards, gaps, gamma, bootstrap


def _wrong_returns() -> list[Callable]:
    def per_decision(rewards, gaps, gamma, bootstrap, discount_at):
        steps = torch.arange(rewards.shape[-1], dtype=rewards.dtype)
        tau = steps + 1 if discount_at == "end" else steps
        return (gamma ** tau * rewards).sum(-1) + gamma ** rewards.shape[-1] * bootstrap

    def swapped(rewards, gaps, gamma, bootstrap, discount_at):
        other = "start" if discount_at == "end" else "end"
        return _candidate_returns(rewards, gaps, gamma, bootstrap, other)

    def bootstrap_at_last_start(rewards, gaps, gamma, bootstrap, discount_at):
        ends = gaps.cumsum(-1)
        tau = ends if discount_at == "end" else ends - gaps
        return (gamma ** tau * rewards).sum(-1) + gamma ** (ends - gaps)[:, -1] * bootstrap

    def undiscounted_bootstrap(rewards, gaps, gamma, bootstrap, discount_at):
        return _candidate_returns(rewards, gaps, gamma, torch.zeros_like(bootstrap),
                                  discount_at) + bootstrap

    return [per_decision, swapped, bootstrap_at_last_start, undiscounted_bootstrap]


@exercise(
    "09.candidate-returns",
    "Write returns(rewards, gaps, gamma, bootstrap, discount_at): the planner's return of K "
    "candidates of H decisions, rewards and gaps (K, H) float64, gamma a number, bootstrap "
    "(K,) the critic's value of each candidate's last state (0 where it died): "
    "sum_i gamma^tau_i r_i + gamma^(g_0 + ... + g_(H-1)) bootstrap, where tau_i is the start "
    "time g_0 + ... + g_(i-1) of decision i (discount_at='start') or its end time "
    "g_0 + ... + g_i ('end'). Return (K,).",
    solution=lambda: _candidate_returns,
    wrong_answers=_wrong_returns,
)
def _judge_returns(answer: Any) -> Optional[str]:
    if not callable(answer):
        return ("expected a function returns(rewards, gaps, gamma, bootstrap, discount_at), got "
                f"{type(answer).__name__}")
    for rewards, gaps, gamma, bootstrap in _return_cases():
        for discount_at in ("start", "end"):
            expected = _returns_by_loop(rewards, gaps, gamma, bootstrap, discount_at)
            got = torch.as_tensor(answer(rewards.clone(), gaps.clone(), gamma, bootstrap.clone(),
                                         discount_at), dtype=torch.float64)
            if got.shape != expected.shape:
                return (f"expected one return per candidate, shape {tuple(expected.shape)}, got "
                        f"{tuple(got.shape)}: sum over the decisions (the last axis)")
            if torch.allclose(got, expected, rtol=TOLERANCE, atol=TOLERANCE):
                continue
            zero = torch.zeros_like(bootstrap)
            alone = torch.as_tensor(answer(rewards.clone(), gaps.clone(), gamma, zero,
                                           discount_at), dtype=torch.float64)
            if not torch.allclose(alone, _returns_by_loop(rewards, gaps, gamma, zero, discount_at),
                                  rtol=TOLERANCE, atol=TOLERANCE):
                return (f"discount_at={discount_at!r}, with bootstrap 0: the rewards are off; the "
                        "discount is per time unit, so decision i counts gamma to the power of "
                        "a time, the sum of the gaps up to its start ('start') or its end ('end')")
            return (f"discount_at={discount_at!r}, gamma={gamma}: the critic's value is that of "
                    "the state after the last decision, so it is discounted by the time at "
                    "which that state is reached, the sum of all H gaps")
    return None


# ------------------------------------------------------------------ 09.hebb-memory
#: ``(T, heads, d)`` of the memory judge's random cases.
MEMORY_SHAPES = ((1, 1, 3), (5, 2, 4), (9, 3, 2))


def _hebb_memory(keys: Tensor, values: Tensor, rates: Tensor) -> Tensor:
    writes = (rates * torch.tanh(values)).unsqueeze(-1) * torch.softmax(keys, -1).unsqueeze(-2)
    return writes.cumsum(0)


def _wrong_memories() -> list[Callable]:
    def transposed(keys, values, rates):
        return _hebb_memory(keys, values, rates).transpose(-1, -2)

    def last_write_only(keys, values, rates):
        return (rates * torch.tanh(values)).unsqueeze(-1) * torch.softmax(keys, -1).unsqueeze(-2)

    def no_squash(keys, values, rates):
        writes = (rates * values).unsqueeze(-1) * torch.softmax(keys, -1).unsqueeze(-2)
        return writes.cumsum(0)

    def softmax_over_heads(keys, values, rates):
        writes = (rates * torch.tanh(values)).unsqueeze(-1) * torch.softmax(keys, -2).unsqueeze(-2)
        return writes.cumsum(0)

    def starts_with_zero(keys, values, rates):
        memory = _hebb_memory(keys, values, rates)
        return torch.cat([torch.zeros_like(memory[:1]), memory])

    return [transposed, last_write_only, no_squash, softmax_over_heads, starts_with_zero]


@exercise(
    "09.hebb-memory",
    "Write memory(keys, values, rates): the Latent ODE-RFWP's Hebbian fast weights after each "
    "of T decisions, from W = 0 before the first, given the raw key and value logits keys, "
    "values (T, heads, d) and the rates beta (T, heads, 1) (already squashed by the sigmoid). "
    "Each decision adds (beta tanh(v)) softmax(k)^T per head, rows indexing values. "
    "Return (T, heads, d, d).",
    solution=lambda: _hebb_memory,
    wrong_answers=_wrong_memories,
)
def _judge_memory(answer: Any) -> Optional[str]:
    if not callable(answer):
        return f"expected a function memory(keys, values, rates), got {type(answer).__name__}"
    generator = torch.Generator().manual_seed(19)
    for T, heads, d in MEMORY_SHAPES:
        keys = 2 * torch.randn(T, heads, d, generator=generator, dtype=torch.float64)
        values = 2 * torch.randn(T, heads, d, generator=generator, dtype=torch.float64)
        rates = torch.rand(T, heads, 1, generator=generator, dtype=torch.float64)
        expected = torch.zeros(T, heads, d, d, dtype=torch.float64)
        W = torch.zeros(heads, d, d, dtype=torch.float64)
        for t in range(T):  # one decision at a time, entry by entry
            for h in range(heads):
                k = torch.exp(keys[t, h]) / torch.exp(keys[t, h]).sum()
                v = rates[t, h, 0] * torch.tanh(values[t, h])
                for row in range(d):
                    for column in range(d):
                        W[h, row, column] += v[row] * k[column]
            expected[t] = W
        got = torch.as_tensor(answer(keys.clone(), values.clone(), rates.clone()),
                              dtype=torch.float64)
        if got.shape != expected.shape:
            return (f"expected the fast weights after each decision, shape "
                    f"{tuple(expected.shape)}, got {tuple(got.shape)}")
        if torch.allclose(got, expected, rtol=TOLERANCE, atol=TOLERANCE):
            continue
        if T > 1 and torch.allclose(got[1:], expected[1:] - expected[:-1], atol=1e-6):
            return "the fast weight is a memory: each decision adds its write to W"
        if torch.allclose(got, expected.transpose(-1, -2), atol=1e-6):
            return "rows index the values and columns the keys: W += v k^T, not k v^T"
        return ("check the squashing: the key is a softmax over each head's d entries, the "
                "value a tanh scaled by the rate")
    return None

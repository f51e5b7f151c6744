"""Semi-Markov decision processes of the RL appendix: three MuJoCo tasks and a windy grid.

A decision in a semi-MDP lasts ``gap`` integer *time units* that the environment chooses
before the step from the current observation (:meth:`SemiMDPEnv.time_gap`). The agent then
acts (:meth:`SemiMDPEnv.step`) and the environment advances ``gap`` units at once; the
discount is per unit, so the decision is discounted by ``gamma ** gap``.

MuJoCo tasks (``hopper``, ``swimmer``, ``half_cheetah``) run the physics of gymnasium's
``*-v5`` environments (unwrapped, so no decision-count time limit) and rebuild the
observation, reward and termination of the original ``*-v2`` tasks from the simulator's
``qpos``/``qvel``. One time unit is one physics step of ``timestep`` seconds. With
``nq`` positions and ``nv`` velocities (``nq == nv`` here), the observation is::

    obs = [qpos[1:nq], qvel (hopper: clipped to [-10, 10]), qpos[0]]      # (S,), S = 2 nq

so the x position comes LAST. The gap rule reads the velocity block ``v = obs[nq-1 : S-1]``
and ignores the action; with ``amp = (max_gap - min_gap) // 2``::

    gap = clip(round(amp * cos(20 pi ||v||_2) + amp + 1), min_gap, max_gap)

(``round`` is Python's, half to even). With ``x_b``, ``x_a`` the x position before and after
the step and ``dT = timestep * gap``, the real reward is::

    r = (x_a - x_b) / dT + alive - ctrl * ||a||^2

with ``(alive, ctrl)`` = ``(1, 1e-3)`` for hopper, ``(0, 1e-4)`` for swimmer and ``(0, 0.1)``
for half_cheetah. The hopper is healthy while ``qpos``, ``qvel`` are finite,
``|[qpos[2:], qvel]| < 100`` elementwise (unclipped), height ``qpos[1] > 0.7`` and
angle ``|qpos[2]| < 0.2``; it terminates when unhealthy after a step and, as in v2, the alive
bonus is paid on that terminal step too. Swimmer and half_cheetah never terminate. Every
MuJoCo episode also ends once the accumulated time reaches 10 000 units (which 1000
decisions of at most 9 units never do). Actions are used as given in the reward; the
simulator clamps the applied controls to its range ``[-1, 1]``.

The planner's reward (:meth:`SemiMDPEnv.model_reward`) keeps two quirks of the original
code: its progress term divides by ``gap`` in units, not by ``timestep * gap`` (so it is
``1 / timestep`` times smaller than the real one), and the hopper's alive mask is built on
predicted observations, includes the x position in the ``|.| < 100`` test and is cumulative
along the horizon: the reward is 0 on and after the first dead step.

The windy grid (``windy_grid``, pure numpy) is a discrete-action task with a state-free gap;
see :class:`WindyGridSemiMDP`.
"""

from __future__ import annotations

import abc
import operator
import warnings
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ENVS", "EnvSpec", "SemiMDPEnv", "make_env"]


@dataclass(frozen=True)
class EnvSpec:
    """The facts about one environment that the rest of the package reads.

    ``state_dim`` is S (for MuJoCo tasks the x position is the last entry), ``action_dim`` is
    A (the windy grid has A = 1: one integer move index 0..7), gaps are integers in
    ``[min_gap, max_gap]`` time units and ``timestep`` is the length of one unit in seconds
    (1.0 for the windy grid).
    """

    name: str
    state_dim: int
    action_dim: int
    min_gap: int
    max_gap: int
    timestep: float
    continuous_actions: bool
    needs_mujoco: bool
    description: str


ENVS: dict[str, EnvSpec] = {
    spec.name: spec
    for spec in (
        EnvSpec(
            "hopper", 12, 3, 1, 7, 0.002, True, True,
            "MuJoCo Hopper (gymnasium Hopper-v5 physics, v2 reward): hop forward; reward "
            "x velocity + 1 - 1e-3 |a|^2; a fall ends the episode; gaps of 1-7 steps of 2 ms",
        ),
        EnvSpec(
            "swimmer", 10, 2, 1, 7, 0.01, True, True,
            "MuJoCo Swimmer (gymnasium Swimmer-v5 physics, v2 reward): swim forward; reward "
            "x velocity - 1e-4 |a|^2; never terminates; gaps of 1-7 steps of 10 ms",
        ),
        EnvSpec(
            "half_cheetah", 18, 6, 1, 9, 0.01, True, True,
            "MuJoCo HalfCheetah (gymnasium HalfCheetah-v5 physics, v2 reward): run forward; "
            "reward x velocity - 0.1 |a|^2; never terminates; gaps of 1-9 steps of 10 ms",
        ),
        EnvSpec(
            "windy_grid", 2, 1, 1, 7, 1.0, False, False,
            "Windy grid (numpy): 8 moves on [-3.5, 3.5] x [-5, 5] with wind and noise; "
            "reward -gap, +10 at the goal (terminal); gaps uniform in 1-7, ended at t >= 150",
        ),
    )
}


@dataclass(frozen=True)
class _Physics:
    """Per-task constants of the MuJoCo tasks (the v2 reward and reset noise)."""

    gym_id: str
    alive_bonus: float
    ctrl_cost: float
    reset_noise_scale: float
    clip_velocity: float | None
    can_fall: bool


_PHYSICS = {
    "hopper": _Physics("Hopper-v5", 1.0, 1e-3, 5e-3, 10.0, True),
    "swimmer": _Physics("Swimmer-v5", 0.0, 1e-4, 0.1, None, False),
    "half_cheetah": _Physics("HalfCheetah-v5", 0.0, 0.1, 0.1, None, False),
}

_MUJOCO_TIME_LIMIT = 10_000
_GRID_TIME_LIMIT = 150


def make_env(name: str, seed: int) -> SemiMDPEnv:
    """Build environment ``name`` (a key of :data:`ENVS`) with its own generator seeded by ``seed``.

    ``seed`` is a non-negative integer; the environment's ``np.random.default_rng(seed)`` draws
    every reset (and, for the windy grid, the noise and the gaps). Call ``reset()`` first.
    """
    if name not in ENVS:
        raise ValueError(f"unknown environment {name!r}; expected one of {', '.join(ENVS)}")
    try:
        index = operator.index(seed)
    except TypeError:
        index = -1
    if isinstance(seed, bool) or index < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = index
    spec = ENVS[name]
    if spec.needs_mujoco:
        return MujocoSemiMDP(spec, seed)
    return WindyGridSemiMDP(spec, seed)


def _shape(x) -> str:
    """The shape of ``x`` for error messages (its type name when it has none)."""
    shape = getattr(x, "shape", None)
    if shape is None:
        try:
            shape = np.shape(x)
        except ValueError:
            return type(x).__name__
    return str(tuple(shape))


class SemiMDPEnv(abc.ABC):
    """A semi-MDP: ``gap = env.time_gap(obs)``, then ``obs, r, done = env.step(action, gap)``.

    ``spec`` is the environment's :class:`EnvSpec`, ``time`` the time units accumulated in the
    current episode. All randomness comes from one numpy generator owned by the environment
    (``rng_state`` / ``set_rng_state``).
    """

    spec: EnvSpec
    time: int

    def __init__(self, spec: EnvSpec, seed: int):
        self.spec = spec
        self.time = 0
        self._rng = np.random.default_rng(seed)
        self._started = False

    @abc.abstractmethod
    def reset(self) -> np.ndarray:
        """Start an episode (time 0) and return the first observation, ``(S,)`` float64."""

    @abc.abstractmethod
    def time_gap(self, state: np.ndarray) -> int:
        """The number of time units the next decision lasts, from the current observation ``(S,)``."""

    @abc.abstractmethod
    def step(self, action: np.ndarray, gap: int) -> tuple[np.ndarray, float, bool]:
        """Apply ``action`` ``(A,)`` for ``gap`` units; return ``(next obs (S,), reward, terminal)``."""

    @abc.abstractmethod
    def model_reward(
        self, states: torch.Tensor, actions: torch.Tensor, gaps: torch.Tensor,
        in_seconds: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Planning reward: states ``(K, H+1, S)``, actions ``(K, H, A)``, gaps ``(K, H)``;
        ``in_seconds``: progress per second, as the real reward, instead of per time unit."""

    def rng_state(self) -> dict:
        """The state of the environment's numpy generator (a dict of strings and ints)."""
        return self._rng.bit_generator.state

    def set_rng_state(self, state: dict) -> None:
        """Restore a state returned by :meth:`rng_state`."""
        expected = type(self._rng.bit_generator).__name__
        if not isinstance(state, dict) or state.get("bit_generator") != expected:
            raise ValueError(f"expected a {expected} generator state dict, got {state!r}")
        try:
            self._rng.bit_generator.state = state
        except (TypeError, ValueError, KeyError) as err:
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(f"invalid {expected} generator state: {msg}") from None

    @abc.abstractmethod
    def close(self) -> None:
        """Release the environment's resources."""

    def _check_action(self, action) -> np.ndarray:
        try:
            a = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError):
            a = None
        if a is None or a.shape != (self.spec.action_dim,):
            got = f"shape {_shape(action)}"
        elif not np.isfinite(a).all():
            got = f"{a.tolist()}"
        else:
            return a
        raise ValueError(
            f"{self.spec.name}: expected a finite action of shape ({self.spec.action_dim},), got {got}"
        )

    def _check_gap(self, gap) -> int:
        lo, hi = self.spec.min_gap, self.spec.max_gap
        try:
            g = operator.index(gap)
        except TypeError:
            g = None
        if g is None or isinstance(gap, bool) or not lo <= g <= hi:
            raise ValueError(f"{self.spec.name}: expected an integer gap in [{lo}, {hi}], got {gap!r}")
        if not self._started:
            raise RuntimeError(f"{self.spec.name}: call reset() before step()")
        return g

    def _check_state(self, state) -> np.ndarray:
        try:
            s = np.asarray(state, dtype=np.float64)
        except (TypeError, ValueError):
            s = None
        if s is None or s.shape != (self.spec.state_dim,):
            got = f"shape {_shape(state)}"
        elif not np.isfinite(s).all():
            got = f"{s.tolist()}"
        else:
            return s
        raise ValueError(
            f"{self.spec.name}: expected a finite state of shape ({self.spec.state_dim},), got {got}"
        )

    def _check_batch(self, states, actions, gaps) -> None:
        S, A = self.spec.state_dim, self.spec.action_dim
        ok = all(isinstance(t, torch.Tensor) for t in (states, actions, gaps))
        if ok and states.dim() == 3 and states.shape[1] >= 2 and states.shape[2] == S:
            K, H = states.shape[0], states.shape[1] - 1
            ok = actions.shape == (K, H, A) and gaps.shape == (K, H)
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"{self.spec.name}: expected tensors states (K, H+1, {S}), actions (K, H, {A}) and "
                f"gaps (K, H) with H >= 1, got {_shape(states)}, {_shape(actions)}, {_shape(gaps)}"
            )


def _forward_mujoco_warning(message: str) -> None:
    if "settotalmass" not in message:
        warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)


class MujocoSemiMDP(SemiMDPEnv):
    """Hopper, Swimmer or HalfCheetah as a semi-MDP (see the module docstring for the maths).

    The physics is gymnasium's unwrapped ``*-v5`` environment: ``frame_skip`` is set to ``gap``
    and ``do_simulation`` advances ``gap`` physics steps; its ``np_random`` is this
    environment's generator, so resets draw the v2 noise (hopper ``U(+-5e-3)`` on ``qpos`` and
    ``qvel``; swimmer ``U(+-0.1)``; half_cheetah ``U(+-0.1)`` on ``qpos``, ``0.1 N(0, 1)`` on
    ``qvel``) from it.
    """

    def __init__(self, spec: EnvSpec, seed: int):
        super().__init__(spec, seed)
        phys = _PHYSICS[spec.name]
        try:
            import gymnasium
            import mujoco
        except ImportError as err:
            raise ImportError(
                f"environment {spec.name!r} needs gymnasium with MuJoCo ({err.name or err} is "
                "missing): pip install 'fwplab[rl]'"
            ) from None
        # MuJoCo's default warning handler appends to MUJOCO_LOG.TXT in the working directory;
        # while the model compiles, drop the known deprecation notice of gymnasium's own
        # half_cheetah.xml and pass other warnings to Python's warnings module instead.
        previous = mujoco.get_mju_user_warning()
        mujoco.set_mju_user_warning(_forward_mujoco_warning)
        try:
            sim = gymnasium.make(phys.gym_id, reset_noise_scale=phys.reset_noise_scale).unwrapped
        except ImportError as err:
            raise ImportError(
                f"environment {spec.name!r} needs gymnasium with MuJoCo ({err.name or err} is "
                "missing): pip install 'fwplab[rl]'"
            ) from None
        finally:
            mujoco.set_mju_user_warning(previous)
        nq, nv, nu = sim.model.nq, sim.model.nv, sim.model.nu
        if (nq - 1 + nv + 1, nu, sim.model.opt.timestep) != (
            spec.state_dim, spec.action_dim, spec.timestep
        ):
            raise RuntimeError(
                f"{phys.gym_id} has nq={nq}, nv={nv}, nu={nu}, timestep={sim.model.opt.timestep}; "
                f"expected S={spec.state_dim}, A={spec.action_dim}, timestep={spec.timestep}"
            )
        sim.np_random = self._rng
        self._sim = sim
        self._phys = phys
        self._nq = nq
        self._vel = slice(nq - 1, spec.state_dim - 1)
        self._amp = (spec.max_gap - spec.min_gap) // 2

    def reset(self) -> np.ndarray:
        """New episode: v2 reset noise drawn from the environment's generator; obs ``(S,)``."""
        self._sim.reset()
        self.time = 0
        self._started = True
        return self._observe()

    def time_gap(self, state: np.ndarray) -> int:
        """``clip(round(amp cos(20 pi ||v||) + amp + 1), min_gap, max_gap)``, v = velocity block."""
        s = self._check_state(state)
        c = np.cos(20 * np.pi * np.linalg.norm(s[self._vel]))
        gap = round(float(self._amp * c + self._amp + 1))
        return min(max(gap, self.spec.min_gap), self.spec.max_gap)

    def step(self, action: np.ndarray, gap: int) -> tuple[np.ndarray, float, bool]:
        """Advance ``gap`` physics steps under ``action`` ``(A,)``; v2 reward, true termination.

        ``terminal`` is True when the hopper became unhealthy or ``time >= 10_000``.
        """
        a = self._check_action(action)
        n = self._check_gap(gap)
        sim, phys = self._sim, self._phys
        x_before = float(sim.data.qpos[0])
        sim.frame_skip = n
        sim.do_simulation(a, n)
        self.time += n
        obs = self._observe()
        reward = (
            (float(obs[-1]) - x_before) / (self.spec.timestep * n)
            + phys.alive_bonus
            - phys.ctrl_cost * float(np.square(a).sum())
        )
        terminal = (phys.can_fall and not self._healthy()) or self.time >= _MUJOCO_TIME_LIMIT
        return obs, reward, terminal

    def model_reward(
        self, states: torch.Tensor, actions: torch.Tensor, gaps: torch.Tensor,
        in_seconds: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched planning reward on unnormalised predicted observations.

        states ``(K, H+1, S)``, actions ``(K, H, A)``, gaps ``(K, H)`` -> rewards ``(K, H)``,
        alive ``(K, H)`` bool. ``r_i = (o_{i+1}[-1] - o_i[-1]) / gap_i + alive - ctrl ||a_i||^2``
        (divided by the gap in units, the official code's choice, which makes the progress
        term ``1 / timestep`` times smaller than in the real reward while the alive bonus and
        the control cost keep their scale; ``in_seconds=True`` divides by ``timestep * gap``
        as the real reward does). Hopper: ``alive_i`` holds while every
        ``o_j`` (``j = 1..i+1``) is finite with ``|o_j[1:]| < 100``, ``o_j[0] > 0.7`` and
        ``|o_j[1]| < 0.2``; the reward is 0 where not alive. Other tasks: all alive.
        """
        self._check_batch(states, actions, gaps)
        phys = self._phys
        run = (states[:, 1:, -1] - states[:, :-1, -1]) / gaps
        if in_seconds:
            run = run / self.spec.timestep
        ctrl = -phys.ctrl_cost * actions.square().sum(-1)
        if not phys.can_fall:
            rewards = run + ctrl
            return rewards, torch.ones(rewards.shape, dtype=torch.bool, device=rewards.device)
        nxt = states[:, 1:]
        alive = (
            torch.isfinite(nxt).all(-1)
            & (nxt[..., 1:].abs() < 100).all(-1)
            & (nxt[..., 0] > 0.7)
            & (nxt[..., 1].abs() < 0.2)
        )
        alive = alive.long().cumprod(dim=1).bool()
        rewards = (phys.alive_bonus + run) + ctrl
        rewards = torch.where(alive, rewards, torch.zeros_like(rewards))
        return rewards, alive

    def close(self) -> None:
        """Close the underlying gymnasium environment."""
        self._sim.close()

    def _observe(self) -> np.ndarray:
        qpos, qvel = self._sim.data.qpos, self._sim.data.qvel
        obs = np.empty(self.spec.state_dim)
        obs[: self._nq - 1] = qpos[1:]
        clip = self._phys.clip_velocity
        if clip is None:
            obs[self._vel] = qvel
        else:
            np.clip(qvel, -clip, clip, out=obs[self._vel])
        obs[-1] = qpos[0]
        return obs

    def _healthy(self) -> bool:
        qpos, qvel = self._sim.data.qpos, self._sim.data.qvel
        rest = np.concatenate((qpos[2:], qvel))
        return bool(
            np.isfinite(qpos).all()
            and np.isfinite(qvel).all()
            and (np.abs(rest) < 100).all()
            and qpos[1] > 0.7
            and abs(qpos[2]) < 0.2
        )


_ONE_MOVE = 0.17
_D = _ONE_MOVE / np.sqrt(2)
# (dx, dy) of the 8 moves: -x, +y, +x, -y, then the four diagonals.
_MOVES = (
    (-_ONE_MOVE, 0.0), (0.0, _ONE_MOVE), (_ONE_MOVE, 0.0), (0.0, -_ONE_MOVE),
    (_D, _D), (-_D, _D), (_D, -_D), (-_D, -_D),
)


class WindyGridSemiMDP(SemiMDPEnv):
    """Windy grid (Du et al. 2020): reach the goal region against the wind.

    State ``(x, y)`` with ``x`` clipped to ``[-3.5, 3.5]`` and ``y`` to ``[-5, 5]``; start
    ``x ~ U(-0.5, 0.5)``, ``y ~ U(-5, -4)`` (x drawn first). The action is one integer move
    index ``m`` in 0..7 (given as an array of shape ``(1,)``) with displacement
    ``0.17 * (-1, 0), (0, 1), (1, 0), (0, -1)`` or ``0.17 / sqrt(2) * (1, 1), (-1, 1), (1, -1),
    (-1, -1)``. Each of the ``gap`` sub-steps adds noise ``N(0, 0.05^2)`` to both coordinates
    and a wind push to x, read from y before the sub-step: ``+0.25 * 0.17`` for
    ``y in [-2.5, 0.5]`` or ``[2.5, 3.5]``, ``+0.5 * 0.17`` for ``0.5 < y < 2.5``; then the state
    is clipped. After the step the reward is ``-gap``, plus 10 when the state lies in the goal
    ``|x| <= 0.5, 1.5 <= y <= 2.5`` (terminal); the episode also ends when ``time >= 150``.

    The gap is uniform in ``{1..7}``, drawn from the environment's generator; it ignores the
    state (``time_gap`` takes it only for a uniform interface) and the action. There is no
    planning reward (discrete actions): :meth:`model_reward` raises.
    """

    def __init__(self, spec: EnvSpec, seed: int):
        super().__init__(spec, seed)
        self._x = 0.0
        self._y = 0.0

    def reset(self) -> np.ndarray:
        """New episode from the start distribution; obs ``(2,)``."""
        self._x = float(self._rng.uniform(-0.5, 0.5))
        self._y = float(self._rng.uniform(-5.0, -4.0))
        self.time = 0
        self._started = True
        return np.array([self._x, self._y])

    def time_gap(self, state: np.ndarray) -> int:
        """A gap uniform in ``{1..7}`` from the generator (``state`` is checked, not used)."""
        self._check_state(state)
        return int(self._rng.integers(self.spec.min_gap, self.spec.max_gap + 1))

    def step(self, action: np.ndarray, gap: int) -> tuple[np.ndarray, float, bool]:
        """Move ``gap`` sub-steps with move ``action[0]``; reward ``-gap`` (+10 at the goal)."""
        a = self._check_action(action)
        m = a[0]
        if not (m.is_integer() and 0 <= m <= 7):
            raise ValueError(f"windy_grid: expected a move index in 0..7, got {action!r}")
        n = self._check_gap(gap)
        mx, my = _MOVES[int(m)]
        x, y = self._x, self._y
        for ex, ey in self._rng.normal(0.0, 0.05, size=(n, 2)).tolist():
            dx = mx + ex
            if -2.5 <= y <= 0.5 or 2.5 <= y <= 3.5:
                dx += 0.25 * _ONE_MOVE
            elif 0.5 < y < 2.5:
                dx += 0.5 * _ONE_MOVE
            dy = my + ey
            x = min(max(x + dx, -3.5), 3.5)
            y = min(max(y + dy, -5.0), 5.0)
        self._x, self._y = x, y
        self.time += n
        goal = -0.5 <= x <= 0.5 and 1.5 <= y <= 2.5
        reward = float(-n + 10 * goal)
        return np.array([x, y]), reward, goal or self.time >= _GRID_TIME_LIMIT

    def model_reward(
        self, states: torch.Tensor, actions: torch.Tensor, gaps: torch.Tensor,
        in_seconds: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Not available: the windy grid has discrete actions and no planning reward."""
        raise ValueError("windy_grid has discrete actions and no planning reward (model_reward)")

    def close(self) -> None:
        """Nothing to release (pure numpy)."""

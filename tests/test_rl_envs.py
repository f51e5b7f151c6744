"""Semi-MDP environments: gap rule, v2 rewards and termination, physics stepping, determinism,
the planner's batched reward (with its quirks) and the windy grid's dynamics."""

import io
import math
import sys

import numpy as np
import pytest
import torch

from fwplab.rl.envs import ENVS, EnvSpec, SemiMDPEnv, make_env

MUJOCO = ["hopper", "swimmer", "half_cheetah"]
# Facts of the original tasks, written out independently of the module:
# (gap-feature slice of the observation, alive bonus, control cost coefficient).
FACTS = {
    "hopper": (slice(5, 11), 1.0, 1e-3),
    "swimmer": (slice(4, 9), 0.0, 1e-4),
    "half_cheetah": (slice(8, 17), 0.0, 0.1),
}


def _mujoco_env(name, seed=0):
    pytest.importorskip("mujoco", reason="the MuJoCo tasks need `pip install 'fwplab[rl]'`")
    pytest.importorskip("gymnasium", reason="the MuJoCo tasks need `pip install 'fwplab[rl]'`")
    return make_env(name, seed)


def _formula_gap(spec, obs):
    amp = (spec.max_gap - spec.min_gap) // 2
    v = obs[FACTS[spec.name][0]]
    return int(np.clip(round(amp * np.cos(20 * np.pi * np.linalg.norm(v)) + amp + 1),
                       spec.min_gap, spec.max_gap))


def _random_action(rng, spec):
    return rng.uniform(-1.0, 1.0, spec.action_dim)


def _one_line_value_error(fn, *args):
    with pytest.raises(ValueError) as info:
        fn(*args)
    assert "\n" not in str(info.value) and str(info.value)


def _healthy(qpos, qvel):
    rest = np.concatenate([qpos[2:], qvel])
    return bool(np.isfinite(qpos).all() and np.isfinite(qvel).all()
                and (np.abs(rest) < 100).all() and qpos[1] > 0.7 and abs(qpos[2]) < 0.2)


def test_records():
    assert set(ENVS) == {"hopper", "swimmer", "half_cheetah", "windy_grid"}
    table = {"hopper": (12, 3, 1, 7, 0.002), "swimmer": (10, 2, 1, 7, 0.01),
             "half_cheetah": (18, 6, 1, 9, 0.01), "windy_grid": (2, 1, 1, 7, 1.0)}
    for name, spec in ENVS.items():
        assert isinstance(spec, EnvSpec) and spec.name == name
        assert (spec.state_dim, spec.action_dim, spec.min_gap, spec.max_gap, spec.timestep) == (
            table[name])
        assert spec.continuous_actions == spec.needs_mujoco == (name != "windy_grid")
        assert spec.description


@pytest.mark.parametrize("name", MUJOCO)
def test_gap_rule_on_a_trajectory(name):
    env = _mujoco_env(name)
    rng = np.random.default_rng(3)
    obs, seen = env.reset(), set()
    for _ in range(150):
        gap = env.time_gap(obs)
        assert type(gap) is int and gap == _formula_gap(env.spec, obs)
        seen.add(gap)
        obs, _, done = env.step(_random_action(rng, env.spec), gap)
        if done:
            obs = env.reset()
    assert len(seen) >= 3


def _exact_half_norm(amp, target):
    """A norm n with amp * cos(20 pi n) + amp + 1 == target exactly (a .5 value) in float64."""
    c = (target - amp - 1) / amp
    for period in range(40):
        for base in (np.arccos(c) / (20 * np.pi) + period / 10,
                     (period + 1) / 10 - np.arccos(c) / (20 * np.pi)):
            up = down = base
            for _ in range(400):
                for n in (up, down):
                    v = np.zeros(3)
                    v[0] = n
                    if amp * np.cos(20 * np.pi * np.linalg.norm(v)) + amp + 1 == target:
                        return n
                up, down = np.nextafter(up, 10.0), np.nextafter(down, 0.0)
    pytest.skip(f"no float64 norm gives exactly {target} on this platform's cos")


@pytest.mark.parametrize("name", MUJOCO)
def test_gap_rule_on_crafted_velocities(name):
    env = _mujoco_env(name)
    spec = env.spec
    sl = FACTS[name][0]
    amp = (spec.max_gap - spec.min_gap) // 2
    rng = np.random.default_rng(0)
    for norm, expected in [(0.0, spec.max_gap), (0.05, spec.min_gap), (0.1, spec.max_gap),
                           (0.025, amp + 1)]:
        state = rng.normal(size=spec.state_dim)
        state[sl] = 0.0
        state[sl.start] = norm
        assert env.time_gap(state) == expected == _formula_gap(spec, state)
        state[sl.start] = 0.6 * norm
        state[sl.start + 1] = -0.8 * norm  # same norm, spread over two velocities
        assert env.time_gap(state) == _formula_gap(spec, state)
    # Exact .5 values round half to even: 2.5 -> 2 and 4.5 -> 4 (half up would give 3 and 5).
    for target, even in [(2.5, 2), (4.5, 4)]:
        state = rng.normal(size=spec.state_dim)
        state[sl] = 0.0
        state[sl.start] = _exact_half_norm(amp, target)
        assert env.time_gap(state) == even == _formula_gap(spec, state)
        state[: sl.start] = 50.0  # positions and x are not gap features
        state[-1] = -7.0
        assert env.time_gap(state) == even


@pytest.mark.parametrize("name", MUJOCO)
def test_real_reward_obs_layout_and_physics_steps(name):
    env = _mujoco_env(name)
    spec, data = env.spec, env._sim.data
    _, alive, ctrl = FACTS[name]
    nq = data.qpos.size
    rng = np.random.default_rng(1)
    obs = env.reset()
    for _ in range(40):
        gap = env.time_gap(obs)
        a = _random_action(rng, spec)
        x_before, t_before, time_before = data.qpos[0], data.time, env.time
        obs, reward, done = env.step(a, gap)
        x_after = data.qpos[0]
        assert env._sim.frame_skip == gap and env.time == time_before + gap
        assert math.isclose(data.time - t_before, gap * spec.timestep, rel_tol=1e-9)
        expected = (x_after - x_before) / (spec.timestep * gap) + alive - ctrl * float(a @ a)
        assert math.isclose(reward, expected, rel_tol=1e-12, abs_tol=1e-12)
        assert obs.shape == (spec.state_dim,) and obs.dtype == np.float64
        assert obs[-1] == x_after
        np.testing.assert_array_equal(obs[: nq - 1], data.qpos[1:])
        vel = np.clip(data.qvel, -10, 10) if name == "hopper" else data.qvel
        np.testing.assert_array_equal(obs[nq - 1: -1], vel)
        if done:
            obs = env.reset()
    env.close()


@pytest.mark.parametrize("name", MUJOCO)
def test_gap_units_are_single_physics_steps(name):
    one, many = _mujoco_env(name, 5), _mujoco_env(name, 5)
    np.testing.assert_array_equal(one.reset(), many.reset())
    a = np.linspace(-0.9, 0.7, one.spec.action_dim)
    for _ in range(3):
        obs_one, _, _ = one.step(a, 1)
    obs_many, _, _ = many.step(a, 3)
    np.testing.assert_allclose(obs_many, obs_one, rtol=0, atol=1e-12)
    assert one.time == many.time == 3


def test_hopper_velocities_are_clipped_in_the_observation():
    env = _mujoco_env("hopper")
    env.reset()
    sim = env._sim
    sim.set_state(sim.data.qpos.copy(), np.array([30.0, -25.0, 12.0, 0.0, -40.0, 5.0]))
    obs, _, _ = env.step(np.zeros(3), 1)
    assert (np.abs(sim.data.qvel) > 10).any()
    np.testing.assert_array_equal(obs[5:11], np.clip(sim.data.qvel, -10, 10))


def test_hopper_termination_and_bonus_on_the_terminal_step():
    env = _mujoco_env("hopper")
    data = env._sim.data
    rng = np.random.default_rng(2)
    obs, falls, steps = env.reset(), 0, 0
    while falls < 3:
        gap = env.time_gap(obs)
        a = _random_action(rng, env.spec)
        x_before = data.qpos[0]
        obs, reward, done = env.step(a, gap)
        steps += 1
        assert done == (not _healthy(data.qpos, data.qvel))
        if done:
            falls += 1
            progress = (data.qpos[0] - x_before) / (0.002 * gap)
            assert math.isclose(reward, progress + 1.0 - 1e-3 * float(a @ a), rel_tol=1e-12)
            obs = env.reset()
            assert env.time == 0
        assert steps < 2000


def test_swimmer_never_terminates_and_time_accumulates():
    env = _mujoco_env("swimmer")
    rng = np.random.default_rng(4)
    obs, total = env.reset(), 0
    for _ in range(300):
        gap = env.time_gap(obs)
        total += gap
        obs, _, done = env.step(_random_action(rng, env.spec), gap)
        assert not done
    assert env.time == total


def test_mujoco_time_limit():
    env = _mujoco_env("half_cheetah")
    env.reset()
    env.time = 10_000 - 3
    assert not env.step(np.zeros(6), 2)[2]
    assert env.step(np.zeros(6), 1)[2]


def _trajectory(name, seed, n=30):
    env = make_env(name, seed)
    rng = np.random.default_rng(7)
    obs, out = env.reset(), []
    for _ in range(n):
        gap = env.time_gap(obs)
        a = _random_action(rng, env.spec) if env.spec.continuous_actions else [rng.integers(8)]
        obs, reward, done = env.step(np.asarray(a), gap)
        out.append((obs, reward, done, gap))
        if done:
            obs = env.reset()
    return out


@pytest.mark.parametrize("name", [*MUJOCO, "windy_grid"])
def test_seeding(name):
    if name != "windy_grid":
        _mujoco_env(name)
    first, again, other = (_trajectory(name, s) for s in (11, 11, 12))
    for (o1, r1, d1, g1), (o2, r2, d2, g2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(o1, o2)
        assert (r1, d1, g1) == (r2, d2, g2)
    assert not np.array_equal(first[0][0], other[0][0])


@pytest.mark.parametrize("name", [*MUJOCO, "windy_grid"])
def test_rng_state_reproduces_the_next_reset(name):
    env = _mujoco_env(name) if name != "windy_grid" else make_env(name, 0)
    env.reset()
    buffer = io.BytesIO()
    torch.save(env.rng_state(), buffer)
    first = env.reset()
    second = env.reset()
    assert not np.array_equal(first, second)
    buffer.seek(0)
    env.set_rng_state(torch.load(buffer, weights_only=True))
    np.testing.assert_array_equal(env.reset(), first)
    fresh = make_env(name, 1)
    fresh.set_rng_state(env.rng_state())
    np.testing.assert_array_equal(fresh.reset(), env.reset())


def _loop_model_reward(name, states, actions, gaps):
    """The planning reward written as a plain loop over candidates k and steps i."""
    _, alive_bonus, ctrl = FACTS[name]
    K, H = gaps.shape
    rewards = torch.zeros(K, H, dtype=torch.float64)
    alive = torch.ones(K, H, dtype=torch.bool)
    for k in range(K):
        dead = False
        for i in range(H):
            o = states[k, i + 1]
            if name == "hopper":
                ok = (bool(torch.isfinite(o).all()) and bool((o[1:].abs() < 100).all())
                      and float(o[0]) > 0.7 and abs(float(o[1])) < 0.2)
                dead = dead or not ok
            alive[k, i] = not dead
            if not dead:
                progress = float(states[k, i + 1, -1] - states[k, i, -1]) / float(gaps[k, i])
                rewards[k, i] = progress + alive_bonus - ctrl * float((actions[k, i] ** 2).sum())
    return rewards, alive


@pytest.mark.parametrize("name", MUJOCO)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_model_reward_equals_a_loop(name, dtype):
    env = _mujoco_env(name)
    spec = env.spec
    g = torch.Generator().manual_seed(0)
    K, H = 6, 5
    states = torch.randn(K, H + 1, spec.state_dim, generator=g, dtype=torch.float64) * 0.02
    states[..., -1] = torch.randn(K, H + 1, generator=g, dtype=torch.float64)
    if name == "hopper":
        states[..., 0] = 1.2  # healthy height
        states[1, 3, 0] = 0.5  # candidate 1 falls at step 2 (o_3), then looks healthy again
        states[2, 1, 1] = 0.3  # candidate 2: angle too large at its first step
        states[3, 4, -1] = 150.0  # candidate 3: |x| >= 100 counts as dead (quirk)
        states[4, 2, 5] = float("nan")  # candidate 4: non-finite prediction
    actions = torch.rand(K, H, spec.action_dim, generator=g, dtype=torch.float64) * 2 - 1
    gaps = torch.randint(spec.min_gap, spec.max_gap + 1, (K, H), generator=g)
    rewards, alive = env.model_reward(states.to(dtype), actions.to(dtype), gaps)
    expected_r, expected_alive = _loop_model_reward(name, states.to(dtype).double(),
                                                    actions.to(dtype).double(), gaps)
    assert rewards.shape == alive.shape == (K, H) and alive.dtype == torch.bool
    assert rewards.dtype == dtype
    torch.testing.assert_close(rewards.double(), expected_r,
                               rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-6)
    assert torch.equal(alive, expected_alive)
    if name == "hopper":
        assert alive[1].tolist() == [True, True, False, False, False]
        assert alive[2].tolist() == [False] * H and alive[3].tolist() == [True] * 3 + [False] * 2
        assert alive[4].tolist() == [True, False, False, False, False]
        assert (rewards[~alive] == 0).all() and torch.isfinite(rewards).all()
        # alive bonus 1 and progress divided by the gap in units (not timestep * gap)
        run = (states[0, 1, -1] - states[0, 0, -1]) / gaps[0, 0]
        r00 = run + 1 - 1e-3 * actions[0, 0].square().sum()
        torch.testing.assert_close(rewards[0, 0].double(), r00, rtol=1e-5, atol=1e-6)
    else:
        assert alive.all()
    one_r, one_alive = env.model_reward(states[:1, :2], actions[:1, :1], gaps[:1, :1])
    assert one_r.shape == one_alive.shape == (1, 1) and one_r.dtype == torch.float64
    torch.testing.assert_close(one_r, _loop_model_reward(name, states[:1, :2], actions[:1, :1],
                                                         gaps[:1, :1])[0])


def _reference_grid_step(rng, x, y, move, gap):
    """The windy grid's dynamics written out with vectors, one sub-step at a time."""
    one = 0.17
    moves = np.array([(-1, 0), (0, 1), (1, 0), (0, -1)], dtype=float) * one
    diag = np.array([(1, 1), (-1, 1), (1, -1), (-1, -1)], dtype=float) * one / np.sqrt(2)
    table = np.concatenate([moves, diag])
    for _ in range(gap):
        dx, dy = table[move] + rng.normal(0, 0.05, 2)
        if (-2.5 <= y <= 0.5) or (2.5 <= y <= 3.5):
            dx += 0.25 * one
        elif 0.5 < y < 2.5:
            dx += 0.5 * one
        x, y = np.clip(x + dx, -3.5, 3.5), np.clip(y + dy, -5, 5)
    return float(x), float(y)


def test_windy_grid_matches_the_reference_dynamics():
    env = make_env("windy_grid", 3)
    ref = np.random.default_rng(3)
    plan = np.random.default_rng(8)
    goals = 0
    for _ in range(40):
        obs = env.reset()
        x, y = ref.uniform(-0.5, 0.5), ref.uniform(-5, -4)
        assert obs.tolist() == [x, y] and env.time == 0
        assert -0.5 <= x <= 0.5 and -5 <= y <= -4
        done, t = False, 0
        while not done:
            gap = env.time_gap(obs)
            assert gap == ref.integers(1, 8)
            move = int(plan.integers(8)) if plan.random() < 0.5 else 1  # bias towards +y
            obs, reward, done = env.step(np.array([move]), gap)
            x, y = _reference_grid_step(ref, x, y, move, gap)
            t += gap
            goal = -0.5 <= x <= 0.5 and 1.5 <= y <= 2.5
            assert obs.tolist() == [x, y] and env.time == t
            assert reward == -gap + 10 * goal and done == (goal or t >= 150)
            goals += goal
    assert goals > 0


def test_windy_grid_wind_and_gap_facts():
    env = make_env("windy_grid", 0)
    env.reset()
    goals = 0
    # wind on x read from y before the sub-step: none, weak 0.0425 or strong 0.085
    for y, wind in [(-4.0, 0.0), (-2.5, 0.0425), (0.5, 0.0425), (1.0, 0.085), (2.49, 0.085),
                    (2.5, 0.0425), (3.5, 0.0425), (4.0, 0.0)]:
        env._x, env._y = 0.0, y
        probe = np.random.default_rng()
        probe.bit_generator.state = env.rng_state()
        noise = probe.normal(0, 0.05, 2)
        obs, reward, done = env.step(np.array([3]), 1)  # move -y by 0.17
        assert math.isclose(obs[0], noise[0] + wind, abs_tol=1e-15)
        assert math.isclose(obs[1], y + (-0.17 + noise[1]), abs_tol=1e-15)
        goal = abs(obs[0]) <= 0.5 and 1.5 <= obs[1] <= 2.5
        assert reward == (9.0 if goal else -1.0) and done == goal
        goals += goal
    assert goals == 2  # from y = 2.49 and 2.5 the move lands in the goal region
    env._x, env._y = 3.5, 5.0  # clipped at the border
    obs, _, _ = env.step(np.array([4]), 7)
    assert obs[0] <= 3.5 and obs[1] <= 5.0
    # the gap ignores the state and is uniform on 1..7
    gaps = [env.time_gap(np.array([9.0, -9.0]) * k) for k in range(2000)]
    counts = np.bincount(gaps, minlength=8)
    assert counts[0] == 0 and (counts[1:] > 200).all()
    # time limit: done once the accumulated time reaches 150
    env.reset()
    env._x, env._y = -3.0, -4.5
    env.time = 145
    assert not env.step(np.array([3]), 4)[2]
    assert env.step(np.array([3]), 1)[2] and env.time == 150
    env.close()


def test_bad_inputs_give_one_line_value_errors():
    _one_line_value_error(make_env, "walker2d", 0)
    _one_line_value_error(make_env, "windy_grid", -1)
    _one_line_value_error(make_env, "windy_grid", 1.5)
    _one_line_value_error(make_env, "windy_grid", True)
    grid = make_env("windy_grid", 0)
    with pytest.raises(RuntimeError, match="reset"):
        grid.step(np.array([0]), 1)
    obs = grid.reset()
    for action in ([8], [-1], [1.5], [np.nan], [0, 1], "up", [[1]]):
        _one_line_value_error(grid.step, np.asarray(action) if action != "up" else action, 1)
    for gap in (0, 8, 2.0, True, "3", None):
        _one_line_value_error(grid.step, np.array([0]), gap)
    for state in (np.zeros(3), np.array([np.inf, 0.0]), "s"):
        _one_line_value_error(grid.time_gap, state)
    _one_line_value_error(grid.model_reward, torch.zeros(1, 2, 2), torch.zeros(1, 1, 1),
                          torch.ones(1, 1))
    _one_line_value_error(grid.set_rng_state, {"bit_generator": "MT19937"})
    _one_line_value_error(grid.set_rng_state, {"bit_generator": "PCG64", "state": 3})
    np.testing.assert_array_equal(grid.step(np.array([2]), 1)[0] - obs != 0, [True, True])

    env = _mujoco_env("hopper")
    env.reset()
    for action in (np.zeros(2), np.array([0.0, np.nan, 0.0]), np.zeros((1, 3))):
        _one_line_value_error(env.step, action, 3)
    _one_line_value_error(env.step, np.zeros(3), 8)
    _one_line_value_error(env.time_gap, np.zeros(11))
    states, actions, gaps = torch.zeros(2, 4, 12), torch.zeros(2, 3, 3), torch.ones(2, 3)
    for bad in [(states[:, :1], actions[:, :0], gaps[:, :0]), (states[..., :11], actions, gaps),
                (states, actions[:, :2], gaps), (states, actions, gaps[:1]),
                (states.numpy(), actions, gaps), (states[0], actions[0], gaps[0])]:
        _one_line_value_error(env.model_reward, *bad)


def test_missing_mujoco_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "mujoco", None)
    with pytest.raises(ImportError, match=r"pip install 'fwplab\[rl\]'") as info:
        make_env("swimmer", 0)
    assert "\n" not in str(info.value)
    assert isinstance(make_env("windy_grid", 0), SemiMDPEnv)

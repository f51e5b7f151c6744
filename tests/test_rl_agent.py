"""The RL loop end to end at toy sizes: the planner's maths, seeded determinism, exact
resume, one writer per folder, and the command line's one-line refusals."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("mujoco")

from fwplab.rl import (  # noqa: E402
    DDPG,
    PlannerConfig,
    RLConfig,
    RunningStats,
    build_world_model,
    make_env,
    plan,
    train_agent,
)
from fwplab.rl import agent as agent_module  # noqa: E402
from test_train import one_thread  # noqa: E402, F401 (autouse fixture)

#: Seconds-long settings: the whole schedule with every part exercised.
TOY = dict(env="swimmer", latent_dim=8, num_heads=2, ff_dim=8, ode_dim=8, encoder_width=4,
           rtol=1e-3, atol=1e-4, adjoint=False, random_decisions=40, epochs=2,
           decisions_per_epoch=30, max_steps=20, horizon=5, candidates=16, elite=4,
           model_batch=8, max_passes=2, patience_start=2, patience_min=1, eval_episodes=1,
           ddpg_batch=16)




def _curves(metrics):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in metrics["history"]]


def _planning_setup(method="euler", **planner):
    torch.manual_seed(0)
    model = build_world_model("latent-ode-rfwp", 10, 2, latent_dim=8, num_heads=2, ff_dim=8,
                              ode_dim=8, encoder_width=4, method=method,
                              step_size=1.0 if method != "dopri5" else None)
    stats = RunningStats(10)
    for _ in range(5):
        stats.push(torch.randn(10).numpy())
    agent = DDPG(10, 2)
    env = make_env("swimmer", 0)
    config = PlannerConfig(candidates=12, horizon=4, elite=3, **planner)
    latent = model.initial_latent(1)
    return model, stats, agent, env, config, latent


def test_planner_returns_and_chosen_action():
    """R = sum_i gamma^tau_i r_i (+ the critic at the horizon), tau the end (official) or
    start time of each decision; the action is the elite's mean first action."""
    for discount_at in ("end", "start"):
        model, stats, agent, env, config, latent = _planning_setup(discount_at=discount_at)
        s_hat = torch.randn(10)
        result = plan(model, env.model_reward, stats, agent, s_hat, latent, config,
                      torch.Generator().manual_seed(3))
        rewards, alive = env.model_reward(stats.unnormalize(result.states), result.actions,
                                          result.gaps)
        ends = result.gaps.cumsum(1)
        tau = ends if discount_at == "end" else ends - result.gaps
        last = result.states[:, -1]
        expected = (config.gamma ** tau * rewards).sum(1) + config.gamma ** ends[:, -1] * \
            agent.value(last, agent.act(last)) * alive[:, -1]
        torch.testing.assert_close(result.returns, expected)
        assert set(result.elite.tolist()) == set(torch.topk(expected, 3).indices.tolist())
        torch.testing.assert_close(result.action, result.actions[result.elite, 0].mean(0))
        others = torch.ones(config.candidates, dtype=torch.bool)
        others[result.elite] = False
        assert result.returns[result.elite].min() >= result.returns[others].max()


def test_batched_rollouts_equal_candidate_by_candidate_rollouts():
    """With a fixed-grid solver, imagining all candidates in one batch gives each one's
    rollout exactly as imagining it alone would."""
    model, stats, agent, env, config, latent = _planning_setup("rk4")
    result = plan(model, env.model_reward, stats, agent, torch.randn(10), latent, config,
                  torch.Generator().manual_seed(5))
    with torch.no_grad():
        for k in (0, 7, 11):
            state, lat = result.states[k, 0][None], latent
            for i in range(config.horizon):
                x = torch.cat([state, result.actions[k, i][None]], -1)
                gap = model.predict_gap(x, lat)
                assert gap.item() == result.gaps[k, i].item()
                lat = model.step(x, lat, gap)
                state = model.decode(lat)
                torch.testing.assert_close(state[0], result.states[k, i + 1], atol=1e-6,
                                           rtol=1e-6)


def test_same_seed_same_curves_other_seed_other_curves():
    first = train_agent(RLConfig(**TOY), progress=False)
    second = train_agent(RLConfig(**TOY), progress=False)
    other = train_agent(RLConfig(**{**TOY, "seed": 2}), progress=False)
    assert _curves(first) == _curves(second)
    assert _curves(first) != _curves(other)
    history = first["history"]
    assert [r["epoch"] for r in history] == [0, 1, 2]
    assert history[-1]["decisions"] == 40 + 2 * 30
    for record in history[1:]:
        wm = record["world_model"]
        assert all(torch.isfinite(torch.tensor([p["train_mse"], p["test_mse"]])).all()
                   for p in wm["curve"])
        assert 1 <= wm["passes"] <= TOY["max_passes"]


def test_resume_continues_exactly(tmp_path, monkeypatch):
    straight = train_agent(RLConfig(**TOY), tmp_path / "straight", progress=False)
    original = agent_module.RLRun.run_epoch

    def stop_at_epoch_two(self):
        if self.epoch == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(agent_module.RLRun, "run_epoch", stop_at_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train_agent(RLConfig(**TOY), tmp_path / "cut", progress=False)
    saved = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert saved["epochs_done"] == 1
    monkeypatch.setattr(agent_module.RLRun, "run_epoch", original)
    resumed = train_agent(out=tmp_path / "cut", resume=True, progress=False)
    assert _curves(resumed) == _curves(straight)
    assert not list((tmp_path / "cut").glob("*.tmp"))


def test_a_folder_holding_a_run_is_not_overwritten(tmp_path):
    config = RLConfig(**{**TOY, "epochs": 1})
    train_agent(config, tmp_path / "a", progress=False)
    before = (tmp_path / "a" / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match="already holds a run"):
        train_agent(config, tmp_path / "a", progress=False)
    assert (tmp_path / "a" / "checkpoint.pt").read_bytes() == before
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "checkpoint.pt").write_bytes(before[:100])
    with pytest.raises(ValueError, match="not a readable fwplab rl checkpoint"):
        train_agent(out=tmp_path / "b", resume=True, progress=False)


def test_corrected_options_restore_the_best_model_and_evaluate_the_planner():
    metrics = train_agent(RLConfig(**{**TOY, "epochs": 1, "keep_best_world_model": True,
                                      "evaluate_planner": True, "discount_at": "start",
                                      "planning_reward": "seconds"}),
                          progress=False)
    last = metrics["history"][-1]
    assert len(last["eval_returns_planner"]) == TOY["eval_episodes"]
    assert last["world_model"]["best_test_mse"] == min(p["test_mse"] for p in
                                                       last["world_model"]["curve"])


def test_the_planning_reward_in_seconds_is_the_real_rewards_scale():
    env = make_env("swimmer", 0)
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(4, 4, 10, generator=generator)
    actions = torch.rand(4, 3, 2, generator=generator) * 2 - 1
    gaps = torch.randint(1, 8, (4, 3), generator=generator).float()
    official, _ = env.model_reward(states, actions, gaps)
    seconds, _ = env.model_reward(states, actions, gaps, in_seconds=True)
    control = -1e-4 * actions.square().sum(-1)
    progress = (states[:, 1:, -1] - states[:, :-1, -1]) / gaps
    torch.testing.assert_close(official, progress + control)
    torch.testing.assert_close(seconds, progress / env.spec.timestep + control)


def test_bad_settings_are_refused_in_one_line():
    with pytest.raises(ValueError, match="has discrete actions"):
        RLConfig(env="windy_grid")
    with pytest.raises(ValueError, match="model: expected one of"):
        RLConfig(model="latent-gru")
    with pytest.raises(ValueError, match="planning_reward: expected 'official' or 'seconds'"):
        RLConfig(planning_reward="meters")
    with pytest.raises(ValueError, match="elite 60 exceeds candidates 50"):
        RLConfig(candidates=50, elite=60)


@pytest.mark.parametrize("argv, message", [
    (["--resume", "nowhere"], "--resume: nowhere/checkpoint.pt does not exist"),
    (["--step-size", "0.5"], "--step-size: needs a fixed-grid --solver"),
    (["--resume", "x", "--seed", "3"], "--resume: takes the settings saved in the run; drop --seed"),
])
def test_command_line_refusals(tmp_path, argv, message):
    done = subprocess.run([sys.executable, "-m", "fwplab", "rl", *argv, "--no-progress"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not list(Path(tmp_path).iterdir())


def test_a_second_writer_of_a_run_folder_is_refused(tmp_path):
    from fwplab.train import _RunFolderLock

    with _RunFolderLock(tmp_path / "r"):
        with pytest.raises(ValueError, match="another fwplab run"):
            train_agent(RLConfig(**{**TOY, "epochs": 1}), tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_appendix_presets_are_the_official_command_and_are_listed(capsys):
    from fwplab.cli import main
    from fwplab.rl import rl_preset

    for env in ("hopper", "swimmer"):
        c = rl_preset(f"appendix-{env}", model="latent-ode-rfwp")
        assert (c.env, c.rule, c.latent_dim, c.num_heads, c.ff_dim, c.ode_dim,
                c.encoder_width) == (env, "hebb", 128, 16, 512, 128, 20)
        assert (c.method, c.rtol, c.atol, c.adjoint) == ("dopri5", 1e-5, 1e-6, True)
        assert (c.random_decisions, c.epochs, c.decisions_per_epoch, c.max_steps) == \
            (15_000, 80, 5_000, 1_000)
        assert (c.candidates, c.horizon, c.elite, c.gamma, c.model_batch, c.max_passes,
                c.patience_start, c.patience_min, c.memory) == \
            (1_000, 10, 50, 0.99, 128, 200, 15, 3, 1_000_000)
        assert (c.keep_best_world_model, c.evaluate_planner, c.discount_at,
                c.planning_reward) == (False, False, "end", "official")
    with pytest.raises(ValueError, match="unknown settings latent"):
        rl_preset("small", latent=3)
    assert main(["presets"]) == 0
    listing = capsys.readouterr().out
    assert all(f"fwplab rl --preset {name}" in listing
               for name in ("appendix-hopper", "appendix-swimmer", "small"))


def test_command_line_flags_reach_the_settings(monkeypatch, tmp_path, capsys):
    from fwplab.cli import main
    from fwplab.rl import command

    seen = {}

    def fake_train(config, folder, **options):
        seen.update(config=config, folder=folder, **options)
        return {"model": config.model, "env": config.env, "seed": config.seed,
                "epochs_done": config.epochs, "decisions": 0,
                "history": [{"eval_return": 0.0}]}

    monkeypatch.setattr(command, "train_agent", fake_train)
    assert main(["rl", "--model", "latent-ode", "--seed", "4", "--solver", "euler",
                 "--step-size", "1", "--epochs", "2", "--corrected", "--no-progress",
                 "--out", str(tmp_path / "r")]) == 0
    c = seen["config"]
    assert (c.model, c.seed, c.method, c.step_size, c.epochs, c.adjoint, c.env) == \
        ("latent-ode", 4, "euler", 1.0, 2, False, "swimmer")
    assert (c.keep_best_world_model, c.evaluate_planner, c.discount_at, c.planning_reward) == \
        (True, True, "start", "seconds")
    assert seen["progress"] is False and seen["device"] == torch.device("cpu")
    assert main(["rl", "--no-adjoint", "--preset", "appendix-hopper", "--out",
                 str(tmp_path / "h")]) == 0
    c = seen["config"]
    assert (c.env, c.method, c.adjoint, c.latent_dim) == ("hopper", "dopri5", False, 128)
    assert "fwplab rl: latent-ode-rfwp on hopper" in capsys.readouterr().out


def test_sigterm_stops_a_run_between_checkpoints_and_says_how_to_resume(tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "fwplab", "rl", "--out", str(out),
                                "--no-progress"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # the random phase's epoch ends in a few seconds
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM
    assert f"continue with: fwplab rl --resume {out}" in err and len(err.strip().splitlines()) == 1
    saved = json.loads((out / "metrics.json").read_text())
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == saved["epochs_done"] + 1 and not list(out.glob(".*.tmp"))


def test_run_defaults_are_the_world_model_defaults():
    """RLConfig repeats the world model's settings so that a run is one flat record; their
    defaults must agree (the appendix's command), except the adjoint: a world model built
    alone backpropagates through its solver, the appendix's runs use the adjoint."""
    import dataclasses

    from fwplab.rl import WorldModelConfig

    run = RLConfig()
    shared = [f for f in dataclasses.fields(WorldModelConfig) if hasattr(run, f.name)]
    assert len(shared) == 11
    for field in shared:
        expected = True if field.name == "adjoint" else field.default
        assert getattr(run, field.name) == expected, field.name

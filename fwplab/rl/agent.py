"""The appendix's agent: a world model, an MPC planner and DDPG, on a semi-MDP.

The schedule (:func:`train_agent`)::

    random phase   episodes of uniform random actions until `random_decisions`; evaluate
    epoch 1..E     a. train the world model on the trajectory chunks, early stopping on
                      the test chunks' open-loop MSE (patience max(p0 - e + 1, p_min))
                   b. MPC episodes until `decisions_per_epoch` decisions (the last one cut
                      at the budget), one DDPG update after every real decision
                   c. evaluate: `eval_episodes` episodes of the noisy DDPG actor

During an MPC episode the world model tracks the real trajectory: its latent starts from
the prior and takes one model step per real decision with the real gap. Every state at
which a decision is taken (evaluation included) updates the running statistics that
normalise states for the model, the planner and DDPG.

Faithful by default: four of the official code's behaviours are kept, each with a
corrected form one option away (:class:`RLConfig`):

- ``keep_best_world_model=False``: the official early stopping records the best test
  MSE but goes on with the *last* weights; ``True`` restores the best ones.
- ``evaluate_planner=False``: the official evaluation measures the noisy DDPG actor, not
  the MPC planner the agent acts with; ``True`` also evaluates the planner (recorded as
  ``eval_return_planner``).
- ``discount_at="end"``: the planner discounts reward ``i`` by its decision's end time;
  ``"start"`` uses the semi-MDP convention (:mod:`fwplab.rl.planner`).
- ``planning_reward="official"``: the planner's progress term is the x progress per time
  unit, ``1 / timestep`` times smaller than in the real reward (500x for Hopper, 100x for
  Swimmer), so the alive bonus, the control cost and the critic's value outweigh the
  progress the planner is meant to seek; ``"seconds"`` uses the real reward's scale.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..baselines import _positive_ints
from ..train import _atomic_write, _RunFolderLock, _write_json
from .buffers import (
    ChunkBuffer,
    RunningStats,
    TransitionBuffer,
    episode_chunks,
    normalized_chunks,
    split_chunks,
)
from .ddpg import DDPG, DDPGConfig
from .envs import ENVS, make_env
from .planner import PlannerConfig, plan
from .world_models import (
    WORLD_MODELS,
    WorldModel,
    WorldModelConfig,
    build_world_model,
    sequence_losses,
)

__all__ = ["RLConfig", "RLRun", "train_agent", "load_run"]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """Every setting of a run (defaults: the appendix's README command on Swimmer).

    Attributes (groups): the task (``env``, ``model``, ``seed``); the world model's
    sizes, rule and solver (see :class:`fwplab.rl.world_models.WorldModelConfig`), its
    optimiser and early stopping (``model_batch`` chunks, at most ``max_passes`` passes,
    patience ``max(patience_start - e + 1, patience_min)`` at epoch ``e``); the schedule
    (decisions are real environment decisions; ``max_steps`` bounds an episode); the
    planner (:class:`fwplab.rl.planner.PlannerConfig`); DDPG; the corrections (module
    docstring).
    """

    env: str = "swimmer"
    model: str = "latent-ode-rfwp"
    seed: int = 1
    latent_dim: int = 128
    num_heads: int = 16
    ff_dim: int = 512
    ode_dim: int = 128
    encoder_width: int = 20
    rule: str = "hebb"
    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-6
    step_size: Optional[float] = None
    adjoint: bool = True
    model_lr: float = 1e-3
    model_weight_decay: float = 1e-3
    model_batch: int = 128
    max_passes: int = 200
    patience_start: int = 15
    patience_min: int = 3
    random_decisions: int = 15_000
    epochs: int = 80
    decisions_per_epoch: int = 5_000
    max_steps: int = 1_000
    eval_episodes: int = 5
    test_fraction: float = 0.1
    memory: int = 1_000_000
    candidates: int = 1_000
    horizon: int = 10
    elite: int = 50
    proposal_noise: float = 0.1
    gamma: float = 0.99
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    tau: float = 1e-3
    ddpg_batch: int = 128
    discount_at: str = "end"
    planning_reward: str = "official"
    keep_best_world_model: bool = False
    evaluate_planner: bool = False

    def __post_init__(self) -> None:
        if self.env not in ENVS:
            raise ValueError(f"env: expected one of {', '.join(ENVS)}, got {self.env!r}")
        if not ENVS[self.env].continuous_actions:
            raise ValueError(f"env {self.env}: has discrete actions; the MPC planner with DDPG "
                             "proposals needs continuous ones (hopper, swimmer, half_cheetah)")
        if self.model not in WORLD_MODELS:
            raise ValueError(f"model: expected one of {', '.join(WORLD_MODELS)}, "
                             f"got {self.model!r}")
        counts = ("model_batch", "max_passes", "patience_start", "patience_min", "epochs",
                  "decisions_per_epoch", "max_steps", "eval_episodes", "memory", "ddpg_batch")
        _positive_ints(**{name: getattr(self, name) for name in counts})
        if not isinstance(self.random_decisions, int) or self.random_decisions < self.horizon:
            raise ValueError(f"random_decisions: expected an integer >= horizon {self.horizon}, "
                             f"got {self.random_decisions!r}")
        if not 0 <= self.test_fraction < 1:
            raise ValueError(f"test_fraction: expected a number in [0, 1), got {self.test_fraction!r}")
        if self.planning_reward not in ("official", "seconds"):
            raise ValueError(f"planning_reward: expected 'official' or 'seconds', "
                             f"got {self.planning_reward!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed: expected a non-negative integer, got {self.seed!r}")
        self.planner()  # its checks
        self.world_model_options()

    def planner(self) -> PlannerConfig:
        return PlannerConfig(self.candidates, self.horizon, self.elite, self.proposal_noise,
                             self.gamma, self.discount_at)

    def world_model_options(self) -> dict[str, Any]:
        """The :class:`WorldModelConfig` options of this run: its fields of the same names,
        and the gap range of the environment."""
        spec = ENVS[self.env]
        options = {field.name: getattr(self, field.name)
                   for field in dataclasses.fields(WorldModelConfig) if hasattr(self, field.name)}
        options.update(min_gap=spec.min_gap, max_gap=spec.max_gap)
        WorldModelConfig(state_dim=spec.state_dim, action_dim=spec.action_dim, **options)
        return options

    def ddpg(self) -> DDPGConfig:
        return DDPGConfig(gamma=self.gamma, actor_lr=self.actor_lr, critic_lr=self.critic_lr,
                          tau=self.tau, batch_size=self.ddpg_batch,
                          proposal_noise=self.proposal_noise)


class RLRun:
    """The state of one run: environment, world model and its optimiser, DDPG, running
    statistics, buffers, random generators and the history; checkpointed whole."""

    def __init__(self, config: RLConfig, device: Union[str, torch.device, None] = None) -> None:
        self.config = c = config
        self.device = torch.device(device or "cpu")
        spec = ENVS[c.env]
        torch.manual_seed(c.seed)
        self.rng = np.random.default_rng(c.seed)
        self.env = make_env(c.env, c.seed)
        self.planner = c.planner()
        self.reward = functools.partial(self.env.model_reward,
                                        in_seconds=c.planning_reward == "seconds")
        self.model: WorldModel = build_world_model(c.model, spec.state_dim, spec.action_dim,
                                                   **c.world_model_options())
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=c.model_lr,
                                          weight_decay=c.model_weight_decay)
        self.agent = DDPG(spec.state_dim, spec.action_dim, c.ddpg())
        self.model.to(self.device)
        self.agent.to(self.device)
        self.stats = RunningStats(spec.state_dim)
        self.transitions = TransitionBuffer(c.memory, spec.state_dim, spec.action_dim)
        self.train_chunks = ChunkBuffer(c.memory, c.horizon, spec.state_dim, spec.action_dim)
        self.test_chunks = ChunkBuffer(max(1, c.memory // 10), c.horizon, spec.state_dim,
                                       spec.action_dim)
        self.epoch = 0
        self.decisions = 0
        self.episodes = 0
        self.history: list[dict[str, Any]] = []
        self.bar: Optional[tqdm] = None

    # --------------------------------------------------------------- episodes
    def _normalized(self, state: np.ndarray) -> torch.Tensor:
        return self.stats.normalize(torch.as_tensor(state, dtype=torch.float32,
                                                    device=self.device))

    def episode(self, mode: str, max_decisions: int) -> tuple[float, int]:
        """One episode; ``mode``: ``random``, ``mpc`` (stored, DDPG updates), ``actor``
        (evaluation of the noisy actor) or ``planner`` (evaluation of MPC). Returns the
        undiscounted return and the number of decisions."""
        c, env = self.config, self.env
        state = env.reset()
        tracking = mode in ("mpc", "planner")
        latent = self.model.initial_latent(1) if tracking else None
        gap_tensor = torch.zeros(1, device=self.device)
        states, actions, gaps = [state], [], []
        total, steps = 0.0, 0
        for _ in range(max_decisions):
            self.stats.push(state)
            s_hat = self._normalized(state)
            if mode == "random":
                action = self.rng.uniform(-1.0, 1.0, env.spec.action_dim)
            elif tracking:
                action = plan(self.model, self.reward, self.stats, self.agent, s_hat, latent,
                              self.planner).action.cpu().numpy().astype(np.float64)
            else:
                action = self.agent.act(s_hat[None], c.proposal_noise)[0].cpu().numpy()
                action = action.astype(np.float64)
            gap = env.time_gap(state)
            following, reward, done = env.step(action, gap)
            if tracking:
                with torch.no_grad():
                    a = torch.as_tensor(action, dtype=torch.float32, device=self.device)
                    latent = self.model.step(torch.cat([s_hat, a])[None], latent,
                                             gap_tensor.fill_(float(gap)))
            if mode in ("random", "mpc"):
                self.transitions.push(state, None if done else following, action, reward, gap)
                if mode == "mpc":
                    self.agent.update(self.transitions, self.stats, self.rng)
                self.decisions += 1
                if self.bar is not None:
                    self.bar.update(1)
            states.append(following)
            actions.append(action)
            gaps.append(gap)
            total += reward
            steps += 1
            state = following
            if done:
                break
        if mode in ("random", "mpc"):
            chunks = episode_chunks(np.stack(states), np.stack(actions), np.asarray(gaps),
                                    c.horizon)
            train, test = split_chunks(chunks, c.test_fraction, self.rng)
            self.train_chunks.add(train)
            self.test_chunks.add(test)
            self.episodes += 1
        return total, steps

    def collect(self, mode: str, budget: int) -> list[float]:
        """Episodes of ``mode`` until ``budget`` decisions; their returns."""
        returns, used = [], 0
        while used < budget:
            total, steps = self.episode(mode, min(self.config.max_steps, budget - used))
            returns.append(total)
            used += steps
        return returns

    def evaluate(self, mode: str) -> list[float]:
        return [self.episode(mode, self.config.max_steps)[0]
                for _ in range(self.config.eval_episodes)]

    # ------------------------------------------------------------ world model
    def _batches(self, chunks, order: torch.Tensor):
        size = self.config.model_batch
        for start in range(0, len(order), size):
            index = order[start:start + size]
            lengths = chunks.lengths[index]
            width = int(lengths.max())
            yield tuple(part.to(self.device) for part in (
                chunks.states[index, :width + 1], chunks.actions[index, :width],
                chunks.times[index, :width + 1], lengths))

    def _test_mse(self, chunks) -> float:
        with torch.no_grad():
            values = [float(sequence_losses(self.model, *batch, train=False).losses["mse"])
                      for batch in self._batches(chunks, torch.arange(len(chunks.lengths)))]
        return sum(values) / len(values)

    def train_world_model(self) -> dict[str, Any]:
        """Early-stopped passes over the chunks (module docstring, step a)."""
        c = self.config
        train = normalized_chunks(self.train_chunks.all(), self.stats)
        test = normalized_chunks(self.test_chunks.all(), self.stats)
        if len(test.lengths) == 0:
            test = train  # no test chunk yet: watch the training chunks' open-loop MSE
        patience = max(c.patience_start - self.epoch + 1, c.patience_min)
        best, best_pass, best_state, record = float("inf"), 0, None, []
        for current in range(c.max_passes):
            train_mse = []
            for batch in self._batches(train, torch.randperm(len(train.lengths))):
                losses = sequence_losses(self.model, *batch, train=True).losses
                self.optimizer.zero_grad()
                losses["total"].backward()
                self.optimizer.step()
                train_mse.append(losses["mse"].item())
            test_mse = self._test_mse(test)
            record.append({"train_mse": sum(train_mse) / len(train_mse), "test_mse": test_mse})
            if test_mse < best:
                best, best_pass = test_mse, current
                if c.keep_best_world_model:
                    best_state = copy.deepcopy(self.model.state_dict())
            if current - best_pass >= patience:
                break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        last = record[-1]["test_mse"]
        return {"passes": len(record), "best_test_mse": best, "best_pass": best_pass + 1,
                "last_test_mse": last, "used_test_mse": best if c.keep_best_world_model else last,
                "curve": record,
                "chunks": [len(train.lengths), len(test.lengths)]}

    # ------------------------------------------------------------------ epochs
    def run_epoch(self) -> dict[str, Any]:
        """The random phase (epoch 0) or one model-based epoch; appended to the history."""
        c = self.config
        start = time.perf_counter()
        record: dict[str, Any] = {"epoch": self.epoch}
        if self.epoch == 0:
            record["train_returns"] = self.collect("random", c.random_decisions)
        else:
            record["world_model"] = self.train_world_model()
            record["train_returns"] = self.collect("mpc", c.decisions_per_epoch)
        returns = self.evaluate("actor")
        record["eval_returns"] = returns
        record["eval_return"] = sum(returns) / len(returns)
        if c.evaluate_planner and self.epoch > 0:
            planner = self.evaluate("planner")
            record["eval_returns_planner"] = planner
            record["eval_return_planner"] = sum(planner) / len(planner)
        record["decisions"] = self.decisions
        record["episodes"] = self.episodes
        record["seconds"] = time.perf_counter() - start
        self.history.append(record)
        self.epoch += 1
        return record

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.config),
            "epoch": self.epoch, "decisions": self.decisions, "episodes": self.episodes,
            "history": json.dumps(self.history),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "agent": self.agent.state_dict(), "stats": self.stats.state_dict(),
            "transitions": self.transitions.state_dict(),
            "train_chunks": self.train_chunks.state_dict(),
            "test_chunks": self.test_chunks.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": json.dumps(self.rng.bit_generator.state),
            "env_rng": json.dumps(self.env.rng_state()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.decisions, self.episodes = (state["epoch"], state["decisions"],
                                                     state["episodes"])
        self.history = json.loads(state["history"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.agent.load_state_dict(state["agent"])
        self.stats.load_state_dict(state["stats"])
        self.transitions.load_state_dict(state["transitions"])
        self.train_chunks.load_state_dict(state["train_chunks"])
        self.test_chunks.load_state_dict(state["test_chunks"])
        torch.set_rng_state(state["torch_rng"])
        self.rng.bit_generator.state = json.loads(state["numpy_rng"])
        self.env.set_rng_state(json.loads(state["env_rng"]))

    def metrics(self) -> dict[str, Any]:
        """The run's ``metrics.json``: settings, the learning curves (evaluation return per
        epoch, epoch 0 the random phase; the test MSE of the world model the agent planned
        with in each epoch: the last pass's, or the best one's with
        ``keep_best_world_model``) and every epoch's record."""
        curve = [r["eval_return"] for r in self.history]
        wm = [r["world_model"]["used_test_mse"] for r in self.history if "world_model" in r]
        return {"kind": "rl", "env": self.config.env, "model": self.config.model,
                "origin": WORLD_MODELS[self.config.model].origin, "seed": self.config.seed,
                "config": dataclasses.asdict(self.config), "epochs_done": self.epoch - 1,
                "decisions": self.decisions, "episodes": self.episodes,
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "eval_return_curve": curve, "world_model_test_mse_curve": wm,
                "history": self.history}


def _save(run: RLRun, out: Path) -> None:
    _atomic_write(out / CHECKPOINT, lambda path: torch.save(run.state_dict(), path))
    _write_json(out / METRICS, run.metrics())


def load_run(folder: Union[str, Path], device: Union[str, torch.device, None] = None) -> RLRun:
    """The run saved in ``folder`` (its checkpoint), ready to continue (on ``device``,
    default the CPU) or inspect.

    Raises:
        ValueError: one line when there is no readable checkpoint.
    """
    path = Path(folder) / CHECKPOINT
    if not path.is_file():
        raise ValueError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        config = RLConfig(**state["config"])
    except Exception as error:  # a truncated or foreign file
        reason = " ".join(str(error).split())[:160] or type(error).__name__
        raise ValueError(f"{path}: not a readable fwplab rl checkpoint ({reason})") from None
    run = RLRun(config, device)
    run.load_state_dict(state)
    return run


def train_agent(config: Optional[RLConfig] = None, out: Union[str, Path, None] = None, *,
                resume: bool = False, progress: bool = True,
                device: Union[str, torch.device, None] = None) -> dict[str, Any]:
    """Run the schedule (module docstring) and return the metrics.

    Args:
        config: the settings (default :class:`RLConfig`); ignored when resuming, where the
            saved settings are used.
        out: the run folder: a checkpoint and ``metrics.json`` after every epoch
            (atomic writes, one writer per folder). None keeps nothing.
        resume: continue the run saved in ``out`` after its last finished epoch; the
            result is the same as an uninterrupted run's.
        device: where the networks run (default the CPU); environments and buffers stay
            on the CPU. A run may resume on another device.
    """
    folder = None if out is None else Path(out)
    if resume and folder is None:
        raise ValueError("resume: needs the run folder (out)")
    if not resume and folder is not None and (folder / CHECKPOINT).exists():
        raise ValueError(f"out: {folder} already holds a run; resume it or choose another folder")
    lock = _RunFolderLock(folder) if folder is not None else None
    if lock is not None:
        lock.__enter__()
    try:
        run = load_run(folder, device) if resume else RLRun(config or RLConfig(), device)
        c = run.config
        total = c.random_decisions + c.epochs * c.decisions_per_epoch
        with tqdm(total=total, initial=run.decisions, disable=not progress, unit="decision",
                  desc=f"{c.model} on {c.env}") as bar:
            run.bar = bar
            while run.epoch <= c.epochs:
                record = run.run_epoch()
                bar.set_postfix(epoch=record["epoch"], eval=f"{record['eval_return']:.1f}")
                if folder is not None:
                    _save(run, folder)
            run.bar = None
        return run.metrics()
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)

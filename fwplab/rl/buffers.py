"""What the agent remembers: observation statistics, real transitions and trajectory chunks.

Every buffer stores **raw** states; states are normalised when they are read, with the
statistics of that moment (so a state stored early is normalised differently later):

    s_hat = (s - mean) / std        mean, std over every state the agent decided at

* :class:`RunningStats` -- Welford's running mean and population standard deviation.
* :class:`TransitionBuffer` -- circular buffer of ``(s, s' or terminal, a, r, gap)``,
  sampled uniformly without replacement, read by the DDPG update.
* :func:`episode_chunks` cuts a finished episode into chunks of ``horizon`` decisions;
  :func:`split_chunks` sends each one to the train or the test :class:`ChunkBuffer`;
  :func:`normalized_chunks` prepares what a buffer holds for world-model training.

Buffers keep their rows in numpy arrays that grow as they fill (a capacity of ``10**6``
allocates nothing up front) and wrap around once full, overwriting the oldest rows.
"""

from __future__ import annotations

from typing import NamedTuple, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["RunningStats", "TransitionBuffer", "Chunks", "episode_chunks", "ChunkBuffer",
           "split_chunks", "normalized_chunks"]

ArrayLike = Union[np.ndarray, Tensor]


def _numpy(x: ArrayLike, dtype: type) -> np.ndarray:
    """A numpy copy of ``x`` (array or tensor on any device) in ``dtype``."""
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.array(x, dtype=dtype)


class RunningStats:
    """Running mean and population standard deviation of states (Welford's algorithm).

    After ``n`` pushes of ``s_1 .. s_n`` (each ``(state_dim,)``)::

        mean = (1/n) sum_i s_i        std = sqrt(M2 / n),  M2 = sum_i (s_i - mean)^2

    accumulated in float64 on the CPU (``n = 0`` gives mean 0 and std 0).
    :meth:`normalize` divides by 1 where ``std == 0`` (``n <= 1`` or a constant coordinate),
    where a plain division gives NaN or inf; all finite results are those of the plain
    formula. :meth:`push` copies its argument, so a pushed state is never changed
    afterwards (the reference implementation keeps the first pushed tensor as its mean and
    updates it in place, so that caller's state drifts; this port does not).
    """

    def __init__(self, dim: int):
        if dim < 1:
            raise ValueError(f"dim: expected a positive state dimension, got {dim}")
        self.dim = dim
        self.count = 0
        self._mean = torch.zeros(dim, dtype=torch.float64)
        self._m2 = torch.zeros(dim, dtype=torch.float64)

    def push(self, state: ArrayLike) -> None:
        """Add one raw state ``(dim,)`` to the statistics."""
        x = torch.as_tensor(_numpy(state, np.float64))
        if x.shape != (self.dim,):
            raise ValueError(f"state: expected shape ({self.dim},), got {tuple(x.shape)}")
        self.count += 1
        delta = x - self._mean
        self._mean += delta / self.count
        self._m2 += delta * (x - self._mean)

    @property
    def mean(self) -> Tensor:
        """``(dim,)`` float64 running mean (a copy)."""
        return self._mean.clone()

    @property
    def std(self) -> Tensor:
        """``(dim,)`` float64 population standard deviation ``sqrt(M2 / n)``."""
        if self.count == 0:
            return torch.zeros(self.dim, dtype=torch.float64)
        return torch.sqrt(self._m2 / self.count)

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim == 0 or x.shape[-1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected a tensor of shape (..., {self.dim}), got {shape}")

    def _scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        std = self.std
        std = torch.where(std == 0, torch.ones_like(std), std)
        return self._mean.to(x.device, x.dtype), std.to(x.device, x.dtype)

    def normalize(self, x: Tensor) -> Tensor:
        """``(..., dim)`` raw states to ``(x - mean) / std`` in ``x``'s dtype and device."""
        self._check(x)
        mean, std = self._scale(x)
        return (x - mean) / std

    def unnormalize(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`normalize`: ``(..., dim)`` to ``x * std + mean``."""
        self._check(x)
        mean, std = self._scale(x)
        return x * std + mean

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self._mean.clone(), "m2": self._m2.clone()}

    def load_state_dict(self, state: dict) -> None:
        mean, m2 = state["mean"], state["m2"]
        if tuple(mean.shape) != (self.dim,) or tuple(m2.shape) != (self.dim,):
            raise ValueError(f"state: expected mean and m2 of shape ({self.dim},), "
                             f"got {tuple(mean.shape)} and {tuple(m2.shape)}")
        self.count = int(state["count"])
        self._mean = mean.to(torch.float64).clone()
        self._m2 = m2.to(torch.float64).clone()


class _Ring:
    """Circular rows of fixed-shape fields in numpy arrays that grow (at least x2) as they fill.

    Until the ring is full, row ``i`` is the ``i``-th row written and ``position == size``;
    after that ``position`` is the oldest row, the next to be overwritten.
    """

    def __init__(self, capacity: int, fields: dict[str, tuple[tuple[int, ...], type]]):
        if capacity < 1:
            raise ValueError(f"capacity: expected a positive integer, got {capacity}")
        self.capacity = capacity
        self.fields = fields
        self.arrays = {name: np.zeros((0, *shape), dtype) for name, (shape, dtype) in
                       fields.items()}
        self.size = 0
        self.position = 0

    def _reserve(self, rows: int) -> None:
        allocated = len(next(iter(self.arrays.values())))
        if rows <= allocated:
            return
        rows = min(self.capacity, max(rows, 2 * allocated, 64))
        for name, (shape, dtype) in self.fields.items():
            grown = np.zeros((rows, *shape), dtype)
            grown[:allocated] = self.arrays[name]
            self.arrays[name] = grown

    def append(self, rows: dict[str, np.ndarray]) -> None:
        """Write ``n`` rows (each field ``(n, *shape)``) as ``n`` successive single writes."""
        n = len(rows[next(iter(self.fields))])
        if n > self.capacity:
            self.position = (self.position + n - self.capacity) % self.capacity
            rows = {name: value[n - self.capacity:] for name, value in rows.items()}
            n = self.capacity
        self._reserve(min(self.capacity, self.size + n))
        index = (self.position + np.arange(n)) % self.capacity
        for name in self.fields:
            self.arrays[name][index] = rows[name]
        self.size = min(self.capacity, self.size + n)
        self.position = (self.position + n) % self.capacity

    def ordered(self) -> dict[str, np.ndarray]:
        """Every stored row, oldest first."""
        order = (self.position + np.arange(self.size)) % self.size if self.size else []
        return {name: array[order] for name, array in self.arrays.items()}

    def state_dict(self) -> dict:
        state = {"capacity": self.capacity, "size": self.size, "position": self.position}
        state.update({name: torch.from_numpy(array[:self.size].copy())
                      for name, array in self.arrays.items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"state: expected capacity {self.capacity}, got {state['capacity']}")
        size = int(state["size"])
        arrays = {}
        for name, (shape, dtype) in self.fields.items():
            array = state[name].numpy().astype(dtype)
            if array.shape != (size, *shape):
                raise ValueError(f"state[{name!r}]: expected shape {(size, *shape)}, "
                                 f"got {array.shape}")
            arrays[name] = array
        self.arrays, self.size, self.position = arrays, size, int(state["position"])


class TransitionBuffer:
    """Circular buffer of real transitions ``(s, s', a, r, gap)`` with raw states.

    A terminal transition (``next_state=None``) stores zeros as ``s'`` and sets
    ``terminal``. :meth:`sample` draws ``batch_size`` distinct rows uniformly (like
    ``random.sample`` in the reference), through the numpy generator it is given.
    """

    def __init__(self, capacity: int, state_dim: int, action_dim: int):
        self.state_dim, self.action_dim = state_dim, action_dim
        self._ring = _Ring(capacity, {
            "state": ((state_dim,), np.float32), "next_state": ((state_dim,), np.float32),
            "action": ((action_dim,), np.float32), "reward": ((), np.float64),
            "gap": ((), np.float64), "terminal": ((), np.bool_)})

    def __len__(self) -> int:
        return self._ring.size

    def push(self, state: ArrayLike, next_state: ArrayLike | None, action: ArrayLike,
             reward: float, gap: int) -> None:
        """Store one transition: ``state (S,)``, ``next_state (S,)`` or ``None`` if terminal,
        ``action (A,)``, the reward and the time gap of the decision."""
        s = _numpy(state, np.float32)
        terminal = next_state is None
        s_next = np.zeros(self.state_dim, np.float32) if terminal else _numpy(next_state,
                                                                                np.float32)
        a = _numpy(action, np.float32)
        if s.shape != (self.state_dim,) or s_next.shape != (self.state_dim,):
            raise ValueError(f"state, next_state: expected shape ({self.state_dim},), "
                             f"got {s.shape} and {s_next.shape}")
        if a.shape != (self.action_dim,):
            raise ValueError(f"action: expected shape ({self.action_dim},), got {a.shape}")
        self._ring.append({"state": s[None], "next_state": s_next[None], "action": a[None],
                           "reward": np.array([reward], np.float64),
                           "gap": np.array([gap], np.float64),
                           "terminal": np.array([terminal])})

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, Tensor]:
        """``batch_size`` distinct stored transitions, uniformly, as CPU tensors.

        Returns ``state (B, S)``, ``next_state (B, S)`` (zeros where terminal),
        ``action (B, A)``, ``reward (B,)``, ``gap (B,)`` (all float32, states raw) and
        ``terminal (B,)`` bool.
        """
        if not 1 <= batch_size <= len(self):
            raise ValueError(f"batch_size: expected 1..{len(self)} (the buffer size), "
                             f"got {batch_size}")
        index = rng.choice(len(self), size=batch_size, replace=False)
        arrays = self._ring.arrays
        batch = {name: torch.from_numpy(arrays[name][index].astype(np.float32))
                 for name in ("state", "next_state", "action", "reward", "gap")}
        batch["terminal"] = torch.from_numpy(arrays["terminal"][index])
        return batch

    def state_dict(self) -> dict:
        return self._ring.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._ring.load_state_dict(state)


class Chunks(NamedTuple):
    """``N`` trajectory chunks of ``H`` decisions each (raw or normalised states).

    ``states (N, H+1, S)`` float32, ``actions (N, H, A)`` float32, ``times (N, H+1)``
    float32 absolute decision times within the episode, ``lengths (N,)`` int64 number of
    real decisions; steps past ``lengths`` are padding (zero states and actions, the
    last time repeated).
    """

    states: Tensor
    actions: Tensor
    times: Tensor
    lengths: Tensor


def episode_chunks(states: ArrayLike, actions: ArrayLike, gaps: ArrayLike,
                   horizon: int) -> Chunks:
    """Cut one finished episode into chunks of ``horizon`` decisions.

    Args:
        states: ``(T+1, S)`` raw states ``s_0 .. s_T`` (``s_T`` is the final next state).
        actions: ``(T, A)`` actions taken.
        gaps: ``(T,)`` time gap of each decision.
        horizon: decisions per chunk ``H``.

    Times are ``t_0 = 0``, ``t_k = gap_0 + .. + gap_{k-1}``. The episode is padded to
    ``N = ceil(T / H)`` chunks (zero states and actions, ``t_T`` repeated); chunk ``i``
    holds states ``i*H .. i*H + H`` (consecutive chunks share one state), actions
    ``i*H .. i*H + H - 1``, the absolute times, and length ``min(H, T - i*H)``.
    """
    s, a, g = _numpy(states, np.float32), _numpy(actions, np.float32), _numpy(gaps, np.float32)
    if horizon < 1:
        raise ValueError(f"horizon: expected a positive integer, got {horizon}")
    if s.ndim != 2 or len(s) < 2:
        raise ValueError(f"states: expected shape (T+1, state_dim) with T >= 1, got {s.shape}")
    steps = len(s) - 1
    if a.ndim != 2 or len(a) != steps or g.shape != (steps,):
        raise ValueError(f"actions, gaps: expected shapes ({steps}, action_dim) and ({steps},) "
                         f"for {steps + 1} states, got {a.shape} and {g.shape}")
    times = np.concatenate([np.zeros(1, np.float32), np.cumsum(g, dtype=np.float32)])
    count = -(-steps // horizon)
    pad = count * horizon - steps
    s = np.concatenate([s, np.zeros((pad, s.shape[1]), np.float32)])
    a = np.concatenate([a, np.zeros((pad, a.shape[1]), np.float32)])
    times = np.concatenate([times, np.full(pad, times[-1], np.float32)])
    starts = np.arange(count) * horizon
    window = starts[:, None] + np.arange(horizon + 1)
    return Chunks(states=torch.from_numpy(s[window]),
                  actions=torch.from_numpy(a[window[:, :-1]]),
                  times=torch.from_numpy(times[window]),
                  lengths=torch.from_numpy(np.minimum(horizon, steps - starts).astype(np.int64)))


class ChunkBuffer:
    """Circular buffer of trajectory chunks (one for training, one for testing)."""

    def __init__(self, capacity: int, horizon: int, state_dim: int, action_dim: int):
        self.horizon, self.state_dim, self.action_dim = horizon, state_dim, action_dim
        self._ring = _Ring(capacity, {
            "states": ((horizon + 1, state_dim), np.float32),
            "actions": ((horizon, action_dim), np.float32),
            "times": ((horizon + 1,), np.float32), "lengths": ((), np.int64)})

    def __len__(self) -> int:
        return self._ring.size

    def add(self, chunks: Chunks) -> None:
        """Append ``N`` chunks (oldest overwritten once the buffer is full)."""
        n, h, s, a = len(chunks.states), self.horizon, self.state_dim, self.action_dim
        expected = {"states": (n, h + 1, s), "actions": (n, h, a), "times": (n, h + 1),
                    "lengths": (n,)}
        got = {name: tuple(getattr(chunks, name).shape) for name in expected}
        if got != expected:
            raise ValueError(f"chunks: expected shapes {expected}, got {got}")
        self._ring.append({name: _numpy(getattr(chunks, name), dtype)
                           for name, (_, dtype) in self._ring.fields.items()})

    def all(self) -> Chunks:
        """Every stored chunk, oldest first (shuffle before training)."""
        rows = self._ring.ordered()
        return Chunks(**{name: torch.from_numpy(rows[name]) for name in Chunks._fields})

    def state_dict(self) -> dict:
        return self._ring.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._ring.load_state_dict(state)


def split_chunks(chunks: Chunks, test_fraction: float,
                 rng: np.random.Generator) -> tuple[Chunks, Chunks]:
    """Send each chunk, independently, to the test set with probability ``test_fraction``.

    One uniform draw per chunk, in order; returns ``(train, test)``, order kept.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction: expected a number in [0, 1], got {test_fraction}")
    test = torch.from_numpy(rng.random(len(chunks.lengths)) < test_fraction)
    return (Chunks(*(field[~test] for field in chunks)),
            Chunks(*(field[test] for field in chunks)))


def normalized_chunks(chunks: Chunks, stats: RunningStats) -> Chunks:
    """``chunks`` with every state normalised by ``stats`` (see :class:`RunningStats`).

    Padding states are normalised too (zeros become ``-mean / std``), as in the reference;
    they lie past each chunk's length and only a length-aware reader should see them.
    """
    return chunks._replace(states=stats.normalize(chunks.states))

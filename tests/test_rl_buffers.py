"""Observation statistics, the transition buffer and trajectory chunks of the RL agent."""

import io

import numpy as np
import pytest
import torch

from fwplab.rl.buffers import (ChunkBuffer, Chunks, RunningStats, TransitionBuffer,
                               episode_chunks, normalized_chunks, split_chunks)


def _round_trip(state: dict) -> dict:
    handle = io.BytesIO()
    torch.save(state, handle)
    handle.seek(0)
    return torch.load(handle, weights_only=True)


# ---------------------------------------------------------------- RunningStats

def test_running_stats_match_numpy_population_moments():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 5.0, size=(257, 4)) * np.array([1.0, 10.0, 0.1, 1e3])
    stats = RunningStats(4)
    for i, row in enumerate(data):
        stats.push(row if i % 2 else torch.tensor(row, dtype=torch.float64))
    assert stats.count == 257
    assert stats.mean.dtype == stats.std.dtype == torch.float64
    np.testing.assert_allclose(stats.mean.numpy(), data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.std.numpy(), data.std(0, ddof=0), rtol=1e-10)


def test_push_copies_the_state():
    state = np.array([1.0, 2.0])
    stats = RunningStats(2)
    stats.push(state)
    stats.push(np.array([3.0, 6.0]))
    assert state.tolist() == [1.0, 2.0]
    stats.mean.add_(100.0)  # a copy: the statistics do not move
    assert stats.mean.tolist() == [2.0, 4.0]


def test_normalize_and_unnormalize_are_inverse_in_the_callers_dtype():
    rng = np.random.default_rng(1)
    stats = RunningStats(3)
    for row in rng.normal(size=(50, 3)) * 4 + 7:
        stats.push(row)
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0))
    x_hat = stats.normalize(x)
    assert x_hat.dtype == torch.float32 and x_hat.shape == (2, 5, 3)
    expected = (x.double() - stats.mean) / stats.std
    torch.testing.assert_close(x_hat.double(), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(stats.unnormalize(x_hat), x, rtol=1e-6, atol=1e-5)
    one = torch.randn(1, 3, dtype=torch.float64)
    torch.testing.assert_close(stats.unnormalize(stats.normalize(one)), one)


def test_zero_std_divides_by_one_instead_of_giving_nan():
    stats = RunningStats(2)
    x = torch.tensor([[1.0, -2.0]])
    assert torch.equal(stats.normalize(x), x)  # nothing pushed: mean 0, std 0
    stats.push(np.array([5.0, 1.0]))
    assert stats.std.tolist() == [0.0, 0.0]
    assert torch.equal(stats.normalize(x), torch.tensor([[-4.0, -3.0]]))
    stats.push(np.array([7.0, 1.0]))  # second coordinate constant, first has std 1
    assert stats.std.tolist() == [1.0, 0.0]
    assert torch.equal(stats.normalize(x), torch.tensor([[-5.0, -3.0]]))
    assert torch.equal(stats.unnormalize(torch.tensor([[-5.0, -3.0]])), x)


def test_running_stats_state_dict_round_trip_and_errors():
    stats = RunningStats(3)
    for row in np.random.default_rng(2).normal(size=(10, 3)):
        stats.push(row)
    copy = RunningStats(3)
    copy.load_state_dict(_round_trip(stats.state_dict()))
    row = np.array([0.5, -1.0, 2.0])
    stats.push(row)
    copy.push(row)
    assert copy.count == 11
    assert torch.equal(copy.mean, stats.mean) and torch.equal(copy.std, stats.std)
    with pytest.raises(ValueError, match=r"expected shape \(3,\)"):
        stats.push(np.zeros(4))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        stats.normalize(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="mean and m2 of shape"):
        RunningStats(2).load_state_dict(stats.state_dict())


# ---------------------------------------------------------------- TransitionBuffer

def _fill(buffer: TransitionBuffer, count: int, start: int = 0) -> None:
    """Transition i: state = i, next = i + 0.5 (terminal when i % 4 == 3), action = -i,
    reward = 10 i, gap = 1 + i % 3."""
    for i in range(start, start + count):
        state = np.full(buffer.state_dim, float(i))
        following = None if i % 4 == 3 else torch.full((buffer.state_dim,), i + 0.5)
        buffer.push(state, following, np.full(buffer.action_dim, -float(i)), 10.0 * i, 1 + i % 3)


def _check_rows(batch: dict) -> np.ndarray:
    """Every sampled row is one stored transition, intact; returns the indices i."""
    i = batch["state"][:, 0].numpy()
    assert torch.equal(batch["state"], batch["state"][:, :1].expand_as(batch["state"]))
    np.testing.assert_array_equal(batch["action"][:, 0].numpy(), -i)
    np.testing.assert_array_equal(batch["reward"].numpy(), 10 * i)
    np.testing.assert_array_equal(batch["gap"].numpy(), 1 + i % 3)
    terminal = i % 4 == 3
    np.testing.assert_array_equal(batch["terminal"].numpy(), terminal)
    next_first = batch["next_state"][:, 0].numpy()
    np.testing.assert_array_equal(next_first, np.where(terminal, 0.0, i + 0.5))
    return i


def test_transition_buffer_wraps_around_at_capacity():
    buffer = TransitionBuffer(5, state_dim=3, action_dim=2)
    _fill(buffer, 8)
    assert len(buffer) == 5
    batch = buffer.sample(5, np.random.default_rng(0))
    assert sorted(_check_rows(batch).tolist()) == [3, 4, 5, 6, 7]


def test_sample_is_reproducible_without_replacement_and_returns_stored_rows():
    buffer = TransitionBuffer(100, state_dim=2, action_dim=1)
    _fill(buffer, 40)
    first = buffer.sample(32, np.random.default_rng(7))
    second = buffer.sample(32, np.random.default_rng(7))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert {k: v.dtype for k, v in first.items()} == {
        "state": torch.float32, "next_state": torch.float32, "action": torch.float32,
        "reward": torch.float32, "gap": torch.float32, "terminal": torch.bool}
    indices = _check_rows(first)
    assert len(set(indices.tolist())) == 32
    assert _check_rows(buffer.sample(1, np.random.default_rng(1))).shape == (1,)
    with pytest.raises(ValueError, match="expected 1..40"):
        buffer.sample(41, np.random.default_rng(0))


def test_transition_buffer_state_dict_resumes_exactly():
    buffer = TransitionBuffer(6, state_dim=2, action_dim=1)
    _fill(buffer, 9)
    copy = TransitionBuffer(6, state_dim=2, action_dim=1)
    copy.load_state_dict(_round_trip(buffer.state_dict()))
    _fill(buffer, 2, start=9)
    _fill(copy, 2, start=9)
    a, b = buffer.sample(6, np.random.default_rng(3)), copy.sample(6, np.random.default_rng(3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(_check_rows(a).tolist()) == [5, 6, 7, 8, 9, 10]
    with pytest.raises(ValueError, match="expected capacity 7"):
        TransitionBuffer(7, 2, 1).load_state_dict(buffer.state_dict())


def test_transition_buffer_rejects_wrong_shapes():
    buffer = TransitionBuffer(4, state_dim=3, action_dim=2)
    with pytest.raises(ValueError, match=r"expected shape \(3,\)"):
        buffer.push(np.zeros(3), np.zeros(4), np.zeros(2), 0.0, 1)
    with pytest.raises(ValueError, match=r"action: expected shape \(2,\)"):
        buffer.push(np.zeros(3), None, np.zeros(3), 0.0, 1)


# ---------------------------------------------------------------- chunks

def _episode(steps: int, state_dim: int = 2, action_dim: int = 1):
    states = np.arange(1, steps + 2, dtype=np.float32)[:, None].repeat(state_dim, 1)
    actions = -np.arange(1, steps + 1, dtype=np.float32)[:, None].repeat(action_dim, 1)
    gaps = np.array([1 + k % 3 for k in range(steps)])
    return states, actions, gaps


def test_episode_chunks_pad_the_last_chunk_and_keep_absolute_times():
    states, actions, gaps = _episode(7)  # gaps 1 2 3 1 2 3 1 -> times 0 1 3 6 7 9 12 13
    chunks = episode_chunks(states, actions, gaps, horizon=3)
    assert chunks.states.shape == (3, 4, 2) and chunks.actions.shape == (3, 3, 1)
    assert chunks.states.dtype == chunks.actions.dtype == chunks.times.dtype == torch.float32
    assert chunks.lengths.dtype == torch.int64
    assert chunks.lengths.tolist() == [3, 3, 1]
    assert chunks.times.tolist() == [[0, 1, 3, 6], [6, 7, 9, 12], [12, 13, 13, 13]]
    assert chunks.states[:, :, 0].tolist() == [[1, 2, 3, 4], [4, 5, 6, 7], [7, 8, 0, 0]]
    assert chunks.actions[:, :, 0].tolist() == [[-1, -2, -3], [-4, -5, -6], [-7, 0, 0]]


def test_episode_chunks_exact_multiple_and_short_episode():
    states, actions, gaps = _episode(6)
    chunks = episode_chunks(torch.from_numpy(states), torch.from_numpy(actions),
                            torch.from_numpy(gaps), horizon=3)
    assert chunks.lengths.tolist() == [3, 3]
    assert chunks.states[:, :, 0].tolist() == [[1, 2, 3, 4], [4, 5, 6, 7]]
    assert chunks.times[-1, -1].item() == gaps.sum()
    short = episode_chunks(*_episode(2), horizon=5)
    assert short.lengths.tolist() == [2]
    assert short.times.tolist() == [[0, 1, 3, 3, 3, 3]]
    assert short.states[0, :, 0].tolist() == [1, 2, 3, 0, 0, 0]


def test_episode_chunks_errors():
    states, actions, gaps = _episode(4)
    with pytest.raises(ValueError, match="T >= 1"):
        episode_chunks(states[:1], actions[:0], gaps[:0], horizon=2)
    with pytest.raises(ValueError, match=r"expected shapes \(4, action_dim\) and \(4,\)"):
        episode_chunks(states, actions[:3], gaps, horizon=2)
    with pytest.raises(ValueError, match="horizon"):
        episode_chunks(states, actions, gaps, horizon=0)


def _numbered_chunks(count: int, horizon: int = 2) -> Chunks:
    """Chunk n has every state entry equal to n."""
    ids = torch.arange(count, dtype=torch.float32)
    return Chunks(states=ids.view(-1, 1, 1).expand(count, horizon + 1, 3).clone(),
                  actions=torch.zeros(count, horizon, 1),
                  times=torch.arange(horizon + 1.0).expand(count, horizon + 1).clone(),
                  lengths=torch.full((count,), horizon, dtype=torch.int64))


def test_split_chunks_fraction_partition_and_determinism():
    chunks = _numbered_chunks(4000)
    train, test = split_chunks(chunks, 0.1, np.random.default_rng(5))
    # Binomial(4000, 0.1): mean 400, sd 19; 6 sd either side
    assert 286 <= len(test.lengths) <= 514
    ids = torch.cat([train.states[:, 0, 0], test.states[:, 0, 0]]).sort().values
    assert torch.equal(ids, chunks.states[:, 0, 0])
    assert bool((train.states[1:, 0, 0] > train.states[:-1, 0, 0]).all())  # order kept
    again, _ = split_chunks(chunks, 0.1, np.random.default_rng(5))
    assert all(torch.equal(a, b) for a, b in zip(train, again, strict=True))
    assert len(split_chunks(chunks, 0.0, np.random.default_rng(0))[1].lengths) == 0
    assert len(split_chunks(chunks, 1.0, np.random.default_rng(0))[0].lengths) == 0
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        split_chunks(chunks, 1.5, np.random.default_rng(0))


def test_chunk_buffer_keeps_insertion_order_wraps_and_resumes():
    buffer = ChunkBuffer(5, horizon=2, state_dim=3, action_dim=1)
    chunks = _numbered_chunks(7)
    buffer.add(Chunks(*(field[:3] for field in chunks)))
    assert len(buffer) == 3 and buffer.all().states[:, 0, 0].tolist() == [0, 1, 2]
    buffer.add(Chunks(*(field[3:] for field in chunks)))
    stored = buffer.all()
    assert len(buffer) == 5 and stored.states[:, 0, 0].tolist() == [2, 3, 4, 5, 6]
    assert stored.lengths.dtype == torch.int64 and stored.times.shape == (5, 3)
    copy = ChunkBuffer(5, horizon=2, state_dim=3, action_dim=1)
    copy.load_state_dict(_round_trip(buffer.state_dict()))
    more = Chunks(*(field[:2] + 10 for field in chunks))
    buffer.add(more)
    copy.add(more)
    assert all(torch.equal(a, b) for a, b in zip(buffer.all(), copy.all(), strict=True))
    assert copy.all().states[:, 0, 0].tolist() == [4, 5, 6, 10, 11]
    with pytest.raises(ValueError, match="chunks: expected shapes"):
        buffer.add(_numbered_chunks(2, horizon=3))


def test_normalized_chunks_normalise_every_state_padding_included():
    stats = RunningStats(2)
    for row in ([1.0, 10.0], [3.0, 30.0]):
        stats.push(np.array(row))
    states, actions, gaps = _episode(3)
    chunks = episode_chunks(states, actions, gaps, horizon=2)
    normal = normalized_chunks(chunks, stats)
    torch.testing.assert_close(normal.states, (chunks.states - torch.tensor([2.0, 20.0]))
                               / torch.tensor([1.0, 10.0]))
    assert normal.states[1, 2].tolist() == [-2.0, -2.0]  # a padding state
    assert all(torch.equal(a, b) for a, b in zip(normal[1:], chunks[1:], strict=True))

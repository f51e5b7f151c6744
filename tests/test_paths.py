"""Control paths: vectorised coefficients equal torchcde's, series lengths, integration grids,
which interpolations are causal."""

import math

import pytest
import torch
import torchcde

from fwplab.paths import (
    CAUSAL_INTERPOLATIONS,
    INTERPOLATIONS,
    control_path,
    future_dependence,
    integration_grid,
    interpolation_coeffs,
)

RTOL = {torch.float64: 1e-12, torch.float32: 1e-6}  # relative to the coefficients' scale
GRID_ATOL = 1e-12  # round-off of the float64 grid points
TORCHCDE_COEFFS = {
    "natural_cubic": torchcde.natural_cubic_coeffs,
    "hermite_cubic": torchcde.hermite_cubic_coefficients_with_backward_differences,
    "linear": torchcde.linear_interpolation_coeffs,
}


def _irregular_times(length, dtype, generator):
    """Strictly increasing, irregular, starting below zero."""
    gaps = 0.05 + torch.rand(length, dtype=dtype, generator=generator)
    return torch.cumsum(gaps, 0) - 1.5


def _observations(batch, length, channels, dtype, seed, missing_rate=0.5):
    """Random series with NaN at random and the patterns torchcde treats specially.

    Series 0 has a channel never observed, series 1 starts and series 2 ends
    with missing values, in series 3 channel 0 is observed only at both ends
    (a two-knot spline) and in series 4 channel 0 only once.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, channels, dtype=dtype, generator=generator)
    x[torch.rand(x.shape, generator=generator) < missing_rate] = math.nan
    x[0, :, 1] = math.nan
    x[1, :3] = math.nan
    x[2, -3:] = math.nan
    x[3, 1:-1, 0] = math.nan
    x[4, :, 0] = math.nan
    x[4, length // 2, 0] = 0.7
    return x, _irregular_times(length, dtype, generator)


def _assert_equal_to_torchcde(x, times, interpolation):
    ours = INTERPOLATIONS[interpolation].coeffs(x, times)
    reference = TORCHCDE_COEFFS[interpolation](x, times)
    assert ours.shape == reference.shape and ours.dtype == x.dtype
    assert not torch.isnan(ours).any()
    rtol = RTOL[x.dtype]
    torch.testing.assert_close(ours, reference, rtol=rtol, atol=rtol * float(reference.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("interpolation", sorted(INTERPOLATIONS))
def test_coefficients_equal_torchcde_with_missing_values(interpolation, dtype):
    for seed, length in enumerate([2, 3, 11, 17]):
        x, times = _observations(6, length, 4, dtype, seed)
        _assert_equal_to_torchcde(x, times, interpolation)


@pytest.mark.parametrize("interpolation", sorted(INTERPOLATIONS))
def test_coefficients_equal_torchcde_batch_one_and_dense(interpolation):
    x, times = _observations(6, 9, 3, torch.float64, seed=7, missing_rate=0.3)
    _assert_equal_to_torchcde(x[1:2], times, interpolation)
    _assert_equal_to_torchcde(torch.nan_to_num(x, nan=0.25), times, interpolation)


@pytest.mark.parametrize("interpolation", sorted(INTERPOLATIONS))
def test_never_observed_channel_is_a_zero_path(interpolation):
    x, times = _observations(6, 10, 3, torch.float64, seed=3)
    coeffs = INTERPOLATIONS[interpolation].coeffs(x, times)
    channels = x.shape[-1]
    columns = coeffs.view(*coeffs.shape[:2], -1, channels)[0, :, :, 1]
    assert torch.equal(columns, torch.zeros_like(columns))


@pytest.mark.parametrize("interpolation", sorted(INTERPOLATIONS))
def test_path_passes_through_every_observation(interpolation):
    x, times = _observations(6, 12, 3, torch.float64, seed=4)
    path = control_path(INTERPOLATIONS[interpolation].coeffs(x, times), times, interpolation)
    values = path.evaluate(times)
    observed = ~torch.isnan(x)
    torch.testing.assert_close(values[observed], x[observed], rtol=0, atol=RTOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("interpolation", sorted(INTERPOLATIONS))
def test_at_points_equals_torchcde_evaluation_time_first(interpolation, dtype):
    """The models' one-pass evaluation at the solver's stage points equals torchcde's
    evaluate/derivative (transposed), also before the first and after the last knot."""
    x, times = _observations(6, 12, 3, dtype, seed=6)
    path = control_path(interpolation_coeffs(x, times, torch.tensor([12, 5, 2, 7, 12, 9]),
                                             interpolation), times, interpolation)
    points = torch.linspace(float(times[0]) - 0.5, float(times[-1]) + 0.5, 57, dtype=dtype)
    points = torch.cat([points, times])  # knots too, in any order
    values, derivatives = path.at_points(points)
    scale = RTOL[dtype] * (1 + path.evaluate(points).abs().max())
    torch.testing.assert_close(values, path.evaluate(points).transpose(0, 1), rtol=0, atol=scale)
    torch.testing.assert_close(derivatives, path.derivative(points).transpose(0, 1),
                               rtol=0, atol=scale)
    assert values.shape == (len(points), 6, 3) and values.is_contiguous()
    assert path.at_points(points, derivative=False)[1] is None


@pytest.mark.parametrize("interpolation", sorted(INTERPOLATIONS))
def test_padded_series_equals_truncated_series(interpolation):
    x, times = _observations(6, 12, 3, torch.float64, seed=5)
    lengths = torch.tensor([12, 5, 2, 7, 12, 9])
    coeffs = interpolation_coeffs(x, times, lengths, interpolation)
    path = control_path(coeffs, times, interpolation)
    for series, length in enumerate(lengths.tolist()):
        own_times = times[:length]
        own = control_path(interpolation_coeffs(x[series:series + 1, :length], own_times,
                                                interpolation=interpolation),
                           own_times, interpolation)
        inside = torch.linspace(float(own_times[0]), float(own_times[-1]), 25, dtype=x.dtype)
        torch.testing.assert_close(path.evaluate(inside)[series], own.evaluate(inside)[0],
                                   rtol=0, atol=RTOL[torch.float64])
        after_end = torch.linspace(float(own_times[-1]), float(times[-1]), 5, dtype=x.dtype)
        end_value = own.evaluate(own_times[-1])[0]
        torch.testing.assert_close(path.evaluate(after_end)[series],
                                   end_value.expand(len(after_end), -1),
                                   rtol=0, atol=RTOL[torch.float64])


@pytest.mark.parametrize("interpolation", sorted(INTERPOLATIONS))
def test_values_after_the_end_are_ignored(interpolation):
    x, times = _observations(6, 10, 3, torch.float64, seed=6)
    lengths = torch.tensor([10, 4, 2, 6, 8, 3])
    after_end = torch.arange(10) >= lengths.unsqueeze(-1)
    other_x = x.clone()
    other_x[after_end] = torch.randn(int(after_end.sum()), 3, dtype=x.dtype)
    assert torch.equal(interpolation_coeffs(x, times, lengths, interpolation),
                       interpolation_coeffs(other_x, times, lengths, interpolation))


def test_integration_grid_holds_every_observation_time_with_bounded_steps():
    times = _irregular_times(15, torch.float64, torch.Generator().manual_seed(8))
    for step_size in [0.05, 0.3, 2.0]:
        grid = integration_grid(times, step_size)
        steps = grid[1:] - grid[:-1]
        assert (steps > 0).all()
        assert float(steps.max()) <= step_size + GRID_ATOL
        assert torch.isin(times, grid).all()
    default_grid = integration_grid(times)
    assert torch.isin(times, default_grid).all()
    assert float((default_grid[1:] - default_grid[:-1]).max()) <= float(
        (times[1:] - times[:-1]).min()) + GRID_ATOL


def test_integration_grid_returns_a_regular_grid_unchanged():
    times = 0.5 * torch.arange(7, dtype=torch.float64)
    assert torch.equal(integration_grid(times), times)
    assert torch.equal(integration_grid(times, 0.5), times)
    assert torch.equal(integration_grid(times, 0.25)[::2], times)


@pytest.mark.parametrize("step_size", [0.0, -1.0, math.nan, math.inf, "0.1"])
def test_integration_grid_rejects_a_bad_step_size(step_size):
    with pytest.raises(ValueError, match="step_size: expected a positive number"):
        integration_grid(torch.arange(4.0), step_size)


def _path_before(x, times, end, interpolation, points=40):
    """Values and derivatives of the path of ``x`` at ``points`` times in ``[t_0, t_end]``."""
    path = control_path(interpolation_coeffs(x, times, interpolation=interpolation), times,
                        interpolation)
    inside = torch.linspace(float(times[0]), float(times[end]), points, dtype=x.dtype)
    return torch.cat([path.evaluate(inside), path.derivative(inside)], -1)


@pytest.mark.parametrize("interpolation", sorted(INTERPOLATIONS))
def test_only_causal_paths_ignore_a_change_after_the_cut(interpolation):
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(3, 10, 2, dtype=torch.float64, generator=generator)
    times = _irregular_times(10, torch.float64, generator)
    end = 5
    later = x.clone()
    later[:, end + 1:] += 1.0
    moved = (_path_before(x, times, end, interpolation)
             - _path_before(later, times, end, interpolation)).abs().max().item()
    if interpolation in CAUSAL_INTERPOLATIONS:
        assert moved == 0.0
    else:
        assert moved > 1e-2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("interpolation", sorted(INTERPOLATIONS))
def test_future_dependence_is_zero_only_for_causal_interpolations(interpolation, dtype):
    generator = torch.Generator().manual_seed(12)
    x = torch.randn(4, 9, 3, dtype=dtype, generator=generator)
    times = _irregular_times(9, dtype, generator)
    for end in (1, 4, 7):
        gap = future_dependence(x, end, times, interpolation)
        assert gap.shape == (4,) and gap.dtype == dtype
        if interpolation in CAUSAL_INTERPOLATIONS:
            assert float(gap.max()) == 0.0, (end, gap)
        else:
            assert float(gap.min()) > 1e-3, (end, gap)
    assert float(future_dependence(x, 8, times, interpolation).max()) == 0.0  # nothing cut
    assert future_dependence(x[:1], 4, times, interpolation).shape == (1,)  # batch size one


@pytest.mark.parametrize("interpolation", sorted(CAUSAL_INTERPOLATIONS))
def test_a_missing_value_bridged_to_a_later_observation_breaks_causality(interpolation):
    generator = torch.Generator().manual_seed(13)
    x = torch.randn(2, 9, 2, dtype=torch.float64, generator=generator)
    times = _irregular_times(9, torch.float64, generator)
    x[0, 4:6, 1] = math.nan  # series 0, channel 1: a gap over the cut at observation 4
    gap = future_dependence(x, 4, times, interpolation)
    assert float(gap[0]) > 1e-3 and float(gap[1]) == 0.0


@pytest.mark.parametrize("end", [0, 9, -1, 2.0, True])
def test_future_dependence_rejects_a_bad_end(end):
    with pytest.raises(ValueError, match=r"end: expected an integer in \[1, 8\]"):
        future_dependence(torch.randn(2, 9, 2), end)


def test_future_dependence_rejects_bad_points_per_gap():
    with pytest.raises(ValueError, match="points_per_gap: expected a positive integer"):
        future_dependence(torch.randn(2, 9, 2), 3, points_per_gap=0)

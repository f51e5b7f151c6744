"""The package-level facts notebook 3 teaches: the Euler one-step shift, causal paths give
online read-outs, and only a genuine CDE is invariant when time is reparametrised."""

import pytest
import torch

from fwplab import build_model
from fwplab.discrete import fast_weight_recurrent
from fwplab.paths import CAUSAL_INTERPOLATIONS, INTERPOLATIONS

TOL_EXACT = 1e-12  # float64 round-off


def test_euler_steps_of_size_one_are_notebook2_fwp_shifted_by_one_observation():
    torch.manual_seed(0)
    model = build_model("delta_ode", 3, 2, hidden_channels=8, num_heads=2,
                        method="euler", step_size=1.0).double()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    with torch.no_grad():
        W_euler = model.fast_weight_trajectory(x)  # (batch, time, heads, d, d)
        key, value, rate = model.slow_net(x, None)
    value, rate = value.tanh(), rate.sigmoid()
    for n in range(6):
        for pairs, shifted in (([0, *range(n)], True), (list(range(n + 1)), False)):
            _, W = fast_weight_recurrent(key[:, pairs], value[:, pairs], key[:, pairs],
                                         rate[:, pairs], rule="delta", return_final_weight=True)
            gap = (W - W_euler[:, n]).abs().max().item()
            if shifted:
                assert gap < TOL_EXACT, (n, gap)
            elif n > 0:
                assert gap > 1e-3, (n, gap)


@pytest.mark.parametrize("interpolation", sorted(INTERPOLATIONS))
def test_read_out_at_an_observation_is_the_cut_prediction_only_on_causal_paths(interpolation):
    torch.manual_seed(1)
    x = torch.randn(2, 10, 3, dtype=torch.float64)
    times = torch.cumsum(0.2 + torch.rand(10, dtype=torch.float64), 0)
    model = build_model("delta_cde", 3, 2, hidden_channels=8, num_heads=2,
                        interpolation=interpolation, step_size=0.1).double()
    with torch.no_grad():
        streamed = model(x, times, stream=True)
        gaps = [(streamed[:, end] - model(x[:, :end + 1], times[:end + 1])).abs().max().item()
                for end in (3, 6)]
    if interpolation in CAUSAL_INTERPOLATIONS:
        assert max(gaps) < TOL_EXACT, gaps
    else:
        assert min(gaps) > 1e-6, gaps


def test_only_the_neural_cde_is_invariant_when_time_runs_three_times_slower():
    torch.manual_seed(2)
    x = torch.randn(3, 12, 4, dtype=torch.float64)  # no time channel: the same observations
    times = torch.arange(12, dtype=torch.float64)
    change = {}
    for name in ("ncde", "delta_cde", "delta_ode"):
        heads = {} if name == "ncde" else {"num_heads": 2}
        model = build_model(name, 4, 3, hidden_channels=8, **heads).double()
        with torch.no_grad():
            logits = model(x, times)
            change[name] = ((model(x, 3 * times) - logits).abs().max()
                            / logits.abs().max()).item()
    assert change["ncde"] < TOL_EXACT
    assert change["delta_cde"] > 1e-2 and change["delta_ode"] > 1e-2

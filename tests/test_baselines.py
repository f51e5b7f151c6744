"""The discrete baselines: GRU-D-style inputs, shapes, variable lengths, batch 1, bad
input, and a few training steps through the same loop as the continuous models."""

import math

import pytest
import torch

from fwplab.baselines import BASELINES, DiscreteDeltaFWP, GRUBaseline, observation_features
from fwplab.train import fit
from test_train import one_thread, tiny_dataset  # noqa: F401 (autouse fixture)


def test_observation_features_fill_forward_and_count_the_gap():
    x = torch.tensor([[[1.0], [math.nan], [math.nan], [4.0]]])
    times = torch.tensor([0.0, 1.0, 3.0, 4.0])  # mean spacing 4/3
    features = observation_features(x, times)
    values, mask, gap = features[0, :, 0], features[0, :, 1], features[0, :, 2]
    assert torch.allclose(values, torch.asinh(torch.tensor([1.0, 1.0, 1.0, 4.0])))
    assert mask.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert torch.allclose(gap, torch.asinh(torch.tensor([0.0, 1.0, 3.0, 0.0]) * 3 / 4))


def test_before_the_first_observation_the_value_is_zero():
    x = torch.tensor([[[math.nan], [2.0], [3.0]]])
    features = observation_features(x, torch.arange(3.0))
    assert features[0, 0, 0] == 0.0 and features[0, 0, 1] == 0.0


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_variable_lengths_read_each_series_at_its_own_end(name):
    torch.manual_seed(0)
    model = BASELINES[name](4, 3, hidden_channels=16).eval()
    x = torch.randn(3, 9, 4)
    x[1, 3, 2] = math.nan
    lengths = torch.tensor([9, 5, 2])
    logits = model(x, lengths=lengths)
    assert logits.shape == (3, 3)
    for row, length in enumerate(lengths.tolist()):
        alone = model(x[row:row + 1, :length])  # batch 1, cut at its end
        assert alone.shape == (1, 3)
        assert torch.allclose(alone, logits[row:row + 1], atol=1e-5)
    changed = x.clone()
    changed[2, 2:] = 100.0  # after the end of series 2: ignored
    assert torch.allclose(model(changed, lengths=lengths)[2], logits[2], atol=1e-6)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_bad_input_is_one_clear_error(name):
    model = BASELINES[name](2, 2, hidden_channels=8)
    with pytest.raises(ValueError, match="x: the model expects 2 input channels, got 3"):
        model(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="coeffs:.*pass coeffs=None"):
        model(torch.randn(2, 5, 2), coeffs=torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match="x: expected dtype torch.float32"):
        model(torch.randn(2, 5, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="lengths: every length must lie in"):
        model(torch.randn(2, 5, 2), lengths=torch.tensor([1, 5]))


def test_sizes_are_checked():
    with pytest.raises(ValueError, match="hidden_channels: expected a multiple of num_heads"):
        DiscreteDeltaFWP(2, 2, hidden_channels=10, num_heads=4)
    with pytest.raises(ValueError, match="num_layers: expected a positive integer"):
        GRUBaseline(2, 2, num_layers=0)
    with pytest.raises(ValueError, match="dropout: expected a probability"):
        GRUBaseline(2, 2, dropout=1.0)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines_learn_in_the_training_loop(name):
    dataset = tiny_dataset()
    torch.manual_seed(0)
    model = BASELINES[name](dataset.input_channels, dataset.num_classes, hidden_channels=16)
    history = fit(model, dataset, epochs=15, batch_size=8, lr=1e-2, progress=False)
    assert history.records[-1].train_loss < history.records[0].train_loss
    assert history.train["accuracy"] > 1 / dataset.num_classes
    assert model.config["name"] == name

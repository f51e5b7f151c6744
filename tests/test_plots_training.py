"""The training plots of notebook 4: learning curves and accuracy against missing rate."""

import numpy as np
import pytest
from matplotlib.figure import Figure

from fwplab.widgets.plots import draw_accuracy_by_missing_rate, draw_learning_curves

CURVES = {"delta_cde": [2.1, 1.2, 0.7], "ncde": [2.2, 1.6, 1.1]}
RATES = [0.0, 0.3, 0.5, 0.7]
ACCURACIES = {"delta_cde": [0.95, 0.94, 0.93, 0.9], "ncde": [0.9, 0.88, 0.87, 0.85]}
CHANCE = 1 / 9


def test_learning_curves_draw_each_value_at_its_epoch():
    ax = draw_learning_curves(CURVES, "training loss")
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == list(CURVES)
    for line, values in zip(lines, CURVES.values(), strict=True):
        np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3])
        np.testing.assert_array_equal(line.get_ydata(), values)
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "training loss"
    ticks = ax.get_xticks()
    np.testing.assert_array_equal(ticks, np.round(ticks))  # whole epochs only


def test_learning_curves_draw_into_given_axes():
    ax = Figure().subplots()
    assert draw_learning_curves({"one epoch": [0.5]}, "accuracy", ax=ax) is ax
    assert len(ax.get_lines()) == 1


def test_learning_curves_reject_empty_or_missing_values():
    with pytest.raises(ValueError, match="curves: expected at least one model's curve"):
        draw_learning_curves({}, "loss")
    with pytest.raises(ValueError, match=r"curves\['ncde'\]: expected one number per epoch, "
                                         r"got \[0.5, None\]"):
        draw_learning_curves({"ncde": [0.5, None]}, "validation accuracy")
    with pytest.raises(ValueError, match=r"curves\['ncde'\]: expected one number per epoch"):
        draw_learning_curves({"ncde": []}, "loss")


def test_accuracy_by_missing_rate_in_percent_with_chance_line():
    ax = draw_accuracy_by_missing_rate(RATES, ACCURACIES, chance=CHANCE)
    *model_lines, chance_line = ax.get_lines()
    for line, (label, values) in zip(model_lines, ACCURACIES.items(), strict=True):
        assert line.get_label() == label
        np.testing.assert_allclose(line.get_xdata(), [0, 30, 50, 70])
        np.testing.assert_array_equal(line.get_ydata(), values)
    assert chance_line.get_label() == "chance"
    np.testing.assert_allclose(chance_line.get_ydata(), [CHANCE, CHANCE])
    assert ax.get_ylim() == (0, 1.02)


def test_accuracy_by_missing_rate_without_chance_line():
    ax = draw_accuracy_by_missing_rate(RATES, ACCURACIES)
    assert len(ax.get_lines()) == len(ACCURACIES)


def test_accuracy_by_missing_rate_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="accuracies: expected at least one model"):
        draw_accuracy_by_missing_rate(RATES, {})
    with pytest.raises(ValueError, match=r"accuracies\['ncde'\]: expected 4 values \(one per "
                                         r"missing rate\), got 2"):
        draw_accuracy_by_missing_rate(RATES, {"ncde": [0.9, 0.8]})

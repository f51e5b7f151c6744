"""Interactive explorers and the plain plotting functions behind them.

Each explorer is an ipywidgets control over plain functions that compute the
data and draw matplotlib figures, so everything is testable without a browser.
ipywidgets is imported only when a control is built.
"""

from .capacity import capacity_explorer, draw_capacity
from .explorer import (
    FastWeightExplorer,
    FastWeightTrace,
    draw_fast_weights,
    fast_weight_trace,
    recall_error_rate,
    stored_pair_error,
    with_rule,
)
from .playground import draw_convergence, draw_rule_trajectories, rule_playground, rule_trajectories
from .plots import (
    draw_control_path,
    draw_norm_curve,
    draw_parameter_scaling,
    draw_singular_value_curves,
    draw_weight_snapshots,
    weight_heatmap,
)

__all__ = [
    "FastWeightExplorer",
    "FastWeightTrace",
    "capacity_explorer",
    "draw_capacity",
    "draw_control_path",
    "draw_convergence",
    "draw_fast_weights",
    "draw_norm_curve",
    "draw_parameter_scaling",
    "draw_rule_trajectories",
    "draw_singular_value_curves",
    "draw_weight_snapshots",
    "fast_weight_trace",
    "recall_error_rate",
    "rule_playground",
    "rule_trajectories",
    "stored_pair_error",
    "weight_heatmap",
    "with_rule",
]

"""fwplab: continuous-time Fast Weight Programmers (Irie, Faccio & Schmidhuber, NeurIPS 2022).

The public names are re-exported here explicitly; everything else is private. The
trainer's names (:mod:`fwplab.train`) are imported on first use, so that importing
the models does not load the trainer.
"""

import importlib

from .data import (
    DATASET_NAMES,
    DataFormatError,
    DownloadError,
    drop_observations,
    load_dataset,
    load_ts_pair,
    log_signature_windows,
    make_spirals,
    mfcc,
    observational_intensity,
    read_ts,
)
from .baselines import DiscreteDeltaFWP, GRUBaseline
from .devices import pick_device, retain_freed_memory
from .discrete import (
    DISCRETE_UPDATES,
    FEATURE_MAPS,
    CapacityResult,
    FastWeightLayer,
    apply_feature_map,
    capacity_experiment,
    fast_weight_attention,
    fast_weight_recurrent,
    retrieval_error,
    store_pairs,
)
from .models import (
    LAYOUTS,
    MODELS,
    ContinuousFWP,
    NeuralCDE,
    NonFiniteOutputError,
    SolverOptions,
    build_model,
    count_parameters,
    load_official_state_dict,
)
from .paths import INTERPOLATIONS, integration_grid, interpolation_coeffs
from .presets import PRESETS, Preset, get_preset
from .rules.classic import (
    CLASSIC_RULES,
    PrincipalComponents,
    convergence_order,
    covariance,
    delta_field,
    delta_mean_field,
    delta_mean_solution,
    delta_stability_bound,
    discrete_trajectory,
    discrete_update,
    get_classic_rule,
    hebb_field,
    hebb_mean_field,
    hebb_mean_solution,
    integrate_rule,
    integration_errors,
    least_squares_weights,
    oja_field,
    oja_mean_field,
    oja_mean_solution,
    principal_components,
)
from .rules import (
    RULES,
    FastWeightRule,
    load_rules_from,
    register_rule,
    unregister_rule,
)
from .rules.fast_weight import (
    FAST_WEIGHT_RULES,
    delta_rule,
    delta_update,
    hebb_rule,
    hebb_update,
    oja_rule,
    oja_update,
    unsquashed_hebb_rule,
)
#: Names of :mod:`fwplab.train` re-exported here, imported on first use.
_TRAIN_NAMES = (
    "EpochRecord",
    "History",
    "TrainConfig",
    "TrainingDiverged",
    "auroc",
    "dataset_fingerprint",
    "evaluate",
    "fit",
    "load_checkpoint",
    "load_model",
    "predict",
)


def __getattr__(name: str):
    if name == "train":
        return importlib.import_module(".train", __name__)
    if name in _TRAIN_NAMES:
        value = getattr(importlib.import_module(".train", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fwplab' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "EpochRecord",
    "History",
    "TrainConfig",
    "TrainingDiverged",
    "auroc",
    "dataset_fingerprint",
    "evaluate",
    "fit",
    "load_checkpoint",
    "load_model",
    "predict",
    "PRESETS",
    "Preset",
    "get_preset",
    "CLASSIC_RULES",
    "PrincipalComponents",
    "convergence_order",
    "covariance",
    "delta_field",
    "delta_mean_field",
    "delta_mean_solution",
    "delta_stability_bound",
    "discrete_trajectory",
    "discrete_update",
    "get_classic_rule",
    "hebb_field",
    "hebb_mean_field",
    "hebb_mean_solution",
    "integrate_rule",
    "integration_errors",
    "least_squares_weights",
    "oja_field",
    "oja_mean_field",
    "oja_mean_solution",
    "principal_components",
    "DATASET_NAMES",
    "DataFormatError",
    "DownloadError",
    "drop_observations",
    "load_dataset",
    "load_ts_pair",
    "log_signature_windows",
    "make_spirals",
    "mfcc",
    "observational_intensity",
    "read_ts",
    "DISCRETE_UPDATES",
    "FEATURE_MAPS",
    "CapacityResult",
    "FastWeightLayer",
    "apply_feature_map",
    "capacity_experiment",
    "fast_weight_attention",
    "fast_weight_recurrent",
    "retrieval_error",
    "store_pairs",
    "INTERPOLATIONS",
    "LAYOUTS",
    "MODELS",
    "ContinuousFWP",
    "DiscreteDeltaFWP",
    "GRUBaseline",
    "NeuralCDE",
    "NonFiniteOutputError",
    "build_model",
    "pick_device",
    "retain_freed_memory",
    "count_parameters",
    "integration_grid",
    "interpolation_coeffs",
    "load_official_state_dict",
    "FAST_WEIGHT_RULES",
    "RULES",
    "FastWeightRule",
    "SolverOptions",
    "load_rules_from",
    "register_rule",
    "unregister_rule",
    "delta_rule",
    "delta_update",
    "hebb_rule",
    "hebb_update",
    "oja_rule",
    "oja_update",
    "unsquashed_hebb_rule",
]

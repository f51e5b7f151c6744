"""fwplab: continuous-time Fast Weight Programmers (Irie, Faccio & Schmidhuber, NeurIPS 2022).

The public names are listed here explicitly (``__all__``); everything else is private.
Each is imported from its module on first use (PEP 562), so ``import fwplab`` and
``python -m fwplab --help`` do not load PyTorch: ``fwplab.build_model`` imports
:mod:`fwplab.models` (and PyTorch) the first time it is read. ``from fwplab import X``
works for every name in ``__all__``; submodules (``fwplab.train``, ``fwplab.rl``, ...)
are imported on first access too.
"""

import importlib
import importlib.util

__version__ = "0.1.0"

#: The module each public name comes from, in the order of the API reference's topics.
_EXPORTS = {
    "fwplab.rules.classic": (
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
    ),
    "fwplab.rules": (
        "RULES",
        "FastWeightRule",
        "load_rules_from",
        "register_rule",
        "rule_fingerprint",
        "unregister_rule",
    ),
    "fwplab.rules.fast_weight": (
        "FAST_WEIGHT_RULES",
        "delta_rule",
        "delta_update",
        "hebb_rule",
        "hebb_update",
        "oja_rule",
        "oja_update",
        "unsquashed_hebb_rule",
    ),
    "fwplab.discrete": (
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
    ),
    "fwplab.models": (
        "LAYOUTS",
        "MODELS",
        "ContinuousFWP",
        "NeuralCDE",
        "NonFiniteOutputError",
        "SolverOptions",
        "build_model",
        "count_parameters",
        "check_model_config",
        "load_official_state_dict",
    ),
    "fwplab.baselines": ("DiscreteDeltaFWP", "GRUBaseline"),
    "fwplab.paths": ("INTERPOLATIONS", "integration_grid", "interpolation_coeffs"),
    "fwplab.data": (
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
    ),
    "fwplab.train": (
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
    ),
    "fwplab.adaptive": ("AdaptiveFit", "fit_adaptive"),
    "fwplab.inference": ("Predictions", "predict_run"),
    "fwplab.rocket": ("rocket_accuracy",),
    "fwplab.presets": ("PRESETS", "Preset", "get_preset"),
    "fwplab.devices": ("pick_device", "retain_freed_memory"),
}

#: Public name -> the module that defines it.
_ORIGIN = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [name for names in _EXPORTS.values() for name in names]


def __getattr__(name: str):
    """Import a public name (or a submodule) on first access and keep it in the module."""
    module = _ORIGIN.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'fwplab' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))

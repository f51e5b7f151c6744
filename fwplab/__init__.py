"""fwplab: continuous-time Fast Weight Programmers (Irie, Faccio & Schmidhuber, NeurIPS 2022).

The public names are re-exported here explicitly; everything else is private.
"""

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
    MODELS,
    ContinuousFWP,
    NeuralCDE,
    build_model,
    count_parameters,
    load_official_state_dict,
)
from .paths import INTERPOLATIONS, integration_grid, interpolation_coeffs
from .rules.fast_weight import (
    FAST_WEIGHT_RULES,
    delta_rule,
    delta_update,
    hebb_rule,
    hebb_update,
    oja_rule,
    oja_update,
)

__version__ = "0.1.0"

__all__ = [
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
    "MODELS",
    "ContinuousFWP",
    "NeuralCDE",
    "build_model",
    "count_parameters",
    "integration_grid",
    "interpolation_coeffs",
    "load_official_state_dict",
    "FAST_WEIGHT_RULES",
    "delta_rule",
    "delta_update",
    "hebb_rule",
    "hebb_update",
    "oja_rule",
    "oja_update",
]

"""Load weights trained with the official code (IDSIA/neuraldiffeq-fwp) into fwplab's models.

The official models and fwplab's continuous FWPs compute the same functions
(docs/maths.md, section 4.4) with other parameter names. :data:`OFFICIAL_NAMES`
renames them by prefix, :data:`OFFICIAL_UNUSED` lists the official parameters these
models do not use, and :func:`load_official_state_dict` loads an official
``state_dict`` into a model built with :func:`fwplab.build_model`, naming every
parameter that is missing, unexpected or of the wrong shape. :mod:`fwplab.models`
re-exports all three.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from .models import ContinuousFWP

__all__ = ["OFFICIAL_NAMES", "OFFICIAL_UNUSED", "load_official_state_dict"]


#: Official parameter names (IDSIA/neuraldiffeq-fwp) -> fwplab's, by prefix.
OFFICIAL_NAMES: dict[str, str] = {
    "update_net.input_proj.": "slow_net.input_proj.",
    "update_net.input_layer_norm.": "slow_net.input_norm.",
    "update_net.kvb_net.": "slow_net.kvb_proj.",
    "update_net.kb_net.": "slow_net.kb_proj.",
    "update_net.vs_proj.": "slow_net.value_proj.",
    "update_net.dx_dt_proj.": "slow_net.derivative_value_proj.",
    "update_net.v_layer_norm.": "slow_net.value_norm.",
    "update_net.v_net.": "slow_net.value_net.",
    "query_net.": "query_proj.",
    "out_proj.": "out_proj.",
    "ff_block.layer_norm.": "feed_forward.norm.",
    "ff_block.ff_layers.0.": "feed_forward.hidden.",
    "ff_block.ff_layers.3.": "feed_forward.output.",
    "linear.": "classifier.",
}
#: Official parameters that these models do not use.
OFFICIAL_UNUSED = ("initial_network.",)


def load_official_state_dict(model: ContinuousFWP, state_dict: dict[str, Tensor]) -> ContinuousFWP:
    """Load a state_dict saved by the official code into the matching fwplab model.

    Supported: every model the official code trains (docs/maths.md, section 4.4):
    ``delta_cde``, ``hebb_cde`` and ``oja_cde`` (class ``FastWeightCDE``, built here
    with their default ``keys_from_path`` layout), ``hebb_ode``, ``oja_ode`` and
    ``delta_ode``, with or without ``v_layernorm``. The official ``initial_network``
    is unused by these models and skipped.

    Raises:
        ValueError: a value that is not a tensor, or naming every missing, unexpected or
            mis-shaped parameter.
    """
    from .models import ContinuousFWP  # here: fwplab.models imports this module

    if not isinstance(model, ContinuousFWP):
        raise ValueError(f"model: expected a continuous FWP, got {type(model).__name__}")
    if not isinstance(state_dict, dict):
        raise ValueError(f"state_dict: expected a dict of tensors, got {type(state_dict).__name__}")
    for key, value in state_dict.items():
        if not isinstance(value, Tensor):
            raise ValueError(f"state_dict: expected a tensor for {key!r}, got "
                             f"{type(value).__name__}")
    renamed: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        if key.startswith(OFFICIAL_UNUSED):
            continue
        prefix = next((p for p in OFFICIAL_NAMES if key.startswith(p)), None)
        if prefix is None:
            unexpected.append(key)
            continue
        renamed[OFFICIAL_NAMES[prefix] + key[len(prefix):]] = value
    own = model.state_dict()
    inverse = {v: k for k, v in OFFICIAL_NAMES.items()}

    def official(name: str) -> str:
        prefix = next(p for p in inverse if name.startswith(p))
        return inverse[prefix] + name[len(prefix):]

    unexpected += [official(k) for k in renamed if k not in own]
    missing = [official(k) for k in own if k not in renamed]
    problems = []
    if missing:
        problems.append(f"missing {missing}")
    if unexpected:
        problems.append(f"unexpected {unexpected}")
    shapes = [
        f"{official(k)}: expected {tuple(own[k].shape)}, got {tuple(v.shape)}"
        for k, v in renamed.items() if k in own and own[k].shape != v.shape
    ]
    if shapes:
        problems.append("wrong shapes " + "; ".join(shapes))
    if problems:
        raise ValueError(f"official state_dict does not match {model.name}: " + "; ".join(problems))
    model.load_state_dict(renamed)
    return model

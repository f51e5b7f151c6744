"""Named training configurations: the defaults of ``fwplab train`` and the paper's runs.

A preset fixes the dataset (and how it is loaded), the model and its
hyperparameters, and the training settings; ``fwplab train --preset NAME`` uses
it and any explicit flag overrides it.

Translating the official commands (IDSIA/neuraldiffeq-fwp, whose Speech Commands
and sepsis code derives from Kidger et al.'s NeuralCDE):

- the official learning rate is ``base_lr * batch_size / 32``: ``--base_lr 5e-5``
  at batch 1024 trains at ``1.6e-3``; the presets store the effective rate;
- ``--grad_scale`` (and EigenWorms' ``--final_layer_scaling``) multiplies the
  gradient of the final linear layer: :attr:`fwplab.train.TrainConfig.grad_scale`;
- Adam is AdamW with ``weight_decay=0``; the learning rate drops 10x when the
  training loss plateaus (``schedule="plateau"``), the best epoch is chosen on the
  validation split;
- gradients come from the continuous adjoint (``adjoint=True``), as in the paper;
- the sepsis BCE ``pos_weight 10`` becomes class weights ``(1, 10)``.

Not reproduced: the official L2-norm penalty ``0.03 * ||theta||`` on all
parameters, and the sepsis initial fast weight computed from the static features
(fwplab models start from the update term at ``t0``; static features are unused).
The official EigenWorms model is a delta-rule ODE-FWP whose vector field reads
each window's log-signature; fwplab's closest model is ``delta_cde`` on the
piecewise-linear log-signature path (``interpolation="linear"``): its keys and
rates come from ``dX/dt``, which on window ``m`` is that window's log-signature
divided by the window length, and its values from the path ``X`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Preset", "PRESETS", "DEFAULT_PRESET", "get_preset"]


@dataclass(frozen=True)
class Preset:
    """A named configuration of ``fwplab train``.

    Attributes:
        name: what ``--preset`` takes.
        description: one line for ``fwplab presets``.
        dataset: a name of :func:`fwplab.data.load_dataset`.
        model: a name of :data:`fwplab.MODELS`.
        data: keyword arguments of :func:`fwplab.data.load_dataset` (besides
            ``missing_rate`` and ``seed``).
        model_options: keyword arguments of :func:`fwplab.build_model`.
        train: fields of :class:`fwplab.train.TrainConfig`.
        source: where the configuration comes from.
    """

    name: str
    description: str
    dataset: str
    model: str
    data: dict[str, Any] = field(default_factory=dict)
    model_options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    source: str = ""


_OFFICIAL = "IDSIA/neuraldiffeq-fwp"
#: Batch size the official code's learning rates are quoted for (lr = base_lr * batch / 32).
_OFFICIAL_LR_BATCH = 32

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="japanese-vowels",
            description="the default: delta_cde on the shipped JapaneseVowels, a few CPU minutes",
            dataset="japanese-vowels",
            model="delta_cde",
            model_options=dict(hidden_channels=64, num_heads=16),
            train=dict(epochs=20, batch_size=16, lr=1e-3, weight_decay=0.01, schedule="cosine"),
            source="tuned on 2 CPU cores: AdamW, cosine schedule, plain backprop",
        ),
        Preset(
            name="speech-commands",
            description="paper Table 1: delta_cde on Speech Commands (GPU)",
            dataset="speech-commands",
            model="delta_cde",
            model_options=dict(hidden_channels=80, num_heads=4, ff_channels=320, adjoint=True),
            train=dict(epochs=500, batch_size=1024, lr=5e-5 * 1024 / _OFFICIAL_LR_BATCH,
                       weight_decay=0.0, schedule="plateau", grad_scale=100.0),
            source=f"{_OFFICIAL} speech_and_physionet/README.md (--base_lr 5e-05 --grad_scale 100)",
        ),
        Preset(
            name="sepsis-no-oi",
            description="paper Table 1: delta_cde on PhysioNet 2019 sepsis, no observational "
                        "intensity (GPU)",
            dataset="sepsis",
            model="delta_cde",
            data=dict(intensity=False),
            model_options=dict(hidden_channels=160, num_heads=16, v_layernorm=True, adjoint=True),
            train=dict(epochs=200, batch_size=1024, lr=5e-5 * 1024 / _OFFICIAL_LR_BATCH,
                       weight_decay=0.0, schedule="plateau", grad_scale=100.0,
                       class_weights=(1.0, 10.0), monitor="auroc"),
            source=f"{_OFFICIAL} speech_and_physionet/README.md (sepsis no-OI)",
        ),
        Preset(
            name="sepsis-oi",
            description="paper Table 1: delta_cde on PhysioNet 2019 sepsis with observational "
                        "intensity (GPU)",
            dataset="sepsis",
            model="delta_cde",
            data=dict(intensity=True),
            model_options=dict(hidden_channels=160, num_heads=32, ff_channels=64, adjoint=True),
            train=dict(epochs=200, batch_size=1024, lr=1e-5 * 1024 / _OFFICIAL_LR_BATCH,
                       weight_decay=0.0, schedule="plateau", grad_scale=100.0,
                       class_weights=(1.0, 10.0), monitor="auroc"),
            source=f"{_OFFICIAL} speech_and_physionet/README.md (sepsis OI)",
        ),
        Preset(
            name="eigenworms",
            description="paper Table 2: delta rule FWP on EigenWorms depth-1 log-signatures, "
                        "step 4 (GPU)",
            dataset="eigenworms",
            model="delta_cde",
            data=dict(logsig_depth=1, logsig_step=4),
            model_options=dict(hidden_channels=128, num_heads=16, ff_channels=64,
                               interpolation="linear", post_tanh=True, adjoint=True),
            train=dict(epochs=1000, batch_size=1024, lr=1e-4, weight_decay=0.0,
                       schedule="plateau", plateau_patience=15, patience=60, grad_scale=10.0),
            source=f"{_OFFICIAL} eigenworms/README.md (--depth 1 --step 4 --hidden_dim 128 "
                   "--num_heads 16 --trafo_ff_dim 64 --lr 1e-4 --final_layer_scaling 10)",
        ),
    )
}

#: What ``fwplab train`` uses when neither ``--preset`` nor a dataset option is given.
DEFAULT_PRESET = "japanese-vowels"


def get_preset(name: str) -> Preset:
    """The preset called ``name``.

    Raises:
        ValueError: unknown name, listing the known ones.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}") from None

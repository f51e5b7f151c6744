"""A ROCKET-family baseline: MiniRocket features and a ridge classifier, through aeon.

The classifier the time-series classification field compares against (Dempster et al.
2021, "MiniRocket: A Very Fast (Almost) Deterministic Transform for Time Series
Classification"): about 10,000 random dilated convolutions of each series, the share of
positive values of each (PPV) as features, and a ridge classifier whose penalty is chosen
by leave-one-out cross-validation. fwplab calls the maintained implementation in aeon
(``aeon.classification.convolution_based.MiniRocketClassifier``), an optional extra::

    pip install 'fwplab[baselines]'        # or: pip install 'aeon>=1.0'

It takes the same :class:`~fwplab.data.Dataset` splits as the fwplab models, so
``fwplab compare`` can report it beside them (:func:`rocket_accuracy`).

Series are handed to aeon as ``(series, channels, time)`` arrays of the data channels
(:func:`fwplab.data.data_channels`: the time, intensity, scale and time-feature channels
are left out, MiniRocket sees positions by itself). Missing values are filled along each
series' linear interpolation in time and a series shorter than the longest is padded with
its last value (:func:`fwplab.paths.interpolation_coeffs`, ``"linear"``: the path the
continuous models see); series shorter than MiniRocket's 9-step kernels are padded the
same way to 9 steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .data import Dataset, Split, data_channels
from .paths import interpolation_coeffs

__all__ = ["RocketResult", "MissingExtraError", "rocket_accuracy", "ROCKET_KERNELS"]

#: Convolution kernels of the transform (MiniRocket's default).
ROCKET_KERNELS = 10_000
#: MiniRocket's kernels span 9 steps: shorter series are padded to this.
_MIN_STEPS = 9


class MissingExtraError(ImportError):
    """The optional dependency of the baseline (aeon) is not installed."""


@dataclass(frozen=True)
class RocketResult:
    """What :func:`rocket_accuracy` measured.

    Attributes:
        test_accuracy: share of test series classified right.
        train_accuracy: the same on the training split.
        test_predictions: ``(test series,)`` int64 predicted class indices.
    """

    test_accuracy: float
    train_accuracy: float
    test_predictions: Tensor


def _classifier(seed: int, kernels: int):
    try:
        from aeon.classification.convolution_based import MiniRocketClassifier
    except ImportError:
        raise MissingExtraError("the rocket baseline needs aeon, which is not installed; "
                                "pip install 'fwplab[baselines]' (or 'aeon>=1.0')") from None
    return MiniRocketClassifier(n_kernels=kernels, random_state=seed, n_jobs=1)


def _array(split: Split, channels: list[int], steps: int) -> np.ndarray:
    """``(series, channels, steps)`` float64 array: gaps filled linearly, each series
    padded with its last value to ``steps`` (at least its grid's length)."""
    x = split.x[..., channels].to("cpu", torch.float64)
    filled = interpolation_coeffs(x, split.times.to("cpu", torch.float64), split.lengths.cpu(),
                                  "linear")
    tail = filled[:, -1:].expand(-1, steps - filled.shape[1], -1)
    return torch.cat([filled, tail], dim=1).transpose(1, 2).contiguous().numpy()


def rocket_accuracy(dataset: Dataset, seed: int = 0, kernels: int = ROCKET_KERNELS
                    ) -> RocketResult:
    """Train MiniRocket + ridge on ``dataset.train`` (and ``dataset.val`` when there is
    one: the ridge penalty is chosen by its own cross-validation) and classify
    ``dataset.test``.

    The same data, seed and kernel count give the same result (aeon draws the kernels'
    biases from ``seed``; one thread).

    Args:
        dataset: any classification :class:`Dataset` (missing values and variable lengths
            allowed).
        seed: seed of the transform, in ``[0, 2**32)``.
        kernels: number of convolution kernels (at least 84, MiniRocket's base set).

    Returns:
        :class:`RocketResult`.

    Raises:
        MissingExtraError: aeon is not installed.
        ValueError: no data channel, or a bad ``kernels``/``seed``.
    """
    if isinstance(kernels, bool) or not isinstance(kernels, int) or kernels < 84:
        raise ValueError(f"kernels: expected an integer >= 84 (MiniRocket's base kernels), got "
                         f"{kernels!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed: expected an integer in [0, 2**32 - 1] (the random state of "
                         f"aeon's transform), got {seed!r}")
    channels = data_channels(dataset)
    if not channels:
        raise ValueError(f"dataset {dataset.name}: expected at least one data channel, got "
                         f"only {', '.join(dataset.channel_names)}")
    classifier = _classifier(seed, kernels)
    parts = [dataset.train] + ([dataset.val] if dataset.val is not None else [])
    steps = max(_MIN_STEPS, *(part.x.shape[1] for part in parts + [dataset.test]))
    train_x = np.concatenate([_array(part, channels, steps) for part in parts])
    train_y = torch.cat([part.y for part in parts]).cpu().numpy()
    classifier.fit(train_x, train_y)
    predicted = torch.as_tensor(classifier.predict(_array(dataset.test, channels, steps)),
                                dtype=torch.int64)
    train_predicted = torch.as_tensor(classifier.predict(train_x), dtype=torch.int64)
    return RocketResult(
        test_accuracy=float((predicted == dataset.test.y.cpu()).double().mean()),
        train_accuracy=float((train_predicted == torch.as_tensor(train_y)).double().mean()),
        test_predictions=predicted)

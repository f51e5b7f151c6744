"""Apply a trained run to new series: ``fwplab predict RUN --data X.ts``.

::

    from fwplab import predict_run
    table = predict_run("runs/a", "X.ts")
    table.predicted[:3], table.probabilities.shape      # class names, (series, classes)
    table.to_csv("predictions.csv")

The series go through the run's own transforms: they take the place of the TEST file in
the run's data spec (``run.data``), so they are standardised with the training
statistics, get the same time unit, time features, log-signature windows and delayed
copies. An ensemble (``ensemble.pt``) averages its members' class probabilities.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor

from .adaptive import ENSEMBLE_NAME, load_data
from .checkpoints import _load_weights, load_checkpoint
from .data.registry import shipped_data_dir
from .data.ts import read_ts
from .models import build_model, check_model_config
from .train import predict_ensemble

__all__ = ["Predictions", "predict_run"]


@dataclass
class Predictions:
    """One row per series of the data predicted.

    Attributes:
        class_names: the run's classes, in the order of ``probabilities``' columns.
        probabilities: ``(series, classes)`` class probabilities.
        predicted: the most probable class of each series.
    """

    class_names: list[str]
    probabilities: Tensor
    predicted: list[str]

    def to_csv(self, path: Optional[Union[str, Path]] = None) -> str:
        """The table as CSV (``series,class,p(NAME)...``); also written to ``path``."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["series", "class", *[f"p({name})" for name in self.class_names]])
        for index, (label, row) in enumerate(zip(self.predicted, self.probabilities.tolist(),
                                                 strict=True), start=1):
            writer.writerow([index, label, *[f"{p:.6f}" for p in row]])
        if path is not None:
            Path(path).write_text(buffer.getvalue())
        return buffer.getvalue()


def predict_run(run: Union[str, Path], data: Union[str, Path], *,
            device: Union[str, torch.device] = "cpu") -> Predictions:
    """Class probabilities of the run in folder ``run`` for the series of ``data`` (.ts).

    Raises:
        ValueError: one line: not a run folder, a run whose data this cannot rebuild, a
            series with another channel count or no observed value (named).
    """
    folder = Path(run)
    saved = load_checkpoint(folder)
    spec = dict(saved["run"].get("data") or {})
    if not spec:
        raise ValueError(f"{folder}: not a fwplab train run (its checkpoint has no data spec)")
    spec["options"] = dict(spec["options"])
    if spec.get("dataset") == "japanese-vowels":
        root = Path(spec.get("root") or shipped_data_dir() / "JapaneseVowels")
        spec = {key: value for key, value in spec.items() if key not in ("dataset", "root")}
        spec.update(train=str(root / "JapaneseVowels_TRAIN.ts"))
    if "train" not in spec:
        raise ValueError(f"{folder}: trained on {spec.get('dataset')!r}; predict applies runs "
                         "trained on .ts files (--train/--test or japanese-vowels)")
    if not Path(spec["train"]).is_file():
        raise ValueError(f"{folder}: its training file {spec['train']} is gone; predict needs it "
                         "(the training statistics and time unit come from it)")
    train_channels = read_ts(spec["train"]).x.shape[-1]
    new = read_ts(data, class_names=None)
    if new.x.shape[-1] != train_channels:
        raise ValueError(f"{data}: series 1 has {new.x.shape[-1]} channels, the run was trained "
                         f"on {train_channels}; give series with {train_channels}")
    new = type(new)(**{**new.__dict__, "y": None, "class_names": ()})
    dataset = load_data(spec, test=new)
    models = []
    ensemble = folder / ENSEMBLE_NAME
    if ensemble.is_file():
        content = torch.load(ensemble, map_location="cpu", weights_only=True)
        for state in content["states"]:
            try:  # shapes against the saved tensors before anything is allocated
                check_model_config(content["model_config"], state)
            except ValueError as error:
                raise ValueError(f"{ensemble}: {error}") from None
            member = build_model(**content["model_config"])
            _load_weights(ensemble, member, state, "weights")
            models.append(member)
    else:
        model = build_model(**saved["model_config"])
        _load_weights(folder, model, saved["best_model"], "weights")
        models.append(model)
    models = [model.to(device).eval() for model in models]
    probabilities = predict_ensemble(models, dataset.test).exp().cpu()
    names = list(saved.get("class_names") or saved["run"].get("class_names")
                 or dataset.class_names)
    return Predictions(names, probabilities, [names[i] for i in probabilities.argmax(-1)])

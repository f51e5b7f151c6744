"""PhysioNet/CinC Challenge 2019 (early prediction of sepsis), prepared as Kidger et al. (2020).

Each patient is one ``.psv`` file: a header row, then one row per ICU hour, columns
separated by ``|``, ``NaN`` for missing values. The last seven columns are
``Age|Gender|Unit1|Unit2|HospAdmTime|ICULOS|SepsisLabel``; the columns before
them (34 vital signs and lab values in the challenge data) are the time-varying
channels. The preparation::

    row of hour h (ICULOS = h) -> time point h - 1; hours without a row are all-NaN
    only the first max_hours hours are kept (72, as Kidger et al.)
    label  = 1 if SepsisLabel = 1 in any kept row, else 0
    static = Age, Gender, Unit1, Unit2, HospAdmTime from the first row (NaN -> 0)
             + with intensity (the "OI" variant): whether Unit1 and Unit2 were observed

The OI variant also adds one observational-intensity channel per time-varying
channel; that part is the common preprocessing (``intensity=True``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Union

import torch
from torch import Tensor

from .ts import DataFormatError

__all__ = ["SEPSIS_CLASSES", "SEPSIS_STATIC", "read_psv", "read_sepsis"]

SEPSIS_CLASSES = ("no sepsis", "sepsis")
SEPSIS_STATIC = ("Age", "Gender", "Unit1", "Unit2", "HospAdmTime")
_TRAILING = SEPSIS_STATIC + ("ICULOS", "SepsisLabel")


def read_psv(path: Union[str, Path]) -> tuple[tuple[str, ...], Tensor]:
    """Read one pipe-separated patient file.

    Returns:
        (columns, rows): the header names and a ``(rows, columns)`` float64 tensor.

    Raises:
        DataFormatError: empty file, a row with the wrong number of fields, or a
            non-numeric value (one line naming the file and line).
    """
    lines = Path(path).read_text().splitlines()
    if not lines or not lines[0].strip():
        raise DataFormatError(f"{path}: file is empty (expected a '|'-separated header row)")
    columns = tuple(name.strip() for name in lines[0].split("|"))
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != len(columns):
            raise DataFormatError(f"{path}, line {number}: expected {len(columns)} '|'-separated "
                                  f"fields, found {len(fields)}")
        try:
            rows.append([float(value) for value in fields])
        except ValueError:
            bad = next(v for v in fields if not _is_number(v))
            raise DataFormatError(f"{path}, line {number}: non-numeric value {bad.strip()[:30]!r}"
                                  ) from None
    return columns, torch.tensor(rows, dtype=torch.float64).reshape(len(rows), len(columns))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_sepsis(
    root: Union[str, Path], intensity: bool = False, max_hours: int = 72
) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[str, ...], tuple[str, ...]]:
    """Read every ``.psv`` file under ``root`` (recursively, in sorted path order).

    Args:
        root: folder holding the patient files (e.g. ``training_setA/`` and ``training_setB/``).
        intensity: the OI variant: append the Unit1/Unit2 observed flags to the static features.
        max_hours: number of ICU hours kept per patient.

    Returns:
        (x, lengths, y, static, channel_names, static_names): ``x`` of shape
        ``(patients, max ICULOS kept, channels)`` float32 (NaN where missing or after the
        end), ``lengths`` and ``y`` of shape ``(patients,)`` int64, ``static`` of shape
        ``(patients, 5 or 7)`` float32, and the names of the channels and static features.

    Raises:
        DataFormatError: no ``.psv`` file, missing columns, an ICULOS that is not a
            positive whole hour, or a patient with fewer than 2 hours.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"{root}: sepsis folder not found")
    paths = sorted(root.rglob("*.psv"))
    if not paths:
        raise DataFormatError(f"{root}: no .psv patient file found")
    channel_names: tuple[str, ...] = ()
    series, statics, labels = [], [], []
    for path in paths:
        columns, rows = read_psv(path)
        missing = [name for name in _TRAILING if name not in columns]
        if missing:
            raise DataFormatError(f"{path}: missing column(s) {', '.join(missing)}")
        names = tuple(name for name in columns if name not in _TRAILING)
        if channel_names and names != channel_names:
            raise DataFormatError(f"{path}: its time-varying columns differ from those of "
                                  f"{paths[0]}")
        channel_names = names
        if len(rows) == 0:
            raise DataFormatError(f"{path}: no data row")
        position = {name: index for index, name in enumerate(columns)}
        hours = rows[:, position["ICULOS"]]
        if not (torch.isfinite(hours).all() and (hours == hours.round()).all()
                and (hours >= 1).all()):
            raise DataFormatError(f"{path}: ICULOS must hold whole hours >= 1")
        keep = hours <= max_hours
        rows, hours = rows[keep], hours[keep].long()
        if len(rows) == 0 or int(hours.max()) < 2:
            raise DataFormatError(f"{path}: fewer than 2 ICU hours within the first "
                                  f"{max_hours}")
        values = torch.full((int(hours.max()), len(names)), math.nan, dtype=torch.float64)
        values[hours - 1] = rows[:, [position[name] for name in names]]
        series.append(values)
        labels.append(int((rows[:, position["SepsisLabel"]] == 1).any()))
        first = rows[0]
        static = [float(first[position[name]]) for name in SEPSIS_STATIC]
        observed_units = [float(not math.isnan(static[2])), float(not math.isnan(static[3]))]
        static = [0.0 if math.isnan(value) else value for value in static]
        statics.append(static + observed_units if intensity else static)

    lengths = torch.tensor([len(values) for values in series], dtype=torch.int64)
    x = torch.full((len(series), int(lengths.max()), len(channel_names)), math.nan)
    for index, values in enumerate(series):
        x[index, : len(values)] = values.to(x.dtype)
    static_names = SEPSIS_STATIC + (("Unit1 observed", "Unit2 observed") if intensity else ())
    return (x, lengths, torch.tensor(labels, dtype=torch.int64),
            torch.tensor(statics, dtype=torch.get_default_dtype()), channel_names, static_names)

"""Dataset names to loaders: the one entry point the training code and the CLI use.

=========================  ===============================================================
name                       what
=========================  ===============================================================
``japanese-vowels``        shipped in ``fwplab/data/shipped/JapaneseVowels`` (UCI; 12 channels, lengths
                           7-29, 9 classes, 270 train / 370 test); official split
``spirals``                synthetic clockwise/anticlockwise spirals (128 train / 128 test)
``speech-commands``        Speech Commands v0.02, 10 words, 20 MFCCs x 161 frames
``sepsis``                 PhysioNet 2019 sepsis; ``intensity=True`` is the OI variant
``character-trajectories`` UEA CharacterTrajectories (3 channels, 20 classes)
``eigenworms``             UEA EigenWorms (6 channels, 17,984 steps, 5 classes), as
                           depth-2 log-signatures of windows of 4 steps by default
=========================  ===============================================================

The four downloaded datasets are split 70% / 15% / 15% (train / validation / test),
class by class, as Kidger et al. (2020); the UEA ones pool their TRAIN and TEST files
first. The time channel is the observation index ``0, 1, ..., length-1`` (the
convention of Kidger et al.; hours since ICU admission minus one for sepsis), the
spirals' common time grid, or for timestamped ``.ts`` files the timestamp minus the
series' first one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import torch

from .dataset import Dataset, RawSplit, assemble_dataset, split_generator, stratified_split
from .download import prepare_dataset
from .sepsis import SEPSIS_CLASSES, read_sepsis
from .speech_commands import SPEECH_COMMANDS_CLASSES, read_speech_commands
from .spirals import SPIRAL_CLASSES, make_spirals
from .ts import DataFormatError, TsFile, read_ts_pair
from .uea_archive import log_signature_dataset, read_uea_problem

__all__ = ["DATASET_NAMES", "load_dataset", "load_ts_pair", "shipped_data_dir"]

PathLike = Union[str, Path]

DATASET_NAMES = ("japanese-vowels", "spirals", "speech-commands", "sepsis",
                 "character-trajectories", "eigenworms")
PAPER_TEST_FRACTION = 0.15
PAPER_VAL_FRACTION = 0.15
EIGENWORMS_LOGSIG = (2, 4)  # (depth, step) of the paper's Table 2
SPIRALS_PER_SPLIT = 128
SPIRALS_LENGTH = 100


def shipped_data_dir() -> Path:
    """The folder of the data shipped inside the package (``fwplab/data/shipped``).

    It is package data, so a wheel install has it too; ``data/README.md`` in the
    repository gives its provenance and licence.
    """
    return Path(__file__).resolve().parent / "shipped"


def _ts_raw(ts: TsFile) -> RawSplit:
    times = None
    if ts.times is not None:
        times = ts.times - ts.times[:, :1]  # float64: time since each series' first point
    return RawSplit(ts.x, ts.lengths, ts.y, times)


def _concatenate(first: RawSplit, second: RawSplit) -> RawSplit:
    """Pool two splits, padding the shorter time axis with NaN."""
    time = max(first.x.shape[1], second.x.shape[1])

    def pad(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if tensor is None:
            return None
        widths = (0, 0) * (tensor.dim() - 2) + (0, time - tensor.shape[1])
        return torch.nn.functional.pad(tensor, widths, value=float("nan"))

    times = None
    if first.times is not None and second.times is not None:
        times = torch.cat([pad(first.times), pad(second.times)])
    return RawSplit(torch.cat([pad(first.x), pad(second.x)]),
                    torch.cat([first.lengths, second.lengths]),
                    torch.cat([first.y, second.y]), times)


def _holdout(raw: RawSplit, val_fraction: float, seed: int, test_fraction: float = 0.0
             ) -> dict[str, RawSplit]:
    """Stratified train / (val) / (test) parts of ``raw``; empty parts are left out."""
    fractions = [1.0 - val_fraction - test_fraction, val_fraction, test_fraction]
    if not 0.0 < fractions[0] <= 1.0 or val_fraction < 0:
        raise ValueError(f"val_fraction: expected a fraction in [0, {1 - test_fraction}), got "
                         f"{val_fraction}")
    parts = stratified_split(raw.y, fractions, split_generator(seed, "split"))
    named = dict(zip(("train", "val", "test"), parts, strict=True))
    for (key, index), fraction in zip(named.items(), fractions, strict=True):
        if fraction > 0 and len(index) == 0:
            raise ValueError(f"val_fraction: {len(raw.y)} series leave the {key} part of a "
                             f"{fractions} split empty")
    return {key: raw.select(index) for key, index in named.items() if len(index)}


def _trim(raw: RawSplit) -> RawSplit:
    """Cut the padded time axis to the longest series of this split."""
    time = int(raw.lengths.max())
    per_series = raw.times is not None and raw.times.dim() == 2
    return RawSplit(raw.x[:, :time], raw.lengths, raw.y,
                    raw.times[:, :time] if per_series else raw.times, raw.static)


def load_ts_pair(
    train_path: PathLike,
    test_path: PathLike,
    missing_rate: float = 0.0,
    seed: int = 0,
    time_channel: bool = True,
    intensity: bool = False,
    normalise: bool = True,
    val_fraction: float = 0.0,
    name: Optional[str] = None,
) -> Dataset:
    """Load any UEA/UCR classification pair of ``.ts`` files (the CLI's ``--train/--test``).

    Args:
        train_path, test_path: the TRAIN and TEST ``.ts`` files (labels encoded in the
            TRAIN header's order).
        missing_rate: fraction of each series' observed points to drop (irregular sampling).
        seed: seeds the dropping and the validation split.
        time_channel: add the observation time as channel 0.
        intensity: add one observational-intensity channel per data channel.
        normalise: standardise the data channels with training statistics.
        val_fraction: fraction of the TRAIN file held out (stratified) for validation;
            0 means no validation split.
        name: the dataset's name; defaults to the TRAIN file's ``@problemName``.

    Returns:
        Dataset: see :class:`fwplab.data.Dataset`.
    """
    train, test = read_ts_pair(train_path, test_path)
    splits = _holdout(_ts_raw(train), val_fraction, seed) if val_fraction else {
        "train": _ts_raw(train)}
    splits = {key: _trim(raw) for key, raw in splits.items()}
    splits["test"] = _ts_raw(test)
    channels = tuple(f"dim{index}" for index in range(train.x.shape[-1]))
    return assemble_dataset(name or train.problem_name or Path(train_path).stem, splits,
                            train.class_names, channels, missing_rate=missing_rate, seed=seed,
                            time_channel=time_channel, intensity=intensity, normalise=normalise)


def _remote_root(name: str, root: Optional[PathLike], download: bool,
                 allow_unverified: bool) -> Path:
    if root is not None:
        return Path(root)
    return prepare_dataset(name, download=download, allow_unverified=allow_unverified)


def load_dataset(
    name: str,
    root: Optional[PathLike] = None,
    missing_rate: float = 0.0,
    seed: int = 0,
    time_channel: bool = True,
    intensity: bool = False,
    normalise: bool = True,
    val_fraction: Optional[float] = None,
    download: bool = True,
    allow_unverified: bool = False,
    logsig_depth: Optional[int] = None,
    logsig_step: Optional[int] = None,
) -> Dataset:
    """Load a dataset by name (see the module docstring for the names).

    Args:
        name: one of :data:`DATASET_NAMES`.
        root: where the raw data is: for ``japanese-vowels`` a folder holding
            ``JapaneseVowels_TRAIN.ts`` and ``_TEST.ts`` (default: the copy shipped in
            the package, ``fwplab/data/shipped/JapaneseVowels``); for the downloaded datasets the extracted folder
            (or, for the UEA ones, the zip); None downloads into the cache.
        missing_rate: fraction of each series' observed points to drop (irregular sampling).
        seed: seeds the synthetic data, the dropping and the splits.
        time_channel: add the observation time as channel 0.
        intensity: add observational-intensity channels (for ``sepsis``: the OI variant,
            which also adds the Unit1/Unit2 observed flags to the static features).
        normalise: standardise data channels and static features with training statistics.
        val_fraction: validation fraction; None is the dataset's standard (0 for
            ``japanese-vowels`` and ``spirals``, 0.15 for the downloaded ones). For the
            two former it is taken from the training data; for the latter the test part
            stays 0.15 of all series.
        download: fetch missing archives into the cache (see :mod:`fwplab.data.download`).
        allow_unverified: accept archives without a published checksum.
        logsig_depth, logsig_step: replace ``x`` by the log-signature path of windows of
            ``logsig_step`` increments (depth 1 or 2, see :mod:`fwplab.data.uea_archive`);
            None is the dataset's standard (``eigenworms``: depth 2, step 4; others: off),
            ``logsig_depth=0`` turns it off.

    Returns:
        Dataset: see :class:`fwplab.data.Dataset`.

    Raises:
        ValueError: unknown name or bad option; :class:`DataFormatError` for unreadable
            data; :class:`fwplab.data.DownloadError` for download problems.
    """
    options = dict(missing_rate=missing_rate, seed=seed, time_channel=time_channel,
                   intensity=intensity, normalise=normalise)
    if name == "japanese-vowels":
        folder = Path(root) if root is not None else shipped_data_dir() / "JapaneseVowels"
        if root is None and not folder.is_dir():
            raise DataFormatError(f"{folder}: the shipped JapaneseVowels files are not there "
                                  "(an incomplete fwplab install: reinstall it); pass root=")
        dataset = load_ts_pair(folder / "JapaneseVowels_TRAIN.ts",
                               folder / "JapaneseVowels_TEST.ts",
                               val_fraction=val_fraction or 0.0, name=name, **options)
    elif name == "spirals":
        dataset = _load_spirals(val_fraction or 0.0, **options)
    elif name in _PAPER_LOADERS:
        fraction = PAPER_VAL_FRACTION if val_fraction is None else val_fraction
        raw, class_names, channels, static_names = _PAPER_LOADERS[name](
            _remote_root(name, root, download, allow_unverified), intensity)
        splits = {key: _trim(part) for key, part in
                  _holdout(raw, fraction, seed, PAPER_TEST_FRACTION).items()}
        dataset = assemble_dataset(name, splits, class_names, channels,
                                   static_names=static_names, **options)
    else:
        raise ValueError(f"name: expected one of {', '.join(DATASET_NAMES)}, got {name!r}")

    standard_depth, standard_step = EIGENWORMS_LOGSIG if name == "eigenworms" else (0, None)
    depth = standard_depth if logsig_depth is None else logsig_depth
    step = standard_step if logsig_step is None else logsig_step
    if depth:
        if step is None:
            raise ValueError("logsig_step: expected a positive number of increments per window "
                             "with logsig_depth, got None")
        dataset = log_signature_dataset(dataset, depth, step)
    elif logsig_step is not None:
        raise ValueError(f"logsig_step: given ({logsig_step}) but the log-signature is off; "
                         "pass logsig_depth=1 or 2")
    return dataset


def _load_spirals(val_fraction: float, seed: int, **options) -> Dataset:
    x, y, t = make_spirals(2 * SPIRALS_PER_SPLIT, SPIRALS_LENGTH, seed=seed)
    lengths = torch.full((len(x),), SPIRALS_LENGTH, dtype=torch.int64)
    everything = RawSplit(x, lengths, y, t)
    train, test = everything.select(torch.arange(SPIRALS_PER_SPLIT)), everything.select(
        torch.arange(SPIRALS_PER_SPLIT, 2 * SPIRALS_PER_SPLIT))
    splits = _holdout(train, val_fraction, seed) if val_fraction else {"train": train}
    splits["test"] = test
    return assemble_dataset("spirals", splits, SPIRAL_CLASSES, ("x", "y"), seed=seed, **options)


LoadedRaw = tuple[RawSplit, tuple[str, ...], tuple[str, ...], tuple[str, ...]]


def _speech_commands(root: Path, intensity: bool) -> LoadedRaw:
    x, y = read_speech_commands(root)
    lengths = torch.full((len(x),), x.shape[1], dtype=torch.int64)
    channels = tuple(f"mfcc{index}" for index in range(x.shape[-1]))
    return RawSplit(x, lengths, y), SPEECH_COMMANDS_CLASSES, channels, ()


def _sepsis(root: Path, intensity: bool) -> LoadedRaw:
    x, lengths, y, static, channels, static_names = read_sepsis(root, intensity=intensity)
    return RawSplit(x, lengths, y, static=static), SEPSIS_CLASSES, channels, static_names


def _uea(problem: str) -> Callable[[Path, bool], LoadedRaw]:
    def load(root: Path, intensity: bool) -> LoadedRaw:
        train, test = read_uea_problem(root, problem)
        channels = tuple(f"dim{index}" for index in range(train.x.shape[-1]))
        return (_concatenate(_ts_raw(train), _ts_raw(test)), train.class_names, channels, ())
    return load


_PAPER_LOADERS: dict[str, Callable[[Path, bool], LoadedRaw]] = {
    "speech-commands": _speech_commands,
    "sepsis": _sepsis,
    "character-trajectories": _uea("CharacterTrajectories"),
    "eigenworms": _uea("EigenWorms"),
}

"""Data: the ``.ts`` reader, irregular sampling, the shipped and downloadable datasets.

The entry points are :func:`load_dataset` (by name) and :func:`load_ts_pair` (any
UEA/UCR TRAIN/TEST pair); both return a :class:`Dataset` of :class:`Split` tensors
``x`` of shape ``(batch, time, channels)`` (NaN where missing, time channel first),
``lengths`` and ``y`` of shape ``(batch,)``.
"""

from .dataset import Dataset, Split
from .download import (
    REMOTE_DATASETS,
    DownloadError,
    UnsafeArchiveError,
    data_cache_dir,
    download_file,
    prepare_dataset,
    safe_extract,
)
from .irregular import augment_channels, drop_observations, observational_intensity, time_channel
from .registry import DATASET_NAMES, load_dataset, load_ts_pair, shipped_data_dir
from .sepsis import read_sepsis
from .speech_commands import mfcc, read_speech_commands, read_wav
from .spirals import make_spirals
from .transforms import (
    data_channels,
    increment_autocorrelation,
    moving_average,
    series_scale_spread,
    standardise_each_series,
    time_in_windows,
    warped_copies,
    with_delays,
    with_time_features,
)
from .ts import DataFormatError, TsFile, parse_ts, read_ts, read_ts_pair
from .uea_archive import log_signature_path, log_signature_windows, read_uea_problem

__all__ = [
    "DATASET_NAMES",
    "REMOTE_DATASETS",
    "DataFormatError",
    "Dataset",
    "DownloadError",
    "Split",
    "TsFile",
    "UnsafeArchiveError",
    "augment_channels",
    "data_cache_dir",
    "data_channels",
    "download_file",
    "drop_observations",
    "increment_autocorrelation",
    "load_dataset",
    "load_ts_pair",
    "log_signature_path",
    "log_signature_windows",
    "make_spirals",
    "mfcc",
    "moving_average",
    "observational_intensity",
    "parse_ts",
    "prepare_dataset",
    "read_sepsis",
    "read_speech_commands",
    "read_ts",
    "read_ts_pair",
    "read_uea_problem",
    "read_wav",
    "safe_extract",
    "series_scale_spread",
    "shipped_data_dir",
    "standardise_each_series",
    "time_channel",
    "time_in_windows",
    "warped_copies",
    "with_delays",
    "with_time_features",
]

"""Reader for the UEA/UCR ``.ts`` classification format (timeseriesclassification.com).

A ``.ts`` file is a header, then one series per line::

    # comment lines start with '#' (or '%', as in ARFF and some archive files)
    @problemName JapaneseVowels
    @timeStamps false
    @missing false
    @univariate false
    @dimensions 12
    @equalLength false
    @seriesLength 29            (only meaningful with @equalLength true)
    @classLabel true 1 2 3      (the class names, in order; "false" means no label)
    @data
    1.2,1.3,?:0.5,0.4,NaN:3     (dimensions split by ':', values by ',', label last)

With ``@timeStamps true`` every value is a ``(timestamp,value)`` tuple, for example
``(0,1.0),(2,1.5):(1,0.3):a``; timestamps are numbers or ISO dates
(``2007-01-01 00:00:00``, read as seconds since 1970, UTC). The series of one line
then lives on the sorted union of the timestamps of its dimensions, NaN where a
dimension has no value at a time.

What the reader returns, for ``batch`` series of at most ``time`` points::

    x        (batch, time, channels)   float, NaN where missing and after each series' end
    lengths  (batch,)                  int64, each series' number of time points
    y        (batch,)                  int64 class indices in the header's label order
    times    (batch, time)             float64 timestamps (only for @timeStamps true)

A series' length stops at its last time point with an observed value: trailing
all-missing points (the NaN padding some archives use for unequal lengths) are cut.
Every problem raises :class:`DataFormatError`, a ``ValueError`` whose one-line
message names the file, the line and the problem.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = [
    "DataFormatError",
    "TsFile",
    "parse_ts",
    "read_ts",
    "read_ts_pair",
    "check_ts_pair",
    "decode_ts_bytes",
    "require_labels",
]

PathLike = Union[str, Path]

_TUPLE = re.compile(r"\(([^()]*)\)")
_TUPLE_LIST = re.compile(r"\s*\([^()]*\)\s*(,\s*\([^()]*\)\s*)*")


class DataFormatError(ValueError):
    """A data file fwplab cannot read; the message is one line naming the file and the problem."""


@dataclass
class TsFile:
    """The content of one ``.ts`` file.

    Attributes:
        source: the file (or ``archive!member``) the series were read from.
        problem_name: the ``@problemName`` of the header, or None.
        x: ``(batch, time, channels)`` values, NaN where missing and past each series' end.
        lengths: ``(batch,)`` int64 number of time points of each series.
        y: ``(batch,)`` int64 class indices into ``class_names``; None for ``@classLabel false``.
        class_names: the class labels in header order (empty for ``@classLabel false``).
        times: ``(batch, time)`` float64 timestamps for ``@timeStamps true`` files, else None.
    """

    source: str
    problem_name: Optional[str]
    x: Tensor
    lengths: Tensor
    y: Optional[Tensor]
    class_names: tuple[str, ...]
    times: Optional[Tensor] = None


@dataclass
class _Header:
    problem_name: Optional[str] = None
    timestamps: bool = False
    univariate: Optional[bool] = None
    dimensions: Optional[int] = None
    equal_length: Optional[bool] = None
    series_length: Optional[int] = None
    class_label: Optional[bool] = None
    class_names: tuple[str, ...] = ()


def _fail(source: str, line: Optional[int], problem: str) -> DataFormatError:
    where = f"{source}, line {line}" if line is not None else source
    return DataFormatError(f"{where}: {problem}")


def _parse_bool(value: str, tag: str, source: str, line: int) -> bool:
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise _fail(source, line, f"@{tag} must be 'true' or 'false', got {value.strip()!r}")
    return lowered == "true"


def _parse_positive_int(value: str, tag: str, source: str, line: int) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        number = 0
    if number < 1:
        raise _fail(source, line, f"@{tag} must be a positive integer, got {value.strip()!r}")
    return number


#: What a comment line starts with: '#', or '%' (ARFF's comments, which some archive
#: files carry over into their .ts headers).
_COMMENT = ("#", "%")
_COMMENT_BYTES = tuple(mark.encode() for mark in _COMMENT)


def _read_header(lines: Sequence[str], source: str) -> tuple[_Header, int]:
    """Parse the header; return it and the index of the first line after ``@data``."""
    header = _Header()
    for index, raw in enumerate(lines):
        number = index + 1
        line = raw.strip()
        if not line or line.startswith(_COMMENT):
            continue
        if not line.startswith("@"):
            # The line itself is not echoed: the file may not be a .ts file at all.
            raise _fail(source, number, "expected a '@' header line before @data, got a line "
                        "that does not start with '@'")
        words = line[1:].split(None, 1)  # any whitespace (a TAB too) ends the keyword
        tag = words[0].lower() if words else ""
        value = words[1] if len(words) > 1 else ""
        if tag == "data":
            return header, index + 1
        if tag == "problemname":
            header.problem_name = value.strip() or None
        elif tag == "timestamps":
            header.timestamps = _parse_bool(value, "timeStamps", source, number)
        elif tag == "missing":
            _parse_bool(value, "missing", source, number)  # '?' and NaN are read either way
        elif tag == "univariate":
            header.univariate = _parse_bool(value, "univariate", source, number)
        elif tag in ("dimensions", "dimension"):
            header.dimensions = _parse_positive_int(value, "dimensions", source, number)
        elif tag == "equallength":
            header.equal_length = _parse_bool(value, "equalLength", source, number)
        elif tag == "serieslength":
            header.series_length = _parse_positive_int(value, "seriesLength", source, number)
        elif tag == "classlabel":
            tokens = value.split()
            if not tokens:
                raise _fail(source, number, "@classLabel needs 'true' followed by labels, or 'false'")
            header.class_label = _parse_bool(tokens[0], "classLabel", source, number)
            names = tuple(tokens[1:])
            if header.class_label and not names:
                raise _fail(source, number, "@classLabel true must list the class labels")
            if len(set(names)) != len(names):
                raise _fail(source, number, f"@classLabel lists a label twice: {' '.join(names)}")
            header.class_names = names if header.class_label else ()
        elif tag == "targetlabel":
            if _parse_bool(value.split()[0] if value.split() else "", "targetLabel", source, number):
                raise _fail(source, number, "@targetLabel true marks a regression file; "
                            "fwplab reads classification files (@classLabel true)")
            header.class_label = False
        # Other tags (e.g. @frequency, @horizon of forecasting files) carry nothing we use.
    if not any(line.strip() for line in lines):
        raise _fail(source, None, "file is empty")
    raise _fail(source, None, "no @data line: not a .ts file (expected a header ending in @data)")


def _parse_values(text: str, source: str, line: int, dimension: int) -> list[float]:
    try:
        return [float(token) for token in text.replace("?", "nan").split(",")]
    except ValueError:
        pass
    for token in text.split(","):
        stripped = token.strip()
        if stripped == "?":
            continue
        try:
            float(stripped)
        except ValueError:
            what = "an empty value" if not stripped else f"non-numeric value {stripped[:30]!r}"
            raise _fail(source, line, f"dimension {dimension + 1} has {what}") from None
    raise _fail(source, line, f"dimension {dimension + 1} has a value mixing '?' and digits")


def _split_outside_parentheses(line: str, source: str, number: int) -> list[str]:
    parts, depth, start = [], 0, 0
    for position, char in enumerate(line):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == ":" and depth == 0:
            parts.append(line[start:position])
            start = position + 1
        if depth not in (0, 1):
            raise _fail(source, number, "unbalanced parentheses in (timestamp,value) tuples")
    if depth != 0:
        raise _fail(source, number, "unbalanced parentheses in (timestamp,value) tuples")
    parts.append(line[start:])
    return parts


class _TimestampKind:
    """Remembers whether a file's timestamps are numbers or dates (mixing them is an error)."""

    def __init__(self) -> None:
        self.kind: Optional[str] = None

    def parse(self, text: str, source: str, number: int) -> float:
        stripped = text.strip()
        try:
            value, kind = float(stripped), "number"
        except ValueError:
            try:
                moment = datetime.fromisoformat(stripped)
            except ValueError:
                raise _fail(source, number, f"timestamp {stripped[:30]!r} is neither a number "
                            "nor an ISO date") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            value, kind = moment.timestamp(), "date"
        if not math.isfinite(value):
            raise _fail(source, number, f"timestamp {stripped[:30]!r} is not finite")
        if self.kind is None:
            self.kind = kind
        elif self.kind != kind:
            raise _fail(source, number, "timestamps mix numbers and dates")
        return value


def _parse_timestamped(
    dimension_texts: list[str], source: str, number: int, clock: _TimestampKind
) -> tuple[list[float], list[list[float]], list[int]]:
    """Return (sorted union of times, values[time][dimension], per-dimension counts)."""
    observations = []
    for dimension, text in enumerate(dimension_texts):
        if not _TUPLE_LIST.fullmatch(text):
            raise _fail(source, number, f"dimension {dimension + 1} is not a list of "
                        "(timestamp,value) tuples separated by ','")
        pairs: dict[float, float] = {}
        last = -math.inf
        for inner in _TUPLE.findall(text):
            stamp_text, comma, value_text = inner.rpartition(",")
            if not comma:
                raise _fail(source, number, f"tuple ({inner[:30]}) needs a timestamp and a value")
            stamp = clock.parse(stamp_text, source, number)
            if stamp in pairs:
                raise _fail(source, number, f"dimension {dimension + 1} repeats timestamp "
                            f"{stamp_text.strip()!r}")
            if stamp < last:
                raise _fail(source, number, f"dimension {dimension + 1}: timestamps must be "
                            f"strictly increasing, but {stamp_text.strip()!r} comes after a "
                            "later one")
            pairs[stamp] = _parse_values(value_text, source, number, dimension)[0]
            last = stamp
        observations.append(pairs)
    union = sorted(set().union(*observations))
    position = {stamp: index for index, stamp in enumerate(union)}
    rows = [[math.nan] * len(observations) for _ in union]
    for dimension, pairs in enumerate(observations):
        for stamp, value in pairs.items():
            rows[position[stamp]][dimension] = value
    return union, rows, [len(pairs) for pairs in observations]


def parse_ts(
    text: str, source: str = "<text>", class_names: Optional[Sequence[str]] = None
) -> TsFile:
    """Parse the text of a ``.ts`` file.

    Args:
        text: the whole file content.
        source: how error messages name the file.
        class_names: the label order to encode ``y`` with (e.g. the TRAIN file's, when
            reading its TEST file); defaults to this file's ``@classLabel`` list.

    Returns:
        TsFile: ``x`` of shape ``(batch, time, channels)``, ``lengths`` and ``y`` of
        shape ``(batch,)``, ``times`` of shape ``(batch, time)`` for timestamped files.

    Raises:
        DataFormatError: any problem with the file, in one line naming file and line.
    """
    lines = text.splitlines()
    header, first_data = _read_header(lines, source)
    if header.class_label is None:
        raise _fail(source, None, "the header has no @classLabel line (needed to tell the "
                    "label from the last dimension)")
    labelled = header.class_label
    if header.univariate and header.dimensions not in (None, 1):
        raise _fail(source, None, f"@univariate true contradicts @dimensions {header.dimensions}")
    dimensions = 1 if header.univariate and header.dimensions is None else header.dimensions
    encoding = tuple(class_names) if class_names is not None else header.class_names
    label_index = {name: index for index, name in enumerate(encoding)}
    clock = _TimestampKind()

    series: list[Tensor] = []
    series_times: list[list[float]] = []
    labels: list[int] = []
    raw_length: Optional[int] = None
    for index in range(first_data, len(lines)):
        number = index + 1
        line = lines[index].strip()
        if not line or line.startswith(_COMMENT):
            continue
        if header.timestamps:
            parts = _split_outside_parentheses(line, source, number)
        else:
            if "(" in line:
                raise _fail(source, number, "found '(' tuples but the header says @timeStamps false")
            parts = line.split(":")
        if dimensions is None:
            dimensions = len(parts) - labelled
        if len(parts) != dimensions + labelled or dimensions < 1:
            raise _fail(source, number, f"expected {dimensions} dimension(s)"
                        f"{' and a class label' if labelled else ''} separated by ':', found "
                        f"{len(parts)} field(s)")
        if labelled:
            label = parts.pop().strip()
            if not label:
                raise _fail(source, number, "the class label after the last ':' is empty")
            if label not in label_index:
                known = " ".join(encoding)
                raise _fail(source, number, f"class label {label!r} is not among the classes "
                            f"[{known}]")
            labels.append(label_index[label])

        if header.timestamps:
            stamps, rows, counts = _parse_timestamped(parts, source, number, clock)
            _check_time_resolution(stamps, source, number)
            values = torch.tensor(rows, dtype=torch.float64).reshape(len(rows), dimensions)
        else:
            columns = [_parse_values(part, source, number, d) for d, part in enumerate(parts)]
            counts = [len(column) for column in columns]
            longest = max(counts)
            for column in columns:
                column.extend([math.nan] * (longest - len(column)))
            values = torch.tensor(columns, dtype=torch.float64).T
            stamps = []
        if header.equal_length:
            if len(set(counts)) != 1:
                raise _fail(source, number, f"@equalLength true but the dimensions have "
                            f"lengths {sorted(set(counts))}")
            expected = header.series_length or raw_length
            if expected is not None and counts[0] != expected:
                origin = "@seriesLength" if header.series_length else "the first series"
                raise _fail(source, number, f"@equalLength true but this series has length "
                            f"{counts[0]}, {origin} has {expected}")
            raw_length = counts[0]
        if torch.isinf(values).any():
            raise _fail(source, number, "infinite value (use '?' or NaN for missing values)")
        _check_range(values, source, number)
        observed = ~torch.isnan(values).all(dim=1)
        if not observed.any():
            raise _fail(source, number, "the series has no observed value (all missing)")
        length = int(observed.nonzero().max()) + 1
        if length < 2:
            raise _fail(source, number, "the series has a single time point; a path needs at "
                        "least 2")
        series.append(values[:length])
        series_times.append(stamps[:length])

    if not series:
        raise _fail(source, None, "no series after @data")
    lengths = torch.tensor([len(values) for values in series], dtype=torch.int64)
    longest = int(lengths.max())
    dtype = torch.get_default_dtype()
    x = torch.full((len(series), longest, dimensions), math.nan, dtype=dtype)
    for row, values in enumerate(series):
        x[row, : len(values)] = values.to(dtype)
    times = None
    if header.timestamps:
        times = torch.full((len(series), longest), math.nan, dtype=torch.float64)
        for row, stamps in enumerate(series_times):
            times[row, : len(stamps)] = torch.tensor(stamps, dtype=torch.float64)
    y = torch.tensor(labels, dtype=torch.int64) if labelled else None
    return TsFile(source, header.problem_name, x, lengths, y, encoding if labelled else (), times)


def _check_range(values: Tensor, source: str, number: int) -> None:
    """Refuse values that become infinite in the dtype the data is stored in."""
    dtype = torch.get_default_dtype()
    largest = float(torch.nan_to_num(values.abs(), nan=0.0).max()) if values.numel() else 0.0
    if largest > torch.finfo(dtype).max:
        raise _fail(source, number, f"value of magnitude {largest:.3g} does not fit "
                    f"{str(dtype).removeprefix('torch.')} (largest {torch.finfo(dtype).max:.3g}); "
                    "rescale the data")


def _check_time_resolution(stamps: list[float], source: str, number: int) -> None:
    """Refuse timestamps that coincide once stored as time since the series' first one."""
    if len(stamps) < 2:
        return
    relative = torch.tensor(stamps, dtype=torch.float64) - stamps[0]
    stored = relative.to(torch.get_default_dtype())
    collapsed = (stored[1:] <= stored[:-1]).nonzero()
    if len(collapsed):
        first = int(collapsed[0])
        raise _fail(source, number, f"timestamps {stamps[first]!r} and {stamps[first + 1]!r} "
                    f"are distinct but coincide in {str(stored.dtype).removeprefix('torch.')} "
                    "as time since the series' first timestamp; rescale the timestamps")


def decode_ts_bytes(data: bytes, source: str = "<bytes>") -> str:
    """The text of a ``.ts`` file's bytes: UTF-8, Latin-1 accepted on comment lines only.

    Some archive files use Latin-1 in their comments. A byte that is not UTF-8 on any
    other line is an error naming the line: decoding the whole file as Latin-1 would
    silently garble every non-ASCII label.

    Args:
        data: the file's bytes.
        source: the name errors give the file.

    Raises:
        DataFormatError: a non-UTF-8 byte outside a comment line.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    lines = data.removeprefix(b"\xef\xbb\xbf").split(b"\n")
    decoded = []
    for number, raw in enumerate(lines, start=1):
        try:
            decoded.append(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            if raw.lstrip().startswith(_COMMENT_BYTES):
                decoded.append(raw.decode("latin-1"))
                continue
            raise _fail(source, number, f"not valid UTF-8 at column {error.start + 1} (save "
                        "the file as UTF-8)") from None
    return "\n".join(decoded)


def read_ts(path: PathLike, class_names: Optional[Sequence[str]] = None) -> TsFile:
    """Read a ``.ts`` file from disk; see :func:`parse_ts`.

    Raises:
        DataFormatError: missing file, empty file or any format problem (one line).
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(str(path), None, "file not found")
    return parse_ts(decode_ts_bytes(path.read_bytes(), str(path)), str(path), class_names)


def require_labels(ts: TsFile, role: str) -> None:
    """Refuse a file without class labels; ``role`` (``"TRAIN"``, ``"TEST"``) names it.

    Raises:
        DataFormatError: ``ts`` has no labels.
    """
    if ts.y is None:
        raise _fail(ts.source, None, f"@classLabel false: the {role} file has no class labels")


def check_ts_pair(train: TsFile, test: TsFile) -> None:
    """Check that a TRAIN and a TEST file describe the same classification problem.

    Raises:
        DataFormatError: an unlabelled file, or a different number of channels.
    """
    require_labels(train, "TRAIN")
    require_labels(test, "TEST")
    if train.x.shape[-1] != test.x.shape[-1]:
        raise _fail(test.source, None, f"has {test.x.shape[-1]} dimensions but the TRAIN file "
                    f"{train.source} has {train.x.shape[-1]}")


def read_ts_pair(train_path: PathLike, test_path: PathLike) -> tuple[TsFile, TsFile]:
    """Read a TRAIN/TEST pair with one label mapping: the TRAIN header's class order.

    A TEST label that the TRAIN header does not list is an error naming the TEST file,
    the line and the label.

    Returns:
        (train, test): two :class:`TsFile` whose ``y`` index the same ``class_names``.
    """
    train = read_ts(train_path)
    require_labels(train, "TRAIN")
    test = read_ts(test_path, class_names=train.class_names)
    check_ts_pair(train, test)
    return train, test

"""The .ts reader: every header variant, every error, and the shipped JapaneseVowels files."""

import math
from datetime import datetime, timezone

import pytest
import torch

from fwplab.data import DataFormatError, load_dataset, load_ts_pair, parse_ts, read_ts, read_ts_pair
from fwplab.data.ts import decode_ts_bytes
from fwplab.data.registry import shipped_data_dir

ATOL_EXACT = 0.0
JAPANESE_VOWELS_SHA256 = {
    "JapaneseVowels_TRAIN.ts": "68a430eabd919cc77f40b1f5f3bc0dcafacc1486bca9260785aeb7d262cc78cd",
    "JapaneseVowels_TEST.ts": "b3d41d6a0ca3bcad3afb9ca7d4365382aa51341e2e58bae2a574babdda5b9462",
}

UNIVARIATE = """# a comment
#another one

@problemName Tiny
@timeStamps false
@missing true
@univariate true
@equalLength true
@seriesLength 4
@classLabel true 3 1
@data
1,2,?,4:1

0.5,0.25,0.125,1e-3:3
"""

MULTIVARIATE_UNEQUAL = """@problemname Words
@timestamps false
@missing false
@univariate false
@dimensions 2
@equallength false
@classlabel true cat dog
@data
1,2,3:4,5,6:dog
7,8:NaN,9:cat
10,11,12,13,NaN,nan:14,15,16,17,?,?:dog
"""


def test_univariate_equal_length_with_missing_and_integer_labels():
    ts = parse_ts(UNIVARIATE, "tiny.ts")
    assert ts.problem_name == "Tiny"
    assert ts.x.shape == (2, 4, 1) and ts.x.dtype == torch.get_default_dtype()
    assert ts.lengths.tolist() == [4, 4]
    assert ts.class_names == ("3", "1")
    assert ts.y.tolist() == [1, 0]  # header order, not sorted order
    assert math.isnan(ts.x[0, 2, 0]) and ts.x[0, 3, 0] == 4.0
    assert ts.x[1, 3, 0] == pytest.approx(1e-3)
    assert ts.times is None


def test_percent_comment_lines_are_comments_as_in_arff():
    """Some archive files open with ARFF's '%' comments (Latin-1 too); they read like '#'."""
    text = "%# a cut-down problem\n% its test set is smaller\n%\n" + UNIVARIATE + "% trailing\n"
    ts = parse_ts(text, "percent.ts")
    reference = parse_ts(UNIVARIATE, "tiny.ts")
    assert torch.equal(ts.x.nan_to_num(-1), reference.x.nan_to_num(-1))
    assert ts.y.tolist() == reference.y.tolist() and ts.class_names == reference.class_names
    latin = b"% caf\xe9\n" + UNIVARIATE.encode()
    assert torch.equal(parse_ts(decode_ts_bytes(latin, "latin.ts"), "latin.ts").y, reference.y)


def test_multivariate_unequal_lengths_string_labels_and_trailing_missing_trimmed():
    ts = parse_ts(MULTIVARIATE_UNEQUAL, "words.ts")
    assert ts.x.shape == (3, 4, 2)
    # Series 3 ends with two all-missing points: its length stops at its last observation.
    assert ts.lengths.tolist() == [3, 2, 4]
    assert ts.y.tolist() == [1, 0, 1]
    assert torch.isnan(ts.x[0, 3]).all() and torch.isnan(ts.x[1, 2:]).all()  # padding
    assert math.isnan(ts.x[1, 0, 1]) and ts.x[1, 1, 1] == 9.0  # NaN token inside the series
    torch.testing.assert_close(ts.x[2, :, 0], torch.tensor([10.0, 11, 12, 13]),
                               atol=ATOL_EXACT, rtol=0)


def test_dimensions_inferred_without_dimension_header():
    text = "@problemName P\n@classLabel true a b\n@data\n1,2:3,4:5,6:a\n1,1:2,2:3,3:b\n"
    ts = parse_ts(text)
    assert ts.x.shape == (2, 2, 3)


def test_unequal_dimension_lengths_padded_when_equal_length_false():
    text = "@dimensions 2\n@equalLength false\n@classLabel true a\n@data\n1,2,3:4:a\n"
    ts = parse_ts(text)
    assert ts.lengths.tolist() == [3]
    assert ts.x[0, 0, 1] == 4.0 and torch.isnan(ts.x[0, 1:, 1]).all()


def test_class_label_false_has_no_labels():
    text = "@univariate true\n@classLabel false\n@data\n1,2,3\n4,5,6\n"
    ts = parse_ts(text)
    assert ts.y is None and ts.class_names == ()
    assert ts.x.shape == (2, 3, 1)


def test_timestamps_numeric_union_of_dimensions():
    text = ("@timeStamps true\n@dimensions 2\n@classLabel true x y\n@data\n"
            "(0,1.0),(2,3.0),(5,?):(1,10),(2,20):y\n"
            "(0.5,1),(1.5,2):(0.5,3),(1.5,4):x\n")
    ts = parse_ts(text, "stamps.ts")
    assert ts.times.dtype == torch.float64
    assert ts.lengths.tolist() == [3, 2]  # union {0,1,2,5}; time 5 only has '?' -> trimmed
    torch.testing.assert_close(ts.times[0, :3], torch.tensor([0.0, 1, 2], dtype=torch.float64))
    expected = torch.tensor([[1.0, math.nan], [math.nan, 10], [3, 20]])
    torch.testing.assert_close(ts.x[0, :3], expected, equal_nan=True, atol=ATOL_EXACT, rtol=0)
    assert ts.y.tolist() == [1, 0]


def test_timestamps_as_dates_become_seconds():
    text = ("@timeStamps true\n@univariate true\n@classLabel true a\n@data\n"
            "(2007-01-01 00:00:00,1),(2007-01-01 01:00:00,2):a\n")
    ts = parse_ts(text)
    start = datetime(2007, 1, 1, tzinfo=timezone.utc).timestamp()
    torch.testing.assert_close(ts.times[0], torch.tensor([start, start + 3600.0],
                                                         dtype=torch.float64))


def test_timestamped_pair_time_channel_starts_at_zero(tmp_path):
    header = "@timeStamps true\n@univariate true\n@classLabel true a b\n@data\n"
    (tmp_path / "P_TRAIN.ts").write_text(header + "(10,1),(12,2),(15,3):a\n(3,1),(4,5):b\n")
    (tmp_path / "P_TEST.ts").write_text(header + "(7,1),(9,2):b\n")
    dataset = load_ts_pair(tmp_path / "P_TRAIN.ts", tmp_path / "P_TEST.ts", normalise=False)
    torch.testing.assert_close(dataset.train.x[0, :, 0], torch.tensor([0.0, 2, 5]))
    torch.testing.assert_close(dataset.train.x[1, :2, 0], torch.tensor([0.0, 1]))
    assert math.isnan(dataset.train.x[1, 2, 0])


def test_pair_shares_the_train_label_order(tmp_path):
    (tmp_path / "A_TRAIN.ts").write_text("@univariate true\n@classLabel true b a\n@data\n"
                                         "1,2:a\n3,4:b\n")
    (tmp_path / "A_TEST.ts").write_text("@univariate true\n@classLabel true a b\n@data\n"
                                        "1,2:b\n")
    train, test = read_ts_pair(tmp_path / "A_TRAIN.ts", tmp_path / "A_TEST.ts")
    assert train.class_names == test.class_names == ("b", "a")
    assert test.y.tolist() == [0]


@pytest.mark.parametrize("text, match", [
    ("", "file is empty"),
    ("  \n\n", "file is empty"),
    ("@problemName X\n@classLabel true a\n", "no @data line"),
    ("@classLabel true a\n@data\n", "no series after @data"),
    ("@dimensions 2\n@classLabel true a\n@data\n1,2:3,4:a\n1,2:a\n",
     r"line 5: expected 2 dimension\(s\) and a class label separated by ':', found 2"),
    ("@univariate true\n@classLabel true a\n@data\n1,x,3:a\n",
     r"line 4: dimension 1 has non-numeric value 'x'"),
    ("@univariate true\n@classLabel true a\n@data\n1,,3:a\n", "line 4: dimension 1 has an empty"),
    ("@univariate true\n@equalLength true\n@classLabel true a\n@data\n1,2,3:a\n1,2:a\n",
     r"line 6: @equalLength true but this series has length 2, the first series has 3"),
    ("@univariate true\n@equalLength true\n@seriesLength 3\n@classLabel true a\n@data\n1,2:a\n",
     "line 6: @equalLength true but this series has length 2, @seriesLength has 3"),
    ("@dimensions 2\n@equalLength true\n@classLabel true a\n@data\n1,2:3:a\n",
     "dimensions have lengths"),
    ("@univariate true\n@classLabel true a\n@data\n?,NaN,?:a\n", "line 4: the series has no obs"),
    ("@univariate true\n@classLabel true a\n@data\n1.5:a\n", "line 4: the series has a single"),
    ("@univariate true\n@classLabel true a\n@data\n1,2:z\n",
     r"line 4: class label 'z' is not among the classes \[a\]"),
    ("@univariate true\n@classLabel true a\n@data\n1,2:\n", "class label after the last"),
    ("@univariate maybe\n@classLabel true a\n@data\n1,2:a\n",
     "line 1: @univariate must be 'true' or 'false', got 'maybe'"),
    ("@dimensions zero\n@classLabel true a\n@data\n1,2:a\n", "@dimensions must be a positive"),
    ("@classLabel true\n@data\n1,2:a\n", "@classLabel true must list the class labels"),
    ("@classLabel true a a\n@data\n1,2:a\n", "lists a label twice"),
    ("@univariate true\n@data\n1,2:a\n", "no @classLabel line"),
    ("@targetLabel true\n@data\n1,2:0.5\n", "regression"),
    ("@univariate true\n@dimensions 3\n@classLabel true a\n@data\n1,2:a\n", "contradicts"),
    ("@univariate true\n@classLabel true a\n@data\n1,inf:a\n", "infinite value"),
    ("1,2,3\n@data\n", "line 1: expected a '@' header line"),
    ("@univariate true\n@classLabel true a\n@data\n(0,1),(1,2):a\n", "@timeStamps false"),
    ("@timeStamps true\n@univariate true\n@classLabel true a\n@data\n(0,1),(x,2):a\n",
     "neither a number nor an ISO date"),
    ("@timeStamps true\n@univariate true\n@classLabel true a\n@data\n"
     "(0,1),(2007-01-01,2):a\n", "mix numbers and dates"),
    ("@timeStamps true\n@univariate true\n@classLabel true a\n@data\n(0,1),(0,2):a\n",
     "repeats timestamp"),
    ("@timeStamps true\n@univariate true\n@classLabel true a\n@data\n(0,1),(1,2:a\n",
     "unbalanced parentheses"),
    ("@timeStamps true\n@univariate true\n@classLabel true a\n@data\n1,2:a\n",
     "not a list of \\(timestamp,value\\) tuples"),
])
def test_format_errors_are_one_line_and_name_the_file(text, match):
    with pytest.raises(DataFormatError, match=match) as caught:
        parse_ts(text, "bad.ts")
    message = str(caught.value)
    assert message.startswith("bad.ts") and "\n" not in message
    assert isinstance(caught.value, ValueError)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataFormatError, match=r"nothere\.ts: file not found"):
        read_ts(tmp_path / "nothere.ts")


def test_test_label_missing_from_train_header_names_test_file_and_label(tmp_path):
    (tmp_path / "B_TRAIN.ts").write_text("@univariate true\n@classLabel true a b\n@data\n1,2:a\n")
    (tmp_path / "B_TEST.ts").write_text("@univariate true\n@classLabel true a c\n@data\n"
                                        "1,2:a\n3,4:c\n")
    with pytest.raises(DataFormatError, match=r"B_TEST\.ts, line 5: class label 'c' is not among"):
        read_ts_pair(tmp_path / "B_TRAIN.ts", tmp_path / "B_TEST.ts")


def test_pair_with_different_dimensions_or_no_labels_fails(tmp_path):
    (tmp_path / "C_TRAIN.ts").write_text("@dimensions 2\n@classLabel true a\n@data\n1,2:3,4:a\n")
    (tmp_path / "C_TEST.ts").write_text("@univariate true\n@classLabel true a\n@data\n1,2:a\n")
    with pytest.raises(DataFormatError, match="has 1 dimensions but the TRAIN file"):
        read_ts_pair(tmp_path / "C_TRAIN.ts", tmp_path / "C_TEST.ts")
    (tmp_path / "D_TRAIN.ts").write_text("@univariate true\n@classLabel false\n@data\n1,2\n")
    with pytest.raises(DataFormatError, match="the TRAIN file has no class labels"):
        read_ts_pair(tmp_path / "D_TRAIN.ts", tmp_path / "C_TEST.ts")


def test_shipped_japanese_vowels_counts_and_checksums():
    import hashlib

    folder = shipped_data_dir() / "JapaneseVowels"
    for name, digest in JAPANESE_VOWELS_SHA256.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    train, test = read_ts_pair(folder / "JapaneseVowels_TRAIN.ts",
                               folder / "JapaneseVowels_TEST.ts")
    assert (len(train.y), len(test.y)) == (270, 370)
    assert train.x.shape[-1] == test.x.shape[-1] == 12
    lengths = torch.cat([train.lengths, test.lengths])
    assert (int(lengths.min()), int(lengths.max())) == (7, 29)
    assert train.class_names == tuple(str(k) for k in range(1, 10))
    assert torch.bincount(train.y).tolist() == [30] * 9
    assert not torch.isnan(train.x[0, : train.lengths[0]]).any()


def test_load_dataset_japanese_vowels_default_and_explicit_root():
    dataset = load_dataset("japanese-vowels")
    again = load_dataset("japanese-vowels", root=shipped_data_dir() / "JapaneseVowels")
    assert dataset.num_classes == 9 and dataset.input_channels == 13 and dataset.has_time_channel
    assert (len(dataset.train), len(dataset.test)) == (270, 370) and dataset.val is None
    torch.testing.assert_close(dataset.test.x, again.test.x, equal_nan=True, atol=ATOL_EXACT,
                               rtol=0)
    with pytest.raises(DataFormatError, match="file not found"):
        load_dataset("japanese-vowels", root=shipped_data_dir() / "nowhere")

"""Bad input to ``fwplab train``: every case of issue 5 ends with a non-zero exit
status, exactly one line on stderr naming the file or argument and the problem,
no traceback, and nothing written.

Cases tried (``CASES`` below, plus the three tests after it):
missing file; empty file; ``.ts`` without ``@data``; wrong number of dimensions on
a line; non-numeric value; inconsistent lengths with ``@equalLength true``; TEST
label not in the TRAIN header; all-missing series; series of length 1;
non-increasing (repeated or decreasing) timestamps; unknown model; unknown preset;
bad numbers in flags; ``--train`` without ``--test``; ``--out`` holding a run;
``--resume`` without a checkpoint; ``--device cuda`` without a GPU; non-finite loss
during training.
"""

import re

import pytest
import torch

from fwplab.cli import main
from test_train import one_thread  # noqa: F401 (autouse fixture)

HEADER = """@problemName Bad
@timeStamps {stamps}
@missing true
@univariate false
@dimensions 2
@equalLength {equal}
@classLabel true a b
"""
GOOD_LINES = ["1,2,3:4,5,6:a", "2,3,4:5,6,7:b", "3,1,2:6,4,5:a", "0,1,0:1,0,1:b"]
STAMPED_GOOD = "(0,1),(1,2),(2,3):(0,4),(1,5),(2,6):a"
#: Exit status of argparse for bad flags and of fwplab for bad input.
EXIT_FLAGS, EXIT_INPUT = 2, 1


def ts_text(lines, stamps="false", equal="false", data=True):
    return HEADER.format(stamps=stamps, equal=equal) + ("@data\n" if data else "") + "\n".join(
        lines) + "\n"


#: name -> (TRAIN text or None for a missing file, extra flags, exit status, message regex).
CASES = {
    "missing file": (None, [], EXIT_INPUT, r"{train}: file not found \(--train\)"),
    "empty file": ("", [], EXIT_INPUT, r"{train}: file is empty"),
    "no @data": (ts_text(GOOD_LINES, data=False), [], EXIT_INPUT,
                 r"{train}, line 8: expected a '@' header line before @data"),
    "wrong number of dimensions": (ts_text(GOOD_LINES + ["1,2,3:b"]), [], EXIT_INPUT,
                                   r"{train}, line 13: expected 2 dimension\(s\) and a class "
                                   r"label separated by ':', found 2 field\(s\)"),
    "non-numeric value": (ts_text(GOOD_LINES + ["1,x,3:4,5,6:b"]), [], EXIT_INPUT,
                          r"{train}, line 13: dimension 1 has non-numeric value 'x'"),
    "unequal lengths with @equalLength true": (
        ts_text(GOOD_LINES + ["1,2:4,5:b"], equal="true"), [], EXIT_INPUT,
        r"{train}, line 13: @equalLength true but this series has length 2"),
    "all-missing series": (ts_text(GOOD_LINES + ["?,?,?:?,?,?:b"]), [], EXIT_INPUT,
                           r"{train}, line 13: the series has no observed value"),
    "series of length 1": (ts_text(GOOD_LINES + ["1:4:b"]), [], EXIT_INPUT,
                           r"{train}, line 13: the series has a single time point"),
    "repeated timestamp": (
        ts_text([STAMPED_GOOD, "(0,1),(0,2),(2,3):(0,4),(1,5),(2,6):b"], stamps="true"), [],
        EXIT_INPUT, r"{train}, line 10: dimension 1 repeats timestamp '0'"),
    "decreasing timestamps": (
        ts_text([STAMPED_GOOD, "(2,1),(1,2),(0,3):(0,4),(1,5),(2,6):b"], stamps="true"), [],
        EXIT_INPUT, r"{train}, line 10: .*timestamps? .*increasing"),
    "unknown model": (ts_text(GOOD_LINES), ["--model", "lstm"], EXIT_FLAGS,
                      r"argument --model: invalid choice: 'lstm'"),
    "unknown preset": (ts_text(GOOD_LINES), ["--preset", "paper"], EXIT_FLAGS,
                       r"argument --preset: invalid choice: 'paper'"),
    "missing rate out of range": (ts_text(GOOD_LINES), ["--missing-rate", "1.5"], EXIT_FLAGS,
                                  r"argument --missing-rate: expected a number in \[0.0, 1.0\)"),
    "non-numeric learning rate": (ts_text(GOOD_LINES), ["--lr", "fast"], EXIT_FLAGS,
                                  r"argument --lr: expected a number in \(0.0, inf\), got 'fast'"),
}


def _run(argv, capsys):
    """``main(argv)``: (exit status, stdout, stderr), whether it returned or raised SystemExit."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_one_line(err, pattern, tmp_path, inputs):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("fwplab train: error: ")
    assert re.search(pattern, lines[0]), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(inputs)  # nothing written


@pytest.mark.parametrize("case", list(CASES))
def test_bad_training_file(case, tmp_path, capsys):
    text, flags, status, pattern = CASES[case]
    train, test = tmp_path / "Bad_TRAIN.ts", tmp_path / "Bad_TEST.ts"
    test.write_text(ts_text(GOOD_LINES))
    if text is not None:
        train.write_text(text)
    code, out, err = _run(["train", "--train", str(train), "--test", str(test), "--epochs", "1",
                           "--out", str(tmp_path / "run"), "--no-progress", *flags], capsys)
    assert code == status
    assert out == ""
    _assert_one_line(err, pattern.format(train=train), tmp_path,
                     [p.name for p in (train, test) if p.exists()])


def test_test_label_not_in_the_train_header(tmp_path, capsys):
    train, test = tmp_path / "Bad_TRAIN.ts", tmp_path / "Bad_TEST.ts"
    train.write_text(ts_text(GOOD_LINES))
    test.write_text(ts_text(GOOD_LINES + ["1,2,3:4,5,6:z"]))
    code, _, err = _run(["train", "--train", str(train), "--test", str(test),
                         "--out", str(tmp_path / "run")], capsys)
    assert code == EXIT_INPUT
    _assert_one_line(err, rf"{test}, line 13: class label 'z' is not among the classes \[a b\]",
                     tmp_path, [train.name, test.name])


def test_bad_run_options(tmp_path, capsys):
    train, test = tmp_path / "Bad_TRAIN.ts", tmp_path / "Bad_TEST.ts"
    train.write_text(ts_text(GOOD_LINES))
    test.write_text(ts_text(GOOD_LINES))
    inputs = [train.name, test.name]
    code, _, err = _run(["train", "--train", str(train)], capsys)
    assert code == EXIT_INPUT
    _assert_one_line(err, r"--test: --train and --test go together", tmp_path, inputs)

    code, _, err = _run(["train", "--resume", str(tmp_path / "nothing")], capsys)
    assert code == EXIT_INPUT
    _assert_one_line(err, rf"--resume {tmp_path / 'nothing'}: no checkpoint.pt there",
                     tmp_path, inputs)

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "metrics.json").write_text("{}")
    code, _, err = _run(["train", "--train", str(train), "--test", str(test),
                         "--out", str(occupied)], capsys)
    assert code == EXIT_INPUT
    _assert_one_line(err, rf"--out {occupied}: already holds a run; continue it with --resume",
                     tmp_path, inputs + ["occupied"])
    assert sorted(p.name for p in occupied.iterdir()) == ["metrics.json"]

    code, _, err = _run(["train", "--resume", str(occupied), "--lr", "0.1"], capsys)
    assert code == EXIT_INPUT
    _assert_one_line(err, r"--resume continues a run with its saved settings; drop --lr",
                     tmp_path, inputs + ["occupied"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(tmp_path, capsys):
    code, _, err = _run(["train", "--device", "cuda", "--out", str(tmp_path / "run")], capsys)
    assert code == EXIT_INPUT
    _assert_one_line(err, r"--device cuda: no CUDA GPU is available here", tmp_path, [])


def test_non_finite_loss_stops_with_where_and_what_to_try(tmp_path, capsys):
    train, test = tmp_path / "Bad_TRAIN.ts", tmp_path / "Bad_TEST.ts"
    train.write_text(ts_text(GOOD_LINES * 4))
    test.write_text(ts_text(GOOD_LINES))
    code, out, err = _run(["train", "--train", str(train), "--test", str(test), "--hidden", "8",
                           "--heads", "2", "--batch-size", "4", "--lr", "1e30",
                           "--out", str(tmp_path / "run"), "--no-progress"], capsys)
    assert code == EXIT_INPUT
    assert out.startswith("fwplab train: delta_cde") and "run folder" in out
    _assert_one_line(err, r"non-finite loss at epoch 1, step 2; no checkpoint was written yet "
                     r".*; try a smaller learning rate \(--lr\) or solver step \(--step-size\)",
                     tmp_path, [train.name, test.name])

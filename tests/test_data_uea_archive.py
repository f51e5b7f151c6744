"""UEA archive zips and depth-1/2 log-signature windows."""

import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from fwplab.data import (
    DataFormatError,
    load_dataset,
    log_signature_path,
    log_signature_windows,
    read_uea_problem,
)
from fwplab.data import uea_archive
from fwplab.data.uea_archive import log_signature_channel_names

RTOL_LOGSIG = 1e-12
ATOL_LOGSIG = 1e-12
ATOL_EXACT = 0.0


def _chen_log_signature(points):
    """Depth-2 log-signature of a piecewise-linear path by Chen's identity in the tensor algebra.

    A linear piece with increment d has signature (1, d, d d^T / 2); pieces multiply as
    (a1, a2)(b1, b2) = (a1 + b1, a2 + b2 + a1 b1^T); log = (S1, S2 - S1 S1^T / 2).
    """
    channels = points.shape[-1]
    level_one = torch.zeros(channels, dtype=points.dtype)
    level_two = torch.zeros(channels, channels, dtype=points.dtype)
    for d in points[1:] - points[:-1]:
        level_two = level_two + torch.outer(d, d) / 2 + torch.outer(level_one, d)
        level_one = level_one + d
    log_two = level_two - torch.outer(level_one, level_one) / 2
    upper = torch.triu_indices(channels, channels, offset=1)
    return torch.cat([level_one, log_two[upper[0], upper[1]]])


def test_levy_area_of_the_unit_square_is_its_signed_area():
    square = torch.tensor([[0.0, 0], [1, 0], [1, 1], [0, 1], [0, 0]], dtype=torch.float64)
    anticlockwise = log_signature_windows(square.unsqueeze(0), depth=2, step=4)
    torch.testing.assert_close(anticlockwise, torch.tensor([[[0.0, 0, 1]]], dtype=torch.float64),
                               rtol=RTOL_LOGSIG, atol=ATOL_LOGSIG)
    clockwise = log_signature_windows(square.flip(0).unsqueeze(0), depth=2, step=4)
    assert clockwise[0, 0, 2] == pytest.approx(-1.0)


def test_windows_match_chen_identity_on_a_random_path():
    path = torch.randn(2, 10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    windows = log_signature_windows(path, depth=2, step=4)
    assert windows.shape == (2, 3, 3 + 3)  # 9 increments -> windows of 4, 4, 1
    for b in range(2):
        for w, (start, stop) in enumerate([(0, 4), (4, 8), (8, 9)]):
            expected = _chen_log_signature(path[b, start: stop + 1])
            torch.testing.assert_close(windows[b, w], expected, rtol=RTOL_LOGSIG,
                                       atol=ATOL_LOGSIG)
    depth_one = log_signature_windows(path, depth=1, step=4)
    torch.testing.assert_close(depth_one, windows[..., :3], rtol=0, atol=ATOL_EXACT)


def test_log_signature_is_invariant_under_refining_the_path():
    corners = torch.tensor([[0.0, 0, 0], [2, 1, -1], [1, 3, 0], [-1, 0, 2]], dtype=torch.float64)
    fine = torch.cat([torch.lerp(corners[k], corners[k + 1], torch.linspace(0, 1, 9,
                      dtype=torch.float64)[:-1].unsqueeze(-1)) for k in range(3)] + [corners[-1:]])
    coarse = log_signature_windows(corners.unsqueeze(0), depth=2, step=3)
    refined = log_signature_windows(fine.unsqueeze(0), depth=2, step=len(fine) - 1)
    torch.testing.assert_close(refined, coarse, rtol=RTOL_LOGSIG, atol=ATOL_LOGSIG)


def test_log_signature_path_respects_lengths_and_depth_one_samples_the_path():
    x = torch.randn(2, 11, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([11, 6])
    x[1, 6:] = math.nan
    path, new_lengths = log_signature_path(x, lengths, depth=1, step=4)
    assert path.shape == (2, 4, 2) and new_lengths.tolist() == [4, 3]
    ends = torch.tensor([0, 4, 8, 10])
    torch.testing.assert_close(path[0], x[0, ends] - x[0, 0], rtol=RTOL_LOGSIG, atol=ATOL_LOGSIG)
    torch.testing.assert_close(path[1, :3], x[1, [0, 4, 5]] - x[1, 0], rtol=RTOL_LOGSIG,
                               atol=ATOL_LOGSIG)
    assert torch.isnan(path[1, 3]).all()
    one, one_length = log_signature_path(x[1:], lengths[1:], depth=2, step=4)
    assert one.shape == (1, 4, 3) and one_length.tolist() == [3]


def test_log_signature_errors_and_names():
    x = torch.zeros(1, 5, 2)
    with pytest.raises(ValueError, match="depth: expected 1 or 2, got 3"):
        log_signature_windows(x, depth=3, step=2)
    with pytest.raises(ValueError, match="step: expected a positive number"):
        log_signature_windows(x, depth=1, step=0)
    x[0, 2, 1] = math.nan
    with pytest.raises(ValueError, match="x: log-signature windows need complete observations"):
        log_signature_windows(x, depth=1, step=2)
    x[0, :, 1] = math.nan
    with pytest.raises(ValueError, match="x: expected at least one observation of every channel"):
        log_signature_path(x, torch.tensor([5]), depth=1, step=2)
    assert log_signature_channel_names(("time", "a", "b"), 2) == (
        "time", "a", "b", "[time,a]", "[time,b]", "[a,b]")


def _ts_text(problem, series, labels, classes):
    lines = [f"@problemName {problem}", "@timeStamps false", "@missing false",
             f"@univariate {'true' if series[0].shape[1] == 1 else 'false'}",
             f"@dimensions {series[0].shape[1]}", "@equalLength false",
             f"@classLabel true {' '.join(classes)}", "@data"]
    for values, label in zip(series, labels, strict=True):
        dims = [",".join(f"{v:.6f}" for v in values[:, d].tolist()) for d in range(values.shape[1])]
        lines.append(":".join(dims) + f":{label}")
    return "\n".join(lines) + "\n"


def _uea_zip(path, problem, channels, length_range, classes=("1", "2"), per_class=2):
    generator = torch.Generator().manual_seed(len(problem))
    texts = {}
    for part in ("TRAIN", "TEST"):
        series, labels = [], []
        for label in classes:
            for _ in range(per_class):
                length = int(torch.randint(*length_range, (1,), generator=generator))
                series.append(torch.randn(length, channels, generator=generator).cumsum(0))
                labels.append(label)
        texts[part] = _ts_text(problem, series, labels, classes)
    with zipfile.ZipFile(path, "w") as archive:
        for part, text in texts.items():
            archive.writestr(f"{problem}/{problem}_{part}.ts", text)
    return texts


def test_read_uea_problem_from_zip_and_folder(tmp_path):
    texts = _uea_zip(tmp_path / "CharacterTrajectories.zip", "CharacterTrajectories", 3, (5, 9))
    train, test = read_uea_problem(tmp_path / "CharacterTrajectories.zip", "CharacterTrajectories")
    assert train.x.shape[-1] == 3 and len(train.y) == len(test.y) == 4
    assert train.source.endswith("CharacterTrajectories.zip!CharacterTrajectories/"
                                 "CharacterTrajectories_TRAIN.ts")
    folder = tmp_path / "unzipped" / "deeper"
    folder.mkdir(parents=True)
    (folder / "CharacterTrajectories_TRAIN.ts").write_text(texts["TRAIN"])
    (folder / "CharacterTrajectories_TEST.ts").write_text(texts["TEST"])
    again, _ = read_uea_problem(tmp_path / "unzipped", "CharacterTrajectories")
    torch.testing.assert_close(again.x, train.x, equal_nan=True, rtol=0, atol=ATOL_EXACT)
    with pytest.raises(DataFormatError, match="EigenWorms_TRAIN.ts not found inside"):
        read_uea_problem(tmp_path / "CharacterTrajectories.zip", "EigenWorms")
    with pytest.raises(DataFormatError, match="not a zip file or folder"):
        read_uea_problem(tmp_path / "absent.zip", "EigenWorms")


def test_character_trajectories_pools_and_splits(tmp_path):
    _uea_zip(tmp_path / "ct.zip", "CharacterTrajectories", 3, (5, 9), per_class=4)
    dataset = load_dataset("character-trajectories", root=tmp_path / "ct.zip", missing_rate=0.3)
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (12, 2, 2)  # 8 per class
    assert dataset.input_channels == 4 and dataset.class_names == ("1", "2")


def test_eigenworms_defaults_to_depth_two_windows_of_four(tmp_path):
    _uea_zip(tmp_path / "EigenWorms.zip", "EigenWorms", 6, (17, 18), per_class=4)
    dataset = load_dataset("eigenworms", root=tmp_path / "EigenWorms.zip")
    channels = 7 + 7 * 6 // 2  # time + 6 data channels, then their Levy areas
    assert dataset.train.x.shape == (len(dataset.train), 5, channels)
    assert dataset.input_channels == channels and dataset.channel_names[7] == "[time,dim0]"
    torch.testing.assert_close(dataset.train.x[0, :, 0], torch.tensor([0.0, 4, 8, 12, 16]))
    torch.testing.assert_close(dataset.train.times, torch.tensor([0.0, 4, 8, 12, 16]))
    plain = load_dataset("eigenworms", root=tmp_path / "EigenWorms.zip", logsig_depth=0)
    assert plain.train.x.shape[1:] == (17, 7)
    sparse = load_dataset("eigenworms", root=tmp_path / "EigenWorms.zip", missing_rate=0.5)
    assert sparse.train.x.shape == dataset.train.x.shape        # windows of the filled path
    assert not torch.isnan(sparse.train.x).any()


def test_missing_values_are_filled_along_the_linear_path():
    """With observations dropped, the windows are the log-signatures of the path through
    the observed points (on an irregular grid, held constant after the last one)."""
    generator = torch.Generator().manual_seed(0)
    grid = torch.cumsum(torch.rand(20, generator=generator, dtype=torch.float64) + 0.1, 0)
    data = torch.randn(3, 20, 2, generator=generator, dtype=torch.float64)
    lengths = torch.tensor([20, 15, 9])
    full = torch.cat([grid.expand(3, 20).unsqueeze(-1), data], dim=-1)
    for b, length in enumerate(lengths.tolist()):
        full[b, length:] = math.nan
    dropped = torch.rand(3, 20, generator=generator) < 0.4
    dropped[:, 0] = False
    dropped[1, 10:15] = True                       # a gap running to the series' end
    x = full.clone()
    x[..., 1:][dropped] = math.nan
    for b, length in enumerate(lengths.tolist()):
        keep = [i for i in range(length) if not dropped[b, i]]
        points = full[b, keep]
        if keep[-1] != length - 1:                 # the data hold their last value
            tail = torch.cat([full[b, length - 1, :1], points[-1, 1:]])
            points = torch.cat([points, tail.unsqueeze(0)])
        one, _ = log_signature_path(x[b:b + 1, :length], torch.tensor([length]), 2, length, grid[:length])
        observed, _ = log_signature_path(points.unsqueeze(0), torch.tensor([len(points)]), 2,
                                         len(points))
        torch.testing.assert_close(one[0, -1], observed[0, -1], atol=1e-12, rtol=0)
    path, new_lengths = log_signature_path(x, lengths, depth=2, step=4, grid=grid)
    assert not torch.isnan(path[0]).any() and not torch.isnan(path[2, :new_lengths[2]]).any()
    batched, _ = log_signature_path(x[2:], lengths[2:], depth=2, step=4, grid=grid)
    torch.testing.assert_close(path[2:], batched, equal_nan=True)   # other series do not matter


def test_chunks_of_series_give_exactly_the_unchunked_path(monkeypatch):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(23, 50, 3, generator=generator, dtype=torch.float64).cumsum(1)
    lengths = torch.randint(2, 51, (23,), generator=generator)
    x[torch.rand(23, 50, 3, generator=generator) < 0.2] = math.nan
    x[:, 0] = torch.randn(23, 3, generator=generator, dtype=torch.float64)  # each observed
    grid = torch.linspace(0, 7, 50, dtype=torch.float64)
    whole, whole_lengths = log_signature_path(x, lengths, 2, 6, grid)
    for values in (1, 150, 151, 600):  # one series per chunk, some, not dividing the batch
        monkeypatch.setattr(uea_archive, "CHUNK_VALUES", values)
        chunked, chunked_lengths = log_signature_path(x, lengths, 2, 6, grid)
        assert torch.equal(chunked.isnan(), whole.isnan())
        assert torch.equal(chunked.nan_to_num(), whole.nan_to_num())
        assert torch.equal(chunked_lengths, whole_lengths)


_PEAK_SCRIPT = """
import resource, torch
from fwplab.data import log_signature_path, uea_archive
uea_archive.CHUNK_VALUES = 1 << 15   # the default's 1 << 20 at a test's size
torch.manual_seed(0)
x = torch.randn(250, 1000, 8).cumsum(1)   # 8 MB of float32, 250 chunks
lengths = torch.full((250,), 1000)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
path, _ = log_signature_path(x, lengths, 2, 32)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024 / (x.numel() * x.element_size()))
"""


def test_the_log_signature_step_takes_a_small_multiple_of_the_data():
    # Before: the whole batch at once (14 times x's bytes here; a 204 MB .ts file peaked at
    # 29 times its size in the whole run).
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"},
                          cwd=Path(__file__).resolve().parents[1], check=True)
    assert float(done.stdout) < 2  # extra peak memory, in multiples of x's bytes

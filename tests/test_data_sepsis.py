"""PhysioNet 2019 sepsis: .psv parsing, hourly grid, labels, static features, OI / no-OI."""

import math

import pytest
import torch

from fwplab.data import DataFormatError, load_dataset, read_sepsis

ATOL_EXACT = 0.0
TIME_VARYING = (
    "HR O2Sat Temp SBP MAP DBP Resp EtCO2 BaseExcess HCO3 FiO2 pH PaCO2 SaO2 AST BUN "
    "Alkalinephos Calcium Chloride Creatinine Bilirubin_direct Glucose Lactate Magnesium "
    "Phosphate Potassium Bilirubin_total TroponinI Hct Hgb PTT WBC Fibrinogen Platelets"
).split()
TRAILING = ["Age", "Gender", "Unit1", "Unit2", "HospAdmTime", "ICULOS", "SepsisLabel"]


def _write_patient(path, hours, sepsis, hr=None, static=(60, 1, 1, 0, -10)):
    """One .psv file: HR given per row (NaN if None), the other channels missing."""
    rows = ["|".join(TIME_VARYING + TRAILING)]
    for index, (hour, label) in enumerate(zip(hours, sepsis, strict=True)):
        values = ["NaN"] * len(TIME_VARYING)
        values[0] = "NaN" if hr is None else str(hr[index])
        rows.append("|".join(values + [str(v) for v in static] + [str(hour), str(label)]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")


def _cohort(root):
    _write_patient(root / "training_setA" / "p000001.psv", [1, 2, 4], [0, 0, 1], hr=[80, 82, 90])
    _write_patient(root / "training_setA" / "p000002.psv", [1, 2, 3], [0, 0, 0], hr=[70, 71, 72],
                   static=(45, 0, "NaN", 1, "NaN"))
    _write_patient(root / "training_setB" / "p100001.psv", [70, 71, 72, 73], [0, 0, 0, 1],
                   hr=[60, 61, 62, 63])


def test_hourly_grid_labels_and_static_features(tmp_path):
    _cohort(tmp_path)
    x, lengths, y, static, channels, static_names = read_sepsis(tmp_path)
    assert channels == tuple(TIME_VARYING) and x.shape == (3, 72, 34)
    assert lengths.tolist() == [4, 3, 72]
    # p000001 has no row for hour 3: that time point is all-NaN.
    torch.testing.assert_close(x[0, :4, 0], torch.tensor([80.0, 82, math.nan, 90]),
                               equal_nan=True, atol=ATOL_EXACT, rtol=0)
    assert torch.isnan(x[0, :, 1:]).all()
    # p100001: hours 70-72 kept at positions 69-71; hour 73 (the sepsis row) is cut.
    torch.testing.assert_close(x[2, 69:72, 0], torch.tensor([60.0, 61, 62]))
    assert torch.isnan(x[2, :69]).all()
    assert y.tolist() == [1, 0, 0]
    assert static_names == ("Age", "Gender", "Unit1", "Unit2", "HospAdmTime")
    torch.testing.assert_close(static[1], torch.tensor([45.0, 0, 0, 1, 0]))  # NaN -> 0


def test_oi_variant_adds_unit_observed_flags(tmp_path):
    _cohort(tmp_path)
    *_, static, _, static_names = read_sepsis(tmp_path, intensity=True)
    assert static.shape == (3, 7) and static_names[-2:] == ("Unit1 observed", "Unit2 observed")
    assert static[1, -2:].tolist() == [0.0, 1.0] and static[0, -2:].tolist() == [1.0, 1.0]


def _balanced_cohort(root, per_class=4):
    for index in range(2 * per_class):
        label = index % 2
        _write_patient(root / f"p{index:06d}.psv", list(range(1, 6 + index)),
                       [0] * (4 + index) + [label], hr=list(range(60, 65 + index)),
                       static=(50 + index, index % 2, 1, 0, -1))


@pytest.mark.parametrize("intensity, channels, statics", [(False, 1 + 34, 5),
                                                          (True, 1 + 34 + 34, 7)])
def test_load_dataset_oi_and_no_oi_channel_counts(tmp_path, intensity, channels, statics):
    _balanced_cohort(tmp_path)
    dataset = load_dataset("sepsis", root=tmp_path, intensity=intensity)
    assert dataset.input_channels == channels == dataset.train.x.shape[-1]
    assert dataset.train.static.shape[-1] == statics == len(dataset.static_names)
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (4, 2, 2)
    assert dataset.class_names == ("no sepsis", "sepsis")
    split = dataset.train
    if intensity:
        hr_count = split.x[0, : split.lengths[0], 1]
        torch.testing.assert_close(hr_count, torch.arange(1.0, int(split.lengths[0]) + 1))


def test_sepsis_errors(tmp_path):
    with pytest.raises(DataFormatError, match="sepsis folder not found"):
        read_sepsis(tmp_path / "absent")
    with pytest.raises(DataFormatError, match="no .psv patient file found"):
        read_sepsis(tmp_path)
    (tmp_path / "p1.psv").write_text("HR|ICULOS\n80|1\n")
    with pytest.raises(DataFormatError, match=r"p1\.psv: missing column\(s\) Age, Gender"):
        read_sepsis(tmp_path)
    _write_patient(tmp_path / "p1.psv", [1, 2], [0, 0], hr=["fast", 80])
    with pytest.raises(DataFormatError, match=r"p1\.psv, line 2: non-numeric value 'fast'"):
        read_sepsis(tmp_path)
    _write_patient(tmp_path / "p1.psv", [1], [0], hr=[80])
    with pytest.raises(DataFormatError, match="fewer than 2 ICU hours"):
        read_sepsis(tmp_path)
    _write_patient(tmp_path / "p1.psv", [1, 2.5], [0, 0], hr=[80, 81])
    with pytest.raises(DataFormatError, match="ICULOS must hold whole hours"):
        read_sepsis(tmp_path)

"""benchmarks/gpu_check.py: its CPU dry run runs every step, and a mismatch fails loudly."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_runs_every_step_and_writes_a_strict_json_report(gpu_check, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["dry_run"] and report["failures"] == []
    assert {row["model"] for row in report["parity"]} == set(gpu_check.fwplab.MODELS)
    assert all(row["max_abs_difference"] <= gpu_check.PARITY_ATOL for row in report["parity"])
    assert [row["solver"] for row in report["timings"]] == ["reference", "adjoint", "fast"]
    assert all(row["seconds"] > 0 for row in report["timings"])
    assert report["training"]["ok"] and report["training"]["series"] == 32
    assert "cuda_tests" in report["skipped"]
    assert "skipped cuda_tests" in capsys.readouterr().out


def test_a_parity_mismatch_fails_loudly_after_writing_the_report(gpu_check, tmp_path,
                                                                  monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "PARITY_ATOL", -1.0)
    monkeypatch.setattr(gpu_check, "timings", lambda *args: [])
    monkeypatch.setattr(gpu_check, "training_epoch",
                        lambda *args: {"series": 0, "seconds": 0.0, "train_loss": 0.0,
                                       "ok": True})
    out = tmp_path / "report.json"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 1
    assert "parity of delta_cde" in json.loads(out.read_text())["failures"]
    assert "gpu_check FAILED: parity of delta_cde" in capsys.readouterr().err

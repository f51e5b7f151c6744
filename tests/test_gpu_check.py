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


def _quiet(gpu_check, monkeypatch, keep=()):
    """Replace the slow steps not named in ``keep`` by stand-ins that pass."""
    stand_ins = {
        "parity": lambda *args: [],
        "timings": lambda *args: [],
        "triton_parity": lambda *args: [],
        "triton_compile": lambda: {"target": "cuda sm_90", "cubin_bytes": {}, "seconds": 0.0,
                                   "ok": True},
        "training_epoch": lambda *args: {"series": 0, "seconds": 0.0, "train_loss": 0.0,
                                         "ok": True},
    }
    for name, stand_in in stand_ins.items():
        if name not in keep:
            monkeypatch.setattr(gpu_check, name, stand_in)


def test_dry_run_runs_every_step_and_writes_a_strict_json_report(gpu_check, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["dry_run"] and report["failures"] == []
    assert {row["model"] for row in report["parity"]} == set(gpu_check.fwplab.MODELS)
    assert all(row["max_abs_difference"] <= gpu_check.PARITY_ATOL for row in report["parity"])
    assert [row["solver"] for row in report["timings"]] == ["reference", "adjoint", "fast"]
    assert all(row["seconds"] > 0 and row["floor_x"] > 1 for row in report["timings"])
    assert report["training"]["ok"] and report["training"]["series"] == 32
    assert "cuda_tests" in report["skipped"]
    printed = capsys.readouterr().out
    assert "skipped cuda_tests" in printed and "x the compute floor" in printed
    if gpu_check.triton_recurrence.available():
        rows = report["triton_parity"]
        assert {row["model"] for row in rows} == {name for name, _ in gpu_check.TRITON_MODELS}
        assert all(row["ok"] and row["grad_relative_difference"] <= gpu_check.TRITON_GRAD_RTOL
                   for row in rows)
        compiled = report["triton_compile"]
        assert compiled["ok"] and set(compiled["cubin_bytes"]) == {"_forward_kernel",
                                                                   "_backward_kernel"}
        assert "triton_timing" in report["skipped"] and "triton parity" in printed
    else:
        assert "Triton is not installed" in report["skipped"]["triton"]


def test_without_a_gpu_it_says_so_and_runs_the_dry_run(gpu_check, tmp_path, monkeypatch,
                                                       capsys):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    _quiet(gpu_check, monkeypatch)
    out = tmp_path / "report.json"
    assert gpu_check.main(["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("gpu_check: no GPU found") and "dry run instead" in printed
    assert json.loads(out.read_text())["dry_run"]


def test_a_parity_mismatch_fails_loudly_after_writing_the_report(gpu_check, tmp_path,
                                                                  monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "PARITY_ATOL", -1.0)
    _quiet(gpu_check, monkeypatch, keep=("parity",))
    out = tmp_path / "report.json"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 1
    assert "parity of delta_cde" in json.loads(out.read_text())["failures"]
    assert "gpu_check FAILED: parity of delta_cde" in capsys.readouterr().err


def test_a_triton_gradient_mismatch_fails_loudly(gpu_check, tmp_path, monkeypatch, capsys):
    pytest.importorskip("triton", reason="Triton is not installed (pip install 'fwplab[gpu]')")
    monkeypatch.setattr(gpu_check, "TRITON_GRAD_RTOL", -1.0)
    _quiet(gpu_check, monkeypatch, keep=("triton_parity",))
    out = tmp_path / "report.json"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 1
    failures = json.loads(out.read_text())["failures"]
    assert failures == [f"triton parity of {name} {method} K=2" for (name, _), method in
                        zip(gpu_check.TRITON_MODELS, ("rk4", "midpoint", "heun3"), strict=True)]
    assert "gpu_check FAILED: triton parity of delta_cde rk4 K=2" in capsys.readouterr().err

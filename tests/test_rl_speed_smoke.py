"""benchmarks/rl_speed.py runs end to end at its --quick sizes without the official tree."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mujoco")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "rl_speed.py"


def test_rl_speed_quick_runs_and_reports(tmp_path):
    output = tmp_path / "rl_speed.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--repeats", "1", "--models", "latent-ode-rfwp",
         "--json", str(output)],
        capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "the official side is skipped" in result.stdout
    assert "GFLOP/s" in result.stdout and "s/decision" in result.stdout
    assert "Projected compute of one full appendix run" in result.stdout
    report = json.loads(output.read_text())
    assert report["quick"] and not report["official"] and report["matmul_gflops"] > 0
    (model,) = report["results"]
    assert model["model"] == "latent-ode-rfwp" and model["reference"] == "fwplab faithful"
    rows = {row["run"]: row for row in model["rows"]}
    assert set(rows) == {"fwplab faithful", "fwplab faithful, flow", "fwplab fast rk4 h=1",
                         "fwplab fast rk4 h=0.5", "fwplab fast euler h=1"}
    for row in rows.values():
        assert row["decision_s"] > 0 and row["batch_s"] > 0 and row["run_hours"] > 0
        assert row["nfe_per_imagined_step"] > 0 and row["nfe_per_batch"] > 0
    # the same dopri5 through torchdiffeq and through fwplab's flow: the same plan and loss
    same = rows["fwplab faithful, flow"]
    assert same["action_diff"] < 1e-5 and same["loss_diff"] < 1e-5
    assert same["nfe_per_imagined_step"] == rows["fwplab faithful"]["nfe_per_imagined_step"]
    # rk4 on a fixed grid: 4 evaluations per step, more steps at h = 0.5 than at h = 1
    fine, coarse = rows["fwplab fast rk4 h=0.5"], rows["fwplab fast rk4 h=1"]
    assert fine["nfe_per_imagined_step"] > coarse["nfe_per_imagined_step"]
    assert fine["nfe_per_batch"] % 4 == 0 and coarse["nfe_per_batch"] % 4 == 0

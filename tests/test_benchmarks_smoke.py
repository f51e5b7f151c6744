"""The benchmark scripts run end to end at tiny shapes (--smoke), so they cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script: str, output: Path, *arguments: str) -> dict:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--smoke", "--json", str(output), *arguments],
        capture_output=True, text=True, check=False, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fwd+bwd s" in result.stdout  # the table was printed
    return json.loads(output.read_text())


def test_speed_benchmark_smoke(tmp_path):
    results = _run("speed.py", tmp_path / "speed.json", "--profile")
    rows = results["results"][0]["rows"]
    solvers = {row["solver"] for row in rows}
    assert {"reference", "adjoint", "fast", "fast-bounded"} <= solvers
    for row in rows:
        assert row["forward_backward_s"] > 0 and row["saved_mb"] >= 0
        assert row["speedup"] > 0
    fast = next(row for row in rows if row["solver"] == "fast")
    assert fast["peak_mb"] is not None and fast["peak_mb"] >= 0  # measured in a subprocess
    assert results["results"][0]["floor_s"] > 0
    assert all(row["floor_x"] > 0 and row["forward_floor_x"] > 0 for row in rows)
    assert set(results["results"][0]["matmul_gflops_by_threads"]) == {"1", "2"}
    profiled = results["results"][0]["profile"]
    for solver in profiled["solvers"].values():
        assert 0 < solver["outside_share"] < 1 and solver["recurrence_vs_matmul_per_core"] > 0
        timed = solver["timed"]
        assert 0 < timed["outside_share"] < 1 and timed["recurrence_vs_matmul_per_core"] > 0
        assert 0 < timed["recurrence_forward_s"] < timed["forward_s"]
        assert solver["forward_ops"] and solver["backward_ops"]
    for compiled in ("kernel", "fused"):
        if compiled in solvers:
            assert [row["threads"] for row in profiled[f"{compiled}_threads"]] == [1, 2]
    retained = results["results_freed_memory_retained"]  # glibc: the fast solvers again
    if retained:
        again = {row["solver"] for row in retained[0]["rows"]}
        assert again == solvers & {"fast", "fast-bounded", "kernel", "fused"}
        assert all(row["floor_x"] > 0 for row in retained[0]["rows"])


def test_scaling_benchmark_smoke(tmp_path):
    results = _run("scaling.py", tmp_path / "scaling.json")
    for sweep in ("hidden", "channels"):
        rows = results["results"][sweep]
        assert [row["model"] for row in rows] == ["delta_cde", "ncde"] * 2
        for fwp, ncde in zip(rows[::2], rows[1::2], strict=True):
            assert ncde["field_outputs"] == ncde["hidden"] * ncde["channels"]
            assert fwp["field_outputs"] < ncde["field_outputs"]  # 2 H + heads < H C, C >= 3
            assert ncde["time_vs_fwp"] > 0

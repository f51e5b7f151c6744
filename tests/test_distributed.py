"""Multi-process training: ``torchrun --nproc_per_node=2 -m fwplab train`` on CPU (gloo)
trains like one process with the same global batch, writes files from rank 0 only,
and gets non-zero adjoint gradients under DistributedDataParallel (torchdiffeq
issue #119: adjoint gradients were once silently zero under DataParallel)."""

import json
import subprocess
import sys

import pytest
import torch.distributed as dist

from fwplab.cli import main
from fwplab.train import CHECKPOINT_NAME, METRICS_NAME, load_checkpoint
from test_train import one_thread, write_ts_pair  # noqa: F401 (autouse fixture)

#: Two processes sum gradients in another order than one: equal up to float32 round-off.
RTOL_DISTRIBUTED = 1e-5
PROCESSES = 2
LAUNCH_TIMEOUT_S = 240


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_processes_match_one_with_the_same_global_batch_and_adjoint(tmp_path):
    train, test = write_ts_pair(tmp_path, n_train=16, n_test=8)
    flags = ["--train", str(train), "--test", str(test), "--hidden", "8", "--heads", "2",
             "--epochs", "2", "--batch-size", "8", "--lr", "0.01", "--adjoint",
             "--device", "cpu", "--no-progress"]
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc_per_node={PROCESSES}", "-m", "fwplab", "train", *flags,
         "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert main(["train", *flags, "--out", str(tmp_path / "one")]) == 0

    two, one = (json.loads((tmp_path / name / METRICS_NAME).read_text())
                for name in ("two", "one"))
    assert (two["processes"], one["processes"]) == (PROCESSES, 1)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [CHECKPOINT_NAME, METRICS_NAME]
    for mine, single in zip(two["history"], one["history"], strict=True):
        assert mine["grad_norm"] > 0  # the adjoint gradients reach the parameters
        for key in ("train_loss", "grad_norm"):
            assert mine[key] == pytest.approx(single[key], rel=RTOL_DISTRIBUTED)
    assert two["test_loss"] == pytest.approx(one["test_loss"], rel=RTOL_DISTRIBUTED)
    assert two["history"][-1]["train_loss"] < two["history"][0]["train_loss"]
    weights = [load_checkpoint(tmp_path / name)["model"] for name in ("two", "one")]
    for key, value in weights[1].items():
        assert weights[0][key].allclose(value, rtol=RTOL_DISTRIBUTED, atol=1e-7), key

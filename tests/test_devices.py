"""Where models run and how the process keeps memory: ``pick_device`` and
``retain_freed_memory`` (each memory setting in a fresh process: it cannot be undone)."""

import platform
import subprocess
import sys

import pytest
import torch

import fwplab

#: A training step's pattern: ten 20 MiB tensors written, then all freed; the minor page
#: faults of three such rounds after three first ones, per round, are printed.
FAULTS_PER_ROUND = """
import ctypes, ctypes.util, resource, sys, torch, fwplab
if sys.argv[1] == "retain":
    assert fwplab.retain_freed_memory() is True
    assert fwplab.retain_freed_memory() is True  # a second call changes nothing
else:  # glibc's thresholds at their initial 128 KiB, fixed (its adaptive ones move with
    # whatever the process allocated before, e.g. which modules it imported)
    mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    assert mallopt(-3, 128 * 1024) and mallopt(-1, 128 * 1024)
def step():
    blocks = [torch.ones(5 * 2**20) for _ in range(10)]
    del blocks
for _ in range(3):  # the heap reaches its working size
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
"""


def _faults_per_round(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", FAULTS_PER_ROUND, mode], check=True,
                          capture_output=True, text=True)
    return float(done.stdout.split()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_retained_memory_is_reused_without_page_faults():
    default, retained = _faults_per_round("default"), _faults_per_round("retain")
    pages = 10 * 20 * 2**20 / 4096  # the round's pages: with glibc's initial thresholds
    # every block is mapped and unmapped again, so each of them faults every round
    assert retained < 0.05 * pages, (retained, pages)
    assert default > 3 * retained, (default, retained)


def test_pick_device_names_the_cpu_without_a_gpu_and_refuses_unknown_preferences(capsys):
    device = fwplab.pick_device("cpu")
    assert device == torch.device("cpu")
    assert "CPU requested" in capsys.readouterr().out
    with pytest.raises(ValueError, match="prefer: expected 'cuda' or 'cpu', got 'tpu'"):
        fwplab.pick_device("tpu")

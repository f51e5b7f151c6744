"""The compiled kernel's cache: locks that die with their process, keys, verification, off.

Builds here compile a one-line C++ file (a fraction of a second); the libraries are loaded
in subprocesses that load ``fwplab/kernels/build.py`` by path (no torch), so a library
that would crash its process cannot take the test run with it.
"""

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fwplab import kernels
from fwplab.kernels import build

BUILD_PY = Path(build.__file__)
LABEL = "test"
#: Loads ``argv[1]`` through the cache and prints the library's ``fwplab_value()``.
LOADER = f"""
import ctypes, importlib.util, sys
spec = importlib.util.spec_from_file_location("kernel_build", {str(BUILD_PY)!r})
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)
print(ctypes.CDLL(str(build.cached_library(sys.argv[1], {LABEL!r}))).fwplab_value())
"""


def _has_compiler() -> bool:
    try:
        build.compiler()
    except RuntimeError:
        return False
    return True


needs_compiler = pytest.mark.skipif(not _has_compiler(), reason="no C++ compiler")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache root of the test's own; default wait."""
    root = tmp_path / "cache"
    monkeypatch.setenv("FWPLAB_KERNEL_CACHE", str(root))
    monkeypatch.delenv("FWPLAB_KERNEL_WAIT", raising=False)
    return root


def _source(checkout: Path, value: int) -> Path:
    """A checkout's ``recurrence.cpp`` exporting ``fwplab_value() == value``."""
    checkout.mkdir(parents=True, exist_ok=True)
    path = checkout / "recurrence.cpp"
    path.write_text(f'extern "C" int fwplab_value() {{ return {value}; }}\n')
    return path


def _script(path: Path, body: str) -> Path:
    """An executable shell script standing in for a compiler."""
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def _load(source: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LOADER, str(source)], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=120)


def _fwplab_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("fwplab:")]


@needs_compiler
def test_a_build_killed_half_way_blocks_no_later_load(tmp_path, cache, monkeypatch, capsys):
    """A live build makes others wait (said once, bounded); killed, it leaves no lock."""
    source = _source(tmp_path / "checkout", 1)
    slow = _script(tmp_path / "slow-compiler", "sleep 300")
    holder = subprocess.Popen([sys.executable, "-c", LOADER, str(source)],
                              env={**os.environ, "CXX": str(slow)}, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        ready, _, _ = select.select([holder.stderr], [], [], 60)
        assert ready and "compiling the kernel" in holder.stderr.readline()
        monkeypatch.setenv("FWPLAB_KERNEL_WAIT", "0.5")
        with pytest.raises(RuntimeError, match=r"another process has been compiling the kernel "
                                               r"in .* for over 0.5 s; gave up waiting \("
                                               r"FWPLAB_KERNEL_WAIT sets the wait\)$"):
            build.cached_library(source, LABEL)
        assert _fwplab_lines(capsys.readouterr().err) == [
            f"fwplab: waiting for another process compiling the kernel in {cache} "
            "(at most 0.5 s)"]
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
        holder.stderr.close()
    assert holder.returncode == -signal.SIGKILL and (cache / ".lock").exists()
    monkeypatch.setenv("FWPLAB_KERNEL_WAIT", "600")
    done = _load(source)
    assert done.returncode == 0 and done.stdout.split() == ["1"]
    assert "waiting" not in done.stderr


@needs_compiler
def test_a_process_waiting_for_a_build_loads_its_library_without_compiling(tmp_path, cache,
                                                                            monkeypatch):
    """The builder's compiler holds on until the other process says it waits."""
    source, go = _source(tmp_path / "checkout", 7), tmp_path / "go"
    real = " ".join(build.compiler())
    monkeypatch.setenv("CXX", str(_script(tmp_path / "held-compiler",
                                          f'while [ ! -e "{go}" ]; do sleep 0.05; done\n'
                                          f'exec {real} "$@"')))
    started = [subprocess.Popen([sys.executable, "-c", LOADER, str(source)], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)]
    try:
        ready, _, _ = select.select([started[0].stderr], [], [], 60)
        assert ready and "compiling the kernel" in started[0].stderr.readline()
        started.append(subprocess.Popen([sys.executable, "-c", LOADER, str(source)], text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        ready, _, _ = select.select([started[1].stderr], [], [], 60)
        assert ready and started[1].stderr.readline() == (
            f"fwplab: waiting for another process compiling the kernel in {cache} "
            f"(at most {build.DEFAULT_WAIT_SECONDS:g} s)\n")
    finally:
        go.touch()
        outputs = [process.communicate(timeout=120) for process in started]
    (builder_out, _), (waiter_out, waiter_err) = outputs
    assert builder_out.split() == waiter_out.split() == ["7"]
    assert waiter_err == ""  # no second compile


@needs_compiler
def test_checkouts_with_different_sources_never_share_a_library(tmp_path, cache):
    first, second = _source(tmp_path / "one", 1), _source(tmp_path / "two", 2)
    folders = build.library_directory(first, LABEL), build.library_directory(second, LABEL)
    assert folders[0] != folders[1] and folders[0].parent == folders[1].parent == cache
    assert [_load(path).stdout.split() for path in (first, second, first)] == [["1"], ["2"],
                                                                               ["1"]]
    # The other checkout's library and manifest, moved into this one's folder, are refused.
    for name in ("recurrence.so", build.MANIFEST_NAME):
        os.replace(folders[1] / name, folders[0] / name)
    done = _load(first)
    assert done.returncode == 0 and done.stdout.split() == ["1"]
    assert _fwplab_lines(done.stderr)[0] == (
        f"fwplab: the cached kernel in {folders[0]} is damaged (built from another source, "
        "compiler or flags); rebuilding it")


@needs_compiler
def test_the_first_build_says_so_with_its_time_and_later_loads_are_silent(tmp_path):
    source = _source(tmp_path / "checkout", 3)
    folder = build.library_directory(source, LABEL)
    first, again = _load(source), _load(source)
    assert first.stdout.split() == again.stdout.split() == ["3"]
    lines = _fwplab_lines(first.stderr)
    assert lines[0] == (f"fwplab: compiling the kernel (once: it is cached in {folder} for "
                        "later runs)")
    assert len(lines) == 2 and lines[1].startswith("fwplab: kernel compiled in ")
    assert first.stderr == "\n".join(lines) + "\n" and again.stderr == ""


def _truncate(library: Path) -> None:
    data = library.read_bytes()
    library.write_bytes(data[: len(data) * 3 // 5])


def _flip_a_byte(library: Path) -> None:
    data = bytearray(library.read_bytes())
    data[len(data) // 2] ^= 0xFF
    library.write_bytes(bytes(data))


DAMAGE = {
    "truncated": (_truncate, "recurrence.so has {size} bytes, {full} were written"),
    "changed": (_flip_a_byte, "recurrence.so differs from its recorded sha256"),
    "deleted": (Path.unlink, "recurrence.so is missing"),
}


@needs_compiler
@pytest.mark.parametrize("damage", [*DAMAGE, "manifest"])
def test_a_damaged_library_is_rebuilt_never_loaded(tmp_path, damage):
    """A truncated library ended every run with SIGBUS; now it is rebuilt, with one line."""
    source = _source(tmp_path / "checkout", 4)
    assert _load(source).stdout.split() == ["4"]
    folder = build.library_directory(source, LABEL)
    library = folder / "recurrence.so"
    full = library.stat().st_size
    if damage == "manifest":
        (folder / build.MANIFEST_NAME).write_text("{not json")
        problem = f"unreadable {build.MANIFEST_NAME}"
    else:
        spoil, problem = DAMAGE[damage]
        spoil(library)
        problem = problem.format(size=full * 3 // 5, full=full)
    (folder / ".build-left-by-a-killed-build").mkdir()
    done = _load(source)
    assert done.returncode == 0 and done.stdout.split() == ["4"]
    lines = _fwplab_lines(done.stderr)
    assert lines[0] == f"fwplab: the cached kernel in {folder} is damaged ({problem}); rebuilding it"
    assert len(lines) == 3 and "compiling the kernel" in lines[1]
    assert sorted(p.name for p in folder.iterdir()) == [build.MANIFEST_NAME, "recurrence.so"]


def test_no_compiler_is_one_line_and_touches_nothing(tmp_path, cache, monkeypatch):
    source = _source(tmp_path / "checkout", 5)
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(RuntimeError, match=r"^no C\+\+ compiler: CXX='.*no-such-compiler' is not an "
                                           r"executable program; set CXX to one \(e\.g\. g\+\+\) "
                                           r"or unset it$"):
        build.cached_library(source, LABEL)
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match=r"^no C\+\+ compiler: none of c\+\+, g\+\+, clang\+\+ "
                                           r"is on PATH; install one"):
        build.cached_library(source, LABEL)
    assert not cache.exists()


def test_a_failing_compiler_is_one_line_and_caches_nothing(tmp_path, cache, monkeypatch):
    source = _source(tmp_path / "checkout", 6)
    failing = _script(tmp_path / "failing-compiler",
                      'echo "note: something" >&2\necho "x.cpp:1:1: error: boom" >&2\nexit 1')
    monkeypatch.setenv("CXX", str(failing))
    with pytest.raises(RuntimeError, match=r"^build failed: x\.cpp:1:1: error: boom$"):
        build.cached_library(source, LABEL)
    folder = build.library_directory(source, LABEL)
    assert list(folder.iterdir()) == []  # the next run tries again


def test_a_bad_wait_is_one_line(monkeypatch):
    monkeypatch.setenv("FWPLAB_KERNEL_WAIT", "soon")
    with pytest.raises(RuntimeError, match=r"^FWPLAB_KERNEL_WAIT: expected seconds \(a number "
                                           r">= 0\), got 'soon'$"):
        build.wait_seconds()
    monkeypatch.setenv("FWPLAB_KERNEL_WAIT", "2.5")
    assert build.wait_seconds() == 2.5


RUN_A_MODEL = """
import warnings
import torch
import fwplab
from fwplab import kernels
warnings.simplefilter("always")
model = fwplab.build_model("delta_cde", 4, 3, hidden_channels=8, num_heads=2, ff_channels=16)
x = torch.randn(2, 6, 4)
x[..., 0] = torch.arange(6.0)
model(x).sum().backward()
print(model.selected_solver(), kernels.available(), kernels.prepare(model))
try:
    kernels.load()
except RuntimeError as error:
    print(error)
"""


def _run_a_model(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    spy = tmp_path / "compiler-ran"
    compiler = _script(tmp_path / "spy-compiler", f'touch "{spy}"\nexit 1')
    return subprocess.run([sys.executable, "-c", RUN_A_MODEL], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "CXX": str(compiler),
                                            "OMP_NUM_THREADS": "1", **env})


def test_kernel_off_builds_loads_and_locks_nothing(tmp_path, cache):
    """``FWPLAB_KERNEL=0`` built and loaded the kernel all the same (18 s of a 1.3 s run)."""
    done = _run_a_model(tmp_path, FWPLAB_KERNEL="0")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["fast False False", kernels.TURNED_OFF]
    assert not cache.exists() and not (tmp_path / "compiler-ran").exists()
    assert "fwplab" not in done.stderr


def test_a_failed_build_falls_back_to_the_fast_path_with_one_warning(tmp_path, cache):
    done = _run_a_model(tmp_path, FWPLAB_KERNEL="1")
    assert done.returncode == 0, done.stderr[-2000:]
    message = "fwplab kernel: build failed: exit 1"
    assert done.stdout.splitlines() == ["fast False False", message]
    assert (tmp_path / "compiler-ran").exists()
    warned = [line for line in done.stderr.splitlines() if "RuntimeWarning" in line]
    assert len(warned) == 1 and warned[0].endswith(
        f"RuntimeWarning: {message}; using the pure-PyTorch fast path instead")

"""Compiling the kernel once and finding it again: a cache that is keyed, locked and verified.

The library is compiled straight with the system's C++ compiler (``$CXX``, else the first
of ``c++``, ``g++``, ``clang++``): the source needs no PyTorch or Python headers, so the
build bakes in no environment's paths and needs no ``ninja``. It goes into one folder per
*build key*::

    key = sha256(source bytes, compiler path, flag sets, label, python, platform, cpu)

(``label`` is the caller's own part, e.g. the torch version), named
``<cache root>/<label>-<python>-<machine>-<key[:16]>``, where the cache root is
``$FWPLAB_KERNEL_CACHE`` or ``~/.cache/fwplab/kernels``. Two checkouts or environments
with different sources or compilers never share a folder; those with the same ones share
it (one build per machine).

A folder holds the library and ``manifest.json`` (the full key, the library's size and
sha256, the flags that compiled it). A library is loaded only when the manifest's key is
the expected one and the file's size and sha256 are the recorded ones, so a truncated or
foreign library is never mapped (mapping a truncated one ends the process with SIGBUS);
such a folder is rebuilt, with one line on stderr.

A build takes an OS lock on ``<cache root>/.lock`` (``fcntl.flock``: it ends with its
process, so a build killed half-way blocks nobody), compiles into a scratch folder, and
moves the library and then the manifest into place by rename: a reader sees a complete
library or a mismatch, never half a file. A process that finds another one building says
so once and waits at most ``$FWPLAB_KERNEL_WAIT`` seconds (default
:data:`DEFAULT_WAIT_SECONDS`), then gives up with one line. Verified cache hits take no
lock. Where ``fcntl`` does not exist (Windows), builds take no lock: two of them at once
only compile twice.

This module uses the standard library only (it is loaded by path in tests, without
torch).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = [
    "DEFAULT_WAIT_SECONDS",
    "MANIFEST_NAME",
    "cache_root",
    "cached_library",
    "compiler",
    "flag_sets",
    "library_directory",
    "wait_seconds",
]

#: Seconds to wait for another process's build before giving up (about ten builds).
DEFAULT_WAIT_SECONDS = 300.0
#: The file beside the library recording what it was built from and its size and hash.
MANIFEST_NAME = "manifest.json"
_COMPILERS = ("c++", "g++", "clang++")
_COMMON_FLAGS = ["-std=c++17", "-fPIC", "-shared"]
#: Built with it, the kernel runs its groups on the OpenMP threads PyTorch already has.
OPENMP_FLAG = "-fopenmp"


def _say(message: str) -> None:
    print(f"fwplab: {message}", file=sys.stderr, flush=True)


def compiler() -> list[str]:
    """The compiler command: ``$CXX`` (split like a shell word list) or the first of
    ``c++``, ``g++``, ``clang++`` on ``PATH``, its program resolved to a full path.

    Raises:
        RuntimeError: none is found (one line naming what was looked for, and the fix).
    """
    chosen = os.environ.get("CXX", "").strip()
    if chosen:
        words = shlex.split(chosen)
        program = shutil.which(words[0])
        if program is None:
            raise RuntimeError(f"no C++ compiler: CXX={chosen!r} is not an executable program; "
                               "set CXX to one (e.g. g++) or unset it")
        return [os.path.realpath(program), *words[1:]]
    for name in _COMPILERS:
        program = shutil.which(name)
        if program is not None:
            return [os.path.realpath(program)]
    raise RuntimeError(f"no C++ compiler: none of {', '.join(_COMPILERS)} is on PATH; install "
                       "one (e.g. apt install g++, xcode-select --install) or set CXX")


def flag_sets() -> list[list[str]]:
    """Flag sets to try in order: with OpenMP and the host's instruction set, without
    OpenMP (threads of its own), then without either (``-march=native``, ``-mcpu=native``
    on ARM, since the code is compiled for this CPU)."""
    # The flags PyTorch itself is built with, which let loops with comparisons vectorise.
    base = ["-O3", "-ffp-contract=fast", "-fno-trapping-math", "-fno-math-errno", "-pthread"]
    machine = platform.machine().lower()
    native = ["-mcpu=native"] if machine in ("arm64", "aarch64") else ["-march=native"]
    return [base + native + [OPENMP_FLAG], base + native, base]


def cache_root() -> Path:
    """``$FWPLAB_KERNEL_CACHE`` or ``~/.cache/fwplab/kernels``: where the build folders lie."""
    root = os.environ.get("FWPLAB_KERNEL_CACHE", "").strip()
    return Path(root).expanduser() if root else Path.home() / ".cache" / "fwplab" / "kernels"


def wait_seconds() -> float:
    """``$FWPLAB_KERNEL_WAIT`` (seconds >= 0) or :data:`DEFAULT_WAIT_SECONDS`.

    Raises:
        RuntimeError: the variable is not a number >= 0 (one line).
    """
    text = os.environ.get("FWPLAB_KERNEL_WAIT", "").strip()
    if not text:
        return DEFAULT_WAIT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise RuntimeError(f"FWPLAB_KERNEL_WAIT: expected seconds (a number >= 0), got {text!r}")
    return seconds


def _cpu_tag() -> str:
    """A description of the CPU model and its instruction set extensions."""
    description = platform.processor()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        description += "".join(sorted({line for line in lines
                                       if line.startswith(("model name", "flags", "Features"))}))
    return description


def _key(source: bytes, command: list[str], label: str) -> str:
    """The build key: sha256 of everything the library depends on."""
    parts = {"source": hashlib.sha256(source).hexdigest(), "compiler": command,
             "flags": [_COMMON_FLAGS, *flag_sets()], "label": label,
             "python": sys.implementation.cache_tag, "platform": sys.platform,
             "machine": platform.machine(), "cpu": _cpu_tag()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _folder_name(label: str, key: str) -> str:
    readable = f"{label}-{sys.implementation.cache_tag}-{platform.machine() or 'cpu'}"
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in readable) + f"-{key[:16]}"


def library_directory(source: Path, label: str = "") -> Path:
    """The cache folder of ``source`` built with this compiler on this machine.

    Raises:
        RuntimeError: no compiler (see :func:`compiler`); the source cannot be read.
    """
    return cache_root() / _folder_name(label, _key(_read(source), compiler(), label))


def _read(source: Path) -> bytes:
    try:
        return Path(source).read_bytes()
    except OSError as error:
        raise RuntimeError(f"source: cannot read {source} ({error.strerror})") from None


def _library_name(source: Path) -> str:
    return Path(source).stem + (".dll" if sys.platform == "win32" else ".so")


def _verified(directory: Path, key: str) -> tuple[Optional[Path], Optional[str]]:
    """The folder's library if its manifest records ``key`` and its size and sha256 match;
    else ``None`` and what is wrong (``None`` when nothing was built there yet)."""
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.exists():
        return None, None
    try:
        manifest = json.loads(manifest_path.read_text())
        library = directory / str(manifest["library"])
        size, digest = int(manifest["size"]), str(manifest["sha256"])
        recorded_key = str(manifest["key"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"unreadable {MANIFEST_NAME}"
    if recorded_key != key:
        return None, "built from another source, compiler or flags"
    try:
        data = library.read_bytes()
    except OSError:
        return None, f"{library.name} is missing"
    if len(data) != size:
        return None, f"{library.name} has {len(data)} bytes, {size} were written"
    if hashlib.sha256(data).hexdigest() != digest:
        return None, f"{library.name} differs from its recorded sha256"
    return library, None


@contextlib.contextmanager
def _build_lock(root: Path, wait: float) -> Iterator[None]:
    """Hold the cache's build lock, waiting at most ``wait`` seconds for another process."""
    if fcntl is None:
        yield
        return
    with open(root / ".lock", "a") as handle:
        deadline, told = time.monotonic() + wait, False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"another process has been compiling the kernel in {root} for over "
                        f"{wait:g} s; gave up waiting (FWPLAB_KERNEL_WAIT sets the wait)") from None
                if not told:
                    _say(f"waiting for another process compiling the kernel in {root} "
                         f"(at most {wait:g} s)")
                    told = True
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _compile(source: Path, command: list[str], scratch: Path) -> tuple[Path, list[str]]:
    """Compile ``source`` into ``scratch`` with the first flag set that works."""
    output = scratch / _library_name(source)
    failures = []
    for flags in flag_sets():
        try:
            done = subprocess.run([*command, *_COMMON_FLAGS, *flags, str(source), "-o",
                                   str(output)], capture_output=True, text=True, errors="replace")
        except OSError as error:
            raise RuntimeError(f"build failed: cannot run {command[0]} "
                               f"({error.strerror or error})") from None
        if done.returncode == 0 and output.exists():
            return output, flags
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower()] or lines
        failures.append(" ".join((errors[0] if errors else f"exit {done.returncode}").split())
                        [:200])
    raise RuntimeError("build failed: " + " | ".join(dict.fromkeys(failures)))


def _build(source: Path, command: list[str], directory: Path, key: str) -> Path:
    """Compile into a scratch folder, then move the library and its manifest into place."""
    directory.mkdir(parents=True, exist_ok=True)
    for leftover in directory.glob(".build-*"):  # from builds killed half-way (we hold the lock)
        shutil.rmtree(leftover, ignore_errors=True)
    _say(f"compiling the kernel (once: it is cached in {directory} for later runs)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".build-", dir=directory) as scratch:
        built, flags = _compile(source, command, Path(scratch))
        data = built.read_bytes()
        library = directory / built.name
        os.replace(built, library)
        manifest = {"key": key, "library": library.name, "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(), "source": str(source),
                    "compiler": command, "flags": [*_COMMON_FLAGS, *flags]}
        written = Path(scratch) / MANIFEST_NAME
        written.write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(written, directory / MANIFEST_NAME)
    _say(f"kernel compiled in {time.perf_counter() - started:.1f} s")
    return library


def cached_library(source: Path, label: str = "") -> Path:
    """The verified library built from ``source``, compiling it first if needed.

    Args:
        source: a C++ file exporting ``extern "C"`` functions.
        label: the caller's part of the build key and folder name (e.g. ``"torch2.5.1"``).

    Returns:
        The path of a complete library whose manifest matches this build key.

    Raises:
        RuntimeError: one line: no compiler, a failed build, an unwritable cache, or another
            process's build outlasting :func:`wait_seconds`.
    """
    source = Path(source).resolve()
    command = compiler()
    key = _key(_read(source), command, label)
    directory = cache_root() / _folder_name(label, key)
    library, _ = _verified(directory, key)
    if library is not None:
        return library
    wait = wait_seconds()
    try:
        cache_root().mkdir(parents=True, exist_ok=True)
        with _build_lock(cache_root(), wait):
            library, problem = _verified(directory, key)  # built while we waited?
            if library is not None:
                return library
            if problem is not None:
                _say(f"the cached kernel in {directory} is damaged ({problem}); rebuilding it")
            return _build(source, command, directory, key)
    except OSError as error:
        raise RuntimeError(f"cache: cannot write in {cache_root()} "
                           f"({error.strerror or error}); set FWPLAB_KERNEL_CACHE to a writable "
                           "folder") from None

"""Downloads of the paper's datasets: one URL table, checksums, safe extraction.

Files go to a cache folder: ``$FWPLAB_DATA`` if set, else ``$XDG_CACHE_HOME/fwplab``
(``~/.cache/fwplab``). Each dataset gets ``<cache>/<name>/`` holding its archives and
``extracted/`` (written under another name and renamed once complete).

Checksums: a download is written to a temporary file, its SHA-256 compared with
the table, and only then renamed into place; a mismatch deletes it. Where no
checksum is published (``sha256=None`` in :data:`REMOTE_DATASETS`) fwplab refuses
the file unless the user accepts it explicitly: ``allow_unverified=True`` or the
environment variable ``FWPLAB_ALLOW_UNVERIFIED=1``; it then warns with the file's
SHA-256 so it can be recorded.

Extraction (:func:`safe_extract`) refuses members with absolute paths, ``..``
components, links that lead outside the target (checked on the file system, so a chain
of links cannot escape), hard links to anything but a file extracted before them,
special files, and archives that expand past :data:`MAX_EXTRACTED_BYTES` or more than
:data:`MAX_COMPRESSION_RATIO`-fold; it writes into a temporary folder that becomes the
target only when complete, so a refused archive leaves nothing behind.

To download by hand, put the archive into ``<cache>/<name>/`` (it is then checked
like a download), or extract it anywhere and pass that folder as ``root=`` to
:func:`fwplab.data.load_dataset`, which skips the download and the checksum.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Optional, Union

from tqdm.auto import tqdm

__all__ = [
    "DownloadError",
    "UnsafeArchiveError",
    "RemoteFile",
    "RemoteDataset",
    "REMOTE_DATASETS",
    "data_cache_dir",
    "sha256_file",
    "fetch",
    "download_file",
    "safe_extract",
    "prepare_dataset",
]

ENV_DATA_DIR = "FWPLAB_DATA"
ENV_ALLOW_UNVERIFIED = "FWPLAB_ALLOW_UNVERIFIED"
CHUNK_BYTES = 1 << 20
COMPLETE_MARKER = ".fwplab-complete"
#: Most bytes one archive may extract to (the largest dataset, Speech Commands, is ~3.8 GB).
MAX_EXTRACTED_BYTES = 20 * 1024**3
#: Most an archive may expand relative to its own size (deflate of real data stays far below;
#: a decompression bomb is near 1000); checked once it extracts past MIN_RATIO_CHECK_BYTES.
MAX_COMPRESSION_RATIO = 100
MIN_RATIO_CHECK_BYTES = 1 << 20
#: Most members one archive may have (Speech Commands has about 106,000 files).
MAX_MEMBERS = 1_000_000
#: Longest symbolic-link text read from a zip member.
MAX_LINK_BYTES = 4096

PathLike = Union[str, Path]


class DownloadError(RuntimeError):
    """A download or cached archive that cannot be used; the message says what to do."""


class UnsafeArchiveError(DownloadError):
    """An archive member that would be written outside the extraction folder."""


@dataclass(frozen=True)
class RemoteFile:
    """One archive: where it lives, its file name in the cache, its SHA-256 (None if unknown)."""

    url: str
    filename: str
    sha256: Optional[str]


@dataclass(frozen=True)
class RemoteDataset:
    """The archives of one dataset and how to fetch them by hand."""

    files: tuple[RemoteFile, ...]
    by_hand: str


_UEA = "https://www.timeseriesclassification.com/aeon-toolkit"
REMOTE_DATASETS: dict[str, RemoteDataset] = {
    # SHA-256 as published in torchaudio's and TensorFlow Datasets' checksum tables.
    "speech-commands": RemoteDataset(
        (RemoteFile("https://storage.googleapis.com/download.tensorflow.org/data/"
                    "speech_commands_v0.02.tar.gz", "speech_commands_v0.02.tar.gz",
                    "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58"),),
        "download speech_commands_v0.02.tar.gz (2.4 GB) from "
        "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz, extract it and "
        "pass the folder holding yes/, no/, ... as root"),
    # No published checksum: PhysioNet lists files, the archive host may change.
    "sepsis": RemoteDataset(
        (RemoteFile("https://physionet.org/content/challenge-2019/get-zip/1.0.0/",
                    "challenge-2019-1.0.0.zip", None),),
        "download the PhysioNet/CinC Challenge 2019 training data from "
        "https://physionet.org/content/challenge-2019/1.0.0/ (e.g. `wget -r -N -c -np "
        "https://physionet.org/files/challenge-2019/1.0.0/`) and pass the folder holding "
        "the .psv files (any depth) as root"),
    "character-trajectories": RemoteDataset(
        (RemoteFile(f"{_UEA}/CharacterTrajectories.zip", "CharacterTrajectories.zip", None),),
        "download CharacterTrajectories.zip from "
        "https://www.timeseriesclassification.com/dataset.php and pass the zip (or the "
        "folder holding CharacterTrajectories_TRAIN.ts and _TEST.ts) as root"),
    "eigenworms": RemoteDataset(
        (RemoteFile(f"{_UEA}/EigenWorms.zip", "EigenWorms.zip", None),),
        "download EigenWorms.zip from https://www.timeseriesclassification.com/dataset.php "
        "and pass the zip (or the folder holding EigenWorms_TRAIN.ts and _TEST.ts) as root"),
}


def data_cache_dir() -> Path:
    """The cache folder: ``$FWPLAB_DATA``, else ``$XDG_CACHE_HOME/fwplab`` or ``~/.cache/fwplab``."""
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fwplab"


def sha256_file(path: PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, destination: Path) -> None:
    """Stream ``url`` (``https://``, ``http://`` or ``file://``) into ``destination``.

    Raises:
        DownloadError: the server or the file cannot be reached.
    """
    request = urllib.request.Request(url, headers={"User-Agent": "fwplab"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response, \
                open(destination, "wb") as handle:
            total = response.headers.get("Content-Length")
            with tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                      desc=destination.name.split(".part")[0], disable=None) as bar:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    handle.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as error:
        raise DownloadError(f"{url}: download failed ({error})") from None


def download_file(url: str, destination: PathLike, sha256: Optional[str]) -> str:
    """Download to a temporary file beside ``destination``, check it, then rename it.

    Args:
        url: what to download.
        destination: final path; it only appears once the download is complete and checked.
        sha256: expected hex digest, or None to skip the comparison.

    Returns:
        str: the file's hex SHA-256.

    Raises:
        DownloadError: download failure or checksum mismatch (nothing is left on disk).
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.",
                                         suffix=".part")
    os.close(handle)
    try:
        fetch(url, Path(temporary))
        digest = sha256_file(temporary)
        if sha256 is not None and digest != sha256.lower():
            raise DownloadError(f"{url}: checksum mismatch: expected sha256 {sha256}, got "
                                f"{digest}; the download was deleted")
        os.replace(temporary, destination)
        return digest
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _unsafe(archive: Path, name: str, problem: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{archive}: refusing member {name!r}: {problem}")


def _relative_member(archive: Path, name: str) -> PurePosixPath:
    """The member's path inside the target; absolute paths and '..' are refused."""
    posix = name.replace("\\", "/")
    pure = PurePosixPath(posix)
    if pure.is_absolute() or PureWindowsPath(name).drive:
        raise _unsafe(archive, name, "absolute path")
    if ".." in pure.parts:
        raise _unsafe(archive, name, "'..' in its path")
    if not pure.parts or pure == PurePosixPath("."):
        raise _unsafe(archive, name, "empty path")
    return pure


def _check_link(archive: Path, name: str, link: str, relative_to_member: bool) -> PurePosixPath:
    """The link's target as text inside the extraction folder; a target outside it is refused.

    This is the first, textual check; :func:`safe_extract` checks again against the
    folder as extracted so far, where earlier links take part.
    """
    if PurePosixPath(link).is_absolute() or PureWindowsPath(link).drive:
        raise _unsafe(archive, name, f"link to absolute path {link!r}")
    base = PurePosixPath(name).parent if relative_to_member else PurePosixPath()
    resolved = os.path.normpath(str(base / link))
    if resolved == ".." or resolved.startswith("../"):
        raise _unsafe(archive, name, f"link to {link!r} leaves the extraction folder")
    return PurePosixPath(resolved)


@dataclass
class _Entry:
    """One archive member: kind is 'dir', 'file', 'symlink' or 'hardlink'."""

    kind: str
    name: str
    path: PurePosixPath
    size: int = 0
    link: str = ""
    payload: object = None


def _zip_entries(archive: Path, handle: zipfile.ZipFile) -> list[_Entry]:
    entries = []
    for info in handle.infolist():
        path = _relative_member(archive, info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            if info.file_size > MAX_LINK_BYTES:
                raise _unsafe(archive, info.filename, f"link text of {info.file_size} bytes")
            link = handle.read(info).decode("utf-8", errors="replace")
            _check_link(archive, info.filename, link, relative_to_member=True)
            entries.append(_Entry("symlink", info.filename, path, link=link))
        elif info.is_dir():
            entries.append(_Entry("dir", info.filename, path))
        elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            raise _unsafe(archive, info.filename, "device, fifo or other special file")
        else:
            entries.append(_Entry("file", info.filename, path, info.file_size, payload=info))
    return entries


def _tar_entries(archive: Path, handle: tarfile.TarFile) -> list[_Entry]:
    entries = []
    for member in handle.getmembers():
        path = _relative_member(archive, member.name)
        if member.issym():
            _check_link(archive, member.name, member.linkname, relative_to_member=True)
            entries.append(_Entry("symlink", member.name, path, link=member.linkname))
        elif member.islnk():
            target = _check_link(archive, member.name, member.linkname, relative_to_member=False)
            entries.append(_Entry("hardlink", member.name, path, link=str(target)))
        elif member.isdir():
            entries.append(_Entry("dir", member.name, path))
        elif member.isfile():
            entries.append(_Entry("file", member.name, path, member.size, payload=member))
        else:
            raise _unsafe(archive, member.name, "device, fifo or other special file")
    return entries


def _check_sizes(archive: Path, entries: list[_Entry]) -> None:
    """Refuse archives that would expand past :data:`MAX_EXTRACTED_BYTES` or too steeply,
    or hold more than :data:`MAX_MEMBERS` members."""
    if len(entries) > MAX_MEMBERS:
        raise UnsafeArchiveError(f"{archive}: has {len(entries)} members, more than the limit "
                                 f"of {MAX_MEMBERS} (fwplab.data.download.MAX_MEMBERS)")
    total = sum(entry.size for entry in entries)
    sizes = {entry.path: entry.size for entry in entries if entry.kind == "file"}
    total += sum(sizes.get(PurePosixPath(entry.link), 0) for entry in entries
                 if entry.kind == "hardlink")
    if total > MAX_EXTRACTED_BYTES:
        raise UnsafeArchiveError(f"{archive}: would extract {total} bytes, more than the limit "
                                 f"of {MAX_EXTRACTED_BYTES} (fwplab.data.download."
                                 "MAX_EXTRACTED_BYTES)")
    packed = max(archive.stat().st_size, 1)
    if total > MIN_RATIO_CHECK_BYTES and total / packed > MAX_COMPRESSION_RATIO:
        raise UnsafeArchiveError(f"{archive}: expands {total / packed:.0f}-fold ({packed} to "
                                 f"{total} bytes), more than the limit of "
                                 f"{MAX_COMPRESSION_RATIO} (a decompression bomb?)")


def _inside(root: Path, path: Path) -> bool:
    """Whether ``path``, with every link on the way resolved on disk, lies in ``root``."""
    return Path(os.path.realpath(path)).is_relative_to(root)


def _copy_limited(source, destination: Path, budget: list[int], archive: Path,
                  name: str) -> None:
    """Copy a member's bytes, counting them against the whole archive's budget."""
    with source, open(destination, "xb") as output:
        for chunk in iter(lambda: source.read(CHUNK_BYTES), b""):
            budget[0] -= len(chunk)
            if budget[0] < 0:
                raise UnsafeArchiveError(f"{archive}: member {name!r} holds more bytes than "
                                         "the archive declares")
            output.write(chunk)


def _extract_into(archive: Path, handle, entries: list[_Entry], staging: Path) -> None:
    """Write the checked entries into the empty folder ``staging``, checking on disk."""
    root = Path(os.path.realpath(staging))
    budget = [sum(entry.size for entry in entries)]
    extracted_files: set[PurePosixPath] = set()
    for entry in entries:
        destination = staging / entry.path
        if not _inside(root, destination.parent) or not _inside(root, destination):
            raise _unsafe(archive, entry.name, "it leads outside the extraction folder "
                          "through a link")
        if destination.is_symlink():
            raise _unsafe(archive, entry.name, "it would overwrite a link")
        if entry.kind == "dir":
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        if destination.exists():
            raise _unsafe(archive, entry.name, "a second member of the same name")
        if entry.kind == "symlink":
            if not _inside(root, destination.parent / entry.link):
                raise _unsafe(archive, entry.name, f"link to {entry.link!r} leaves the "
                              "extraction folder")
            os.symlink(entry.link, destination)
        elif entry.kind == "hardlink":
            source = PurePosixPath(entry.link)
            if source not in extracted_files:
                raise _unsafe(archive, entry.name, f"hard link to {entry.link!r}, which is not "
                              "a file extracted before it")
            if not _inside(root, staging / source):
                raise _unsafe(archive, entry.name, f"hard link to {entry.link!r} leaves the "
                              "extraction folder")
            shutil.copyfile(staging / source, destination, follow_symlinks=False)
            extracted_files.add(entry.path)
        else:
            source = handle.open(entry.payload) if isinstance(handle, zipfile.ZipFile) else \
                handle.extractfile(entry.payload)
            _copy_limited(source, destination, budget, archive, entry.name)
            extracted_files.add(entry.path)
    for folder, names, files in os.walk(staging):
        for name in names + files:
            path = Path(folder) / name
            if path.is_symlink() and not _inside(root, path):
                member = path.relative_to(staging).as_posix()
                raise _unsafe(archive, member, f"link to {os.readlink(path)!r} leaves the "
                              "extraction folder once the links after it exist")


def safe_extract(archive: PathLike, target: PathLike) -> Path:
    """Extract a zip or tar (plain, gz, bz2, xz) archive into ``target``, safely.

    Checks, all raising :class:`UnsafeArchiveError`:

    - before anything is written, on the member list: absolute paths, ``..``
      components, links whose text points outside, special files (devices, fifos),
      more than :data:`MAX_MEMBERS` members,
      and size: more than :data:`MAX_EXTRACTED_BYTES` in all, or (past
      :data:`MIN_RATIO_CHECK_BYTES`) more than :data:`MAX_COMPRESSION_RATIO` times the
      archive's own size;
    - while writing, on the real file system: every member's destination and its
      folders are resolved through the links extracted so far and must stay inside;
      symbolic links must resolve inside; hard links may only name a file extracted
      before them (they become copies); no member overwrites another or a link;
    - at the end: every symbolic link, now that all exist, still resolves inside.

    Everything is written into a temporary folder beside ``target``, renamed to
    ``target`` only when complete; on any error it is deleted, so nothing is left.

    Args:
        archive: the zip or tar file.
        target: a folder that does not exist yet (or is empty).

    Returns:
        Path: ``target``.

    Raises:
        DownloadError: not an archive, or ``target`` holds files;
            :class:`UnsafeArchiveError` for the checks above.
    """
    archive, target = Path(archive), Path(target)
    if zipfile.is_zipfile(archive):
        opener, reader = zipfile.ZipFile, _zip_entries
    elif tarfile.is_tarfile(archive):
        opener, reader = tarfile.open, _tar_entries
    else:
        raise DownloadError(f"{archive}: not a zip or tar archive")
    if target.is_symlink() or (target.exists() and (not target.is_dir()
                                                    or any(target.iterdir()))):
        raise DownloadError(f"{target}: expected a new or empty folder to extract into, "
                            "found existing content")
    with opener(archive) as handle:
        entries = reader(archive, handle)
        _check_sizes(archive, entries)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.",
                                        suffix=".partial"))
        try:
            _extract_into(archive, handle, entries, staging)
            if target.exists():
                target.rmdir()
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _allow_unverified(allow_unverified: bool) -> bool:
    return allow_unverified or os.environ.get(ENV_ALLOW_UNVERIFIED, "") not in ("", "0")


def _unverified_refusal(name: str, remote: RemoteFile, spec: RemoteDataset) -> DownloadError:
    return DownloadError(
        f"{name}: no published sha256 for {remote.url}, so fwplab will not use it unverified; "
        f"accept it with allow_unverified=True or {ENV_ALLOW_UNVERIFIED}=1, or {spec.by_hand}")


def prepare_dataset(
    name: str, cache_dir: Optional[PathLike] = None, download: bool = True,
    allow_unverified: bool = False,
) -> Path:
    """Make sure a dataset's archives are present, checked and extracted; return the folder.

    Args:
        name: a key of :data:`REMOTE_DATASETS`.
        cache_dir: the cache folder; defaults to :func:`data_cache_dir`.
        download: fetch missing archives (otherwise a missing archive is an error).
        allow_unverified: accept archives without a published checksum (also
            ``FWPLAB_ALLOW_UNVERIFIED=1``); they are used with a warning giving their sha256.

    Returns:
        Path: ``<cache>/<name>/extracted`` (a dataset of several archives gets one
        subfolder per archive, named after it).

    Raises:
        DownloadError: unknown name, missing or unverifiable archive, failed download,
            checksum mismatch, or unsafe archive.
    """
    if name not in REMOTE_DATASETS:
        raise DownloadError(f"name: expected one of {', '.join(REMOTE_DATASETS)}, got {name!r}")
    spec = REMOTE_DATASETS[name]
    folder = Path(cache_dir) if cache_dir is not None else data_cache_dir()
    folder = folder / name
    extracted = folder / "extracted"
    if (extracted / COMPLETE_MARKER).exists():
        return extracted
    allow = _allow_unverified(allow_unverified)
    archives = []
    for remote in spec.files:
        archive = folder / remote.filename
        if archive.exists():
            digest = sha256_file(archive)
        elif not download:
            raise DownloadError(f"{name}: {archive} not found and download is off; "
                                f"{spec.by_hand}")
        elif remote.sha256 is None and not allow:
            raise _unverified_refusal(name, remote, spec)
        else:
            try:
                digest = download_file(remote.url, archive, remote.sha256)
            except DownloadError as error:
                raise DownloadError(f"{error}; or {spec.by_hand}") from None
        if remote.sha256 is not None and digest != remote.sha256:
            raise DownloadError(f"{archive}: checksum mismatch: expected sha256 {remote.sha256}, "
                                f"got {digest}; delete it and try again")
        if remote.sha256 is None:
            if not allow:
                raise _unverified_refusal(name, remote, spec)
            warnings.warn(f"{name}: using {archive} without a published checksum "
                          f"(sha256 {digest})", stacklevel=2)
        archives.append(archive)
    staging = folder / "extracted.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if len(archives) == 1:
            safe_extract(archives[0], staging)
        else:  # several archives: one subfolder each, named after the archive
            for archive in archives:
                safe_extract(archive, staging / archive.name)
        (staging / COMPLETE_MARKER).touch()
        shutil.rmtree(extracted, ignore_errors=True)
        staging.rename(extracted)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return extracted

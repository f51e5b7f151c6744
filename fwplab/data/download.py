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

Extraction refuses members with absolute paths, ``..`` components, links that point
outside the target and special files, and checks every member before writing any.

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
    return pure


def _check_link(archive: Path, name: str, link: str, relative_to_member: bool) -> PurePosixPath:
    """The link's target inside the extraction folder; a target outside it is refused."""
    if PurePosixPath(link).is_absolute() or PureWindowsPath(link).drive:
        raise _unsafe(archive, name, f"link to absolute path {link!r}")
    base = PurePosixPath(name).parent if relative_to_member else PurePosixPath()
    resolved = os.path.normpath(str(base / link))
    if resolved == ".." or resolved.startswith("../"):
        raise _unsafe(archive, name, f"link to {link!r} leaves the extraction folder")
    return PurePosixPath(resolved)


def _zip_entries(archive: Path, handle: zipfile.ZipFile) -> list[tuple[str, str, object]]:
    """(kind, name, payload) for every zip member: kind is 'dir', 'file' or 'symlink'."""
    entries = []
    for info in handle.infolist():
        _relative_member(archive, info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            link = handle.read(info).decode("utf-8")
            _check_link(archive, info.filename, link, relative_to_member=True)
            entries.append(("symlink", info.filename, link))
        elif info.is_dir():
            entries.append(("dir", info.filename, None))
        else:
            entries.append(("file", info.filename, info))
    return entries


def _tar_entries(archive: Path, handle: tarfile.TarFile) -> list[tuple[str, str, object]]:
    """(kind, name, payload) for every tar member; kind adds 'hardlink'."""
    entries = []
    for member in handle.getmembers():
        _relative_member(archive, member.name)
        if member.issym():
            _check_link(archive, member.name, member.linkname, relative_to_member=True)
            entries.append(("symlink", member.name, member.linkname))
        elif member.islnk():
            target = _check_link(archive, member.name, member.linkname, relative_to_member=False)
            entries.append(("hardlink", member.name, target))
        elif member.isdir():
            entries.append(("dir", member.name, None))
        elif member.isfile():
            entries.append(("file", member.name, member))
        else:
            raise _unsafe(archive, member.name, "device, fifo or other special file")
    return entries


def safe_extract(archive: PathLike, target: PathLike) -> Path:
    """Extract a zip or tar (plain, gz, bz2, xz) archive into ``target``, safely.

    Every member is checked before anything is written: absolute paths, ``..``
    components, symbolic or hard links pointing outside ``target`` and special files
    raise :class:`UnsafeArchiveError`. Links inside ``target`` are kept (hard links
    as copies).

    Returns:
        Path: ``target``.
    """
    archive, target = Path(archive), Path(target)
    if zipfile.is_zipfile(archive):
        opener, reader = zipfile.ZipFile, _zip_entries
    elif tarfile.is_tarfile(archive):
        opener, reader = tarfile.open, _tar_entries
    else:
        raise DownloadError(f"{archive}: not a zip or tar archive")
    with opener(archive) as handle:
        entries = reader(archive, handle)
        target.mkdir(parents=True, exist_ok=True)
        root = target.resolve()
        for kind, name, payload in entries:
            destination = target / _relative_member(archive, name)
            if kind == "dir":
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            if not destination.parent.resolve().is_relative_to(root):
                raise _unsafe(archive, name, "its folder leads outside the extraction folder")
            if destination.is_symlink():
                raise _unsafe(archive, name, "it would overwrite a link")
            if kind == "symlink":
                os.symlink(payload, destination)
            elif kind == "hardlink":
                shutil.copyfile(target / payload, destination)
            else:
                source = handle.open(payload) if isinstance(handle, zipfile.ZipFile) else \
                    handle.extractfile(payload)
                with source, open(destination, "wb") as output:
                    shutil.copyfileobj(source, output, CHUNK_BYTES)
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
        Path: ``<cache>/<name>/extracted``.

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
        for archive in archives:
            safe_extract(archive, staging)
        (staging / COMPLETE_MARKER).touch()
        shutil.rmtree(extracted, ignore_errors=True)
        staging.rename(extracted)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return extracted

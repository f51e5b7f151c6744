"""Downloads and extraction, with file:// URLs only (no test touches the network)."""

import hashlib
import io
import os
import stat
import tarfile
import zipfile

import pytest

from fwplab.data import (
    REMOTE_DATASETS,
    DownloadError,
    UnsafeArchiveError,
    data_cache_dir,
    download_file,
    load_dataset,
    prepare_dataset,
    safe_extract,
)
from fwplab.data import download as download_module
from fwplab.data.download import RemoteDataset, RemoteFile


def _tar(path, members):
    """members: (TarInfo fields as dict, bytes or None)."""
    with tarfile.open(path, "w:gz") as archive:
        for fields, data in members:
            info = tarfile.TarInfo(fields.pop("name"))
            for key, value in fields.items():
                setattr(info, key, value)
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _zip(path, members):
    """members: (name, bytes, is_symlink)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data, is_link in members:
            info = zipfile.ZipInfo(name)
            if is_link:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, data)
    return path


@pytest.mark.parametrize("members, match", [
    ([({"name": "ok.txt"}, b"fine"), ({"name": "../evil.txt"}, b"x")], "'..' in its path"),
    ([({"name": "a/../../evil.txt"}, b"x")], "'..' in its path"),
    ([({"name": "/tmp/fwplab-evil.txt"}, b"x")], "absolute path"),
    ([({"name": "link", "type": tarfile.SYMTYPE, "linkname": "/etc"}, None)],
     "link to absolute path '/etc'"),
    ([({"name": "a/link", "type": tarfile.SYMTYPE, "linkname": "../../outside"}, None)],
     "leaves the extraction folder"),
    ([({"name": "hard", "type": tarfile.LNKTYPE, "linkname": "../outside"}, None)],
     "leaves the extraction folder"),
    ([({"name": "pipe", "type": tarfile.FIFOTYPE}, None)], "special file"),
])
def test_tar_extraction_refuses_unsafe_members_before_writing(tmp_path, members, match):
    archive = _tar(tmp_path / "bad.tar.gz", members)
    target = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=match):
        safe_extract(archive, target)
    assert not target.exists()  # nothing written, not even the safe members
    assert not (tmp_path / "evil.txt").exists() and not os.path.exists("/tmp/fwplab-evil.txt")


@pytest.mark.parametrize("members, match", [
    ([("../evil.txt", b"x", False)], "'..' in its path"),
    ([("/abs.txt", b"x", False)], "absolute path"),
    ([("C:/windows.txt", b"x", False)], "absolute path"),
    ([("link", b"../../etc", True)], "leaves the extraction folder"),
])
def test_zip_extraction_refuses_unsafe_members(tmp_path, members, match):
    archive = _zip(tmp_path / "bad.zip", members)
    with pytest.raises(UnsafeArchiveError, match=match):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_safe_archives_extract_with_internal_links(tmp_path):
    archive = _tar(tmp_path / "good.tar.gz", [
        ({"name": "data", "type": tarfile.DIRTYPE}, None),
        ({"name": "data/a.txt"}, b"alpha"),
        ({"name": "data/link.txt", "type": tarfile.SYMTYPE, "linkname": "a.txt"}, None),
        ({"name": "copy.txt", "type": tarfile.LNKTYPE, "linkname": "data/a.txt"}, None),
    ])
    out = safe_extract(archive, tmp_path / "out")
    assert (out / "data" / "a.txt").read_bytes() == b"alpha"
    assert (out / "data" / "link.txt").is_symlink()
    assert (out / "data" / "link.txt").read_bytes() == b"alpha"
    assert (out / "copy.txt").read_bytes() == b"alpha"
    zipped = _zip(tmp_path / "good.zip", [("x/y.txt", b"why", False), ("x/l", b"y.txt", True)])
    out = safe_extract(zipped, tmp_path / "zout")
    assert (out / "x" / "l").read_bytes() == b"why"
    (tmp_path / "plain.txt").write_text("not an archive")
    with pytest.raises(DownloadError, match="not a zip or tar archive"):
        safe_extract(tmp_path / "plain.txt", tmp_path / "pout")


def _source_file(tmp_path, content=b"payload bytes"):
    source = tmp_path / "served" / "file.bin"
    source.parent.mkdir()
    source.write_bytes(content)
    return source, hashlib.sha256(content).hexdigest()


def test_download_checks_the_checksum_and_leaves_nothing_on_mismatch(tmp_path):
    source, digest = _source_file(tmp_path)
    destination = tmp_path / "cache" / "file.bin"
    assert download_file(source.as_uri(), destination, digest) == digest
    assert destination.read_bytes() == b"payload bytes"
    wrong = tmp_path / "cache2" / "file.bin"
    with pytest.raises(DownloadError, match="checksum mismatch: expected sha256 0000"):
        download_file(source.as_uri(), wrong, "0" * 64)
    assert list(wrong.parent.iterdir()) == []  # neither the file nor a partial download
    with pytest.raises(DownloadError, match="download failed"):
        download_file((tmp_path / "absent.bin").as_uri(), wrong, None)
    assert list(wrong.parent.iterdir()) == []


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FWPLAB_DATA", str(tmp_path / "mine"))
    assert data_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("FWPLAB_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_cache_dir() == tmp_path / "xdg" / "fwplab"


def _register(monkeypatch, tmp_path, sha256):
    archive = _zip(tmp_path / "remote.zip", [("inner/hello.txt", b"hello", False)])
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    spec = RemoteDataset((RemoteFile(archive.as_uri(), "remote.zip",
                                     digest if sha256 == "right" else sha256),),
                         "get remote.zip by hand")
    monkeypatch.setitem(REMOTE_DATASETS, "toy", spec)
    monkeypatch.delenv("FWPLAB_ALLOW_UNVERIFIED", raising=False)
    return digest


def test_prepare_dataset_downloads_once_and_extracts(tmp_path, monkeypatch):
    _register(monkeypatch, tmp_path, "right")
    folder = prepare_dataset("toy", cache_dir=tmp_path / "cache")
    assert (folder / "inner" / "hello.txt").read_bytes() == b"hello"

    def no_network(url, destination):
        raise AssertionError("fetched again")

    monkeypatch.setattr(download_module, "fetch", no_network)
    assert prepare_dataset("toy", cache_dir=tmp_path / "cache") == folder


def test_prepare_dataset_refuses_unverified_archives_unless_allowed(tmp_path, monkeypatch):
    digest = _register(monkeypatch, tmp_path, None)
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="no published sha256 .* FWPLAB_ALLOW_UNVERIFIED=1, "
                       "or get remote.zip by hand"):
        prepare_dataset("toy", cache_dir=cache)
    assert not (cache / "toy" / "remote.zip").exists()  # refused before downloading
    with pytest.raises(DownloadError, match="not found and download is off"):
        prepare_dataset("toy", cache_dir=cache, download=False)
    monkeypatch.setenv("FWPLAB_ALLOW_UNVERIFIED", "1")
    with pytest.warns(UserWarning, match=f"without a published checksum \\(sha256 {digest}\\)"):
        folder = prepare_dataset("toy", cache_dir=cache)
    assert (folder / "inner" / "hello.txt").exists()


def test_prepare_dataset_rejects_a_hand_placed_archive_with_the_wrong_sum(tmp_path, monkeypatch):
    _register(monkeypatch, tmp_path, "right")
    placed = tmp_path / "cache" / "toy" / "remote.zip"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(b"something else")
    with pytest.raises(DownloadError, match="remote.zip: checksum mismatch"):
        prepare_dataset("toy", cache_dir=tmp_path / "cache")
    with pytest.raises(DownloadError, match="name: expected one of speech-commands"):
        prepare_dataset("nothing", cache_dir=tmp_path / "cache")


def test_every_remote_dataset_has_a_url_and_by_hand_instructions():
    assert set(REMOTE_DATASETS) == {"speech-commands", "sepsis", "character-trajectories",
                                    "eigenworms"}
    for spec in REMOTE_DATASETS.values():
        assert spec.by_hand and all(f.url.startswith("https://") for f in spec.files)
        assert all(f.sha256 is None or len(f.sha256) == 64 for f in spec.files)


def test_load_dataset_downloads_into_the_cache(tmp_path, monkeypatch):
    text = ("@problemName EigenWorms\n@dimensions 1\n@classLabel true a b\n@data\n"
            + "".join(f"{k},{k + 1},{k + 3}:{'ab'[k % 2]}\n" for k in range(8)))
    archive = _zip(tmp_path / "EigenWorms.zip", [("EigenWorms_TRAIN.ts", text.encode(), False),
                                                 ("EigenWorms_TEST.ts", text.encode(), False)])
    monkeypatch.setitem(REMOTE_DATASETS, "eigenworms", RemoteDataset(
        (RemoteFile(archive.as_uri(), "EigenWorms.zip",
                    hashlib.sha256(archive.read_bytes()).hexdigest()),), "by hand"))
    monkeypatch.setenv("FWPLAB_DATA", str(tmp_path / "cache"))
    dataset = load_dataset("eigenworms", logsig_step=2)
    assert dataset.train.x.shape[1:] == (2, 3)  # 2 increments -> 1 window of 2, depth 2
    assert (tmp_path / "cache" / "eigenworms" / "extracted" / "EigenWorms_TRAIN.ts").exists()

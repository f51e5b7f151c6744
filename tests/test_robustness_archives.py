"""Archive extraction that cannot be escaped or blown up (issue 12, items 1 and 2).

Every archive is built here, in ``tmp_path``. Each refused case checks the one-line
message, that the target does not exist, that no temporary folder is left beside it
and that nothing appeared outside (``tmp_path`` holds only what the test put there).
"""

import gzip
import hashlib
import io
import tarfile
import zipfile

import pytest

from fwplab.data import REMOTE_DATASETS, DownloadError, UnsafeArchiveError, prepare_dataset
from fwplab.data import download as download_module
from fwplab.data.download import RemoteDataset, RemoteFile, safe_extract

SECRET = b"secret first line\n"


def _tar(path, members, mode="w:gz"):
    """members: (name, kind, link or bytes): kind 'file', 'dir', 'sym' or 'hard'."""
    types = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
             "hard": tarfile.LNKTYPE}
    with tarfile.open(path, mode) as archive:
        for name, kind, content in members:
            info = tarfile.TarInfo(name)
            info.type = types[kind]
            if kind == "file":
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
            else:
                if kind in ("sym", "hard"):
                    info.linkname = content
                archive.addfile(info)
    return path


def _setting(tmp_path):
    """An 'outside' file next to the extraction target, as an attacker would aim at."""
    (tmp_path / "secret.txt").write_bytes(SECRET)
    return {"secret.txt"}


def _assert_nothing_written(tmp_path, before, target):
    assert not target.exists()
    assert {p.name for p in tmp_path.iterdir()} == before  # no .partial folder, nothing outside
    assert (tmp_path / "secret.txt").read_bytes() == SECRET


CHAINS = {
    # The chain: 'up' resolves to the target itself, 'up2' one folder above it.
    "directory through a chain of links": (
        [("s", "dir", None), ("s/up", "sym", ".."), ("s/up2", "sym", "up/.."),
         ("s/up2/escaped", "dir", None)],
        r"refusing member 's/up2': link to 'up/..' leaves the extraction folder"),
    "file under a chained link": (
        [("s", "dir", None), ("s/up", "sym", ".."), ("s/up/up3", "sym", "..")],
        r"refusing member 's/up/up3': link to '..' leaves the extraction folder"),
    "hard link through a chained link copies an outside file": (
        [("s", "dir", None), ("s/up", "sym", ".."), ("stolen", "hard", "s/up/../secret.txt")],
        r"refusing member 'stolen': '..' in its path|not a file extracted before it"),
    "hard link to a member not extracted yet": (
        [("early", "hard", "late.txt"), ("late.txt", "file", b"x")],
        r"refusing member 'early': hard link to 'late.txt', which is not a file extracted "
        r"before it"),
    "hard link to a symbolic link": (
        [("l", "sym", "."), ("copy", "hard", "l")],
        r"refusing member 'copy': hard link to 'l', which is not a file extracted before it"),
    "link whose target becomes a link later": (
        [("a", "sym", "b/../../secret.txt")],
        r"refusing member 'a': link to 'b/../../secret.txt' leaves the extraction folder"),
    "link that escapes only once a later link exists": (
        [("a", "sym", "b/../secret.txt"), ("b", "sym", ".")],
        r"refusing member 'a': link to 'b/../secret.txt' leaves the extraction folder once "
        r"the links after it exist"),
    "two members of the same name": (
        [("x.txt", "file", b"one"), ("x.txt", "file", b"two")],
        r"refusing member 'x.txt': a second member of the same name"),
    "file written through a link that a later link turned outward": (
        [("a", "sym", "b/.."), ("b", "sym", "."), ("a/evil.txt", "file", b"x")],
        r"refusing member 'a/evil.txt': it leads outside the extraction folder through a link"),
}


@pytest.mark.parametrize("case", list(CHAINS))
def test_links_are_resolved_on_the_file_system(case, tmp_path):
    before = _setting(tmp_path) | {"bad.tar.gz"}
    members, message = CHAINS[case]
    archive = _tar(tmp_path / "bad.tar.gz", members)
    target = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=message) as error:
        safe_extract(archive, target)
    assert "\n" not in str(error.value)
    _assert_nothing_written(tmp_path, before, target)


def test_links_that_stay_inside_are_kept(tmp_path):
    archive = _tar(tmp_path / "good.tar.gz", [
        ("s", "dir", None), ("s/up", "sym", ".."), ("s/a.txt", "file", b"alpha"),
        ("s/up/s/b.txt", "file", b"beta"), ("copy", "hard", "s/a.txt"),
        ("s/late", "sym", "later/c.txt"), ("s/later", "dir", None),
        ("s/later/c.txt", "file", b"gamma")])
    out = safe_extract(archive, tmp_path / "out")
    assert (out / "s" / "b.txt").read_bytes() == b"beta"  # written through the inside link
    assert (out / "copy").read_bytes() == b"alpha" and not (out / "copy").is_symlink()
    assert (out / "s" / "late").read_bytes() == b"gamma"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.tar.gz", "out"]


def test_a_decompression_bomb_is_refused_before_writing(tmp_path):
    before = _setting(tmp_path) | {"bomb.tar.gz", "bomb.zip"}
    zeros = bytes(4 * 1024 * 1024)
    archive = _tar(tmp_path / "bomb.tar.gz", [("zeros.bin", "file", zeros)])
    assert archive.stat().st_size * 100 < len(zeros)
    with pytest.raises(UnsafeArchiveError, match=r"bomb.tar.gz: expands \d+-fold \(\d+ to "
                       r"4194304 bytes\), more than the limit of 100"):
        safe_extract(archive, tmp_path / "out")
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as handle:
        handle.writestr("zeros.bin", zeros)
    with pytest.raises(UnsafeArchiveError, match=r"bomb.zip: expands \d+-fold"):
        safe_extract(tmp_path / "bomb.zip", tmp_path / "out")
    _assert_nothing_written(tmp_path, before, tmp_path / "out")


def test_the_total_size_limit(tmp_path, monkeypatch):
    before = _setting(tmp_path) | {"big.tar"}
    monkeypatch.setattr(download_module, "MAX_EXTRACTED_BYTES", 1000)
    archive = _tar(tmp_path / "big.tar", [("a.bin", "file", bytes(600)),
                                          ("b.bin", "file", bytes(600))], mode="w")
    with pytest.raises(UnsafeArchiveError, match=r"big.tar: would extract 1200 bytes, more "
                       r"than the limit of 1000 \(fwplab.data.download.MAX_EXTRACTED_BYTES\)"):
        safe_extract(archive, tmp_path / "out")
    _assert_nothing_written(tmp_path, before, tmp_path / "out")


def test_the_member_count_limit(tmp_path, monkeypatch):
    before = _setting(tmp_path) | {"many.tar"}
    monkeypatch.setattr(download_module, "MAX_MEMBERS", 3)
    archive = _tar(tmp_path / "many.tar", [(f"{k}.txt", "file", b"x") for k in range(4)],
                   mode="w")
    with pytest.raises(UnsafeArchiveError, match=r"many.tar: has 4 members, more than the limit "
                       r"of 3 \(fwplab.data.download.MAX_MEMBERS\)"):
        safe_extract(archive, tmp_path / "out")
    _assert_nothing_written(tmp_path, before, tmp_path / "out")


def test_a_target_with_content_is_refused(tmp_path):
    archive = _tar(tmp_path / "good.tar.gz", [("a.txt", "file", b"a")])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    with pytest.raises(DownloadError, match=r"full: expected a new or empty folder"):
        safe_extract(archive, tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["mine.txt"]
    (tmp_path / "empty").mkdir()
    assert (safe_extract(archive, tmp_path / "empty") / "a.txt").read_bytes() == b"a"


def test_prepare_dataset_refuses_a_hand_placed_escaping_archive(tmp_path, monkeypatch):
    outside = tmp_path / "cache" / "toy"
    outside.mkdir(parents=True)
    archive = _tar(outside / "toy.tar.gz", [
        ("s", "dir", None), ("s/up", "sym", ".."), ("s/up2", "sym", "up/.."),
        ("s/up2/escaped", "dir", None)])
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(REMOTE_DATASETS, "toy", RemoteDataset(
        (RemoteFile("https://example.invalid/toy.tar.gz", "toy.tar.gz", digest),), "by hand"))
    with pytest.raises(UnsafeArchiveError, match=r"refusing member 's/up2'"):
        prepare_dataset("toy", cache_dir=tmp_path / "cache", download=False)
    assert sorted(p.name for p in outside.iterdir()) == ["toy.tar.gz"]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["toy"]


def test_a_gzip_that_is_not_an_archive_is_refused(tmp_path):
    (tmp_path / "x.gz").write_bytes(gzip.compress(b"plain text"))
    with pytest.raises(DownloadError, match=r"x.gz: not a zip or tar archive"):
        safe_extract(tmp_path / "x.gz", tmp_path / "out")
    assert not (tmp_path / "out").exists()

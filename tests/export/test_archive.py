"""The bundle archive (export/archive.py): deterministic packing, a round trip through unpacking,
and one-line refusals of members the format does not allow (through tarfile's data filter)."""

from __future__ import annotations

import io
import os
import shutil
import tarfile

import pytest

from export.archive import (
    ArchiveError,
    archive_sha256,
    member_names,
    pack_bundle,
    unpack_archive,
)
from export.errors import BundleError
from export.manifest import load_bundle


def test_archive_is_deterministic_and_holds_the_bundle_only(trained_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained_bundle.path, copy)
    (copy / "notes.txt").write_text("not part of the bundle")
    os.utime(copy / "manifest.json", (0, 1e9))
    archive = pack_bundle(trained_bundle.path)
    assert pack_bundle(copy) == archive
    assert archive_sha256(archive) == archive_sha256(pack_bundle(copy))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == member_names(trained_bundle)
    assert "manifest.json" in member_names(trained_bundle)
    assert all(m.isreg() and m.mtime == 0 and m.uid == 0 and m.mode == 0o644 for m in members)


def test_an_archive_unpacks_to_the_same_verified_bundle(trained_bundle, tmp_path):
    path = tmp_path / "b.tar"
    path.write_bytes(pack_bundle(trained_bundle.path))
    unpack_archive(path, tmp_path / "out")
    bundle = load_bundle(tmp_path / "out", verify=True)
    assert bundle.sha256 == trained_bundle.sha256
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == member_names(trained_bundle)


def _tar(tmp_path, *members: tarfile.TarInfo) -> str:
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info in members:
            data = b"x" * info.size if info.isreg() else None
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return str(path)


def _file(name: str, size: int = 4) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([_file("../evil")], r"'\.\./evil' is refused \(.*outside the destination"),
        ([_file("a/../../evil")], "outside the destination"),
        ([_link("l", "/etc/passwd", tarfile.SYMTYPE)], "'l' is not a regular file"),
        ([_link("h", "manifest.json", tarfile.LNKTYPE)], "'h' is not a regular file"),
        ([_device("dev")], "'dev' is not a regular file"),
        ([_file("a.onnx"), _file("a.onnx")], "'a.onnx' appears twice"),
        ([_file("a.onnx"), _file("/a.onnx")], "'/a.onnx' appears twice"),  # filtered: a.onnx
        ([_file(".")], "'.' cannot be extracted"),
    ],
)
def test_refused_members_are_one_line_and_nothing_escapes(tmp_path, members, message):
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArchiveError, match=message) as info:
        unpack_archive(_tar(tmp_path, *members), dest)
    assert isinstance(info.value, BundleError)
    assert "\n" not in str(info.value) and "export.archive.pack_bundle" in str(info.value)
    assert not (tmp_path / "evil").exists()


def test_not_a_tar_and_too_many_members_are_refused(tmp_path, monkeypatch):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x7fELF" + bytes(2000))
    with pytest.raises(ArchiveError, match="not a valid tar archive"):
        unpack_archive(junk, tmp_path / "a")
    monkeypatch.setattr("export.archive.MAX_ARCHIVE_MEMBERS", 2)
    with pytest.raises(ArchiveError, match="more than 2 members"):
        unpack_archive(_tar(tmp_path, _file("a"), _file("b"), _file("c")), tmp_path / "b")


# Pythons without tarfile's filters (Debian 12's 3.11.2, Ubuntu 22.04's release 3.10.4): the same
# members are refused by the format's own checks, and a good archive unpacks the same.
@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([_file("../evil")], r"'\.\./evil' is refused \(not a plain relative path"),
        ([_file("a/../../evil")], "not a plain relative path"),
        ([_file("/abs")], "not a plain relative path"),
        ([_file(".")], "not a plain relative path"),
        ([_link("l", "/etc/passwd", tarfile.SYMTYPE)], "'l' is not a regular file"),
        ([_device("dev")], "'dev' is not a regular file"),
        ([_file("a.onnx"), _file("a.onnx")], "'a.onnx' appears twice"),
    ],
)
def test_without_extraction_filters_the_same_members_are_refused(
    tmp_path, monkeypatch, members, message
):
    monkeypatch.setattr("export.archive._HAS_FILTERS", False)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArchiveError, match=message) as info:
        unpack_archive(_tar(tmp_path, *members), dest)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "abs").exists()


def test_without_extraction_filters_a_bundle_unpacks_the_same(
    trained_bundle, tmp_path, monkeypatch
):
    monkeypatch.setattr("export.archive._HAS_FILTERS", False)
    path = tmp_path / "b.tar"
    path.write_bytes(pack_bundle(trained_bundle.path))
    unpack_archive(path, tmp_path / "out")
    assert load_bundle(tmp_path / "out", verify=True).sha256 == trained_bundle.sha256

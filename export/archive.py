"""The bundle archive: how a bundle travels as one file (part of the bundle's contract).

An archive is an uncompressed POSIX (ustar) tar that holds ``manifest.json`` and exactly the
files the manifest lists, at their manifest paths, as regular files only (no folders, links or
devices), sorted by name, with mode 0644, uid/gid 0, empty owner names and mtime 0. The same
bundle folder therefore always packs to the same bytes, so a sender can compute the archive's
sha256 before sending anything and the receiver checks it on arrival. The host packs bundles
with :func:`pack_bundle` (host/board.py); the board's store (fpga/board/store.py) unpacks them
with :func:`unpack_archive` and then verifies every file with :func:`export.manifest.load_bundle`.
See docs/bundle.md and docs/board.md.

Runs on the board (Python 3.10): standard library and export.manifest (numpy) only.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

from export.errors import BundleError
from export.manifest import MANIFEST, Bundle, load_bundle

MAX_ARCHIVE_MEMBERS = 4096
_PACK_HINT = "pack it with export.archive.pack_bundle"


class ArchiveError(BundleError):
    """A file is not a bundle archive of this format (not a tar, or a member it must refuse)."""


def member_names(bundle: Bundle) -> list[str]:
    """The archive's members, in order: ``manifest.json`` and every file the manifest lists."""
    return sorted({MANIFEST} | {ref.file for ref in bundle.manifest.files()})


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def pack_bundle(bundle_dir: str | os.PathLike) -> bytes:
    """The deterministic archive of the bundle in ``bundle_dir`` (verified first).

    Holds ``manifest.json`` and the files the manifest lists, nothing else (stray files in the
    folder are left out), so the bytes depend only on the bundle's contents.
    """
    bundle = load_bundle(bundle_dir, verify=True)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in member_names(bundle):
            data = (bundle.path / name).read_bytes()
            tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))
    return out.getvalue()


def archive_sha256(archive: bytes) -> str:
    """The sha256 (hex) of an archive: what LOAD_BEGIN carries."""
    return hashlib.sha256(archive).hexdigest()


# The member checks are tarfile's own "data" extraction filter (PEP 706) where this Python has
# it: no absolute names, no '..' or links leading out of the destination, no devices, sane
# permissions. It exists from Python 3.11.4 and 3.10.12. PYNQ 3.0.1's Ubuntu 22.04 has 3.10.12
# with its updates, but the 22.04 release shipped 3.10.4 and Debian 12 ships 3.11.2, neither
# with filters; there the same checks are made by hand for the one kind of member this format
# allows (a regular file), which is then written from its data rather than by tarfile.
_HAS_FILTERS = hasattr(tarfile, "data_filter")


def _checked_name(member: tarfile.TarInfo, dest: Path) -> str:
    """The name ``member`` extracts to under ``dest``, or ArchiveError (one line)."""
    if _HAS_FILTERS:
        try:
            return tarfile.data_filter(member, str(dest)).name
        except tarfile.FilterError as exc:
            raise ArchiveError(
                f"bundle archive member {member.name!r} is refused ({exc}); {_PACK_HINT}"
            ) from None
    parts = member.name.split("/")
    if member.name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ArchiveError(
            f"bundle archive member {member.name!r} is refused (not a plain relative path); "
            f"{_PACK_HINT}"
        )
    return member.name


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, name: str) -> None:
    if _HAS_FILTERS:
        tar.extract(member, dest, filter="data")
        return
    target = dest / name
    target.parent.mkdir(parents=True, exist_ok=True)
    source = tar.extractfile(member)
    assert source is not None  # a regular file (checked by the caller)
    with source, open(target, "xb") as out:
        out.write(source.read())


def unpack_archive(archive_path: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Extract an archive into the empty folder ``dest``, refusing anything but plain files.

    Every member goes through tarfile's ``data`` filter; on top of it the format allows only
    regular files, each name once, at most :data:`MAX_ARCHIVE_MEMBERS` of them. Raises
    :class:`ArchiveError` with one line naming the first refused member (or a file that is not a
    tar archive); what was extracted before stays in ``dest`` for the caller to remove.
    """
    dest = Path(dest)
    try:
        with tarfile.open(str(archive_path), mode="r:") as tar:
            seen: set[str] = set()
            for count, member in enumerate(tar, start=1):
                if count > MAX_ARCHIVE_MEMBERS:
                    raise ArchiveError(
                        f"bundle archive has more than {MAX_ARCHIVE_MEMBERS} members; {_PACK_HINT}"
                    )
                if not member.isreg():
                    raise ArchiveError(
                        f"bundle archive member {member.name!r} is not a regular file; {_PACK_HINT}"
                    )
                name = _checked_name(member, dest)
                if name in seen:
                    raise ArchiveError(
                        f"bundle archive member {member.name!r} appears twice; {_PACK_HINT}"
                    )
                seen.add(name)
                try:
                    _extract(tar, member, dest, name)
                except OSError as exc:  # e.g. a file named '.' or under a file's name
                    raise ArchiveError(
                        f"bundle archive member {member.name!r} cannot be extracted "
                        f"({exc.strerror}); {_PACK_HINT}"
                    ) from None
    except tarfile.TarError as exc:
        raise ArchiveError(
            f"bundle archive is not a valid tar archive ({exc}); {_PACK_HINT}"
        ) from None

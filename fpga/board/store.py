"""The board's bundle store: verified bundles on disk, loaded over the line as archives.

The archive format (:func:`export.archive.pack_bundle`, :func:`export.archive.unpack_archive`)
is part of the bundle's contract and lives beside the manifest in export/; see docs/board.md.

A :class:`BundleStore` keeps bundles in one folder, one sub-folder per bundle named by its
identity (the sha256 of its ``manifest.json``)::

    STORE/
      3f2a...c9/            a verified bundle (manifest.json + graph files)
      .incoming-XXXX.tar    the archive of a load in progress (deleted when it ends)
      .unpack-XXXX/         an archive being unpacked (renamed into place when verified)

A load is written to disk as it arrives (bounded size, never held in memory), checked against
the size and sha256 of LOAD_BEGIN, unpacked under a temporary name (every member through
tarfile's data filter, regular files only), verified with :func:`export.manifest.load_bundle`
(every file's sha256) and only then renamed into place: a failed load leaves nothing behind.

Runs on the board (Python 3.10): standard library, export.archive and export.manifest (numpy).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from export.archive import ArchiveError, member_names, unpack_archive
from export.errors import BundleError
from export.manifest import Bundle, load_bundle
from fpga.board.errors import CommandError
from wire.protocol import ErrorCode

log = logging.getLogger(__name__)

DEFAULT_MAX_BUNDLE_BYTES = 512 * 1024 * 1024  # the ZedBoard has 512 MB of DDR and an SD card
_SHA256 = re.compile(r"[0-9a-f]{64}")


class StoreError(CommandError):
    """A bundle load or selection failed; ``code`` is the protocol's ErrorCode to answer with.

    Being a :class:`~fpga.board.errors.CommandError`, it reaches the host as ``ERROR(code)``.
    """


# ----------------------------------------------------------------------------------------------
# The board's store


@dataclass
class LoadSession:
    """A load in progress: the archive is written to ``path`` as its chunks arrive."""

    bundle_id: str
    total_size_bytes: int
    sha256: str  # of the archive, from LOAD_BEGIN
    path: Path
    received_bytes: int = 0

    def __post_init__(self) -> None:
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by finish/abort
        self._hash = hashlib.sha256()

    def write(self, offset_bytes: int, data: bytes) -> None:
        """Append ``data``, which must start at or before the next byte and end within the total
        size. Bytes already received are skipped: a chunk resent in smaller frames after its
        reply was lost repeats them (LOAD_END's sha256 would catch any that differ)."""
        if offset_bytes > self.received_bytes:
            raise StoreError(
                ErrorCode.LOAD_OUT_OF_ORDER,
                f"LOAD_CHUNK at offset {offset_bytes!r}, expected {self.received_bytes}; "
                "send the chunks in order (or LOAD_BEGIN again)",
            )
        if offset_bytes + len(data) > self.total_size_bytes:
            raise StoreError(
                ErrorCode.LOAD_OUT_OF_ORDER,
                f"LOAD_CHUNK ends at byte {offset_bytes + len(data)!r}, past the "
                f"{self.total_size_bytes} bytes announced in LOAD_BEGIN; LOAD_BEGIN again",
            )
        data = data[self.received_bytes - offset_bytes :]
        self._file.write(data)
        self._hash.update(data)
        self.received_bytes += len(data)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def digest(self) -> str:
        return self._hash.hexdigest()


class BundleStore:
    """Verified bundles on the board's disk, one folder per manifest sha256 (see module doc)."""

    def __init__(
        self, root: str | os.PathLike, *, max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES
    ) -> None:
        self.root = Path(root)
        self.max_bundle_bytes = int(max_bundle_bytes)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                ErrorCode.INTERNAL,
                f"cannot create the bundle store {str(self.root)!r} ({exc.strerror}); pass "
                "--store with a writable folder",
            ) from None
        self._clean_leftovers()

    def _clean_leftovers(self) -> None:
        """Remove what a load interrupted by a crash or power cut left behind."""
        for entry in self.root.iterdir():
            if entry.name.startswith((".incoming-", ".unpack-")):
                log.info("removing leftover %s", entry)
                _remove(entry)

    # -- queries -------------------------------------------------------------------------
    def path_of(self, sha256: str) -> Path:
        return self.root / sha256

    def ids(self) -> list[str]:
        """The manifest sha256s of the stored bundles."""
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and _SHA256.fullmatch(p.name)
        )

    def find(self, bundle_id: str, sha256: str) -> Bundle:
        """The stored bundle whose manifest has ``sha256`` and id ``bundle_id``, verified."""
        sha256 = sha256.lower()
        path = self.path_of(sha256)
        if not _SHA256.fullmatch(sha256) or not path.is_dir():
            raise StoreError(
                ErrorCode.UNKNOWN_BUNDLE,
                f"the board holds no bundle {bundle_id!r} with manifest sha256 {sha256[:12]}...; "
                "LOAD it first (BoardClient.ensure_bundle does)",
            )
        try:
            bundle = load_bundle(path, verify=True)
        except BundleError as exc:
            raise StoreError(
                ErrorCode.BUNDLE_HASH_MISMATCH,
                f"stored bundle {sha256[:12]}... is damaged ({exc}); LOAD it again",
            ) from None
        if bundle.sha256 != sha256 or bundle.bundle_id != bundle_id:
            raise StoreError(
                ErrorCode.UNKNOWN_BUNDLE,
                f"stored bundle {sha256[:12]}... is {bundle.bundle_id!r}, not {bundle_id!r}; "
                "check the bundle id",
            )
        return bundle

    def free_disk_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    # -- loading -------------------------------------------------------------------------
    def begin(self, bundle_id: str, total_size_bytes: int, sha256: str) -> LoadSession:
        """Start receiving an archive of ``total_size_bytes`` whose sha256 is ``sha256``."""
        if total_size_bytes > self.max_bundle_bytes:
            raise StoreError(
                ErrorCode.NO_MEMORY,
                f"bundle {bundle_id!r} archive of {total_size_bytes!r} bytes exceeds this "
                f"board's limit of {self.max_bundle_bytes} bytes; raise --max-bundle-mb",
            )
        # the archive and its unpacked copy live on disk at the same time
        if 2 * total_size_bytes > self.free_disk_bytes():
            raise StoreError(
                ErrorCode.NO_MEMORY,
                f"bundle {bundle_id!r} of {total_size_bytes!r} bytes needs twice that on the "
                f"store's disk, which has {self.free_disk_bytes()} bytes free; delete old "
                f"bundles from {str(self.root)!r}",
            )
        fd, name = tempfile.mkstemp(prefix=".incoming-", suffix=".tar", dir=self.root)
        os.close(fd)
        return LoadSession(bundle_id, total_size_bytes, sha256.lower(), Path(name))

    def abort(self, session: LoadSession) -> None:
        """Give up a load: its partial archive is deleted."""
        session.close()
        _remove(session.path)

    def finish(self, session: LoadSession, bundle_id: str) -> Bundle:
        """Check size and sha256, unpack, verify every file and move the bundle into place.

        Whatever happens, the partial archive and the unpack folder are removed; on success the
        bundle is at ``path_of(manifest sha256)`` (an identical stored bundle is kept as is).
        """
        try:
            session.close()
            if bundle_id != session.bundle_id:
                raise StoreError(
                    ErrorCode.BAD_STATE,
                    f"LOAD_END names bundle {bundle_id!r}, but the load in progress is "
                    f"{session.bundle_id!r}; LOAD_BEGIN again",
                )
            if session.received_bytes != session.total_size_bytes:
                raise StoreError(
                    ErrorCode.LOAD_OUT_OF_ORDER,
                    f"bundle {bundle_id!r}: received {session.received_bytes} of "
                    f"{session.total_size_bytes} bytes; send every chunk before LOAD_END",
                )
            digest = session.digest()
            if digest != session.sha256:
                raise StoreError(
                    ErrorCode.BUNDLE_HASH_MISMATCH,
                    f"bundle {bundle_id!r}: the received archive has sha256 {digest[:12]}..., "
                    f"LOAD_BEGIN announced {session.sha256[:12]}...; the bytes were damaged or "
                    "the archive changed: load it again",
                )
            return self._install(session.path, bundle_id)
        finally:
            _remove(session.path)

    def _install(self, archive: Path, bundle_id: str) -> Bundle:
        unpack = Path(tempfile.mkdtemp(prefix=".unpack-", dir=self.root))
        try:
            try:
                unpack_archive(archive, unpack)
            except ArchiveError as exc:
                raise StoreError(ErrorCode.MALFORMED, str(exc)) from None
            try:
                bundle = load_bundle(unpack, verify=True)
            except BundleError as exc:
                raise StoreError(
                    ErrorCode.BUNDLE_HASH_MISMATCH, f"bundle {bundle_id!r} is refused: {exc}"
                ) from None
            extra = {p.relative_to(unpack).as_posix() for p in unpack.rglob("*") if p.is_file()}
            extra -= set(member_names(bundle))
            if extra:
                raise StoreError(
                    ErrorCode.MALFORMED,
                    f"bundle archive holds files the manifest does not list: "
                    f"{sorted(extra)[:3]!r}; pack it with export.archive.pack_bundle",
                )
            if bundle.bundle_id != bundle_id:
                raise StoreError(
                    ErrorCode.BUNDLE_HASH_MISMATCH,
                    f"the archive holds bundle {bundle.bundle_id!r}, LOAD_BEGIN named "
                    f"{bundle_id!r}; load the right bundle",
                )
            final = self.path_of(bundle.sha256)
            if final.is_dir():
                log.info("bundle %s (%s) is already stored", bundle_id, bundle.sha256[:12])
            else:
                os.rename(unpack, final)
                log.info("stored bundle %s (%s) in %s", bundle_id, bundle.sha256[:12], final)
            return load_bundle(final, verify=False)  # verified above, byte for byte
        finally:
            _remove(unpack)


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass

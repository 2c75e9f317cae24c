"""The host's client of the board runtime: :class:`BoardClient` over a serial port.

Built on :class:`wire.link.Client` (framing, NAKs and retransmission, frames sized to the line,
sequence numbers) and
``serial.serial_for_url``, so the same code drives a ZedBoard on ``/dev/ttyUSB0``, the emulated
board on a pty, or a ``socket://`` bridge::

    with BoardClient("/dev/ttyUSB0", baud_rate=921600) as board:
        info = board.hello()
        board.ensure_bundle("bundles/r8-iadi60")       # SELECT, or LOAD with a progress bar
        board.upload(1, images)                          # uint8 (N, 32, 32, 3)
        start_ns, end_ns = board.run(1, "iadi")          # board clock, around the run only
        records = board.fetch(1, len(images))            # results_dtype(n_blocks) records

Errors are :class:`wire.errors.BoardError` subclasses with one-line messages: the port
missing, busy or not permitted (:class:`BoardPortError`), a board that does not answer HELLO
(:class:`BoardSilentError`), another protocol version (:class:`BoardVersionError`), a board
holding another bundle than asked (:class:`BundleMismatchError`), and the board's own refusals
(:class:`wire.errors.RemoteError`).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import serial

from export.archive import archive_sha256, pack_bundle
from export.manifest import load_bundle
from wire.errors import BoardError, LinkTimeout, RemoteError, VersionMismatch
from wire.link import Client
from wire.ports import port_failure
from wire.protocol import (
    LOAD_CHUNK_HEADER_BYTES,
    MAX_BLOCKS,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    BundleRef,
    ErrorCode,
    FetchResults,
    Hello,
    HelloReply,
    LoadBegin,
    LoadChunk,
    LoadEnd,
    Reset,
    RunBatch,
    RunMode,
    SelectBundle,
    Status,
    StatusReply,
    check_images,
    results_per_frame,
    upload_chunk,
)

log = logging.getLogger(__name__)

DEFAULT_RUN_TIMEOUT_S = 3600.0
RUN_RETRY_S = 60.0  # host.measure.RUN_RETRY_FIRST_S: the same, for a window's first run
"""How long the host waits for a RUN_BATCH reply before sending the request again when the run's
length is not known yet: a request lost whole on the line (its header damaged) is answered by
silence, and the board, which answers a retransmitted request from its cache, never runs a
batch twice."""
# SELECT_BUNDLE builds the bundle's executor (onnxruntime sessions, an overlay): seconds on a
# board, far beyond the turnaround of other commands, so it is allowed this long per try.
SELECT_TIMEOUT_S = 10.0


class BoardPortError(BoardError):
    """The serial port cannot be opened (missing, busy, not permitted)."""


class BoardSilentError(BoardError):
    """Nothing answered HELLO on the port."""


class BoardVersionError(BoardError):
    """The board speaks another protocol version."""


class BundleMismatchError(BoardError):
    """The board does not hold or run the bundle the host asked for."""


def _port_error(port: str, exc: BaseException) -> BoardPortError:
    why = port_failure(
        exc,
        missing="does not exist; check the cable and the name (ls /dev/tty*)",
        denied="is not permitted; add your user to the 'dialout' group or fix its permissions",
        busy="is busy: another program has it open; close that program first",
    )
    return BoardPortError(f"board port {port!r} {why}")


@dataclass(frozen=True)
class HelloInfo:
    """A HELLO round trip: what the board said and when, on both clocks.

    The board read its clock between ``host_send_s`` and ``host_receive_s`` (host
    ``time.monotonic()``); the midpoint estimates the host time of ``board_clock_ns`` to within
    half the round trip.
    """

    identity: str
    bundle: BundleRef | None
    board_clock_ns: int
    host_send_s: float
    host_receive_s: float
    max_payload_bytes: int
    protocol_version: int
    backend: str = "emulated"
    """What runs the graphs, as the board says: ``cpu``, ``finn`` or ``emulated``."""

    @property
    def round_trip_s(self) -> float:
        return self.host_receive_s - self.host_send_s

    @property
    def host_mid_s(self) -> float:
        return 0.5 * (self.host_send_s + self.host_receive_s)


def _mode(mode: str | int | RunMode) -> RunMode:
    if isinstance(mode, str):
        try:
            return RunMode[mode.upper()]
        except KeyError:
            raise BoardError(
                f"run mode {mode!r} is unknown; choose one of "
                f"{', '.join(m.name.lower() for m in RunMode)}"
            ) from None
    return RunMode(mode)


class BoardClient:
    """The host end of the board protocol (see the module docstring).

    ``timeout_s`` is the board's turnaround allowed beyond the line time of a request and its
    reply (the link resends at once on a NAK; after a silent try it waits twice as long, up to
    ``retries`` times); a silent board is reported after the HELLO's tries.
    """

    def __init__(
        self,
        port_url: str,
        *,
        baud_rate: int = 921600,
        timeout_s: float = 0.05,
        retries: int = 6,
        exclusive: bool = True,
    ) -> None:
        self.port_url = port_url
        kwargs = {"exclusive": True} if exclusive and "://" not in port_url else {}
        try:
            self.port = serial.serial_for_url(port_url, baudrate=baud_rate, timeout=0.05, **kwargs)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise _port_error(port_url, exc) from None
        self.client = Client(self.port, reply_timeout_s=timeout_s, retries=retries)
        self.max_payload_bytes = MAX_PAYLOAD
        self.n_blocks: int | None = None
        self.last_hello: HelloInfo | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        self.port.close()

    def __enter__(self) -> BoardClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- session ---------------------------------------------------------------------------
    def hello(self, *, retries: int | None = None) -> HelloInfo:
        """Open a session: the board's identity, bundle and clock, with host send/receive times."""
        msg = Hello(random.getrandbits(64))
        sent = time.monotonic()
        try:
            reply = self.client.request(msg, retries=retries)
        except LinkTimeout:
            raise BoardSilentError(
                f"no HELLO reply from a board on {self.port_url!r}; check that the board "
                "runtime is serving this port (`python -m fpga.board serve`), the baud rate "
                "and the cable"
            ) from None
        except VersionMismatch as exc:
            raise BoardVersionError(f"{exc} (host protocol {PROTOCOL_VERSION})") from None
        received = time.monotonic()
        assert isinstance(reply, HelloReply)
        if reply.protocol_version != PROTOCOL_VERSION:
            raise BoardVersionError(
                f"board on {self.port_url!r} answered with protocol version "
                f"{reply.protocol_version!r}, this host speaks {PROTOCOL_VERSION}; update the "
                "older side"
            )
        self.max_payload_bytes = reply.max_payload_bytes
        self.client.sizer.limit(reply.max_payload_bytes)
        info = HelloInfo(
            reply.board_identity,
            reply.bundle,
            reply.board_clock_ns,
            sent,
            received,
            reply.max_payload_bytes,
            reply.protocol_version,
            reply.backend,
        )
        self.last_hello = info
        return info

    def clock_samples(self, count: int = 10) -> list[HelloInfo]:
        """``count`` HELLO round trips, for aligning the board's clock with the host's."""
        return [self.hello() for _ in range(count)]

    # -- bundles ---------------------------------------------------------------------------
    def ensure_bundle(self, bundle_dir: str | os.PathLike, *, progress: bool = True) -> BundleRef:
        """Make the bundle in ``bundle_dir`` the board's active one: SELECT it if the board holds
        it, else LOAD it (archive in chunks, verified by the board). Returns its reference."""
        bundle = load_bundle(bundle_dir, verify=True)
        self.n_blocks = len(bundle.manifest.blocks)
        ref = BundleRef(bundle.bundle_id, bundle.sha256)
        try:
            self.client.request(SelectBundle(ref.bundle_id, ref.sha256), timeout_s=SELECT_TIMEOUT_S)
            log.info("board holds bundle %s: selected", ref.bundle_id)
        except RemoteError as exc:
            if exc.code != ErrorCode.UNKNOWN_BUNDLE:
                raise
            self.load_bundle(bundle_dir, progress=progress)
        active = self.status().bundle
        if active != ref:
            raise BundleMismatchError(
                f"board on {self.port_url!r} runs bundle {active!r} after selecting "
                f"{ref.bundle_id!r} ({ref.sha256[:12]}...); RESET it and try again"
            )
        return ref

    def load_bundle(self, bundle_dir: str | os.PathLike, *, progress: bool = True) -> int:
        """Send the bundle's archive (LOAD_BEGIN, chunks, LOAD_END); returns the chunk count.
        The board verifies and selects it."""
        bundle = load_bundle(bundle_dir, verify=True)
        archive = pack_bundle(bundle_dir)
        log.info("loading bundle %s: %d bytes", bundle.bundle_id, len(archive))
        self.client.request(LoadBegin(bundle.bundle_id, len(archive), archive_sha256(archive)))
        chunks = self._send_sized(
            len(archive),
            lambda at, size: LoadChunk(at, archive[at : at + size - LOAD_CHUNK_HEADER_BYTES]),
            desc="load bundle",
            progress=progress,
        )
        # the board unpacks and checks every file's sha256: allow for it
        self.client.request(LoadEnd(bundle.bundle_id), timeout_s=max(30.0, len(archive) / 2e6))
        return chunks

    # -- batches ---------------------------------------------------------------------------
    def upload(self, batch_id: int, images: np.ndarray, *, progress: bool = False) -> int:
        """Upload uint8 ``images`` (N, H, W, C) as batch ``batch_id`` in frames sized to the
        line; returns the frame count."""
        images = check_images(images)
        return self._send_sized(
            images.nbytes,
            lambda at, size: upload_chunk(batch_id, images, at, size),
            desc=f"batch {batch_id}",
            progress=progress,
        )

    def _send_sized(self, total_bytes: int, chunk_at, *, desc: str, progress: bool) -> int:
        """Send ``total_bytes`` as messages ``chunk_at(offset, frame_size)`` in frames sized to
        the line (``Client.request_sized``), each carrying ``data`` from ``offset``; returns the
        frame count."""
        from tqdm import tqdm

        offset = frames = 0
        with tqdm(
            total=total_bytes, unit="B", unit_scale=True, desc=desc, disable=not progress
        ) as bar:
            while offset < total_bytes:
                sent, _ = self.client.request_sized(lambda size, at=offset: chunk_at(at, size))
                offset += len(sent.data)
                frames += 1
                bar.update(len(sent.data))
        return frames

    def run(
        self,
        batch_id: int,
        mode: str | RunMode = "iadi",
        budget_macs: int | None = None,
        *,
        repeats: int = 1,
        timeout_s: float = DEFAULT_RUN_TIMEOUT_S,
        retry_s: float = RUN_RETRY_S,
    ) -> tuple[int, int]:
        """Run a batch; returns the board clock's ``(start_ns, end_ns)`` around the run.

        Without a reply the request goes again every ``retry_s`` (a lost request would
        otherwise cost the whole ``timeout_s``), up to ``timeout_s`` in all. No frame should
        cross the line during a measurement window, so ``retry_s`` should exceed the run's
        duration (:func:`host.measure.run_retry_s` makes it three times the last run of the
        model); a resent request that arrives while the board runs is answered from its cache
        when the run ends.
        """
        if not (retry_s > 0 and timeout_s >= retry_s):
            raise ValueError(f"retry_s={retry_s!r} must be > 0 and at most timeout_s={timeout_s!r}")
        msg = RunBatch(batch_id, _mode(mode), int(budget_macs or 0), repeats)
        tries = min(math.ceil(timeout_s / retry_s), self.client.max_failures)
        done = self.client.request(msg, timeout_s=retry_s, retries=max(tries - 1, 0))
        return done.board_start_ns, done.board_end_ns

    def fetch(self, batch_id: int, count: int, *, first_index: int = 0) -> np.ndarray:
        """Results ``first_index .. first_index + count - 1`` of a batch as structured records
        (:func:`wire.protocol.results_dtype`), in RESULTS replies sized to the line."""
        n_blocks = MAX_BLOCKS if self.n_blocks is None else self.n_blocks  # any network fits
        parts, done = [], 0
        while done < count:
            _, reply = self.client.request_sized(
                lambda size, at=done: FetchResults(
                    batch_id,
                    first_index + at,
                    max(1, min(count - at, results_per_frame(n_blocks, size))),
                )
            )
            parts.append(reply.records)
            done += reply.count
        return np.concatenate(parts)

    def status(self) -> StatusReply:
        return self.client.request(Status())

    def reset(self) -> None:
        """Drop the board's batches, results and any load in progress (bundles stay)."""
        self.client.request(Reset())


def bundle_ref(bundle_dir: str | os.PathLike) -> BundleRef:
    """The reference (id, manifest sha256) under which a board stores ``bundle_dir``."""
    bundle = load_bundle(Path(bundle_dir), verify=False)
    return BundleRef(bundle.bundle_id, bundle.sha256)

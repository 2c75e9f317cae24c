"""The host<->board serial protocol: typed messages over frames (see docs/protocol.md).

Frames (sync marker, header, CRCs) live in :mod:`wire.frame` and are re-exported here. Each
message is a frozen dataclass whose wire layout is declared once, as a table of fields
(``LAYOUT``, see :mod:`wire.fields`): the table checks the fields when a message is built, packs
and unpacks the payload, and writes the ``Layout:`` line of the class docstring. Nothing is ever
pickled, and a malformed payload raises :class:`~wire.errors.ProtocolError` with one line and
nothing else.

This module runs on the board (PYNQ: Python 3.10, numpy 1.x): stdlib and numpy only, and no work
at import time.
"""

from __future__ import annotations

import enum
import functools
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from wire.errors import ProtocolError, UnknownMessageType, VersionMismatch
from wire.fields import (
    Blob,
    Enum,
    Field,
    Int,
    Items,
    Record,
    Sha256,
    Shape,
    Struct,
    Text,
    _int,
    _Reader,
    truncate_utf8,
)

# The frame layer is re-exported: wire.protocol is the one import for both layers.
from wire.frame import (  # noqa: F401
    FLAG_REPLY,
    FLAG_RETRANSMIT,
    FRAME_OVERHEAD_BYTES,
    HEADER_BYTES,
    MAX_FRAME_BYTES,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    SYNC,
    TRAILER_BYTES,
    Damaged,
    DecoderStats,
    Frame,
    FrameDecoder,
    encode_frame,
)

MAX_BUNDLE_BYTES = 1 << 31  # a bundle (bitstreams + weights) larger than 2 GiB is refused
MAX_ID_BYTES = 64  # bundle id, UTF-8
MAX_IDENTITY_BYTES = 128  # board identity string, UTF-8
MAX_BACKEND_BYTES = 32  # backend name in HELLO_REPLY ("cpu", "finn", "emulated")
BOARD_BACKENDS = ("cpu", "finn", "emulated")  # HELLO_REPLY.backend: who runs the graphs
MAX_ERROR_BYTES = 1024  # ERROR message text, UTF-8
MAX_BLOCKS = 128  # executed-blocks bitmask width
MAX_BATCHES_LISTED = 256  # STATUS_REPLY batch list
MAX_REPEATS = 1_000_000
MASK_BYTES = MAX_BLOCKS // 8


class MessageType(enum.IntEnum):
    """Frame message types: commands (host -> board) below 0x7F, replies at 0x80 and above;
    NAK (0x7F) is the link's own, in either direction."""

    HELLO = 0x01
    LOAD_BEGIN = 0x02
    LOAD_CHUNK = 0x03
    LOAD_END = 0x04
    SELECT_BUNDLE = 0x05
    UPLOAD_IMAGES = 0x06
    RUN_BATCH = 0x07
    FETCH_RESULTS = 0x08
    STATUS = 0x09
    RESET = 0x0A
    NAK = 0x7F
    ACK = 0x80
    HELLO_REPLY = 0x81
    RUN_DONE = 0x82
    RESULTS = 0x83
    STATUS_REPLY = 0x84
    ERROR = 0xFF


class RunMode(enum.IntEnum):
    """How RUN_BATCH runs the bundle: the full network, layer/channel gating, or gating + exits."""

    FULL = 0
    IADI = 1
    DDI = 2


class BoardState(enum.IntEnum):
    """The board runtime's state in STATUS_REPLY."""

    IDLE = 0  # no bundle selected
    LOADING = 1  # between LOAD_BEGIN and LOAD_END
    READY = 2  # a bundle is selected; images may be uploaded and run
    RUNNING = 3
    FAULT = 4  # the runtime hit an error it cannot recover from; RESET it


class ErrorCode(enum.IntEnum):
    """Codes of an ERROR reply."""

    UNKNOWN_COMMAND = 1  # message type not defined (or a reply type sent as a command)
    MALFORMED = 2  # the payload does not decode
    VERSION_MISMATCH = 3  # frame or HELLO protocol version differs from the board's
    BAD_STATE = 4  # command not valid now (e.g. RUN_BATCH with no bundle selected)
    UNKNOWN_BUNDLE = 5  # SELECT_BUNDLE of a bundle the board does not hold
    BUNDLE_HASH_MISMATCH = 6  # LOAD_END: the received bytes' sha256 differs from LOAD_BEGIN's
    LOAD_OUT_OF_ORDER = 7  # LOAD_CHUNK offset or total size does not match
    UNKNOWN_BATCH = 8
    BAD_RANGE = 9  # image or result indices outside the batch
    NO_MEMORY = 10
    UNSUPPORTED = 11  # e.g. DDI mode on a bundle without exits
    INTERNAL = 12  # the board runtime raised an unexpected exception


COMMANDS = frozenset(t for t in MessageType if t < MessageType.NAK)
EXPECTED_REPLY = {
    MessageType.HELLO: MessageType.HELLO_REPLY,
    MessageType.LOAD_BEGIN: MessageType.ACK,
    MessageType.LOAD_CHUNK: MessageType.ACK,
    MessageType.LOAD_END: MessageType.ACK,
    MessageType.SELECT_BUNDLE: MessageType.ACK,
    MessageType.UPLOAD_IMAGES: MessageType.ACK,
    MessageType.RUN_BATCH: MessageType.RUN_DONE,
    MessageType.FETCH_RESULTS: MessageType.RESULTS,
    MessageType.STATUS: MessageType.STATUS_REPLY,
    MessageType.RESET: MessageType.ACK,
}


def type_name(msg_type: int) -> str:
    """``'STATUS'`` for a known type, ``'0x55'`` for another."""
    try:
        return MessageType(msg_type).name
    except ValueError:
        return f"0x{msg_type:02x}"


# ----------------------------------------------------------------------------------------------
# Messages: a frozen dataclass and its field table (wire.fields) each


class Message(Record):
    """Base of every message: ``encode() -> payload``, ``decode(payload) -> message``."""

    TYPE: ClassVar[MessageType]


record = dataclass(frozen=True, eq=False)


@record
class BundleRef(Record):
    """A bundle the board holds: its id and the sha256 of its archive (hex)."""

    bundle_id: str
    sha256: str
    LAYOUT = (("sha256", Sha256()), ("bundle_id", Text(MAX_ID_BYTES, ident=True)))


@record
class Hello(Message):
    """HELLO: open a session. The board answers HELLO_REPLY, or ERROR(VERSION_MISMATCH)."""

    TYPE = MessageType.HELLO
    host_nonce: int
    protocol_version: int = PROTOCOL_VERSION
    LAYOUT = (("protocol_version", Int("B")), ("host_nonce", Int("Q")))


@record
class HelloReply(Message):
    """HELLO_REPLY: who the board is, what it holds and runs on, and its clock.

    ``host_nonce`` echoes HELLO's, so a reply to an earlier session is recognised;
    ``board_clock_ns`` is the board's monotonic clock when it answered; ``backend`` says what
    executes the graphs: ``cpu`` (numpy on the ARM), ``finn`` (FINN engines on a real overlay)
    or ``emulated`` (the emulated board or an emulated PL). The host labels energy by it
    (host/provenance.py); its default is ``emulated``, the label that can never pass for a
    hardware measurement.
    """

    TYPE = MessageType.HELLO_REPLY
    host_nonce: int
    board_identity: str
    board_clock_ns: int
    bundle: BundleRef | None = None
    max_payload_bytes: int = MAX_PAYLOAD
    protocol_version: int = PROTOCOL_VERSION
    backend: str = "emulated"
    LAYOUT = (
        ("protocol_version", Int("B")),
        ("host_nonce", Int("Q")),
        ("board_clock_ns", Int("q")),
        ("max_payload_bytes", Int("I", 1024, MAX_PAYLOAD)),
        ("board_identity", Text(MAX_IDENTITY_BYTES)),
        ("backend", Text(MAX_BACKEND_BYTES, ident=True)),
        ("bundle", Struct(BundleRef, optional=True)),
    )

    def check(self) -> None:
        if self.backend not in BOARD_BACKENDS:
            raise ProtocolError(
                f"HelloReply.backend {self.backend!r} is none of {', '.join(BOARD_BACKENDS)}"
            )


@record
class LoadBegin(Message):
    """LOAD_BEGIN: a bundle of ``total_size_bytes`` follows in LOAD_CHUNKs. Answered ACK."""

    TYPE = MessageType.LOAD_BEGIN
    bundle_id: str
    total_size_bytes: int
    sha256: str
    LAYOUT = (
        ("total_size_bytes", Int("Q", 1, MAX_BUNDLE_BYTES)),
        ("sha256", Sha256()),
        ("bundle_id", Text(MAX_ID_BYTES, ident=True)),
    )


LOAD_CHUNK_HEADER_BYTES = 8
MAX_CHUNK_BYTES = MAX_PAYLOAD - LOAD_CHUNK_HEADER_BYTES


@record
class LoadChunk(Message):
    """LOAD_CHUNK: ``data`` at ``offset_bytes`` of the bundle being loaded. Answered ACK.

    A chunk may start before the next byte expected (a resend in smaller frames after a lost
    reply): the bytes the board already holds are skipped."""

    TYPE = MessageType.LOAD_CHUNK
    offset_bytes: int
    data: bytes
    LAYOUT = (
        ("offset_bytes", Int("Q", 0, MAX_BUNDLE_BYTES - 1)),
        ("data", Blob(1, MAX_CHUNK_BYTES)),
    )


@record
class LoadEnd(Message):
    """LOAD_END: every chunk is sent; the board verifies size and sha256, then ACKs.

    A mismatch is answered ERROR(BUNDLE_HASH_MISMATCH) or ERROR(LOAD_OUT_OF_ORDER)."""

    TYPE = MessageType.LOAD_END
    bundle_id: str
    LAYOUT = (("bundle_id", Text(MAX_ID_BYTES, ident=True)),)


@record
class SelectBundle(Message):
    """SELECT_BUNDLE: make a bundle already on the board the active one. Answered ACK."""

    TYPE = MessageType.SELECT_BUNDLE
    bundle_id: str
    sha256: str
    LAYOUT = (("sha256", Sha256()), ("bundle_id", Text(MAX_ID_BYTES, ident=True)))


UPLOAD_HEADER_BYTES = 4 + 4 + 6 + 4  # batch_id, batch_size, shape, offset_bytes
MAX_UPLOAD_DATA = MAX_PAYLOAD - UPLOAD_HEADER_BYTES
MAX_BATCH_BYTES = (1 << 32) - 1


@record
class UploadImages(Message):
    """UPLOAD_IMAGES: bytes ``offset_bytes ..`` of batch ``batch_id``. Answered ACK.

    The batch is ``batch_size`` uint8 images of ``image_shape`` (H, W, C), C order; it is sent
    in chunks of any size at any byte (see :func:`upload_messages`), so a frame can be as small
    as the line needs. A chunk may repeat bytes already sent, never leave a gap.
    """

    TYPE = MessageType.UPLOAD_IMAGES
    batch_id: int
    batch_size: int
    image_shape: tuple[int, int, int]
    offset_bytes: int
    data: bytes
    LAYOUT = (
        ("batch_id", Int("I")),
        ("batch_size", Int("I", 1)),
        ("image_shape", Shape()),
        ("offset_bytes", Int("I")),
        ("data", Blob(1, MAX_UPLOAD_DATA)),
    )

    @property
    def image_bytes(self) -> int:
        return math.prod(self.image_shape)

    @property
    def batch_bytes(self) -> int:
        return self.batch_size * self.image_bytes

    def check(self) -> None:
        if self.batch_bytes > MAX_BATCH_BYTES:
            raise ProtocolError(
                f"UploadImages: a batch of {self.batch_size} images of {self.image_shape!r} "
                f"is {self.batch_bytes} bytes, more than {MAX_BATCH_BYTES}; use smaller batches"
            )
        end = self.offset_bytes + len(self.data)
        if end > self.batch_bytes:
            raise ProtocolError(
                f"UploadImages: bytes {self.offset_bytes}..{end - 1} lie outside a batch of "
                f"{self.batch_size} images of {self.image_shape!r} ({self.batch_bytes} bytes)"
            )


@record
class RunBatch(Message):
    """RUN_BATCH: run every image of a batch ``repeats`` times. Answered RUN_DONE.

    ``budget_macs`` is RADI's per-image budget in MACs (0 = none)."""

    TYPE = MessageType.RUN_BATCH
    batch_id: int
    mode: RunMode = RunMode.DDI
    budget_macs: int = 0
    repeats: int = 1
    LAYOUT = (
        ("batch_id", Int("I")),
        ("mode", Enum(RunMode)),
        ("repeats", Int("I", 1, MAX_REPEATS)),
        ("budget_macs", Int("Q")),
    )


@record
class RunDone(Message):
    """RUN_DONE: the batch ran between two readings of the board's monotonic clock."""

    TYPE = MessageType.RUN_DONE
    batch_id: int
    board_start_ns: int
    board_end_ns: int
    images_run: int
    LAYOUT = (
        ("batch_id", Int("I")),
        ("board_start_ns", Int("q")),
        ("board_end_ns", Int("q")),
        ("images_run", Int("Q")),
    )

    def check(self) -> None:
        if self.board_end_ns < self.board_start_ns:
            raise ProtocolError(
                f"RunDone.board_end_ns = {self.board_end_ns!r} is before board_start_ns = "
                f"{self.board_start_ns!r}"
            )


@record
class FetchResults(Message):
    """FETCH_RESULTS: per-image results ``first_index .. first_index+count-1``. Answered RESULTS."""

    TYPE = MessageType.FETCH_RESULTS
    batch_id: int
    first_index: int
    count: int
    LAYOUT = (("batch_id", Int("I")), ("first_index", Int("I")), ("count", Int("I", 1)))


@functools.cache
def results_dtype(n_blocks: int) -> np.dtype:
    """The fixed-size per-image record of RESULTS for a network of ``n_blocks`` blocks.

    Packed, little-endian, ``26 + 2 * n_blocks`` bytes: ``prediction u1 | exit_index i1 (-1 =
    final classifier) | executed_mask 16 x u1 (bit b of byte b//8, LSB first = block b ran) |
    macs <u8 | channels n_blocks x <u2 (output channels kept per block; 0 if skipped)``.
    """
    _int("results_dtype", "n_blocks", n_blocks, 0, MAX_BLOCKS)
    return np.dtype(
        [
            ("prediction", "u1"),
            ("exit_index", "i1"),
            ("executed_mask", "u1", (MASK_BYTES,)),
            ("macs", "<u8"),
            ("channels", "<u2", (n_blocks,)),
        ]
    )


def pack_executed(executed: np.ndarray) -> np.ndarray:
    """(N, n_blocks) bool of executed blocks -> (N, 16) uint8 ``executed_mask``."""
    executed = np.asarray(executed, dtype=bool)
    if executed.ndim != 2 or executed.shape[1] > MAX_BLOCKS:
        raise ProtocolError(
            f"executed blocks must be (N, <= {MAX_BLOCKS}) booleans, got shape {executed.shape!r}"
        )
    padded = np.zeros((executed.shape[0], MAX_BLOCKS), dtype=bool)
    padded[:, : executed.shape[1]] = executed
    return np.packbits(padded, axis=1, bitorder="little")


def unpack_executed(records: np.ndarray) -> np.ndarray:
    """RESULTS records -> (N, n_blocks) bool: which blocks each image executed."""
    n_blocks = records.dtype["channels"].shape[0]
    bits = np.unpackbits(records["executed_mask"], axis=1, bitorder="little")
    return bits[:, :n_blocks].astype(bool)


RESULTS_HEADER_BYTES = 13


class ResultRecords(Field):
    """``count u32 | n_blocks u8 | count records of results_dtype(n_blocks)``."""

    doc = "count u32 | n_blocks u8 (<= 128) | count records of results_dtype(n_blocks)"
    _ST = struct.Struct("<IB")

    def check(self, owner: str, name: str, value: Any) -> Any:
        names = getattr(getattr(value, "dtype", None), "names", None)
        if not isinstance(value, np.ndarray) or value.ndim != 1 or names is None:
            raise ProtocolError(f"{owner}.{name} must be a 1-D array of results_dtype(n_blocks)")
        shape = value.dtype["channels"].shape if "channels" in names else ()
        if len(shape) != 1 or value.dtype != results_dtype(min(shape[0], MAX_BLOCKS)):
            raise ProtocolError(
                f"{owner}.{name} has dtype {value.dtype!r}, not results_dtype(n_blocks)"
            )
        if RESULTS_HEADER_BYTES + value.nbytes > MAX_PAYLOAD:
            raise ProtocolError(
                f"{owner}: {len(value)} records exceed the {MAX_PAYLOAD}-byte payload; fetch at "
                f"most results_per_frame({shape[0]}) at a time"
            )
        if np.any(value["exit_index"] < -1):
            raise ProtocolError(f"{owner}: an exit_index is below -1 (-1 = final classifier)")
        spare = np.unpackbits(value["executed_mask"], axis=1, bitorder="little")
        if np.any(spare[:, shape[0] :]):
            raise ProtocolError(f"{owner}: executed_mask has bits set beyond block {shape[0]}")
        return value

    def pack(self, value: Any) -> bytes:
        n_blocks = value.dtype["channels"].shape[0]
        return self._ST.pack(len(value), n_blocks) + np.ascontiguousarray(value).tobytes()

    def unpack(self, r: _Reader, name: str) -> Any:
        count, n_blocks = r.unpack(self._ST, name)
        if n_blocks > MAX_BLOCKS:
            raise ProtocolError(f"{r.owner}.n_blocks = {n_blocks!r} exceeds {MAX_BLOCKS}")
        dtype = results_dtype(n_blocks)
        if count * dtype.itemsize > MAX_PAYLOAD:
            raise ProtocolError(f"{r.owner}.count = {count!r} records exceed MAX_PAYLOAD")
        return np.frombuffer(r.take(count * dtype.itemsize, name), dtype=dtype).copy()


def results_per_frame(n_blocks: int, max_payload: int = MAX_PAYLOAD) -> int:
    """How many RESULTS records of a ``n_blocks`` network fit in one payload."""
    return (max_payload - RESULTS_HEADER_BYTES) // results_dtype(n_blocks).itemsize


@record
class Results(Message):
    """RESULTS: one fixed-size record per image (see :func:`results_dtype`)."""

    TYPE = MessageType.RESULTS
    batch_id: int
    first_index: int
    records: np.ndarray  # (count,) of results_dtype(n_blocks)
    LAYOUT = (("batch_id", Int("I")), ("first_index", Int("I")), ("records", ResultRecords()))

    @property
    def n_blocks(self) -> int:
        return int(self.records.dtype["channels"].shape[0])

    @property
    def count(self) -> int:
        return len(self.records)


@record
class Status(Message):
    """STATUS: ask for the board's state. Answered STATUS_REPLY."""

    TYPE = MessageType.STATUS


@record
class Reset(Message):
    """RESET: drop uploaded batches and results and any load in progress; stored bundles stay.

    Answered ACK."""

    TYPE = MessageType.RESET


@record
class Nak(Message):
    """NAK: the frame with this frame's sequence number arrived damaged; send it again.

    From the board (``FLAG_REPLY`` set) it asks for the request again, from the host for the
    reply (which the board resends from its cache, without executing anything)."""

    TYPE = MessageType.NAK


@record
class BatchInfo(Record):
    """One uploaded batch in STATUS_REPLY."""

    batch_id: int
    batch_size: int
    images_uploaded: int
    LAYOUT = (("batch_id", Int("I")), ("batch_size", Int("I")), ("images_uploaded", Int("I")))

    def check(self) -> None:
        _int("BatchInfo", "images_uploaded", self.images_uploaded, 0, self.batch_size)


@record
class StatusReply(Message):
    """STATUS_REPLY: state, active bundle, uploaded batches, free memory."""

    TYPE = MessageType.STATUS_REPLY
    state: BoardState
    free_memory_bytes: int
    bundle: BundleRef | None = None
    batches: tuple[BatchInfo, ...] = ()
    LAYOUT = (
        ("state", Enum(BoardState)),
        ("free_memory_bytes", Int("Q")),
        ("bundle", Struct(BundleRef, optional=True)),
        ("batches", Items(BatchInfo, MAX_BATCHES_LISTED)),
    )


@record
class Ack(Message):
    """ACK: the command of type ``command`` was carried out."""

    TYPE = MessageType.ACK
    command: MessageType
    LAYOUT = (("command", Enum(MessageType)),)

    def check(self) -> None:
        if self.command not in COMMANDS:
            raise ProtocolError(f"Ack.command {self.command.name} is not a command")


@record
class ErrorReply(Message):
    """ERROR: the board refused or failed a command.

    ``command`` is the raw type byte of the refused frame (it may be unknown). A ``code`` this
    version does not know stays a plain int, so a newer board's errors still reach the user."""

    TYPE = MessageType.ERROR
    code: ErrorCode
    message: str
    command: int = 0
    LAYOUT = (
        ("code", Enum(ErrorCode, "H", keep_unknown=True)),
        ("command", Int("B")),
        ("message", Text(MAX_ERROR_BYTES, "H")),
    )

    @classmethod
    def about(cls, code: ErrorCode, message: str, command: int = 0) -> ErrorReply:
        """An ERROR with ``message`` flattened to one line and cut to the length limit."""
        line = " ".join(str(message).split())
        return cls(code, truncate_utf8(line, MAX_ERROR_BYTES), command)


MESSAGE_CLASSES: dict[MessageType, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        HelloReply,
        LoadBegin,
        LoadChunk,
        LoadEnd,
        SelectBundle,
        UploadImages,
        RunBatch,
        RunDone,
        FetchResults,
        Results,
        Status,
        StatusReply,
        Reset,
        Nak,
        Ack,
        ErrorReply,
    )
}


def encode_message(msg: Message, seq: int, *, flags: int = 0) -> bytes:
    """The frame carrying ``msg`` with sequence number ``seq``."""
    return encode_frame(msg.TYPE, seq, msg.encode(), flags=flags)


def version_error(version: int, peer: str = "the other side") -> VersionMismatch:
    """One line: ``peer`` speaks protocol ``version``, this side another; update the older."""
    return VersionMismatch(
        f"{peer} speaks protocol version {version!r}, this side {PROTOCOL_VERSION}; update the "
        "older side"
    )


def decode_message(frame: Frame) -> Message:
    """The message in ``frame``.

    Raises :class:`VersionMismatch` for a frame of another version, :class:`UnknownMessageType`
    for a type this version does not define and :class:`ProtocolError` for a malformed payload.
    """
    if frame.version != PROTOCOL_VERSION:
        raise version_error(frame.version, "a frame")
    try:
        cls = MESSAGE_CLASSES[MessageType(frame.msg_type)]
    except ValueError:
        raise UnknownMessageType(frame.msg_type) from None
    return cls.decode(frame.payload)


# ----------------------------------------------------------------------------------------------
# Sizing helpers: how batches are split into frames of a given payload size


def upload_chunk(
    batch_id: int, images: np.ndarray, offset_bytes: int, max_payload: int
) -> UploadImages:
    """The UPLOAD_IMAGES of ``images`` (the whole batch, (N, H, W, C) uint8) that starts at byte
    ``offset_bytes`` and fills at most ``max_payload`` payload bytes."""
    flat = images.reshape(-1)
    room = min(max_payload, MAX_PAYLOAD) - UPLOAD_HEADER_BYTES
    if room < 1:
        raise ProtocolError(f"a {max_payload!r}-byte payload holds no UPLOAD_IMAGES data")
    data = flat[offset_bytes : offset_bytes + room].tobytes()
    return UploadImages(batch_id, len(images), images.shape[1:], offset_bytes, data)


def check_images(images: np.ndarray) -> np.ndarray:
    """``images`` as a C-contiguous uint8 (N, H, W, C) array, N >= 1, or a one-line error."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or 0 in images.shape:
        raise ProtocolError(
            f"images must be a non-empty uint8 array (N, H, W, C), got {images.dtype!s} "
            f"{images.shape!r}"
        )
    return np.ascontiguousarray(images)


def upload_messages(
    batch_id: int, images: np.ndarray, *, max_payload: int = MAX_PAYLOAD
) -> list[UploadImages]:
    """Split a batch ``images`` (N, H, W, C) uint8 into UPLOAD_IMAGES of at most ``max_payload``
    payload bytes each (a fixed size; a link sized to the line calls :func:`upload_chunk`)."""
    images = check_images(images)
    out, offset = [], 0
    while offset < images.nbytes:
        out.append(upload_chunk(batch_id, images, offset, max_payload))
        offset += len(out[-1].data)
    return out


def fetch_messages(
    batch_id: int,
    count: int,
    n_blocks: int,
    *,
    first_index: int = 0,
    max_payload: int = MAX_PAYLOAD,
) -> list[FetchResults]:
    """FETCH_RESULTS requests for ``count`` results whose RESULTS replies each fit one payload
    of ``max_payload`` bytes."""
    per = results_per_frame(n_blocks, min(max_payload, MAX_PAYLOAD))
    if per < 1:
        raise ProtocolError(f"no RESULTS record fits a {max_payload!r}-byte payload")
    return [
        FetchResults(batch_id, first_index + i, min(per, count - i)) for i in range(0, count, per)
    ]


def layouts(messages: Sequence[type[Record]] = tuple(MESSAGE_CLASSES.values())) -> dict:
    """``{type name: layout text}`` of every message, as docs/protocol.md lists them."""
    return {cls.TYPE.name: cls.layout() for cls in messages}

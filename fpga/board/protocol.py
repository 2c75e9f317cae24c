"""The host<->board serial protocol: typed messages over frames (see docs/protocol.md).

Frames (sync marker, header, CRCs) live in :mod:`fpga.board.frame` and are re-exported here.
Messages are frozen dataclasses with an explicit little-endian layout (``struct``; arrays as raw
bytes after a small dtype/shape header; nothing is ever pickled). Every field is bounded and
checked when a message is built, so a decoder of a malformed payload raises
:class:`~fpga.board.errors.ProtocolError` with one line and nothing else.

This module runs on the board (PYNQ: Python 3.10, numpy 1.x): stdlib and numpy only, and no work
at import time.
"""

from __future__ import annotations

import enum
import functools
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fpga.board.errors import ProtocolError, UnknownMessageType

# The frame layer is re-exported: fpga.board.protocol is the one import for both layers.
from fpga.board.frame import (  # noqa: F401
    FLAG_REPLY,
    FLAG_RETRANSMIT,
    FRAME_OVERHEAD_BYTES,
    HEADER_BYTES,
    MAX_FRAME_BYTES,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    SYNC,
    TRAILER_BYTES,
    DecoderStats,
    Frame,
    FrameDecoder,
    encode_frame,
)

MAX_BUNDLE_BYTES = 1 << 31  # a bundle (bitstreams + weights) larger than 2 GiB is refused
MAX_ID_BYTES = 64  # bundle id, UTF-8
MAX_IDENTITY_BYTES = 128  # board identity string, UTF-8
BOARD_BACKENDS = ("cpu", "finn", "emulated")  # HELLO_REPLY.backend: who runs the graphs
MAX_ERROR_BYTES = 1024  # ERROR message text, UTF-8
MAX_BLOCKS = 128  # executed-blocks bitmask width
MAX_BATCHES_LISTED = 256  # STATUS_REPLY batch list
MAX_REPEATS = 1_000_000
MASK_BYTES = MAX_BLOCKS // 8


# ----------------------------------------------------------------------------------------------
# Enumerations


class MessageType(enum.IntEnum):
    """Frame message types: commands (host -> board) below 0x80, replies at 0x80 and above."""

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


COMMANDS = frozenset(t for t in MessageType if t < 0x80)
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
# Field checks (run when a message is built, whether by its sender or by a decoder)

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _int(owner: str, name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ProtocolError(f"{owner}.{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ProtocolError(f"{owner}.{name} = {value!r} is outside [{lo}, {hi}]")
    return int(value)


def _uint(owner: str, name: str, value: object, bits: int, lo: int = 0) -> int:
    return _int(owner, name, value, lo, (1 << bits) - 1)


def _enum(owner: str, name: str, value: object, kind: type[enum.IntEnum]) -> enum.IntEnum:
    number = _int(owner, name, value, 0, 0xFFFF)
    try:
        return kind(number)
    except ValueError:
        raise ProtocolError(
            f"{owner}.{name} = {value!r} is not a {kind.__name__} "
            f"({', '.join(m.name for m in kind)})"
        ) from None


def _text(owner: str, name: str, value: object, max_bytes: int, *, ident: bool = False) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{owner}.{name} must be a str, got {value!r}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ProtocolError(f"{owner}.{name} {value!r} cannot be encoded as UTF-8") from None
    if size > max_bytes:
        raise ProtocolError(f"{owner}.{name} is {size} bytes of UTF-8, more than {max_bytes}")
    if ident and (not value or not value.isprintable()):
        raise ProtocolError(f"{owner}.{name} {value!r} must be non-empty and printable")
    return value


def _sha256(owner: str, name: str, value: object) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value.lower()):
        raise ProtocolError(f"{owner}.{name} {value!r} is not a sha256 hex digest (64 hex digits)")
    return value.lower()


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # normalise a field of a frozen dataclass


def truncate_utf8(text: str, max_bytes: int) -> str:
    """``text`` as valid UTF-8 (unencodable characters become ``?``) of at most ``max_bytes``,
    never cut inside a character; a cut text ends in ``...``."""
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return data.decode("utf-8")
    return data[: max(0, max_bytes - 3)].decode("utf-8", "ignore") + "..."


# ----------------------------------------------------------------------------------------------
# Payload reading and writing

_DTYPE_CODES = {
    1: np.dtype("u1"),
    2: np.dtype("i1"),
    3: np.dtype("<u2"),
    4: np.dtype("<i2"),
    5: np.dtype("<u4"),
    6: np.dtype("<i4"),
    7: np.dtype("<u8"),
    8: np.dtype("<i8"),
    9: np.dtype("<f4"),
    10: np.dtype("<f8"),
}
_CODE_OF_DTYPE = {dtype: code for code, dtype in _DTYPE_CODES.items()}
MAX_NDIM = 8


class _Reader:
    """Reads fields from a payload; any shortfall or bad value is a one-line ProtocolError."""

    def __init__(self, payload: bytes, owner: str) -> None:
        self._data = bytes(payload)
        self._pos = 0
        self.owner = owner

    def take(self, n: int, name: str) -> bytes:
        left = len(self._data) - self._pos
        if n > left:
            raise ProtocolError(
                f"{self.owner} payload is truncated: {name!r} needs {n} bytes at offset "
                f"{self._pos}, {left} left; the sender is broken or speaks another version"
            )
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def unpack(self, fmt: str, name: str) -> tuple:
        st = struct.Struct("<" + fmt)
        return st.unpack(self.take(st.size, name))

    def text(self, name: str, length_fmt: str = "B") -> str:
        (n,) = self.unpack(length_fmt, name)
        raw = self.take(n, name)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{self.owner}.{name} is not UTF-8: {raw[:32]!r}") from None

    def sha256(self, name: str) -> str:
        return self.take(32, name).hex()

    def bundle(self, name: str) -> BundleRef | None:
        (present,) = self.unpack("B", name)
        if present not in (0, 1):
            raise ProtocolError(f"{self.owner}.{name} presence byte is {present!r}, not 0 or 1")
        if not present:
            return None
        sha = self.sha256(name)
        return BundleRef(self.text(name), sha)

    def array(self, name: str) -> np.ndarray:
        code, ndim = self.unpack("BB", name)
        if code not in _DTYPE_CODES:
            raise ProtocolError(f"{self.owner}.{name} has unknown dtype code {code!r}")
        if ndim > MAX_NDIM:
            raise ProtocolError(f"{self.owner}.{name} has {ndim!r} dimensions, more than 8")
        shape = self.unpack(f"{ndim}I", name)
        dtype = _DTYPE_CODES[code]
        count = 1
        for dim in shape:
            count *= dim
        size = count * dtype.itemsize
        if size > MAX_PAYLOAD:
            raise ProtocolError(f"{self.owner}.{name} of shape {shape!r} exceeds MAX_PAYLOAD")
        return np.frombuffer(self.take(size, name), dtype=dtype).reshape(shape).copy()

    def rest(self) -> bytes:
        return self.take(len(self._data) - self._pos, "data")

    def end(self) -> None:
        extra = len(self._data) - self._pos
        if extra:
            raise ProtocolError(
                f"{self.owner} payload has {extra} unexpected trailing bytes; "
                "the sender is broken or speaks another version"
            )


def _pack_text(value: str, length_fmt: str = "B") -> bytes:
    raw = value.encode("utf-8")
    return struct.pack("<" + length_fmt, len(raw)) + raw


def _pack_bundle(bundle: BundleRef | None) -> bytes:
    if bundle is None:
        return b"\x00"
    return b"\x01" + bytes.fromhex(bundle.sha256) + _pack_text(bundle.bundle_id)


def _pack_array(array: np.ndarray) -> bytes:
    dtype = array.dtype.newbyteorder("<")
    code = _CODE_OF_DTYPE.get(dtype)
    if code is None or array.ndim > MAX_NDIM:
        raise ProtocolError(f"array of dtype {array.dtype!s}, {array.ndim} dims cannot be sent")
    head = struct.pack(f"<BB{array.ndim}I", code, array.ndim, *array.shape)
    return head + array.astype(dtype, copy=False).tobytes()


# ----------------------------------------------------------------------------------------------
# Messages


class Message:
    """Base of every message: ``encode() -> payload``, ``decode(payload) -> message``."""

    TYPE: ClassVar[MessageType]

    def encode(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def decode(cls, payload: bytes) -> Message:
        raise NotImplementedError


class _Empty(Message):
    """A message without fields (STATUS, RESET)."""

    def encode(self) -> bytes:
        return b""

    @classmethod
    def decode(cls, payload: bytes) -> Message:
        _Reader(payload, cls.__name__).end()
        return cls()


@dataclass(frozen=True)
class BundleRef:
    """A bundle the board holds: its id and the sha256 of its archive (hex)."""

    bundle_id: str
    sha256: str

    def __post_init__(self) -> None:
        _text("BundleRef", "bundle_id", self.bundle_id, MAX_ID_BYTES, ident=True)
        _set(self, "sha256", _sha256("BundleRef", "sha256", self.sha256))


@dataclass(frozen=True)
class Hello(Message):
    """HELLO: open a session. The board answers HELLO_REPLY, or ERROR(VERSION_MISMATCH).

    Layout: ``protocol_version u8 | host_nonce u64``.
    """

    TYPE: ClassVar[MessageType] = MessageType.HELLO
    host_nonce: int
    protocol_version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        _set(self, "host_nonce", _uint("Hello", "host_nonce", self.host_nonce, 64))
        _set(self, "protocol_version", _uint("Hello", "protocol_version", self.protocol_version, 8))

    def encode(self) -> bytes:
        return struct.pack("<BQ", self.protocol_version, self.host_nonce)

    @classmethod
    def decode(cls, payload: bytes) -> Hello:
        r = _Reader(payload, cls.__name__)
        version, nonce = r.unpack("BQ", "header")
        r.end()
        return cls(host_nonce=nonce, protocol_version=version)


@dataclass(frozen=True)
class HelloReply(Message):
    """HELLO_REPLY: who the board is, what it holds, and its clock.

    Layout: ``protocol_version u8 | host_nonce u64 | board_clock_ns i64 | max_payload_bytes u32 |
    board_identity (u8 length + UTF-8) | bundle (u8 0/1 [+ sha256 32 B + u8 length + UTF-8]) |
    backend (u8 length + ASCII)``. ``host_nonce`` echoes HELLO's, so a reply to an earlier
    session is recognised. ``backend`` says what runs the graphs: ``cpu`` (onnxruntime on the
    ARM), ``finn`` (FINN engines on a real overlay) or ``emulated`` (the emulated board or an
    emulated PL); the host labels energy by it (host/measure.py). Its default is ``emulated``,
    the label that can never pass for a hardware measurement.
    """

    TYPE: ClassVar[MessageType] = MessageType.HELLO_REPLY
    host_nonce: int
    board_identity: str
    board_clock_ns: int  # the board's monotonic clock when it answered
    bundle: BundleRef | None = None
    max_payload_bytes: int = MAX_PAYLOAD
    protocol_version: int = PROTOCOL_VERSION
    backend: str = "emulated"

    def __post_init__(self) -> None:
        o = "HelloReply"
        if self.backend not in BOARD_BACKENDS:
            raise ProtocolError(
                f"{o}.backend {self.backend!r} is none of {', '.join(BOARD_BACKENDS)}"
            )
        _set(self, "host_nonce", _uint(o, "host_nonce", self.host_nonce, 64))
        _text(o, "board_identity", self.board_identity, MAX_IDENTITY_BYTES)
        _set(
            self,
            "board_clock_ns",
            _int(o, "board_clock_ns", self.board_clock_ns, -(2**63), 2**63 - 1),
        )
        if self.bundle is not None and not isinstance(self.bundle, BundleRef):
            raise ProtocolError(f"{o}.bundle must be a BundleRef or None, got {self.bundle!r}")
        _set(
            self,
            "max_payload_bytes",
            _int(o, "max_payload_bytes", self.max_payload_bytes, 1024, MAX_PAYLOAD),
        )
        _set(self, "protocol_version", _uint(o, "protocol_version", self.protocol_version, 8))

    def encode(self) -> bytes:
        head = struct.pack(
            "<BQqI",
            self.protocol_version,
            self.host_nonce,
            self.board_clock_ns,
            self.max_payload_bytes,
        )
        tail = _pack_bundle(self.bundle) + _pack_text(self.backend)
        return head + _pack_text(self.board_identity) + tail

    @classmethod
    def decode(cls, payload: bytes) -> HelloReply:
        r = _Reader(payload, cls.__name__)
        version, nonce, clock_ns, max_payload = r.unpack("BQqI", "header")
        identity = r.text("board_identity")
        bundle = r.bundle("bundle")
        backend = r.text("backend")
        r.end()
        return cls(nonce, identity, clock_ns, bundle, max_payload, version, backend)


@dataclass(frozen=True)
class LoadBegin(Message):
    """LOAD_BEGIN: a bundle of ``total_size_bytes`` follows in LOAD_CHUNKs. Answered ACK.

    Layout: ``total_size_bytes u64 | sha256 32 B | bundle_id (u8 length + UTF-8)``.
    """

    TYPE: ClassVar[MessageType] = MessageType.LOAD_BEGIN
    bundle_id: str
    total_size_bytes: int
    sha256: str

    def __post_init__(self) -> None:
        _text("LoadBegin", "bundle_id", self.bundle_id, MAX_ID_BYTES, ident=True)
        size = _int("LoadBegin", "total_size_bytes", self.total_size_bytes, 1, MAX_BUNDLE_BYTES)
        _set(self, "total_size_bytes", size)
        _set(self, "sha256", _sha256("LoadBegin", "sha256", self.sha256))

    def encode(self) -> bytes:
        return (
            struct.pack("<Q", self.total_size_bytes)
            + bytes.fromhex(self.sha256)
            + _pack_text(self.bundle_id)
        )

    @classmethod
    def decode(cls, payload: bytes) -> LoadBegin:
        r = _Reader(payload, cls.__name__)
        (size,) = r.unpack("Q", "total_size_bytes")
        sha = r.sha256("sha256")
        bundle_id = r.text("bundle_id")
        r.end()
        return cls(bundle_id, size, sha)


LOAD_CHUNK_HEADER_BYTES = 8
MAX_CHUNK_BYTES = MAX_PAYLOAD - LOAD_CHUNK_HEADER_BYTES


@dataclass(frozen=True)
class LoadChunk(Message):
    """LOAD_CHUNK: ``data`` at ``offset_bytes`` of the bundle being loaded. Answered ACK.

    Layout: ``offset_bytes u64 | data (the rest of the payload, 1..MAX_CHUNK_BYTES)``.
    """

    TYPE: ClassVar[MessageType] = MessageType.LOAD_CHUNK
    offset_bytes: int
    data: bytes

    def __post_init__(self) -> None:
        offset = _int("LoadChunk", "offset_bytes", self.offset_bytes, 0, MAX_BUNDLE_BYTES - 1)
        _set(self, "offset_bytes", offset)
        if not isinstance(self.data, (bytes, bytearray, memoryview)):
            raise ProtocolError(f"LoadChunk.data must be bytes, got {type(self.data).__name__}")
        _set(self, "data", bytes(self.data))
        if not 1 <= len(self.data) <= MAX_CHUNK_BYTES:
            raise ProtocolError(
                f"LoadChunk.data is {len(self.data)!r} bytes, outside [1, {MAX_CHUNK_BYTES}]"
            )

    def encode(self) -> bytes:
        return struct.pack("<Q", self.offset_bytes) + self.data

    @classmethod
    def decode(cls, payload: bytes) -> LoadChunk:
        r = _Reader(payload, cls.__name__)
        (offset,) = r.unpack("Q", "offset_bytes")
        return cls(offset, r.rest())


@dataclass(frozen=True)
class LoadEnd(Message):
    """LOAD_END: every chunk is sent; the board verifies size and sha256, then ACKs.

    A mismatch is answered ERROR(BUNDLE_HASH_MISMATCH) or ERROR(LOAD_OUT_OF_ORDER).
    Layout: ``bundle_id (u8 length + UTF-8)``.
    """

    TYPE: ClassVar[MessageType] = MessageType.LOAD_END
    bundle_id: str

    def __post_init__(self) -> None:
        _text("LoadEnd", "bundle_id", self.bundle_id, MAX_ID_BYTES, ident=True)

    def encode(self) -> bytes:
        return _pack_text(self.bundle_id)

    @classmethod
    def decode(cls, payload: bytes) -> LoadEnd:
        r = _Reader(payload, cls.__name__)
        bundle_id = r.text("bundle_id")
        r.end()
        return cls(bundle_id)


@dataclass(frozen=True)
class SelectBundle(Message):
    """SELECT_BUNDLE: make a bundle already on the board the active one. Answered ACK.

    Layout: ``sha256 32 B | bundle_id (u8 length + UTF-8)``.
    """

    TYPE: ClassVar[MessageType] = MessageType.SELECT_BUNDLE
    bundle_id: str
    sha256: str

    def __post_init__(self) -> None:
        _text("SelectBundle", "bundle_id", self.bundle_id, MAX_ID_BYTES, ident=True)
        _set(self, "sha256", _sha256("SelectBundle", "sha256", self.sha256))

    def encode(self) -> bytes:
        return bytes.fromhex(self.sha256) + _pack_text(self.bundle_id)

    @classmethod
    def decode(cls, payload: bytes) -> SelectBundle:
        r = _Reader(payload, cls.__name__)
        sha = r.sha256("sha256")
        bundle_id = r.text("bundle_id")
        r.end()
        return cls(bundle_id, sha)


UPLOAD_HEADER_BYTES = 12 + 2 + 4 * 4  # ids + array dtype/ndim + 4 dims


@dataclass(frozen=True, eq=False)
class UploadImages(Message):
    """UPLOAD_IMAGES: images ``first_index ..`` of batch ``batch_id``. Answered ACK.

    ``images`` is uint8 of shape (N, H, W, C), N >= 1; a batch of ``batch_size`` images is sent
    in as many messages as it takes (see :func:`upload_messages`).
    Layout: ``batch_id u32 | batch_size u32 | first_index u32 | array`` where array is
    ``dtype code u8 (1 = uint8) | ndim u8 (4) | N, H, W, C as u32 | N*H*W*C bytes``.
    """

    TYPE: ClassVar[MessageType] = MessageType.UPLOAD_IMAGES
    batch_id: int
    batch_size: int
    first_index: int
    images: np.ndarray  # (N, H, W, C) uint8

    def __post_init__(self) -> None:
        o = "UploadImages"
        _set(self, "batch_id", _uint(o, "batch_id", self.batch_id, 32))
        _set(self, "batch_size", _uint(o, "batch_size", self.batch_size, 32, lo=1))
        _set(self, "first_index", _uint(o, "first_index", self.first_index, 32))
        images = self.images
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            raise ProtocolError(
                f"{o}.images must be a uint8 array (N, H, W, C), got "
                f"{getattr(images, 'dtype', type(images).__name__)!s} "
                f"{getattr(images, 'shape', '')!r}"
            )
        if images.shape[0] < 1 or 0 in images.shape:
            raise ProtocolError(f"{o}.images of shape {images.shape!r} is empty")
        if images.nbytes + UPLOAD_HEADER_BYTES > MAX_PAYLOAD:
            raise ProtocolError(
                f"{o}.images of shape {images.shape!r} exceeds the {MAX_PAYLOAD}-byte payload; "
                "send fewer images per message (upload_messages does)"
            )
        if self.first_index + images.shape[0] > self.batch_size:
            raise ProtocolError(
                f"{o}: images {self.first_index}..{self.first_index + images.shape[0] - 1} "
                f"lie outside a batch of {self.batch_size}"
            )

    @property
    def count(self) -> int:
        return int(self.images.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UploadImages):
            return NotImplemented
        return (self.batch_id, self.batch_size, self.first_index) == (
            other.batch_id,
            other.batch_size,
            other.first_index,
        ) and np.array_equal(self.images, other.images)

    __hash__ = None  # type: ignore[assignment]

    def encode(self) -> bytes:
        head = struct.pack("<III", self.batch_id, self.batch_size, self.first_index)
        return head + _pack_array(self.images)

    @classmethod
    def decode(cls, payload: bytes) -> UploadImages:
        r = _Reader(payload, cls.__name__)
        batch_id, batch_size, first = r.unpack("III", "header")
        images = r.array("images")
        r.end()
        return cls(batch_id, batch_size, first, images)


@dataclass(frozen=True)
class RunBatch(Message):
    """RUN_BATCH: run every image of a batch ``repeats`` times. Answered RUN_DONE.

    ``budget_macs`` is RADI's per-image budget in MACs (0 = none).
    Layout: ``batch_id u32 | mode u8 | repeats u32 | budget_macs u64``.
    """

    TYPE: ClassVar[MessageType] = MessageType.RUN_BATCH
    batch_id: int
    mode: RunMode = RunMode.DDI
    budget_macs: int = 0
    repeats: int = 1

    def __post_init__(self) -> None:
        o = "RunBatch"
        _set(self, "batch_id", _uint(o, "batch_id", self.batch_id, 32))
        _set(self, "mode", _enum(o, "mode", self.mode, RunMode))
        _set(self, "budget_macs", _uint(o, "budget_macs", self.budget_macs, 64))
        _set(self, "repeats", _int(o, "repeats", self.repeats, 1, MAX_REPEATS))

    def encode(self) -> bytes:
        return struct.pack("<IBIQ", self.batch_id, self.mode, self.repeats, self.budget_macs)

    @classmethod
    def decode(cls, payload: bytes) -> RunBatch:
        r = _Reader(payload, cls.__name__)
        batch_id, mode, repeats, budget = r.unpack("IBIQ", "fields")
        r.end()
        return cls(batch_id, mode, budget, repeats)


@dataclass(frozen=True)
class RunDone(Message):
    """RUN_DONE: the batch ran between two readings of the board's monotonic clock.

    Layout: ``batch_id u32 | board_start_ns i64 | board_end_ns i64 | images_run u64``.
    """

    TYPE: ClassVar[MessageType] = MessageType.RUN_DONE
    batch_id: int
    board_start_ns: int
    board_end_ns: int
    images_run: int

    def __post_init__(self) -> None:
        o = "RunDone"
        _set(self, "batch_id", _uint(o, "batch_id", self.batch_id, 32))
        start = _int(o, "board_start_ns", self.board_start_ns, -(2**63), 2**63 - 1)
        _set(self, "board_start_ns", start)
        _set(self, "board_end_ns", _int(o, "board_end_ns", self.board_end_ns, start, 2**63 - 1))
        _set(self, "images_run", _uint(o, "images_run", self.images_run, 64))

    def encode(self) -> bytes:
        return struct.pack(
            "<IqqQ", self.batch_id, self.board_start_ns, self.board_end_ns, self.images_run
        )

    @classmethod
    def decode(cls, payload: bytes) -> RunDone:
        r = _Reader(payload, cls.__name__)
        fields_ = r.unpack("IqqQ", "fields")
        r.end()
        return cls(*fields_)


@dataclass(frozen=True)
class FetchResults(Message):
    """FETCH_RESULTS: per-image results ``first_index .. first_index+count-1``. Answered RESULTS.

    Layout: ``batch_id u32 | first_index u32 | count u32``.
    """

    TYPE: ClassVar[MessageType] = MessageType.FETCH_RESULTS
    batch_id: int
    first_index: int
    count: int

    def __post_init__(self) -> None:
        o = "FetchResults"
        _set(self, "batch_id", _uint(o, "batch_id", self.batch_id, 32))
        _set(self, "first_index", _uint(o, "first_index", self.first_index, 32))
        _set(self, "count", _int(o, "count", self.count, 1, MAX_PAYLOAD))

    def encode(self) -> bytes:
        return struct.pack("<III", self.batch_id, self.first_index, self.count)

    @classmethod
    def decode(cls, payload: bytes) -> FetchResults:
        r = _Reader(payload, cls.__name__)
        fields_ = r.unpack("III", "fields")
        r.end()
        return cls(*fields_)


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


def results_per_frame(n_blocks: int, max_payload: int = MAX_PAYLOAD) -> int:
    """How many RESULTS records of a ``n_blocks`` network fit in one payload."""
    return (max_payload - RESULTS_HEADER_BYTES) // results_dtype(n_blocks).itemsize


@dataclass(frozen=True, eq=False)
class Results(Message):
    """RESULTS: one fixed-size record per image (see :func:`results_dtype`).

    Layout: ``batch_id u32 | first_index u32 | count u32 | n_blocks u8 | count records``.
    """

    TYPE: ClassVar[MessageType] = MessageType.RESULTS
    batch_id: int
    first_index: int
    records: np.ndarray  # (count,) of results_dtype(n_blocks)

    def __post_init__(self) -> None:
        o = "Results"
        _set(self, "batch_id", _uint(o, "batch_id", self.batch_id, 32))
        _set(self, "first_index", _uint(o, "first_index", self.first_index, 32))
        records = self.records
        names = getattr(getattr(records, "dtype", None), "names", None)
        if not isinstance(records, np.ndarray) or records.ndim != 1 or names is None:
            raise ProtocolError(f"{o}.records must be a 1-D array of results_dtype(n_blocks)")
        shape = records.dtype["channels"].shape if "channels" in names else ()
        if len(shape) != 1 or records.dtype != results_dtype(min(shape[0], MAX_BLOCKS)):
            raise ProtocolError(
                f"{o}.records has dtype {records.dtype!r}, not results_dtype(n_blocks)"
            )
        if RESULTS_HEADER_BYTES + records.nbytes > MAX_PAYLOAD:
            raise ProtocolError(
                f"{o}: {len(records)} records exceed the {MAX_PAYLOAD}-byte payload; fetch at "
                f"most results_per_frame({self.n_blocks}) at a time"
            )
        if np.any(records["exit_index"] < -1):
            raise ProtocolError(f"{o}: an exit_index is below -1 (-1 = final classifier)")
        spare = np.unpackbits(records["executed_mask"], axis=1, bitorder="little")
        if np.any(spare[:, self.n_blocks :]):
            raise ProtocolError(f"{o}: executed_mask has bits set beyond block {self.n_blocks}")

    @property
    def n_blocks(self) -> int:
        return int(self.records.dtype["channels"].shape[0])

    @property
    def count(self) -> int:
        return len(self.records)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Results):
            return NotImplemented
        return (
            (self.batch_id, self.first_index) == (other.batch_id, other.first_index)
            and self.records.dtype == other.records.dtype
            and self.records.tobytes() == other.records.tobytes()
        )

    __hash__ = None  # type: ignore[assignment]

    def encode(self) -> bytes:
        head = struct.pack(
            "<IIIB", self.batch_id, self.first_index, len(self.records), self.n_blocks
        )
        return head + np.ascontiguousarray(self.records).tobytes()

    @classmethod
    def decode(cls, payload: bytes) -> Results:
        r = _Reader(payload, cls.__name__)
        batch_id, first, count, n_blocks = r.unpack("IIIB", "header")
        if n_blocks > MAX_BLOCKS:
            raise ProtocolError(f"Results.n_blocks = {n_blocks!r} exceeds {MAX_BLOCKS}")
        dtype = results_dtype(n_blocks)
        if count * dtype.itemsize > MAX_PAYLOAD:
            raise ProtocolError(f"Results.count = {count!r} records exceed MAX_PAYLOAD")
        records = np.frombuffer(r.take(count * dtype.itemsize, "records"), dtype=dtype).copy()
        r.end()
        return cls(batch_id, first, records)


@dataclass(frozen=True)
class Status(_Empty):
    """STATUS: ask for the board's state. Answered STATUS_REPLY. Empty payload."""

    TYPE: ClassVar[MessageType] = MessageType.STATUS


@dataclass(frozen=True)
class Reset(_Empty):
    """RESET: drop uploaded batches and results and any load in progress; stored bundles stay.

    Answered ACK. Empty payload.
    """

    TYPE: ClassVar[MessageType] = MessageType.RESET


@dataclass(frozen=True)
class BatchInfo:
    """One uploaded batch in STATUS_REPLY. Layout: ``batch_id, batch_size, images_uploaded``
    as u32 each."""

    batch_id: int
    batch_size: int
    images_uploaded: int

    def __post_init__(self) -> None:
        _set(self, "batch_id", _uint("BatchInfo", "batch_id", self.batch_id, 32))
        _set(self, "batch_size", _uint("BatchInfo", "batch_size", self.batch_size, 32))
        uploaded = _int("BatchInfo", "images_uploaded", self.images_uploaded, 0, self.batch_size)
        _set(self, "images_uploaded", uploaded)


@dataclass(frozen=True)
class StatusReply(Message):
    """STATUS_REPLY: state, active bundle, uploaded batches, free memory.

    Layout: ``state u8 | free_memory_bytes u64 | bundle (as in HELLO_REPLY) | n u16 (<= 256) |
    n x (batch_id u32, batch_size u32, images_uploaded u32)``.
    """

    TYPE: ClassVar[MessageType] = MessageType.STATUS_REPLY
    state: BoardState
    free_memory_bytes: int
    bundle: BundleRef | None = None
    batches: tuple[BatchInfo, ...] = ()

    def __post_init__(self) -> None:
        o = "StatusReply"
        _set(self, "state", _enum(o, "state", self.state, BoardState))
        _set(self, "free_memory_bytes", _uint(o, "free_memory_bytes", self.free_memory_bytes, 64))
        if self.bundle is not None and not isinstance(self.bundle, BundleRef):
            raise ProtocolError(f"{o}.bundle must be a BundleRef or None, got {self.bundle!r}")
        batches = tuple(self.batches)
        if len(batches) > MAX_BATCHES_LISTED or not all(isinstance(b, BatchInfo) for b in batches):
            raise ProtocolError(
                f"{o}.batches must be at most {MAX_BATCHES_LISTED} BatchInfo, got {len(batches)}"
            )
        _set(self, "batches", batches)

    def encode(self) -> bytes:
        parts = [struct.pack("<BQ", self.state, self.free_memory_bytes), _pack_bundle(self.bundle)]
        parts.append(struct.pack("<H", len(self.batches)))
        parts += [
            struct.pack("<III", b.batch_id, b.batch_size, b.images_uploaded) for b in self.batches
        ]
        return b"".join(parts)

    @classmethod
    def decode(cls, payload: bytes) -> StatusReply:
        r = _Reader(payload, cls.__name__)
        state, free = r.unpack("BQ", "header")
        bundle = r.bundle("bundle")
        (n,) = r.unpack("H", "batch count")
        if n > MAX_BATCHES_LISTED:
            raise ProtocolError(f"StatusReply lists {n!r} batches, more than {MAX_BATCHES_LISTED}")
        batches = tuple(BatchInfo(*r.unpack("III", "batches")) for _ in range(n))
        r.end()
        return cls(state, free, bundle, batches)


@dataclass(frozen=True)
class Ack(Message):
    """ACK: the command of type ``command`` was carried out. Layout: ``command u8``."""

    TYPE: ClassVar[MessageType] = MessageType.ACK
    command: MessageType

    def __post_init__(self) -> None:
        command = _enum("Ack", "command", self.command, MessageType)
        if command not in COMMANDS:
            raise ProtocolError(f"Ack.command {command.name} is a reply, not a command")
        _set(self, "command", command)

    def encode(self) -> bytes:
        return struct.pack("<B", self.command)

    @classmethod
    def decode(cls, payload: bytes) -> Ack:
        r = _Reader(payload, cls.__name__)
        (command,) = r.unpack("B", "command")
        r.end()
        return cls(command)


@dataclass(frozen=True)
class ErrorReply(Message):
    """ERROR: the board refused or failed a command.

    ``command`` is the raw type byte of the refused frame (it may be unknown). A ``code`` this
    version does not know stays a plain int, so a newer board's errors still reach the user.
    Layout: ``code u16 | command u8 | message (u16 length + UTF-8, <= 1024 bytes)``.
    """

    TYPE: ClassVar[MessageType] = MessageType.ERROR
    code: ErrorCode
    message: str
    command: int = 0

    def __post_init__(self) -> None:
        code = _uint("ErrorReply", "code", self.code, 16)
        try:
            _set(self, "code", ErrorCode(code))
        except ValueError:
            _set(self, "code", code)
        _text("ErrorReply", "message", self.message, MAX_ERROR_BYTES)
        _set(self, "command", _uint("ErrorReply", "command", self.command, 8))

    @classmethod
    def about(cls, code: ErrorCode, message: str, command: int = 0) -> ErrorReply:
        """An ERROR with ``message`` flattened to one line and cut to the length limit."""
        line = " ".join(str(message).split())
        return cls(code, truncate_utf8(line, MAX_ERROR_BYTES), command)

    def encode(self) -> bytes:
        return struct.pack("<HB", self.code, self.command) + _pack_text(self.message, "H")

    @classmethod
    def decode(cls, payload: bytes) -> ErrorReply:
        r = _Reader(payload, cls.__name__)
        code, command = r.unpack("HB", "header")
        message = r.text("message", "H")
        r.end()
        return cls(code, message, command)


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
        Ack,
        ErrorReply,
    )
}


def encode_message(msg: Message, seq: int, *, flags: int = 0) -> bytes:
    """The frame carrying ``msg`` with sequence number ``seq``."""
    return encode_frame(msg.TYPE, seq, msg.encode(), flags=flags)


def decode_message(frame: Frame) -> Message:
    """The message in ``frame``.

    Raises :class:`UnknownMessageType` for a type this version does not define and
    :class:`ProtocolError` for a frame of another version or a malformed payload.
    """
    if frame.version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"frame of protocol version {frame.version!r}, this side speaks {PROTOCOL_VERSION}; "
            "update the older side"
        )
    try:
        cls = MESSAGE_CLASSES[MessageType(frame.msg_type)]
    except ValueError:
        raise UnknownMessageType(frame.msg_type) from None
    return cls.decode(frame.payload)


# ----------------------------------------------------------------------------------------------
# Sizing helpers: how batches are split into frames

DEFAULT_UPLOAD_PAYLOAD = 16 * 1024  # bytes per UPLOAD_IMAGES payload: 5 CIFAR images


def images_per_frame(image_shape: Sequence[int], max_payload: int = DEFAULT_UPLOAD_PAYLOAD) -> int:
    """How many uint8 images of ``image_shape`` (H, W, C) fit in one UPLOAD_IMAGES payload."""
    h, w, c = (int(d) for d in image_shape)
    image_bytes = h * w * c
    n = (min(max_payload, MAX_PAYLOAD) - UPLOAD_HEADER_BYTES) // max(image_bytes, 1)
    if n < 1:
        raise ProtocolError(
            f"one image of shape {tuple(image_shape)!r} ({image_bytes} bytes) does not fit in a "
            f"{max_payload}-byte payload; raise max_payload (at most {MAX_PAYLOAD})"
        )
    return n


def upload_messages(
    batch_id: int,
    images: np.ndarray,
    *,
    first_index: int = 0,
    batch_size: int | None = None,
    max_payload: int = DEFAULT_UPLOAD_PAYLOAD,
) -> list[UploadImages]:
    """Split ``images`` (N, H, W, C) uint8 into UPLOAD_IMAGES messages of at most
    ``max_payload`` bytes each, whole images per message."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ProtocolError(f"images must be (N, H, W, C), got shape {images.shape!r}")
    per = images_per_frame(images.shape[1:], max_payload)
    size = first_index + len(images) if batch_size is None else batch_size
    return [
        UploadImages(batch_id, size, first_index + i, images[i : i + per])
        for i in range(0, len(images), per)
    ]


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

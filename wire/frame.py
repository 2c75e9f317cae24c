"""Frames of the host<->board serial protocol: encoding and an incremental, resynchronising decoder.

A frame is ``SYNC | header | header CRC | payload | payload CRC`` (see docs/protocol.md)::

    offset  size  field
    0       2     sync marker A5 5A
    2       1     protocol version (PROTOCOL_VERSION)
    3       1     message type (protocol.MessageType)
    4       1     flags (FLAG_REPLY, FLAG_RETRANSMIT)
    5       4     sequence number, uint32 LE
    9       4     payload length, uint32 LE, <= MAX_PAYLOAD
    13      2     CRC-16/CCITT-FALSE of bytes 0..12, LE
    15      n     payload (a message, encoded by wire.protocol)
    15+n    4     CRC-32 (zlib) of the payload, LE

The header CRC lets a reader reject a corrupt length at once instead of waiting for up to
MAX_PAYLOAD bytes that will never come, and tells it which frame was damaged when only the
payload is: the decoder reports such a frame's header (:class:`Damaged`) so that the link can
ask for it again at once (a NAK) instead of waiting for a timeout. This module is stdlib only
and runs on the board.
"""

from __future__ import annotations

import binascii
import struct
import zlib
from dataclasses import dataclass

from wire.errors import ProtocolError

PROTOCOL_VERSION = 2  # 2: NAK, byte-range UPLOAD_IMAGES, HELLO_REPLY backend
SYNC = b"\xa5\x5a"
MAX_PAYLOAD = 64 * 1024  # bytes; bounds every allocation and every wait of a reader
FLAG_REPLY = 0x01  # set on every frame the board sends
FLAG_RETRANSMIT = 0x02  # set by a client on a repeated request (diagnostics only)

_HEADER = struct.Struct("<2sBBBII")  # sync, version, type, flags, seq, length
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
HEADER_BYTES = _HEADER.size + _U16.size  # 15: sync + header + header CRC
TRAILER_BYTES = _U32.size  # 4: payload CRC-32
FRAME_OVERHEAD_BYTES = HEADER_BYTES + TRAILER_BYTES  # 19 bytes on the wire per frame
MAX_FRAME_BYTES = FRAME_OVERHEAD_BYTES + MAX_PAYLOAD


def _header_crc(header: bytes | bytearray | memoryview) -> int:
    return binascii.crc_hqx(header, 0xFFFF)  # CRC-16/CCITT-FALSE


@dataclass(frozen=True)
class Frame:
    """One decoded frame: the message type and payload, not yet decoded into a message."""

    msg_type: int
    seq: int
    payload: bytes
    flags: int = 0
    version: int = PROTOCOL_VERSION

    @property
    def is_reply(self) -> bool:
        return bool(self.flags & FLAG_REPLY)

    @property
    def wire_bytes(self) -> int:
        return FRAME_OVERHEAD_BYTES + len(self.payload)


def encode_frame(
    msg_type: int,
    seq: int,
    payload: bytes,
    *,
    flags: int = 0,
    version: int = PROTOCOL_VERSION,
    max_payload: int = MAX_PAYLOAD,
) -> bytes:
    """The bytes of one frame (sync, header, header CRC, payload, payload CRC)."""
    for name, value, top in (
        ("msg_type", msg_type, 0xFF),
        ("flags", flags, 0xFF),
        ("version", version, 0xFF),
        ("seq", seq, 0xFFFFFFFF),
    ):
        if not 0 <= value <= top:
            raise ProtocolError(f"frame {name} {value!r} is outside [0, {top}]")
    if len(payload) > max_payload:
        raise ProtocolError(
            f"payload of {len(payload)!r} bytes exceeds the {max_payload}-byte frame limit; "
            "split the message (e.g. fewer images per UPLOAD_IMAGES)"
        )
    header = _HEADER.pack(SYNC, version, msg_type, flags, seq, len(payload))
    return b"".join(
        (header, _U16.pack(_header_crc(header)), payload, _U32.pack(zlib.crc32(payload)))
    )


@dataclass(frozen=True)
class Damaged:
    """A frame whose header was intact but whose payload was not (bad payload CRC, or bytes
    missing when the line went idle): who sent it and under which sequence number."""

    msg_type: int
    seq: int
    flags: int
    version: int

    @property
    def is_reply(self) -> bool:
        return bool(self.flags & FLAG_REPLY)


@dataclass
class DecoderStats:
    """What a :class:`FrameDecoder` delivered and dropped since it was made."""

    frames: int = 0  # valid frames delivered
    bytes_discarded: int = 0  # bytes dropped while scanning for a sync marker
    crc_errors: int = 0  # candidate frames with a bad header or payload CRC
    oversize: int = 0  # headers with a valid CRC announcing a payload > max_payload
    abandoned: int = 0  # partial frames given up by flush() (the line went idle)


class FrameDecoder:
    """Incremental frame decoder that resynchronises after garbage and keeps bounded memory.

    ``feed(data)`` returns the frames completed by ``data``. A candidate frame starts at a sync
    marker; if its header CRC is bad, its length exceeds ``max_payload``, or its payload CRC is
    bad, one byte is dropped and the scan restarts at the byte after the bad sync, so a frame
    hidden inside a corrupt one is still found. The buffer never holds more than
    ``max_buffered_bytes``; it holds less than one frame between calls. The header of a frame
    whose payload was damaged, or abandoned by :meth:`flush`, is appended to ``damaged`` (the
    caller drains it; at most ``MAX_DAMAGED`` are kept).
    """

    MAX_DAMAGED = 64

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        if not 0 <= max_payload <= MAX_PAYLOAD:
            raise ProtocolError(f"max_payload {max_payload!r} is outside [0, {MAX_PAYLOAD}]")
        self.max_payload = max_payload
        self.stats = DecoderStats()
        self._buf = bytearray()
        self.damaged: list[Damaged] = []
        self._chunk = FRAME_OVERHEAD_BYTES + max_payload  # bytes appended per parse step

    @property
    def buffered_bytes(self) -> int:
        """Bytes held: part of a frame not yet complete, or a trailing half sync marker."""
        return len(self._buf)

    @property
    def max_buffered_bytes(self) -> int:
        """Upper bound of ``buffered_bytes``, even inside ``feed``."""
        return 2 * self._chunk

    @property
    def wanted_bytes(self) -> int:
        """Bytes still needed to complete the candidate frame at the head of the buffer.

        A reader can ask its port for exactly this many (a pyserial ``read(n)`` blocks until
        ``n`` bytes or its timeout), so it never waits on bytes a valid frame does not need.
        """
        held = len(self._buf)
        if held < HEADER_BYTES:  # empty, half a sync marker, or part of a header
            return HEADER_BYTES - held
        # _parse leaves a full header only once it is verified and the frame is incomplete.
        (length,) = _U32.unpack_from(self._buf, 9)
        return max(1, HEADER_BYTES + length + TRAILER_BYTES - held)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add received bytes; return the frames they complete, in order."""
        frames: list[Frame] = []
        view = memoryview(data).cast("B")
        for start in range(0, len(view), self._chunk):
            self._buf += view[start : start + self._chunk]
            self._parse(frames)
        return frames

    def flush(self) -> list[Frame]:
        """Give up on a partial frame (the line went idle or closed) and rescan what is held.

        Returns any complete frames found after the abandoned sync marker; afterwards the buffer
        holds nothing.
        """
        frames: list[Frame] = []
        while self._buf:
            if self._buf.startswith(SYNC):
                self.stats.abandoned += 1
                if len(self._buf) >= HEADER_BYTES:  # _parse keeps a full header only if valid
                    self._report(self._buf)
                self._discard(1)
            self._parse(frames)
            if self._buf and not self._buf.startswith(SYNC):  # half a sync marker at the end
                self._discard(len(self._buf))
        return frames

    def _report(self, buf: bytearray) -> None:
        _, version, msg_type, flags, seq, _ = _HEADER.unpack_from(buf)
        if len(self.damaged) < self.MAX_DAMAGED:
            self.damaged.append(Damaged(msg_type, seq, flags, version))

    def _discard(self, n: int) -> None:
        del self._buf[:n]
        self.stats.bytes_discarded += n

    def _parse(self, out: list[Frame]) -> None:
        buf = self._buf
        while buf:
            start = buf.find(SYNC)
            if start < 0:  # keep a last byte that may be the first half of a sync marker
                self._discard(len(buf) - (1 if buf[-1] == SYNC[0] else 0))
                return
            if start:
                self._discard(start)
            if len(buf) < HEADER_BYTES:
                return
            _, version, msg_type, flags, seq, length = _HEADER.unpack_from(buf)
            (header_crc,) = _U16.unpack_from(buf, _HEADER.size)
            if _header_crc(buf[: _HEADER.size]) != header_crc:
                self.stats.crc_errors += 1
                self._discard(1)
                continue
            if length > self.max_payload:
                self.stats.oversize += 1
                self._discard(1)
                continue
            end = HEADER_BYTES + length
            if len(buf) < end + TRAILER_BYTES:
                return  # wait for the rest of the frame
            payload = bytes(buf[HEADER_BYTES:end])
            (payload_crc,) = _U32.unpack_from(buf, end)
            if zlib.crc32(payload) != payload_crc:
                self.stats.crc_errors += 1
                self._report(buf)
                self._discard(1)
                continue
            del buf[: end + TRAILER_BYTES]
            self.stats.frames += 1
            out.append(Frame(msg_type, seq, payload, flags, version))

"""Reliable request/response over a serial port: :class:`Client` (host) and :class:`Server` (board).

Rules (docs/protocol.md has the full story):

- The client numbers each request with a fresh uint32 sequence number and waits for the reply
  frame with the same number and ``FLAG_REPLY`` set; anything else it receives is stale and
  ignored. With no valid reply in time it sends the same request again (same sequence number,
  ``FLAG_RETRANSMIT`` set), waiting ``backoff`` times longer each try, and after ``retries``
  retransmissions raises :class:`LinkTimeout`.
- The server answers every request with exactly one reply per received copy. It keeps the last
  ``cache_size`` replies keyed by (sequence number, type, payload CRC): a retransmitted request
  is answered from the cache and never executed twice. A HELLO starts a new session and clears
  the cache.
- The server never dies of what it receives: garbage is skipped by the frame decoder, a frame it
  cannot decode is answered ``ERROR(MALFORMED | UNKNOWN_COMMAND | VERSION_MISMATCH)``, a handler
  exception becomes ``ERROR(INTERNAL)``, a :class:`CommandError` becomes ``ERROR(code)``.

Everything is synchronous; a server runs in whatever thread calls ``serve_forever`` and
:meth:`Server.stop` may be called from any other. Ports are any pyserial-like object (see
:mod:`fpga.board.ports`); the link sets the port's ``timeout`` to its polling interval.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import serial

from fpga.board.errors import (
    CommandError,
    LinkError,
    LinkTimeout,
    ProtocolError,
    RemoteError,
    UnknownMessageType,
)
from fpga.board.ports import FaultyPort, FdPort, open_pty_pair, port_name
from fpga.board.protocol import (
    COMMANDS,
    DEFAULT_UPLOAD_PAYLOAD,
    EXPECTED_REPLY,
    FLAG_REPLY,
    FLAG_RETRANSMIT,
    FRAME_OVERHEAD_BYTES,
    MAX_BATCHES_LISTED,
    MAX_BLOCKS,
    MAX_FRAME_BYTES,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    RESULTS_HEADER_BYTES,
    Ack,
    BoardState,
    ErrorCode,
    ErrorReply,
    FetchResults,
    Frame,
    FrameDecoder,
    Hello,
    HelloReply,
    Message,
    MessageType,
    Status,
    StatusReply,
    UploadImages,
    decode_message,
    encode_message,
    images_per_frame,
    results_dtype,
    type_name,
)

__all__ = [
    "BITS_PER_BYTE",
    "Client",
    "FaultyPort",
    "FdPort",
    "Handler",
    "Link",
    "LinkStats",
    "Server",
    "UploadCost",
    "line_time_s",
    "measure_round_trip",
    "open_pty_pair",
    "round_trip_s",
    "wire_overhead",
]

log = logging.getLogger(__name__)

BITS_PER_BYTE = 10  # a UART byte in 8N1 is a start bit, 8 data bits and a stop bit

Handler = Callable[[Message], "Message | None"]


def line_time_s(n_bytes: int, baud_rate: float | None) -> float:
    """Seconds ``n_bytes`` take on a UART at ``baud_rate`` (8N1); 0 for a line without a rate."""
    if not baud_rate:
        return 0.0
    return n_bytes * BITS_PER_BYTE / float(baud_rate)


@dataclass
class LinkStats:
    """Counters of one end of a link (the decoder's own are in ``Link.decoder.stats``)."""

    frames_sent: int = 0
    bytes_sent: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    retransmissions: int = 0  # client: requests sent again after a timeout
    stale_replies: int = 0  # client: frames that were not the awaited reply
    requests_executed: int = 0  # server: requests handed to the handler
    duplicates_answered: int = 0  # server: retransmitted requests answered from the cache
    ignored_frames: int = 0  # server: reply frames (e.g. an echo on loop://)
    idle_flushes: int = 0  # partial frames given up after the line went idle


class Link:
    """Frames over one port: ``send`` bytes, ``receive`` the next complete frame by a deadline.

    ``poll_s`` becomes the port's ``timeout`` (how long one ``read`` may block). A partial frame
    is given up when no byte arrived for ``idle_flush_s`` (a corrupt header cannot make the
    reader wait for ever).
    """

    def __init__(
        self,
        port: object,
        *,
        poll_s: float = 0.05,
        idle_flush_s: float = 0.5,
        max_payload: int = MAX_PAYLOAD,
    ) -> None:
        self.port = port
        self.name = port_name(port)
        self.poll_s = poll_s
        self.idle_flush_s = idle_flush_s
        self.decoder = FrameDecoder(max_payload)
        self.stats = LinkStats()
        self._frames: deque[Frame] = deque()
        self._last_rx = time.monotonic()
        port.timeout = poll_s

    @property
    def baud_rate(self) -> float | None:
        rate = getattr(self.port, "baudrate", None)
        return float(rate) if isinstance(rate, (int, float)) and rate > 0 else None

    def send(self, data: bytes) -> None:
        """Write one encoded frame."""
        try:
            self.port.write(data)
        except (OSError, serial.SerialException) as exc:
            raise LinkError(
                f"cannot write to {self.name!r}: {exc}; check that the port is open and the "
                "cable is plugged in"
            ) from None
        self.stats.frames_sent += 1
        self.stats.bytes_sent += len(data)

    def receive(self, deadline: float) -> Frame | None:
        """The next frame, or ``None`` if none is complete by ``deadline`` (time.monotonic)."""
        while not self._frames:
            if time.monotonic() >= deadline:
                return None
            self._poll()
        self.stats.frames_received += 1
        return self._frames.popleft()

    def _poll(self) -> None:
        try:
            waiting = getattr(self.port, "in_waiting", 0)
            data = self.port.read(min(max(waiting, self.decoder.wanted_bytes), MAX_FRAME_BYTES))
        except (OSError, serial.SerialException) as exc:
            raise LinkError(
                f"cannot read from {self.name!r}: {exc}; the port was closed or unplugged"
            ) from None
        now = time.monotonic()
        if data:
            self._last_rx = now
            self.stats.bytes_received += len(data)
            self._frames.extend(self.decoder.feed(data))
        elif self.decoder.buffered_bytes and now - self._last_rx > self.idle_flush_s:
            self.stats.idle_flushes += 1
            self._frames.extend(self.decoder.flush())


# ----------------------------------------------------------------------------------------------
# Host side


def _reply_budget_bytes(msg: Message) -> int:
    """An upper bound of the reply to ``msg`` in bytes, to allow for its time on a slow line."""
    if isinstance(msg, FetchResults):  # records of at most MAX_BLOCKS blocks
        records = msg.count * results_dtype(MAX_BLOCKS).itemsize
        return min(MAX_FRAME_BYTES, FRAME_OVERHEAD_BYTES + RESULTS_HEADER_BYTES + records)
    if isinstance(msg, Status):  # state, memory, bundle, up to 256 batches
        return FRAME_OVERHEAD_BYTES + 112 + MAX_BATCHES_LISTED * 12
    return FRAME_OVERHEAD_BYTES + 1100  # ACK, HELLO_REPLY, RUN_DONE or an ERROR of <= 1 KiB


class Client:
    """The host end: ``request(command) -> reply``, with retransmission on timeout.

    A try waits ``reply_timeout_s * backoff**try`` (capped at ``max_timeout_s``) plus the time
    the request and the largest possible reply take on the line at the port's baud rate. A
    command that runs long on the board (RUN_BATCH) needs ``timeout_s`` at least as long as the
    run. Not for concurrent use from several threads (calls are serialised by a lock).
    """

    def __init__(
        self,
        port: object,
        *,
        reply_timeout_s: float = 1.0,
        retries: int = 5,
        backoff: float = 2.0,
        max_timeout_s: float = 16.0,
        poll_s: float = 0.05,
        first_seq: int | None = None,
    ) -> None:
        self.link = Link(port, poll_s=poll_s)
        self.reply_timeout_s = reply_timeout_s
        self.retries = retries
        self.backoff = backoff
        self.max_timeout_s = max_timeout_s
        # A random start keeps a restarted host from reusing the sequence numbers (and so the
        # cached replies) of its previous session on a board that did not restart.
        self._seq = random.getrandbits(32) if first_seq is None else first_seq & 0xFFFFFFFF
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.link.name

    @property
    def stats(self) -> LinkStats:
        return self.link.stats

    def request(
        self, msg: Message, *, timeout_s: float | None = None, retries: int | None = None
    ) -> Message:
        """Send command ``msg`` and return the board's reply.

        Raises :class:`RemoteError` if the board answers ERROR, :class:`LinkTimeout` if no
        reply comes after every retransmission, :class:`ProtocolError` if the reply does not fit
        the command.
        """
        if msg.TYPE not in COMMANDS:
            raise ProtocolError(f"{type_name(msg.TYPE)} is a reply; a client sends only commands")
        base_s = self.reply_timeout_s if timeout_s is None else timeout_s
        tries = 1 + (self.retries if retries is None else retries)
        with self._lock:
            seq = self._seq
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            first = encode_message(msg, seq)
            line_s = line_time_s(len(first) + _reply_budget_bytes(msg), self.link.baud_rate)
            started = time.monotonic()
            for attempt in range(tries):
                if attempt:
                    self.stats.retransmissions += 1
                    log.debug(
                        "%s: no reply to %s seq %d, try %d",
                        self.name,
                        msg.TYPE.name,
                        seq,
                        attempt + 1,
                    )
                frame = first if attempt == 0 else encode_message(msg, seq, flags=FLAG_RETRANSMIT)
                self.link.send(frame)
                wait_s = min(base_s * self.backoff**attempt, max(self.max_timeout_s, base_s))
                reply = self._await_reply(msg, seq, time.monotonic() + wait_s + line_s)
                if reply is not None:
                    return self._check(msg, reply)
            raise LinkTimeout(
                f"no reply to {msg.TYPE.name} (seq {seq}) on {self.name!r} after {tries} tries "
                f"in {time.monotonic() - started:.1f} s; check the cable, the baud rate and that "
                "the board runtime is serving"
            )

    def _await_reply(self, msg: Message, seq: int, deadline: float) -> Message | None:
        while True:
            frame = self.link.receive(deadline)
            if frame is None:
                return None
            if not frame.is_reply or frame.seq != seq:
                self.stats.stale_replies += 1
                log.debug("%s: ignoring %s seq %d", self.name, type_name(frame.msg_type), frame.seq)
                continue
            reply = decode_message(frame)
            if (
                isinstance(msg, Hello)
                and getattr(reply, "host_nonce", msg.host_nonce) != msg.host_nonce
            ):
                self.stats.stale_replies += 1  # a HELLO_REPLY of an earlier session
                continue
            return reply

    def _check(self, msg: Message, reply: Message) -> Message:
        if isinstance(reply, ErrorReply):
            raise RemoteError(reply.code, reply.message, msg.TYPE.name, self.name)
        expected = EXPECTED_REPLY[msg.TYPE]
        if expected != reply.TYPE or (isinstance(reply, Ack) and reply.command != msg.TYPE):
            raise ProtocolError(
                f"board on {self.name!r} answered {msg.TYPE.name} with {reply!r:.120}, expected "
                f"{expected.name}; the board runtime is broken"
            )
        return reply


# ----------------------------------------------------------------------------------------------
# Board side


class Server:
    """The board end: receive commands, run ``handler(msg) -> reply``, answer each once.

    ``handler`` returns the reply message (``None`` means ``Ack(msg.TYPE)``); it may raise
    :class:`CommandError` to answer ERROR with a code. Any other exception is logged and
    answered ``ERROR(INTERNAL)``.
    """

    def __init__(self, port: object, *, cache_size: int = 16, poll_s: float = 0.05) -> None:
        if cache_size < 1:
            raise ValueError(f"Server cache_size {cache_size!r} must be at least 1")
        self.link = Link(port, poll_s=poll_s)
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()
        self._stop = threading.Event()

    @property
    def name(self) -> str:
        return self.link.name

    @property
    def stats(self) -> LinkStats:
        return self.link.stats

    def stop(self) -> None:
        """Make ``serve_forever`` return within one poll interval (callable from any thread)."""
        self._stop.set()

    def serve_forever(self, handler: Handler) -> None:
        """Answer requests until :meth:`stop` (also one requested before this call started).

        A dead port raises :class:`LinkError`; nothing a peer sends or a handler does stops it.
        """
        log.info("serving protocol version %d on %s", PROTOCOL_VERSION, self.name)
        try:
            while not self._stop.is_set():
                self.serve_one(handler, timeout_s=self.link.poll_s)
        finally:
            self._stop.clear()

    def serve_one(self, handler: Handler, timeout_s: float | None = None) -> bool:
        """Answer one request (executed or from the cache); False if none came in ``timeout_s``."""
        deadline = math.inf if timeout_s is None else time.monotonic() + timeout_s
        while not self._stop.is_set():
            step = min(deadline, time.monotonic() + self.link.poll_s)
            frame = self.link.receive(step)
            if frame is not None:
                if self._answer(frame, handler):
                    return True
            elif time.monotonic() >= deadline:
                return False
        return False

    def _answer(self, frame: Frame, handler: Handler) -> bool:
        if frame.is_reply:  # a reply is never a request (e.g. our own echo on loop://)
            self.stats.ignored_frames += 1
            return False
        key = (frame.seq, frame.msg_type, zlib.crc32(frame.payload))
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.stats.duplicates_answered += 1
            log.debug("%s: duplicate %s seq %d", self.name, type_name(frame.msg_type), frame.seq)
            self.link.send(cached)
            return True
        msg, reply = self._execute(frame, handler)
        try:
            data = encode_message(reply, frame.seq, flags=FLAG_REPLY)
        except Exception as exc:  # a reply that does not encode is a handler bug too
            log.error("%s: reply %r does not encode: %s", self.name, type(reply).__name__, exc)
            reply = ErrorReply.about(
                ErrorCode.INTERNAL, f"reply does not encode: {exc}", frame.msg_type
            )
            data = encode_message(reply, frame.seq, flags=FLAG_REPLY)
        if isinstance(msg, Hello) and isinstance(reply, HelloReply):
            self._cache.clear()  # a new session: earlier sequence numbers mean nothing now
        self._cache[key] = data
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        self.link.send(data)
        return True

    def _execute(self, frame: Frame, handler: Handler) -> tuple[Message | None, Message]:
        command = frame.msg_type
        if frame.version != PROTOCOL_VERSION:
            text = (
                f"frame of protocol version {frame.version}; this board speaks {PROTOCOL_VERSION}"
            )
            return None, ErrorReply.about(ErrorCode.VERSION_MISMATCH, text, command)
        try:
            msg = decode_message(frame)
        except UnknownMessageType as exc:
            return None, ErrorReply.about(ErrorCode.UNKNOWN_COMMAND, str(exc), command)
        except ProtocolError as exc:
            return None, ErrorReply.about(ErrorCode.MALFORMED, str(exc), command)
        if msg.TYPE not in COMMANDS:
            text = f"{msg.TYPE.name} is a reply, not a command"
            return msg, ErrorReply.about(ErrorCode.UNKNOWN_COMMAND, text, command)
        if isinstance(msg, Hello) and msg.protocol_version != PROTOCOL_VERSION:
            text = f"host speaks protocol version {msg.protocol_version}, board {PROTOCOL_VERSION}"
            return msg, ErrorReply.about(ErrorCode.VERSION_MISMATCH, text, command)
        self.stats.requests_executed += 1
        try:
            reply = handler(msg)
        except CommandError as exc:
            try:
                return msg, ErrorReply.about(ErrorCode(exc.code), exc.message, command)
            except (ValueError, TypeError):
                text = f"handler raised CommandError with unknown code {exc.code!r}: {exc.message}"
                return msg, ErrorReply.about(ErrorCode.INTERNAL, text, command)
        except Exception as exc:  # a handler bug must not take the board off the line
            log.exception("%s: handler failed on %s", self.name, msg.TYPE.name)
            return msg, ErrorReply.about(
                ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}", command
            )
        if reply is None:
            reply = Ack(msg.TYPE)
        if not isinstance(reply, Message) or reply.TYPE not in (
            EXPECTED_REPLY[msg.TYPE],
            MessageType.ERROR,
        ):
            log.error("%s: handler answered %s with %r", self.name, msg.TYPE.name, reply)
            text = f"handler answered {msg.TYPE.name} with {type(reply).__name__}"
            return msg, ErrorReply.about(ErrorCode.INTERNAL, text, command)
        return msg, reply


# ----------------------------------------------------------------------------------------------
# Measurements the benchmark reports


@dataclass(frozen=True)
class UploadCost:
    """Bytes on the wire for uploading a batch of images with UPLOAD_IMAGES (and its ACKs)."""

    images: int
    image_bytes: int  # H * W * C of one image
    frames: int  # UPLOAD_IMAGES frames (each answered by one ACK frame)
    payload_bytes: int  # image bytes alone: images * image_bytes
    host_to_board_bytes: int  # the UPLOAD_IMAGES frames, headers and CRCs included
    board_to_host_bytes: int  # the ACK frames

    @property
    def wire_bytes(self) -> int:
        return self.host_to_board_bytes + self.board_to_host_bytes

    @property
    def wire_bytes_per_payload_byte(self) -> float:
        """Bytes on the wire, both directions, per image byte (1.0 = no overhead)."""
        return self.wire_bytes / self.payload_bytes

    @property
    def overhead_fraction(self) -> float:
        return self.wire_bytes_per_payload_byte - 1.0

    def line_time_s(self, baud_rate: float) -> float:
        """Seconds the host->board bytes take at ``baud_rate`` (8N1; ACKs travel the other way)."""
        return line_time_s(self.host_to_board_bytes, baud_rate)


def wire_overhead(
    images: int,
    image_shape: tuple[int, int, int] = (32, 32, 3),
    *,
    max_payload: int = DEFAULT_UPLOAD_PAYLOAD,
) -> UploadCost:
    """The exact bytes on the wire to upload ``images`` uint8 images of ``image_shape`` (H, W, C)
    in frames of at most ``max_payload`` payload bytes, as :func:`upload_messages` splits them."""
    if images < 1:
        raise ValueError(f"wire_overhead needs at least one image, got {images!r}")
    h, w, c = (int(d) for d in image_shape)
    per = images_per_frame((h, w, c), max_payload)
    full, last = divmod(images, per)

    def frame_bytes(n: int) -> int:  # encode a real message: the count is exact, not a formula
        msg = UploadImages(0, images, 0, np.zeros((n, h, w, c), np.uint8))
        return FRAME_OVERHEAD_BYTES + len(msg.encode())

    to_board = full * frame_bytes(per) + (frame_bytes(last) if last else 0)
    frames = full + (1 if last else 0)
    ack = FRAME_OVERHEAD_BYTES + len(Ack(MessageType.UPLOAD_IMAGES).encode())
    image_bytes = h * w * c
    return UploadCost(images, image_bytes, frames, images * image_bytes, to_board, frames * ack)


def round_trip_s(client: Client, trips: int = 100, message: Message | None = None) -> float:
    """Mean seconds per request/reply of ``message`` (default STATUS) over ``trips`` trips."""
    if trips < 1:
        raise ValueError(f"round_trip_s needs at least one trip, got {trips!r}")
    message = Status() if message is None else message
    client.request(message)  # warm up: the first trip pays for buffers and imports
    started = time.perf_counter()
    for _ in range(trips):
        client.request(message)
    return (time.perf_counter() - started) / trips


def measure_round_trip(host_port: object, board_port: object, trips: int = 100) -> float:
    """Seconds per STATUS round trip between two ends of a line, with a trivial server
    answering on ``board_port`` in a thread (the link's cost alone, no board runtime)."""
    reply = StatusReply(BoardState.IDLE, free_memory_bytes=0)
    server = Server(board_port)
    thread = threading.Thread(target=server.serve_forever, args=(lambda msg: reply,), daemon=True)
    thread.start()
    try:
        return round_trip_s(Client(host_port, reply_timeout_s=2.0), trips)
    finally:
        server.stop()
        thread.join(timeout=5.0)

"""Reliable request/response over a serial line: :class:`Client` (host) and :class:`Server` (board).

Rules (docs/protocol.md has the full story):

- The client numbers each request with a fresh uint32 sequence number and waits for the reply
  frame with the same number and ``FLAG_REPLY`` set; anything else it receives is stale and
  ignored.
- A frame whose header is intact but whose payload is not (CRC, or bytes missing when the line
  went idle) is answered at once with a NAK of its sequence number: the board NAKs a damaged
  request and the client sends it again; the client NAKs a damaged reply and the board sends it
  again from its cache. Only a frame lost whole (header damaged, line stalled) waits for a
  timeout, and every timeout is the line time of what is in flight (at the port's baud rate)
  plus the board's turnaround allowance, doubled after each silent try.
- Frames are sized to the line: a stream of data (an upload, a bundle load, a results fetch) is
  cut by :meth:`Client.request_sized` into messages of the :class:`FrameSizer`'s current size,
  which halves after every failed try (down to ``MIN_PAYLOAD``) and grows back by 8% after
  every success (up to 16 KiB, or the board's largest payload if smaller). A message that
  failed is cut again at the smaller size, under a new sequence number; chunks at byte offsets
  make that harmless.
- The server answers every request with exactly one reply per received copy. It keeps the last
  ``cache_size`` replies keyed by (sequence number, type, payload CRC): a retransmitted request
  is answered from the cache and never executed twice. A HELLO clears the cache.
- The server never dies of what it receives: garbage is skipped by the frame decoder, a frame it
  cannot decode is answered ``ERROR(MALFORMED | UNKNOWN_COMMAND | VERSION_MISMATCH)``, a handler
  exception becomes ``ERROR(INTERNAL)``, a :class:`CommandError` becomes ``ERROR(code)``.

Everything is synchronous; a server runs in whatever thread calls ``serve_forever`` and
:meth:`Server.stop` may be called from any other. Ports are any pyserial-like object (see
:mod:`wire.ports`); the link sets the port's ``timeout`` to its polling interval.
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

import serial

from wire.errors import (
    CommandError,
    LinkError,
    LinkTimeout,
    ProtocolError,
    RemoteError,
    UnknownMessageType,
    VersionMismatch,
)
from wire.ports import port_name
from wire.protocol import (
    COMMANDS,
    EXPECTED_REPLY,
    FLAG_REPLY,
    FLAG_RETRANSMIT,
    FRAME_OVERHEAD_BYTES,
    HEADER_BYTES,
    MAX_BATCHES_LISTED,
    MAX_BLOCKS,
    MAX_FRAME_BYTES,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    RESULTS_HEADER_BYTES,
    Ack,
    BoardState,
    Damaged,
    ErrorCode,
    ErrorReply,
    FetchResults,
    Frame,
    FrameDecoder,
    Hello,
    HelloReply,
    Message,
    MessageType,
    Nak,
    Status,
    StatusReply,
    decode_message,
    encode_message,
    results_dtype,
    type_name,
    upload_messages,
    version_error,
)

log = logging.getLogger(__name__)

BITS_PER_BYTE = 10  # a UART byte in 8N1 is a start bit, 8 data bits and a stop bit
MIN_PAYLOAD = 256  # the smallest frame payload a FrameSizer shrinks to
MAX_SIZED_PAYLOAD = 16 * 1024  # the largest it grows to: 0.35% overhead, 0.18 s at 921,600 baud
IDLE_GAP_FLOOR_S = 0.02  # a partial frame is given up after this long without a byte (+ 32 bytes)
SHORT_GAP_S = 0.002  # ... or this long (+ 8 bytes) when it lacks no more than DROP_BYTES
MIN_TURNAROUND_S = 0.002  # the least turnaround a client allows, however fast the board answered
DROP_BYTES = 4  # a frame this close to complete and silent has lost bytes; it is not late

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
    retransmissions: int = 0  # client: requests sent again (after a NAK or a timeout)
    timeouts: int = 0  # client: tries that ended with nothing heard
    naks_sent: int = 0  # damaged frames asked for again
    naks_received: int = 0  # our frames the peer asked for again
    resized: int = 0  # client: messages given up and cut again smaller
    stale_replies: int = 0  # client: frames that were not the awaited reply
    requests_executed: int = 0  # server: requests handed to the handler
    duplicates_answered: int = 0  # server: retransmitted requests answered from the cache
    replies_resent: int = 0  # server: cached replies sent again after a NAK
    ignored_frames: int = 0  # server: reply frames (e.g. an echo on loop://)
    idle_flushes: int = 0  # partial frames given up after the line went idle


class FrameSizer:
    """The payload size of the next frame of a stream: halved after a failed try (down to
    ``min_payload``), grown by ``grow`` after a success (up to ``max_payload``). Halving and
    growing by 8% settle where about one try in ten fails."""

    def __init__(
        self,
        max_payload: int = MAX_SIZED_PAYLOAD,
        *,
        min_payload: int = MIN_PAYLOAD,
        start: int = 4096,
        grow: float = 1.08,
    ) -> None:
        if not 64 <= min_payload <= max_payload <= MAX_PAYLOAD:
            raise ValueError(
                f"FrameSizer needs 64 <= min_payload {min_payload!r} <= max_payload "
                f"{max_payload!r} <= {MAX_PAYLOAD}"
            )
        self.min_payload, self.max_payload, self.grow = min_payload, max_payload, grow
        self._size = float(min(max(start, min_payload), max_payload))
        self.smallest = self.payload

    @property
    def payload(self) -> int:
        return int(self._size)

    def limit(self, max_payload: int) -> None:
        """The peer accepts at most ``max_payload`` bytes (HELLO_REPLY)."""
        self.max_payload = max(self.min_payload, min(max_payload, self.max_payload))
        self._size = min(self._size, self.max_payload)

    def success(self) -> None:
        self._size = min(self.max_payload, self._size * self.grow)

    def failure(self) -> None:
        self._size = max(self.min_payload, self._size / 2)
        self.smallest = min(self.smallest, self.payload)


class Link:
    """Frames over one port: ``send`` bytes, ``receive`` the next frame (or the header of a
    damaged one) by a deadline.

    A partial frame is given up when no byte arrived for ``idle_gap_s`` (default 20 ms plus 32
    bytes of line time), or for 2 ms plus 8 bytes of line time when it lacks at most
    ``DROP_BYTES`` bytes: its sender has sent it whole, so bytes were dropped, and the frame is
    NAKed at once instead of after a timeout. ``poll_s`` (default half the gap) becomes the
    port's ``timeout`` (shortened while such a frame waits). Raise ``idle_gap_s`` for a USB
    adapter whose latency timer holds bytes back longer.
    """

    def __init__(
        self,
        port: object,
        *,
        poll_s: float | None = None,
        idle_gap_s: float | None = None,
        max_payload: int = MAX_PAYLOAD,
    ) -> None:
        self.port = port
        self.name = port_name(port)
        gap = IDLE_GAP_FLOOR_S + line_time_s(32, self.baud_rate)
        self.idle_gap_s = gap if idle_gap_s is None else idle_gap_s
        self.short_gap_s = min(self.idle_gap_s, SHORT_GAP_S + line_time_s(8, self.baud_rate))
        self.poll_s = self.idle_gap_s / 2 if poll_s is None else poll_s
        self.decoder = FrameDecoder(max_payload)
        self.stats = LinkStats()
        self._events: deque[Frame | Damaged] = deque()
        self._last_rx = time.monotonic()
        port.timeout = self.poll_s

    @property
    def baud_rate(self) -> float | None:
        rate = getattr(self.port, "baudrate", None)
        return float(rate) if isinstance(rate, (int, float)) and rate > 0 else None

    def line_time_s(self, n_bytes: int) -> float:
        return line_time_s(n_bytes, self.baud_rate)

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

    def receive(self, deadline: float) -> Frame | Damaged | None:
        """The next frame or damaged header, or ``None`` if none came by ``deadline``."""
        while not self._events:
            if time.monotonic() >= deadline:
                return None
            self._poll()
        event = self._events.popleft()
        if isinstance(event, Frame):
            self.stats.frames_received += 1
        return event

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
            frames = self.decoder.feed(data)
        elif self.decoder.buffered_bytes and now - self._last_rx > self._gap():
            self.stats.idle_flushes += 1
            frames = self.decoder.flush()
        else:
            return
        self._events.extend(self.decoder.damaged)
        self.decoder.damaged.clear()
        self._events.extend(frames)
        timeout = self._gap() / 2 if self.decoder.buffered_bytes else self.poll_s
        if self.port.timeout != timeout:  # rarely: a real port reconfigures on each change
            self.port.timeout = timeout

    def _gap(self) -> float:
        nearly = self.decoder.buffered_bytes >= HEADER_BYTES and (
            self.decoder.wanted_bytes <= DROP_BYTES
        )
        return self.short_gap_s if nearly else self.idle_gap_s


# ----------------------------------------------------------------------------------------------
# Host side


def _reply_budget_bytes(msg: Message) -> int:
    """The size of the reply to ``msg`` in bytes, to allow for its time on a slow line."""
    if isinstance(msg, FetchResults):  # records of at most MAX_BLOCKS blocks
        records = msg.count * results_dtype(MAX_BLOCKS).itemsize
        return min(MAX_FRAME_BYTES, FRAME_OVERHEAD_BYTES + RESULTS_HEADER_BYTES + records)
    if isinstance(msg, Status):  # state, memory, bundle, up to 256 batches
        return FRAME_OVERHEAD_BYTES + 112 + MAX_BATCHES_LISTED * 12
    # ACK, RUN_DONE, HELLO_REPLY; an ERROR of up to 1 KiB may take longer, but it is not lost:
    # a resent request is answered by it again, from the board's cache.
    return FRAME_OVERHEAD_BYTES + 300


class _Shrunk(Exception):
    """A sized message failed and the sizer now wants smaller frames: cut it again."""


class Client:
    """The host end: ``request(command) -> reply``; ``request_sized(make) -> (command, reply)``.

    A try waits 1.25 times the line time of the request and its reply (at the port's baud rate)
    plus the board's turnaround (adapter latency and handling), doubled by ``backoff`` after
    each silent try and capped at ``max_timeout_s``. The turnaround is learnt from the replies
    that came at the first try, as TCP learns its round trip (mean + 4 deviations, Karn's rule),
    between ``MIN_TURNAROUND_S`` and ``reply_timeout_s`` (also the value before the first
    reply). A command that runs long on the board (RUN_BATCH) passes ``timeout_s``: at least as
    long as the run. A request is given up (:class:`LinkTimeout`) after ``retries`` silent tries
    or ``max_failures`` failed ones. Not for concurrent use from several threads (calls are
    serialised by a lock).
    """

    def __init__(
        self,
        port: object,
        *,
        reply_timeout_s: float = 0.05,
        retries: int = 6,
        backoff: float = 2.0,
        max_timeout_s: float = 8.0,
        max_failures: int = 64,
        poll_s: float | None = None,
        idle_gap_s: float | None = None,
        first_seq: int | None = None,
        sizer: FrameSizer | None = None,
    ) -> None:
        self.link = Link(port, poll_s=poll_s, idle_gap_s=idle_gap_s)
        self.reply_timeout_s = reply_timeout_s
        self.retries = retries
        self.backoff = backoff
        self.max_timeout_s = max_timeout_s
        self.max_failures = max_failures
        self.sizer = sizer or FrameSizer()
        self.turnaround_s: float | None = None  # learnt mean turnaround, and its deviation
        self.turnaround_dev_s = 0.0
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
        reply comes, :class:`VersionMismatch` if the board speaks another protocol version and
        :class:`ProtocolError` if the reply does not fit the command.
        """
        with self._lock:
            return self._exchange(msg, timeout_s, retries, None)

    def request_sized(
        self, make: Callable[[int], Message], *, timeout_s: float | None = None
    ) -> tuple[Message, Message]:
        """Send ``make(payload_bytes)``, a command whose frame (and reply) fits ``payload_bytes``
        of payload, and return it with its reply. After a failed try the frames shrink and, if
        the command is now too big, ``make`` is called again at the smaller size."""
        with self._lock:
            while True:
                budget = self.sizer.payload
                msg = make(budget)
                try:
                    return msg, self._exchange(msg, timeout_s, None, budget)
                except _Shrunk:
                    self.stats.resized += 1

    def _exchange(
        self, msg: Message, timeout_s: float | None, retries: int | None, sized: int | None
    ) -> Message:
        if msg.TYPE not in COMMANDS:
            raise ProtocolError(f"{type_name(msg.TYPE)} is not a command; a client sends commands")
        handling_s = self._allowance_s() if timeout_s is None else timeout_s
        retries = self.retries if retries is None else retries
        seq = self._seq
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        frame = encode_message(msg, seq)
        line_s = 1.25 * self.link.line_time_s(len(frame) + _reply_budget_bytes(msg))
        started = time.monotonic()
        failures = silent = 0
        self.link.send(frame)
        sent_at = time.monotonic()
        while True:
            wait_s = min(handling_s * self.backoff**silent, max(self.max_timeout_s, handling_s))
            outcome, reply = self._await_reply(msg, seq, time.monotonic() + wait_s + line_s)
            if reply is not None:
                if sized is not None:
                    self.sizer.success()
                if failures == 0 and timeout_s is None:
                    self._learn(time.monotonic() - sent_at - line_s / 1.25)
                return self._check(msg, reply)
            failures += 1
            silent += outcome == "silent"
            self.stats.timeouts += outcome == "silent"
            if sized is not None:
                self.sizer.failure()
            if silent > retries or failures > self.max_failures:
                raise LinkTimeout(
                    f"no reply to {msg.TYPE.name} (seq {seq}) on {self.name!r} after {failures} "
                    f"failed tries ({silent} silent) in {time.monotonic() - started:.1f} s; "
                    "check the cable, the baud rate and that the board runtime is serving"
                )
            if sized is not None and self.sizer.payload < sized:
                raise _Shrunk
            log.debug("%s: %s seq %d: %s, try %d", self.name, msg.TYPE.name, seq, outcome, failures)
            if outcome == "damaged":  # the reply was damaged: the board resends it from cache
                self.stats.naks_sent += 1
                self.link.send(encode_message(Nak(), seq))
            else:
                self.stats.retransmissions += 1
                self.link.send(encode_message(msg, seq, flags=FLAG_RETRANSMIT))

    def _allowance_s(self) -> float:
        if self.turnaround_s is None:
            return self.reply_timeout_s
        learnt = self.turnaround_s + 4 * self.turnaround_dev_s
        return min(self.reply_timeout_s, max(MIN_TURNAROUND_S, learnt))

    def _learn(self, sample_s: float) -> None:
        sample_s = max(0.0, sample_s)
        if self.turnaround_s is None:
            self.turnaround_s, self.turnaround_dev_s = sample_s, sample_s / 2
            return
        error = sample_s - self.turnaround_s
        self.turnaround_s += error / 8
        self.turnaround_dev_s += (abs(error) - self.turnaround_dev_s) / 4

    def _await_reply(self, msg: Message, seq: int, deadline: float) -> tuple[str, Message | None]:
        """``("reply", reply)``, or why not: ``"nak"``, ``"damaged"`` or ``"silent"``."""
        while True:
            event = self.link.receive(deadline)
            if event is None:
                return "silent", None
            if not event.is_reply or event.seq != seq:
                self.stats.stale_replies += 1
                log.debug("%s: ignoring %s seq %d", self.name, type_name(event.msg_type), event.seq)
                continue
            if isinstance(event, Damaged):
                return "damaged", None
            if event.version != PROTOCOL_VERSION:
                raise version_error(event.version, f"the board on {self.name!r}")
            if event.msg_type == MessageType.NAK:
                self.stats.naks_received += 1
                return "nak", None
            reply = decode_message(event)
            if isinstance(msg, Hello) and getattr(reply, "host_nonce", msg.host_nonce) != (
                msg.host_nonce
            ):
                self.stats.stale_replies += 1  # a HELLO_REPLY of an earlier session
                continue
            return "reply", reply

    def _check(self, msg: Message, reply: Message) -> Message:
        if isinstance(reply, ErrorReply):
            if reply.code == ErrorCode.VERSION_MISMATCH:
                raise VersionMismatch(f"the board on {self.name!r} refused: {reply.message}")
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
    answered ``ERROR(INTERNAL)``. A damaged request is answered NAK; a NAK from the host is
    answered with the cached reply of that sequence number.
    """

    def __init__(
        self,
        port: object,
        *,
        cache_size: int = 16,
        poll_s: float | None = None,
        idle_gap_s: float | None = None,
    ) -> None:
        if cache_size < 1:
            raise ValueError(f"Server cache_size {cache_size!r} must be at least 1")
        self.link = Link(port, poll_s=poll_s, idle_gap_s=idle_gap_s)
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
            event = self.link.receive(step)
            if event is not None:
                if self._answer(event, handler):
                    return True
            elif time.monotonic() >= deadline:
                return False
        return False

    def _answer(self, event: Frame | Damaged, handler: Handler) -> bool:
        if event.is_reply:  # a reply is never a request (e.g. our own echo on loop://)
            self.stats.ignored_frames += 1
            return False
        if isinstance(event, Damaged):
            if event.version == PROTOCOL_VERSION:
                self.stats.naks_sent += 1
                self.link.send(encode_message(Nak(), event.seq, flags=FLAG_REPLY))
            return False
        if event.msg_type == MessageType.NAK and event.version == PROTOCOL_VERSION:
            self.stats.naks_received += 1
            for (seq, _, _), data in reversed(self._cache.items()):
                if seq == event.seq:
                    self.stats.replies_resent += 1
                    self.link.send(data)
                    break
            return False
        key = (event.seq, event.msg_type, zlib.crc32(event.payload))
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.stats.duplicates_answered += 1
            log.debug("%s: duplicate %s seq %d", self.name, type_name(event.msg_type), event.seq)
            self.link.send(cached)
            return True
        msg, reply = self._execute(event, handler)
        try:
            data = encode_message(reply, event.seq, flags=FLAG_REPLY)
        except Exception as exc:  # a reply that does not encode is a handler bug too
            log.error("%s: reply %r does not encode: %s", self.name, type(reply).__name__, exc)
            reply = ErrorReply.about(
                ErrorCode.INTERNAL, f"reply does not encode: {exc}", event.msg_type
            )
            data = encode_message(reply, event.seq, flags=FLAG_REPLY)
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


def wire_overhead(
    images: int,
    image_shape: tuple[int, int, int] = (32, 32, 3),
    *,
    max_payload: int = MAX_PAYLOAD,
) -> UploadCost:
    """The exact bytes on the wire to upload ``images`` uint8 images of ``image_shape`` (H, W, C)
    in frames of ``max_payload`` payload bytes (real messages are encoded and counted)."""
    if images < 1:
        raise ValueError(f"wire_overhead needs at least one image, got {images!r}")
    import numpy as np

    batch = np.zeros((images, *image_shape), np.uint8)
    msgs = upload_messages(0, batch, max_payload=max_payload)
    to_board = sum(FRAME_OVERHEAD_BYTES + len(m.encode()) for m in msgs)
    ack = FRAME_OVERHEAD_BYTES + len(Ack(MessageType.UPLOAD_IMAGES).encode())
    image_bytes = batch[0].nbytes
    return UploadCost(images, image_bytes, len(msgs), batch.nbytes, to_board, len(msgs) * ack)


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

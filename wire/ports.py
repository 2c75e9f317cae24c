"""Port stand-ins that speak the same bytes as a serial line: a pty end, and a faulty wrapper.

A *port* here is anything with pyserial's ``read(n)``, ``write(data)`` and a settable
``timeout`` (``in_waiting`` optional): a ``serial.Serial`` from ``serial_for_url`` (a device, a
pty slave, ``socket://``, ``loop://``), an :class:`FdPort` over the master end of a
pseudo-terminal, or a :class:`FaultyPort` around either.

The emulated board serves on the master end of a pty (:func:`open_pty_pair`) and the host opens
the slave by name, exactly as it opens ``/dev/ttyUSB0`` for a real board.

:func:`port_failure` says why a port could not be opened, for the one-line errors of the board
runtime, the host's board client and the meter drivers.

This module runs on the board too: stdlib, numpy and pyserial only.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import struct
import termios
import time
import tty
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import serial

log = logging.getLogger(__name__)


def port_failure(
    exc: BaseException,
    *,
    missing: str,
    denied: str,
    busy: str,
    more: Sequence[tuple[tuple[str, ...], str]] = (),
) -> str:
    """Why opening a port failed, in the caller's words: ``missing`` (ENOENT, "no such file"),
    ``denied`` (EACCES/EPERM, "permission"), ``busy`` (EBUSY/EAGAIN, "busy", "lock"), then the
    first of ``more`` (message substrings -> why) that matches, else ``cannot be opened (first
    line of the message)``."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    lowered = text.lower()
    if code == errno.ENOENT or "no such file" in lowered:
        return missing
    if code in (errno.EACCES, errno.EPERM) or "permission" in lowered:
        return denied
    if code in (errno.EBUSY, errno.EAGAIN) or "busy" in lowered or "lock" in lowered:
        return busy
    for words, why in more:
        if any(word in lowered for word in words):
            return why
    first = text.splitlines()[0] if text else type(exc).__name__
    return f"cannot be opened ({first})"


def port_name(port: object) -> str:
    """A human name for a port: its device path or URL if it has one."""
    for attr in ("port", "name"):
        value = getattr(port, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(port).__name__


class FdPort:
    """A pyserial-like port over a file descriptor (e.g. the master end of a pseudo-terminal).

    ``read(n)`` returns when ``n`` bytes arrived or ``timeout`` seconds passed (``None`` blocks,
    ``0`` polls), like ``serial.Serial.read``. A closed peer raises ``serial.SerialException``.
    """

    def __init__(
        self,
        fd: int,
        *,
        timeout: float | None = None,
        name: str | None = None,
        baudrate: int | None = None,
    ) -> None:
        self.fd = fd
        self.timeout = timeout
        self.port = name or f"fd:{fd}"
        self.baudrate = baudrate  # None: a pty has no line rate
        self.is_open = True

    @property
    def in_waiting(self) -> int:
        buf = fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0")
        return struct.unpack("i", buf)[0]

    def read(self, size: int = 1) -> bytes:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        out = bytearray()
        while len(out) < size:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.fd], [], [], wait)
            if not ready:
                break
            try:
                chunk = os.read(self.fd, size - len(out))
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    continue
                raise serial.SerialException(
                    f"{self.port}: read failed ({exc.strerror}); the other end is closed"
                ) from None
            if not chunk:
                raise serial.SerialException(f"{self.port}: end of file; the other end is closed")
            out += chunk
        return bytes(out)

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            select.select([], [self.fd], [])
            try:
                written = os.write(self.fd, view)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    continue
                raise serial.SerialException(
                    f"{self.port}: write failed ({exc.strerror})"
                ) from None
            view = view[written:]
        return len(data)

    def flush(self) -> None:
        """Nothing to do: ``write`` hands every byte to the kernel before it returns."""

    def close(self) -> None:
        if self.is_open:
            self.is_open = False
            os.close(self.fd)

    def __enter__(self) -> FdPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_pty_pair(
    *, baudrate: int = 921600, timeout: float | None = 0.05
) -> tuple[FdPort, serial.Serial]:
    """A raw pseudo-terminal: (master as an :class:`FdPort`, slave opened by name with pyserial).

    The master is the board's end (the emulated board serves on it); the slave is what a host
    opens, here through ``serial.serial_for_url(os.ttyname(...))``. Close both when done.
    """
    master, slave = os.openpty()
    try:
        tty.setraw(master)
        tty.setraw(slave)
        path = os.ttyname(slave)
        host = serial.serial_for_url(path, baudrate=baudrate, timeout=timeout)
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)  # pyserial holds its own descriptor of the slave
    return FdPort(master, timeout=timeout, name=f"{path} (master)"), host


@dataclass
class FaultStats:
    """What a :class:`FaultyPort` did to the bytes it delivered (both directions together)."""

    bytes_read: int = 0  # bytes read from the wrapped port
    bytes_written: int = 0  # bytes handed to write (before damage)
    bits_flipped: int = 0
    bytes_dropped: int = 0
    bytes_duplicated: int = 0
    stalls: int = 0

    @property
    def faults(self) -> int:
        return self.bits_flipped + self.bytes_dropped + self.bytes_duplicated + self.stalls


class FaultyPort:
    """Wraps a port and damages the bytes it reads (and, with ``damage_writes``, those it
    writes), reproducibly (seeded): a faulty cable at one end of a line.

    Each byte is, independently, dropped (``drop_rate``), delivered twice (``duplicate_rate``)
    and/or has one random bit flipped (``byte_error_rate``). A stall stops delivery for
    ``stall_s`` seconds (reads return nothing and the wrapped port keeps the bytes, so they
    arrive late; a write waits): after every ``stall_every_bytes`` bytes if that is set, and
    whenever :meth:`stall` is called. With ``line_baud`` a write takes the time a UART at that
    rate (8N1) takes to send the bytes, so that a pty behaves like a line of that rate.
    """

    def __init__(
        self,
        port: object,
        *,
        seed: int = 0,
        byte_error_rate: float = 0.0,
        drop_rate: float = 0.0,
        duplicate_rate: float = 0.0,
        stall_s: float = 0.0,
        stall_every_bytes: int = 0,
        damage_writes: bool = False,
        line_baud: int | None = None,
    ) -> None:
        for name, rate in (
            ("byte_error_rate", byte_error_rate),
            ("drop_rate", drop_rate),
            ("duplicate_rate", duplicate_rate),
        ):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"FaultyPort {name} {rate!r} is not a probability in [0, 1]")
        if line_baud is not None and line_baud <= 0:
            raise ValueError(f"FaultyPort line_baud {line_baud!r} must be positive")
        self.inner = port
        self.byte_error_rate = byte_error_rate
        self.drop_rate = drop_rate
        self.duplicate_rate = duplicate_rate
        self.stall_s = stall_s
        self.stall_every_bytes = stall_every_bytes
        self.damage_writes = damage_writes
        self.line_baud = line_baud
        self.stats = FaultStats()
        self._rng = np.random.default_rng(seed)
        self._write_rng = np.random.default_rng([seed, 1])
        self._pending = bytearray()  # duplicated bytes beyond what read(n) may return
        self._stall_until = 0.0
        self._next_stall_at = stall_every_bytes or None
        self._line_free_at = 0.0  # when the paced line has sent everything written

    # The attributes a Link uses are forwarded to the wrapped port.
    @property
    def timeout(self) -> float | None:
        return self.inner.timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self.inner.timeout = value

    @property
    def baudrate(self) -> int | None:
        return self.line_baud or getattr(self.inner, "baudrate", None)

    @property
    def port(self) -> str:
        return f"faulty:{port_name(self.inner)}"

    @property
    def in_waiting(self) -> int:
        if time.monotonic() < self._stall_until:
            return 0
        return len(self._pending) + getattr(self.inner, "in_waiting", 0)

    def stall(self, seconds: float) -> None:
        """Deliver nothing for ``seconds`` from now."""
        self._stall_until = time.monotonic() + seconds
        self.stats.stalls += 1

    def read(self, size: int = 1) -> bytes:
        left = self._stall_until - time.monotonic()
        if left > 0:
            timeout = self.inner.timeout
            time.sleep(min(left, timeout if timeout is not None else left))
            return b""
        if not self._pending:
            data = self.inner.read(size)
            self.stats.bytes_read += len(data)
            self._pending += self._damage(data, self._rng)
        out = bytes(self._pending[:size])
        del self._pending[:size]
        return out

    def write(self, data: bytes) -> int | None:
        n = len(data)
        self.stats.bytes_written += n
        if self.damage_writes:
            data = self._damage(bytes(data), self._write_rng)
            left = self._stall_until - time.monotonic()
            if left > 0:
                time.sleep(left)
        if not self.line_baud:
            self.inner.write(data)
            return n
        # Pace: about 2 ms of line time per piece, each sent when the line would be free.
        piece = max(1, self.line_baud // 5000)
        self._line_free_at = max(self._line_free_at, time.monotonic())
        for start in range(0, len(data), piece):
            chunk = data[start : start + piece]
            self.inner.write(chunk)
            self._line_free_at += len(chunk) * 10 / self.line_baud
            delay = self._line_free_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        return n

    def flush(self) -> None:
        flush = getattr(self.inner, "flush", None)
        if flush is not None:
            flush()

    def close(self) -> None:
        self.inner.close()

    def _damage(self, data: bytes, rng: np.random.Generator) -> bytes:
        if not data:
            return data
        n = len(data)
        # Four draws per byte from one stream, so the damage does not depend on how the bytes
        # were split into reads: (n, [drop, duplicate, flip, which bit]).
        draws = rng.random((n, 4))
        bits = (draws[:, 3] * 8).astype(np.uint8)
        arr = np.frombuffer(data, dtype=np.uint8).copy()
        flip = draws[:, 2] < self.byte_error_rate
        arr[flip] ^= (1 << bits[flip]).astype(np.uint8)
        drop = draws[:, 0] < self.drop_rate
        dup = (draws[:, 1] < self.duplicate_rate) & ~drop
        self.stats.bits_flipped += int(flip.sum())
        self.stats.bytes_dropped += int(drop.sum())
        self.stats.bytes_duplicated += int(dup.sum())
        out = np.repeat(arr, np.where(drop, 0, np.where(dup, 2, 1))).tobytes()
        seen = self.stats.bytes_read + self.stats.bytes_written
        if self._next_stall_at is not None and seen >= self._next_stall_at:
            self._next_stall_at += self.stall_every_bytes
            self.stall(self.stall_s)
            log.debug("%s: stalling %.3f s", self.port, self.stall_s)
        return out

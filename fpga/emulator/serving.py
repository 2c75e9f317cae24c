"""Serving a simulated instrument: the links bytes reach it by, and the serving thread.

Both simulated meters (fpga/emulator/meter.py: a Keysight 34465A, on the SCPI machinery of
fpga/emulator/scpi.py; fpga/emulator/wattsup.py: a Watts Up? PRO) speak their protocol over a
link, a pseudo-terminal (what a USB-serial adapter looks like to the host), a TCP socket (the
34465A's SCPI port) or any pyserial-like port, from a background thread. :class:`ServedInstrument`
holds that life cycle; a subclass says how it opens its link and what it does with the bytes
(``_serve``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import tty
from typing import Any

from fpga.emulator import EmulatorError

logger = logging.getLogger(__name__)


class ServedInstrument:
    """Start/stop of a simulated instrument served from a background thread."""

    thread_name = "sim-instrument"
    description = "simulated instrument"

    def __init__(self, source: Any) -> None:
        if not callable(getattr(source, "energy_j", None)):
            raise EmulatorError(f"source {source!r} has no energy_j(t0_s, t1_s) method")
        self.source = source
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._link: Link | None = None
        self.address: str | None = None

    def _open_link(self) -> Link:
        raise NotImplementedError

    def _serve(self) -> None:
        raise NotImplementedError

    def start(self) -> str:
        """Open the link and serve it from a background thread; returns :attr:`address`."""
        if self._thread is not None:
            raise EmulatorError(f"{self.description} already serves {self.address!r}")
        self._link = self._open_link()
        self.address = self._link.address
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name=self.thread_name, daemon=True)
        self._thread.start()
        logger.info("%s serving on %s", self.description, self.address)
        return self.address

    def stop(self) -> None:
        """Stop serving and close the link (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if self._link is not None:
            self._link.close()
            self._link = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- links: how bytes reach the instrument ------------------------------------------------------


class Link:
    address: str

    def read_some(self, timeout_s: float) -> bytes:
        raise NotImplementedError

    def write_all(self, data: bytes, stop: threading.Event) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class PtyLink(Link):
    """The instrument end (master) of a pseudo-terminal; clients open :attr:`address`."""

    def __init__(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no newline translation before a client opens it
        os.set_blocking(self._master, False)
        self.address = os.ttyname(self._slave)  # kept open: reads never hit EIO

    def read_some(self, timeout_s: float) -> bytes:
        ready, _, _ = select.select([self._master], [], [], timeout_s)
        if not ready:
            return b""
        try:
            return os.read(self._master, 65536)
        except BlockingIOError:
            return b""

    def write_all(self, data: bytes, stop: threading.Event) -> None:
        view = memoryview(data)
        while view and not stop.is_set():
            _, ready, _ = select.select([], [self._master], [], 0.05)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    view = view[os.write(self._master, view) :]

    def close(self) -> None:
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class TcpLink(Link):
    """A listening TCP socket on 127.0.0.1 (like the instrument's SCPI socket, port 5025)."""

    def __init__(self, port: int) -> None:
        self._server = socket.create_server(("127.0.0.1", port))
        self._client: socket.socket | None = None
        self.address = f"socket://127.0.0.1:{self._server.getsockname()[1]}"

    def read_some(self, timeout_s: float) -> bytes:
        if self._client is None:
            ready, _, _ = select.select([self._server], [], [], timeout_s)
            if ready:
                self._client, _ = self._server.accept()
            return b""
        ready, _, _ = select.select([self._client], [], [], timeout_s)
        if not ready:
            return b""
        try:
            data = self._client.recv(65536)
        except OSError:
            data = b""
        if not data:  # the client went away; wait for the next one
            self._client.close()
            self._client = None
        return data

    def write_all(self, data: bytes, stop: threading.Event) -> None:
        if self._client is not None:
            self._client.sendall(data)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._server.close()


class PortLink(Link):
    """Any pyserial-like object with ``read(size)``, ``write(data)`` and ``timeout``."""

    def __init__(self, port: Any) -> None:
        self._port = port
        if hasattr(port, "timeout"):
            port.timeout = 0.05
        self.address = str(getattr(port, "port", None) or getattr(port, "name", None) or port)

    def read_some(self, timeout_s: float) -> bytes:
        waiting = getattr(self._port, "in_waiting", 0) or 1
        return bytes(self._port.read(waiting))

    def write_all(self, data: bytes, stop: threading.Event) -> None:
        self._port.write(data)

    def close(self) -> None:
        close = getattr(self._port, "close", None)
        if callable(close):
            close()

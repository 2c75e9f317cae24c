"""The SCPI machinery of the simulated instruments: parsing, the error queue, blocks, serving.

A simulated SCPI instrument is a :class:`ScpiInstrument` subclass whose commands are a table,
:class:`CommandTable`, of SCPI header patterns and the methods that execute them::

    class Counter(ScpiInstrument):
        def _idn(self, params: list[str]) -> str:
            expect(params, 0, 0)
            return "ACME,C1,SIM0001,1.0"

        def _gate(self, params: list[str]) -> None:
            expect(params, 1, 1)
            self.gate_s = number(params[0], low=1e-3, high=10.0)

        commands = CommandTable({
            "*IDN?": _idn,
            "SYSTem:ERRor[:NEXT]?": ScpiInstrument.next_error,
            "[SENSe:]GATE:TIMe": _gate,
        })

Patterns use the SCPI manuals' notation: upper-case letters are the short form, the whole word
the long form (``CONFigure`` matches ``CONF`` and ``CONFIGURE``, in any case), ``[...]`` is an
optional node, a trailing ``?`` makes the entry a query. A program message holds several
commands separated by ``;``; a command without a leading ``:`` continues from the last one's
path (the SCPI path rule: ``TRIG:SOUR IMM;COUN 1`` sets ``TRIG:COUN``). The replies of the
queries in one message come back together, separated by ``;``, with one newline.

Errors go to the instrument's error queue (:data:`ERROR_QUEUE_SIZE` entries, then the last
becomes ``-350``), read by ``SYSTem:ERRor?``. A command error (-100 .. -199) discards the rest
of its message; an execution error (-200 .. -299) does not. A query that fails sends no reply,
as an instrument does: the client times out and reads the error queue.

The instrument is served on a :mod:`fpga.emulator.serving` link: a pseudo-terminal, which
pyvisa-py opens as ``ASRL/dev/pts/N::INSTR``, or a TCP socket on 127.0.0.1, which it opens as
``TCPIP::127.0.0.1::PORT::SOCKET`` (:attr:`ScpiInstrument.resource_name`).

Hand-written rather than taken from a library: PyVISA's own simulator, pyvisa-sim, answers from
dialogues and properties declared in YAML, inside a pyvisa backend of its own, so it can neither
model readings that follow a power trace on the instrument's clock nor let the driver's real
pyvisa-py serial and socket sessions run; and no SCPI server package is a dependency of this
project. This module is the small subset of IEEE 488.2 / SCPI that the simulated instruments
need, in one place.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fpga.emulator import EmulatorError
from fpga.emulator.serving import Link, PtyLink, ServedInstrument, TcpLink

logger = logging.getLogger(__name__)

ERROR_QUEUE_SIZE = 20
MAX_MESSAGE_BYTES = 1 << 20  # a client sending garbage without newlines is cut off here

# The standard SCPI error numbers and strings that the simulated instruments raise.
SCPI_ERRORS = {
    -101: "Invalid character",
    -102: "Syntax error",
    -104: "Data type error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -113: "Undefined header",
    -213: "Init ignored",
    -222: "Data out of range",
    -224: "Illegal parameter value",
    -240: "Hardware error",
    -350: "Error queue overflow",
}

_HEADER_CHARS = re.compile(r"^[*:]?[A-Za-z][A-Za-z0-9_:]*\??$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_MNEMONIC = re.compile(r"\[:?(\w+):?\]|:?(\*?\w+)")

Response = str | bytes | None
Handler = Callable[[Any, list[str]], Response]


class ScpiError(Exception):
    """An SCPI error to queue; ``code`` is a key of :data:`SCPI_ERRORS`."""

    def __init__(self, code: int) -> None:
        if code not in SCPI_ERRORS:
            raise ValueError(f"SCPI error {code} is not in SCPI_ERRORS")
        super().__init__(code)
        self.code = code


# -- command tables -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Node:
    short: str
    long: str
    optional: bool

    def matches(self, word: str) -> bool:
        return word in (self.short, self.long)


def mnemonic_forms(word: str) -> tuple[str, str]:
    """``"NPLCycles"`` -> ``("NPLC", "NPLCYCLES")``: the short and the long form of a keyword."""
    short = "".join(ch for ch in word if ch.isupper() or ch.isdigit() or ch == "*")
    return short, word.upper()


def _compile(pattern: str) -> tuple[_Node, ...]:
    """``"[SENSe:]CURRent[:DC]:NPLCycles"`` -> its nodes, optional ones marked."""
    nodes = []
    for match in _MNEMONIC.finditer(pattern):
        word = match.group(1) or match.group(2)
        nodes.append(_Node(*mnemonic_forms(word), optional=match.group(1) is not None))
    return tuple(nodes)


def _match(nodes: tuple[_Node, ...], words: list[str]) -> bool:
    def rec(i: int, j: int) -> bool:
        if i == len(nodes):
            return j == len(words)
        node = nodes[i]
        if j < len(words) and node.matches(words[j]) and rec(i + 1, j + 1):
            return True
        return node.optional and rec(i + 1, j)

    return rec(0, 0)


class CommandTable:
    """SCPI header patterns (``"SAMPle:TIMer?"``, ``"*RST"``) and their handlers.

    A handler is called as ``handler(instrument, params)`` with the comma-separated parameters
    as strings; it returns the reply (``str``, or ``bytes`` for a binary block) of a query,
    None for a command, or raises :class:`ScpiError`.
    """

    def __init__(self, entries: Mapping[str, Handler]) -> None:
        self._entries: list[tuple[tuple[_Node, ...], bool, Handler]] = []
        self.handlers = dict(entries)
        for pattern, handler in entries.items():
            if not callable(handler):
                raise EmulatorError(f"SCPI command {pattern!r} has no callable handler")
            query = pattern.endswith("?")
            self._entries.append((_compile(pattern.rstrip("?")), query, handler))

    def extended(self, entries: Mapping[str, Handler]) -> CommandTable:
        """A new table: these entries added to this table's, or replacing them."""
        return CommandTable({**self.handlers, **entries})

    def find(self, words: list[str], query: bool) -> Handler | None:
        """The handler of the upper-case header ``words`` (``["SAMP", "TIM"]``), or None."""
        for nodes, is_query, handler in self._entries:
            if is_query == query and _match(nodes, words):
                return handler
        return None


# -- parameters and replies -----------------------------------------------------------------------


def expect(params: list[str], low: int, high: int) -> None:
    """Between ``low`` and ``high`` parameters, or -109 (too few) / -108 (too many)."""
    if len(params) < low:
        raise ScpiError(-109)
    if len(params) > high:
        raise ScpiError(-108)


def number(
    param: str,
    *,
    low: float,
    high: float,
    minimum: float | None = None,
    maximum: float | None = None,
    default: float | None = None,
) -> float:
    """A numeric parameter in ``[low, high]`` (-222 outside, -104 if not a number); ``MIN``,
    ``MAX`` and ``DEF`` (short or long form) give ``minimum``, ``maximum`` and ``default``."""
    for word, value in (("MINimum", minimum), ("MAXimum", maximum), ("DEFault", default)):
        if value is not None and param.upper() in mnemonic_forms(word):
            return value
    if not _NUMBER.match(param):
        raise ScpiError(-104)
    value = float(param)
    if not low <= value <= high:
        raise ScpiError(-222)
    return value


def choice(param: str, choices: Mapping[str, str]) -> str:
    """An enumerated parameter: ``choices`` maps mnemonics (``"IMMediate"``) to values."""
    word = param.upper()
    for mnemonic, value in choices.items():
        if word in mnemonic_forms(mnemonic):
            return value
    raise ScpiError(-224 if re.fullmatch(r"[A-Za-z]\w*", param) else -104)


def boolean(param: str) -> bool:
    """``ON``/``1`` or ``OFF``/``0``."""
    word = param.upper()
    if word in ("ON", "1"):
        return True
    if word in ("OFF", "0"):
        return False
    raise ScpiError(-224)


def format_nr3(value: float) -> str:
    """A number as Keysight instruments send it: ``+1.23456789E-01``."""
    return f"{value:+.8E}"


def definite_block(payload: bytes) -> bytes:
    """An IEEE 488.2 definite-length block: ``#<n><length><payload>`` (``#10`` when empty)."""
    length = str(len(payload))
    return f"#{len(length)}{length}".encode("ascii") + payload


# -- the instrument -------------------------------------------------------------------------------


class ScpiInstrument(ServedInstrument):
    """An SCPI instrument served on a pty (``transport="pty"``) or a TCP socket (``"tcp"``).

    Subclasses set :attr:`commands`; :meth:`handle` executes one program message.
    """

    commands: CommandTable = CommandTable({})
    thread_name = "sim-scpi"
    description = "simulated SCPI instrument"

    def __init__(self, source: Any, *, transport: str = "pty", tcp_port: int = 0) -> None:
        super().__init__(source)
        if transport not in ("pty", "tcp"):
            raise EmulatorError(f"transport={transport!r} must be 'pty' or 'tcp'")
        self.transport = transport
        self._tcp_port = tcp_port
        self._lock = threading.RLock()
        self._errors: deque[int] = deque()

    # -- serving ---------------------------------------------------------------------------
    def _open_link(self) -> Link:
        return PtyLink() if self.transport == "pty" else TcpLink(self._tcp_port)

    @property
    def resource_name(self) -> str:
        """The VISA resource name of the served port, once started: ``ASRL/dev/pts/7::INSTR``
        or ``TCPIP::127.0.0.1::40123::SOCKET``."""
        if self.address is None:
            raise EmulatorError(f"{self.description} is not started; call start() first")
        if self.transport == "pty":
            return f"ASRL{self.address}::INSTR"
        host, port = self.address.removeprefix("socket://").rsplit(":", 1)
        return f"TCPIP::{host}::{port}::SOCKET"

    def _serve(self) -> None:
        assert self._link is not None
        pending = b""
        while not self._stop.is_set():
            try:
                data = self._link.read_some(0.05)
            except OSError as exc:
                logger.error("%s: port failed: %s", self.description, exc)
                return
            pending += data
            if len(pending) > MAX_MESSAGE_BYTES:
                pending = b""
                self.push_error(-102)
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                reply = self.handle(line.decode("ascii", errors="replace"))
                if reply is None:
                    continue
                try:
                    self._link.write_all(reply + b"\n", self._stop)
                except OSError as exc:
                    logger.warning("%s could not reply: %s", self.description, exc)

    # -- parsing ---------------------------------------------------------------------------
    def handle(self, message: str) -> bytes | None:
        """Execute one program message (without its newline); the reply, or None."""
        with self._lock:
            replies: list[bytes] = []
            path: list[str] = []
            for unit in message.rstrip("\r").split(";"):
                unit = unit.strip()
                if not unit:
                    continue
                try:
                    reply, path = self._execute(unit, path)
                except ScpiError as exc:
                    self.push_error(exc.code)
                    if -199 <= exc.code <= -100:
                        break  # a command error discards the rest of the message
                    continue
                if reply is not None:
                    replies.append(reply.encode("ascii") if isinstance(reply, str) else reply)
            return b";".join(replies) if replies else None

    def _execute(self, unit: str, path: list[str]) -> tuple[Response, list[str]]:
        header, _, rest = unit.partition(" ")
        if not _HEADER_CHARS.match(header):
            raise ScpiError(-101 if re.search(r"[^\w:*?]", header) else -102)
        query = header.endswith("?")
        header = header.rstrip("?")
        params = [p.strip() for p in rest.split(",")] if rest.strip() else []
        if any(not p for p in params):
            raise ScpiError(-102)
        if header.startswith("*"):  # common commands: no path, and they keep the current one
            handler = self.commands.find([header.upper()], query)
            if handler is None:
                raise ScpiError(-113)
            return handler(self, params), path
        words = [w.upper() for w in header.lstrip(":").split(":")]
        if any(not w for w in words):
            raise ScpiError(-102)
        full = words if header.startswith(":") else path + words
        handler = self.commands.find(full, query)
        if handler is None:
            raise ScpiError(-113)
        return handler(self, params), full[:-1]

    # -- the error queue -------------------------------------------------------------------
    def push_error(self, code: int) -> None:
        """Queue SCPI error ``code``; a full queue's last entry becomes -350."""
        with self._lock:
            if len(self._errors) >= ERROR_QUEUE_SIZE:
                self._errors[-1] = -350
                return
            self._errors.append(code)

    def next_error(self, params: list[str]) -> str:
        """``SYSTem:ERRor[:NEXT]?``: the oldest error, ``+0,"No error"`` when none."""
        expect(params, 0, 0)
        if not self._errors:
            return '+0,"No error"'
        code = self._errors.popleft()
        return f'{code:+d},"{SCPI_ERRORS[code]}"'

    def clear_errors(self) -> None:
        """Empty the error queue (``*CLS``)."""
        self._errors.clear()


__all__ = [
    "ERROR_QUEUE_SIZE",
    "SCPI_ERRORS",
    "CommandTable",
    "ScpiError",
    "ScpiInstrument",
    "boolean",
    "choice",
    "definite_block",
    "expect",
    "format_nr3",
    "mnemonic_forms",
    "number",
]

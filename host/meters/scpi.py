"""Driver for the Keysight Truevolt 34465A (and 34470A) measuring the board's supply current.

The DMM's current input sits in series with the board's 12 V supply line; power is
``current * supply_v - current**2 * series_ohm`` (``series_ohm``: resistance between the point
where the supply holds ``supply_v`` and the board, e.g. the DMM's shunt when the supply does not
sense at the board). The driver configures timed sampling on the meter's own timer, fetches the
readings with ``R?`` as IEEE 754 doubles from a background thread, and gives each reading the
host time of the middle of its aperture (:class:`host.meters.base.SampleClock`).
docs/power-meter.md explains the command sequence and the timestamps.

Connection: a VISA resource opened with pyvisa, through pyvisa-py (``@py``, pure Python) unless
the address ends with another backend (``@ivi``: NI-VISA or Keysight IO Libraries)::

    keysight34465a:TCPIP::10.0.0.5::5025::SOCKET     # the LAN's raw SCPI socket
    keysight34465a:TCPIP::10.0.0.5::INSTR            # VXI-11 (hislip0 for HiSLIP)
    keysight34465a:ASRL/dev/ttyUSB1::INSTR           # a serial port or adapter
    keysight34465a:USB0::0x2A8D::0x0101::MY59001234::INSTR   # USBTMC (pyusb and libusb)

Two shorthands are accepted and mapped to those: ``socket://HOST:PORT`` and a device path
(``/dev/ttyUSB1``, ``/dev/pts/7``, ``COM3``). pyvisa reads the ``R?`` block
(``query_binary_values``), handles termination and timeouts; the driver adds the *IDN? check,
drains ``SYST:ERR?`` into one-line errors, and locks a serial port for itself (below).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pyvisa
from pyvisa.constants import BufferOperation, StatusCode

from host.meters.base import (
    ClockEstimate,
    MeterConfigError,
    MeterError,
    MeterIdentityError,
    MeterOverRangeError,
    MeterPortError,
    MeterProtocolError,
    MeterTimeoutError,
    PowerMeter,
    SampleClock,
    register_meter,
)
from host.meters.ports import port_error

try:  # POSIX: serial ports are locked as pyserial's exclusive=True does (not on Windows,
    import fcntl  # where a COM port is exclusive anyway)
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

OVERLOAD = 9.9e37  # the 34465A's over-range reading (+/-9.9E+37)
NOT_A_NUMBER = 9.91e37  # SCPI "not a number"
QUES_SAMPLE_TIMING = 1 << 2
QUES_MEMORY_OVERFLOW = 1 << 14
MANUFACTURERS = ("Keysight Technologies", "Agilent Technologies")
MODELS = ("34465A", "34470A")  # same SCPI command set for what this driver uses
SIMULATED_SERIAL_PREFIX = "SIM"
"""A *IDN? serial number starting so marks a simulated instrument (fpga/emulator/meter.py)."""
DEFAULT_BACKEND = "@py"
ERROR_QUEUE_SIZE = 20  # SYST:ERR? is drained at most this often (and once more for -350)


@dataclass
class Keysight34465AConfig:
    """Settings of the 34465A driver; every field may be passed to ``open_meter`` by name.

    Attributes:
        sample_interval_s: Sample interval of the meter's timer (SAMP:TIM), ~1 us steps.
        nplc: Integration time in power-line cycles (0.02 .. 100; 0.001 .. 0.006 with DIG).
        current_range_a: Fixed DC current range (A); autorange would make sample timing
            irregular. A ZedBoard draws 0.2 .. 0.5 A at 12 V: the 1 A range.
        supply_v: Voltage of the board's supply; power = current * supply_v.
        series_ohm: Resistance between where the supply holds ``supply_v`` and the board
            (the DMM's shunt and leads); 0 if the supply senses at the board.
        line_frequency_hz: Mains frequency at the meter (50 or 60): sets the aperture of NPLC.
        autozero: Autozero doubles each measurement's time; off for fast timed sampling.
        timeout_s: How long to wait for any reply.
        poll_interval_s: How often the background thread polls (DATA:POIN?, then R?).
        chunk_readings: The most readings one R? fetches.
        status_interval_s: How often the thread checks the Questionable register (lost
            readings, sample timing).
        max_drift_ppm: Largest clock drift between meter and host that the timestamps allow.
        baud_rate: The line's baud rate on a serial connection (``ASRL``); set the instrument
            or adapter to the same. 1 kHz sampling needs about 9 kB/s of readings.
    """

    sample_interval_s: float = 1e-3
    nplc: float = 0.02
    current_range_a: float = 1.0
    supply_v: float = 12.0
    series_ohm: float = 0.0
    line_frequency_hz: float = 50.0
    autozero: bool = False
    timeout_s: float = 2.0
    poll_interval_s: float = 0.05
    chunk_readings: int = 10_000
    status_interval_s: float = 1.0
    max_drift_ppm: float = 10_000.0
    baud_rate: int = 115_200

    def __post_init__(self) -> None:
        positive = (
            "sample_interval_s",
            "nplc",
            "current_range_a",
            "supply_v",
            "timeout_s",
            "poll_interval_s",
            "status_interval_s",
            "max_drift_ppm",
            "baud_rate",
        )
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise MeterConfigError(f"{name}={value!r} must be a positive number")
        if not (math.isfinite(self.series_ohm) and self.series_ohm >= 0):
            raise MeterConfigError(f"series_ohm={self.series_ohm!r} must be >= 0 ohm")
        if self.line_frequency_hz not in (50, 60):
            raise MeterConfigError(f"line_frequency_hz={self.line_frequency_hz!r} must be 50 or 60")
        if not 1 <= self.chunk_readings <= 2_000_000:
            raise MeterConfigError(
                f"chunk_readings={self.chunk_readings!r} must lie in 1 .. 2,000,000 (R? limit)"
            )

    @property
    def aperture_s(self) -> float:
        """The integration time of one reading."""
        return self.nplc / self.line_frequency_hz


# -- addresses and the VISA session -----------------------------------------------------------

# TCPIP0::, USB0::, GPIB0::, ASRL/dev/ttyUSB0::, VXI0::, PXI0:: (case-insensitive).
_VISA_RESOURCE = re.compile(r"^(TCPIP|USB|GPIB|ASRL|VXI|PXI)[^:]*::", re.IGNORECASE)
_BACKEND_SUFFIX = re.compile(r"^(?P<resource>.+?)(?P<backend>@[A-Za-z_][\w.]*)$")
_SOCKET_URL = re.compile(r"^socket://(?P<host>[^:/]+):(?P<port>\d+)/?$", re.IGNORECASE)
_SERIAL_RESOURCE = re.compile(r"^ASRL(?P<device>.+)::INSTR$", re.IGNORECASE)
_REFUSED = (
    "refused the connection; check the IP address and that the meter's SCPI socket "
    "(port 5025) is enabled"
)
_ERROR_REPLY = re.compile(r'^[+-]?\d+,".*"$')  # +0,"No error"; -113,"Undefined header"
_MAX_STALE_REPLIES = 4
R = TypeVar("R")


def resource_name(address: str) -> tuple[str, str]:
    """``address`` -> ``(VISA resource name, pyvisa backend)``.

    ``TCPIP::h::5025::SOCKET@ivi`` -> ``("TCPIP::h::5025::SOCKET", "@ivi")``; the shorthands
    ``socket://h:5025`` -> ``TCPIP::h::5025::SOCKET`` and ``/dev/ttyUSB1`` (or ``COM3``) ->
    ``ASRL/dev/ttyUSB1::INSTR``; the backend is ``@py`` unless the address ends with one.
    """
    text = address.strip()
    backend = DEFAULT_BACKEND
    match = _BACKEND_SUFFIX.match(text)
    if match is not None and "::" in match["resource"]:
        text, backend = match["resource"], match["backend"]
    if _VISA_RESOURCE.match(text):
        return text, backend
    socket_url = _SOCKET_URL.match(text)
    if socket_url is not None:
        return f"TCPIP::{socket_url['host']}::{socket_url['port']}::SOCKET", backend
    if text.startswith("/") or re.fullmatch(r"COM\d+", text, re.IGNORECASE):
        return f"ASRL{text}::INSTR", backend
    raise MeterConfigError(
        f"power meter address {address!r} is not a VISA resource name; write e.g. "
        "TCPIP::10.0.0.5::5025::SOCKET (LAN) or ASRL/dev/ttyUSB1::INSTR (serial)"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


class _SerialLock:
    """An exclusive ``flock`` on a serial device, held while the driver has it open.

    pyvisa-py opens serial ports without the lock that pyserial's ``exclusive=True`` takes, so
    a second program on the same port would interleave its commands with ours. This takes the
    same lock (``flock(LOCK_EX | LOCK_NB)`` on the device), so pyserial programs that lock the
    port and a second driver both see it busy. Opening the device first also gives the one-line
    errors of a missing or forbidden port.
    """

    def __init__(self, address: str, device: str) -> None:
        self._fd: int | None = None
        if fcntl is None or not device.startswith("/"):
            return
        try:
            self._fd = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self.release()
            raise port_error(address, exc) from None

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def _resource_manager(address: str, backend: str) -> pyvisa.ResourceManager:
    """pyvisa's resource manager for ``backend``. pyvisa keeps one per backend for the whole
    process and closes it at exit, so the driver never closes it (that would close the other
    meters' resources too)."""
    try:
        return pyvisa.ResourceManager(backend)
    except (OSError, ValueError, pyvisa.errors.Error) as exc:
        hint = (
            "pip install pyvisa-py" if backend == DEFAULT_BACKEND else "install that VISA library"
        )
        raise MeterConfigError(
            f"VISA backend {backend!r} for {address!r} cannot be loaded ({_first_line(exc)}); "
            f"{hint}, or end the address with @py for pyvisa-py"
        ) from None


def _open_error(address: str, exc: BaseException) -> MeterError:
    """One line for a VISA resource that did not open: what went wrong and what to do."""
    code = getattr(exc, "error_code", None)
    text = _first_line(exc)
    lowered = text.lower()
    if code == StatusCode.error_resource_not_found:
        why = "was not found; check the address (python -m pyvisa info; pyvisa-shell list)"
    elif code in (StatusCode.error_resource_busy, StatusCode.error_resource_locked):
        why = "is busy: another program has it open; close that program first"
    elif "install" in lowered:  # pyvisa-py lacks the interface's package (pyusb, gpib-ctypes)
        why = f"needs a package that is missing: {text}"
    elif code == StatusCode.error_invalid_resource_name or isinstance(exc, ValueError):
        return MeterConfigError(
            f"power meter address {address!r} is not a valid VISA resource name ({text}); "
            "write e.g. TCPIP::10.0.0.5::5025::SOCKET or ASRL/dev/ttyUSB1::INSTR"
        )
    elif "refused" in lowered or isinstance(exc, ConnectionRefusedError):
        why = _REFUSED
    elif code == StatusCode.error_timeout or "timed out" in lowered or "connect" in lowered:
        why = "cannot be reached; check the network, the IP address and that the meter is on"
    else:
        why = f"cannot be opened ({text}); check the address and the VISA installation"
    return MeterPortError(f"power meter {address!r} {why}")


# -- the driver ----------------------------------------------------------------------------------


@register_meter("keysight34465a")
class Keysight34465A(PowerMeter):
    """A Keysight 34465A (or 34470A) DMM reading the board's supply current.

    ``address`` is a VISA resource name or a shorthand (module docstring); ``options`` are
    fields of :class:`Keysight34465AConfig` (or pass ``config``).
    """

    def __init__(
        self, address: str, config: Keysight34465AConfig | None = None, **options: Any
    ) -> None:
        super().__init__(address)
        base = config or Keysight34465AConfig()
        known = {f.name for f in dataclasses.fields(Keysight34465AConfig)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise MeterConfigError(
                f"unknown option(s) {unknown!r} for {self.kind or 'keysight34465a'}; "
                f"known: {', '.join(sorted(known))}"
            )
        self.config = dataclasses.replace(base, **options)
        self._resource: Any = None  # a pyvisa MessageBasedResource while open
        self._serial_lock: _SerialLock | None = None
        self._io_lock = threading.Lock()
        self._data_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()
        self._idn = ""
        self._interval_s = self.config.sample_interval_s  # as the meter set it
        self._clock: SampleClock | None = None
        self._pending: list[np.ndarray] = []  # readings (A) not yet handed out
        self._received = 0  # readings received since INIT
        self._handed = 0  # readings handed out since INIT
        self._ready: list[tuple[np.ndarray, np.ndarray]] = []  # stamped at stop()
        self._last_stamp_s = -math.inf
        self._failure: MeterError | None = None

    # -- low level ---------------------------------------------------------------------------
    def _session(self) -> Any:
        if self._resource is None:
            raise MeterError(f"power meter {self.address!r} is not open; call open() first")
        return self._resource

    def _io(self, what: str, call: Callable[[], R]) -> R:
        """``call()``; what pyvisa or the port raises becomes one line naming ``what``."""
        try:
            return call()
        except pyvisa.errors.VisaIOError as exc:
            if exc.error_code == StatusCode.error_timeout:
                raise self._timeout(what) from None
            raise MeterPortError(
                f"power meter at {self.address!r} failed on {what!r}: {_first_line(exc)}; "
                "check the cable or network and that nothing else uses the meter"
            ) from None
        except ConnectionRefusedError:  # pyvisa-py connects a socket lazily: seen here
            raise MeterPortError(f"power meter {self.address!r} {_REFUSED}") from None
        except OSError as exc:  # pyvisa-py lets socket and pyserial errors through
            raise MeterPortError(
                f"power meter at {self.address!r} failed on {what!r}: {_first_line(exc)}; "
                "check the cable or network and that nothing else uses the meter"
            ) from None

    def _timeout(self, what: str) -> MeterError:
        """No reply to ``what``: if the meter queued errors (a command it refused), they are
        the reason; otherwise it is not answering at all."""
        errors: list[str] = []
        if self._idn and not what.startswith("SYST:ERR?"):
            with contextlib.suppress(MeterError):
                errors = self._errors_locked()
        if errors:
            return MeterProtocolError(
                f"power meter at {self.address!r} refused {what!r}: {'; '.join(errors)}"
            )
        return MeterTimeoutError(
            f"power meter at {self.address!r} did not answer {what!r} within "
            f"{self.config.timeout_s} s; check that it is on and connected"
        )

    def write(self, command: str) -> None:
        """Send one SCPI program message."""
        with self._io_lock:
            self._write_locked(command)

    def _write_locked(self, command: str) -> None:
        self._io(command, lambda: self._session().write(command))

    def query(self, command: str) -> str:
        """Send a query and return its one-line reply (without the newline)."""
        with self._io_lock:
            return self._query_locked(command)

    def _query_locked(self, command: str) -> str:
        return self._io(command, lambda: self._session().query(command)).strip()

    def _errors_locked(self) -> list[str]:
        """Empty the meter's error queue; the errors it held.

        A reply that is not an error (``+152``) is the late answer to a query that timed out:
        it is dropped and the answer to ``SYST:ERR?`` read after it, which puts replies and
        queries back in step.
        """
        errors = []
        for _ in range(ERROR_QUEUE_SIZE + 1):
            reply = self._query_locked("SYST:ERR?")
            for _ in range(_MAX_STALE_REPLIES):
                if _ERROR_REPLY.match(reply):
                    break
                logger.warning("power meter at %s: dropped a late reply %r", self.address, reply)
                reply = self._io("SYST:ERR?", lambda: self._session().read()).strip()
            else:
                raise MeterProtocolError(
                    f"power meter at {self.address!r} answered SYST:ERR? with {reply!r}, not "
                    "an error; another program may be talking to the meter"
                )
            if int(reply.split(",", 1)[0]) == 0:
                break
            errors.append(reply)
        return errors

    def check_errors(self, after: str = "the last commands") -> None:
        """Raise :class:`MeterConfigError` if the meter's error queue holds errors."""
        with self._io_lock:
            errors = self._errors_locked()
        if errors:
            raise MeterConfigError(
                f"power meter at {self.address!r} reported {'; '.join(errors)} after {after}"
            )

    # -- PowerMeter API ----------------------------------------------------------------------
    def open(self) -> None:
        """Connect, check that a 34465A answers, and configure timed current sampling."""
        if self._resource is not None:
            return
        name, backend = resource_name(self.address)
        serial = _SERIAL_RESOURCE.match(name)
        if serial is not None:
            self._serial_lock = _SerialLock(self.address, serial["device"])
        try:
            self._resource = self._open_resource(name, backend)
            self._idn = self._check_identity()
            self.configure()
        except BaseException:
            self._release()
            raise

    def _open_resource(self, name: str, backend: str) -> Any:
        manager = _resource_manager(self.address, backend)
        timeout_ms = max(1, round(self.config.timeout_s * 1000))
        line = {"baud_rate": self.config.baud_rate} if _SERIAL_RESOURCE.match(name) else {}
        try:
            resource = manager.open_resource(
                name,
                read_termination="\n",
                write_termination="\n",
                timeout=timeout_ms,
                open_timeout=timeout_ms,
                **line,
            )
        except Exception as exc:  # pyvisa-py raises a bare Exception for a failed connect
            raise _open_error(self.address, exc) from None
        if not isinstance(resource, pyvisa.resources.MessageBasedResource):
            resource.close()
            raise MeterConfigError(
                f"VISA resource {self.address!r} is not message-based (a "
                f"{type(resource).__name__}); use its ::INSTR or ::SOCKET resource"
            )
        return resource

    def _check_identity(self) -> str:
        port = self._session()
        # a reply that a previous session left unread would answer *IDN? in its place
        self._io("*IDN?", lambda: port.flush(BufferOperation.discard_read_buffer))
        try:
            idn = self._io("*IDN?", lambda: port.query("*IDN?")).strip()
        except MeterTimeoutError:
            raise MeterTimeoutError(
                f"power meter at {self.address!r} did not answer *IDN? within "
                f"{self.config.timeout_s} s; check that it is on, connected and that this is "
                "its port"
            ) from None
        fields = [f.strip() for f in idn.split(",")]
        if len(fields) < 2 or fields[0] not in MANUFACTURERS or fields[1] not in MODELS:
            raise MeterIdentityError(
                f"{self.address!r} answered *IDN? with {idn!r}, not a Keysight "
                f"{' or '.join(MODELS)}; check the meter's address"
            )
        logger.info("power meter at %s: %s", self.address, idn)
        return idn

    def identify(self) -> str:
        """The instrument's *IDN? reply."""
        return self.query("*IDN?")

    @property
    def simulated(self) -> bool:
        """True when the *IDN? reply read at :meth:`open` has a serial number starting with
        ``SIM``: the simulated 34465A (fpga/emulator/meter.py) answers so; Keysight's serial
        numbers start with two letters of the country of manufacture (``MY``...)."""
        if not self._idn:
            raise MeterError(f"power meter at {self.address!r} is not open; call open() first")
        fields = [f.strip() for f in self._idn.split(",")]
        return len(fields) > 2 and fields[2].upper().startswith(SIMULATED_SERIAL_PREFIX)

    def configure(self) -> None:
        """Send the configuration (docs/power-meter.md, "Command sequence") and verify it."""
        c = self.config
        commands = [
            "ABOR",  # stop anything a previous session left running
            "*RST",  # a known state
            "*CLS",  # empty the error queue and status events
            f"CONF:CURR:DC {c.current_range_a:g}",  # DC current on a fixed range
            f"CURR:DC:NPLC {c.nplc:g}",  # integration time
            f"CURR:DC:ZERO:AUTO {'ON' if c.autozero else 'OFF'}",
            "TRIG:SOUR IMM",  # INIT starts the measurement
            "TRIG:DEL 0",  # the first sample starts at the trigger
            "TRIG:COUN 1",
            "SAMP:SOUR TIM",  # samples paced by the meter's timer
            f"SAMP:TIM {c.sample_interval_s:.6f}",
            "SAMP:COUN 1000000000",  # the most: sampling runs until ABOR
            "FORM:DATA REAL,64",  # R? sends IEEE 754 doubles (*RST selects ASCII)
            "FORM:BORD NORM",  # big-endian
        ]
        with self._io_lock:
            for command in commands:
                self._write_locked(command)
            errors = self._errors_locked()
            if errors:
                raise MeterConfigError(
                    f"power meter at {self.address!r} refused the configuration: "
                    f"{'; '.join(errors)}; check nplc, current_range_a and sample_interval_s"
                )
            minimum_s = self._number_locked("SAMP:TIM? MIN")
            self._interval_s = self._number_locked("SAMP:TIM?")
            nplc = self._number_locked("CURR:DC:NPLC?")
        if self._interval_s < minimum_s:
            raise MeterConfigError(
                f"sample_interval_s={c.sample_interval_s!r} is shorter than one measurement "
                f"({minimum_s:g} s at NPLC {nplc:g}); lower nplc or raise sample_interval_s"
            )
        if not math.isclose(nplc, c.nplc, rel_tol=1e-6):
            logger.warning("meter rounded NPLC %g to %g", c.nplc, nplc)
            self.config = dataclasses.replace(c, nplc=nplc)
        logger.info(
            "power meter configured: %g A range, NPLC %g, sample interval %.6f s",
            c.current_range_a,
            nplc,
            self._interval_s,
        )

    def _number_locked(self, command: str) -> float:
        reply = self._query_locked(command)
        try:
            return float(reply)
        except ValueError:
            raise MeterProtocolError(
                f"power meter at {self.address!r} answered {command!r} with {reply!r}, not a "
                "number; another program may be talking to the meter"
            ) from None

    @property
    def running(self) -> bool:
        """Whether sampling runs."""
        return self._thread is not None

    def start(self) -> None:
        """INIT the meter and start fetching readings in the background."""
        if self._thread is not None:
            return
        c = self.config
        completion = c.aperture_s * (2.0 if c.autozero else 1.0)
        with self._io_lock:
            sent = time.monotonic()
            self._write_locked("INIT")
        with self._data_lock:
            self._clock = SampleClock(
                self._interval_s,
                c.aperture_s,
                start_host_s=sent,
                completion_s=completion,
                max_drift_ppm=c.max_drift_ppm,
            )
            self._pending, self._received, self._handed = [], 0, 0
            self._failure = None
        self._halt.clear()
        self._thread = threading.Thread(target=self._poll_loop, name="34465a-poll", daemon=True)
        self._thread.start()

    def _fetch_locked(self, observe: bool) -> int:
        """``DATA:POIN?``, then ``R? n`` if readings wait: store them; returns how many came.

        Asking for the count first never sends ``R?`` to an empty memory, and its short reply
        is the poll the clock observes.
        """
        c = self.config
        sent = time.monotonic()
        waiting = self._number_locked("DATA:POIN?")
        received = time.monotonic()
        if observe and self._clock is not None:
            with self._data_lock:
                self._clock.observe(sent, received, self._received + round(waiting))
        if waiting <= 0:
            return 0
        command = f"R? {min(round(waiting), c.chunk_readings)}"
        values = self._read_block_locked(command)
        with self._data_lock:
            self._pending.append(values)
            self._received += values.size
        return values.size

    def _read_block_locked(self, command: str) -> np.ndarray:
        """The readings of ``command``'s IEEE 488.2 block of big-endian doubles."""
        port = self._session()
        try:
            values = self._io(
                command,
                lambda: port.query_binary_values(
                    command,
                    datatype="d",
                    is_big_endian=True,
                    container=np.array,
                    raise_on_late_block=True,  # bytes before the block: a garbled reply
                ),
            )
        except (ValueError, RuntimeError, pyvisa.errors.InvalidBinaryFormat) as exc:
            with contextlib.suppress(MeterError):  # what is left of it must not answer later
                self._io(command, lambda: port.flush(BufferOperation.discard_read_buffer))
            raise MeterProtocolError(
                f"power meter at {self.address!r} answered {command!r} with no IEEE 488.2 "
                f"block of doubles ({_first_line(exc)}); another program may be talking to "
                "the meter"
            ) from None
        return np.asarray(values, dtype=np.float64)

    def _check_status_locked(self) -> None:
        value = round(self._number_locked("STAT:QUES?"))
        if value & QUES_MEMORY_OVERFLOW:
            raise MeterProtocolError(
                f"power meter at {self.address!r} overwrote readings (its reading memory "
                "overflowed); lower poll_interval_s or raise sample_interval_s"
            )
        if value & QUES_SAMPLE_TIMING:
            raise MeterConfigError(
                f"power meter at {self.address!r} could not keep sample_interval_s="
                f"{self._interval_s:g} s; lower nplc or raise sample_interval_s"
            )

    def _poll_loop(self) -> None:
        c = self.config
        next_status = time.monotonic() + c.status_interval_s
        delay = c.poll_interval_s
        while not self._halt.wait(delay):
            try:
                with self._io_lock:
                    got = self._fetch_locked(observe=True)
                    if time.monotonic() >= next_status:
                        self._check_status_locked()
                        next_status += c.status_interval_s
            except MeterError as exc:
                logger.error("%s", exc)
                with self._data_lock:
                    self._failure = exc
                return
            delay = 0.0 if got >= c.chunk_readings else c.poll_interval_s  # catch up a backlog

    def _stamp_locked(self) -> tuple[np.ndarray, np.ndarray]:
        """Timestamp and convert the pending readings (the caller holds the data lock)."""
        if not self._pending or self._clock is None:
            return np.empty(0), np.empty(0)
        current = np.concatenate(self._pending)
        self._pending = []
        first, self._handed = self._handed, self._handed + current.size
        if current.size == 0:
            return np.empty(0), np.empty(0)
        estimate: ClockEstimate = self._clock.estimate()
        times = self._clock.timestamps(first, current.size, estimate)
        # A later fit may place a batch a fraction of a sample before the previous one's end.
        times = np.maximum(times, self._last_stamp_s + 1e-9 * np.arange(1, times.size + 1))
        self._last_stamp_s = float(times[-1])
        bad = np.abs(current) >= OVERLOAD
        if np.any(bad) and self._failure is None:
            nan = np.isclose(np.abs(current[bad]), NOT_A_NUMBER, rtol=1e-4)
            if np.all(nan):
                self._failure = MeterProtocolError(
                    f"power meter at {self.address!r} sent {int(bad.sum())} 'not a number' "
                    "readings; check the meter's display and its error queue"
                )
            else:
                self._failure = MeterOverRangeError(
                    f"power meter at {self.address!r}: {int(bad.sum())} readings over range "
                    f"(current above the {self.config.current_range_a:g} A range); set a larger "
                    "current_range_a, e.g. 3"
                )
        power = current * self.config.supply_v - current**2 * self.config.series_ohm
        return times, power

    def read_samples(self) -> tuple[np.ndarray, np.ndarray]:
        """New samples since the last call: host ``time.monotonic()`` seconds and watts."""
        with self._data_lock:
            if self._failure is not None:
                raise self._failure
            fresh = self._stamp_locked()
            if self._failure is not None:
                raise self._failure
            batches, self._ready = [*self._ready, fresh], []
        return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])

    def stop(self) -> None:
        """ABOR the meter, fetch the readings it still holds, and stop the thread."""
        if self._thread is None:
            return
        self._halt.set()
        self._thread.join()
        self._thread = None
        try:
            with self._io_lock:
                self._write_locked("ABOR")
                while self._fetch_locked(observe=False) > 0:
                    pass
        except MeterError as exc:
            logger.error("stopping the power meter: %s", exc)
            with self._data_lock:
                self._failure = self._failure or exc
        with self._data_lock:
            if self._failure is None:
                self._ready.append(self._stamp_locked())

    def close(self) -> None:
        """Stop sampling if it runs and close the port."""
        try:
            self.stop()
        finally:
            self._release()

    def _release(self) -> None:
        """Close the VISA resource and release the serial port's lock (idempotent)."""
        if self._resource is not None:
            try:
                self._resource.close()
            except Exception as exc:  # closing must not mask the error that led here
                logger.debug("closing power meter %s: %s", self.address, exc)
            self._resource = None
        if self._serial_lock is not None:
            self._serial_lock.release()
            self._serial_lock = None

    @property
    def clock(self) -> ClockEstimate | None:
        """The current timestamp model (t0, period, drift), or None before :meth:`start`."""
        with self._data_lock:
            return None if self._clock is None else self._clock.estimate()

    @property
    def sample_interval_s(self) -> float:
        """The sample interval that the meter set (its timer has ~1 us steps)."""
        return self._interval_s


__all__ = [
    "DEFAULT_BACKEND",
    "Keysight34465A",
    "Keysight34465AConfig",
    "resource_name",
]

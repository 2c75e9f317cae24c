"""Driver for the Keysight Truevolt 34465A (and 34470A) measuring the board's supply current.

The DMM's current input sits in series with the board's 12 V supply line; power is
``current * supply_v - current**2 * series_ohm`` (``series_ohm``: resistance between the point
where the supply holds ``supply_v`` and the board, e.g. the DMM's shunt when the supply does not
sense at the board). The driver configures timed sampling on the meter's own timer, fetches the
readings with ``R?`` from a background thread, and gives each reading the host time of the
middle of its aperture (:class:`host.meters.base.SampleClock`). docs/power-meter.md explains the
command sequence and the timestamps.

Transport: SCPI over a byte stream opened with pyserial's ``serial_for_url``: the instrument's
raw SCPI socket (``socket://HOST:5025``, the 34465A's LAN port), a serial device or adapter, or
the simulator's pseudo-terminal. Another transport (pyvisa for USBTMC, HiSLIP or GPIB) is a class
with the :class:`Transport` methods, chosen in :func:`open_transport`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import serial

from fpga.emulator.meter import SimulatedMeter, SimulatedMeterConfig
from fpga.emulator.power import ConstantPower
from host.meters.base import (
    ClockEstimate,
    MeterConfigError,
    MeterError,
    MeterIdentityError,
    MeterOverRangeError,
    MeterProtocolError,
    MeterTimeoutError,
    PowerMeter,
    SampleClock,
    register_meter,
)
from host.meters.ports import port_call, port_error
from host.meters.visa import VisaTransport, is_visa_address

logger = logging.getLogger(__name__)

OVERLOAD = 9.9e37  # the 34465A's over-range reading (+/-9.9E+37)
NOT_A_NUMBER = 9.91e37  # SCPI "not a number"
QUES_SAMPLE_TIMING = 1 << 2
QUES_MEMORY_OVERFLOW = 1 << 14
MANUFACTURERS = ("Keysight Technologies", "Agilent Technologies")
MODELS = ("34465A", "34470A")  # same SCPI command set for what this driver uses
SIMULATED_SERIAL_PREFIX = "SIM"
"""A *IDN? serial number starting so marks a simulated instrument (fpga/emulator/meter.py)."""


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


# -- transport -----------------------------------------------------------------------------------


class Transport(Protocol):
    """A byte stream to one instrument: the extension point for other interfaces (VISA...)."""

    address: str

    def write(self, data: bytes) -> None:
        """Send bytes."""
        ...

    def read_line(self, timeout_s: float) -> bytes:
        """Bytes up to and including ``\\n``; fewer (maybe none) if ``timeout_s`` passes."""
        ...

    def read_exact(self, size: int, timeout_s: float) -> bytes:
        """``size`` bytes; fewer if no byte arrives for ``timeout_s``."""
        ...

    def discard_input(self) -> None:
        """Drop whatever the instrument sent that was not read."""
        ...

    def close(self) -> None:
        """Release the port."""
        ...


class SerialTransport:
    """SCPI over a pyserial port: a device path, ``socket://HOST:PORT``, a pty, ``loop://``."""

    def __init__(self, address: str, timeout_s: float) -> None:
        self.address = address
        try:
            # exclusive: a second driver on the same serial port fails instead of interleaving.
            self._port = serial.serial_for_url(address, timeout=timeout_s, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise port_error(address, exc) from None

    def _io(self, what: str, call: Any, *args: Any) -> Any:
        return port_call(self.address, what, call, *args)

    def write(self, data: bytes) -> None:
        self._io("writing", self._port.write, data)
        self._io("writing", self._port.flush)

    def read_line(self, timeout_s: float) -> bytes:
        self._port.timeout = timeout_s
        return self._io("reading", self._port.read_until, b"\n")

    def read_exact(self, size: int, timeout_s: float) -> bytes:
        self._port.timeout = timeout_s
        out = bytearray()
        while len(out) < size:
            chunk = self._io("reading", self._port.read, size - len(out))
            if not chunk:
                break  # no byte for timeout_s
            out += chunk
        return bytes(out)

    def discard_input(self) -> None:
        self._io("flushing", self._port.reset_input_buffer)

    def close(self) -> None:
        try:
            self._port.close()
        except (serial.SerialException, OSError) as exc:
            logger.debug("closing %s: %s", self.address, exc)


def open_transport(address: str, timeout_s: float) -> Transport:
    """The transport for ``address``. Add other schemes here (e.g. ``visa:`` via pyvisa)."""

    if is_visa_address(address):  # TCPIP0::HOST::5025::SOCKET, USB0::...::INSTR
        return VisaTransport(address, timeout_s)
    return SerialTransport(address, timeout_s)


# -- IEEE 488.2 blocks ---------------------------------------------------------------------------


def read_block(read_exact: Any, what: str = "R?") -> bytes:
    """Read one IEEE 488.2 block and its terminator with ``read_exact(size) -> bytes``.

    A definite-length block is ``#<n><length><payload>`` (``#10`` is empty); an indefinite one
    (``#0<payload>\\n``) is also accepted. Raises :class:`MeterProtocolError` on anything else.
    """
    head = read_exact(2)
    if len(head) < 2:
        raise MeterTimeoutError(f"no reply to {what!r} within the timeout")
    if head[:1] != b"#" or not head[1:2].isdigit():
        raise MeterProtocolError(
            f"reply to {what!r} starts with {head!r}, not an IEEE 488.2 block ('#'); "
            "another program may be talking to the meter"
        )
    digits = int(head[1:2])
    if digits == 0:
        payload = bytearray()
        while not payload.endswith(b"\n"):
            byte = read_exact(1)
            if not byte:
                raise MeterTimeoutError(f"reply to {what!r} stopped in an indefinite block")
            payload += byte
        return bytes(payload[:-1])
    size_text = read_exact(digits)
    if len(size_text) < digits or not size_text.isdigit():
        raise MeterProtocolError(f"reply to {what!r} has a bad block length {size_text!r}")
    size = int(size_text)
    payload = read_exact(size)
    if len(payload) < size:
        raise MeterTimeoutError(
            f"reply to {what!r} stopped after {len(payload)} of {size} bytes of its block"
        )
    terminator = read_exact(1)
    if terminator != b"\n":
        raise MeterProtocolError(
            f"block reply to {what!r} ends with {terminator!r}, not a newline; "
            "the reply was garbled"
        )
    return payload


def parse_block(data: bytes, what: str = "R?") -> bytes:
    """The payload of a complete block reply held in memory (with its newline)."""
    view = memoryview(data)
    position = 0

    def read_exact(size: int) -> bytes:
        nonlocal position
        chunk = bytes(view[position : position + size])
        position += len(chunk)
        return chunk

    payload = read_block(read_exact, what)
    if position != len(data):
        raise MeterProtocolError(
            f"reply to {what!r} has {len(data) - position} bytes after its block"
        )
    return payload


def parse_readings(payload: bytes) -> np.ndarray:
    """Comma-separated ASCII readings (``+1.23456789E-01,...``) as float64."""
    if not payload.strip():
        return np.empty(0)
    try:
        return np.array(payload.split(b","), dtype=np.float64)
    except ValueError:
        raise MeterProtocolError(f"readings {payload[:60]!r} are not numbers") from None


# -- the driver ----------------------------------------------------------------------------------


@register_meter("keysight34465a")
class Keysight34465A(PowerMeter):
    """A Keysight 34465A (or 34470A) DMM reading the board's supply current.

    ``options`` are fields of :class:`Keysight34465AConfig` (or pass ``config``).
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
        self._transport: Transport | None = None
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
    def _port(self) -> Transport:
        if self._transport is None:
            raise MeterError(f"power meter {self.address!r} is not open; call open() first")
        return self._transport

    def write(self, command: str) -> None:
        """Send one SCPI program message."""
        with self._io_lock:
            self._port().write(command.encode("ascii") + b"\n")

    def query(self, command: str) -> str:
        """Send a query and return its one-line reply (without the newline)."""
        with self._io_lock:
            return self._query_locked(command)

    def _query_locked(self, command: str) -> str:
        port = self._port()
        port.write(command.encode("ascii") + b"\n")
        line = port.read_line(self.config.timeout_s)
        if not line.endswith(b"\n"):
            raise MeterTimeoutError(
                f"power meter at {self.address!r} did not answer {command!r} within "
                f"{self.config.timeout_s} s; check that it is on and connected"
            )
        return line.decode("ascii", errors="replace").strip()

    def _errors_locked(self) -> list[str]:
        """Empty the meter's error queue; the errors it held."""
        errors = []
        for _ in range(25):  # the queue holds 20
            reply = self._query_locked("SYST:ERR?")
            code = reply.split(",", 1)[0].strip()
            if code.lstrip("+-").isdigit() and int(code) == 0:
                return errors
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
        if self._transport is not None:
            return
        self._transport = open_transport(self.address, self.config.timeout_s)
        try:
            self._idn = self._check_identity()
            self.configure()
        except BaseException:
            self._transport.close()
            self._transport = None
            raise

    def _check_identity(self) -> str:
        port = self._port()
        port.discard_input()
        port.write(b"*IDN?\n")
        line = port.read_line(self.config.timeout_s)
        if not line.endswith(b"\n"):
            raise MeterTimeoutError(
                f"power meter at {self.address!r} did not answer *IDN? within "
                f"{self.config.timeout_s} s; check that it is on, connected and that this is "
                "its port"
            )
        idn = line.decode("ascii", errors="replace").strip()
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
        ]
        with self._io_lock:
            for command in commands:
                self._port().write(command.encode("ascii") + b"\n")
            errors = self._errors_locked()
            if errors:
                raise MeterConfigError(
                    f"power meter at {self.address!r} refused the configuration: "
                    f"{'; '.join(errors)}; check nplc, current_range_a and sample_interval_s"
                )
            minimum_s = float(self._query_locked("SAMP:TIM? MIN"))
            self._interval_s = float(self._query_locked("SAMP:TIM?"))
            nplc = float(self._query_locked("CURR:DC:NPLC?"))
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
            self._port().discard_input()
            sent = time.monotonic()
            self._port().write(b"INIT\n")
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

        Asking for the count first never sends ``R?`` to an empty memory (instruments differ
        in what they answer then), and its short reply is the poll the clock observes.
        """
        c = self.config
        sent = time.monotonic()
        reply = self._query_locked("DATA:POIN?")
        received = time.monotonic()
        try:
            waiting = int(float(reply))
        except ValueError:
            raise MeterProtocolError(
                f"power meter at {self.address!r} answered DATA:POIN? with {reply!r}, not a "
                "count; another program may be talking to the meter"
            ) from None
        if observe and self._clock is not None:
            with self._data_lock:
                self._clock.observe(sent, received, self._received + waiting)
        if waiting <= 0:
            return 0
        command = f"R? {min(waiting, c.chunk_readings)}"
        port = self._port()
        port.write(command.encode("ascii") + b"\n")
        payload = read_block(lambda size: port.read_exact(size, c.timeout_s), command)
        values = parse_readings(payload)
        with self._data_lock:
            self._pending.append(values)
            self._received += values.size
        return values.size

    def _check_status_locked(self) -> None:
        value = int(float(self._query_locked("STAT:QUES?")))
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
                self._port().write(b"ABOR\n")
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
            if self._transport is not None:
                self._transport.close()
                self._transport = None

    @property
    def clock(self) -> ClockEstimate | None:
        """The current timestamp model (t0, period, drift), or None before :meth:`start`."""
        with self._data_lock:
            return None if self._clock is None else self._clock.estimate()

    @property
    def sample_interval_s(self) -> float:
        """The sample interval that the meter set (its timer has ~1 us steps)."""
        return self._interval_s


@register_meter("sim")
class SimulatedKeysight34465A(Keysight34465A):
    """The 34465A driver against an in-process simulated 34465A with constant power.

    Spec ``sim:3.0`` (watts; ``sim`` alone is 3.0 W): for dry runs of the measurement harness
    without the emulated board. The simulator is :mod:`fpga.emulator.meter` on a pty.
    """

    needs_address = False

    def __init__(self, address: str = "", **options: Any) -> None:
        try:
            self.power_w = float(address) if address else 3.0
        except ValueError:
            raise MeterConfigError(
                f"sim meter address {address!r} is not a power in watts; write e.g. sim:3.0"
            ) from None
        super().__init__(address, **options)
        self._simulator: Any = None

    def open(self) -> None:
        """Start the simulator on a pty and connect the real driver to it."""
        if self._transport is not None:
            return

        config = SimulatedMeterConfig(
            supply_v=self.config.supply_v, line_frequency_hz=self.config.line_frequency_hz
        )
        self._simulator = SimulatedMeter(ConstantPower(self.power_w), config)
        self.address = self._simulator.start()
        try:
            super().open()
        except BaseException:
            self._simulator.stop()
            raise

    def close(self) -> None:
        """Close the driver, then stop the simulator."""
        try:
            super().close()
        finally:
            if self._simulator is not None:
                self._simulator.stop()
                self._simulator = None

"""Driver for the Watts Up? PRO mains power meter on its USB serial port.

The Watts Up? PRO sits between the wall socket and the board's power adapter, so it measures
the power the whole supply chain draws from the mains, once a second: a coarse meter (0.1 W
resolution, 1 s intervals) next to the 34465A, for long runs and cross-checks. The board's
adapter losses are included in what it reports.

The protocol (docs/power-meter.md, "Watts Up? PRO"): 115200 baud 8N1 on the meter's FTDI USB
serial port; every command and reply is a packet ``#<C>,<sub>,<n>[,<arg>...];`` of ASCII
fields, ``n`` the number of arguments that follow. Replies use the lower-case command letter.

- ``#V,R,0;`` -> ``#v,-,<n>,...;`` version (identifies the meter);
- ``#H,R,0;`` -> ``#h,-,18,W,V,A,WH,...;`` the names of the data fields;
- ``#L,W,3,E,,<interval_s>;`` external logging: a data record every ``interval_s`` seconds on
  the serial port (``I`` instead of ``E``: internal logging into the meter's memory, which ends
  the stream);
- ``#R,W,0;`` clears the meter's memory;
- a data record ``#d,-,18,<W>,<V>,<A>,<WH>,...;``: watts and volts in tenths, amps in
  thousandths (``_`` marks a field the meter does not report).

A background thread reads the records as they arrive. A record reports the mean power over the
interval that ends when it is sent, so it is stamped with its host arrival time minus half an
interval: the middle of the interval it averages (the serial transfer of ~90 bytes takes under
10 ms at 115200 baud, small against the 1 s interval). Malformed records are skipped, counted
(:attr:`WattsUp.corrupt_records`) and logged.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import serial

from host.meters.base import (
    MeterConfigError,
    MeterError,
    MeterIdentityError,
    MeterProtocolError,
    MeterTimeoutError,
    PowerMeter,
    register_meter,
)
from host.meters.ports import port_call, port_error

logger = logging.getLogger(__name__)

# The data fields of a #d record in the order the PRO reports them (the #h header names them).
FIELDS = (
    "W",
    "V",
    "A",
    "WH",
    "Cost",
    "WH/Mo",
    "Cost/Mo",
    "Wmax",
    "Vmax",
    "Amax",
    "Wmin",
    "Vmin",
    "Amin",
    "PF",
    "DC",
    "PC",
    "HZ",
    "VA",
)
WATTS_PER_COUNT = 0.1  # W is reported in tenths of a watt
MAX_RECORD_BYTES = 512  # longer without a ';': line noise, not a record


SIMULATED_FIELD = "simulated"
"""A ``#v`` version-record field that marks a simulated meter (fpga/emulator/wattsup.py)."""


@dataclass
class WattsUpConfig:
    """Settings of the Watts Up? PRO driver; every field may be passed to ``open_meter``.

    Attributes:
        sample_interval_s: Logging interval, whole seconds (the meter's resolution; 1 is the
            shortest).
        baud_rate: Serial speed of the meter's FTDI port (115200 on the PRO).
        timeout_s: How long to wait for a reply to the version and header requests.
        silence_timeout_s: With logging started, no record for this long is an error (raised
            by :meth:`WattsUp.read_samples`); must exceed ``sample_interval_s``.
        clear_memory: Send ``#R,W,0;`` at open, erasing the meter's internal log.
    """

    sample_interval_s: int = 1
    baud_rate: int = 115200
    timeout_s: float = 2.0
    silence_timeout_s: float = 5.0
    clear_memory: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.sample_interval_s, int) and 1 <= self.sample_interval_s <= 3600):
            raise MeterConfigError(
                f"sample_interval_s={self.sample_interval_s!r} must be whole seconds in 1 .. 3600 "
                "(the Watts Up? logs at whole-second intervals)"
            )
        if not (isinstance(self.baud_rate, int) and self.baud_rate > 0):
            raise MeterConfigError(f"baud_rate={self.baud_rate!r} must be a positive integer")
        for name in ("timeout_s", "silence_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise MeterConfigError(f"{name}={value!r} must be a positive number of seconds")
        if self.silence_timeout_s <= self.sample_interval_s:
            raise MeterConfigError(
                f"silence_timeout_s={self.silence_timeout_s!r} must exceed sample_interval_s="
                f"{self.sample_interval_s!r}; raise it"
            )


def parse_packet(packet: str) -> tuple[str, list[str]]:
    """``"#d,-,3,1,2,3"`` (without the ``;``) -> ``("d", ["1", "2", "3"])``.

    Raises :class:`MeterProtocolError` unless the packet has a command letter, a sub-command
    field, and as many arguments as its count says.
    """
    fields = packet.strip().split(",")
    if len(fields) < 3 or not fields[0].startswith("#") or len(fields[0]) != 2:
        raise MeterProtocolError(f"Watts Up? packet {packet!r} lacks '#C,sub,count'")
    count_text = fields[2].strip()
    if not count_text.isdigit() or int(count_text) != len(fields) - 3:
        raise MeterProtocolError(
            f"Watts Up? packet {packet!r} announces {count_text!r} fields, has {len(fields) - 3}"
        )
    return fields[0][1], [f.strip() for f in fields[3:]]


class RecordReader:
    """Splits the meter's byte stream into packets ``#...;``, noting when each one ended."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes, arrived_s: float) -> list[tuple[str, float]]:
        """The packets that ``data`` completed (without ``;``), each with ``arrived_s``.

        Bytes before a ``#`` (line ends, noise) are dropped; a packet without its ``;`` after
        ``MAX_RECORD_BYTES`` is dropped and reported as ``("", arrived_s)``.
        """
        self._buffer += data
        out: list[tuple[str, float]] = []
        while True:
            start = self._buffer.find(b"#")
            if start < 0:
                self._buffer.clear()
                return out
            del self._buffer[:start]
            end = self._buffer.find(b";")
            restart = self._buffer.find(b"#", 1)
            if restart >= 0 and (end < 0 or restart < end):
                out.append(("", arrived_s))  # a packet cut short by the next one
                del self._buffer[:restart]
                continue
            if end < 0:
                if len(self._buffer) > MAX_RECORD_BYTES:
                    out.append(("", arrived_s))
                    self._buffer.clear()
                return out
            packet = bytes(self._buffer[:end]).decode("ascii", errors="replace")
            del self._buffer[: end + 1]
            out.append((packet, arrived_s))


@register_meter("wattsup")
class WattsUp(PowerMeter):
    """A Watts Up? PRO on a serial port: ``wattsup:/dev/ttyUSB0``.

    ``options`` are fields of :class:`WattsUpConfig` (or pass ``config``).
    """

    def __init__(self, address: str, config: WattsUpConfig | None = None, **options: Any) -> None:
        super().__init__(address)
        known = {f.name for f in dataclasses.fields(WattsUpConfig)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise MeterConfigError(
                f"unknown option(s) {unknown!r} for wattsup; known: {', '.join(sorted(known))}"
            )
        self.config = dataclasses.replace(config or WattsUpConfig(), **options)
        self._port: Any = None
        self._reader = RecordReader()
        self._version = ""
        self._watts_index = 0
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._times: list[float] = []
        self._powers: list[float] = []
        self._failure: MeterError | None = None
        self._last_record_s = 0.0
        self.corrupt_records = 0  # malformed records skipped since start()
        self.records = 0  # data records received since start()

    # -- port --------------------------------------------------------------------------------
    def _io(self, what: str, call: Any, *args: Any) -> Any:
        return port_call(
            self.address,
            what,
            call,
            *args,
            device="Watts Up?",
            hint="check the USB cable and that nothing else uses the port",
        )

    def _send(self, command: str) -> None:
        if self._port is None:
            raise MeterError(f"Watts Up? {self.address!r} is not open; call open() first")
        self._io("writing", self._port.write, command.encode("ascii"))
        self._io("writing", self._port.flush)

    def _request(self, command: str, reply: str) -> list[str]:
        """Send ``command``, return the arguments of the first ``#<reply>`` packet.

        Data records of a meter still logging from an earlier session are skipped.
        """
        self._send(command)
        deadline = time.monotonic() + self.config.timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            self._port.timeout = min(remaining, 0.1)
            data = self._io("reading", self._port.read, self._port.in_waiting or 1)
            for packet, _ in self._reader.feed(data, time.monotonic()):
                if packet[1:2].lower() == reply:
                    return parse_packet(packet)[1]
                logger.debug("Watts Up? %s: skipped %r awaiting #%s", self.address, packet, reply)
        raise MeterTimeoutError(
            f"Watts Up? at {self.address!r} did not answer {command!r} within "
            f"{self.config.timeout_s} s; check that it is plugged in, its USB cable, and that "
            "this is its port"
        )

    # -- PowerMeter API ----------------------------------------------------------------------
    def open(self) -> None:
        """Open the port, read the version (identity) and the data-field header."""
        if self._port is not None:
            return
        try:
            self._port = serial.serial_for_url(
                self.address,
                baudrate=self.config.baud_rate,
                bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE,
                stopbits=serial.STOPBITS_ONE,
                timeout=0.1,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise port_error(self.address, exc) from None
        try:
            self._io("flushing", self._port.reset_input_buffer)
            version = self._request("#V,R,0;", "v")
            self._version = ",".join(version)
            self._watts_index = self._read_header()
            if self.config.clear_memory:
                self._send("#R,W,0;")
            logger.info("Watts Up? at %s: version record %s", self.address, self._version)
        except BaseException:
            self._port.close()
            self._port = None
            raise

    def _read_header(self) -> int:
        """The position of ``W`` among the data fields (the header names them)."""
        try:
            names = self._request("#H,R,0;", "h")
        except MeterTimeoutError:
            logger.warning(
                "Watts Up? at %s sent no header (#h); assuming the PRO's field order %s",
                self.address,
                ",".join(FIELDS[:3]),
            )
            return 0
        if "W" not in names:
            raise MeterIdentityError(
                f"Watts Up? at {self.address!r} sent the header {','.join(names)!r} without a "
                "W (watts) field; is this a Watts Up? PRO?"
            )
        return names.index("W")

    def identify(self) -> str:
        """``"Watts Up? (version record ...)"``: the fields of the meter's ``#v`` reply."""
        return f"Watts Up? (version record {self._version})"

    @property
    def simulated(self) -> bool:
        """True when the ``#v`` version record read at :meth:`open` has a field ``simulated``:
        the simulated Watts Up? (fpga/emulator/wattsup.py) sends one; a real meter's fields
        are numbers."""
        if not self._version:
            raise MeterError(f"Watts Up? at {self.address!r} is not open; call open() first")
        return SIMULATED_FIELD in (f.strip().lower() for f in self._version.split(","))

    def start(self) -> None:
        """Start external logging every ``sample_interval_s`` and read records in the background."""
        if self._thread is not None:
            return
        with self._lock:
            self._times, self._powers, self._failure = [], [], None
            self.corrupt_records = self.records = 0
            self._last_record_s = time.monotonic()
        self._io("flushing", self._port.reset_input_buffer)
        self._reader = RecordReader()
        self._port.timeout = 0.1  # how often the reader looks at the halt flag
        self._send(f"#L,W,3,E,,{self.config.sample_interval_s};")
        self._halt.clear()
        self._thread = threading.Thread(target=self._read_loop, name="wattsup-read", daemon=True)
        self._thread.start()

    def _read_loop(self) -> None:
        half_interval_s = 0.5 * self.config.sample_interval_s
        while not self._halt.is_set():
            try:
                data = self._io("reading", self._port.read, self._port.in_waiting or 1)
            except MeterError as exc:
                logger.error("%s", exc)
                with self._lock:
                    self._failure = exc
                return
            now = time.monotonic()
            for packet, arrived_s in self._reader.feed(data, now):
                self._take(packet, arrived_s - half_interval_s)
            if now - self._last_record_s > self.config.silence_timeout_s:
                with self._lock:
                    self._failure = MeterTimeoutError(
                        f"Watts Up? at {self.address!r} sent no record for "
                        f"{self.config.silence_timeout_s} s after logging started; check its "
                        "USB cable and that nothing else uses the port"
                    )
                logger.error("%s", self._failure)
                return

    def _take(self, packet: str, stamp_s: float) -> None:
        """Store one data record's power at ``stamp_s``; count a malformed one."""
        if packet and packet[1:2] != "d":
            logger.debug("Watts Up? %s: ignored %r while logging", self.address, packet)
            return
        try:
            if not packet:
                raise MeterProtocolError("Watts Up? record cut short")
            _, values = parse_packet(packet)
            power_w = int(values[self._watts_index]) * WATTS_PER_COUNT
            if power_w < 0:
                raise ValueError(power_w)
        except (MeterProtocolError, ValueError, IndexError) as exc:
            with self._lock:
                self.corrupt_records += 1
                count = self.corrupt_records
            logger.warning(
                "Watts Up? %s: skipped malformed record %r (%s; %d so far)",
                self.address,
                packet,
                exc,
                count,
            )
            return
        with self._lock:
            self._times.append(stamp_s)
            self._powers.append(power_w)
            self.records += 1
            self._last_record_s = time.monotonic()

    def read_samples(self) -> tuple[np.ndarray, np.ndarray]:
        """New samples since the last call: host ``time.monotonic()`` seconds and watts."""
        with self._lock:
            if self._failure is not None:
                raise self._failure
            times, powers = self._times, self._powers
            self._times, self._powers = [], []
        return np.array(times, dtype=np.float64), np.array(powers, dtype=np.float64)

    def stop(self) -> None:
        """Stop the reader and switch the meter back to internal logging (ends the stream)."""
        if self._thread is None:
            return
        self._halt.set()
        self._thread.join()
        self._thread = None
        try:
            self._send(f"#L,W,3,I,,{self.config.sample_interval_s};")
        except MeterError as exc:
            logger.error("stopping the Watts Up?: %s", exc)

    def close(self) -> None:
        """Stop logging if it runs and close the port."""
        try:
            self.stop()
        finally:
            if self._port is not None:
                try:
                    self._port.close()
                except (serial.SerialException, OSError) as exc:
                    logger.debug("closing %s: %s", self.address, exc)
                self._port = None

    @property
    def version(self) -> str:
        """The fields of the meter's ``#v`` reply, comma-separated."""
        return self._version


__all__ = ["FIELDS", "RecordReader", "WattsUp", "WattsUpConfig", "parse_packet"]

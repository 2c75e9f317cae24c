"""A simulated Keysight Truevolt 34465A DMM measuring the emulated board's supply current.

The lab set-up it stands in for: the board is powered from a 12 V bench supply and the DMM's
current input (its internal shunt) sits in series with the supply line, so the DMM reads the DC
current I and the host computes power as ``supply_v * I`` (see docs/power-meter.md). Here the
current is ``power / supply_v``, with the power taken from a :class:`PowerSource`
(:class:`fpga.emulator.power.PowerTrace` when the emulated board drives it).

The instrument answers a subset of the 34465A's SCPI commands (listed in docs/power-meter.md)
with the 34465A's syntax: short and long keyword forms, case-insensitive, ``;``-separated
commands in one newline-terminated message with the SCPI relative-path rule, a leading ``:``
back to the root, responses like ``+1.23456789E-01``, ``R?`` as an IEEE 488.2 definite-length
block, and an error queue with the standard SCPI codes and strings.

How a reading is made:

- the instrument has its own clock: ``meter_s = clock_offset_s + host_s * (1 + clock_drift_ppm
  * 1e-6)`` with ``host_s`` the host's ``time.monotonic()``; triggers, trigger delays, sample
  intervals and apertures run on that clock;
- a reading is the mean current over the integration aperture (``NPLC / line_frequency_hz``,
  meter seconds), plus Gaussian noise (a floor that scales with the range and with
  ``1/sqrt(NPLC)``, and a ppm-of-reading term; seeded), quantised to the resolution of the range
  and NPLC; beyond 120 % of a fixed range it is the overload value ``+9.90000000E+37``;
- readings are generated lazily, in order, when a command needs them, so a reading exists from
  the moment its measurement completes on the instrument's clock, whatever the thread timing;
- reading memory holds ``memory_readings`` readings (50,000 on a 34465A, 2,000,000 with the MEM
  option); when it overflows the oldest readings are overwritten and bit 14 of the Questionable
  Data register is set (the 34465A reports memory overflow there, not in the error queue).

The instrument serves one client on a pseudo-terminal (default; the slave path is logged and in
:attr:`SimulatedMeter.address`), on a TCP socket like the real instrument's SCPI port 5025
(``transport="tcp"``), or on any pyserial-like port object.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fpga.emulator import EmulatorError
from fpga.emulator.power import ConstantPower, PowerSource, SquareWavePower
from fpga.emulator.serving import Link, PortLink, PtyLink, ServedInstrument, TcpLink

logger = logging.getLogger(__name__)

OVERLOAD = 9.9e37  # the 34465A's over-range reading
NOT_A_NUMBER = 9.91e37  # SCPI "not a number"
OVERRANGE_FRACTION = 1.2  # a fixed range reads up to 120 % of its full scale (approximate)

# DC current ranges (A) on the 3 A terminals; CONF/MEAS may also select 10 A (10 A terminals).
CURRENT_RANGES_A = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 3.0)
RANGE_10A = 10.0
NPLC_STANDARD = (0.02, 0.06, 0.2, 1.0, 10.0, 100.0)
NPLC_DIG = (0.001, 0.002, 0.006)  # only with the DIG option
# Reading resolution in ppm of range per NPLC (approximate, after the 34465A's resolution table).
RESOLUTION_PPM = {
    0.001: 30.0,
    0.002: 15.0,
    0.006: 6.0,
    0.02: 3.0,
    0.06: 1.5,
    0.2: 0.7,
    1.0: 0.3,
    10.0: 0.1,
    100.0: 0.03,
}
MAX_SAMPLE_COUNT = 1_000_000_000
MAX_TRIGGER_COUNT = 1_000_000
MAX_R_READINGS = 2_000_000
ERROR_QUEUE_SIZE = 20
QUES_CURRENT_OVERLOAD = 1 << 1
QUES_SAMPLE_TIMING = 1 << 2
QUES_MEMORY_OVERFLOW = 1 << 14

SCPI_ERRORS = {
    -101: "Invalid character",
    -102: "Syntax error",
    -104: "Data type error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -113: "Undefined header",
    -211: "Trigger ignored",
    -213: "Init ignored",
    -214: "Trigger deadlock",
    -221: "Settings conflict",
    -222: "Data out of range",
    -224: "Illegal parameter value",
    -230: "Data corrupt or stale",
    -240: "Hardware error",
    -350: "Error queue overflow",
}


@dataclass
class SimulatedMeterConfig:
    """How the simulated 34465A is wired and how it behaves.

    Attributes:
        supply_v: Supply voltage of the board's line; the current read is ``power / supply_v``.
        line_frequency_hz: Power-line frequency (50 or 60); one PLC lasts ``1 / line_frequency_hz``.
        clock_drift_ppm: The instrument's clock runs fast by this many ppm against the host's.
        clock_offset_s: What the instrument's clock reads at host time zero.
        noise_floor_a: RMS of the additive current noise on the 1 A range at 0.02 PLC; it
            scales with the range and with ``sqrt(0.02 / NPLC)`` (approximate).
        noise_ppm_of_reading: RMS of the noise proportional to the reading, in ppm.
        seed: Seed of the noise generator (readings are reproducible for a given seed).
        memory_readings: Reading memory: 50,000 (34465A) or 2,000,000 (MEM option).
        dig_option: Whether the DIG option is fitted (NPLC 0.001, 0.002, 0.006).
        sample_overhead_s: Time per measurement beyond the aperture (approximate).
        auto_trigger_delay_s: The trigger delay used while TRIG:DEL:AUTO is ON (approximate).
        manufacturer, model, serial_number, firmware: The four fields of the *IDN? reply. The
            serial number starts with ``SIM``, which no Keysight serial does: the host's driver
            reads the instrument as simulated (``Keysight34465A.simulated``).
    """

    supply_v: float = 12.0
    line_frequency_hz: float = 50.0
    clock_drift_ppm: float = 0.0
    clock_offset_s: float = 0.0
    noise_floor_a: float = 3e-6
    noise_ppm_of_reading: float = 10.0
    seed: int = 0
    memory_readings: int = 50_000
    dig_option: bool = False
    sample_overhead_s: float = 20e-6
    auto_trigger_delay_s: float = 1e-3
    manufacturer: str = "Keysight Technologies"
    model: str = "34465A"
    serial_number: str = "SIM0000001"  # "SIM...": the host's driver reads it as simulated
    firmware: str = "A.03.02-03.15-03.02-00.52-04-02"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.supply_v) and self.supply_v > 0):
            raise EmulatorError(f"supply_v={self.supply_v!r} must be a positive voltage")
        if self.line_frequency_hz not in (50.0, 60.0, 50, 60):
            raise EmulatorError(f"line_frequency_hz={self.line_frequency_hz!r} must be 50 or 60")
        if not (math.isfinite(self.clock_drift_ppm) and abs(self.clock_drift_ppm) < 1e5):
            raise EmulatorError(f"clock_drift_ppm={self.clock_drift_ppm!r} must be below 1e5")
        if self.noise_floor_a < 0 or self.noise_ppm_of_reading < 0:
            raise EmulatorError(
                f"noise_floor_a={self.noise_floor_a!r} and noise_ppm_of_reading="
                f"{self.noise_ppm_of_reading!r} must not be negative"
            )
        if self.memory_readings < 1:
            raise EmulatorError(f"memory_readings={self.memory_readings!r} must be at least 1")


class _ScpiError(Exception):
    """An SCPI error to queue: ``code`` is the SCPI error number."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _Stopped(Exception):
    """The simulator was stopped while a query was waiting for readings."""


# -- the command tree ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Node:
    short: str
    long: str
    optional: bool

    def matches(self, word: str) -> bool:
        return word in (self.short, self.long)


def _compile(pattern: str) -> tuple[_Node, ...]:
    """``"[SENSe:]CURRent[:DC]:NPLCycles"`` -> nodes; lower-case letters are the long form."""
    nodes = []
    for match in re.finditer(r"\[:?(\w+):?\]|:?(\w+)", pattern):
        word = match.group(1) or match.group(2)
        short = "".join(ch for ch in word if ch.isupper() or ch.isdigit())
        nodes.append(_Node(short, word.upper(), match.group(1) is not None))
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


# (pattern, is_query, handler name)
_COMMANDS: list[tuple[str, bool, str]] = [
    ("SYSTem:ERRor[:NEXT]", True, "_q_syst_err"),
    ("CONFigure:CURRent[:DC]", False, "_c_conf_curr"),
    ("CONFigure", True, "_q_conf"),
    ("[SENSe:]CURRent[:DC]:NPLCycles", False, "_c_nplc"),
    ("[SENSe:]CURRent[:DC]:NPLCycles", True, "_q_nplc"),
    ("[SENSe:]CURRent[:DC]:RANGe", False, "_c_range"),
    ("[SENSe:]CURRent[:DC]:RANGe", True, "_q_range"),
    ("[SENSe:]CURRent[:DC]:RANGe:AUTO", False, "_c_range_auto"),
    ("[SENSe:]CURRent[:DC]:RANGe:AUTO", True, "_q_range_auto"),
    ("[SENSe:]CURRent[:DC]:ZERO:AUTO", False, "_c_zero_auto"),
    ("[SENSe:]CURRent[:DC]:ZERO:AUTO", True, "_q_zero_auto"),
    ("SAMPle:COUNt", False, "_c_samp_count"),
    ("SAMPle:COUNt", True, "_q_samp_count"),
    ("SAMPle:SOURce", False, "_c_samp_source"),
    ("SAMPle:SOURce", True, "_q_samp_source"),
    ("SAMPle:TIMer", False, "_c_samp_timer"),
    ("SAMPle:TIMer", True, "_q_samp_timer"),
    ("TRIGger:SOURce", False, "_c_trig_source"),
    ("TRIGger:SOURce", True, "_q_trig_source"),
    ("TRIGger:COUNt", False, "_c_trig_count"),
    ("TRIGger:COUNt", True, "_q_trig_count"),
    ("TRIGger:DELay", False, "_c_trig_delay"),
    ("TRIGger:DELay", True, "_q_trig_delay"),
    ("TRIGger:DELay:AUTO", False, "_c_trig_delay_auto"),
    ("TRIGger:DELay:AUTO", True, "_q_trig_delay_auto"),
    ("INITiate[:IMMediate]", False, "_c_init"),
    ("ABORt", False, "_c_abort"),
    ("FETCh", True, "_q_fetch"),
    ("READ", True, "_q_read"),
    ("R", True, "_q_r"),
    ("DATA:POINts", True, "_q_data_points"),
    ("MEASure:CURRent[:DC]", True, "_q_meas_curr"),
    ("STATus:QUEStionable[:EVENt]", True, "_q_ques_event"),
    ("STATus:QUEStionable:CONDition", True, "_q_ques_cond"),
]
_COMPILED = [(_compile(pattern), query, name) for pattern, query, name in _COMMANDS]
_COMMON = {
    ("*IDN", True): "_q_idn",
    ("*RST", False): "_c_rst",
    ("*CLS", False): "_c_cls",
    ("*OPC", True): "_q_opc",
    ("*OPC", False): "_c_noop",
    ("*WAI", False): "_c_noop",
    ("*TRG", False): "_c_trg",
}
_HEADER_CHARS = re.compile(r"^[*:]?[A-Za-z][A-Za-z0-9_:]*\??$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def format_reading(value: float) -> str:
    """A reading as the 34465A sends it: ``+1.23456789E-01``."""
    return f"{value:+.8E}"


def definite_block(payload: bytes) -> bytes:
    """An IEEE 488.2 definite-length block: ``#<n><length><payload>`` (``#10`` when empty)."""
    length = str(len(payload))
    return f"#{len(length)}{length}".encode() + payload


@dataclass
class _Settings:
    """The instrument's measurement settings (the *RST state by default)."""

    function: str = "VOLT"  # *RST selects DC volts; CONF:CURR:DC selects current
    range_a: float = 3.0
    autorange: bool = True
    nplc: float = 10.0
    autozero: bool = True
    sample_count: int = 1
    sample_source: str = "IMM"
    sample_timer_s: float = 1.0
    trigger_source: str = "IMM"
    trigger_count: float = 1.0  # math.inf for INFinity
    trigger_delay_s: float = 0.0
    trigger_delay_auto: bool = True


class SimulatedMeter(ServedInstrument):
    """A simulated 34465A serving SCPI on a pty, a TCP socket or a pyserial-like port.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with SimulatedMeter(PowerTrace(3.0)) as meter:
            print(meter.address)            # e.g. /dev/pts/7, for the host driver
    """

    def __init__(
        self,
        source: PowerSource,
        config: SimulatedMeterConfig | None = None,
        *,
        transport: str = "pty",
        port: Any = None,
        tcp_port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(source)
        if port is None and transport not in ("pty", "tcp"):
            raise EmulatorError(f"transport={transport!r} must be 'pty' or 'tcp'")
        self.config = config or SimulatedMeterConfig()
        self._transport = "port" if port is not None else transport
        self._port = port
        self._tcp_port = tcp_port
        self._clock = clock
        self._rate = 1.0 + self.config.clock_drift_ppm * 1e-6
        self._rng = np.random.default_rng(self.config.seed)
        self._lock = threading.RLock()
        self._errors: deque[tuple[int, str]] = deque()
        self._source_failed = False
        self._reset()

    # -- lifecycle -------------------------------------------------------------------------
    thread_name = "sim-34465a"
    description = "simulated Keysight 34465A"

    def _open_link(self) -> Link:
        if self._transport == "pty":
            return PtyLink()
        if self._transport == "tcp":
            return TcpLink(self._tcp_port)
        return PortLink(self._port)

    def _serve(self) -> None:
        assert self._link is not None
        pending = b""
        while not self._stop.is_set():
            try:
                data = self._link.read_some(0.05)
            except OSError as exc:
                logger.error("simulated meter port failed: %s", exc)
                return
            if not data:
                continue
            pending += data
            if len(pending) > 1 << 20:  # a client sending garbage without newlines
                pending = b""
                self._push_error(-102)
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                try:
                    reply = self.handle(line.decode("ascii", errors="replace"))
                except _Stopped:
                    return
                if reply is not None:
                    try:
                        self._link.write_all((reply + "\n").encode("ascii"), self._stop)
                    except OSError as exc:
                        logger.warning("simulated meter could not reply: %s", exc)

    # -- clocks ----------------------------------------------------------------------------
    def meter_time_s(self, host_s: float | None = None) -> float:
        """The instrument's clock at host time ``host_s`` (default: now)."""
        host = self._clock() if host_s is None else host_s
        return self.config.clock_offset_s + host * self._rate

    def host_time_s(self, meter_s: float) -> float:
        """The host time at which the instrument's clock reads ``meter_s``."""
        return (meter_s - self.config.clock_offset_s) / self._rate

    # -- the parser ------------------------------------------------------------------------
    def handle(self, message: str) -> str | None:
        """Execute one program message (without its newline); the response, or None."""
        with self._lock:
            responses: list[str] = []
            path: list[str] = []
            for unit in message.rstrip("\r").split(";"):
                unit = unit.strip()
                if not unit:
                    continue
                try:
                    reply, path = self._execute(unit, path)
                except _ScpiError as exc:
                    self._push_error(exc.code)
                    if -199 <= exc.code <= -100:
                        break  # a command error discards the rest of the message
                    continue
                if reply is not None:
                    responses.append(reply)
            return ";".join(responses) if responses else None

    def _execute(self, unit: str, path: list[str]) -> tuple[str | None, list[str]]:
        header, rest = [*unit.split(None, 1), ""][:2]
        if not _HEADER_CHARS.match(header):
            raise _ScpiError(-101 if re.search(r"[^\w:*?]", header) else -102)
        query = header.endswith("?")
        header = header.rstrip("?")
        rest = rest.strip()
        params = [p.strip() for p in rest.split(",")] if rest else []
        if any(not p for p in params):
            raise _ScpiError(-102)
        if header.startswith("*"):
            name = _COMMON.get((header.upper(), query))
            if name is None:
                raise _ScpiError(-113)
            return getattr(self, name)(params), path
        absolute = header.startswith(":")
        words = [w.upper() for w in header.lstrip(":").split(":")]
        if any(not w for w in words):
            raise _ScpiError(-102)
        full = words if absolute else path + words
        for nodes, is_query, name in _COMPILED:
            if is_query == query and _match(nodes, full):
                return getattr(self, name)(params), full[:-1]
        raise _ScpiError(-113)

    def _push_error(self, code: int) -> None:
        if len(self._errors) >= ERROR_QUEUE_SIZE:
            self._errors[-1] = (-350, SCPI_ERRORS[-350])
            return
        self._errors.append((code, SCPI_ERRORS[code]))

    # -- parameter helpers -----------------------------------------------------------------
    @staticmethod
    def _count(params: list[str], low: int, high: int) -> None:
        if len(params) < low:
            raise _ScpiError(-109)
        if len(params) > high:
            raise _ScpiError(-108)

    @staticmethod
    def _number(
        param: str,
        *,
        low: float,
        high: float,
        minimum: float,
        maximum: float,
        default: float,
        infinity: bool = False,
    ) -> float:
        word = param.upper()
        if word in ("MIN", "MINIMUM"):
            return minimum
        if word in ("MAX", "MAXIMUM"):
            return maximum
        if word in ("DEF", "DEFAULT"):
            return default
        if infinity and word in ("INF", "INFINITY"):
            return math.inf
        if not _NUMBER.match(param):
            raise _ScpiError(-104)
        value = float(param)
        if infinity and value >= OVERLOAD:
            return math.inf
        if not low <= value <= high:
            raise _ScpiError(-222)
        return value

    @staticmethod
    def _choice(param: str, choices: dict[str, str]) -> str:
        value = choices.get(param.upper())
        if value is None:
            raise _ScpiError(-224 if re.match(r"^[A-Za-z]\w*$", param) else -104)
        return value

    @staticmethod
    def _boolean(param: str) -> bool:
        word = param.upper()
        if word in ("ON", "1"):
            return True
        if word in ("OFF", "0"):
            return False
        raise _ScpiError(-224)

    def _query_keyword(self, params: list[str]) -> str | None:
        """The optional MIN|MAX|DEF of a setting's query."""
        self._count(params, 0, 1)
        if not params:
            return None
        word = params[0].upper()
        for short, long in (("MIN", "MINIMUM"), ("MAX", "MAXIMUM"), ("DEF", "DEFAULT")):
            if word in (short, long):
                return short
        raise _ScpiError(-224)

    # -- measurement model -----------------------------------------------------------------
    def _reset(self) -> None:
        self.settings = _Settings()
        self._memory: deque[float] = deque(maxlen=self.config.memory_readings)
        self._ques_condition = 0
        self._ques_event = 0
        self._state = "idle"  # idle | wait (for a trigger) | measure
        self._initiated = False  # any INIT since *RST/CONF (FETC? is stale otherwise)
        self._triggers_left = 0.0
        self._sample_in_trigger = 0
        self._next_start_m = 0.0

    def _nplc_values(self) -> tuple[float, ...]:
        return (NPLC_DIG if self.config.dig_option else ()) + NPLC_STANDARD

    def _aperture_s(self) -> float:
        return self.settings.nplc / self.config.line_frequency_hz

    def _measure_time_s(self) -> float:
        zero = 2.0 if self.settings.autozero else 1.0
        return self._aperture_s() * zero + self.config.sample_overhead_s

    def _trigger_delay_s(self) -> float:
        s = self.settings
        return self.config.auto_trigger_delay_s if s.trigger_delay_auto else s.trigger_delay_s

    def _interval_s(self) -> float:
        s = self.settings
        if s.sample_source == "TIM":
            return max(s.sample_timer_s, self._measure_time_s())
        return self._measure_time_s() + self._trigger_delay_s()

    def _trigger(self, at_m: float) -> None:
        self._state = "measure"
        self._sample_in_trigger = 0
        self._next_start_m = at_m + self._trigger_delay_s()

    def _advance(self) -> None:
        """Make every reading whose measurement has completed by now."""
        now_m = self.meter_time_s()
        measure_s = self._measure_time_s()
        while self._state == "measure":
            start_m = self._next_start_m
            done_m = start_m + measure_s
            if done_m > now_m:
                return
            self._store(self._reading(start_m))
            self._sample_in_trigger += 1
            if self._sample_in_trigger < self.settings.sample_count:
                self._next_start_m = start_m + self._interval_s()
                continue
            self._triggers_left -= 1
            if self._triggers_left <= 0:
                self._state = "idle"
            elif self.settings.trigger_source == "IMM":
                self._trigger(done_m)
            else:
                self._state = "wait"

    def _store(self, value: float) -> None:
        if len(self._memory) == self._memory.maxlen:
            self._ques_condition |= QUES_MEMORY_OVERFLOW
            self._ques_event |= QUES_MEMORY_OVERFLOW
        self._memory.append(value)

    def _source_current_a(self, start_m: float, aperture_s: float) -> float:
        h0, h1 = self.host_time_s(start_m), self.host_time_s(start_m + aperture_s)
        try:
            energy = self.source.energy_j(h0, h1)
        except Exception:
            if not self._source_failed:
                logger.exception("power source failed; readings are 'not a number'")
                self._source_failed = True
                self._push_error(-240)
            return math.nan
        return energy / (h1 - h0) / self.config.supply_v

    def _reading(self, start_m: float) -> float:
        s = self.settings
        if s.function != "CURR":
            # DC volts on the open voltage input: noise around zero (the 10 V range).
            return round(float(self._rng.normal(0.0, 1e-6)) / 1e-7) * 1e-7
        current = self._source_current_a(start_m, self._aperture_s())
        if math.isnan(current):
            return NOT_A_NUMBER
        if s.autorange:
            s.range_a = self._autorange(current)
        if abs(current) > OVERRANGE_FRACTION * s.range_a:
            self._ques_event |= QUES_CURRENT_OVERLOAD
            return math.copysign(OVERLOAD, current)
        floor = self.config.noise_floor_a * s.range_a * math.sqrt(0.02 / s.nplc)
        gain = self.config.noise_ppm_of_reading * 1e-6 * abs(current)
        current += float(self._rng.standard_normal()) * math.hypot(floor, gain)
        step = RESOLUTION_PPM[s.nplc] * 1e-6 * s.range_a
        return round(current / step) * step

    def _autorange(self, current: float) -> float:
        if self.settings.range_a == RANGE_10A:
            return RANGE_10A  # the 10 A terminals have one range
        for range_a in CURRENT_RANGES_A:
            if abs(current) <= OVERRANGE_FRACTION * range_a:
                return range_a
        return CURRENT_RANGES_A[-1]

    def _wait_idle(self) -> None:
        """Block until the measurement completes (FETC?, READ?, *OPC?)."""
        while True:
            self._advance()
            if self._state == "idle":
                return
            if self._state == "wait" and self.settings.trigger_source == "BUS":
                raise _ScpiError(-214)  # *TRG cannot arrive while this query waits
            if self._stop.is_set():
                raise _Stopped
            due_s = self.host_time_s(self._next_start_m + self._measure_time_s())
            time.sleep(min(0.05, max(0.0005, due_s - self._clock())))

    # -- common commands -------------------------------------------------------------------
    def _idn_fields(self) -> tuple[str, str, str, str]:
        c = self.config
        return c.manufacturer, c.model, c.serial_number, c.firmware

    def _q_idn(self, params: list[str]) -> str:
        self._count(params, 0, 0)
        return ",".join(self._idn_fields())

    def _c_rst(self, params: list[str]) -> None:
        self._count(params, 0, 0)
        self._reset()

    def _c_cls(self, params: list[str]) -> None:
        self._count(params, 0, 0)
        self._errors.clear()
        self._ques_event = 0

    def _q_opc(self, params: list[str]) -> str:
        self._count(params, 0, 0)
        self._wait_idle()
        return "1"

    def _c_noop(self, params: list[str]) -> None:
        self._count(params, 0, 0)

    def _c_trg(self, params: list[str]) -> None:
        self._count(params, 0, 0)
        self._advance()
        if self._state != "wait" or self.settings.trigger_source != "BUS":
            raise _ScpiError(-211)
        self._trigger(self.meter_time_s())

    def _q_syst_err(self, params: list[str]) -> str:
        self._count(params, 0, 0)
        if not self._errors:
            return '+0,"No error"'
        code, text = self._errors.popleft()
        return f'{code:+d},"{text}"'

    # -- configuration ---------------------------------------------------------------------
    def _c_conf_curr(self, params: list[str]) -> None:
        self._count(params, 0, 2)
        self._c_abort([])
        s = _Settings(function="CURR")  # CONFigure presets trigger and sample settings
        range_word = params[0].upper() if params else "AUTO"
        if range_word in ("AUTO", "DEF", "DEFAULT"):
            s.autorange, s.range_a = True, self.settings.range_a
        else:
            value = self._number(
                params[0], low=0.0, high=RANGE_10A, minimum=1e-6, maximum=10.0, default=3.0
            )
            s.autorange, s.range_a = False, self._fixed_range(value, allow_10a=True)
        s.nplc = 10.0
        if len(params) == 2:
            word = params[1].upper()
            if word in ("MIN", "MINIMUM"):
                s.nplc = max(self._nplc_values())  # finest resolution
            elif word in ("MAX", "MAXIMUM"):
                s.nplc = min(self._nplc_values())  # coarsest resolution
            elif word not in ("DEF", "DEFAULT"):
                if s.autorange:
                    raise _ScpiError(-221)  # a resolution needs a fixed range
                resolution = self._number(
                    params[1], low=0.0, high=math.inf, minimum=0, maximum=0, default=0
                )
                s.nplc = self._nplc_for_resolution(resolution, s.range_a)
        self.settings = s
        self._memory.clear()
        self._initiated = False

    def _fixed_range(self, value: float, *, allow_10a: bool) -> float:
        for range_a in CURRENT_RANGES_A:
            if value <= range_a:
                return range_a
        if allow_10a:
            return RANGE_10A
        raise _ScpiError(-222)

    def _nplc_for_resolution(self, resolution_a: float, range_a: float) -> float:
        for nplc in self._nplc_values():  # fastest first
            if RESOLUTION_PPM[nplc] * 1e-6 * range_a <= resolution_a * (1 + 1e-9):
                return nplc
        raise _ScpiError(-222)

    def _q_conf(self, params: list[str]) -> str:
        self._count(params, 0, 0)
        s = self.settings
        if s.function == "VOLT":
            return '"VOLT +1.000000E+01,+1.000000E-06"'
        resolution = RESOLUTION_PPM[s.nplc] * 1e-6 * s.range_a
        return f'"CURR {s.range_a:+.6E},{resolution:+.6E}"'

    def _c_nplc(self, params: list[str]) -> None:
        self._count(params, 1, 1)
        values = self._nplc_values()
        value = self._number(
            params[0], low=0.0, high=100.0, minimum=values[0], maximum=100.0, default=10.0
        )
        self.settings.nplc = next(v for v in values if v >= value * (1 - 1e-9))  # round up

    def _q_nplc(self, params: list[str]) -> str:
        word = self._query_keyword(params)
        values = self._nplc_values()
        value = {"MIN": values[0], "MAX": 100.0, "DEF": 10.0}.get(word, self.settings.nplc)
        return format_reading(value)

    def _c_range(self, params: list[str]) -> None:
        self._count(params, 1, 1)
        if params[0].upper() in ("DEF", "DEFAULT"):
            self.settings.autorange = True
            return
        value = self._number(
            params[0], low=0.0, high=math.inf, minimum=1e-6, maximum=3.0, default=3.0
        )
        self.settings.range_a = self._fixed_range(value, allow_10a=False)
        self.settings.autorange = False

    def _q_range(self, params: list[str]) -> str:
        word = self._query_keyword(params)
        value = {"MIN": 1e-6, "MAX": 3.0, "DEF": 3.0}.get(word, self.settings.range_a)
        return format_reading(value)

    def _c_range_auto(self, params: list[str]) -> None:
        self._count(params, 1, 1)
        if params[0].upper() == "ONCE":
            now_m = self.meter_time_s()
            aperture = self._aperture_s()
            current = self._source_current_a(now_m - aperture, aperture)
            if not math.isnan(current):
                self.settings.range_a = self._autorange(current)
            self.settings.autorange = False
            return
        self.settings.autorange = self._boolean(params[0])

    def _q_range_auto(self, params: list[str]) -> str:
        self._count(params, 0, 0)
        return "1" if self.settings.autorange else "0"

    def _c_zero_auto(self, params: list[str]) -> None:
        self._count(params, 1, 1)
        if params[0].upper() == "ONCE":
            self.settings.autozero = False  # one zero measurement now, then off
            return
        self.settings.autozero = self._boolean(params[0])

    def _q_zero_auto(self, params: list[str]) -> str:
        self._count(params, 0, 0)
        return "1" if self.settings.autozero else "0"

    def _c_samp_count(self, params: list[str]) -> None:
        self._count(params, 1, 1)
        value = self._number(
            params[0], low=1, high=MAX_SAMPLE_COUNT, minimum=1, maximum=MAX_SAMPLE_COUNT, default=1
        )
        self.settings.sample_count = round(value)

    def _q_samp_count(self, params: list[str]) -> str:
        word = self._query_keyword(params)
        value = {"MIN": 1, "MAX": MAX_SAMPLE_COUNT, "DEF": 1}.get(word, self.settings.sample_count)
        return f"{value:+d}"

    def _c_samp_source(self, params: list[str]) -> None:
        self._count(params, 1, 1)
        choices = {"IMM": "IMM", "IMMEDIATE": "IMM", "TIM": "TIM", "TIMER": "TIM"}
        self.settings.sample_source = self._choice(params[0], choices)

    def _q_samp_source(self, params: list[str]) -> str:
        self._count(params, 0, 0)
        return self.settings.sample_source

    def _min_timer_s(self) -> float:
        return math.ceil(self._measure_time_s() * 1e6 - 1e-6) / 1e6

    def _c_samp_timer(self, params: list[str]) -> None:
        self._count(params, 1, 1)
        value = self._number(
            params[0], low=0.0, high=3600.0, minimum=self._min_timer_s(), maximum=3600, default=1
        )
        self.settings.sample_timer_s = round(value * 1e6) / 1e6  # ~1 us steps

    def _q_samp_timer(self, params: list[str]) -> str:
        word = self._query_keyword(params)
        value = {"MIN": self._min_timer_s(), "MAX": 3600.0, "DEF": 1.0}.get(
            word, self.settings.sample_timer_s
        )
        return format_reading(value)

    def _c_trig_source(self, params: list[str]) -> None:
        self._count(params, 1, 1)
        choices = {
            "IMM": "IMM",
            "IMMEDIATE": "IMM",
            "BUS": "BUS",
            "EXT": "EXT",
            "EXTERNAL": "EXT",
            "INT": "INT",
            "INTERNAL": "INT",
        }
        self.settings.trigger_source = self._choice(params[0], choices)

    def _q_trig_source(self, params: list[str]) -> str:
        self._count(params, 0, 0)
        return self.settings.trigger_source

    def _c_trig_count(self, params: list[str]) -> None:
        self._count(params, 1, 1)
        value = self._number(
            params[0],
            low=1,
            high=MAX_TRIGGER_COUNT,
            minimum=1,
            maximum=MAX_TRIGGER_COUNT,
            default=1,
            infinity=True,
        )
        self.settings.trigger_count = value if math.isinf(value) else float(round(value))

    def _q_trig_count(self, params: list[str]) -> str:
        word = self._query_keyword(params)
        value = {"MIN": 1.0, "MAX": float(MAX_TRIGGER_COUNT), "DEF": 1.0}.get(
            word, self.settings.trigger_count
        )
        return format_reading(OVERLOAD if math.isinf(value) else value)

    def _c_trig_delay(self, params: list[str]) -> None:
        self._count(params, 1, 1)
        if params[0].upper() in ("DEF", "DEFAULT"):
            self.settings.trigger_delay_auto = True
            return
        value = self._number(params[0], low=0.0, high=3600.0, minimum=0, maximum=3600, default=0)
        self.settings.trigger_delay_s = round(value * 1e6) / 1e6
        self.settings.trigger_delay_auto = False

    def _q_trig_delay(self, params: list[str]) -> str:
        word = self._query_keyword(params)
        value = {"MIN": 0.0, "MAX": 3600.0, "DEF": self.config.auto_trigger_delay_s}.get(
            word, self._trigger_delay_s()
        )
        return format_reading(value)

    def _c_trig_delay_auto(self, params: list[str]) -> None:
        self._count(params, 1, 1)
        self.settings.trigger_delay_auto = self._boolean(params[0])

    def _q_trig_delay_auto(self, params: list[str]) -> str:
        self._count(params, 0, 0)
        return "1" if self.settings.trigger_delay_auto else "0"

    # -- measuring -------------------------------------------------------------------------
    def _c_init(self, params: list[str]) -> None:
        self._count(params, 0, 0)
        self._advance()
        if self._state != "idle":
            raise _ScpiError(-213)
        s = self.settings
        self._memory.clear()
        self._ques_condition &= ~(QUES_MEMORY_OVERFLOW | QUES_SAMPLE_TIMING)
        timed = s.sample_source == "TIM" and s.sample_count > 1
        if timed and s.sample_timer_s < self._measure_time_s():
            self._ques_condition |= QUES_SAMPLE_TIMING
            self._ques_event |= QUES_SAMPLE_TIMING
        self._initiated = True
        self._triggers_left = s.trigger_count
        self._state = "wait"
        if s.trigger_source == "IMM":
            self._trigger(self.meter_time_s())

    def _c_abort(self, params: list[str]) -> None:
        self._count(params, 0, 0)
        self._advance()
        self._state = "idle"

    def _q_fetch(self, params: list[str]) -> str:
        self._count(params, 0, 0)
        if not self._initiated:
            raise _ScpiError(-230)
        self._wait_idle()
        return ",".join(format_reading(v) for v in self._memory)

    def _q_read(self, params: list[str]) -> str:
        self._count(params, 0, 0)
        if self.settings.trigger_source == "BUS":
            raise _ScpiError(-214)
        self._c_init([])
        return self._q_fetch([])

    def _q_meas_curr(self, params: list[str]) -> str:
        self._c_conf_curr(params)
        return self._q_read([])

    def _q_r(self, params: list[str]) -> str:
        self._count(params, 0, 1)
        limit = MAX_R_READINGS
        if params:
            limit = round(
                self._number(
                    params[0],
                    low=1,
                    high=MAX_R_READINGS,
                    minimum=1,
                    maximum=MAX_R_READINGS,
                    default=MAX_R_READINGS,
                )
            )
        self._advance()
        count = min(limit, len(self._memory))
        payload = ",".join(format_reading(self._memory.popleft()) for _ in range(count))
        return definite_block(payload.encode("ascii")).decode("ascii")

    def _q_data_points(self, params: list[str]) -> str:
        self._count(params, 0, 0)
        self._advance()
        return f"{len(self._memory):+d}"

    def _q_ques_event(self, params: list[str]) -> str:
        self._count(params, 0, 0)
        self._advance()
        value, self._ques_event = self._ques_event, 0
        return f"{value:+d}"

    def _q_ques_cond(self, params: list[str]) -> str:
        self._count(params, 0, 0)
        self._advance()
        return f"{self._ques_condition:+d}"


# -- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Serve a simulated 34465A until interrupted; prints the address for the host driver."""
    parser = argparse.ArgumentParser(
        prog="python -m fpga.emulator.meter",
        description="Simulated Keysight 34465A measuring a board's 12 V supply current.",
    )
    source = parser.add_argument_group("power source")
    source.add_argument("--power-w", type=float, default=3.0, help="constant power (W)")
    source.add_argument(
        "--demo", action="store_true", help="square wave: 2.0 W / 3.5 W, 1 s period"
    )
    meter = parser.add_argument_group("instrument")
    meter.add_argument("--supply-v", type=float, default=12.0, help="supply voltage (V)")
    meter.add_argument("--drift-ppm", type=float, default=0.0, help="clock drift (ppm)")
    meter.add_argument("--seed", type=int, default=0, help="noise seed")
    meter.add_argument("--tcp", type=int, metavar="PORT", help="serve TCP on 127.0.0.1:PORT")
    parser.add_argument("--debug", action="store_true", help="log debug messages, re-raise")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO)
    try:
        power: PowerSource = (
            SquareWavePower(2.0, 3.5, 1.0, phase_s=time.monotonic())
            if args.demo
            else ConstantPower(args.power_w)
        )
        config = SimulatedMeterConfig(
            supply_v=args.supply_v, clock_drift_ppm=args.drift_ppm, seed=args.seed
        )
        kwargs = {"transport": "tcp", "tcp_port": args.tcp} if args.tcp is not None else {}
        with SimulatedMeter(power, config, **kwargs) as sim:
            print(sim.address, flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    except (EmulatorError, OSError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


__all__ = [
    "OVERLOAD",
    "SCPI_ERRORS",
    "SimulatedMeter",
    "SimulatedMeterConfig",
    "definite_block",
    "format_reading",
    "main",
]

if __name__ == "__main__":
    sys.exit(main())

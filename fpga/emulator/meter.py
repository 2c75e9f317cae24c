"""A simulated Keysight Truevolt 34465A DMM measuring the emulated board's supply current.

The lab set-up it stands in for: the board is powered from a 12 V bench supply and the DMM's
current input (its internal shunt) sits in series with the supply line, so the DMM reads the DC
current I and the host computes power as ``supply_v * I`` (see docs/power-meter.md). Here the
current is ``power / supply_v``, with the power taken from a :class:`PowerSource`
(:class:`fpga.emulator.power.PowerTrace` when the emulated board drives it).

It answers the commands that the host's driver (:mod:`host.meters.scpi`) sends, with the
34465A's syntax, through the generic SCPI machinery of :mod:`fpga.emulator.scpi`; its commands
are the table :attr:`SimulatedMeter.commands` (docs/power-meter.md lists them). How a reading
is made:

- the instrument has its own clock: ``meter_s = clock_offset_s + host_s * (1 + clock_drift_ppm
  * 1e-6)`` with ``host_s`` the host's ``time.monotonic()``; triggers, trigger delays, sample
  intervals and apertures run on that clock;
- a reading is the mean current over the integration aperture (``NPLC / line_frequency_hz``,
  meter seconds), plus Gaussian noise (a floor that scales with the range and with
  ``1/sqrt(NPLC)``, and a ppm-of-reading term; seeded), quantised to the resolution of the range
  and NPLC; beyond 120 % of the range it is the overload value ``+9.9E+37``;
- readings are generated lazily, in order, when a command needs them, so a reading exists from
  the moment its measurement completes on the instrument's clock, whatever the thread timing;
- reading memory holds ``memory_readings`` readings (50,000 on a 34465A); when it overflows the
  oldest readings are overwritten and bit 14 of the Questionable Data register is set (the
  34465A reports memory overflow there, not in the error queue).

It serves one client on a pseudo-terminal (pyvisa-py: ``ASRL/dev/pts/N::INSTR``) or on a TCP
socket like the instrument's SCPI port 5025 (``transport="tcp"``;
``TCPIP::127.0.0.1::PORT::SOCKET``). :class:`SimulatedKeysight34465A` is the ``sim`` meter
kind: the real driver against an in-process simulator (registered through the
``ddi_fpga.power_meters`` entry point, so host/ finds it without importing this module).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fpga.emulator import EmulatorError
from fpga.emulator.power import ConstantPower, PowerSource, SquareWavePower
from fpga.emulator.scpi import (
    CommandTable,
    ScpiError,
    ScpiInstrument,
    boolean,
    choice,
    definite_block,
    expect,
    format_nr3,
    number,
)
from host.meters.base import MeterConfigError, register_meter
from host.meters.scpi import Keysight34465A

logger = logging.getLogger(__name__)

OVERLOAD = 9.9e37  # the 34465A's over-range reading
NOT_A_NUMBER = 9.91e37  # SCPI "not a number": what a reading is when the power source failed
OVERRANGE_FRACTION = 1.2  # a range reads up to 120 % of its full scale (approximate)

# DC current ranges (A) on the 3 A terminals; CONF may also select 10 A (10 A terminals).
CURRENT_RANGES_A = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 3.0, 10.0)
# NPLC values (without the DIG option), and the reading resolution in ppm of range at each
# (approximate, after the 34465A's resolution table).
RESOLUTION_PPM = {0.02: 3.0, 0.06: 1.5, 0.2: 0.7, 1.0: 0.3, 10.0: 0.1, 100.0: 0.03}
MAX_SAMPLE_COUNT = 1_000_000_000
MAX_TRIGGER_COUNT = 1_000_000
MAX_R_READINGS = 2_000_000
QUES_CURRENT_OVERLOAD = 1 << 1
QUES_SAMPLE_TIMING = 1 << 2
QUES_MEMORY_OVERFLOW = 1 << 14
# FORMat:DATA: how R? encodes readings (struct formats for REAL, big-endian = BORDer NORMal).
DATA_FORMATS = {"ASC": None, "REAL,32": "f", "REAL,64": "d"}


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
        sample_overhead_s: Time per measurement beyond the aperture (approximate).
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
    sample_overhead_s: float = 20e-6
    manufacturer: str = "Keysight Technologies"
    model: str = "34465A"
    serial_number: str = "SIM0000001"  # "SIM...": the host's driver reads it as simulated
    firmware: str = "A.03.02-03.15-03.02-00.52-04-02"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.supply_v) and self.supply_v > 0):
            raise EmulatorError(f"supply_v={self.supply_v!r} must be a positive voltage")
        if self.line_frequency_hz not in (50, 60):
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


@dataclass
class MeterSettings:
    """The settings that the commands change; the defaults are the *RST state, except that
    the simulator only measures DC current (a 34465A's *RST selects DC volts)."""

    range_a: float = 3.0
    nplc: float = 10.0
    autozero: bool = True
    sample_count: int = 1
    sample_source: str = "IMM"
    sample_timer_s: float = 1.0
    trigger_count: int = 1
    trigger_delay_s: float = 0.0
    data_format: str = "ASC"
    byte_order: str = "NORM"


class SimulatedMeter(ScpiInstrument):
    """A simulated 34465A serving SCPI on a pty or a TCP socket.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with SimulatedMeter(PowerTrace(3.0)) as meter:
            print(meter.resource_name)      # e.g. ASRL/dev/pts/7::INSTR, for the host driver
    """

    thread_name = "sim-34465a"
    description = "simulated Keysight 34465A"

    def __init__(
        self,
        source: PowerSource,
        config: SimulatedMeterConfig | None = None,
        *,
        transport: str = "pty",
        tcp_port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(source, transport=transport, tcp_port=tcp_port)
        self.config = config or SimulatedMeterConfig()
        self._clock = clock
        self._rate = 1.0 + self.config.clock_drift_ppm * 1e-6
        self._rng = np.random.default_rng(self.config.seed)
        self._source_failed = False
        self._reset()

    # -- clocks ----------------------------------------------------------------------------
    def meter_time_s(self, host_s: float | None = None) -> float:
        """The instrument's clock at host time ``host_s`` (default: now)."""
        host = self._clock() if host_s is None else host_s
        return self.config.clock_offset_s + host * self._rate

    def host_time_s(self, meter_s: float) -> float:
        """The host time at which the instrument's clock reads ``meter_s``."""
        return (meter_s - self.config.clock_offset_s) / self._rate

    # -- measurement model -----------------------------------------------------------------
    def _reset(self) -> None:
        self.settings = MeterSettings()
        self._memory: deque[float] = deque(maxlen=self.config.memory_readings)
        self._ques_event = 0
        self._measuring = False
        self._triggers_left = 0
        self._sample_in_trigger = 0
        self._next_start_m = 0.0

    def _aperture_s(self) -> float:
        return self.settings.nplc / self.config.line_frequency_hz

    def _measure_time_s(self) -> float:
        zero = 2.0 if self.settings.autozero else 1.0
        return self._aperture_s() * zero + self.config.sample_overhead_s

    def _interval_s(self) -> float:
        s = self.settings
        if s.sample_source == "TIM":
            return max(s.sample_timer_s, self._measure_time_s())
        return self._measure_time_s()

    def _advance(self) -> None:
        """Make every reading whose measurement has completed by now."""
        now_m = self.meter_time_s()
        measure_s = self._measure_time_s()
        while self._measuring:
            start_m = self._next_start_m
            done_m = start_m + measure_s
            if done_m > now_m:
                return
            self._store(self._reading(start_m))
            self._sample_in_trigger += 1
            if self._sample_in_trigger < self.settings.sample_count:
                self._next_start_m = start_m + self._interval_s()
                continue
            self._triggers_left -= 1  # the trigger source is IMMediate: the next one is now
            self._sample_in_trigger = 0
            self._next_start_m = done_m + self.settings.trigger_delay_s
            self._measuring = self._triggers_left > 0

    def _store(self, value: float) -> None:
        if len(self._memory) == self._memory.maxlen:
            self._ques_event |= QUES_MEMORY_OVERFLOW
        self._memory.append(value)

    def _source_current_a(self, start_m: float, aperture_s: float) -> float:
        h0, h1 = self.host_time_s(start_m), self.host_time_s(start_m + aperture_s)
        try:
            energy = self.source.energy_j(h0, h1)
        except Exception:  # any failure of the source: the instrument reports a hardware error
            if not self._source_failed:
                logger.exception("power source failed; readings are 'not a number'")
                self._source_failed = True
                self.push_error(-240)
            return math.nan
        return energy / (h1 - h0) / self.config.supply_v

    def _reading(self, start_m: float) -> float:
        s = self.settings
        current = self._source_current_a(start_m, self._aperture_s())
        if math.isnan(current):
            return NOT_A_NUMBER
        if abs(current) > OVERRANGE_FRACTION * s.range_a:
            self._ques_event |= QUES_CURRENT_OVERLOAD
            return math.copysign(OVERLOAD, current)
        floor = self.config.noise_floor_a * s.range_a * math.sqrt(0.02 / s.nplc)
        gain = self.config.noise_ppm_of_reading * 1e-6 * abs(current)
        current += float(self._rng.standard_normal()) * math.hypot(floor, gain)
        step = RESOLUTION_PPM[s.nplc] * 1e-6 * s.range_a
        return round(current / step) * step

    def _min_timer_s(self) -> float:
        return math.ceil(self._measure_time_s() * 1e6 - 1e-6) / 1e6  # the timer's ~1 us steps

    # -- common commands -------------------------------------------------------------------
    def _idn(self, params: list[str]) -> str:
        expect(params, 0, 0)
        c = self.config
        return ",".join((c.manufacturer, c.model, c.serial_number, c.firmware))

    def _rst(self, params: list[str]) -> None:
        expect(params, 0, 0)
        self._reset()

    def _cls(self, params: list[str]) -> None:
        expect(params, 0, 0)
        self.clear_errors()
        self._ques_event = 0

    # -- configuration ---------------------------------------------------------------------
    def _conf_current(self, params: list[str]) -> None:
        """``CONF:CURR:DC <range>``: a fixed range (the smallest that holds the value); it
        presets the trigger and sample settings. Autorange and a resolution are not modelled."""
        expect(params, 1, 1)
        value = number(params[0], low=0.0, high=10.0, minimum=1e-6, maximum=10.0, default=3.0)
        self._measuring = False
        kept = {"data_format": self.settings.data_format, "byte_order": self.settings.byte_order}
        range_a = next(r for r in CURRENT_RANGES_A if value <= r)
        self.settings = MeterSettings(range_a=range_a, **kept)  # FORMat is not preset
        self._memory.clear()

    def _nplc(self, params: list[str]) -> None:
        expect(params, 1, 1)
        value = number(params[0], low=0.0, high=100.0, minimum=0.02, maximum=100.0, default=10.0)
        self.settings.nplc = next(v for v in RESOLUTION_PPM if v >= value * (1 - 1e-9))

    def _nplc_query(self, params: list[str]) -> str:
        expect(params, 0, 0)
        return format_nr3(self.settings.nplc)

    def _zero_auto(self, params: list[str]) -> None:
        expect(params, 1, 1)
        self.settings.autozero = boolean(params[0])

    def _trigger_source(self, params: list[str]) -> None:
        expect(params, 1, 1)
        choice(params[0], {"IMMediate": "IMM"})  # bus and external triggers are not modelled

    def _trigger_delay(self, params: list[str]) -> None:
        expect(params, 1, 1)
        value = number(params[0], low=0.0, high=3600.0, minimum=0.0, maximum=3600.0)
        self.settings.trigger_delay_s = round(value * 1e6) / 1e6

    def _trigger_count(self, params: list[str]) -> None:
        expect(params, 1, 1)
        value = number(params[0], low=1, high=MAX_TRIGGER_COUNT, minimum=1, default=1)
        self.settings.trigger_count = round(value)

    def _sample_source(self, params: list[str]) -> None:
        expect(params, 1, 1)
        self.settings.sample_source = choice(params[0], {"IMMediate": "IMM", "TIMer": "TIM"})

    def _sample_timer(self, params: list[str]) -> None:
        expect(params, 1, 1)
        value = number(params[0], low=0.0, high=3600.0, minimum=self._min_timer_s())
        self.settings.sample_timer_s = round(value * 1e6) / 1e6

    def _sample_timer_query(self, params: list[str]) -> str:
        """``SAMP:TIM? [MIN]``: the interval, or the shortest one (one measurement)."""
        expect(params, 0, 1)
        if params:
            choice(params[0], {"MINimum": "MIN"})
            return format_nr3(self._min_timer_s())
        return format_nr3(self.settings.sample_timer_s)

    def _sample_count(self, params: list[str]) -> None:
        expect(params, 1, 1)
        value = number(params[0], low=1, high=MAX_SAMPLE_COUNT, minimum=1, maximum=MAX_SAMPLE_COUNT)
        self.settings.sample_count = round(value)

    def _data_format(self, params: list[str]) -> None:
        """``FORM:DATA ASC | REAL[,32|64]``: how ``R?`` encodes readings (REAL: 64 by default)."""
        expect(params, 1, 2)
        kind = choice(params[0], {"ASCii": "ASC", "REAL": "REAL"})
        if kind == "ASC":
            expect(params, 1, 1)
            self.settings.data_format = "ASC"
            return
        bits = round(number(params[1], low=32, high=64)) if len(params) == 2 else 64
        if bits not in (32, 64):
            raise ScpiError(-224)
        self.settings.data_format = f"REAL,{bits}"

    def _byte_order(self, params: list[str]) -> None:
        expect(params, 1, 1)
        self.settings.byte_order = choice(params[0], {"NORMal": "NORM", "SWAPped": "SWAP"})

    # -- measuring -------------------------------------------------------------------------
    def _init(self, params: list[str]) -> None:
        expect(params, 0, 0)
        self._advance()
        if self._measuring:
            raise ScpiError(-213)
        s = self.settings
        self._memory.clear()
        timed = s.sample_source == "TIM" and s.sample_count > 1
        if timed and s.sample_timer_s < self._measure_time_s():
            self._ques_event |= QUES_SAMPLE_TIMING
        self._measuring = True
        self._triggers_left = s.trigger_count
        self._sample_in_trigger = 0
        self._next_start_m = self.meter_time_s() + s.trigger_delay_s

    def _abort(self, params: list[str]) -> None:
        expect(params, 0, 0)
        self._advance()
        self._measuring = False

    def _data_points(self, params: list[str]) -> str:
        expect(params, 0, 0)
        self._advance()
        return f"{len(self._memory):+d}"

    def _remove_readings(self, params: list[str]) -> bytes:
        """``R? [max]``: a definite-length block of the oldest readings, erased as sent."""
        expect(params, 0, 1)
        limit = MAX_R_READINGS
        if params:
            limit = round(number(params[0], low=1, high=MAX_R_READINGS, maximum=MAX_R_READINGS))
        self._advance()
        values = [self._memory.popleft() for _ in range(min(limit, len(self._memory)))]
        code = DATA_FORMATS[self.settings.data_format]
        if code is None:
            return definite_block(",".join(format_nr3(v) for v in values).encode("ascii"))
        order = ">" if self.settings.byte_order == "NORM" else "<"
        return definite_block(np.asarray(values, dtype=order + code).tobytes())

    def _questionable(self, params: list[str]) -> str:
        """``STAT:QUES?``: the Questionable Data event register, cleared as it is read."""
        expect(params, 0, 0)
        self._advance()
        value, self._ques_event = self._ques_event, 0
        return f"{value:+d}"

    commands = CommandTable(
        {
            "*IDN?": _idn,
            "*RST": _rst,
            "*CLS": _cls,
            "SYSTem:ERRor[:NEXT]?": ScpiInstrument.next_error,
            "CONFigure:CURRent[:DC]": _conf_current,
            "[SENSe:]CURRent[:DC]:NPLCycles": _nplc,
            "[SENSe:]CURRent[:DC]:NPLCycles?": _nplc_query,
            "[SENSe:]CURRent[:DC]:ZERO:AUTO": _zero_auto,
            "TRIGger:SOURce": _trigger_source,
            "TRIGger:DELay": _trigger_delay,
            "TRIGger:COUNt": _trigger_count,
            "SAMPle:SOURce": _sample_source,
            "SAMPle:TIMer": _sample_timer,
            "SAMPle:TIMer?": _sample_timer_query,
            "SAMPle:COUNt": _sample_count,
            "FORMat[:DATA]": _data_format,
            "FORMat:BORDer": _byte_order,
            "INITiate[:IMMediate]": _init,
            "ABORt": _abort,
            "DATA:POINts?": _data_points,
            "R?": _remove_readings,
            "STATus:QUEStionable[:EVENt]?": _questionable,
        }
    )


# -- the `sim` meter kind -------------------------------------------------------------------


@register_meter("sim")
class SimulatedKeysight34465A(Keysight34465A):
    """The 34465A driver against an in-process simulated 34465A with constant power.

    Spec ``sim:3.0`` (watts; ``sim`` alone is 3.0 W): for dry runs of the measurement harness
    without the emulated board. The simulator serves on a pty; the real driver opens it through
    pyvisa-py, as it opens a serial port.
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
        self._simulator: SimulatedMeter | None = None

    def open(self) -> None:
        """Start the simulator on a pty and connect the real driver to it."""
        if self._simulator is not None:
            return
        config = SimulatedMeterConfig(
            supply_v=self.config.supply_v, line_frequency_hz=self.config.line_frequency_hz
        )
        self._simulator = SimulatedMeter(ConstantPower(self.power_w), config)
        self._simulator.start()
        self.address = self._simulator.resource_name
        try:
            super().open()
        except BaseException:
            self._simulator.stop()
            self._simulator = None
            raise

    def close(self) -> None:
        """Close the driver, then stop the simulator."""
        try:
            super().close()
        finally:
            if self._simulator is not None:
                self._simulator.stop()
                self._simulator = None


# -- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Serve a simulated 34465A until interrupted; prints its VISA resource name."""
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
            print(sim.resource_name, flush=True)
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
    "RESOLUTION_PPM",
    "MeterSettings",
    "SimulatedKeysight34465A",
    "SimulatedMeter",
    "SimulatedMeterConfig",
    "main",
]

if __name__ == "__main__":
    sys.exit(main())

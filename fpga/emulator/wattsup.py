"""A simulated Watts Up? PRO mains power meter on a pseudo-terminal.

It speaks the PRO's serial protocol as the host driver (:mod:`host.meters.wattsup`) expects it
(docs/power-meter.md, "Watts Up? PRO"): packets ``#<C>,<sub>,<n>[,<arg>...];``; it answers
``#V,R,0;`` (version), ``#H,R,0;`` (data-field header), ``#L,W,3,E,,<s>;`` (external logging:
a ``#d`` record every ``s`` seconds), ``#L,W,3,I,,<s>;`` (internal logging: the stream stops)
and ``#R,W,0;`` (clears the accumulated energy and the extremes); other packets are ignored.

A data record reports the mean power of a :class:`fpga.emulator.power.PowerSource` over the
interval that ends when the record is sent (exact: ``energy_j / interval``), in tenths of a
watt, on the host's ``time.monotonic()`` clock; the other fields (volts, amps, watt-hours,
power factor, ...) follow from the configured mains voltage and power factor. The real meter
measures the mains side of the board's adapter; the stand-in reports the source's power as it
is (a lossless adapter). Records listed in :attr:`SimulatedWattsUpConfig.corrupt_records` are
sent damaged, so tests can check that the driver skips them.

Serves one client on a pty (the slave path is :attr:`SimulatedWattsUp.address`, logged) or on
any pyserial-like port object.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fpga.emulator import EmulatorError
from fpga.emulator.power import ConstantPower, PowerSource, SquareWavePower
from fpga.emulator.serving import Link, PortLink, PtyLink, ServedInstrument

logger = logging.getLogger(__name__)

# The 18 data fields of the PRO, as its #h reply names them.
HEADER = "W,V,A,WH,Cost,WH/Mo,Cost/Mo,Wmax,Vmax,Amax,Wmin,Vmin,Amin,PF,DC,PC,HZ,VA"
CORRUPTIONS = ("truncate", "garble", "count")
HOURS_PER_MONTH = 24 * 30


@dataclass
class SimulatedWattsUpConfig:
    """How the simulated Watts Up? PRO behaves.

    Attributes:
        mains_v: The mains voltage it reports (V).
        power_factor: The adapter's power factor: amps = watts / (mains_v * power_factor).
        line_frequency_hz: The mains frequency it reports.
        cost_per_kwh: Tariff for the cost fields (the meter's user setting).
        version_fields: The arguments of the ``#v`` reply (an assumption: model, memory,
            hardware major, minor, firmware major, minor, firmware date, checksum), and a last
            field ``simulated`` that no real meter sends: the host's driver reads it.
        corrupt_records: Data records (0-based index since logging started) to send damaged:
            ``"truncate"`` (cut short, no ``;``), ``"garble"`` (watts not a number) or
            ``"count"`` (fewer fields than announced).
    """

    mains_v: float = 230.0
    power_factor: float = 0.55
    line_frequency_hz: float = 50.0
    cost_per_kwh: float = 0.0
    version_fields: tuple[str, ...] = (
        *("1", "32000", "1", "2", "1", "9", "20100315", "0"),
        "simulated",  # no real meter sends it: the host's driver reads the meter as simulated
    )
    corrupt_records: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mains_v) and self.mains_v > 0):
            raise EmulatorError(f"mains_v={self.mains_v!r} must be a positive voltage")
        if not 0 < self.power_factor <= 1:
            raise EmulatorError(f"power_factor={self.power_factor!r} must lie in (0, 1]")
        bad = {k: v for k, v in self.corrupt_records.items() if v not in CORRUPTIONS}
        if bad:
            raise EmulatorError(
                f"corrupt_records={bad!r}: each value must be one of {', '.join(CORRUPTIONS)}"
            )


class SimulatedWattsUp(ServedInstrument):
    """A simulated Watts Up? PRO serving its serial protocol on a pty or a pyserial-like port.

    ::

        with SimulatedWattsUp(ConstantPower(3.0)) as meter:
            print(meter.address)            # e.g. /dev/pts/7, for wattsup:/dev/pts/7
    """

    def __init__(
        self,
        source: PowerSource,
        config: SimulatedWattsUpConfig | None = None,
        *,
        port: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(source)
        self.config = config or SimulatedWattsUpConfig()
        self._port = port
        self._clock = clock
        self._interval_s = 0  # 0: not logging externally
        self._next_record_s = 0.0
        self._records_sent = 0
        self._reset()
        self.packets_received: list[str] = []  # every packet the host sent, for tests

    def _reset(self) -> None:
        self._energy_j = 0.0
        self._w_max = -math.inf
        self._w_min = math.inf
        self._since_s = self._clock()

    # -- lifecycle -------------------------------------------------------------------------
    thread_name = "sim-wattsup"
    description = "simulated Watts Up? PRO"

    def _open_link(self) -> Link:
        return PtyLink() if self._port is None else PortLink(self._port)

    def _serve(self) -> None:
        assert self._link is not None
        pending = b""
        while not self._stop.is_set():
            wait_s = 0.05
            if self._interval_s:
                wait_s = min(wait_s, max(0.0, self._next_record_s - self._clock()))
            try:
                data = self._link.read_some(wait_s)
            except OSError as exc:
                logger.error("simulated Watts Up? port failed: %s", exc)
                return
            pending += data
            while b";" in pending:
                packet, pending = pending.split(b";", 1)
                start = packet.rfind(b"#")
                if start >= 0:
                    self.handle(packet[start:].decode("ascii", errors="replace"))
            if len(pending) > 4096:  # noise without a ';'
                pending = b""
            while self._interval_s and self._clock() >= self._next_record_s:
                end_s = self._next_record_s
                self._send(self.record(end_s - self._interval_s, end_s))
                self._next_record_s += self._interval_s

    def _send(self, text: str) -> None:
        assert self._link is not None
        try:
            self._link.write_all(text.encode("ascii"), self._stop)
        except OSError as exc:
            logger.warning("simulated Watts Up? could not send: %s", exc)

    # -- the protocol ----------------------------------------------------------------------
    def handle(self, packet: str) -> None:
        """Execute one packet ``#C,sub,n,...`` (without its ``;``); replies go to the port."""
        self.packets_received.append(packet)
        fields = [f.strip() for f in packet.strip().split(",")]
        command = fields[0].upper()
        if command == "#V" and fields[1:2] == ["R"]:
            version = self.config.version_fields
            self._send(f"#v,-,{len(version)},{','.join(version)};\r\n")
        elif command == "#H" and fields[1:2] == ["R"]:
            self._send(f"#h,-,{HEADER.count(',') + 1},{HEADER};\r\n")
        elif command == "#L" and fields[1:2] == ["W"] and len(fields) == 6:
            self._logging(fields[3], fields[5])
        elif command == "#R" and fields[1:2] == ["W"]:
            self._reset()
        else:
            logger.debug("simulated Watts Up? ignored %r", packet)

    def _logging(self, mode: str, interval: str) -> None:
        if not interval.isdigit() or int(interval) < 1:
            logger.debug("simulated Watts Up? ignored logging interval %r", interval)
            return
        if mode.upper() == "E":
            self._interval_s = int(interval)
            self._next_record_s = self._clock() + self._interval_s
            self._records_sent = 0
        else:  # internal logging: nothing on the port
            self._interval_s = 0

    def record(self, t0_s: float, t1_s: float) -> str:
        """The ``#d`` record for the interval ``[t0_s, t1_s]``, damaged if configured."""
        c = self.config
        energy_j = self.source.energy_j(t0_s, t1_s)
        watts = energy_j / (t1_s - t0_s)
        self._energy_j += energy_j
        self._w_max = max(self._w_max, watts)
        self._w_min = min(self._w_min, watts)
        amps = watts / (c.mains_v * c.power_factor)
        wh = self._energy_j / 3600.0
        elapsed_h = max(t1_s - self._since_s, 1e-9) / 3600.0
        wh_month = wh / elapsed_h * HOURS_PER_MONTH
        values = [
            round(watts * 10),  # W, tenths
            round(c.mains_v * 10),  # V, tenths
            round(amps * 1000),  # A, thousandths
            round(wh * 10),  # WH, tenths
            round(wh / 1000 * c.cost_per_kwh * 1000),  # Cost, tenths of a cent (assumption)
            round(wh_month),  # WH/Mo (assumption: whole watt-hours)
            round(wh_month / 1000 * c.cost_per_kwh * 1000),  # Cost/Mo
            round(self._w_max * 10),
            round(c.mains_v * 10),
            round(self._w_max / (c.mains_v * c.power_factor) * 1000),
            round(self._w_min * 10),
            round(c.mains_v * 10),
            round(self._w_min / (c.mains_v * c.power_factor) * 1000),
            round(c.power_factor * 100),  # PF, percent
            100,  # DC: duty cycle, percent
            1,  # PC: power cycle
            round(c.line_frequency_hz * 10),  # HZ, tenths
            round(watts / c.power_factor * 10),  # VA, tenths
        ]
        fields = [str(v) for v in values]
        index = self._records_sent
        self._records_sent += 1
        damage = c.corrupt_records.get(index)
        if damage == "garble":
            fields[0] = fields[0] + "x"
        elif damage == "count":
            fields = fields[:-2]
            return f"#d,-,18,{','.join(fields)};\r\n"
        text = f"#d,-,{len(fields)},{','.join(fields)};\r\n"
        if damage == "truncate":
            return text[: len(text) // 2]
        return text


# -- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Serve a simulated Watts Up? PRO until interrupted; prints the pty for the host driver."""
    parser = argparse.ArgumentParser(
        prog="python -m fpga.emulator.wattsup",
        description="Simulated Watts Up? PRO mains power meter on a pseudo-terminal.",
    )
    source = parser.add_argument_group("power source")
    source.add_argument("--power-w", type=float, default=3.0, help="constant power (W)")
    source.add_argument(
        "--demo", action="store_true", help="square wave: 2.0 W / 3.5 W, 10 s period"
    )
    meter = parser.add_argument_group("instrument")
    meter.add_argument("--mains-v", type=float, default=230.0, help="mains voltage (V)")
    parser.add_argument("--debug", action="store_true", help="log debug messages, re-raise")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO)
    try:
        power: PowerSource = (
            SquareWavePower(2.0, 3.5, 10.0, phase_s=time.monotonic())
            if args.demo
            else ConstantPower(args.power_w)
        )
        config = SimulatedWattsUpConfig(mains_v=args.mains_v)
        with SimulatedWattsUp(power, config) as sim:
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


__all__ = ["HEADER", "SimulatedWattsUp", "SimulatedWattsUpConfig", "main"]

if __name__ == "__main__":
    sys.exit(main())

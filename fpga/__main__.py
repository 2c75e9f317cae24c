"""``python -m fpga emulate BUNDLE_DIR``: the emulated ZedBoard on a pseudo-terminal.

    python -m fpga emulate bundles/r8-iadi60 [--hw-report REPORT.json] [--meter] [--speed 0.1]

Prints the board's pty path (``board: /dev/pts/7``) and, with ``--meter``, the simulated
34465A's (``meter: /dev/pts/8``), then serves until interrupted. See docs/board.md.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading

from export.errors import ExportError
from fpga.board.errors import BoardError
from fpga.emulator import EmulatorError


def emulate(args: argparse.Namespace) -> int:
    from fpga.emulator.board import EmulatedBoard, PowerModel
    from fpga.emulator.timing import HardwareReportTiming, MacRateTiming

    gate = {"arm_gate_s_per_call": args.arm_gate_us * 1e-6, "arm_macs_per_s": args.arm_macs_per_s}
    power = PowerModel.from_json(args.power_model) if args.power_model else PowerModel()
    if args.hw_report:
        timing = HardwareReportTiming.from_json(args.hw_report, **gate)
        power = power.with_report(timing.report)
    else:
        timing = MacRateTiming(args.macs_per_s, **gate)
    board = EmulatedBoard(
        args.bundle, timing=timing, power=power, speed=args.speed, meter=args.meter
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with board:
        print(f"board: {board.address}", flush=True)
        if board.meter_address:
            print(f"meter: {board.meter_address}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            done.wait()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fpga", description="ddi-fpga: FPGA stage.")
    parser.add_argument("--debug", action="store_true", help="log debug messages, re-raise")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("emulate", help="serve the emulated board on a pty")
    p.add_argument("bundle", help="bundle folder (python -m export)")
    timing = p.add_argument_group("time model")
    timing.add_argument("--hw-report", help="FPGA estimate report (JSON: clock_mhz, graphs.cycles)")
    timing.add_argument(
        "--macs-per-s", type=float, default=1e9, help="engine rate without a report (MAC/s)"
    )
    timing.add_argument(
        "--arm-gate-us", type=float, default=100.0, help="ARM time per gate call (us)"
    )
    timing.add_argument(
        "--arm-macs-per-s", type=float, default=300e6, help="ARM rate for gate MACs (MAC/s)"
    )
    timing.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="modelled seconds per host second (0.1: runs last 10x longer)",
    )
    power = p.add_argument_group("power")
    power.add_argument("--power-model", help="JSON of PowerModel fields (fpga/emulator/board.py)")
    power.add_argument("--meter", action="store_true", help="serve a simulated 34465A as well")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return emulate(args)
    except (EmulatorError, BoardError, ExportError, OSError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""``python -m fpga.board serve``: the board runtime on a serial port (see docs/board.md).

    python -m fpga.board serve --port /dev/ttyPS1 --baud 921600 \\
        --store /home/xilinx/ddi-bundles [--backend cpu]
    python -m fpga.board doctor --port /dev/ttyPS1 --store /home/xilinx/ddi-bundles \\
        [--overlay DIR]

``serve`` serves until interrupted (SIGINT/SIGTERM); ``doctor`` prints one verdict per check
(fpga/board/doctor.py). A user error prints one line and exits 1 (``--debug`` re-raises). Runs
on PYNQ: Python >= 3.10, numpy >= 1.21; this module imports only the standard library and the
project's error classes before it has checked them.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from export.errors import ExportError
from fpga.board import doctor
from fpga.board.errors import BoardError

log = logging.getLogger("fpga.board")


def _port_problem(port: str, exc: BaseException) -> str:
    """One line naming ``port`` and saying what to do about ``exc``."""
    from wire.ports import port_failure  # serial (pyserial), numpy: imported after the check

    why = port_failure(
        exc,
        missing="does not exist; check the device name (ls /dev/tty*) and docs/board.md",
        denied="is not permitted; run as root or add the user to the 'dialout' group",
        busy="is busy: another program (a serial-getty console?) has it open; see docs/board.md",
    )
    return f"serial port {port!r} {why}"


def serve(args: argparse.Namespace) -> int:
    """Open the port, build the runtime and serve until SIGINT or SIGTERM."""
    import serial

    # numpy and serial (pyserial): imported once main() has checked their versions
    from fpga.board.runtime import BoardRuntime, RuntimeConfig, check_finn
    from wire.link import Server

    config = RuntimeConfig(
        store_dir=Path(args.store),
        backend=args.backend,
        overlays=[Path(p) for p in args.overlay or []],
        overlay_batch=args.overlay_batch,
        **({} if args.executor_batch is None else {"executor_batch": args.executor_batch}),
        max_image_bytes=args.max_images * 32 * 32 * 3,
        max_bundle_bytes=args.max_bundle_mb * 1024 * 1024,
        threads=args.threads,
        identity=args.identity or "",
    )
    if config.backend == "finn":
        check_finn(
            config.overlays, config.overlay_batch
        )  # fail at start, not at the first SELECT_BUNDLE
    runtime = BoardRuntime(config)
    try:
        port = serial.serial_for_url(args.port, baudrate=args.baud, timeout=0.05, exclusive=True)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise BoardError(_port_problem(args.port, exc)) from None
    server = Server(port)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    log.info("board runtime %r serving %s at %d baud", config.identity, args.port, args.baud)
    try:
        server.serve_forever(runtime)
    except KeyboardInterrupt:
        pass
    finally:
        runtime.close()
        port.close()
    log.info("board runtime stopped")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fpga.board", description="The ddi-fpga board runtime (docs/board.md)."
    )
    parser.add_argument("--debug", action="store_true", help="log debug messages, re-raise")
    commands = parser.add_subparsers(dest="command", required=True)
    d = commands.add_parser("doctor", help="check this board: versions, pynq, CMA, UART, files")
    d.add_argument("--port", help="the UART the runtime will serve")
    d.add_argument("--store", help="bundle store folder: check every stored bundle")
    d.add_argument("--bundle", action="append", metavar="DIR", help="a bundle folder to check")
    d.add_argument("--overlay", action="append", metavar="DIR", help="an overlay's deploy folder")
    d.add_argument("--overlay-batch", type=int, help="images per DMA transfer (CMA check)")
    p = commands.add_parser("serve", help="serve the host<->board protocol on a serial port")
    line = p.add_argument_group("serial line")
    line.add_argument("--port", required=True, help="serial device or pyserial URL")
    line.add_argument("--baud", type=int, default=921600, help="baud rate (default 921600)")
    run = p.add_argument_group("runtime")
    run.add_argument("--store", required=True, help="bundle store folder (created if missing)")
    run.add_argument("--backend", choices=("cpu", "finn"), default="cpu", help="graph engine")
    run.add_argument(
        "--overlay",
        action="append",
        metavar="DIR",
        help="--backend finn: an overlay's deploy folder (accelerators.json); once per bundle",
    )
    run.add_argument(
        "--overlay-batch", type=int, help="images per DMA transfer (default: the overlay's)"
    )
    run.add_argument(
        "--executor-batch",
        type=int,
        help="images the executor takes through the network together (default: "
        "export.executor.BATCH_SIZE, 256); a larger batch shares the ARM's per-call work among "
        "more images where the engines read it in place (--overlay-batch as large; docs/board.md)",
    )
    run.add_argument("--threads", type=int, help="unused (numpy's BLAS picks its threads)")
    run.add_argument("--max-images", type=int, default=20_000, help="image memory, in CIFAR images")
    run.add_argument("--max-bundle-mb", type=int, default=512, help="largest bundle archive")
    run.add_argument("--identity", help="board identity reported in HELLO")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "doctor":
        return doctor.main(args)
    problem = doctor.requirement_problem()
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    try:
        return serve(args)
    except (BoardError, ExportError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

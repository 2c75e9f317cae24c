"""``python -m fpga.bitstream BUNDLE --out DIR``: the ZedBoard overlay of a bundle.

Needs Vivado (``XILINX_VIVADO``); without it, prints one line and exits 1. ``--check`` only
checks Vivado; ``--print-tcl`` prints the ZedBoard shell Tcl that FINN will run (no Vivado).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from export.errors import ExportError
from fpga.architecture import refuse_per_graph_options
from fpga.bitstream import zedboard
from fpga.bitstream.flow import (
    DESIGNS,
    BitstreamConfig,
    build_bitstreams,
    require_vivado,
    tool_environment,
)
from fpga.finn.compat import reexec_for_vivado
from fpga.finn.errors import FinnFrontendError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fpga.bitstream",
        description="FINN front end + back end (Vivado): bundle graphs -> one ZedBoard overlay.",
    )
    parser.add_argument("bundle", nargs="?", help="bundle folder (python -m export CHECKPOINT)")
    parser.add_argument("--out", help="build folder; the board's overlay is OUT/deploy")
    parser.add_argument(
        "--graphs",
        nargs="+",
        help="only these graphs (default: every graph with QONNX and every quantized gate)",
    )
    parser.add_argument(
        "--clk-period-ns", type=float, default=10.0, help="fabric clock (10: 100 MHz)"
    )
    parser.add_argument(
        "--target-fps",
        type=int,
        help="FINN folding target per engine (default 1000; --design shared: 2500); 0: no "
        "automatic folding",
    )
    parser.add_argument(
        "--design",
        choices=DESIGNS,
        default="per-graph",
        help="per-graph: an engine per graph; shared: an engine per graph shape, each block's "
        "weights written at run time by the board (docs/fpga-architecture.md)",
    )
    parser.add_argument(
        "--gates-on-arm",
        action="store_true",
        help="--design shared: leave the quantized gates' engines out (the ARM runs them)",
    )
    parser.add_argument(
        "--uniform-fps",
        action="store_true",
        help="every engine folded to --target-fps (default: the largest to --target-fps, the "
        "others to its MAC rate, so that an engine's time follows its MACs)",
    )
    parser.add_argument("--folding-config", help="FINN folding JSON applied after target fps")
    parser.add_argument("--batch", type=int, default=64, help="images per DMA transfer on board")
    parser.add_argument(
        "--fifo-strategy",
        default="distributed_sim",
        help="FINN's FIFO sizing: distributed_sim (its RTL simulation, default), live_fifo; "
        "force_minimal_fifos is refused on residual joins",
    )
    parser.add_argument(
        "--rtlsim-images",
        type=int,
        default=3,
        help="images per engine through the stitched IP in RTL simulation before synthesis "
        "(0: skip)",
    )
    parser.add_argument(
        "--board-part", help="Vivado board part (default avnet.com:zedboard:part0:1.4)"
    )
    parser.add_argument("--board-repo", help="folder with ZedBoard board files for Vivado")
    parser.add_argument("--check", action="store_true", help="only check Vivado, then exit")
    parser.add_argument("--print-tcl", action="store_true", help="print the shell Tcl, then exit")
    parser.add_argument(
        "--engines",
        type=int,
        default=1,
        help="with --print-tcl: engines (IODMA pairs) of the design, for its interconnect",
    )
    parser.add_argument("--debug", action="store_true", help="re-raise errors with a traceback")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.board_part:
        os.environ[zedboard.BOARD_PART_ENV] = args.board_part
    if args.board_repo:
        os.environ[zedboard.BOARD_REPO_ENV] = os.path.abspath(args.board_repo)
    try:
        if args.print_tcl:
            zedboard.interconnect_plan(2 * args.engines)  # one line if there are too many
            print(zedboard.render_shell(args.clk_period_ns, num_aximm=2 * args.engines), end="")
            return 0

        if args.check:
            vivado, version = require_vivado()
            print(f"Vivado {version[0]}.{version[1]} at {vivado}: supported")
            return 0
        if not args.bundle or not args.out:
            parser.error("BUNDLE and --out are required (or --check / --print-tcl)")

        if args.design == "shared":
            given = {
                "--graphs": args.graphs,
                "--uniform-fps": args.uniform_fps,
                "--folding-config": args.folding_config,
            }
            refusal = refuse_per_graph_options(given, args.target_fps)
            if refusal:
                parser.error(refusal)
        tool_environment(*require_vivado())  # XILINX_HLS too, for its fpo_v7_1 library path
        reexec_for_vivado()  # once: the loader must see FINN's LD_LIBRARY_PATH (XSI in-process)
        target_fps = args.target_fps
        if target_fps is None and args.design == "per-graph":
            target_fps = 1000
        config = BitstreamConfig(
            clk_period_ns=args.clk_period_ns,
            target_fps=target_fps or None,
            design=args.design,
            gates_on_arm=args.gates_on_arm,
            balance_macs=not args.uniform_fps,
            folding_config_file=args.folding_config,
            graphs=args.graphs,
            batch_size=args.batch,
            fifo_strategy=args.fifo_strategy,
            rtlsim_images=args.rtlsim_images,
        )
        files = build_bitstreams(args.bundle, args.out, config)
    except (FinnFrontendError, ExportError, OSError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"bitfile {files['bitfile']}; copy {files['deploy']} to the board (docs/board.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

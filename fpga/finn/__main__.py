"""``python -m fpga.finn BUNDLE OUT``: FINN front end for every graph of a bundle, estimates."""

from __future__ import annotations

import argparse
import logging
import sys

from fpga.finn.errors import FinnFrontendError
from fpga.finn.frontend import ZEDBOARD_PART, FrontendConfig, build_bundle, estimate_table


def main(argv: list[str] | None = None) -> int:
    """Build a bundle's graphs to FINN HW layers, print the estimate table; 1 on a user error."""
    parser = argparse.ArgumentParser(
        prog="python -m fpga.finn",
        description="FINN front end (no Vivado): bundle graphs -> HW layers, folding, estimates.",
    )
    parser.add_argument("bundle", help="bundle folder (python -m export CHECKPOINT)")
    parser.add_argument("out", help="build folder: one FINN build per graph, estimates.json")
    build = parser.add_argument_group("build")
    build.add_argument(
        "--graphs",
        nargs="+",
        help="only these graphs (default: all with QONNX; quantized gates by name)",
    )
    build.add_argument("--fpga-part", default=ZEDBOARD_PART)
    build.add_argument("--clk-period-ns", type=float, default=10.0)
    build.add_argument("--target-fps", type=int, default=1000, help="0: no automatic folding")
    build.add_argument("--folding-config", help="FINN folding JSON applied after target fps")
    parser.add_argument("--debug", action="store_true", help="re-raise errors with a traceback")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = FrontendConfig(
        fpga_part=args.fpga_part,
        clk_period_ns=args.clk_period_ns,
        target_fps=args.target_fps or None,
        folding_config_file=args.folding_config,
    )
    try:
        estimates = build_bundle(args.bundle, args.out, config, args.graphs)
    except FinnFrontendError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(estimate_table(estimates))
    return 0


if __name__ == "__main__":
    sys.exit(main())

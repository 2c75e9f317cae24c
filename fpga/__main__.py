"""Command line of the FPGA stage.

    python -m fpga estimate bundles/r8-iadi60 --out builds/r8      # FINN estimates, no Vivado
    python -m fpga emulate bundles/r8-iadi60 [--hw-report builds/r8/hw_report.json] [--meter]

``estimate`` runs the FINN front end (fpga/finn) on every engine graph of the bundle (the
backbone's and the quantized gates', as the overlay has them; folded so that an engine's time
follows its MACs unless ``--uniform-fps``) and writes ``hw_report.json``: per engine (graph) the
cycles per image at the bottleneck layer, latency,
LUT/BRAM18/DSP, and whether one engine per graph fits the XC7Z020 (an estimate, before synthesis),
and ``resource_budget``: the budget of one overlay of every engine with what FINN's estimate
leaves out (DMAs, interconnect, FIFOs, MVAU_rtl and HLS LUTs) and a verdict with margin
(fpga/bitstream/budget.py). ``overlay`` builds that overlay (docs/bitstream.md).
``emulate`` prints the emulated board's pty path (``board: /dev/pts/7``) and, with ``--meter``,
the simulated 34465A's (``meter: /dev/pts/8``), then serves until interrupted (docs/board.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from export.errors import ExportError
from export.manifest import load_bundle
from fpga import hwreport
from fpga.architecture import (
    REPORT_FILE,
    SharedConfig,
    build_shared,
    prepare_shared_overlay,
    refuse_per_graph_options,
    report_table,
)
from fpga.bitstream.budget import budget_markdown
from fpga.bitstream.overlay import (
    OverlayConfig,
    estimate_engines,
    overlay_budget,
    prepare_overlay,
)
from fpga.board.accel import OverlaySpec
from fpga.board.errors import BoardError
from fpga.emulator import EmulatorError
from fpga.emulator.timing import HardwareReportTiming, MacRateTiming, recorded_arm_work
from fpga.finn.errors import FinnFrontendError, GraphError
from fpga.finn.frontend import estimate_table
from fpga.hwreport import HardwareReportError


def emulate(args: argparse.Namespace) -> int:
    # serial (pyserial): loaded only when this runs
    from fpga.emulator.board import EmulatedBoard, PowerModel

    gate = {
        "arm_gate_s_per_call": args.arm_gate_us * 1e-6,
        "arm_macs_per_s": args.arm_macs_per_s,
        "arm_marshal_s_per_value": args.arm_marshal_ns * 1e-9,
        "arm_mask_s_per_value": args.arm_mask_ns * 1e-9,
    }
    if not args.arm_rates:  # the ARM's work as the ARM bench measured the board's code
        gate["arm_work"] = recorded_arm_work()
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
            # Sleep and look, not done.wait(): the handler runs on this thread, and set() takes
            # the Event's lock, which this thread holds at moments inside wait(); a SIGTERM
            # arriving then deadlocked the process (seen once under load).
            while not done.is_set():
                time.sleep(0.1)
    return 0


def estimate_shared(args: argparse.Namespace) -> int:
    """``estimate --design shared``: one engine per graph shape (fpga/architecture.py)."""

    config = SharedConfig(clk_period_ns=args.clk_period_ns)
    if args.target_fps is not None:
        config.target_fps = args.target_fps
    report = build_shared(args.bundle, args.out, config)
    print(report_table(report))
    budget = report["resource_budget"]
    print(f"completed budget ({budget['label']}): one overlay of the engines {budget['verdict']}")
    print(f"shared engines -> {args.out}/{REPORT_FILE}")
    if args.record:
        write_record(args.record, report, report_table(report), f"{report['design']}")
    return 0


def write_record(prefix: str, report: dict, table: str, design: str) -> None:
    """``PREFIX.json`` (the report as written) and ``PREFIX.md`` (its tables and the completed
    budget, generated from the report)."""
    record = Path(prefix)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    title = f"Bundle {report.get('bundle_id', '?')}: {design}, {report['kind']}"
    lines = [f"# {title}", "", f"Clock {report['clock_mhz']:g} MHz, part {report['fpga_part']}."]
    if "config" in report:
        lines.append(f"Configuration: `{json.dumps(report['config'])}`.")
    if "cost_model" in report:
        lines.append(f"Cost model: `{json.dumps(report['cost_model'])}`.")
    budget = report.get("resource_budget", {})
    text = "\n".join(lines) + "\n\n" + table + "\n"
    if "lines" in budget:
        text += budget_markdown(budget, "Completed resource budget of one overlay").replace(
            "# Completed", "## Completed", 1
        )
    elif budget:
        text += f"## Completed resource budget\n\n{budget['verdict']}\n"
    record.with_suffix(".md").write_text(text)
    print(f"record {record.with_suffix('.json')} and .md")


def estimate(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.design == "shared":
        return estimate_shared(args)
    target_fps = 1000 if args.target_fps is None else args.target_fps
    config = OverlayConfig(
        clk_period_ns=args.clk_period_ns,
        target_fps=target_fps,
        balance_macs=not args.uniform_fps,
    )
    estimates = estimate_engines(args.bundle, args.out, config)  # as the overlay builds them
    bundle_id = load_bundle(args.bundle, verify=False).bundle_id  # build_bundle verifies it
    report = hwreport.per_graph_report(estimates, args.clk_period_ns, bundle_id)
    report["resource_budget"] = overlay_budget(Path(args.out), list(estimates), args.clk_period_ns)
    path = hwreport.write(Path(args.out) / hwreport.FILE, report)
    print(estimate_table(estimates))
    verdict = "fits" if report["fits"] else "does NOT fit"
    print(f"one engine per graph {verdict} the XC7Z020 (FINN estimates) -> {path}")
    print(
        f"completed budget ({report['resource_budget']['label']}): one overlay of every engine "
        f"{report['resource_budget']['verdict']}"
    )
    if args.record:
        write_record(args.record, report, estimate_table(estimates), report["design"])
    return 0


def overlay_shared(args: argparse.Namespace) -> int:
    """``overlay --design shared``: the shared engines as one overlay (fpga/architecture.py)."""
    given = {"--graphs": args.graphs, "--uniform-fps": args.uniform_fps, "--record": args.record}
    refusal = refuse_per_graph_options(given, args.target_fps)
    if refusal:
        raise GraphError(refusal)
    config = SharedConfig(clk_period_ns=args.clk_period_ns)
    if args.target_fps is not None:
        config.target_fps = args.target_fps
    built = prepare_shared_overlay(
        args.bundle, args.out, config, gates=not args.gates_on_arm, batch_size=args.batch
    )
    spec = OverlaySpec.load(built.deploy)
    print(f"{len(built.engines)} shared engines serve {len(spec.engines)} graphs in one overlay")
    for name, (i, o, m) in built.engines.items():
        graphs = sorted(g for g, e in spec.engines.items() if e.engine == name)
        mask = "" if m is None else f", mask map idma {m}"
        weights = ", weights written at run time" if name in spec.axilite else ""
        print(f"  {name}: idma/odma {i}/{o}{mask}{weights}: {', '.join(graphs)}")
    print(f"deploy folder {built.deploy} (driver settings predicted; AXI-lite windows by FINN's")
    print("  numbering, checked against the bitstream when the board opens it)")
    return 0


def overlay(args: argparse.Namespace) -> int:
    if args.design == "shared":
        return overlay_shared(args)
    config = OverlayConfig(
        clk_period_ns=args.clk_period_ns,
        target_fps=1000 if args.target_fps is None else args.target_fps or None,
        balance_macs=not args.uniform_fps,
        graphs=args.graphs,
        batch_size=args.batch,
    )

    built = prepare_overlay(args.bundle, args.out, config)
    share = ", ".join(f"{k} {100 * v:.1f}%" for k, v in built.estimates["share"].items())
    verdict = "fits" if built.estimates["fits"] else "does NOT fit"
    print(f"{len(built.engines)} engines in one overlay ({share}): {verdict} the XC7Z020")
    for name, (i, o, m) in built.engines.items():
        mask = "" if m is None else f" (mask map: idma index {m})"
        print(f"  {name}: idma/odma index {i}/{o}{mask}")
    budget = built.estimates["resource_budget"]
    totals = ", ".join(f"{k} {100 * v:.1f}%" for k, v in budget["utilization"].items())
    print(f"completed budget ({budget['label']}): {totals}; {budget['verdict']}")
    for sc in budget["interconnect"]["smartconnects"]:
        print(f"  {sc['smartconnect']} -> {sc['hp_port']}: {sc['num_si']} AXI masters")
    if args.record:
        record = Path(args.record)
        record.parent.mkdir(parents=True, exist_ok=True)
        title = f"Overlay of bundle {built.bundle_id}: {len(built.engines)} engines"
        record.with_suffix(".json").write_text(json.dumps(built.estimates, indent=1) + "\n")
        record.with_suffix(".md").write_text(budget_markdown(budget, title))
        print(f"budget record {record.with_suffix('.json')} and .md")
    print(f"deploy folder {built.deploy} (driver settings predicted; make bitstream builds it)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fpga", description="ddi-fpga: FPGA stage.")
    parser.add_argument("--debug", action="store_true", help="log debug messages, re-raise")
    commands = parser.add_subparsers(dest="command", required=True)
    UNIFORM = (
        "every engine folded to --target-fps (default: the largest engine to --target-fps, the "
        "others to its MAC rate, so that an engine's time follows its MACs)"
    )
    e = commands.add_parser("estimate", help="FINN front end and estimates (no Vivado)")
    e.add_argument("bundle", help="bundle folder (python -m export)")
    e.add_argument("--out", required=True, help="build folder (FINN builds, hw_report.json)")
    e.add_argument("--clk-period-ns", type=float, default=10.0, help="target clock (10: 100 MHz)")
    e.add_argument(
        "--target-fps",
        type=int,
        default=None,
        help="FINN folding target per engine (default 1000; --design shared: 2500)",
    )
    e.add_argument(
        "--design",
        choices=("per-graph", "shared"),
        default="per-graph",
        help="per-graph: one engine per graph; shared: one per graph shape, weights written at "
        "run time (docs/fpga-architecture.md)",
    )
    e.add_argument("--uniform-fps", action="store_true", help=UNIFORM)
    e.add_argument("--record", help="also write the report as RECORD.json and RECORD.md")
    o = commands.add_parser(
        "overlay", help="one overlay of every engine: merge, estimates, deploy folder (no Vivado)"
    )
    o.add_argument("bundle", help="bundle folder (python -m export)")
    o.add_argument("--out", required=True, help="build folder (graphs/, overlay.onnx, deploy/)")
    o.add_argument(
        "--graphs",
        nargs="+",
        help="only these graphs (default: every graph with QONNX and every quantized gate)",
    )
    o.add_argument("--clk-period-ns", type=float, default=10.0, help="target clock (10: 100 MHz)")
    o.add_argument("--target-fps", type=int, help="FINN folding target per engine (default 1000)")
    o.add_argument("--uniform-fps", action="store_true", help=UNIFORM)
    o.add_argument("--batch", type=int, default=64, help="images per DMA transfer on the board")
    o.add_argument("--record", help="also write the budget as RECORD.json and RECORD.md")
    o.add_argument(
        "--design",
        choices=("per-graph", "shared"),
        default="per-graph",
        help="per-graph: an engine per graph; shared: an engine per graph shape, each block's "
        "weights written at run time (docs/fpga-architecture.md)",
    )
    o.add_argument(
        "--gates-on-arm",
        action="store_true",
        help="--design shared: leave the quantized gates' engines out (their numpy programs "
        "run on the ARM): FINN's shell gives every engine its own IODMAs",
    )
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
        "--arm-marshal-ns",
        type=float,
        default=50.0,
        help="ARM time per value moved to or from an engine (ns)",
    )
    timing.add_argument(
        "--arm-mask-ns",
        type=float,
        default=8.0,
        help="ARM time per value of a masked block's mask map, broadcast and packed (ns)",
    )
    timing.add_argument(
        "--arm-rates",
        action="store_true",
        help="charge the ARM's engine calls at the per-value rates above instead of the ARM "
        "bench's model of the board's code (measurements/bench/arm_work.json, the default)",
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
        command = {"estimate": estimate, "overlay": overlay, "emulate": emulate}[args.command]
        return command(args)
    except (
        EmulatorError,
        BoardError,
        ExportError,
        FinnFrontendError,
        HardwareReportError,
        OSError,
    ) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Command line of the export stage.

    python -m export runs/r8-iadi60/final.pt --out bundles/r8-iadi60
    python -m export verify bundles/r8-iadi60 --images 10000 --json parity.json
    python -m export run bundles/r8-iadi60 --mode iadi --images 1000

``verify`` compares the bundle with the PyTorch model it came from on real test images and exits
non-zero when they disagree beyond the stated tolerances; ``run`` executes the bundle alone (no
torch needed) and prints accuracy, savings and speed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from cifar.errors import DataError
from cifar.reader import load_cifar10
from export.errors import ExportError
from export.executor import BundleExecutor
from export.manifest import load_bundle
from export.verify import verify_bundle
from train.errors import TrainError

logger = logging.getLogger("export")
COMMANDS = ("verify", "run")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser(command: str) -> argparse.ArgumentParser:
    if command == "verify":
        p = argparse.ArgumentParser(
            prog="python -m export verify",
            description="Run a bundle beside the PyTorch model it came from and compare.",
        )
        p.add_argument("bundle", help="bundle folder")
        p.add_argument("--checkpoint", help="the exported checkpoint (default: the recorded path)")
        p.add_argument("--images", type=int, default=1000, help="test images (default 1000)")
        p.add_argument("--data", help="CIFAR-10 folder (default: as train/ finds it)")
        p.add_argument("--threads", type=int, help="CPU threads (default: all)")
        p.add_argument("--json", help="write the parity report here")
    elif command == "run":
        p = argparse.ArgumentParser(
            prog="python -m export run",
            description="Run a bundle with the executor (numpy + onnxruntime) on test images.",
        )
        p.add_argument("bundle", help="bundle folder")
        p.add_argument("--mode", choices=("full", "iadi", "ddi"), default="iadi")
        p.add_argument("--budget-macs", type=float, help="MAC budget per image (mode ddi)")
        p.add_argument("--images", type=int, default=1000, help="test images (default 1000)")
        p.add_argument("--batch-size", type=int, default=256)
        p.add_argument("--data", help="CIFAR-10 folder (default: as train/ finds it)")
        p.add_argument("--threads", type=int, help="CPU threads (default: all)")
    else:
        p = argparse.ArgumentParser(
            prog="python -m export",
            description="Export a trained checkpoint as a bundle: per-block QONNX graphs for "
            "FINN, onnxruntime twins, gate graphs and manifest.json. Sub-commands: "
            "`python -m export verify BUNDLE`, `python -m export run BUNDLE`.",
        )
        p.add_argument("checkpoint", help="checkpoint written by `python -m train`")
        p.add_argument("--out", required=True, help="bundle folder to create")
        p.add_argument("--force", action="store_true", help="replace an existing bundle folder")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
    _common(p)
    return p


def _export(args: argparse.Namespace) -> int:
    # torch: loaded only when this runs
    from export.bundle import export_bundle

    bundle = export_bundle(args.checkpoint, args.out, overwrite=args.force, progress=not args.quiet)
    m = bundle.manifest
    print(
        f"bundle {m.bundle_id}: {len(m.blocks)} blocks, {len(m.exits)} exits, "
        f"{len(m.graphs)} graphs, {m.full_macs / 1e6:.2f} MMACs full -> {args.out} "
        f"(manifest sha256 {bundle.sha256[:12]})"
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    report = verify_bundle(
        args.bundle, args.checkpoint, images=args.images, data=args.data, threads=args.threads
    )
    print("\n".join(report.lines()))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    if not report.ok:
        print(
            f"error: bundle and model disagree beyond the tolerances (agreement >= "
            f"{report.min_agreement:.1%}, |dlogit| <= {report.logit_atol:g})",
            file=sys.stderr,
        )
        return 1
    return 0


def _run(args: argparse.Namespace) -> int:
    bundle = load_bundle(args.bundle)
    test = load_cifar10("test", args.data)
    n = min(args.images, len(test.labels))
    executor = BundleExecutor(bundle, threads=args.threads)
    start = time.perf_counter()
    result = executor.run(
        test.images[:n], mode=args.mode, budget_macs=args.budget_macs, batch_size=args.batch_size
    )
    wall = time.perf_counter() - start
    m = bundle.manifest
    accuracy = float((result.predictions == test.labels[:n]).mean())
    print(
        f"{m.bundle_id} mode {args.mode}: accuracy {accuracy:.2%} on {n} images of "
        f"{test.source}, compute savings {1 - result.macs.mean() / m.full_macs:.1%}, "
        f"blocks run {result.executed.mean():.1%}, {n / wall:.0f} images/s"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else "export"
    args = build_parser(command).parse_args(argv[1:] if command != "export" else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    try:
        return {"export": _export, "verify": _verify, "run": _run}[command](args)
    except (ExportError, TrainError, DataError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

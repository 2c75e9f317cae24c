"""Measure energy per inference of bundles on a board (or the emulated one) with a power meter.

    python measurements/run_measurement.py --port /dev/ttyUSB0 \\
        --meter keysight34465a:/dev/ttyUSB1 --model full=bundles/r8-base:full \\
        --model iadi40=bundles/r8-iadi40 --model iadi60=bundles/r8-iadi60 --reference full \\
        --images 1000 --repeats 3

Each run writes ``measurements/runs/<UTC time>_<label>/`` (config, raw power samples, per-image
results, windows, summary, log; host/records.py) and, with ``--table``, Table I beside it. A run
stopped by Ctrl-C or a crash resumes with ``--resume RUN_FOLDER`` and the same options. See
docs/measurement.md for the method.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

try:
    import measurements  # noqa: F401  (installed with the project)
except ImportError:  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar.errors import DataError
from export.errors import ExportError
from host.measure import MeasureError, MeasurementConfig, ModelSpec, check_bundles, measure
from host.records import RunError, RunFolder
from measurements.table1 import TableError, write_table
from wire.errors import BoardError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python measurements/run_measurement.py",
        description="Energy per inference, compute savings and accuracy of bundles on a board.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n")[1],
    )
    link = p.add_argument_group("board and meter")
    link.add_argument("--port", required=True, help="board serial port or pyserial URL")
    link.add_argument("--baud", type=int, default=921600, help="baud rate (default 921600)")
    link.add_argument(
        "--meter",
        default="none",
        help="power meter KIND:ADDRESS (e.g. keysight34465a:/dev/ttyUSB1), or none (timing only)",
    )
    link.add_argument(
        "--timeout",
        type=float,
        default=0.05,
        help="board turnaround in s allowed beyond line time before a resend (default 0.05)",
    )
    what = p.add_argument_group("what to measure")
    what.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="KEY=BUNDLE[:MODE[:BUDGET_MACS]]",
        help="a bundle and its mode (full, iadi, ddi); repeat for every row",
    )
    what.add_argument("--reference", help="KEY of the 0%%-savings model (default: the first)")
    what.add_argument("--data", help="CIFAR-10 folder (default: as train/ finds it)")
    what.add_argument("--images", type=int, default=1000, help="test images per model and repeat")
    what.add_argument("--images-per-window", type=int, default=250)
    what.add_argument("--repeats", type=int, default=3)
    what.add_argument("--idle-s", type=float, default=3.0, help="idle-power measurement (s)")
    out = p.add_argument_group("output")
    out.add_argument("--out", default="measurements/runs", help="folder for run folders")
    out.add_argument("--label", default="run", help="suffix of the run folder's name")
    out.add_argument("--resume", help="run folder of an interrupted run to finish")
    out.add_argument("--table", action="store_true", help="write Table I into the run folder")
    out.add_argument("--quiet", action="store_true", help="no progress bars")
    out.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # serial (pyserial): loaded only when this runs
    from host.meters import MeterError

    errors = (MeasureError, BoardError, MeterError, RunError, ExportError, DataError, TableError)
    try:
        models = [ModelSpec.parse(text) for text in args.model]
        config = MeasurementConfig(
            port=args.port,
            models=models,
            reference=args.reference or models[0].key,
            baud_rate=args.baud,
            meter=args.meter,
            data=args.data,
            images=args.images,
            images_per_window=args.images_per_window,
            repeats=args.repeats,
            idle_s=args.idle_s,
            label=args.label,
            reply_timeout_s=args.timeout,
        )
        config.validate()
        check_bundles(config)  # before the run folder: a refused bundle leaves nothing behind
        if args.resume:
            run = RunFolder.resume(args.resume, config.to_dict())
        else:
            run = RunFolder.create(args.out, args.label, config.to_dict())
        handler = logging.FileHandler(run.path / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.basicConfig(level=logging.INFO, handlers=[handler])
        print(f"run folder: {run.path}", file=sys.stderr)
        try:
            summary = measure(config, run, progress=not args.quiet)
        except errors:
            logging.getLogger().removeHandler(handler)
            handler.close()
            if not args.resume and run.discard_unstarted():  # nothing measured: nothing kept
                print(f"run folder {run.path} removed: no window was measured", file=sys.stderr)
            raise
        for m in summary["models"]:
            energy = m["energy_per_image_j"]
            e = f"{sum(energy) / len(energy) * 1e3:.4f} mJ/image" if energy else "no energy"
            print(
                f"{m['key']}: accuracy {m['accuracy']:.2%}, compute savings "
                f"{m['compute_savings']:.1%}, {e}"
            )
        if args.table and summary["energy_source"] != "none":
            paths = write_table([run.path], run.path / "table1")
            print(paths["md"].read_text())
    except errors as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finish with --resume RUN_FOLDER and the same options", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

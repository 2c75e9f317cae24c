"""Benchmark: the bundle executor against onnxruntime running the monolithic network.

    python -m export.bench --out measurements/bench            # the default run (make bench)
    python -m export.bench --quick --out runs/bench-quick      # a smoke run

From one trained, gated checkpoint (default: the recorded ResNet-8 W4A4 IADI run), the gates are
calibrated (train/calibrate.py: one logit offset, on un-augmented training images) to several
compute savings, each version is exported as a bundle, and on the same real test images, in the
same process, interleaved (ABCD ABCD ...) so that drift of the machine hits all alike, we time:

* ``monolithic``: onnxruntime running the bundle's ``full`` graph (the plain network in one
  graph), batch by batch: the reference;
* ``executor full``: the executor in mode ``full`` (every block, no gates, one graph per block):
  the price of per-block execution at 0% saving;
* ``executor iadi`` at each calibrated saving s: the realized speedup over the monolithic graph,
  beside the ideal ``1 / (1 - s)``.

Both use onnxruntime with the same thread count (default 2: the machine's cores). The executor
skips a block for the images its layer gate closes, but a channel mask multiplies a dense
convolution in the onnxruntime twins, so on a CPU channel gating saves MACs and no time: the
realized speedup follows the share of savings that comes from skipped blocks, which the report
gives as well.

Writes ``OUT/executor.json`` and ``OUT/executor.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cifar.errors import DataError
from export.errors import ExportError
from export.executor import BundleExecutor
from train.errors import TrainError

logger = logging.getLogger("export.bench")

DEFAULT_CHECKPOINT = "measurements/train/resnet8-w4a4/iadi-60/final.pt"
DEFAULT_SAVINGS = (0.5, 0.8)
DEFAULTS = {"images": 2000, "repeats": 5}
QUICK = {"images": 256, "repeats": 2}


def _calibrated_bundles(
    checkpoint: Path, savings: tuple[float, ...], folder: Path, data: str | None
) -> dict[float, Path]:
    """Bundles of ``checkpoint`` with its gates moved to each compute saving."""
    import torch

    # torch: loaded only when this runs
    from export.bundle import export_bundle
    from train.calibrate import calibrate_gates
    from train.checkpoint import build_model, load_checkpoint, save_checkpoint
    from train.data import CifarLoader, load_cifar10

    payload = load_checkpoint(checkpoint)
    train = load_cifar10("train", data)
    batches = list(CifarLoader(train, 500, train=False, limit=1000))
    out: dict[float, Path] = {}
    for s in savings:
        model = build_model(payload).eval()
        full = model.costs().full
        with torch.no_grad():
            calibrate_gates(model, batches, 1.0 - s, lambda o, full=full: o.macs / full)
        ckpt = folder / f"savings-{s:.2f}.pt"
        save_checkpoint(ckpt, model, phase=payload["phase"], config=payload["config"])
        out[s] = export_bundle(ckpt, folder / f"bundle-{s:.2f}", progress=False).path
    return out


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    import onnxruntime as ort
    from tqdm.auto import tqdm

    # torch: loaded only when this runs
    from export.bundle import export_bundle
    from train.bench import cpu_model, load_average, package_version, summarize
    from train.data import load_cifar10

    load = load_average()
    test = load_cifar10("test", args.data)
    images = test.images[: args.images]
    n = len(images)
    with tempfile.TemporaryDirectory(prefix="ddi-bench-") as tmp:
        folder = Path(tmp)
        base = export_bundle(args.checkpoint, folder / "bundle", progress=False)
        bundles = {"as trained": base.path}
        for s, path in _calibrated_bundles(
            Path(args.checkpoint), tuple(args.savings), folder, args.data
        ).items():
            bundles[f"calibrated to {s:.0%}"] = path
        m = base.manifest
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        mono = ort.InferenceSession(
            base.read(m.graphs["full"].onnx), opts, providers=["CPUExecutionProvider"]
        )
        x = m.preprocess.apply(images)
        executors = {k: BundleExecutor(p, threads=args.threads) for k, p in bundles.items()}
        batch = args.batch_size

        def monolithic() -> np.ndarray:
            return np.concatenate(
                [mono.run(None, {"x": x[i : i + batch]})[0] for i in range(0, n, batch)]
            )

        variants: dict[str, Any] = {"monolithic": monolithic}
        variants["executor full"] = lambda: executors["as trained"].run(
            images, mode="full", batch_size=batch
        )
        for key, ex in executors.items():
            variants[f"executor iadi, {key}"] = lambda ex=ex: ex.run(images, batch_size=batch)
        results = {k: v() for k, v in variants.items()}  # warm-up, and the outcomes
        times: dict[str, list[float]] = {k: [] for k in variants}
        with tqdm(total=args.repeats * len(variants), desc="bench executor") as bar:
            for _ in range(args.repeats):
                for key, fn in variants.items():
                    start = time.perf_counter()
                    fn()
                    times[key].append(time.perf_counter() - start)
                    bar.update(1)
    rows = []
    mono_s = statistics.median(times["monolithic"])
    for key, secs in times.items():
        t = summarize(secs, n)  # one "step" = the whole image set
        median_s = statistics.median(secs)
        row: dict[str, Any] = {
            "variant": key,
            "images_per_s": t["images_per_s"],
            "pass_time_ms_median": t["step_time_ms_median"],
            "pass_time_ms_iqr": t["step_time_ms_iqr"],
            "speedup_vs_monolithic": mono_s / median_s,
        }
        outcome = results[key]
        if key != "monolithic":
            labels = test.labels[:n]
            s = float(1.0 - outcome.macs.mean() / m.full_macs)
            block_share = _block_share(outcome, executors["as trained"].manifest)
            row |= {
                "accuracy": float((outcome.predictions == labels).mean()),
                "compute_savings": s,
                "blocks_run": float(outcome.executed.mean()),
                "savings_from_skipped_blocks": block_share,
                "ideal_speedup": 1.0 / (1.0 - s),
            }
            row["realized_over_ideal"] = row["speedup_vs_monolithic"] / row["ideal_speedup"]
        else:
            row["accuracy"] = float((outcome.argmax(1) == test.labels[:n]).mean())
        rows.append(row)
    return {
        "command": command,
        "recorded_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "threads": args.threads,
            "load_average_at_start": load,
            "onnxruntime": package_version("onnxruntime"),
            "numpy": package_version("numpy"),
        },
        "checkpoint": str(args.checkpoint),
        "bundle_id": m.bundle_id,
        "data": test.source,
        "images": n,
        "batch_size": batch,
        "repeats": args.repeats,
        "rows": rows,
    }


def _block_share(outcome, manifest) -> float:
    """Share of the saved MACs that skipped blocks account for (the rest: thinner blocks)."""
    full = np.array(
        [b.conv1_macs + b.conv2_macs for b in manifest.blocks], dtype=np.float64
    )  # (blocks,) convolutions a skip saves
    skipped = (~outcome.executed * full).sum(1)  # (N,)
    saved = manifest.full_macs - outcome.macs
    total = float(saved.sum())
    return float(skipped.sum() / total) if total > 0 else 0.0


def markdown(report: dict[str, Any]) -> str:
    mach = report["machine"]
    lines = [
        "# Bundle executor vs onnxruntime on the monolithic network",
        "",
        f"Recorded {report['recorded_utc']} with `{report['command']}` on {mach['cpu']} "
        f"({mach['threads']} threads, onnxruntime {mach['onnxruntime']}, load average "
        f"{mach['load_average_at_start']} at the start). Bundle {report['bundle_id']} from "
        f"`{report['checkpoint']}`, {report['images']} test images of {report['data']}, "
        f"batch {report['batch_size']}, median of {report['repeats']} interleaved repeats.",
        "",
        "| variant | images/s | speedup vs monolithic | compute savings | ideal 1/(1-s) | "
        "realized/ideal | blocks run | savings from skipped blocks | accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        if "compute_savings" in r:
            lines.append(
                f"| {r['variant']} | {r['images_per_s']:.0f} | {r['speedup_vs_monolithic']:.2f} "
                f"| {r['compute_savings']:.1%} | {r['ideal_speedup']:.2f} "
                f"| {r['realized_over_ideal']:.2f} | {r['blocks_run']:.1%} "
                f"| {r['savings_from_skipped_blocks']:.0%} | {r['accuracy']:.2%} |"
            )
        else:
            lines.append(
                f"| {r['variant']} | {r['images_per_s']:.0f} | 1.00 | - | - | - | 100% | - "
                f"| {r['accuracy']:.2%} |"
            )
    gated = [r for r in report["rows"] if "compute_savings" in r and r["compute_savings"] > 0]
    lines += [
        "",
        "- `executor full` against `monolithic` is the price of running one graph per block "
        "(and Python between them) at 0% saving.",
        "- Compute savings are executed MACs against the plain backbone, gates included. The "
        "executor skips a block for the images its layer gate closes, but applies a channel mask "
        "to dense convolutions (onnxruntime has no thinner kernel), so only the savings from "
        "skipped blocks can turn into time.",
    ]
    if gated:
        span = "{:.2f} to {:.2f}".format
        share = "{:.0%} to {:.0%}".format
        ratios = [r["realized_over_ideal"] for r in gated]
        shares = [r["savings_from_skipped_blocks"] for r in gated]
        lines.append(
            f"- Over the {len(gated)} gated rows, realized/ideal is "
            f"{span(min(ratios), max(ratios))} and the share of savings from skipped blocks "
            f"{share(min(shares), max(shares))}."
        )
    lines += [
        "- Accuracy of the calibrated versions is without fine-tuning after moving the gates.",
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.bench",
        description=__doc__.split("\n\n")[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="gated, quantized checkpoint")
    p.add_argument(
        "--savings",
        type=float,
        nargs="+",
        default=list(DEFAULT_SAVINGS),
        help="compute savings to calibrate the gates to (default 0.5 0.8)",
    )
    p.add_argument("--images", type=int, help=f"test images (default {DEFAULTS['images']})")
    p.add_argument("--repeats", type=int, help=f"timed repeats (default {DEFAULTS['repeats']})")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default 2)")
    p.add_argument("--data", help="CIFAR-10 folder (default: as train/ finds it)")
    p.add_argument("--quick", action="store_true", help="few images and repeats: a smoke run")
    p.add_argument("--out", required=True, help="folder for executor.json and executor.md")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    try:
        for name in ("images", "repeats", "batch_size", "threads"):
            if getattr(args, name) < 1:
                raise ExportError(
                    f"--{name.replace('_', '-')} {getattr(args, name)!r} must be >= 1"
                )
        for s in args.savings:
            if not 0.0 < s < 1.0:
                raise ExportError(f"--savings {s!r} must lie strictly between 0 and 1")
        report = run(args, "python -m export.bench " + shlex.join(argv))
    except (ExportError, TrainError, DataError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "executor.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "executor.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

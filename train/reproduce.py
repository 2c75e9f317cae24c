"""The recorded training run: a small quantized backbone, then IADI at several savings targets.

    python -m train.reproduce --out measurements/train/resnet8-w4a4

runs ``base`` once and ``iadi --target-savings T`` for every target, evaluates each final model on
the whole CIFAR-10 test set, and writes ``summary.json`` and ``summary.md`` (accuracy, achieved
compute savings, modelled energy savings, wall time, machine) plus a skip-ratio plot per model.
Phases whose ``final.pt`` exists are not trained again; an interrupted phase resumes from its
``last.pt``, so the same command finishes an interrupted run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from pathlib import Path
from typing import Any

from train.errors import TrainError

logger = logging.getLogger("train.reproduce")


def _phase(cfg) -> dict[str, Any]:
    from train.loop import train

    final = Path(cfg.out_dir) / "metrics.json"
    if (Path(cfg.out_dir) / "final.pt").exists() and final.exists():
        logger.info("%s: already trained, skipping", cfg.out_dir)
        return json.loads(final.read_text())
    return train(cfg)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from train.checkpoint import build_model, load_checkpoint
    from train.evaluate import evaluate_on_test, plot_skip_ratios
    from train.loop import TrainConfig, machine_description, setup_distributed

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(
        data=args.data,
        device=args.device,
        batch_size=args.batch_size,
        seed=args.seed,
        extra={"recipe": "python -m train.reproduce " + " ".join(sys.argv[1:])},
    )
    runs: list[tuple[str, TrainConfig]] = [
        (
            "base",
            TrainConfig(
                phase="base",
                out_dir=str(out / "base"),
                model=args.model,
                steps=args.base_steps,
                lr=args.base_lr,
                train_limit=args.train_limit,
                **common,
            ),
        )
    ]
    for target in args.targets:
        runs.append(
            (
                f"iadi-{round(target * 100)}",
                TrainConfig(
                    phase="iadi",
                    out_dir=str(out / f"iadi-{round(target * 100)}"),
                    init=str(out / "base" / "final.pt"),
                    gating=args.gating,
                    steps=args.iadi_steps,
                    warmup_steps=args.warmup_steps,
                    lr=args.iadi_lr,
                    target_savings=target,
                    finetune_steps=args.finetune_steps,
                    train_limit=args.train_limit,
                    **common,
                ),
            )
        )
    _, device = setup_distributed(args.device)
    rows = []
    for label, cfg in runs:
        metrics = _phase(cfg)
        payload = load_checkpoint(Path(cfg.out_dir) / "final.pt")
        model = build_model(payload).to(device)
        result = evaluate_on_test(model, args.data, device=device, limit=args.eval_limit)
        summary = result.summary()
        plot_skip_ratios(
            result,
            out / f"skip_ratio_{label}.png",
            title=f"{label}: acc {result.accuracy:.2%}, "
            f"compute savings {result.compute_savings:.1%} ({result.source})",
        )
        (Path(cfg.out_dir) / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
        rows.append(
            {
                "run": label,
                "phase": cfg.phase,
                "target_savings": cfg.target_savings,
                "steps": cfg.steps,
                "accuracy": summary["accuracy"],
                "compute_savings": summary["compute_savings"],
                "energy_savings_modelled": summary.get("energy_savings"),
                "mean_macs": summary["mean_macs"],
                "full_macs": summary["full_macs"],
                "skip_ratio": summary["skip_ratio"],
                "train_wall_time_s": metrics.get("train_wall_time_s"),
            }
        )
    report = {
        "model": args.model,
        "quantization": "Brevitas W4A4, 8-bit input, 8-bit stem/classifier weights",
        "data": result.source,
        "test_images": len(result.labels),
        "machine": machine_description(device),
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m train.reproduce " + " ".join(sys.argv[1:]),
        "energy_note": "energy savings are modelled (Eq. 6 analytical model, Eyeriss units), "
        "not measured",
        "runs": rows,
    }
    (out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "summary.md").write_text(_markdown(report))
    return report


def _markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    note = report["energy_note"][0].upper() + report["energy_note"][1:]
    lines = [
        f"# {report['model']} ({report['quantization']}) on {report['data']}",
        "",
        f"Recorded {report['date_utc']} with `{report['command']}` on {m['device']} "
        f"({m['cpu']}, {m['cpu_threads']} threads, torch {m['torch']}). "
        f"Test images: {report['test_images']}. {note}.",
        "",
        "| run | target savings | steps | accuracy | compute savings | energy savings (modelled) "
        "| skip ratio | train wall time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        target = "-" if r["target_savings"] is None else f"{r['target_savings']:.0%}"
        energy = r["energy_savings_modelled"]
        lines.append(
            f"| {r['run']} | {target} | {r['steps']} | {r['accuracy']:.2%} | "
            f"{r['compute_savings']:.1%} | {'-' if energy is None else f'{energy:.1%}'} | "
            f"{r['skip_ratio']:.1%} | {r['train_wall_time_s'] / 60:.1f} min |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m train.reproduce",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="measurements/train/resnet8-w4a4")
    p.add_argument("--model", default="resnet8")
    p.add_argument("--targets", type=float, nargs="+", default=[0.4, 0.6])
    p.add_argument("--gating", default="mgl2s", choices=("layer", "channel", "mgl2s"))
    p.add_argument("--base-steps", type=int, default=3000)
    p.add_argument("--base-lr", type=float, default=0.1)
    p.add_argument("--iadi-steps", type=int, default=1200)
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--iadi-lr", type=float, default=0.05)
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-limit", type=int)
    p.add_argument("--eval-limit", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data")
    p.add_argument("--device", default="auto")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        run(args)
    except TrainError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print((Path(args.out) / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

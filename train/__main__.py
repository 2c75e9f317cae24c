"""Command line of the training stage.

    python -m train base --model resnet20 --steps 20000 --out runs/r20-base
    python -m train iadi --init runs/r20-base/final.pt --target-savings 0.6 --out runs/r20-iadi60
    python -m train ddi  --init runs/r20-iadi60/final.pt --out runs/r20-ddi60
    python -m train eval runs/r20-iadi60/final.pt --out eval.json --plot skip.png
    python -m train models

Several GPUs: ``torchrun --nproc_per_node 4 -m train iadi ...`` (DDP; batch size is per GPU).
A run folder resumes from its ``last.pt`` when the same command is given again.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from train.errors import DataError, TrainError

logger = logging.getLogger("train")


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and device")
    g.add_argument(
        "--data",
        help="CIFAR-10 folder (original or JPEG copy); else $DDI_CIFAR10, "
        "else ../shared/data/cifar10",
    )
    g.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    g.add_argument("--debug", action="store_true", help="show tracebacks")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _add_training(p: argparse.ArgumentParser, phase: str) -> None:
    # torch: loaded only when this runs
    from train.loop import BUDGET_LOSSES, TrainConfig

    d = TrainConfig(phase="base", out_dir="")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="run folder (created; resumed if it has last.pt)")
    if phase == "base":
        g.add_argument("--model", default=d.model, help=f"registered model (default {d.model})")
        g.add_argument(
            "--init",
            help="continue from this checkpoint (a float one starts quantization-aware "
            "training unless --float)",
        )
    else:
        g.add_argument("--init", required=True, help="checkpoint to start from")
    g.add_argument(
        "--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})"
    )
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--momentum", type=float, default=d.momentum)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--lr-schedule", choices=("cosine", "constant"), default=d.lr_schedule)
    g.add_argument(
        "--lr-warmup-steps",
        type=int,
        default=d.lr_warmup_steps,
        help="linear learning-rate warm-up steps before the schedule (default 0)",
    )
    g.add_argument(
        "--label-smoothing",
        type=float,
        default=d.label_smoothing,
        help="label smoothing of the cross-entropy (default 0, e.g. 0.1)",
    )
    g.add_argument("--channels-last", action="store_true", help="train in the NHWC memory format")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument(
        "--checkpoint-every",
        type=int,
        default=d.checkpoint_every_steps,
        help="steps between checkpoints (last.pt)",
    )
    g.add_argument("--train-limit", type=int, help="use only the first N training images")
    g.add_argument("--eval-limit", type=int, help="evaluate on the first N test images")
    if phase == "base":
        q = p.add_argument_group("quantization (Brevitas)")
        q.add_argument(
            "--float", dest="quant", action="store_false", help="train a float model instead"
        )
        q.add_argument("--weight-bits", type=int, default=d.weight_bits)
        q.add_argument("--act-bits", type=int, default=d.act_bits)
        q.add_argument("--input-bits", type=int, default=d.input_bits)
        q.add_argument(
            "--stochastic-depth",
            type=float,
            default=d.stochastic_depth,
            help="probability that a block is skipped per image in training (0 = off)",
        )
    if phase in ("iadi", "ddi"):
        r = p.add_argument_group("resource loss (CE + alpha * E)")
        if phase == "iadi":
            r.add_argument("--gating", choices=("layer", "channel", "mgl2s"), default=d.gating)
            r.add_argument(
                "--warmup-steps",
                type=int,
                default=d.warmup_steps,
                help="most steps of the gate warm-up (backbone frozen)",
            )
        r.add_argument("--resource", choices=("macs", "energy"), default=d.resource)
        r.add_argument(
            "--target-savings",
            type=float,
            help="savings to reach, e.g. 0.6; alpha is then adapted automatically",
        )
        r.add_argument(
            "--alpha",
            type=float,
            default=d.alpha,
            help="fixed alpha (E as a fraction of the backbone), or the start value in target mode",
        )
        r.add_argument("--alpha-step", type=float, default=d.alpha_step)
        r.add_argument(
            "--distill",
            type=float,
            default=d.distill,
            help="weight of distillation from the --init network (0..1; 0 = labels only)",
        )
        r.add_argument("--distill-temperature", type=float, default=d.distill_temperature)
        r.add_argument(
            "--budget-loss",
            choices=BUDGET_LOSSES,
            default=d.budget_loss,
            help="target mode: 'dual' (CE + alpha*E, alpha by dual ascent) or 'squared' "
            "(CE + alpha*(E - budget)^2, alpha fixed)",
        )
        r.add_argument(
            "--finetune-steps",
            type=int,
            default=d.finetune_steps,
            help="target mode: backbone fine-tuning steps with the calibrated gates frozen, "
            "then a final calibration",
        )
        r.add_argument("--calibration-images", type=int, default=d.calibration_images)


def _config(args: argparse.Namespace, phase: str):
    # torch: loaded only when this runs
    from train.loop import TrainConfig

    values = {
        "phase": phase,
        "out_dir": args.out,
        "init": args.init,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "lr_schedule": args.lr_schedule,
        "lr_warmup_steps": args.lr_warmup_steps,
        "label_smoothing": args.label_smoothing,
        "channels_last": args.channels_last,
        "seed": args.seed,
        "checkpoint_every_steps": args.checkpoint_every,
        "train_limit": args.train_limit,
        "eval_limit": args.eval_limit,
        "data": args.data,
        "device": args.device,
        "extra": {"argv": sys.argv[1:]},
    }
    if phase == "base":
        values.update(
            model=args.model,
            quant=args.quant,
            weight_bits=args.weight_bits,
            act_bits=args.act_bits,
            input_bits=args.input_bits,
            stochastic_depth=args.stochastic_depth,
        )
    else:
        values.update(
            resource=args.resource,
            target_savings=args.target_savings,
            alpha=args.alpha,
            alpha_step=args.alpha_step,
            budget_loss=args.budget_loss,
            distill=args.distill,
            distill_temperature=args.distill_temperature,
            finetune_steps=args.finetune_steps,
            calibration_images=args.calibration_images,
        )
        if phase == "iadi":
            values.update(gating=args.gating, warmup_steps=args.warmup_steps)
    return TrainConfig(**values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train",
        description="Train and evaluate Dual Dynamic Inference CIFAR ResNets.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for phase, text in (
        ("base", "train the plain backbone"),
        ("iadi", "add MGL2S gates to a backbone: warm-up, then joint training with CE + alpha*E"),
        ("ddi", "add RADI exits to an IADI model and train with the sum of exit losses"),
    ):
        p = sub.add_parser(phase, help=text, description=text)
        _add_training(p, phase)
        _add_common(p)
    p = sub.add_parser("eval", help="evaluate a checkpoint on the test set")
    p.add_argument("checkpoint")
    p.add_argument("--out", help="write the JSON report here (default: print it)")
    p.add_argument("--plot", help="write a skip-ratio-per-block plot (PNG) here")
    p.add_argument("--limit", type=int, help="evaluate the first N test images only")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument(
        "--budgets",
        help="comma-separated MAC budgets for anytime inference (default: the cost of each exit)",
    )
    _add_common(p)
    p = sub.add_parser("models", help="list the registered models and their MACs")
    p.add_argument("--debug", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return parser


def _eval(args: argparse.Namespace) -> dict:
    # torch: loaded only when this runs
    from train.checkpoint import build_model, load_checkpoint
    from train.evaluate import eval_document, evaluate_on_test, plot_skip_ratios, write_eval
    from train.loop import machine_description, setup_distributed

    _, device = setup_distributed(args.device)
    payload = load_checkpoint(args.checkpoint, map_location=device)
    model = build_model(payload).to(device)
    result = evaluate_on_test(
        model, args.data, device=device, batch_size=args.batch_size, limit=args.limit
    )
    budgets = [float(b) for b in args.budgets.split(",")] if args.budgets else None
    report = {
        "checkpoint": str(args.checkpoint),
        "phase": payload["phase"],
        "model": payload["model"],
        "machine": machine_description(device),
        **result.summary(budgets),
    }
    if args.plot:
        plot_skip_ratios(result, args.plot)
        report["plot"] = str(args.plot)
    if args.out:
        write_eval(args.out, report)
        print(
            f"accuracy {result.accuracy:.2%}, compute savings {result.compute_savings:.1%} "
            f"on {len(result.labels)} images of {result.source} -> {args.out}"
        )
    else:
        print(json.dumps(eval_document(report), indent=2))
    return report


def _models() -> None:
    # torch: loaded only when this runs
    from train.model import create_model, list_models

    print(f"{'model':<10} {'blocks':>6} {'MACs (plain)':>14} {'MGL2S+exits max':>16}")
    for name in list_models():
        plain = create_model(name).costs()
        full = create_model(name, gating="mgl2s", exits=True).costs()
        print(f"{name:<10} {plain.num_blocks:>6} {plain.full:>14,} {full.max_executed:>16,}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "eval":
            _eval(args)
        elif args.command == "models":
            _models()
        else:
            # torch: loaded only when this runs
            from train.loop import train

            metrics = train(_config(args, args.command))
            test = metrics.get("test")
            if test is None:  # a DDP rank other than 0: rank 0 evaluates and reports
                return 0
            print(
                f"{args.command} done: accuracy {test.get('accuracy', float('nan')):.2%}, "
                f"compute savings {test.get('compute_savings', 0.0):.1%}, "
                f"wall {metrics['train_wall_time_s']:.0f} s -> {args.out}"
            )
    except (TrainError, DataError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: resume with the same command", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

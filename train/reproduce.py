"""The recorded training runs: float pre-training, W4A4 QAT, IADI at five targets for two gate
families, and a DDI run with exits, as one table of steps that resumes where it stopped.

    python -m train.reproduce                                    # the CPU recipe (ResNet-20)
    python -m train.reproduce --until base                       # only the first two steps
    python -m train.reproduce --recipe resnet74-gpu --out runs/r74 --device cuda

A step is one training phase (``train.loop``) followed by an evaluation of its ``final.pt`` on
the whole CIFAR-10 test set (``eval.json`` beside ``metrics.json``). A step whose ``final.pt``
and ``eval.json`` exist is not run again; an interrupted step resumes exactly from its
``last.pt``, so the same command finishes an interrupted recipe, in as many pieces as needed.
``summary.json`` / ``summary.md`` (and ``table2.md`` once the DDI step ran) are rewritten after
every step from the eval files on disk: accuracy, compute savings as modelled (channels and
blocks) and as realized by dense engines (skipped blocks only), modelled energy savings, wall
time summed over resumed segments, and the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from train.checkpoint import build_model, load_checkpoint
from train.errors import ConfigError, DataError, TrainError
from train.evaluate import EVAL_FILE, evaluate_on_test, plot_skip_ratios, read_eval, write_eval
from train.loop import METRICS_FILE, TrainConfig, read_metrics, setup_distributed, train

logger = logging.getLogger("train.reproduce")

SUMMARY_FORMAT = "ddi-fpga-train-summary"
CIFAR10_TRAIN_IMAGES = 50_000
SUMMARY_VERSION = 2

# Paper, Table II (ResNet74-DDI on CIFAR-10): budget in M FLOPs, DDI accuracy, base accuracy.
PAPER_TABLE2 = (
    (58, 0.9100, 0.9070),
    (74, 0.9282, 0.9125),
    (117, 0.9381, 0.9230),
    (144, 0.9388, 0.9250),
    (372, 0.9383, 0.9435),
    (392, 0.9444, 0.9445),
    (408, 0.9468, 0.9416),
)


@dataclass(frozen=True)
class Recipe:
    """Settings of every step of a recipe; steps per phase count optimizer steps."""

    model: str
    """Registered backbone (train.model)."""
    batch_size: int = 128
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    channels_last: bool = True
    float_steps: int = 11_700
    """Float pre-training (30 epochs of 390 batches at batch 128)."""
    float_lr: float = 0.1
    float_lr_warmup_steps: int = 390
    float_restart_steps: int = 9_750
    """A second float cosine cycle from the first one's weights (SGDR warm restart, 25 epochs);
    0 leaves it out and QAT starts from ``float``."""
    float_restart_lr: float = 0.05
    qat_steps: int = 1_560
    """W4A4 quantization-aware training from the float model (4 epochs)."""
    qat_lr: float = 0.02
    gate_init_stochastic_depth: float = 0.3
    """The IADI steps start from ``base-sd``: the same QAT with each block skipped per image at
    this probability (stochastic depth), so the backbone already works with blocks left out. On
    ResNet-20 from the plain QAT model, 300 joint steps ended 13.7 points below it at 40% savings
    (layer gating). 0 leaves the step out and the gates start from ``base``."""
    targets: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7, 0.8)
    gatings: tuple[str, ...] = ("mgl2s", "layer")
    gate_warmup_steps: int = 100
    iadi_steps: int = 300
    iadi_finetune_steps: int = 150
    iadi_lr: float = 0.01
    iadi_budget_loss: str = "squared"
    """How the savings target enters the joint loss (train.loop.TrainConfig.budget_loss): the
    dual-ascent form collapsed to skip-everything within 300 steps on ResNet-20 (cost 1.13 ->
    0.02, batch accuracy 0.15), the two-sided squared form cannot stay there."""
    iadi_alpha: float = 8.0
    """Weight of (E - budget)^2. At 2 the joint stage of a ResNet-20 settled at E = 0.73 for a
    budget of 0.60 (MGL2S), at 8 at E = 0.65 (layer gating); the calibration closes the rest."""
    ddi_from: str = "iadi-mgl2s-60"
    ddi_steps: int = 300
    ddi_lr: float = 0.01
    amp: bool = False
    """bfloat16 autocast on CUDA (ignored on the CPU)."""
    note: str = ""


RECIPES: dict[str, Recipe] = {
    # Two CPU cores: the deepest 6n+2 ResNet that trains in about 5 CPU-hours (docs/training.md).
    "resnet20-cpu": Recipe(
        model="resnet20",
        note="2 CPU cores: at most 5 CPU-hours for all 15 steps (docs/training.md)",
    ),
    # The paper's network on one GPU: its phases see ~13 M images (50k steps at batch 256).
    "resnet74-gpu": Recipe(
        model="resnet74",
        batch_size=256,
        float_steps=39_000,
        float_lr=0.2,
        float_lr_warmup_steps=1_000,
        float_restart_steps=0,
        qat_steps=10_000,
        qat_lr=0.02,
        gate_warmup_steps=500,
        iadi_steps=10_000,
        iadi_finetune_steps=2_000,
        iadi_lr=0.02,
        ddi_steps=10_000,
        ddi_lr=0.02,
        amp=True,
        note="one CUDA GPU with AMP; see docs/training.md for the expected time",
    ),
}


def steps(recipe: Recipe, out: Path, common: dict[str, Any]) -> list[tuple[str, TrainConfig]]:
    """The recipe as ``(name, config)`` steps in the order they run."""
    r = recipe
    shared = dict(
        common,
        batch_size=r.batch_size,
        weight_decay=r.weight_decay,
        label_smoothing=r.label_smoothing,
        channels_last=r.channels_last,
        amp=r.amp,
    )
    table: list[tuple[str, TrainConfig]] = [
        (
            "float",
            TrainConfig(
                phase="base",
                out_dir=str(out / "float"),
                model=r.model,
                quant=False,
                steps=r.float_steps,
                lr=r.float_lr,
                lr_warmup_steps=r.float_lr_warmup_steps,
                **shared,
            ),
        ),
    ]
    if r.float_restart_steps:
        table.append(
            (
                "float-restart",
                TrainConfig(
                    phase="base",
                    out_dir=str(out / "float-restart"),
                    model=r.model,
                    init=str(out / "float" / "final.pt"),
                    quant=False,
                    steps=r.float_restart_steps,
                    lr=r.float_restart_lr,
                    lr_warmup_steps=r.float_lr_warmup_steps,
                    **shared,
                ),
            )
        )
    table += [
        (
            "base",
            TrainConfig(
                phase="base",
                out_dir=str(out / "base"),
                model=r.model,
                init=str(Path(table[-1][1].out_dir) / "final.pt"),
                steps=r.qat_steps,
                lr=r.qat_lr,
                **shared,
            ),
        ),
    ]
    gate_init = out / "base" / "final.pt"
    if r.gate_init_stochastic_depth:
        gate_init = out / "base-sd" / "final.pt"
        table.append(
            (
                "base-sd",
                TrainConfig(
                    phase="base",
                    out_dir=str(out / "base-sd"),
                    model=r.model,
                    init=table[-1][1].init,
                    steps=r.qat_steps,
                    lr=r.qat_lr,
                    stochastic_depth=r.gate_init_stochastic_depth,
                    **shared,
                ),
            )
        )
    for gating in r.gatings:
        for target in r.targets:
            name = f"iadi-{gating}-{round(target * 100)}"
            table.append(
                (
                    name,
                    TrainConfig(
                        phase="iadi",
                        out_dir=str(out / name),
                        init=str(gate_init),
                        gating=gating,
                        steps=r.iadi_steps,
                        warmup_steps=r.gate_warmup_steps,
                        lr=r.iadi_lr,
                        target_savings=target,
                        budget_loss=r.iadi_budget_loss,
                        alpha=r.iadi_alpha,
                        finetune_steps=r.iadi_finetune_steps,
                        **shared,
                    ),
                )
            )
    source = dict(table).get(r.ddi_from)
    if source is not None:
        table.append(
            (
                f"ddi-{r.ddi_from.removeprefix('iadi-')}",
                TrainConfig(
                    phase="ddi",
                    out_dir=str(out / f"ddi-{r.ddi_from.removeprefix('iadi-')}"),
                    init=str(Path(source.out_dir) / "final.pt"),
                    steps=r.ddi_steps,
                    lr=r.ddi_lr,
                    target_savings=source.target_savings,
                    budget_loss=source.budget_loss,
                    alpha=source.alpha,
                    **shared,
                ),
            )
        )
    return table


def run_step(name: str, cfg: TrainConfig, args: argparse.Namespace, device) -> dict[str, Any]:
    """Train (or resume, or skip) one step, then evaluate it on the test set: its eval.json."""
    folder = Path(cfg.out_dir)
    evaluation = folder / EVAL_FILE
    if (folder / "final.pt").exists() and evaluation.exists():
        logger.info("%s: done (%s), skipping", name, folder)
        return read_eval(evaluation)
    if not (folder / "final.pt").exists():
        logger.info("%s: training %s", name, folder)
        train(cfg)
    model = build_model(load_checkpoint(folder / "final.pt")).to(device)
    result = evaluate_on_test(model, args.data, device=device, limit=args.eval_limit)
    summary = result.summary()
    plot_skip_ratios(
        result,
        folder / "skip_ratio.png",
        title=f"{name}: acc {result.accuracy:.2%}, compute savings {result.compute_savings:.1%} "
        f"(realized {result.realized_compute_savings:.1%})",
    )
    write_eval(evaluation, summary)
    return summary


def summarize(recipe_name: str, table: list[tuple[str, TrainConfig]], out: Path) -> dict:
    """summary.json and summary.md from the eval and metrics files of the steps done so far."""
    rows = []
    for name, cfg in table:
        folder = Path(cfg.out_dir)
        if not (folder / EVAL_FILE).exists() or not (folder / METRICS_FILE).exists():
            continue
        ev = read_eval(folder / EVAL_FILE)
        metrics = read_metrics(folder / METRICS_FILE)
        rows.append(
            {
                "run": name,
                "phase": cfg.phase,
                "gating": cfg.gating if cfg.phase != "base" else "none",
                "precision": "float" if not metrics["model"]["kwargs"].get("quant") else "w4a4",
                "target_savings": cfg.target_savings,
                "steps": cfg.steps + (cfg.finetune_steps if cfg.phase == "iadi" else 0),
                "images": ev["images"],
                "accuracy": ev["accuracy"],
                "compute_savings_modelled": ev["compute_savings"],
                "compute_savings_realized": ev["realized_compute_savings"],
                "energy_savings_modelled": ev.get("energy_savings"),
                "skip_ratio": ev["skip_ratio"],
                "mean_macs": ev["mean_macs"],
                "full_macs": ev["full_macs"],
                "train_wall_time_s": metrics.get("train_wall_time_s"),
                "train_cpu_time_s": metrics.get("train_cpu_time_s"),
                "train_images_seen": metrics.get("train_images_seen"),
                "machine": metrics.get("machine"),
                "data": ev["data"],
            }
        )
    report = {
        "format": SUMMARY_FORMAT,
        "format_version": SUMMARY_VERSION,
        "recipe": recipe_name,
        "settings": dataclasses.asdict(RECIPES[recipe_name]),
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m train.reproduce " + " ".join(sys.argv[1:]),
        "steps_total": len(table),
        "runs": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "summary.md").write_text(_markdown(report))
    ddi = next((r for r in rows if r["phase"] == "ddi"), None)
    if ddi is not None:
        folder = Path(dict(table)[ddi["run"]].out_dir)
        evaluation = read_eval(folder / EVAL_FILE)
        (out / "table2.md").write_text(table2_markdown(evaluation))
    return report


def _pct(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{round(value, digits + 3) + 0.0:.{digits}%}"  # + 0.0: no "-0.0%" from rounding


def _markdown(report: dict[str, Any]) -> str:
    rows = report["runs"]
    lines = [
        f"# Training recipe `{report['recipe']}`: "
        f"{len(rows)} of {report['steps_total']} steps done",
        "",
        f"Written {report['date_utc']} by `{report['command']}` from the steps' own metrics.json "
        "and eval.json. Compute savings are counted in MACs against the plain backbone, the "
        "gates' MACs counted as spent: *modelled* credits skipped blocks and masked channels, "
        "*realized* credits only the skipped blocks (what a dense FINN engine saves). Energy "
        "savings are modelled (Eq. 6 analytical model), not measured.",
        "",
        "| run | precision | gating | target | steps | test images | accuracy "
        "| compute savings (modelled) | compute savings (realized) | energy savings (modelled) "
        "| train wall time | train CPU time | CPU time per epoch | machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["machine"] or {}
        wall, cpu, seen = r["train_wall_time_s"], r["train_cpu_time_s"], r["train_images_seen"]
        per_epoch = "-" if not (cpu and seen) else f"{cpu / (seen / CIFAR10_TRAIN_IMAGES):.0f} s"
        lines.append(
            f"| {r['run']} | {r['precision']} | {r['gating']} | {_pct(r['target_savings'], 0)} "
            f"| {r['steps']} | {r['images']} | {r['accuracy']:.2%} "
            f"| {_pct(r['compute_savings_modelled'])} | {_pct(r['compute_savings_realized'])} "
            f"| {_pct(r['energy_savings_modelled'])} "
            f"| {'-' if wall is None else f'{wall / 60:.1f} min'} "
            f"| {'-' if cpu is None else f'{cpu / 3600:.2f} CPU-h'} | {per_epoch} "
            f"| {m.get('device', '?')}, {m.get('cpu_threads', '?')} threads |"
        )
    if rows:
        lines += ["", f"Data: {rows[0]['data']}."]
    return "\n".join(lines) + "\n"


def table2_markdown(evaluation: dict[str, Any]) -> str:
    """Table II: accuracy under each exit's budget (anytime inference), beside the paper's."""
    full = evaluation["full_macs"]
    paper_full = PAPER_TABLE2[-1][0]
    lines = [
        "# Table II: DDI under a budget",
        "",
        f"Anytime inference (train.evaluate) on {evaluation['images']} test images of "
        f"{evaluation['data']}; budgets are the plain backbone's MACs up to each exit "
        f"(branch included), as a share of its {full / 1e6:.1f} M MACs. The paper's rows "
        f"(ResNet74-DDI, budgets in M FLOPs of {paper_full}) follow, with their share.",
        "",
        "| budget (M MACs) | share of full | DDI accuracy | over budget | answered by |",
        "|---|---|---|---|---|",
    ]
    for a in evaluation.get("anytime", []):
        used = ", ".join(f"{k} {v}" for k, v in a["exits_used"].items() if v)
        lines.append(
            f"| {a['budget_macs'] / 1e6:.2f} | {a['budget_macs'] / full:.1%} | "
            f"{a['accuracy']:.2%} | {a['over_budget_fraction']:.1%} | {used} |"
        )
    lines += [
        "",
        "| paper budget (M FLOPs) | share of full | paper DDI accuracy | paper base accuracy |",
        "|---|---|---|---|",
    ]
    for budget, ddi, base in PAPER_TABLE2:
        lines.append(f"| {budget} | {budget / paper_full:.1%} | {ddi:.2%} | {base:.2%} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    recipe = RECIPES[args.recipe]
    if args.model:
        recipe = dataclasses.replace(recipe, model=args.model)
    out = Path(args.out or f"measurements/train/{recipe.model}-w4a4")
    common = dict(
        data=args.data,
        device=args.device,
        seed=args.seed,
        train_limit=args.train_limit,
        calibration_images=args.calibration_images,
        extra={"recipe": f"python -m train.reproduce --recipe {args.recipe}"},
    )
    if args.limit_steps:  # quick runs and tests: every phase shortened to at most this many
        short = {
            f.name: min(getattr(recipe, f.name), args.limit_steps)
            for f in dataclasses.fields(recipe)
            if f.name.endswith("_steps")
        }
        recipe = dataclasses.replace(recipe, **{**short, "float_lr_warmup_steps": 0})
    table = steps(recipe, out, common)
    names = [name for name, _ in table]
    for wanted in (args.until, *(args.only or [])):
        if wanted is not None and wanted not in names:
            raise ConfigError(f"step {wanted!r} is not in recipe {args.recipe!r}: one of {names}")
    _, device = setup_distributed(args.device)
    for name, cfg in table:
        if args.only and name not in args.only:
            continue
        run_step(name, cfg, args, device)
        summarize(args.recipe, table, out)
        if name == args.until:
            break
    return summarize(args.recipe, table, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m train.reproduce",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--recipe", choices=sorted(RECIPES), default="resnet20-cpu")
    p.add_argument("--out", help="recipe folder (default measurements/train/<model>-w4a4)")
    p.add_argument("--until", help="stop after this step (e.g. base)")
    p.add_argument("--only", nargs="+", help="run only these steps (their inputs must exist)")
    p.add_argument("--model", help="another registered backbone than the recipe's")
    p.add_argument("--limit-steps", type=int, help="shorten every phase (quick runs, tests)")
    p.add_argument(
        "--calibration-images",
        type=int,
        default=TrainConfig.calibration_images,
        help="training images the gates' operating point is calibrated on",
    )
    p.add_argument("--train-limit", type=int, help="use only the first N training images")
    p.add_argument("--eval-limit", type=int, help="evaluate on the first N test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = run(args)
    except (TrainError, DataError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

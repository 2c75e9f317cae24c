"""Benchmark: training-step time of the MGL2S-gated network against the plain one.

    python -m train.bench --out measurements/bench          # the default run (make bench)
    python -m train.bench --quick --out runs/bench-quick    # a smoke run of a few steps

For every model and precision (default: resnet8 and resnet20, Brevitas W4A4 as the project
trains them and float), the plain backbone (``gating="none"``) and the MGL2S-gated network are
built side by side and timed on one fixed random batch, in the same process:

* **training step**: forward (DDIOutput) -> cross-entropy (+ the cost term
  ``mean(out.macs / costs().full)`` for the gated network, as the trainer adds it) -> backward ->
  SGD step (momentum, Nesterov, weight decay on >1-d parameters, as the trainer builds it). The
  plain and gated steps alternate (ABAB...) after warm-up steps, so drift of the machine (other
  load, clock changes) hits both equally. Reported: median and IQR of the step time,
  images/s, and the ratio of the medians gated/plain. In training the gated network executes every
  block for every image (gates only mix outputs), so the ratio is the price of the gates.
* **evaluation-mode inference** (images/s) of the plain network and of the gated one with gates
  forced to keep everything (0% skipping: pure gate overhead), to skip every block (layer gates
  closed), and to keep half of each block's channels (channel gates). Evaluation really skips
  blocks (a block runs only on the images its gate keeps) but a channel mask is applied to dense
  convolutions, so on a CPU it saves no time; the report gives the MAC savings beside the speed.

Quantized networks: Brevitas collects activation statistics for the first 300 training steps
(a percentile per quantizer call) and learns the scales afterwards. A run of tens of thousands of
steps is almost entirely in the second regime, so after one statistics step the benchmark ends
the statistics phase (``init_scale``, as Brevitas does at step 300) and times the steady state.

Run it on an otherwise idle machine: another busy process inflates multi-threaded step times
many-fold (the threads of one operation wait for each other), and not by the same factor for
both networks. The load average at the start is recorded, and a busy machine is warned about.

Writes ``OUT/train_step.json`` and ``OUT/train_step.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from train.errors import ConfigError, DataError, TrainError
from train.model import DDIResNet, create_model

logger = logging.getLogger("train.bench")

DEFAULT_MODELS = ("resnet8", "resnet20")
PRECISIONS = ("w4a4", "float")
W4A4 = {"weight_bits": 4, "act_bits": 4, "input_bits": 8}  # TrainConfig's defaults
DEFAULTS = {"batch_size": 128, "repeats": 10, "warmup": 3}
QUICK = {"batch_size": 32, "repeats": 3, "warmup": 1}
EVAL_VARIANTS = ("plain", "gated_no_skip", "gated_all_blocks_skipped", "gated_half_channels")
_FORCE = 10.0  # gate logit that makes a decision certain: sigmoid(10) = 0.99995


# ---------------------------------------------------------------------------------------------
# Statistics


def summarize(seconds: list[float], batch_size: int) -> dict[str, Any]:
    """Median, quartiles and IQR (ms) of step times, and images/s at the median."""
    ms = sorted(s * 1e3 for s in seconds)
    if len(ms) >= 2:
        q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    else:
        q1 = q3 = ms[0]
    median = statistics.median(ms)
    return {
        "step_time_ms_median": round(median, 3),
        "step_time_ms_q1": round(q1, 3),
        "step_time_ms_q3": round(q3, 3),
        "step_time_ms_iqr": round(q3 - q1, 3),
        "images_per_s": round(batch_size / (median / 1e3), 2),
        "samples": len(ms),
    }


# ---------------------------------------------------------------------------------------------
# Models and steps


def _build(name: str, precision: str, gating: str) -> DDIResNet:
    torch.manual_seed(0)  # the same backbone initialization for the plain and the gated network
    model = create_model(name, gating=gating, quant=W4A4 if precision == "w4a4" else None)
    model.costs()  # traced once here, not inside a timed step
    return model


def _end_stats_phase(model: nn.Module) -> int:
    """End Brevitas' activation-statistics phase (see the module docstring); returns how many."""
    if not any(type(m).__module__.startswith("brevitas") for m in model.modules()):
        return 0
    from brevitas.core.scaling import ParameterFromRuntimeStatsScaling

    done = 0
    for m in model.modules():
        if isinstance(m, ParameterFromRuntimeStatsScaling):
            m.init_scale()
            done += 1
    return done


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """SGD as :class:`train.loop.Trainer` builds it (no weight decay on 1-d parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(
        [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": 1e-4},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=0.05,
        momentum=0.9,
        nesterov=True,
    )


@dataclass
class _Runner:
    """One network, its optimizer and the fixed batch it is timed on."""

    model: DDIResNet
    optimizer: torch.optim.Optimizer | None  # None: evaluation only
    x: Tensor
    y: Tensor

    def train_step(self) -> float:
        """One full optimizer step; its wall time in seconds."""
        model = self.model
        start = time.perf_counter()
        out = model(self.x)
        loss = F.cross_entropy(out.logits, self.y)
        if model.gating != "none":  # the trainer's resource term (Eq. 5), MACs, alpha = 1
            loss = loss + (out.macs / model.costs().full).mean()
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start

    @torch.no_grad()
    def eval_batch(self) -> tuple[float, float]:
        """One evaluation-mode forward pass: (seconds, compute savings of the batch)."""
        start = time.perf_counter()
        out = self.model(self.x)
        seconds = time.perf_counter() - start
        return seconds, self.model.costs().savings(out.macs)


def _force_gates(model: DDIResNet, variant: str) -> None:
    """Make the gates' decisions certain: keep everything, skip every block, or keep half."""
    with torch.no_grad():
        if model.gate_rnn is not None:
            proj = model.gate_rnn.proj
            proj.weight.zero_()
            proj.bias.fill_(-_FORCE if variant == "gated_all_blocks_skipped" else _FORCE)
        for gate in model.channel_gates or ():
            gate.fc.weight.zero_()
            gate.fc.bias.fill_(_FORCE)
            if variant == "gated_half_channels":
                gate.fc.bias[gate.fc.out_features // 2 :] = -_FORCE


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # not on every platform
        return None


def package_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


# ---------------------------------------------------------------------------------------------
# The benchmark


def bench_config(
    name: str, precision: str, batch_size: int, repeats: int, warmup: int, bar: tqdm
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Time one (model, precision): the training-step record and the inference record."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, 3, 32, 32, generator=generator)  # images in [0, 1]
    y = torch.randint(0, 10, (batch_size,), generator=generator)
    runners = {}
    for kind, gating in (("plain", "none"), ("gated", "mgl2s")):
        model = _build(name, precision, gating)
        model.train()
        runners[kind] = _Runner(model, _optimizer(model), x, y)

    # One statistics step, then the steady state (module docstring), then warm-up steps.
    for runner in runners.values():
        runner.train_step()
        _end_stats_phase(runner.model)
        bar.update()
    for _ in range(warmup):
        for runner in runners.values():
            runner.train_step()
            bar.update()
    times: dict[str, list[float]] = {kind: [] for kind in runners}
    for _ in range(repeats):
        for kind, runner in runners.items():  # ABAB...: plain, gated, plain, gated
            times[kind].append(runner.train_step())
            bar.update()
    plain = summarize(times["plain"], batch_size)
    gated = summarize(times["gated"], batch_size)
    macs = runners["gated"].model.costs()
    train_record = {
        "model": name,
        "precision": precision,
        "gating": "mgl2s",
        "batch_size": batch_size,
        "plain": plain,
        "gated": gated,
        "ratio_gated_over_plain": round(
            gated["step_time_ms_median"] / plain["step_time_ms_median"], 4
        ),
        "gate_overhead_macs_fraction": round(macs.max_executed / macs.full - 1.0, 5),
    }

    # Evaluation-mode inference: the plain network and the gated one under forced decisions.
    eval_runners: dict[str, _Runner] = {}
    for variant in EVAL_VARIANTS:
        if variant == "plain":
            runner = runners["plain"]
        else:
            model = _build(name, precision, "mgl2s")
            model.load_state_dict(runners["gated"].model.state_dict())
            _force_gates(model, variant)
            runner = _Runner(model, None, x, y)
        runner.model.eval()
        eval_runners[variant] = runner
    savings: dict[str, float] = {}
    for _ in range(warmup):
        for variant, runner in eval_runners.items():
            _, savings[variant] = runner.eval_batch()
            bar.update()
    eval_times: dict[str, list[float]] = {v: [] for v in eval_runners}
    for _ in range(repeats):
        for variant, runner in eval_runners.items():  # interleaved as well
            seconds, savings[variant] = runner.eval_batch()
            eval_times[variant].append(seconds)
            bar.update()
    base = summarize(eval_times["plain"], batch_size)
    eval_record: dict[str, Any] = {
        "model": name,
        "precision": precision,
        "batch_size": batch_size,
    }
    for variant in EVAL_VARIANTS:
        s = summarize(eval_times[variant], batch_size)
        eval_record[variant] = {
            "batch_time_ms_median": s["step_time_ms_median"],
            "batch_time_ms_iqr": s["step_time_ms_iqr"],
            "images_per_s": s["images_per_s"],
            "compute_savings": round(savings[variant], 4),
            "time_ratio_over_plain": round(
                s["step_time_ms_median"] / base["step_time_ms_median"], 4
            ),
        }
    return train_record, eval_record


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Run the benchmark described by ``args`` and write the report files."""
    models = [m for item in args.models for m in item.split(",") if m]
    for name in models:
        create_model(name)  # unknown names fail now, not after minutes of measurements
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    load = load_average()
    if load is not None and load >= 0.5:
        logger.warning(
            "the 1-minute load average is %.2f before starting: other processes compete for the "
            "cores and the timings will be inflated and noisy",
            load,
        )
    configs = [(m, p) for m in models for p in args.precisions]
    per_config = 2 * (1 + args.warmup + args.repeats) + len(EVAL_VARIANTS) * (
        args.warmup + args.repeats
    )
    logger.info(
        "benchmarking %d configurations, batch %d, %d repeats, %d warm-up, %d threads",
        len(configs),
        args.batch_size,
        args.repeats,
        args.warmup,
        threads,
    )
    started = time.perf_counter()
    train_records, eval_records = [], []
    with tqdm(total=len(configs) * per_config, desc="bench", unit="step", mininterval=1.0) as bar:
        for name, precision in configs:
            bar.set_postfix_str(f"{name} {precision}", refresh=False)
            t, e = bench_config(name, precision, args.batch_size, args.repeats, args.warmup, bar)
            train_records.append(t)
            eval_records.append(e)
    report = {
        "benchmark": "training step of the MGL2S-gated network vs the plain backbone",
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": {
            "cpu_model": cpu_model(),
            "threads": threads,
            "device": "cpu",
            "python": platform.python_version(),
            "torch": str(torch.__version__),
            "brevitas": package_version("brevitas"),
            "load_average_1min_at_start": load,
        },
        "settings": {
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "warmup_steps": args.warmup,
            "quick": args.quick,
            "w4a4": W4A4,
            "order": "plain and gated steps interleaved (ABAB...) after warm-up",
            "brevitas_stats_phase": "ended after one step (steady-state scales)",
        },
        "wall_time_s": round(time.perf_counter() - started, 1),
        "train_step": train_records,
        "eval_inference": eval_records,
        "notes": [
            "Training executes every block for every image (the gates mix outputs with "
            "straight-through values), so the gated step always costs more than the plain one: "
            "the ratio is the training price of the gates, whatever they decide.",
            "Evaluation skips a block for the images its layer gate closes (the block runs on "
            "the others only), so skipping blocks saves time; channel gates mask channels of "
            "dense convolutions: the cost model counts a thinner block (saved MACs), but on "
            "this CPU the masked channels are still computed and no time is saved.",
            "compute_savings is 1 - executed MACs / plain backbone MACs, gate overhead included "
            "(negative at 0% skipping).",
        ],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_step.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "train_step.md").write_text(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report as two small tables."""
    m, s = report["machine"], report["settings"]
    lines = [
        "# Training step: MGL2S-gated vs plain",
        "",
        f"Recorded {report['date_utc']} with `{report['command']}` on {m['cpu_model']} "
        f"({m['threads']} threads, torch {m['torch']}, brevitas {m['brevitas']}, "
        f"load average {m['load_average_1min_at_start']} at the start). "
        f"Batch {s['batch_size']}, {s['repeats']} interleaved repeats after {s['warmup_steps']} "
        "warm-up steps; median (IQR) of the step time.",
        "",
        "| model | precision | plain ms | gated ms | plain img/s | gated img/s | gated/plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["train_step"]:
        p, g = r["plain"], r["gated"]
        lines.append(
            f"| {r['model']} | {r['precision']} "
            f"| {p['step_time_ms_median']:.1f} ({p['step_time_ms_iqr']:.1f}) "
            f"| {g['step_time_ms_median']:.1f} ({g['step_time_ms_iqr']:.1f}) "
            f"| {p['images_per_s']:.0f} | {g['images_per_s']:.0f} "
            f"| {r['ratio_gated_over_plain']:.2f} |"
        )
    lines += [
        "",
        "## Evaluation-mode inference (images/s; compute savings vs the plain backbone)",
        "",
        "| model | precision | plain | gated, 0% skipped | gated, all blocks skipped "
        "| gated, half the channels |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["eval_inference"]:
        cells = [
            f"{r[v]['images_per_s']:.0f} ({r[v]['compute_savings']:+.1%})" for v in EVAL_VARIANTS
        ]
        lines.append(f"| {r['model']} | {r['precision']} | " + " | ".join(cells) + " |")
    lines += ["", *(f"- {note}" for note in report["notes"])]
    return "\n".join(lines) + "\n"


def _positive(name: str, value: int | None, least: int) -> None:
    if value is not None and value < least:
        raise ConfigError(f"--{name} {value!r} must be at least {least}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=list(DEFAULT_MODELS),
        help="registered models, space or comma separated (default: resnet8 resnet20)",
    )
    p.add_argument(
        "--precisions",
        nargs="+",
        choices=PRECISIONS,
        default=list(PRECISIONS),
        help="w4a4 (Brevitas, as trained) and/or float (default: both)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help=f"default {DEFAULTS['batch_size']} ({QUICK['batch_size']} with --quick)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        help=f"timed steps per network (default "
        f"{DEFAULTS['repeats']}, {QUICK['repeats']} with --quick)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        help=f"untimed steps per network first (default "
        f"{DEFAULTS['warmup']}, {QUICK['warmup']} with --quick)",
    )
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    p.add_argument("--quick", action="store_true", help="few small steps: a smoke run")
    p.add_argument("--out", required=True, help="folder for train_step.json and train_step.md")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    defaults = QUICK if args.quick else DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        _positive("batch-size", args.batch_size, 1)
        _positive("repeats", args.repeats, 1)
        _positive("warmup", args.warmup, 0)
        _positive("threads", args.threads, 1)
        run(args, "python -m train.bench " + shlex.join(argv))
    except (TrainError, DataError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print((Path(args.out) / "train_step.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

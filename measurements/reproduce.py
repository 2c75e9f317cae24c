"""The main job: Table I reproduced on the emulated board, on a machine with no hardware.

    python -m measurements.reproduce --out runs/table1            # what `make reproduce` runs

1. **Models.** The small default models: the recorded ResNet-8 W4A4 run in
   ``measurements/train/resnet8-w4a4`` (base, IADI at 40% and 60% compute savings), or, with
   ``--train``, the same recipe trained afresh (``python -m train.reproduce``, ~55 min on 2
   cores). To fill the paper's 50/70/80% rows, the 60% model's gates are also calibrated to those
   savings (train/calibrate.py: one logit offset, un-augmented training images), without
   fine-tuning: those rows say so. Beside MGL2S, layer-only IADI: no layer-only model is
   trained here, so the 60% model's layer gate alone (its channel gates removed, every running
   block at full width) is calibrated to 40% and 60% (``layer-calNN``), without fine-tuning.
2. **Bundles.** Each checkpoint is exported (``python -m export``); a bundle already exported from
   the same checkpoint (same sha256) is reused.
3. **Board and meter.** The emulated board (fpga/emulator) serves the real protocol on a
   pseudo-terminal and models time and power: engine times from FINN's estimates of the
   network's engines (``python -m fpga estimate``, run here on the reference bundle) or from
   ``--hw-report``/``--mac-rate``, dense whatever the channel mask, gates and marshalling on
   the ARM; a simulated Keysight 34465A on a second pseudo-terminal samples that power.
4. **Measurement.** ``host/run_measurement.py``'s harness, unchanged, measures every model:
   idle power, timed windows of different images, energy per inference, accuracy.
5. **Table I** (``table1.md``, ``.csv``, ``.png``), labelled as emulated, a ground-truth check:
   every window's measured energy against the energy the emulator modelled
   (``ground_truth.json``), and the sensitivity of the energy savings to every emulator
   parameter at -50%/+50% (``sensitivity.md``, measurements/sensitivity.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("measurements.reproduce")

RECORDED = Path("measurements/train/resnet8-w4a4")
TRAINED = {"base": "base", "iadi40": "iadi-40", "iadi60": "iadi-60"}
CALIBRATED = (0.5, 0.7, 0.8)
LAYER_ONLY = (0.4, 0.6)


class ReproduceError(Exception):
    pass


def _checkpoints(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """Model key -> checkpoint: the trained ones, plus the 60% model calibrated further."""
    import torch

    from train.calibrate import calibrate_gates
    from train.checkpoint import build_model, load_checkpoint, save_checkpoint
    from train.data import CifarLoader, load_cifar10

    source = Path(args.models)
    if args.train:
        from train.reproduce import main as train_main

        source = work / "train"
        if train_main(["--out", str(source)]) != 0:
            raise ReproduceError("training failed; see its output above")
    ckpts = {key: source / name / "final.pt" for key, name in TRAINED.items()}
    for key, path in ckpts.items():
        if not path.is_file():
            raise ReproduceError(
                f"model {key!r}: {str(path)!r} is missing; pass --models DIR of a "
                "`python -m train.reproduce` run, or --train"
            )
    payload = load_checkpoint(ckpts["iadi60"])
    batches: list | None = None
    derived = [
        (f"iadi60-cal{round(s * 100)}", s, lambda: build_model(payload), {}) for s in args.calibrate
    ] + [
        (
            f"layer-cal{round(s * 100)}",
            s,
            lambda: _layer_only(payload),
            {"derived_from": str(ckpts["iadi60"]), "layer_only_from_mgl2s": True},
        )
        for s in args.layer_only
    ]
    for key, savings, make, extra in derived:
        path = work / "calibrated" / f"{key}.pt"
        ckpts[key] = path
        if path.is_file():
            continue
        if batches is None:
            train = load_cifar10("train", args.data)
            batches = list(CifarLoader(train, 500, train=False, limit=1000))
        model = make().eval()
        full = model.costs().full
        with torch.no_grad():
            cal = calibrate_gates(model, batches, 1.0 - savings, lambda o, full=full: o.macs / full)
        # The calibrated MGL2S models keep the source's metrics; layer-only ones are new models.
        metrics = {
            **({} if extra else payload.get("metrics", {})),
            **extra,
            "calibrated_to_savings": savings,
            "calibration": cal.to_dict(),
        }
        save_checkpoint(path, model, phase="calibrated", config=payload["config"], metrics=metrics)
    return ckpts


def _layer_only(payload: dict):
    """The MGL2S checkpoint's network with its layer gate alone (``gating="layer"``): every
    weight but the channel gates', which are dropped, so a running block runs at full width."""
    from train.model import create_model

    spec = payload["model"]
    if spec["kwargs"].get("gating") != "mgl2s":
        raise ReproduceError(
            f"the layer-only rows need an MGL2S checkpoint, not gating "
            f"{spec['kwargs'].get('gating')!r}; pass --layer-only with no values to skip them"
        )
    model = create_model(spec["name"], **{**spec["kwargs"], "gating": "layer"})
    state = {k: v for k, v in payload["state_dict"].items() if not k.startswith("channel_gates.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("scaling_impl.value")]
    if missing or unexpected:
        raise ReproduceError(
            f"the layer-only network does not take the checkpoint's weights: missing "
            f"{missing[:3]!r}, unexpected {unexpected[:3]!r}"
        )
    return model.eval()


def _bundles(ckpts: dict[str, Path], work: Path) -> dict[str, Path]:
    from export.bundle import export_bundle
    from export.errors import BundleError
    from export.manifest import load_bundle, sha256_file

    out = {}
    for key, ckpt in ckpts.items():
        folder = work / "bundles" / key
        digest = sha256_file(ckpt)
        try:
            if load_bundle(folder).manifest.source.get("checkpoint_sha256") == digest:
                out[key] = folder
                continue
        except BundleError:
            pass
        export_bundle(ckpt, folder, overwrite=True, progress=False)
        out[key] = folder
    return out


def _estimate(bundle: Path, out: Path) -> Path:
    """FINN's estimates for the network's engines (one per graph): the emulator's timing.

    Every bundle of the same architecture has the same engines (only weights differ), so the
    reference network's report serves all of them.
    """
    from fpga.__main__ import hardware_report
    from fpga.finn.frontend import FrontendConfig, build_bundle

    path = out / "hw_report.json"
    if not path.is_file():
        config = FrontendConfig()
        estimates = build_bundle(bundle, out, config)
        path.write_text(json.dumps(hardware_report(estimates, config.clk_period_ns), indent=1))
    return path


def _timing_note(timing) -> str:
    """What the emulator's engine times came from, read off the timing model itself."""
    from fpga.emulator.timing import HardwareReportTiming

    if isinstance(timing, HardwareReportTiming):
        report = timing.report
        shared = sorted(
            name
            for name, e in (report.get("engines") or {}).items()
            if len(e.get("serves", [])) > 1
        )
        graphs = len(timing.cycles)
        layout = (
            f"{len(shared)} engine(s) shared by several graphs ({', '.join(shared)})"
            if shared
            else f"one engine for each of its {graphs} graphs"
        )
        loads = sum(1 for v in timing.weight_load_cycles.values() if v)
        return (
            f"Engine times: {report.get('kind', 'hardware report')} at "
            f"{timing.clock_mhz:g} MHz, {layout}; weight loads charged for {loads} graph(s)."
        )
    return f"Engine times: every engine at {timing.macs_per_s:g} MAC/s (an assumed rate)."


def _notes(args: argparse.Namespace, timing) -> list[str]:
    notes = [
        f"Emulator timing: {timing!r}. {_timing_note(timing)} A running block is charged its "
        "engine's dense time whatever its channel mask; layer and channel gates run on the ARM "
        "(float, numpy programs) and every engine call adds the ARM's marshalling, at the rates "
        "above: see docs/board.md for the parameters and their sources, and sensitivity.md for "
        "how the savings move with each."
    ]
    if args.calibrate:
        notes.append(
            "`iadi60-calNN`: the `iadi60` model with its gates calibrated to NN% compute savings "
            "(one logit offset on 1,000 training images), without fine-tuning."
        )
    if args.layer_only:
        notes.append(
            "`layer-calNN`: layer-only IADI made from the `iadi60` MGL2S model by dropping its "
            "channel gates (every running block at full width) and calibrating its layer gate to "
            "NN% compute savings (one logit offset on 1,000 training images), without "
            "fine-tuning; not a model trained layer-only."
        )
    return notes


def _ground_truth(run_path: Path, board, idle_w: float) -> dict[str, Any]:
    """Every window's measured energy against the emulator's modelled energy."""
    rows = []
    for line in (run_path / "windows.jsonl").read_text().splitlines():
        w = json.loads(line)
        if "energy_j" not in w:
            continue
        t0, t1 = w["start_host_s"], w["end_host_s"]
        truth = board.ground_truth_energy_j(t0, t1)
        rows.append(
            {
                "window": w["window"],
                "measured_energy_j": w["energy_j"],
                "modelled_energy_j": truth,
                "relative_error": w["energy_j"] / truth - 1.0,
                "measured_net_energy_j": w["net_energy_j"],
                "modelled_net_energy_j": truth - board.power.static_w * (t1 - t0),
            }
        )
    for r in rows:
        r["net_relative_error"] = r["measured_net_energy_j"] / r["modelled_net_energy_j"] - 1.0
    return {
        "windows": rows,
        "max_abs_relative_error": max(abs(r["relative_error"]) for r in rows),
        "max_abs_net_relative_error": max(abs(r["net_relative_error"]) for r in rows),
        "idle_power_w_measured": idle_w,
        "static_power_w_modelled": board.power.static_w,
    }


def run(args: argparse.Namespace) -> Path:
    from fpga.emulator.board import EmulatedBoard, describe
    from fpga.emulator.timing import HardwareReportTiming, MacRateTiming
    from host.measure import MeasurementConfig, ModelSpec, measure
    from host.records import RunFolder
    from measurements.sensitivity import sensitivity
    from measurements.sensitivity import write as write_sensitivity
    from measurements.table1 import write_table

    out = Path(args.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    print("1/4 models and bundles", file=sys.stderr)
    bundles = _bundles(_checkpoints(args, work), work)
    report = args.hw_report
    if report is None and not args.mac_rate:
        report = _estimate(bundles["base"], work / "hw")
    timing = HardwareReportTiming.from_json(report) if report else MacRateTiming()
    models = [ModelSpec("full", str(bundles["base"]), "full")]
    models += [ModelSpec(k, str(p)) for k, p in bundles.items() if k != "base"]
    print("2/4 emulated board and simulated meter", file=sys.stderr)
    with EmulatedBoard(bundles["base"], timing=timing, meter=True) as board:
        config = MeasurementConfig(
            port=board.address,
            models=models,
            reference="full",
            meter=f"keysight34465a:{board.meter_address}",
            data=args.data,
            images=args.images,
            images_per_window=args.images_per_window,
            repeats=args.repeats,
            label="emulated",
            extra={
                "emulator": describe(board),
                "recipe": "python -m measurements.reproduce",
                "notes": _notes(args, timing),
            },
        )
        run_folder = RunFolder.create(out / "runs", "emulated", config.to_dict())
        handler = logging.FileHandler(run_folder.path / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
        print(f"3/4 measuring into {run_folder.path}", file=sys.stderr)
        summary = measure(config, run_folder, progress=not args.quiet)
        truth = _ground_truth(run_folder.path, board, summary["idle_power_w"])
    (run_folder.path / "ground_truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    print("4/4 Table I", file=sys.stderr)
    paths = write_table([run_folder.path], out / "table1")
    shutil.copy(run_folder.path / "ground_truth.json", out / "table1" / "ground_truth.json")
    print("   sensitivity of the energy savings to the emulator's parameters", file=sys.stderr)
    write_sensitivity(sensitivity(run_folder.path, timing, board.power), out / "table1")
    if report:
        shutil.copy(report, out / "table1" / "hw_report.json")
    print(f"done in {time.monotonic() - start:.0f} s: {paths['md']}", file=sys.stderr)
    return paths["md"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m measurements.reproduce", description=__doc__)
    p.add_argument("--out", default="runs/table1", help="output folder (default runs/table1)")
    p.add_argument("--models", default=str(RECORDED), help="a `python -m train.reproduce` folder")
    p.add_argument("--train", action="store_true", help="train the models afresh first")
    p.add_argument(
        "--calibrate",
        type=float,
        nargs="*",
        default=list(CALIBRATED),
        help="further savings for the 60%% model's gates (default 0.5 0.7 0.8)",
    )
    p.add_argument(
        "--layer-only",
        type=float,
        nargs="*",
        default=list(LAYER_ONLY),
        help="savings for layer-only versions of the 60%% model (default 0.4 0.6)",
    )
    p.add_argument(
        "--hw-report", help="hardware report for the emulator (default: FINN estimates, made now)"
    )
    p.add_argument(
        "--mac-rate", action="store_true", help="time engines by a MAC rate, not FINN estimates"
    )
    p.add_argument("--data", help="CIFAR-10 folder (default: as train/ finds it)")
    p.add_argument("--images", type=int, default=1000, help="test images per model and repeat")
    p.add_argument("--images-per-window", type=int, default=250)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--debug", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)  # INFO goes to the run folder's log.txt only
    logging.getLogger().addHandler(console)
    from cifar.errors import DataError
    from export.errors import ExportError
    from fpga.finn.errors import FinnFrontendError
    from host.measure import MeasureError
    from host.meters import MeterError
    from host.records import RunError
    from measurements.table1 import TableError
    from train.errors import TrainError
    from wire.errors import BoardError

    errors = (ReproduceError, ExportError, BoardError, MeasureError, MeterError, RunError,
              TableError, TrainError, DataError, FinnFrontendError)  # fmt: skip
    try:
        md = run(args)
    except errors as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

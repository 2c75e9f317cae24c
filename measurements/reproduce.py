"""The main job: Table I reproduced on the emulated board, on a machine with no hardware.

    python -m measurements.reproduce --out runs/table1            # what `make reproduce` runs

The job is a table of plain step functions (:data:`STEPS`), run in order on one
:class:`Job`. After each step the job's state file (``OUT/reproduce.json``) records it as
finished with what it made; the same command given again resumes after the last finished step
(``--restart`` runs every step again), and each step logs ``step i/n: name`` and its time.

1. ``models``: the default models (:data:`MODELS`): the recorded ResNet-20 W4A4 recipe in
   ``measurements/train/resnet20-w4a4`` (the base network, and IADI trained to 40..80% compute
   savings with MGL2S gates and with layer gates only, all with quantized gates), or, with
   ``--train``, the same recipe trained afresh (``python -m train.reproduce``, ~5 CPU-hours).
   ``--calibrate`` and ``--layer-only`` add rows made without training from the
   :data:`CALIBRATE_FROM` model (train/calibrate.py: one logit offset on un-augmented
   training images; the layer-only ones with its channel gates dropped): those rows say so.
2. ``bundles``: each checkpoint is exported (``python -m export``); a bundle already exported
   from the same checkpoint (same sha256) is reused.
3. ``hw_report``: the emulator's engine times, from FINN's estimates of the network's engines
   (``python -m fpga estimate``'s build, run here on the :data:`ENGINES_FROM` bundle, which has
   every engine graph: the backbone's and the quantized gates', folded to one MAC rate as the
   overlay is; a copy made for another bundle is rebuilt, fpga/hwreport.py), from
   ``--hw-report`` (refused unless made for that bundle) or, with ``--mac-rate``, an assumed MAC
   rate.
4. ``measure``: the emulated board (fpga/emulator) serves the real protocol on a pseudo-terminal
   and models time and power: engine times as above, dense whatever the channel mask, gates on
   their engines where the report has them, marshalling on the ARM; a simulated Keysight 34465A
   on a second pseudo-terminal samples that power. ``measurements/run_measurement.py``'s
   harness, unchanged, measures every model: idle power, timed windows of different images,
   energy per inference, accuracy; then every
   window's measured energy is checked against the energy the emulator modelled
   (``ground_truth.json``).
5. ``table``: Table I (``table1.md``, ``.csv``, ``.png``), labelled as emulated.
6. ``sensitivity``: the sensitivity of the energy savings to every emulator parameter at
   -50%/+50% (``sensitivity.md``, measurements/sensitivity.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import formats
from cifar.errors import DataError
from export.errors import BundleError, ExportError
from export.executor import BATCH_SIZE
from export.manifest import load_bundle, sha256_file
from fpga import hwreport
from fpga.emulator import EmulatorError
from fpga.emulator.timing import (
    HardwareReportTiming,
    MacRateTiming,
    TimingModel,
    recorded_arm_work,
)
from host.measure import MeasureError, MeasurementConfig, ModelSpec, measure
from host.records import RunError, RunFolder, write_json
from measurements.sensitivity import sensitivity
from measurements.sensitivity import write as write_sensitivity
from measurements.table1 import GROUND_TRUTH_FILE, TableError, write_table
from train.errors import TrainError
from wire.errors import BoardError

log = logging.getLogger("measurements.reproduce")

# --- The models Table I measures: the one place to point the job at other models -------------
RECORDED = Path("measurements/train/resnet20-w4a4")
"""The default ``--models``: a ``python -m train.reproduce`` folder with one run per model."""
TARGETS = (40, 50, 60, 70, 80)
MODELS = {
    "base": "base",
    **{f"{gating}{t}": f"iadi-{gating}-{t}" for gating in ("mgl2s", "layer") for t in TARGETS},
}
"""Table I's key -> the run folder (holding ``final.pt``) under ``--models``; ``base`` is the
reference (0% savings, measured in ``full`` mode)."""
ENGINES_FROM = "mgl2s60"
"""The model whose bundle the hardware report is estimated from: an MGL2S one has every engine
graph the others have (the backbone's, and the quantized layer and channel gates')."""
CALIBRATE_FROM = "mgl2s60"
"""The MGL2S model that ``--calibrate`` and ``--layer-only`` rows are made from."""
CALIBRATED: tuple[float, ...] = ()
LAYER_ONLY: tuple[float, ...] = ()
"""Default savings of the calibrated and the layer-only-from-MGL2S rows: none, since every
target of both gate families is trained (give ``--calibrate 0.5 0.7`` to add some)."""

STATE_FILE = "reproduce.json"
STATE_FORMAT = "ddi-fpga-reproduce-state"
STATE_VERSION = 1
# The options that decide what the steps make; a state file written with others is not resumed.
STATE_OPTIONS = (
    "models", "only", "train", "calibrate", "layer_only", "hw_report", "design", "mac_rate",
    "data", "images", "images_per_window", "executor_batch", "repeats",
)  # fmt: skip


class ReproduceError(Exception):
    pass


@dataclass
class Job:
    """What the steps share: the options, the output folders and each finished step's result
    (JSON: paths as strings), by step name."""

    args: argparse.Namespace
    out: Path
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def work(self) -> Path:
        return self.out / "work"

    def path(self, step: str) -> Path:
        """The path that step ``step`` made."""
        return Path(self.results[step])

    def bundles(self) -> dict[str, Path]:
        return {key: Path(path) for key, path in self.results["bundles"].items()}

    def engines_bundle(self) -> Path:
        """The bundle the hardware report is made for (:data:`ENGINES_FROM`, else ``base``)."""
        bundles = self.bundles()
        return bundles.get(ENGINES_FROM, bundles["base"])

    def timing(self) -> TimingModel:
        """The emulator's timing model, rebuilt from the ``hw_report`` step's result."""
        report = self.results["hw_report"]
        arm = recorded_arm_work()  # the ARM's work as the ARM bench measured the board's code
        if report:
            return HardwareReportTiming.from_json(report, arm_work=arm)
        return MacRateTiming(arm_work=arm)


# --- The steps ------------------------------------------------------------------------------


def selected(args: argparse.Namespace) -> list[str]:
    """The keys of :data:`MODELS` the job measures (``--only``; ``base`` always)."""
    only = args.only
    if not only:
        return list(MODELS)
    unknown = sorted(set(only) - set(MODELS))
    if unknown:
        raise ReproduceError(
            f"--only {' '.join(unknown)}: not a model of Table I; choose from {' '.join(MODELS)}"
        )
    return ["base", *(k for k in MODELS if k in only and k != "base")]


def step_models(job: Job) -> dict[str, str]:
    """Model key -> checkpoint: the trained ones, plus the 60% model calibrated further."""
    # The training stack (torch) is loaded by the steps that train or calibrate, not by a
    # job that resumes after them.
    import torch

    from train.calibrate import calibrate_gates  # torch
    from train.checkpoint import build_model, load_checkpoint, save_checkpoint  # torch
    from train.data import CifarLoader, load_cifar10  # torch

    args, work = job.args, job.work
    source = Path(args.models)
    if args.train:
        from train.reproduce import main as train_main  # torch: the training recipe

        source = work / "train"
        if train_main(["--out", str(source)]) != 0:
            raise ReproduceError("training failed; see its output above")
    ckpts = {key: source / MODELS[key] / "final.pt" for key in selected(args)}
    for key, path in ckpts.items():
        if not path.is_file():
            raise ReproduceError(
                f"model {key!r}: {str(path)!r} is missing; pass --models DIR of a "
                "`python -m train.reproduce` run, or --train"
            )
    batches: list | None = None
    if (args.calibrate or args.layer_only) and CALIBRATE_FROM not in ckpts:
        raise ReproduceError(
            f"--calibrate and --layer-only make rows from {CALIBRATE_FROM!r}; add it to --only"
        )
    source_ckpt = ckpts.get(CALIBRATE_FROM)
    payload = load_checkpoint(source_ckpt) if args.calibrate or args.layer_only else None
    derived = [
        (f"{CALIBRATE_FROM}-cal{round(s * 100)}", s, lambda: build_model(payload), {})
        for s in args.calibrate
    ] + [
        (
            f"layer-cal{round(s * 100)}",
            s,
            lambda: _layer_only(payload),
            {"derived_from": str(source_ckpt), "layer_only_from_mgl2s": True},
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
    return {key: str(path) for key, path in ckpts.items()}


def _layer_only(payload: dict):
    """The MGL2S checkpoint's network with its layer gate alone (``gating="layer"``): every
    weight but the channel gates', which are dropped, so a running block runs at full width."""
    from train.model import create_model  # torch

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


def step_bundles(job: Job) -> dict[str, str]:
    """Every checkpoint exported; a bundle exported from the same checkpoint is reused."""
    from export.bundle import export_bundle  # torch: the exporter reads the checkpoint

    out = {}
    for key, ckpt in job.results["models"].items():
        folder = job.work / "bundles" / key
        digest = sha256_file(ckpt)
        try:
            if load_bundle(folder).manifest.source.get("checkpoint_sha256") == digest:
                out[key] = str(folder)
                continue
        except BundleError:
            pass
        export_bundle(ckpt, folder, overwrite=True, progress=False)
        out[key] = str(folder)
    return out


def step_hw_report(job: Job) -> str | None:
    """The hardware report of the reference bundle, or None for ``--mac-rate``.

    Every bundle of the same architecture has the same engines (only weights differ), so the
    reference network's report serves all of them; the emulator checks that each bundle it
    loads has a graph in it. A report is used only when it was made for the reference bundle:
    one given with ``--hw-report`` is refused otherwise, the job's own copy is rebuilt.
    """
    args = job.args
    reference = job.engines_bundle()
    bundle_id = load_bundle(reference, verify=False).bundle_id
    if args.hw_report:
        hwreport.read(args.hw_report, bundle_id)
        return str(args.hw_report)
    if args.mac_rate:
        return None
    out = job.work / "hw"
    path = out / "shared" / hwreport.FILE if args.design == "shared" else out / hwreport.FILE
    if path.is_file():
        try:
            hwreport.read(path, bundle_id)
            return str(path)
        except hwreport.HardwareReportError as exc:
            log.info("rebuilding the hardware report: %s", exc)
    if args.design == "shared":
        # qonnx: FINN's front end, loaded only when the estimates are made
        from fpga.architecture import build_shared

        build_shared(reference, out / "shared")  # writes its own hw_report.json
        return str(out / "shared" / hwreport.FILE)
    # qonnx: FINN's front end, loaded only when the estimates are made
    from fpga.bitstream.overlay import OverlayConfig, estimate_engines

    config = OverlayConfig()  # the engines as the overlay builds them
    estimates = estimate_engines(reference, out, config)
    hwreport.write(path, hwreport.per_graph_report(estimates, config.clk_period_ns, bundle_id))
    return str(path)


def step_measure(job: Job) -> str:
    """The harness against the emulated board and simulated meter; the ground-truth check."""
    # serial: the emulated board serves the protocol on a pseudo-terminal
    from fpga.emulator.board import EmulatedBoard, describe

    args, bundles, timing = job.args, job.bundles(), job.timing()
    models = [ModelSpec("full", str(bundles["base"]), "full")]
    models += [ModelSpec(k, str(p)) for k, p in bundles.items() if k != "base"]
    with EmulatedBoard(
        bundles["base"], timing=timing, meter=True, executor_batch=args.executor_batch
    ) as board:
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
                "notes": _notes(args, timing, bundles),
            },
        )
        run_folder = RunFolder.create(job.out / "runs", "emulated", config.to_dict())
        handler = logging.FileHandler(run_folder.path / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        try:
            log.info("measuring into %s", run_folder.path)
            summary = measure(config, run_folder, progress=not args.quiet)
            truth = _ground_truth(run_folder.path, board, summary["idle_power_w"])
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
    write_json(run_folder.path / GROUND_TRUTH_FILE, "ground-truth", truth)
    return str(run_folder.path)


def step_table(job: Job) -> str:
    """Table I of the run, beside it the ground-truth check and the hardware report used."""
    run, table = job.path("measure"), job.out / "table1"
    paths = write_table([run], table)
    shutil.copy(run / GROUND_TRUTH_FILE, table / GROUND_TRUTH_FILE)
    if job.results["hw_report"]:
        shutil.copy(job.results["hw_report"], table / hwreport.FILE)
    return str(paths["md"])


def step_sensitivity(job: Job) -> str:
    """The energy savings with each emulator parameter at -50%/+50% (the board's own power
    model: the default one, as ``step_measure`` starts the board)."""
    # serial: fpga.emulator.board (its PowerModel) imports pyserial
    from fpga.emulator.board import PowerModel

    table = job.out / "table1"
    write_sensitivity(sensitivity(job.path("measure"), job.timing(), PowerModel()), table)
    return str(table / "sensitivity.md")


Step = Callable[[Job], Any]
STEPS: list[tuple[str, Step]] = [
    ("models", step_models),
    ("bundles", step_bundles),
    ("hw_report", step_hw_report),
    ("measure", step_measure),
    ("table", step_table),
    ("sensitivity", step_sensitivity),
]
"""The main job, in order: each step reads the results of those before it from the job."""


# --- Running the steps, resuming after the last finished one -------------------------------


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return json.loads(json.dumps({k: getattr(args, k) for k in STATE_OPTIONS}))


def read_state(path: Path) -> dict[str, Any] | None:
    """The state file at ``path``, None if there is none; a wrong format is refused."""
    try:
        return formats.read(
            path,
            STATE_FORMAT,
            STATE_VERSION,
            error=ReproduceError,
            remedy="it is not a state file of this job: remove it or pass --restart",
            what="the job's state",
        )
    except FileNotFoundError:
        return None


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    os.replace(tmp, path)


def run_steps(
    job: Job, steps: list[tuple[str, Step]] = STEPS, *, restart: bool = False
) -> dict[str, Any]:
    """Run ``steps`` on ``job`` in order, skipping those the state file records as finished
    with the same options; returns the results by step name."""
    job.out.mkdir(parents=True, exist_ok=True)
    path = job.out / STATE_FILE
    options = _options(job.args)
    state = None if restart else read_state(path)
    if state is not None and state.get("options") != options:
        changed = sorted(k for k in options if state.get("options", {}).get(k, None) != options[k])
        log.info("options changed (%s): every step runs again", ", ".join(changed))
        state = None
    if state is None:
        state = {"format": STATE_FORMAT, "version": STATE_VERSION, "options": options, "done": []}
    done = {entry["step"]: entry for entry in state["done"]}
    names = [name for name, _ in steps]
    if list(done) != names[: len(done)]:  # another table of steps: nothing carries over
        state["done"], done = [], {}
    start = time.monotonic()
    for i, (name, step) in enumerate(steps, 1):
        if name in done:
            job.results[name] = done[name]["result"]
            log.info("step %d/%d: %s (finished earlier, %.0f s)", i, len(steps), name,
                     done[name]["seconds"])  # fmt: skip
            continue
        log.info("step %d/%d: %s", i, len(steps), name)
        t0 = time.monotonic()
        job.results[name] = step(job)
        seconds = time.monotonic() - t0
        state["done"].append(
            {"step": name, "seconds": round(seconds, 1), "result": job.results[name]}
        )
        _write_state(path, state)
        log.info("step %d/%d: %s done in %.0f s", i, len(steps), name, seconds)
    log.info("all %d steps done (%.0f s in this call)", len(steps), time.monotonic() - start)
    return job.results


# --- The record -----------------------------------------------------------------------


def _timing_note(timing) -> str:
    """What the emulator's engine times came from, read off the timing model itself."""
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
        note = (
            f"Engine times: {report.get('kind', 'hardware report')} at "
            f"{timing.clock_mhz:g} MHz, {layout}; weight loads charged for {loads} graph(s)."
        )
        use = report.get("utilization")
        if isinstance(use, dict) and isinstance(report.get("fits"), bool):
            over = [f"{k} {100 * v:.0f}%" for k, v in use.items() if v > 1]
            note += (
                " By the same estimates these engines' HW layers fit the XC7Z020."
                if report["fits"]
                else " By the same estimates these engines' HW layers do NOT fit the XC7Z020 "
                f"({', '.join(over)} of the part): the times are those of a design that needs "
                "a larger part or shared engines (docs/fpga-architecture.md)."
            )
        return note
    return f"Engine times: every engine at {timing.macs_per_s:g} MAC/s (an assumed rate)."


def _gates_note(timing, bundles: dict[str, Path]) -> str:
    """Where the measured models' gates ran, read off their bundles and the timing model."""
    on_pl, on_arm = set(), set()
    for path in bundles.values():
        manifest = load_bundle(path, verify=False).manifest
        for name, spec in manifest.graphs.items():
            if spec.kind in ("layer_gate", "channel_gate"):
                (on_pl if timing.gate_on_pl(manifest, name) else on_arm).add(spec.kind)
    kinds = {"layer_gate": "layer", "channel_gate": "channel"}
    parts = []
    if on_pl:
        parts.append(
            " and ".join(kinds[k] for k in sorted(on_pl)) + " gates on their own FINN engines "
            "(quantized; a layer gate's LSTM step on the ARM, numpy)"
        )
    if on_arm:
        parts.append(
            " and ".join(kinds[k] for k in sorted(on_arm)) + " gates on the ARM (numpy programs)"
        )
    return "; ".join(parts) or "no gates"


def _notes(args: argparse.Namespace, timing, bundles: dict[str, Path]) -> list[str]:
    work = getattr(timing, "arm_work", None)
    arm = (
        "every engine call adds the ARM's own work as the ARM bench measured the board's code "
        f"(scaled to a Cortex-A9: {work.source}), and every image the stem's input and the "
        "executor's work per block, what a call or a block costs per batch shared among the "
        f"images of an executor batch (the board ran windows of {args.images_per_window} "
        f"images in batches of {args.executor_batch})"
        if work is not None
        else "every engine call adds the ARM's marshalling, at the rates above"
    )
    notes = [
        f"Emulator timing: {timing!r}. {_timing_note(timing)} A running block is charged its "
        f"engine's dense time whatever its channel mask; {_gates_note(timing, bundles)}; "
        f"{arm}: see docs/board.md for the parameters and their sources, and sensitivity.md "
        "for how the savings move with each."
    ]
    if args.calibrate:
        notes.append(
            f"`{CALIBRATE_FROM}-calNN`: the `{CALIBRATE_FROM}` model with its gates calibrated to "
            "NN% compute savings (one logit offset on 1,000 training images), without fine-tuning."
        )
    if args.layer_only:
        notes.append(
            f"`layer-calNN`: layer-only IADI made from the `{CALIBRATE_FROM}` MGL2S model by "
            "dropping its channel gates (every running block at full width) and calibrating its "
            "layer gate to NN% compute savings (one logit offset on 1,000 training images), "
            "without fine-tuning; not a model trained layer-only."
        )
    trained = [k for k in selected(args) if k != "base"]
    if trained:
        notes.append(
            f"`mgl2sNN` / `layerNN`: IADI trained to NN% compute savings with MGL2S (layer and "
            "channel gates) or with layer gates only (the `iadi-GATING-NN` runs of "
            f"`python -m train.reproduce` under `{args.models}`: {', '.join(trained)})."
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m measurements.reproduce", description=__doc__)
    p.add_argument("--out", default="runs/table1", help="output folder (default runs/table1)")
    p.add_argument("--models", default=str(RECORDED), help="a `python -m train.reproduce` folder")
    p.add_argument(
        "--only",
        nargs="+",
        metavar="KEY",
        help=f"measure these models only (and base): some of {' '.join(MODELS)}",
    )
    p.add_argument("--train", action="store_true", help="train the models afresh first")
    p.add_argument(
        "--calibrate",
        type=float,
        nargs="*",
        default=list(CALIBRATED),
        help=f"more rows: the {CALIBRATE_FROM} model's gates calibrated to these savings, "
        "without fine-tuning (default: none)",
    )
    p.add_argument(
        "--layer-only",
        type=float,
        nargs="*",
        default=list(LAYER_ONLY),
        help=f"more rows: the {CALIBRATE_FROM} model's layer gate alone (channel gates dropped) "
        "calibrated to these savings (default: none)",
    )
    p.add_argument(
        "--hw-report",
        help=f"hardware report of the {ENGINES_FROM} bundle for the emulator (default: FINN "
        "estimates, made now)",
    )
    p.add_argument(
        "--mac-rate", action="store_true", help="time engines by a MAC rate, not FINN estimates"
    )
    p.add_argument(
        "--design",
        choices=("per-graph", "shared"),
        default="per-graph",
        help="the FPGA design the emulator's engine times come from: an engine per graph (the "
        "overlay), or shared engines with weights written at run time (docs/fpga-architecture.md)",
    )
    p.add_argument("--data", help="CIFAR-10 folder (default: as train/ finds it)")
    p.add_argument("--images", type=int, default=1000, help="test images per model and repeat")
    p.add_argument("--images-per-window", type=int, default=250)
    p.add_argument(
        "--executor-batch",
        type=int,
        default=BATCH_SIZE,
        help="the emulated board runtime's --executor-batch: images it takes through the network "
        f"together (default {BATCH_SIZE}, the board's)",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--restart", action="store_true", help="run every step again (default: resume)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--debug", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)  # INFO goes to the run folder's log.txt only ...
    root.addHandler(console)
    progress = logging.StreamHandler()  # ... but this job's steps, which are shown
    progress.setFormatter(logging.Formatter("%(message)s"))
    progress.addFilter(lambda record: record.levelno < logging.WARNING)
    log.addHandler(progress)
    # qonnx: fpga.finn's package imports FINN's front end
    from fpga.finn.errors import FinnFrontendError
    from host.meters import MeterError  # serial: the meters' drivers import pyserial

    errors = (ReproduceError, ExportError, BoardError, MeasureError, MeterError, RunError,
              TableError, TrainError, DataError, FinnFrontendError, EmulatorError,
              hwreport.HardwareReportError)  # fmt: skip
    job = Job(args, Path(args.out))
    try:
        run_steps(job, restart=args.restart)
    except errors as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(Path(job.results["table"]).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

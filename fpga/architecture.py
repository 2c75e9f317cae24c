"""Shared engines: one FINN engine per distinct graph shape, weights written at run time.

One engine per graph does not fit the XC7Z020 for deep networks (ResNet-74: 36 blocks at about
18-36 DSP each). Here the bundle's graphs are grouped by **shape** (kind, input and output
shapes and datatypes): a stage's non-downsampling blocks differ only in their weights and
thresholds, so they share one engine whose MVAUs keep their weights on chip
(``mem_mode="internal_decoupled"``, ``runtime_writeable_weights=1``) and whose Thresholding
layers are runtime-writeable too; the ARM writes a block's weights and thresholds over AXI-lite
before that block runs. Engines that serve one graph (stem, head, downsampling blocks and their
shortcuts in a CIFAR ResNet) keep fixed weights. See docs/fpga-architecture.md.

The schedule is per batch and block: the ARM runs the gates, then for block ``i`` loads its
weights into its engine once (only if some image of the batch runs it) and streams every image
that runs it through the engine; images that skip a downsampling block go through its shortcut
engine instead. Engines behind different IODMA pairs (a stage's backbone, a stage's gates) work
on different batches at once, so a batch leaves every period of the busiest of them
(``CostModel.schedule``, "pipelined"). :class:`CostModel` turns that into cycles::

    from fpga.architecture import CostModel, build_shared

    report = build_shared("bundles/r74", "builds/r74-shared")  # FINN builds + hw_report.json
    cycles = CostModel().batch_cycles(report, executed)     # executed: (images, blocks) bool

``report["graphs"][NAME]["cycles"]`` is the engine's bottleneck cycles per image for every graph
of the bundle, so :class:`fpga.emulator.timing.HardwareReportTiming` reads the report as is.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from export.manifest import load_bundle
from fpga import hwreport
from fpga.bitstream.overlay import (
    DEPLOY_DIR,
    OVERLAY_MODEL,
    PREDICTED,
    collapse,
    overlay_budget,
    predict_driver,
    write_deploy,
)
from fpga.bitstream.zedboard import interconnect_plan
from fpga.board.accel import DEFAULT_BATCH
from fpga.board.weights import MANIFEST_FILE, MANIFEST_FORMAT, MANIFEST_VERSION
from fpga.finn.errors import GraphError
from fpga.finn.frontend import PARENT_FILE, FrontendConfig, dataflow_model, estimate, to_hw
from fpga.weights import (
    WEIGHTS_DIR,
    check_same_structure,
    runtime_memories,
    save_block,
)

log = logging.getLogger(__name__)

LABEL = "FINN estimates, no synthesis"
DESIGN = "shared engines (one per graph shape, runtime-writeable weights)"
REPORT_FILE = hwreport.FILE
RESOURCES = ("LUT", "BRAM_18K", "DSP")
BUDGET = {"LUT": 53_200, "BRAM_18K": 280, "DSP": 220}
"""XC7Z020 programmable logic (FF: 106,400, not estimated by FINN)."""
WEIGHT_OPS = ("MVAU_rtl", "MVAU_hls")
THRESHOLD_OPS = ("Thresholding_rtl",)


@dataclass(frozen=True)
class Engine:
    """One FINN engine of the design: the graphs it serves, built from ``graphs[0]``."""

    name: str
    kind: str
    graphs: tuple[str, ...]
    runtime_weights: bool
    """Weights and thresholds written over AXI-lite before each graph runs (shared engine)."""

    @property
    def representative(self) -> str:
        return self.graphs[0]


def _shape(spec: Any) -> tuple:
    """(shape without the batch, datatype name) of a graph's first input or output tensor."""
    return tuple(d for d in spec.shape if d != "N"), spec.datatype.name


def _engine_output(spec: Any) -> Any:
    """The tensor an engine of the graph returns: a quantized gate's FINN graph output (keep
    bits, or the layer gate's embedding codes), else the graph's output."""
    return spec.outputs[0] if spec.finn is None else spec.finn.outputs[0]


def engine_file(spec: Any) -> str | None:
    """The QONNX file FINN builds for a graph: a backbone graph's ``qonnx``, a quantized
    gate's ``finn`` graph, else None (float gates: the ARM runs them)."""
    if spec.qonnx is not None:
        return spec.qonnx.file
    return None if spec.finn is None else spec.finn.file


def graph_key(manifest: Any, graph: str) -> tuple:
    """What an engine is built for: the graph's kind and its input/output shapes and types."""
    spec = manifest.graphs[graph]
    return (spec.kind, _shape(spec.inputs[0]), _shape(_engine_output(spec)))


def engine_stage(manifest: Any, graph: str) -> str:
    """The stage of a graph's engine: the resolution it writes (``16px``: a CIFAR ResNet's second
    stage, its downsampling block and shortcut included), or for an engine whose output is not
    an image (the gates, the head) the resolution it reads."""
    spec = manifest.graphs[graph]
    out_shape, _ = _shape(_engine_output(spec))
    if len(out_shape) == 3:
        return f"{out_shape[1]}px"
    (_, h_in, _), _ = _shape(spec.inputs[0])
    return f"{h_in}px"


def _engine_name(manifest: Any, graph: str, kind: str) -> str:
    spec = manifest.graphs[graph]
    if kind in ("stem", "head"):
        return kind
    (c_in, h_in, _), _ = _shape(spec.inputs[0])
    out_shape, _ = _shape(_engine_output(spec))
    if len(out_shape) != 3:  # an exit's logits
        return f"{kind}_{c_in}ch_{h_in}px"
    c_out, h_out, _ = out_shape
    stride = h_in // h_out if h_out else 1
    return f"{kind}_{c_in}to{c_out}_s{stride}_{h_in}px"


def plan_engines(manifest: Any) -> list[Engine]:
    """Group every graph of the bundle that FINN compiles into engines, in execution order.

    A graph whose shape another graph already has goes to that graph's engine; an engine with
    more than one graph gets runtime-writeable weights. Quantized gates (a ``finn`` graph: the
    channel gate, the layer gate's pool and 1x1 conv) get engines too, grouped the same way;
    float gates run on the ARM.
    """
    order = [manifest.stem]
    for block in manifest.blocks:
        gates = [g for g in (block.layer_gate, block.channel_gate) if g]
        order += [g for g in gates if manifest.graphs[g].finn is not None]
        order += [block.graph] + ([block.shortcut] if block.shortcut else [])
    order += [e.graph for e in manifest.exits] + [manifest.head]
    groups: dict[tuple, list[str]] = {}
    for name in order:
        if engine_file(manifest.graphs[name]) is None:
            raise GraphError(f"graph {name!r} has no QONNX graph; the design needs every engine")
        groups.setdefault(graph_key(manifest, name), []).append(name)
    engines = []
    for key, names in groups.items():
        name = _engine_name(manifest, names[0], key[0])
        if any(e.name == name for e in engines):
            name = f"{name}_{len(engines)}"
        engines.append(Engine(name, key[0], tuple(names), runtime_weights=len(names) > 1))
    return engines


@dataclass
class SharedConfig:
    """How each engine is folded (FINN ``SetFolding`` targets) and clocked."""

    clk_period_ns: float = 10.0
    """PL clock (100 MHz)."""
    target_fps: int = 2500
    """Folding target of every engine (FINN's cycle budget is 1e9 / (fps * clk_period_ns))."""
    target_fps_by_kind: dict[str, int] = field(
        default_factory=lambda: {
            "stem": 10_000,
            "shortcut": 10_000,
            "head": 25_000,
            "layer_gate": 50_000,
            "channel_gate": 5_000,
        }
    )
    """Overrides by engine kind (``block_single``: a block engine that serves one block, a CIFAR
    ResNet's downsampling block, if it is to be folded apart). Every image pays for the stem,
    the head, its layer gates and, when it skips a downsampling block, that block's shortcut,
    whatever it skips: these are folded fast (a few DSPs each once ``step_refold_mvaus`` packs
    four PEs into a DSP), so that skipping a block saves nearly its share of the time. The
    channel gates run with their block and read its input; folded at twice the blocks' rate."""
    fpga_part: str = "xc7z020clg484-1"
    stem_pixels: bool = True
    """The stem's engine takes the images' uint8 pixels and thresholds them to its input codes
    (``FrontendConfig.stem_pixels``): the ARM does nothing of the preprocessing."""

    def fps_for(self, engine: Engine) -> int:
        kind = engine.kind
        if kind == "block" and not engine.runtime_weights:
            kind = "block_single"
        return int(self.target_fps_by_kind.get(kind, self.target_fps))


SCHEDULES = ("sequential", "pipelined")
SKIP_FRACTIONS = (0.0, 0.4, 0.5, 0.6, 0.8)
"""The skip fractions the report's throughput table shows (50%: the 1.8x speed-up check)."""
DMA_GROUPS = ("stage", "stage_gates", "engine")
GATE_KINDS = ("layer_gate", "channel_gate")


def dma_group_of(graph: dict, how: str) -> str:
    """The IODMA pair a graph's engine streams through (:attr:`CostModel.dma_group`)."""
    engine = str(graph.get("engine", ""))
    if how == "engine":
        return engine
    stage = str(graph.get("stage", engine))
    if how == "stage_gates":
        return f"{stage} {'gates' if graph.get('kind') in GATE_KINDS else 'backbone'}"
    return stage


ROOT = Path(__file__).resolve().parents[1]
ARM_BENCH = Path("measurements") / "bench" / "arm_work.json"
"""The ARM bench's record (``make bench``, fpga/board/arm_bench.py), relative to the repo."""


@dataclass(frozen=True)
class ArmWork:
    """The board runtime's own work on the ARM (numpy on one Cortex-A9 core at 667 MHz), in
    seconds, by the parts :func:`fpga.board.arm_bench.fit_arm_model` fits to the ARM bench:
    per engine call ``call_s`` and per image of it ``call_image_s + byte_s x`` its activation
    bytes in and out, ``byte_s`` by the graph's kind (``byte_s_by_kind``, else
    ``call_byte_s``): the driver, gathering rows, packing, copies into and out of the DMA
    buffers, unpacking, tails (``call_s`` overlaps :attr:`CostModel.call_overhead_cycles`, an
    assumption charged as well, so the ARM is not undercharged);
    per layer-gate call the LSTM step, ``lstm_call_s + images x lstm_image_s``; per image, its
    stem input (``image_s``: a view of the images where the stem's engine thresholds the
    pixels itself, else their codes from the preprocessing table); per block and executor batch, the
    executor's own work, ``block_call_s + images x block_image_s`` (its numpy calls on the
    batch's index arrays cost per call, the rows they move per image, so a larger batch
    shares the first among more images). The bench measures the board's code on x86 and
    scales it by a cited x86/Cortex-A9 ratio, so these are modelled."""

    call_s: float = 0.0
    call_image_s: float = 0.0
    call_byte_s: float = 0.0
    byte_s_by_kind: dict[str, float] = field(default_factory=dict)
    lstm_call_s: float = 0.0
    lstm_image_s: float = 0.0
    image_s: float = 0.0
    block_call_s: float = 0.0
    block_image_s: float = 0.0
    source: str = "none"
    """Where the figures come from (the bench record and its bundle)."""

    FIELDS = (
        "call_s",
        "call_image_s",
        "call_byte_s",
        "lstm_call_s",
        "lstm_image_s",
        "image_s",
        "block_call_s",
        "block_image_s",
    )

    @classmethod
    def recorded(cls, path: str | os.PathLike | None = None, way: str | None = None) -> ArmWork:
        """The figures of the committed ARM bench record (:data:`ARM_BENCH`), or of ``path``:
        of its headline run (one DMA transfer a call, engines reading in place), or of
        ``way``, one of its ``arm_models`` (``"carry on"``: the overlay's own DMA buffers, a
        call of more images moved in chunks and copied)."""
        path = Path(path) if path is not None else ROOT / ARM_BENCH
        try:
            doc = json.loads(path.read_text())
            model = doc["arm_model"] if way is None else doc["arm_models"][way]
            values: dict[str, Any] = {k: float(model[k]) for k in cls.FIELDS}
            values["byte_s_by_kind"] = {
                str(k): float(v) for k, v in model.get("byte_s_by_kind", {}).items()
            }
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise GraphError(
                f"no ARM-work model in {path} ({type(e).__name__}: {e}); run "
                "`python -m fpga.board.arm_bench` (make bench) to measure it"
            ) from None
        shown = ARM_BENCH if path == ROOT / ARM_BENCH else path
        run = f", {way}" if way is not None else ""
        return cls(
            **values,
            source=f"{shown}{run}: bundle {doc.get('bundle')}, measured on x86 and scaled to a "
            f"Cortex-A9 at 667 MHz (x{float(doc.get('x86_to_a9_factor', 0)):.1f}, modelled)",
        )

    def call_seconds(self, images: int, activation_bytes: int, kind: str | None) -> float:
        """The ARM's seconds for one engine call of ``images`` images of a graph of ``kind``,
        the call alone (no LSTM step)."""
        if images <= 0:
            return 0.0
        rate = self.byte_s_by_kind.get(str(kind), self.call_byte_s)
        return self.call_s + images * (self.call_image_s + rate * activation_bytes)

    def seconds(self, images: int, activation_bytes: int, kind: str | None) -> float:
        """The ARM's seconds for one engine call of ``images`` images of a graph of ``kind``,
        a layer gate's LSTM steps included."""
        lstm = self.lstm_seconds(images) if kind == "layer_gate" else 0.0
        return self.call_seconds(images, activation_bytes, kind) + lstm

    def lstm_seconds(self, images: int) -> float:
        """The ARM's seconds for a layer gate's LSTM steps of one call of ``images`` images."""
        return self.lstm_call_s + images * self.lstm_image_s if images > 0 else 0.0

    def block_seconds(self, images: int) -> float:
        """The executor's own seconds on one block for the ``images`` images of a batch that
        reach it."""
        return self.block_call_s + images * self.block_image_s if images > 0 else 0.0

    def executor_seconds(self, images: int, blocks: int) -> float:
        """The ARM's seconds for one executor batch of ``images`` images through ``blocks``
        blocks, the engine calls aside: the stem inputs and the executor's work per block."""
        if images <= 0:
            return 0.0
        return images * self.image_s + blocks * self.block_seconds(images)


@dataclass
class CostModel:
    """Cycles of a batch on the shared-engine design (assumptions in docs/fpga-architecture.md).

    Per block and batch: nothing if no image runs it; else ``call_overhead_cycles`` (the ARM
    programs the DMAs and waits), the weight load (shared engines only), the pipeline fill
    (``latency_cycles - cycles``) and per image ``max(cycles, activation bytes / DMA rate)``;
    and the ARM's own work for the call's images (:class:`ArmWork`, measured by the ARM bench).
    A block's gate engines (quantized gates) are calls of their own: its layer gate's for every
    image of the batch, its channel gate's for the images that run the block.
    """

    clock_mhz: float = 100.0
    """PL clock of the engines and of the DMA/AXI interconnect."""
    batch_images: int = 1000
    """Images per batch: a timed window's images go through block i together (a window of
    1,000 images that the board runtime takes as one executor batch, ``--executor-batch 1000``
    with DMA buffers as large, ``--overlay-batch 1000``: the ARM's per-call and per-block work
    is shared among them)."""
    dma_bytes_per_cycle: float = 6.4
    """Activation DMA DDR <-> engine: one 64-bit HP port at the PL clock, 80% efficient."""
    weight_loader: str = "axilite"
    """``axilite``: the ARM writes 32-bit words over M_AXI_GP0 (FINN's runtime-writeable
    interface); ``dma``: a DMA feeds the same memories at ``dma_bytes_per_cycle``."""
    axilite_cycles_per_word: float = 16.0
    """PL cycles per 32-bit AXI-lite write from the ARM (about 160 ns at 100 MHz, assumed)."""
    call_overhead_cycles: int = 5_000
    """ARM cost of starting one engine call on a batch (DMA descriptors, start, wait): 50 us."""
    flush_frame: bool = True
    """After each weight load one frame runs through the engine alone (FINN's weight streamer
    holds words of the old weights; fpga/board/weights.py): one more call (its overhead) and
    the frame's pipeline latency, charged with the load."""
    schedule: str = "pipelined"
    """``sequential``: one engine call at a time, a batch through every block before the next
    batch starts. ``pipelined``: the engines of different DMA groups work on different batches
    at once (stage 1's engines on batch k + 2 while stage 3's run batch k; the ARM starts each
    call and polls for its end), so in steady state a batch leaves every busiest-resource
    period (:meth:`batch_parts`); a batch's latency stays the sequential sum."""
    dma_group: str = "stage_gates"
    """What shares one IODMA pair (and one mask-map DMA): ``stage``, the engines of one stage
    (:func:`engine_stage`: a CIFAR ResNet stage, with its downsampling block, shortcut and
    gates), through AXI-Stream switches: they run one call at a time; ``stage_gates``: per
    stage one pair for the backbone's engines and one for the gates', so a stage's gates work
    on one batch while its blocks work on another; ``engine``: a pair per engine (FINN's
    shell), every engine on its own."""
    hp_ports: int = 2
    """Zynq HP ports the activation DMAs share (HP0, HP1), each ``dma_bytes_per_cycle``."""
    arm_work: ArmWork = field(default_factory=ArmWork.recorded)
    """The ARM's own work per image and call (:class:`ArmWork`; by default the committed ARM
    bench's figures): with one call at a time it adds to the batch's time; pipelined, it is
    part of the ARM's busy time."""

    def __post_init__(self) -> None:
        if isinstance(self.arm_work, dict):  # a report's cost_model, read back
            self.arm_work = ArmWork(**self.arm_work)
        if self.weight_loader not in ("axilite", "dma"):
            raise GraphError(f"weight_loader {self.weight_loader!r} is not 'axilite' or 'dma'")
        if self.schedule not in SCHEDULES:
            raise GraphError(f"schedule {self.schedule!r} is not one of {SCHEDULES!r}")
        if self.dma_group not in DMA_GROUPS:
            raise GraphError(f"dma_group {self.dma_group!r} is not one of {DMA_GROUPS!r}")
        if isinstance(self.hp_ports, bool) or self.hp_ports not in (1, 2, 3, 4):
            raise GraphError(f"hp_ports={self.hp_ports!r}: a Zynq-7000 has 1..4 HP ports")
        for name in ("clock_mhz", "dma_bytes_per_cycle", "axilite_cycles_per_word"):
            if not getattr(self, name) > 0:
                raise GraphError(f"{name}={getattr(self, name)!r} must be > 0")
        if self.batch_images < 1 or self.call_overhead_cycles < 0:
            raise GraphError(
                f"batch_images={self.batch_images!r} must be >= 1 and "
                f"call_overhead_cycles={self.call_overhead_cycles!r} >= 0"
            )

    def load_cycles(self, graph: dict) -> int:
        """Cycles to write one graph's weights and thresholds into its (shared) engine, and
        its flush frame."""
        if not graph.get("runtime_weights"):
            return 0
        if self.weight_loader == "axilite":
            write = math.ceil(graph["weight_words"] * self.axilite_cycles_per_word)
        else:
            write = math.ceil(4 * graph["weight_words"] / self.dma_bytes_per_cycle)
        flush = self.call_overhead_cycles + int(graph["latency_cycles"])
        return write + (flush if self.flush_frame else 0)

    def image_cycles(self, graph: dict) -> int:
        """Cycles per image of a graph in a stream: engine bottleneck or activation DMA."""
        dma = math.ceil(graph["activation_bytes"] / self.dma_bytes_per_cycle)
        return max(int(graph["cycles"]), dma)

    def call_cycles(self, graph: dict, images: int) -> int:
        """Cycles of one engine call that runs ``images`` images through ``graph``."""
        if images <= 0:
            return 0
        fill = max(0, int(graph["latency_cycles"]) - int(graph["cycles"]))
        return (
            self.call_overhead_cycles
            + self.load_cycles(graph)
            + fill
            + images * self.image_cycles(graph)
        )

    def batch_parts(self, report: dict, executed: np.ndarray) -> dict[str, Any]:
        """Cycles of a batch by part: ``engine`` (images x cycles), ``weight_load``,
        ``overhead`` (calls and pipeline fills), ``work`` (their sum: every call one after
        another), ``arm_work`` (the ARM's own work per image and call, :attr:`arm_work`) and
        ``total``, the cycles the :attr:`schedule` takes per batch: ``work + arm_work`` when
        sequential; when pipelined the largest of ``resources``: each DMA group's calls in a
        row (:attr:`dma_group`), the ARM's (every call's start, every AXI-lite weight word and
        ``arm_work``) and the HP ports' (all bytes the DMAs move), with ``busiest`` naming it. Plus
        ``weight_bytes`` and ``activation_bytes`` moved. ``executed[k, i]``: image ``k`` runs
        block ``i``.
        """
        graphs, blocks = report["graphs"], report["blocks"]
        executed = np.asarray(executed, dtype=bool)
        if executed.ndim != 2 or executed.shape[1] != len(blocks):
            raise GraphError(
                f"executed has shape {executed.shape!r}; expected (images, {len(blocks)})"
            )
        n = executed.shape[0]
        calls = [(report["stem"], n)]
        for i, block in enumerate(blocks):
            running = int(executed[:, i].sum())
            if block.get("layer_gate"):
                calls.append((block["layer_gate"], n))
            if block.get("channel_gate"):
                calls.append((block["channel_gate"], running))
            calls.append((block["graph"], running))
            if block["shortcut"]:
                calls.append((block["shortcut"], n - running))
        calls.append((report["head"], n))
        parts: dict[str, Any] = dict.fromkeys(
            ("engine", "weight_load", "overhead", "work", "weight_bytes", "activation_bytes"), 0
        )
        groups: dict[str, int] = {}
        arm = 0
        arm_s = self.arm_work.executor_seconds(n, len(blocks))
        for name, images in calls:
            g = graphs[name]
            total = self.call_cycles(g, images)
            if not total:
                continue
            arm_s += self.arm_work.seconds(images, g["activation_bytes"], g.get("kind"))
            engine = images * self.image_cycles(g)
            load = self.load_cycles(g)
            parts["engine"] += engine
            parts["weight_load"] += load
            parts["overhead"] += total - engine - load
            parts["work"] += total
            parts["weight_bytes"] += g["weight_bytes"] if g.get("runtime_weights") else 0
            parts["activation_bytes"] += images * g["activation_bytes"]
            group = dma_group_of(g, self.dma_group)
            groups[group] = groups.get(group, 0) + total
            calls_started = 1 + (1 if load and self.flush_frame else 0)
            writes = 0
            if load and self.weight_loader == "axilite":  # the ARM writes every word
                writes = math.ceil(g["weight_words"] * self.axilite_cycles_per_word)
            arm += calls_started * self.call_overhead_cycles + writes
        moved = parts["activation_bytes"]
        if self.weight_loader == "dma":
            moved += parts["weight_bytes"]
        parts["arm_work"] = math.ceil(arm_s * self.clock_mhz * 1e6)
        resources = {f"dma group {k}": v for k, v in groups.items()}
        resources["ARM"] = arm + parts["arm_work"]
        resources["HP ports"] = math.ceil(moved / (self.hp_ports * self.dma_bytes_per_cycle))
        if self.schedule == "sequential":  # the ARM's work between the calls adds up
            parts["total"], parts["busiest"] = parts["work"] + parts["arm_work"], None
        else:
            busiest = max(resources, key=resources.get)
            parts["total"], parts["busiest"] = resources[busiest], busiest
        parts["resources"] = resources
        return parts

    def batch_cycles(self, report: dict, executed: np.ndarray) -> int:
        """Total cycles of a batch (see :meth:`batch_parts`)."""
        return self.batch_parts(report, executed)["total"]

    def images_per_s(self, report: dict, executed: np.ndarray) -> float:
        """Images per second of the batch ``executed`` at ``clock_mhz``."""
        return executed.shape[0] * self.clock_mhz * 1e6 / self.batch_cycles(report, executed)


def skip_pattern(blocks: int, images: int, skip_fraction: float) -> np.ndarray:
    """An illustrative (images, blocks) ``executed`` array: each block skipped by
    ``round(skip_fraction * images)`` images, spread evenly (no block idle for the batch)."""
    if not 0.0 <= skip_fraction <= 1.0:
        raise GraphError(f"skip_fraction {skip_fraction!r} is not in [0, 1]")
    skipped = round(skip_fraction * images)
    executed = np.ones((images, blocks), dtype=bool)
    for i in range(blocks):  # a run of images that starts further on for every block
        executed[(np.arange(skipped) + i * 37) % images, i] = False
    return executed


# -- FINN builds ------------------------------------------------------------------------------


def _folding_file(out: Path, engine: Engine) -> str | None:
    """FINN folding JSON that makes a shared engine's weights and thresholds writeable."""
    if not engine.runtime_weights:
        return None
    path = out / "runtime_weights.json"
    defaults = {
        "mem_mode": ["internal_decoupled", list(WEIGHT_OPS)],
        "runtime_writeable_weights": [1, list(WEIGHT_OPS + THRESHOLD_OPS)],
    }
    path.write_text(json.dumps({"Defaults": defaults}, indent=1) + "\n")
    return str(path)


def weight_memory(hw: Any) -> dict[str, Any]:
    """Weights and thresholds of an HW partition: AXI-lite words (FINN's runtime weight file
    layout, padding included), payload bytes, per-MVAU folding and the weight stream width an
    external (DDR-streamed) ``mem_mode`` would need."""
    from qonnx.custom_op.registry import getCustomOp

    words = bits = stream_bits = 0
    mvaus = {}
    for node in hw.graph.node:
        op = getCustomOp(node)
        if node.op_type in WEIGHT_OPS:
            pe, simd = op.get_nodeattr("PE"), op.get_nodeattr("SIMD")
            mw, mh = op.get_nodeattr("MW"), op.get_nodeattr("MH")
            wbits = op.get_input_datatype(1).bitwidth()
            width = pe * simd * wbits
            depth = mw * mh // (pe * simd)
            words += depth * max(1, 2 ** math.ceil(math.log2(width / 32)))
            bits += mw * mh * wbits
            stream_bits += width
            mvaus[node.name] = {"MW": mw, "MH": mh, "PE": pe, "SIMD": simd, "weight_bits": wbits}
        elif node.op_type in THRESHOLD_OPS:
            pe, channels = op.get_nodeattr("PE"), op.get_nodeattr("NumChannels")
            steps, tbits = op.get_nodeattr("numSteps"), op.get_input_datatype(1).bitwidth()
            rows = hw.get_initializer(node.input[1]).shape[0]
            stored = pe if rows == 1 else channels  # one row for all channels: FINN keeps PE
            slots = 1 << max(0, math.ceil(math.log2(steps)))
            words += (stored // pe) * (1 << (pe - 1).bit_length()) * slots
            bits += stored * steps * tbits
    return {
        "weight_words": int(words),
        "weight_bytes": math.ceil(bits / 8),
        "external_weight_stream_bits_per_cycle": int(stream_bits),
        "mvaus": mvaus,
    }


def _external_brams(hw: Any, fpga_part: str) -> float:
    """BRAM18 estimate of the same partition with every MVAU in ``mem_mode="external"``."""
    from functools import partial

    from finn.analysis.fpgadataflow.res_estimation import res_estimation
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    ext = ModelWrapper(copy.deepcopy(hw.model))
    for node in ext.graph.node:
        if node.op_type in WEIGHT_OPS:
            getCustomOp(node).set_nodeattr("mem_mode", "external")
    res = ext.analysis(partial(res_estimation, fpgapart=fpga_part))
    return float(sum(r.get("BRAM_18K", 0) for r in res.values()))


def activation_bytes(manifest: Any, graph: str) -> int:
    """Bytes an image moves in and out of an engine for ``graph`` (integer codes, packed)."""
    spec = manifest.graphs[graph]
    total = 0
    for tensor in (spec.inputs[0], _engine_output(spec)):
        shape, _ = _shape(tensor)
        bits = tensor.datatype.bits if tensor.datatype.name != "FLOAT32" else 32
        total += math.ceil(int(np.prod(shape)) * bits / 8)
    return total


def build_engines(
    bundle: str | os.PathLike, out_dir: str | os.PathLike, config: SharedConfig | None = None
) -> tuple[Any, list[Engine], dict[str, dict]]:
    """FINN front end for one representative graph per engine; returns (bundle, engines,
    per-engine estimates with weight memory and external-mode BRAMs)."""

    config = config or SharedConfig()
    loaded = load_bundle(bundle)
    manifest = loaded.manifest
    engines = plan_engines(manifest)
    out = Path(out_dir)
    results = {}
    for engine in engines:
        spec = manifest.graphs[engine.representative]
        folder = out / engine.name
        folder.mkdir(parents=True, exist_ok=True)
        frontend = FrontendConfig(
            fpga_part=config.fpga_part,
            clk_period_ns=config.clk_period_ns,
            target_fps=config.fps_for(engine),
            folding_config_file=_folding_file(folder, engine),
            runtime_writeable_weights=engine.runtime_weights,
        )
        log.info("engine %s: FINN build of %s", engine.name, engine.representative)
        source = loaded.path / engine_file(spec)
        pixels = config.stem_pixels and engine.representative == manifest.stem
        table = manifest.preprocess.lut if pixels else None
        parent = to_hw(source, spec.inputs[0].datatype, folder, frontend, table)
        est = estimate(parent, config.clk_period_ns, config.fpga_part)
        hw = dataflow_model(parent)
        results[engine.name] = {
            "estimate": est,
            "target_fps": config.fps_for(engine),
            **weight_memory(hw),
            "external_BRAM_18K": _external_brams(hw, config.fpga_part),
        }
    return loaded, engines, results


# -- the report -------------------------------------------------------------------------------


def shared_report(
    manifest: Any,
    engines: list[Engine],
    built: dict[str, dict],
    cost: CostModel | None = None,
    skip_fractions: tuple[float, ...] = SKIP_FRACTIONS,
) -> dict[str, Any]:
    """The hardware report of the shared-engine design (JSON-ready; see the module docstring)."""
    cost = cost or CostModel()
    engine_rows, graphs = {}, {}
    for engine in engines:
        b = built[engine.name]
        est = b["estimate"]
        row = {
            "kind": engine.kind,
            "built_from": engine.representative,
            "serves": list(engine.graphs),
            "runtime_writeable_weights": engine.runtime_weights,
            "target_fps": b["target_fps"],
            "cycles": int(est["max_cycles"]),
            "latency_cycles": int(est["critical_path_cycles"]),
            "bottleneck": est["max_cycles_node"],
            **{k: float(est["total"][k]) for k in RESOURCES},
            "weight_words": b["weight_words"],
            "weight_bytes": b["weight_bytes"],
            "external_mem_mode": {
                "BRAM_18K": b["external_BRAM_18K"],
                "weight_stream_bits_per_cycle": b["external_weight_stream_bits_per_cycle"],
            },
            "mvaus": b["mvaus"],
        }
        row["stage"] = engine_stage(manifest, engine.representative)
        engine_rows[engine.name] = row
        for name in engine.graphs:
            g = {
                "engine": engine.name,
                "kind": engine.kind,
                "stage": row["stage"],
                "cycles": row["cycles"],
                "latency_cycles": row["latency_cycles"],
                "bottleneck": row["bottleneck"],
                "runtime_weights": engine.runtime_weights,
                "weight_words": row["weight_words"],
                "weight_bytes": row["weight_bytes"],
                "activation_bytes": activation_bytes(manifest, name),
            }
            g["weight_load_cycles"] = cost.load_cycles(g)
            g["throughput_fps"] = cost.clock_mhz * 1e6 / row["cycles"]
            graphs[name] = g
    total = {k: sum(r[k] for r in engine_rows.values()) for k in RESOURCES}
    blocks = [
        {
            "index": b.index,
            "graph": b.graph,
            "shortcut": b.shortcut,
            # gates with an engine (quantized): the layer gate runs for every image that
            # reaches the block, the channel gate for every image that runs it
            "layer_gate": b.layer_gate if b.layer_gate in graphs else None,
            "channel_gate": b.channel_gate if b.channel_gate in graphs else None,
            "engine": graphs[b.graph]["engine"],
            "cycles": graphs[b.graph]["cycles"],
            "weight_load_cycles": graphs[b.graph]["weight_load_cycles"],
            "activation_bytes": graphs[b.graph]["activation_bytes"],
        }
        for b in manifest.blocks
    ]
    report: dict[str, Any] = {
        "format": hwreport.FORMAT,
        "version": hwreport.FORMAT_VERSION,
        "kind": LABEL,
        "label": LABEL,
        "design": DESIGN,
        "bundle_id": manifest.bundle_id,
        "clock_mhz": cost.clock_mhz,
        "fpga_part": "xc7z020clg484-1",
        "engines": engine_rows,
        "graphs": graphs,
        "stem": manifest.stem,
        "head": manifest.head,
        "blocks": blocks,
        "total": total,
        "budget": BUDGET,
        "utilization": {k: total[k] / BUDGET[k] for k in RESOURCES},
        "fits": all(total[k] <= BUDGET[k] for k in RESOURCES),
        "cost_model": asdict(cost),
    }
    report["throughput"] = throughput(report, cost, skip_fractions)
    report["dsp_bound"] = dsp_bound(manifest.full_macs, cost.clock_mhz)
    return report


def throughput(
    report: dict, cost: CostModel, skip_fractions: tuple[float, ...] = SKIP_FRACTIONS
) -> dict[str, Any]:
    """Images/s of the full network per batch of ``cost.batch_images``, for each skip fraction
    (illustrative pattern: :func:`skip_pattern`), by ``cost``'s schedule and, beside it, one
    call at a time (sequential); and without batching (batch of 1, sequential)."""
    n, blocks = cost.batch_images, len(report["blocks"])
    one_at_a_time = replace(cost, schedule="sequential")
    rows = {}
    for f in skip_fractions:
        executed = skip_pattern(blocks, n, f)
        parts = cost.batch_parts(report, executed)
        sequential = one_at_a_time.batch_parts(report, executed)["total"]
        rows[f"skip_{round(100 * f)}pct"] = {
            "skip_fraction": f,
            "images_per_s": n * cost.clock_mhz * 1e6 / parts["total"],
            "cycles_per_image": parts["total"] / n,
            "images_per_s_sequential": n * cost.clock_mhz * 1e6 / sequential,
            **{k: parts[k] for k in parts},
        }
    single = one_at_a_time.batch_parts(report, np.ones((1, blocks), dtype=bool))
    return {
        "batch_images": n,
        "schedule": cost.schedule,
        "dma_group": cost.dma_group,
        "by_skip": rows,
        "unbatched_no_skip": {
            "images_per_s": cost.clock_mhz * 1e6 / single["total"],
            "cycles_per_image": single["total"],
            "weight_load": single["weight_load"],
        },
    }


DSP_MACS_PER_CYCLE = 4
"""Multiplies one DSP48E1 does per cycle at W4A4 in FINN's MVAU_rtl (its DSP estimate assumes 4
for 4-bit operands, 2 for 8-bit: ../HARDWARE.md, "MVAU_rtl on 7-series")."""


def dsp_bound(macs_per_image: int, clock_mhz: float, dsps: int = BUDGET["DSP"]) -> dict:
    """The part's compute ceiling: every DSP busy every cycle at :data:`DSP_MACS_PER_CYCLE`."""
    rate = dsps * DSP_MACS_PER_CYCLE * clock_mhz * 1e6
    return {
        "dsps": dsps,
        "macs_per_dsp_per_cycle": DSP_MACS_PER_CYCLE,
        "macs_per_image": int(macs_per_image),
        "images_per_s": rate / macs_per_image if macs_per_image else None,
    }


def report_table(report: dict) -> str:
    """Markdown: per engine cycles and resources, the total against the budget, images/s."""
    lines = [
        "| engine | serves | built from | cycles/image | LUT | BRAM18 | DSP | weight words |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in report["engines"].items():
        lines.append(
            f"| {name} | {len(e['serves'])} | {e['built_from']} | {e['cycles']:,} | "
            f"{e['LUT']:,.0f} | {e['BRAM_18K']:,.0f} | {e['DSP']:,.0f} | {e['weight_words']:,} |"
        )
    t, u = report["total"], report["utilization"]
    lines.append(
        f"| **total** | {sum(len(e['serves']) for e in report['engines'].values())} | | | "
        f"{t['LUT']:,.0f} ({100 * u['LUT']:.0f}%) | {t['BRAM_18K']:,.0f} "
        f"({100 * u['BRAM_18K']:.0f}%) | {t['DSP']:,.0f} ({100 * u['DSP']:.0f}%) | |"
    )
    verdict = "fit" if report["fits"] else "do NOT fit"
    lines.append(
        f"\nBy FINN's estimate of their HW layers alone ({report['kind']}) the engines {verdict}"
        " the XC7Z020; what FINN leaves out (DMAs, interconnect, the LUTs of MVAU_rtl and HLS"
        " layers) is in the completed budget, which decides whether one overlay fits.\n"
    )
    tp = report["throughput"]
    schedule = tp.get("schedule", "sequential")
    lines.append(
        f"| skipped blocks | images/s at {report['clock_mhz']:g} MHz (batch "
        f"{tp['batch_images']}, {schedule}) | cycles/image | busiest | images/s one call at a "
        "time |"
    )
    lines.append("|---|---|---|---|---|")
    for row in tp["by_skip"].values():
        sequential = row.get("images_per_s_sequential", row["images_per_s"])
        lines.append(
            f"| {100 * row['skip_fraction']:.0f}% | {row['images_per_s']:,.1f} | "
            f"{row['cycles_per_image']:,.0f} | {row.get('busiest') or '-'} | "
            f"{sequential:,.1f} |"
        )
    lines.append(
        f"| 0%, no batching | {tp['unbatched_no_skip']['images_per_s']:,.1f} | "
        f"{tp['unbatched_no_skip']['cycles_per_image']:,.0f} | - | "
        f"{tp['unbatched_no_skip']['images_per_s']:,.1f} |"
    )
    arm = report.get("cost_model", {}).get("arm_work")
    if arm:
        zero = next(iter(tp["by_skip"].values()))
        ms = tp["batch_images"] * report["clock_mhz"] * 1e3  # cycles of a batch -> ms an image
        lines.append(
            f"\nThe ARM's own work is charged per image and call ({arm['source']}): an engine "
            f"call {arm['call_s'] * 1e6:.0f} us, per image of it "
            f"{arm['call_image_s'] * 1e6:.1f} us + per activation byte "
            + ", ".join(f"{v * 1e9:.2f} ns ({k})" for k, v in arm.get("byte_s_by_kind", {}).items())
            + f" (another kind {arm['call_byte_s'] * 1e9:.2f} ns), the LSTM step "
            f"{arm.get('lstm_call_s', 0.0) * 1e6:.0f} us per layer-gate call + "
            f"{arm['lstm_image_s'] * 1e6:.1f} us per image, the stem input "
            f"{arm['image_s'] * 1e6:.1f} us per image, the executor "
            f"{arm.get('block_call_s', 0.0) * 1e6:.0f} us per block and batch + "
            f"{arm['block_image_s'] * 1e6:.1f} us per image and block; at "
            f"{tp['batch_images']} images a batch and {100 * zero['skip_fraction']:.0f}% skipped "
            "that is "
            f"{zero['arm_work'] / ms:,.2f} ms an image, of {zero['resources']['ARM'] / ms:,.2f} "
            "ms of ARM time with the calls' starts and the weight writes."
        )
    bound = report.get("dsp_bound")
    if bound and bound["images_per_s"]:
        lines.append(
            f"\nDSP-bound limit of the part: {bound['dsps']} DSPs x "
            f"{bound['macs_per_dsp_per_cycle']} MACs a cycle (W4A4) at "
            f"{report['clock_mhz']:g} MHz over {bound['macs_per_image']:,} MACs an image = "
            f"{bound['images_per_s']:,.0f} images/s."
        )
    return "\n".join(lines) + "\n"


def write_block_weights(
    bundle: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: Any = None,
) -> dict[str, Any]:
    """FINN front end of every block of every shared engine; write their runtime weights.

    For each engine with runtime weights (:func:`fpga.architecture.plan_engines`), every graph
    it serves is built with the engine's configuration (``out_dir/<engine>/<graph>``; the
    representative's build is the engine's own, ``out_dir/<engine>``), checked against the
    representative (:func:`fpga.weights.check_same_structure`) and written to
    ``out_dir/runtime_weights/<graph>.npz``. Returns the manifest, also written as
    ``out_dir/runtime_weights/runtime_weights.json``.
    """
    config = config or SharedConfig()
    loaded = load_bundle(bundle)
    manifest = loaded.manifest
    out = Path(out_dir)
    folder = out / WEIGHTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    engines_out: dict[str, Any] = {}
    blocks_out: dict[str, Any] = {}
    for engine in plan_engines(manifest):
        if not engine.runtime_weights:
            continue

        rep_dir = out / engine.name
        rep_dir.mkdir(parents=True, exist_ok=True)

        def build(graph: str, where: Path, engine=engine, rep_dir=rep_dir) -> Any:
            spec = manifest.graphs[graph]
            frontend = FrontendConfig(
                fpga_part=config.fpga_part,
                clk_period_ns=config.clk_period_ns,
                target_fps=config.fps_for(engine),
                folding_config_file=_folding_file(rep_dir, engine),
                runtime_writeable_weights=True,
            )
            source = loaded.path / engine_file(spec)
            parent = to_hw(source, spec.inputs[0].datatype, where, frontend)
            return dataflow_model(parent)

        if (rep_dir / "hw_parent.onnx").is_file():
            from qonnx.core.modelwrapper import ModelWrapper  # qonnx: loaded only when this runs

            rep = dataflow_model(ModelWrapper(str(rep_dir / "hw_parent.onnx")))
        else:
            rep = build(engine.representative, rep_dir)
        rep_memories = runtime_memories(rep)
        if not rep_memories:
            raise GraphError(
                f"engine {engine.name!r} serves {len(engine.graphs)} graphs but its FINN build "
                "has no runtime-writeable memory; build it with runtime_writeable_weights"
            )
        engines_out[engine.name] = {
            "representative": engine.representative,
            "memories": [
                {"node": m.node, "op_type": m.op_type, "index": m.index, "words": m.words.size}
                for m in rep_memories
            ],
        }
        for graph in engine.graphs:
            if graph == engine.representative:
                hw, memories = rep, rep_memories
            else:
                log.info("runtime weights of %s (engine %s)", graph, engine.name)
                hw = build(graph, rep_dir / graph)
                check_same_structure(rep, hw, graph)
                memories = runtime_memories(hw)
            blocks_out[graph] = {"engine": engine.name, **save_block(folder, graph, memories)}
    result = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "bundle_id": manifest.bundle_id,
        "layout": "FINN decoupled_runtime (make_weight_file), uint32 little-endian",
        "engines": engines_out,
        "blocks": blocks_out,
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(result, indent=1) + "\n")
    return result


def build_shared(
    bundle: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: SharedConfig | None = None,
    cost: CostModel | None = None,
) -> dict[str, Any]:
    """Build every engine of the bundle and every block's runtime weights
    (``out_dir/runtime_weights/``), write ``out_dir/hw_report.json``, return the report."""
    config = config or SharedConfig()
    cost = cost or CostModel(clock_mhz=1e3 / config.clk_period_ns)

    loaded, engines, built = build_engines(bundle, out_dir, config)
    report = shared_report(loaded.manifest, engines, built, cost)
    report["config"] = asdict(config)
    # every block of a shared engine: its FINN build checked against the representative's and
    # its weights and thresholds as AXI-lite words (fpga/weights.py, for fpga/board/weights.py)
    weights = write_block_weights(bundle, out_dir, config)
    for graph, entry in weights["blocks"].items():
        if entry["words"] != report["graphs"][graph]["weight_words"]:
            raise GraphError(
                f"{graph}: {entry['words']} runtime weight words written, the engine's memory "
                f"holds {report['graphs'][graph]['weight_words']}; report this as a bug"
            )
    report["runtime_weights"] = {
        "manifest": f"{WEIGHTS_DIR}/{MANIFEST_FILE}",
        "words": {g: e["words"] for g, e in weights["blocks"].items()},
    }
    # FINN's estimate leaves out DMAs, interconnect, FIFOs, MVAU_rtl and HLS LUTs: the
    # completed budget of one overlay of these engines (fpga/bitstream/budget.py)
    groups: dict[str, list[str]] = {}
    for e in engines:  # the engines behind each IODMA pair (CostModel.dma_group)
        row = {**report["engines"][e.name], "engine": e.name}
        groups.setdefault(dma_group_of(row, cost.dma_group), []).append(e.name)
    report["dma_groups"] = groups
    report["resource_budget"] = overlay_budget(
        Path(out_dir), [e.name for e in engines], config.clk_period_ns, list(groups.values())
    )
    path = hwreport.write(Path(out_dir) / REPORT_FILE, report)
    log.info("shared-engine report -> %s", path)
    return report


# -- an overlay of the shared engines ---------------------------------------------------------


@dataclass
class SharedOverlay:
    """What :func:`prepare_shared_overlay` made (paths inside its build folder)."""

    out: Path
    bundle_id: str
    model: Path
    engines: dict[str, tuple[int, int, int | None]]
    """Engine name -> its input, output and mask input in the collapsed model (DMA indices)."""
    deploy: Path
    report: dict[str, Any]
    finn_nodes: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per shared engine, per memory: the name FINN gives that layer in the merged overlay (to
    find its runtime weight file in the real build's driver, :func:`fpga.bitstream.flow.
    adopt_windows`)."""


def _graph_parent(out: Path, engine: Engine, graph: str) -> Any:
    """The dataflow parent of ``graph``'s own FINN build: the engine's for its representative,
    ``out/<engine>/<graph>`` for the other graphs of a shared engine (their float tails)."""
    from qonnx.core.modelwrapper import ModelWrapper  # qonnx: loaded only when this runs

    folder = out / engine.name if graph == engine.representative else out / engine.name / graph
    return ModelWrapper(str(folder / PARENT_FILE))


def axilite_key(partition: int, layer: int) -> str:
    """The ``ip_dict`` key of a runtime-writeable layer's AXI-lite interface, in FINN's
    numbering (its driver's ``<partition>_<layer>_<node>.dat``)."""
    return f"StreamingDataflowPartition_{partition}/s_axilite_{layer}"


def engine_words(weights: dict[str, Any], folder: Path, engine: str) -> list[tuple[str, Any]]:
    """(node, words) of each memory of ``engine``, in its build's order, from its
    representative's ``.npz`` (``runtime_weights.json`` in ``folder``)."""
    entry = weights["engines"][engine]
    with np.load(folder / weights["blocks"][entry["representative"]]["file"]) as npz:
        return [(m["node"], npz[m["node"]]) for m in entry["memories"]]


def axilite_windows(
    indices: dict[str, tuple[int, int, int | None]],
    files: list,
    weights: dict[str, Any],
    folder: Path,
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """Per shared engine, per runtime-writeable memory (FINN node name of the engine's build):
    the key of its AXI-lite interface in the overlay's ``ip_dict``, and the name FINN gave
    that layer in the merged overlay.

    ``files`` are the memories FINN's driver generator numbered for the merged overlay
    (:func:`fpga.bitstream.overlay.predict_driver`), each with the overlay inputs its
    partition is fed from; ``indices`` each engine's inputs (:func:`collapse`). A file belongs
    to the engine whose codes' input feeds it; the engine's files, in partition and layer
    order, line up with its memories in ``weights`` (``runtime_weights.json`` in ``folder``),
    and each pair is checked word for word against the representative's ``.npz`` (FINN's layout
    of the same values), so a misassigned or differently laid out memory stops the build. The
    board checks the keys against the bitstream's ``ip_dict`` when it opens the overlay."""
    windows: dict[str, dict[str, str]] = {}
    names: dict[str, dict[str, str]] = {}
    claimed = 0
    for engine, (codes_input, _, _) in indices.items():
        if engine not in weights["engines"]:
            continue
        mine = sorted((f for f in files if codes_input in f[4]), key=lambda f: f[:2])
        claimed += len(mine)
        ours = engine_words(weights, folder, engine)
        if len(mine) != len(ours):
            raise GraphError(
                f"engine {engine!r} has {len(ours)} runtime-writeable memories, FINN's driver "
                f"numbers {len(mine)} in its part of the overlay; report this as a bug"
            )
        for (node, words), (sdp, layer, finn_node, finn_words, _) in zip(ours, mine, strict=True):
            if not np.array_equal(words, finn_words):
                raise GraphError(
                    f"memory {node!r} of engine {engine!r} does not match FINN's runtime weight "
                    f"file of {finn_node!r} (partition {sdp}, layer {layer}); report this as a bug"
                )
            windows.setdefault(engine, {})[node] = axilite_key(sdp, layer)
            names.setdefault(engine, {})[node] = finn_node
    if claimed != len(files):
        raise GraphError(
            f"FINN's driver numbers {len(files)} runtime-writeable memories in the overlay, the "
            f"shared engines claim {claimed}; report this as a bug"
        )
    return windows, names


def refuse_per_graph_options(given: dict[str, Any], target_fps: int | None) -> str | None:
    """The one line that refuses the per-graph options ``given`` (flag -> value, refused when
    set) and ``--target-fps 0`` with ``--design shared``, or None: its engines are folded by
    :class:`SharedConfig`."""
    unused = [flag for flag, value in given.items() if value]
    if target_fps == 0:
        unused.append("--target-fps 0")
    if not unused:
        return None
    return (
        f"{', '.join(unused)} does not apply to --design shared (its engines are folded by "
        "SharedConfig: --target-fps sets the blocks' target)"
    )


def prepare_shared_overlay(
    bundle: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: SharedConfig | None = None,
    *,
    gates: bool = True,
    report: dict[str, Any] | None = None,
    batch_size: int | None = None,
) -> SharedOverlay:
    """One overlay of the bundle's shared engines, as far as it goes without Vivado.

    The engines and every block's runtime weights come from :func:`build_shared` (or
    ``report``, what it returned for this ``out_dir``). Their HW partitions are merged as
    :func:`fpga.bitstream.overlay.prepare_overlay` merges a bundle's graphs (FINN's multi-DNN
    ``Parallel`` merge, an IODMA pair per engine and one per mask map), so graphs of one engine
    share its DMA pair. ``gates=False`` leaves the quantized gates' engines out: they run on
    the ARM from their numpy programs (FINN's shell gives every engine its own IODMAs, and a
    ResNet-14's 17 engines with its 5 mask maps would need 39 AXI masters; the
    :class:`CostModel`'s shared IODMA pairs behind AXI-Stream switches are not built here).

    ``out_dir/deploy/`` is the board's overlay folder: ``accelerators.json`` (every graph
    with its engine's DMA pair, its own float tail and, for a shared engine, the engine's
    name), the engines' AXI-lite windows (:func:`axilite_windows`), ``runtime_weights/`` of
    the engines in the overlay, and FINN's driver settings predicted without Vivado.
    """
    from qonnx.core.modelwrapper import ModelWrapper  # qonnx: loaded only when this runs

    config = config or SharedConfig()
    loaded = load_bundle(bundle)
    manifest = loaded.manifest
    engines = [e for e in plan_engines(manifest) if gates or e.kind not in GATE_KINDS]
    masks = sum(any(manifest.graphs[g].masked for g in e.graphs) for e in engines)
    interconnect_plan(2 * len(engines) + masks)  # refuse before any work
    out = Path(out_dir).resolve()
    if report is None:
        report = build_shared(loaded.path, out, config)
    parents = {e.name: ModelWrapper(str(out / e.name / PARENT_FILE)) for e in engines}
    model, indices = collapse(parents)
    model.save(str(out / OVERLAY_MODEL))
    settings, files = predict_driver(model, config.clk_period_ns)

    deploy = out / DEPLOY_DIR
    weights = json.loads((out / WEIGHTS_DIR / MANIFEST_FILE).read_text())
    kept = {e.name for e in engines}
    weights["engines"] = {k: v for k, v in weights["engines"].items() if k in kept}
    weights["blocks"] = {k: v for k, v in weights["blocks"].items() if v["engine"] in kept}
    windows, finn_nodes = axilite_windows(indices, files, weights, out / WEIGHTS_DIR)
    weights_out = deploy / WEIGHTS_DIR
    shutil.rmtree(weights_out, ignore_errors=True)
    if windows:  # the weights of this overlay's shared engines, for the board to write
        weights_out.mkdir(parents=True)
        for entry in weights["blocks"].values():
            shutil.copy2(out / WEIGHTS_DIR / entry["file"], weights_out / entry["file"])
        (weights_out / MANIFEST_FILE).write_text(json.dumps(weights, indent=1) + "\n")
    graphs = [(engine, graph) for engine in engines for graph in engine.graphs]
    write_deploy(
        deploy,
        loaded.bundle_id,
        {graph: _graph_parent(out, engine, graph) for engine, graph in graphs},
        {graph: indices[engine.name] for engine, graph in graphs},
        settings,
        PREDICTED,
        batch_size or DEFAULT_BATCH,
        shared={graph: engine.name for engine, graph in graphs},
        runtime_weights=f"{WEIGHTS_DIR}/{MANIFEST_FILE}" if windows else None,
        axilite=windows,
        pixels=frozenset({manifest.stem} & {g for _, g in graphs} if config.stem_pixels else ()),
    )
    log.info(
        "overlay of %d shared engines (%d graphs) prepared in %s", len(engines), len(graphs), out
    )
    return SharedOverlay(
        out, loaded.bundle_id, out / OVERLAY_MODEL, indices, deploy, report, finn_nodes
    )

"""One overlay per bundle: every compiled bundle graph as its own engine in one bitstream.

A board holds one bitstream at a time, and the executor calls the stem, every block, the
shortcuts and the head of one image in turn, so all of a bundle's engines must sit in the same
overlay. FINN's multi-DNN flow (finn-plus, ``finn.transformation.multi_dnn``, mode
``Parallel``) does that merge: each graph's HW model becomes a submodel of a
``MultiDNNWrapper``, ``MultiDNNWrapperExposeIO`` makes its input and output top-level inputs and
outputs of the wrapper, and ``CollapseModels`` inlines them into one model with one input and one
output per engine. FINN's back end then gives every input and output its own IODMA
(``InsertIODMA``), so engine ``k`` is the DMA pair ``idma_names[k]``/``odma_names[k]`` of the
driver's ``io_shape_dict``; the board (:mod:`fpga.board.accel`) starts only the pair it needs.

Build folder::

    <out>/graphs/<graph>/    the FINN front end of each graph (fpga.finn.to_hw)
    <out>/overlay.onnx       the collapsed model: the back end's input
    <out>/estimates.json     FINN's estimates per engine and for the whole overlay, and the
                             completed resource budget (fpga.bitstream.budget)
    <out>/deploy/            what is copied to the board:
        accelerators.json    bundle id, bitfile, settings, per graph its DMA pair and tail
        tails/<graph>.json   the float tail of each graph (fpga.board.accel.FloatTail)
        driver/settings.json FINN's driver settings (io_shape_dict: shapes, datatypes, DMAs)
        bitfile/             finn-accel.bit and .hwh (only with Vivado: fpga.bitstream.flow)

Without Vivado, :func:`predict_driver_settings` runs the part of FINN's ``ZynqBuild`` that needs
no Vivado (IODMA and width-converter insertion, specialization, partitioning) and FINN's own
driver generator (``MakePYNQDriver``) on the result, naming the IODMAs as ``MakeZYNQProject``
does; ``accelerators.json`` then says ``settings_origin: predicted`` and the board refuses to
open such an overlay. The Vivado flow replaces it with the settings of the real build.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.manifest import load_bundle
from fpga.bitstream.budget import LABEL, resource_budget
from fpga.bitstream.zedboard import (
    ZEDBOARD,
    InterconnectError,
    interconnect_plan,
    register_zedboard,
)
from fpga.board.accel import (
    DEFAULT_BATCH,
    EngineSpec,
    FloatTail,
    OverlaySpec,
)
from fpga.finn.errors import BuildError, GraphError
from fpga.finn.frontend import (
    PARENT_FILE,
    PARTITION_OP,
    XC7Z020,
    FrontendConfig,
    build_bundle,
    dataflow_model,
    estimate,
)

log = logging.getLogger(__name__)

OVERLAY_MODEL = "overlay.onnx"
ESTIMATES_FILE = "estimates.json"
ESTIMATES_FORMAT = "ddi-fpga-overlay-estimates"
ESTIMATES_VERSION = 1
DEPLOY_DIR = "deploy"
SETTINGS = "driver/settings.json"
BITFILE = "bitfile/finn-accel.bit"
PREDICTED = "predicted"
FINN_BUILD = "finn build"


@dataclass
class OverlayConfig:
    """How the overlay's engines are built (saved in ``estimates.json``)."""

    clk_period_ns: float = 10.0
    target_fps: int | None = 1000
    balance_macs: bool = True
    """Fold every engine to the MAC rate of the largest one at ``target_fps``
    (``FrontendConfig.balance_macs``: an engine's time then follows its MACs)."""
    pixel_words: bool = True
    """Every engine's boundary layers take and give one pixel a DMA word
    (``FrontendConfig.pixel_words``), so engines pass packed activations on as they are."""
    stem_pixels: bool = True
    """The stem's engine takes the images' uint8 pixels and thresholds them to its input codes
    (``FrontendConfig.stem_pixels``): the ARM does nothing of the preprocessing."""
    folding_config_file: str | None = None
    graphs: list[str] | None = None
    """Only these bundle graphs (default: :func:`engine_graphs`, every graph with a QONNX file
    and every quantized gate's FINN graph)."""
    batch_size: int = DEFAULT_BATCH
    """Images per DMA transfer on the board (``accelerators.json``)."""

    def frontend(self) -> FrontendConfig:
        """The front end's configuration of every engine of this overlay."""
        return FrontendConfig(
            clk_period_ns=self.clk_period_ns,
            target_fps=self.target_fps,
            balance_macs=self.balance_macs,
            pixel_words=self.pixel_words,
            stem_pixels=self.stem_pixels,
            folding_config_file=self.folding_config_file,
        )


def estimate_engines(
    bundle: str | os.PathLike, out_dir: str | os.PathLike, config: OverlayConfig | None = None
) -> dict[str, dict[str, Any]]:
    """FINN's front end and estimates of the engines an overlay of ``bundle`` has
    (``config.graphs``, default :func:`engine_graphs`), built as :func:`prepare_overlay`
    builds them, into ``out_dir`` (``fpga.finn.frontend.build_bundle``)."""
    config = config or OverlayConfig()
    graphs = config.graphs or engine_graphs(load_bundle(bundle, verify=False).manifest)
    return build_bundle(bundle, out_dir, config.frontend(), graphs=graphs)


def engine_graphs(manifest: Any) -> list[str]:
    """The graphs of a bundle that get an engine: the backbone's (a QONNX file) and the
    quantized gates' PL parts (a ``finn`` graph: the channel gate with its keep bits, the
    layer gate's pool and 1x1 conv); float gates have neither and stay on the ARM."""
    return [
        n
        for n, g in manifest.graphs.items()
        if g.qonnx is not None or getattr(g, "finn", None) is not None
    ]


Engine = tuple[int, int, "int | None"]
"""An engine's indices in the collapsed model: input, output, and a masked block's mask input."""


def collapse(parents: dict[str, Any]) -> tuple[Any, dict[str, Engine]]:
    """The HW partitions of ``parents`` (graph -> dataflow parent of :func:`fpga.finn.to_hw`)
    as one model, by FINN's multi-DNN ``Parallel`` merge; and per graph the index of its input
    and output in that model (= its IODMA pair in the driver's ``io_shape_dict``), and of its
    mask map's input for a masked block (the 1-bit input, else None)."""
    from finn.transformation.multi_dnn.multi_dnn_wrapper import MultiDNNWrapper
    from finn.transformation.multi_dnn.multi_dnn_wrapper_transformations import (
        CollapseModels,
        MultiDNNWrapperExposeIO,
    )
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    submodels, expected = {}, {}
    for name, parent in parents.items():
        partitions = parent.get_nodes_by_op_type(PARTITION_OP)
        if len(partitions) != 1:
            raise GraphError(f"graph {name!r} has {len(partitions)} dataflow partitions, not 1")
        submodels[name] = getCustomOp(partitions[0]).get_nodeattr("model")
        hw = ModelWrapper(submodels[name])
        names = [t.name for t in hw.graph.input]
        masks = [n for n in names if hw.get_tensor_datatype(n).bitwidth() == 1]
        if len(hw.graph.output) != 1 or len(names) - len(masks) != 1 or len(masks) > 1:
            raise GraphError(
                f"graph {name!r}: its HW partition has inputs {names!r} and "
                f"{len(hw.graph.output)} outputs; an engine has one input (and a masked "
                "block's 1-bit mask map) and one output"
            )
        (x,) = [n for n in names if n not in masks]
        # MultiDNNWrapperExposeIO names the top-level tensors <submodel>_<tensor>
        expected[name] = (
            f"{name}_{x}",
            f"{name}_{hw.graph.output[0].name}",
            f"{name}_{masks[0]}" if masks else None,
        )
    model = (
        MultiDNNWrapper(submodels)
        .multi_model.transform(MultiDNNWrapperExposeIO())
        .transform(CollapseModels())
    )
    inputs = [t.name for t in model.graph.input]
    outputs = [t.name for t in model.graph.output]
    engines = {}
    for name, (i, o, m) in expected.items():
        if i not in inputs or o not in outputs or (m is not None and m not in inputs):
            raise BuildError(f"FINN's multi-DNN merge lost an input or the output of {name!r}")
        engines[name] = (inputs.index(i), outputs.index(o), None if m is None else inputs.index(m))
    return model, engines


def overlay_budget(
    out: Path,
    folders: list[str],
    clk_period_ns: float,
    dma_groups: list[list[str]] | None = None,
) -> dict[str, Any]:
    """The budget of one overlay of the engines built in ``out/<folder>`` (each a front-end
    build with ``hw_parent.onnx``), merged by FINN's multi-DNN flow as ``python -m fpga overlay``
    merges them. ``dma_groups``: engines that share one IODMA pair (and one mask-map DMA if
    any of them is masked) through AXI-Stream switches; None, a pair per engine (FINN's
    shell). A design whose IODMAs exceed the shell's SmartConnects gets its one-line refusal as
    the verdict (``fits: false``)."""
    from qonnx.core.modelwrapper import ModelWrapper

    parents = {name: ModelWrapper(str(out / name / PARENT_FILE)) for name in folders}
    masked = {name for name, p in parents.items() if len(p.graph.input) > 1}  # mask-map DMAs
    groups = dma_groups if dma_groups is not None else [[name] for name in folders]
    if sorted(n for g in groups for n in g) != sorted(folders):
        raise ValueError(f"dma_groups {groups!r} do not cover the engines {folders!r} once each")
    pairs, mask_dmas, switch_ports = len(groups), 0, 0
    for g in groups:
        masks = sum(n in masked for n in g)
        mask_dmas += masks > 0
        if len(g) > 1:  # a shared pair: a switch port per engine on the input, output and
            # (masked) mask streams, and each switch's own port to its DMA
            switch_ports += 2 * (len(g) + 1) + (masks + 1 if masks else 0)
    try:
        interconnect_plan(2 * pairs + mask_dmas)
    except InterconnectError as exc:
        return {"label": LABEL, "fits": False, "fits_with_margin": False, "verdict": str(exc)}
    model, _ = collapse(parents)
    whole = estimate(model, clk_period_ns)
    return resource_budget(
        model,
        whole["total"],
        pairs,
        whole["fpga_part"],
        mask_dmas=mask_dmas,
        switch_ports=switch_ports,
    )


def predict_driver_settings(model: Any, clk_period_ns: float) -> dict[str, Any]:
    """FINN's ``settings.json`` for ``model`` (a collapsed overlay), made without Vivado
    (:func:`predict_driver`)."""
    return predict_driver(model, clk_period_ns)[0]


RuntimeWeightFile = tuple[int, int, str, "Any", frozenset]
"""One runtime-writeable memory as FINN's driver generator writes it: (partition index, layer
index within the partition, node name, its ``uint32`` words, the indices of the overlay's
inputs its partition is fed from: the engine it belongs to; empty when not known)."""


def predict_driver(
    model: Any, clk_period_ns: float
) -> tuple[dict[str, Any], list[RuntimeWeightFile]]:
    """FINN's ``settings.json`` for ``model`` (a collapsed overlay), made without Vivado, and
    the runtime-writeable memories its driver generator numbered (``runtime_weights/
    <partition>_<layer>_<node>.dat``: FINN's AXI-lite numbering, in file order).

    Runs ``ZynqBuild``'s preparation (``InsertIODMA`` at the ZedBoard's 64-bit HP port,
    ``InsertDWC``, ``SpecializeLayers``, ``Floorplan``, ``CreateDataflowPartition``), names each
    partition as ``MakeZYNQProject`` does (in node order: a partition fed by no other is
    ``idma<k>``, one feeding none is ``odma<k>``), then FINN's ``MakePYNQDriver``.
    """
    from finn.transformation.fpgadataflow.create_dataflow_partition import (
        CreateDataflowPartition,
    )
    from finn.transformation.fpgadataflow.floorplan import Floorplan
    from finn.transformation.fpgadataflow.insert_dwc import InsertDWC
    from finn.transformation.fpgadataflow.insert_iodma import InsertIODMA
    from finn.transformation.fpgadataflow.make_driver import MakePYNQDriver
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from finn.util.basic import pynq_native_port_width, pynq_part_map
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp
    from qonnx.transformation.general import GiveReadableTensorNames, GiveUniqueNodeNames
    from qonnx.transformation.infer_data_layouts import InferDataLayouts

    register_zedboard()
    model = ModelWrapper(copy.deepcopy(model.model)).transform(InferDataLayouts())
    for step in (
        InsertIODMA(pynq_native_port_width[ZEDBOARD]),
        InsertDWC(),
        SpecializeLayers(pynq_part_map[ZEDBOARD]),
        Floorplan(),
        CreateDataflowPartition(),
    ):
        model = model.transform(step).transform(GiveUniqueNodeNames())
        model = model.transform(GiveReadableTensorNames())
    counts = {"idma": 0, "odma": 0}
    for node in model.graph.node:
        fed = bool(node.input) and model.find_producer(node.input[0]) is not None
        feeds = bool(model.find_consumers(node.output[0]))
        kind = "idma" if not fed else "odma" if not feeds else None
        name = node.name
        if kind is not None:
            name = f"{kind}{counts[kind]}"
            counts[kind] += 1
        getCustomOp(node).set_nodeattr("instance_name", name)
    model = model.transform(
        MakePYNQDriver("zynq-iodma", "FINNDMAOverlay", clk_period_ns=clk_period_ns, board=ZEDBOARD)
    )
    folder = Path(model.get_metadata_prop("pynq_driver_dir"))
    try:
        settings = json.loads((folder / "settings.json").read_text())
        fed = partition_inputs(model)
        files = [
            (*f[:4], fed.get(f[0], frozenset()))
            for f in runtime_weight_files(folder / "runtime_weights")
        ]
        return settings, files
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def partition_inputs(model: Any) -> dict[int, frozenset]:
    """Per partition (its index among the nodes of a partitioned model, as FINN's driver numbers
    it), the indices of the model's inputs it is fed from, through the partitions upstream. The
    engines of a merged overlay are disjoint, so this names the engine a partition belongs to
    (its codes' input, and a masked block's mask input). FINN's ``SortGraph`` orders the
    merged engines' nodes level by level, interleaving them, so the numbering alone cannot."""
    inputs = {t.name: k for k, t in enumerate(model.graph.input)}
    nodes = list(model.graph.node)
    memo: dict[int, frozenset] = {}

    def fed(k: int) -> frozenset:
        if k not in memo:
            memo[k] = frozenset()  # a cycle cannot occur in a dataflow model; be safe
            found: set[int] = set()
            for name in nodes[k].input:
                if name in inputs:
                    found.add(inputs[name])
                producer = model.find_producer(name)
                if producer is not None:
                    found |= fed(nodes.index(producer))
            memo[k] = frozenset(found)
        return memo[k]

    return {k: fed(k) for k in range(len(nodes))}


def runtime_weight_files(folder: Path) -> list[RuntimeWeightFile]:
    """FINN's driver's runtime weight files in ``folder`` (``<partition>_<layer>_<node>.dat``,
    one hex word a line), in partition and layer order (their inputs not known: empty); none if
    the folder does not exist."""
    files = []
    for path in Path(folder).glob("*.dat"):
        sdp, layer, node = path.stem.split("_", 2)
        words = np.array([int(w, 16) for w in path.read_text().split()], dtype=np.uint32)
        files.append((int(sdp), int(layer), node, words, frozenset()))
    return sorted(files, key=lambda f: (f[0], f[1]))


def write_deploy(
    out: Path,
    bundle_id: str,
    parents: dict[str, Any],
    engines: dict[str, Engine],
    settings: dict[str, Any],
    origin: str,
    batch_size: int = DEFAULT_BATCH,
    *,
    shared: dict[str, str] | None = None,
    runtime_weights: str | None = None,
    axilite: dict[str, dict[str, str]] | None = None,
    pixels: frozenset[str] = frozenset(),
) -> OverlaySpec:
    """``out`` as the board's overlay folder: the tails, FINN's settings, ``accelerators.json``.

    ``parents`` and ``engines`` are per graph (its dataflow parent, for its float tail; its
    engine's DMA indices). An overlay of shared engines also names each graph's engine
    (``shared``: graph -> engine), its runtime weights manifest and the engines' AXI-lite
    windows (:mod:`fpga.architecture`). ``pixels``: the graphs whose engines take the images'
    uint8 pixels (the stem built with ``stem_pixels``)."""
    (out / "tails").mkdir(parents=True, exist_ok=True)
    specs = {}
    for name, parent in parents.items():
        FloatTail.from_parent(parent).save(out / "tails" / f"{name}.json")
        i, o, m = engines[name]
        engine = None if shared is None else shared[name]
        specs[name] = EngineSpec(
            i, o, tail=f"tails/{name}.json", mask_input=m, engine=engine, pixels=name in pixels
        )
    spec = OverlaySpec(
        root=out,
        bundle_id=bundle_id,
        bitfile=BITFILE,
        settings=SETTINGS,
        settings_origin=origin,
        engines=specs,
        batch_size=batch_size,
        runtime_weights=runtime_weights,
        axilite=axilite or {},
    )
    return adopt_settings(spec, settings, origin)


def adopt_settings(spec: OverlaySpec, settings: dict[str, Any], origin: str) -> OverlaySpec:
    """Write FINN's ``settings`` into ``spec``'s folder and ``accelerators.json`` with their
    ``origin``; check them as the board will."""
    path = spec.root / spec.settings
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")
    spec = dataclasses.replace(spec, settings_origin=origin)
    spec.save()
    spec.driver_information()  # the board's checks, now
    return spec


@dataclass
class OverlayBuild:
    """What :func:`prepare_overlay` made (all paths inside its build folder)."""

    out: Path
    bundle_id: str
    model: Path
    engines: dict[str, Engine]
    deploy: Path
    estimates: dict[str, Any]


def prepare_overlay(
    bundle: str | os.PathLike, out_dir: str | os.PathLike, config: OverlayConfig | None = None
) -> OverlayBuild:
    """Front end of every selected graph, their merge, estimates, and the deploy folder with
    predicted driver settings (everything of the overlay that needs no Vivado)."""
    from qonnx.core.modelwrapper import ModelWrapper

    config = config or OverlayConfig()
    loaded = load_bundle(bundle)
    selected = config.graphs or engine_graphs(loaded.manifest)
    masked = sum(loaded.manifest.graphs[n].masked for n in selected)
    interconnect_plan(2 * len(selected) + masked)  # refuse before any work: IODMAs per engine
    out = Path(out_dir).resolve()
    per_graph = build_bundle(loaded.path, out / "graphs", config.frontend(), graphs=selected)
    parents = {name: ModelWrapper(str(out / "graphs" / name / PARENT_FILE)) for name in per_graph}
    model, engines = collapse(parents)
    model.save(str(out / OVERLAY_MODEL))
    whole = estimate(model, config.clk_period_ns)
    document = {
        "format": ESTIMATES_FORMAT,
        "version": ESTIMATES_VERSION,
        "bundle_id": loaded.bundle_id,
        "kind": "FINN estimate (no synthesis)",
        "config": asdict(config),
        "overlay": {k: whole[k] for k in ("fpga_part", "clk_period_ns", "total")},
        "share": {k: whole["total"][k] / XC7Z020[k] for k in XC7Z020},
        "fits": all(whole["total"][k] <= XC7Z020[k] for k in XC7Z020),
        "engines": {
            name: {
                "input": i,
                "output": o,
                **({} if m is None else {"mask_input": m}),
                **{k: per_graph[name][k] for k in _SUMMARY},
            }
            for name, (i, o, m) in engines.items()
        },
    }
    document["resource_budget"] = resource_budget(
        dataflow_model(model),
        whole["total"],
        len(engines),
        whole["fpga_part"],
        mask_dmas=sum(m is not None for _, _, m in engines.values()),
    )
    (out / ESTIMATES_FILE).write_text(json.dumps(document, indent=1) + "\n")
    deploy = out / DEPLOY_DIR
    settings = predict_driver_settings(model, config.clk_period_ns)
    pixels = frozenset({loaded.manifest.stem} & set(parents) if config.stem_pixels else ())
    write_deploy(
        deploy,
        loaded.bundle_id,
        parents,
        engines,
        settings,
        PREDICTED,
        config.batch_size,
        pixels=pixels,
    )
    log.info("overlay of %d engines prepared in %s", len(engines), out)
    return OverlayBuild(out, loaded.bundle_id, out / OVERLAY_MODEL, engines, deploy, document)


_SUMMARY = ("total", "max_cycles", "throughput_fps", "latency_ms")

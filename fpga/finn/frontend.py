"""The FINN front end: a bundle graph -> FINN HW layers, folded, with FINN's estimates.

Everything before synthesis, runnable without Vivado::

    from export.manifest import load_bundle
    from fpga.finn import FrontendConfig, estimate, execute, to_hw

    bundle = load_bundle("bundle8")
    spec = bundle.manifest.graphs["block0"]
    hw = to_hw(bundle.path / spec.qonnx.file, spec.inputs[0].datatype, "build/block0")
    y = execute(hw, codes)  # (1, C, H, W) integer input codes -> the graph's output
    report = estimate(hw, clk_period_ns=10.0)

:func:`to_hw` runs FINN's own builder (``build_dataflow_cfg``) over
:data:`fpga.finn.steps.FRONTEND_STEPS` and returns the *dataflow parent*: the whole graph, with
the HW part as one ``StreamingDataflowPartition`` node (executed node by node in Python) and the
float ends outside it: the input transpose to NHWC, and the output scale (the classifier's bias
too) with the transpose back. Its input is the integer codes of the bundle's input, NCHW; its
output is the bundle graph's output. The build folder keeps FINN's layout: every step's model
in ``intermediate_models/``, reports in ``report/``, the log in ``build_dataflow.log``, plus
``frontend_config.json`` and ``hw_parent.onnx`` (the returned model).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from qonnx.core.modelwrapper import ModelWrapper

import formats
from export.manifest import load_bundle
from fpga.finn import compat
from fpga.finn.errors import BuildError, FinnFrontendError, GraphError
from fpga.hwreport import XC7Z020

log = logging.getLogger(__name__)

ZEDBOARD_PART = "xc7z020clg484-1"
"""The ZedBoard's Zynq-7020 (FINN knows no ZedBoard board; Pynq-Z1/Z2 are clg400)."""
PARENT_FILE = "hw_parent.onnx"
CONFIG_FILE = "frontend_config.json"
PARTITION_OP = "StreamingDataflowPartition"


@dataclass
class FrontendConfig:
    """How the front end builds one graph; saved as ``frontend_config.json`` in the build."""

    fpga_part: str = ZEDBOARD_PART
    """Xilinx part the HW layers are specialized and estimated for."""
    clk_period_ns: float = 10.0
    """Target clock period (100 MHz): sets the cycle budget of ``target_fps``."""
    target_fps: int | None = 1000
    """Frames per second that FINN's ``SetFolding`` aims for; None: leave PE = SIMD = 1."""
    balance_macs: bool = False
    """:func:`build_bundle` folds the graph with the most MACs to ``target_fps`` and every other
    graph to that graph's MAC rate (``target_fps`` times the MAC ratio, :func:`balanced_fps`),
    so that an engine's time follows its MACs: a small engine (the stem, a gate, a shortcut)
    folded to the same frame rate as a block would take as long as the block, and skipping a
    block would save less time than its share of the MACs. FINN caps what a layer cannot
    reach (every PE and SIMD unrolled)."""
    pixel_words: bool = False
    """After folding, the boundary layers of every engine take and give one pixel a stream word
    (``fpga.finn.steps.step_pixel_words``): neighbouring engines' DMA buffers then have the
    same bytes, which the board passes on without repacking."""
    stem_pixels: bool = False
    """The stem's engine takes the images' uint8 pixels: its first layer thresholds them to
    the stem's input codes by the manifest's preprocessing table
    (``fpga.finn.transforms.PixelThresholds``), so the ARM sends the images' bytes as they are.
    :func:`build_bundle` gives the stem its table; other graphs are built as they are."""
    folding_config_file: str | None = None
    """FINN folding JSON (PE, SIMD, ram_style per layer), applied after ``target_fps``."""
    runtime_writeable_weights: bool = False
    """Weights and thresholds written over AXI-lite at run time (a shared engine): every MVAU
    gets ``mem_mode="internal_decoupled"`` and, with every Thresholding layer,
    ``runtime_writeable_weights=1`` before bit-width minimization, so datatypes stay wide
    enough for every block the engine serves (``step_runtime_writeable_weights``)."""
    mvau_wwidth_max: int = 36
    """Widest weight stream of an MVAU (bits per cycle) that automatic folding may choose."""
    start_step: str | None = None
    """Resume an earlier build in the same folder from this step (FINN's ``start_step``)."""
    stop_step: str | None = None
    """Stop after this step; :func:`to_hw` then returns that step's model, not the parent."""

    def dataflow_config(self, out_dir: Path, steps: list | None = None) -> Any:
        """FINN's ``DataflowBuildConfig`` for a build into ``out_dir`` (estimates only)."""
        from finn.builder.build_dataflow_config import (
            DataflowBuildConfig,
            DataflowOutputType,
            LogLevel,
        )

        # finn: loaded only when this runs
        from fpga.finn.steps import FRONTEND_STEPS, step_pixel_words

        if steps is None:
            steps = list(FRONTEND_STEPS)
            if self.pixel_words:
                steps.insert(steps.index("step_apply_folding_config") + 1, step_pixel_words)
        return DataflowBuildConfig(
            output_dir=str(out_dir),
            steps=list(steps),
            fpga_part=self.fpga_part,
            synth_clk_period_ns=self.clk_period_ns,
            target_fps=self.target_fps,
            folding_config_file=(
                None if self.folding_config_file is None else Path(self.folding_config_file)
            ),
            mvau_wwidth_max=self.mvau_wwidth_max,
            standalone_thresholds=True,
            generate_outputs=[DataflowOutputType.ESTIMATE_REPORTS],
            save_intermediate_models=True,
            console_log_level=LogLevel.NONE,
            start_step=self.start_step,
            stop_step=self.stop_step,
        )


def _datatype_parts(input_datatype: Any) -> tuple[str, float | None]:
    """(name, scale) of a manifest ``DataType`` or of a plain name such as ``"UINT4"``."""
    if isinstance(input_datatype, str):
        return input_datatype, None
    name, scale = getattr(input_datatype, "name", None), getattr(input_datatype, "scale", None)
    if not isinstance(name, str):
        raise GraphError(
            f"input datatype {input_datatype!r} is neither a name like 'UINT4' nor a manifest "
            "DataType; pass GraphSpec.inputs[0].datatype from the bundle manifest"
        )
    return name, scale


def to_hw(
    qonnx_path: str | os.PathLike,
    input_datatype: Any,
    out_dir: str | os.PathLike | None = None,
    config: FrontendConfig | None = None,
    pixel_table: Any = None,
) -> ModelWrapper:
    """Build a bundle's QONNX graph into folded, specialized FINN HW layers; return the parent.

    ``input_datatype`` is the graph input's datatype from the manifest (an
    ``export.manifest.DataType``, or its name): the graph's leading quantizer must match it.
    ``pixel_table``: the stem's preprocessing table (``preprocess.lut``); the engine then takes
    uint8 pixels and thresholds them to those codes (``FrontendConfig.stem_pixels``).
    Without ``out_dir`` the build goes to a new temporary folder that is kept, because the
    returned model refers to the partition's file in it (the log names the folder).
    Raises :class:`GraphError` for a graph the front end cannot map and :class:`BuildError`
    when FINN's builder fails.
    """
    config = config or FrontendConfig()
    qonnx_path = Path(qonnx_path)
    if not qonnx_path.is_file():
        raise GraphError(f"QONNX graph {str(qonnx_path)!r} does not exist; export a bundle first")
    if out_dir is None:
        out = Path(tempfile.mkdtemp(prefix=f"finn-{qonnx_path.name.split('.')[0]}-"))
        log.info("FINN build of %s in %s", qonnx_path.name, out)
    else:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    name, scale = _datatype_parts(input_datatype)

    compat.prepare_finn(out / "finn_tmp")
    from finn.builder.build_dataflow import build_dataflow_cfg

    # finn: loaded only when this runs
    from fpga.finn.steps import (
        INPUT_DATATYPE_KEY,
        INPUT_SCALE_KEY,
        PIXEL_TABLE_KEY,
        RUNTIME_WEIGHTS_KEY,
    )

    model = ModelWrapper(str(qonnx_path))
    _check_input(model, name, scale)  # the same check as the first step, before FINN's logging
    model.set_metadata_prop(INPUT_DATATYPE_KEY, name)
    if scale is not None:
        model.set_metadata_prop(INPUT_SCALE_KEY, repr(float(scale)))
    if config.runtime_writeable_weights:
        model.set_metadata_prop(RUNTIME_WEIGHTS_KEY, "1")
    if pixel_table is not None:
        model.set_metadata_prop(PIXEL_TABLE_KEY, json.dumps([list(r) for r in pixel_table]))
    source = out / "input.qonnx.onnx"
    model.save(str(source))
    (out / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=1) + "\n")

    cfg = config.dataflow_config(out)
    logfile = out / "build_dataflow.log"
    with compat.builder_session():
        try:
            status = build_dataflow_cfg(str(source), cfg)
        except FinnFrontendError:
            raise
        except Exception as exc:  # FINN re-raises inside pytest, returns -1 elsewhere
            raise BuildError(
                f"FINN build of {qonnx_path.name!r} failed: {type(exc).__name__}: {exc}; "
                f"see {str(logfile)!r}"
            ) from exc
    if status != 0:
        raise BuildError(
            f"FINN build of {qonnx_path.name!r} failed: {build_failure(logfile)}; "
            f"see {str(logfile)!r}"
        )
    steps = [s if isinstance(s, str) else s.__name__ for s in cfg.steps]
    if config.stop_step is not None and config.stop_step != steps[-1]:
        return ModelWrapper(
            str(cfg.get_intermediate_models_directory() / f"{config.stop_step}.onnx")
        )
    parent = _hw_parent(out, cfg)
    python_model(parent)  # writes the Python-executable partition into the build now
    return parent


def _check_input(model: ModelWrapper, datatype: str, scale: float | None) -> None:
    """Raise :class:`GraphError` now if the graph's input quantizer does not match."""
    from qonnx.util.cleanup import cleanup_model

    # onnx: loaded only when this runs
    from fpga.finn.transforms import IntegerInput

    cleanup_model(ModelWrapper(copy.deepcopy(model.model))).transform(IntegerInput(datatype, scale))


def build_failure(logfile: Path) -> str:
    """The step and error message that FINN's builder logged for a failed build."""
    step, error = "?", "no error in the log"
    if logfile.is_file():
        for line in logfile.read_text(errors="replace").splitlines():
            if "Running step: " in line:
                step = line.split("Running step: ", 1)[1].split(" [", 1)[0]
            elif "ERROR:" in line and error == "no error in the log":
                error = line.split("ERROR:", 1)[1].strip()
    return f"step {step!r}: {error}"


def _hw_parent(out: Path, cfg: Any) -> ModelWrapper:
    """The dataflow parent with its partition node pointing at the final (folded) HW model."""
    from qonnx.custom_op.registry import getCustomOp

    models = cfg.get_intermediate_models_directory()
    last = cfg.steps[-1]
    last = last if isinstance(last, str) else last.__name__
    parent = ModelWrapper(str(models / "dataflow_parent.onnx"))
    partitions = parent.get_nodes_by_op_type(PARTITION_OP)
    if len(partitions) != 1:
        raise GraphError(f"FINN made {len(partitions)} dataflow partitions, not 1, in {out}")
    getCustomOp(partitions[0]).set_nodeattr("model", str(models / f"{last}.onnx"))
    parent.save(str(out / PARENT_FILE))
    return parent


def dataflow_model(model: ModelWrapper) -> ModelWrapper:
    """The HW partition of a parent from :func:`to_hw` (a partition model is returned as is)."""
    from qonnx.custom_op.registry import getCustomOp

    partitions = model.get_nodes_by_op_type(PARTITION_OP)
    if not partitions:
        return model
    if len(partitions) != 1:
        raise GraphError(f"model has {len(partitions)} dataflow partitions; expected 1")
    return ModelWrapper(getCustomOp(partitions[0]).get_nodeattr("model"))


def python_model(model: ModelWrapper) -> ModelWrapper:
    """A copy of a parent from :func:`to_hw` whose partition FINN executes in Python.

    The partition's specialized layers are mapped back onto their HW layers
    (:class:`~fpga.finn.transforms.HWLayersForPython`), written once beside the partition's
    file as ``<name>.python.onnx``.
    """
    from qonnx.custom_op.registry import getCustomOp

    # onnx: loaded only when this runs
    from fpga.finn.transforms import HWLayersForPython

    compat.prepare_finn()
    parent = ModelWrapper(copy.deepcopy(model.model))
    if not parent.get_nodes_by_op_type(PARTITION_OP):  # a partition itself
        return parent.transform(HWLayersForPython())
    for node in parent.get_nodes_by_op_type(PARTITION_OP):
        partition = getCustomOp(node)
        source = Path(partition.get_nodeattr("model"))
        target = source.with_suffix(".python.onnx")
        if not target.is_file() or target.stat().st_mtime < source.stat().st_mtime:
            ModelWrapper(str(source)).transform(HWLayersForPython()).save(str(target))
        partition.set_nodeattr("model", str(target))
    return parent


def execute(
    model: ModelWrapper, codes: np.ndarray, mask_map: np.ndarray | None = None
) -> np.ndarray:
    """FINN's Python execution of ``model`` (a parent from :func:`to_hw`) on one input.

    ``codes`` is (1, C, H, W): the bundle graph's input divided by its scale, integers. A masked
    block also takes ``mask_map``, (1, C_out, H_out, W_out) of 0/1 (the manifest's
    ``qonnx_inputs``). The partition runs node by node in Python (:func:`python_model`).
    Inputs and outputs are taken by position: QONNX cleanup renamed them (``global_in``), and
    ``execute_onnx`` given a stale name silently runs on zeros.
    """
    from qonnx.core.onnx_exec import execute_onnx

    feeds = [np.asarray(codes, dtype=np.float32)]
    if mask_map is not None:
        feeds.append(np.asarray(mask_map, dtype=np.float32))
    names = [t.name for t in model.graph.input]
    if len(feeds) != len(names):
        raise GraphError(
            f"the graph takes {len(names)} inputs (codes, and a masked block's mask map); "
            f"got {len(feeds)}"
        )
    for what, value, name in zip(("input codes", "mask map"), feeds, names, strict=False):
        expected = tuple(model.get_tensor_shape(name))
        if value.shape != expected:
            raise GraphError(f"{what} have shape {value.shape!r}; the graph takes {expected!r}")
        if not np.array_equal(value, np.round(value)):
            raise GraphError(f"{what} are not integers; pass the input divided by its scale")
    if mask_map is not None and not np.all((feeds[1] == 0) | (feeds[1] == 1)):
        raise GraphError("the mask map is not 0/1")
    runnable = python_model(model)
    inputs = [t.name for t in runnable.graph.input]
    result = execute_onnx(runnable, dict(zip(inputs, feeds, strict=True)))
    return result[runnable.graph.output[0].name]


def estimate(
    model: ModelWrapper, clk_period_ns: float = 10.0, fpga_part: str = ZEDBOARD_PART
) -> dict[str, Any]:
    """FINN's analytical estimates of the HW partition: cycles per layer, LUT/BRAM/DSP.

    Returns ``layers`` (per node: ``op_type``, ``cycles``, ``LUT``, ``BRAM_18K``, ``URAM``,
    ``DSP``), ``total`` resources, the slowest layer (``max_cycles``, ``max_cycles_node``), the
    ``critical_path_cycles`` of one image through the pipeline, and from ``clk_period_ns``
    ``throughput_fps`` and ``latency_ms``. FINN reports 0 LUT for HLS layers and DSP-based
    MVAUs, so the LUT total undercounts until synthesis.
    """
    from functools import partial

    from finn.analysis.fpgadataflow.dataflow_performance import dataflow_performance
    from finn.analysis.fpgadataflow.exp_cycles_per_layer import exp_cycles_per_layer
    from finn.analysis.fpgadataflow.res_estimation import res_estimation
    from finn.transformation.fpgadataflow.annotate_cycles import AnnotateCycles

    compat.prepare_finn()
    hw = dataflow_model(model)
    cycles = hw.analysis(exp_cycles_per_layer)
    resources = hw.analysis(partial(res_estimation, fpgapart=fpga_part))
    perf = hw.transform(AnnotateCycles()).analysis(dataflow_performance)
    kinds = ("LUT", "BRAM_18K", "URAM", "DSP")
    layers = {
        n.name: {
            "op_type": n.op_type,
            "cycles": int(cycles[n.name]),
            **{k: float(resources[n.name].get(k, 0)) for k in kinds},
        }
        for n in hw.graph.node
    }
    max_cycles = int(perf["max_cycles"])
    critical = int(perf["critical_path_cycles"])
    from qonnx.custom_op.registry import getCustomOp

    first, last = getCustomOp(hw.graph.node[0]), getCustomOp(hw.graph.node[-1])
    words = {  # values per DMA word at the engine's boundaries (its buffers' packing)
        "input_values_per_word": int(first.get_folded_input_shape()[-1]),
        "input_channels": int(first.get_normal_input_shape()[-1]),
        "output_values_per_word": int(last.get_folded_output_shape()[-1]),
        "output_channels": int(last.get_normal_output_shape()[-1]),
    }
    return {
        "fpga_part": fpga_part,
        "clk_period_ns": float(clk_period_ns),
        "layers": layers,
        "total": {k: float(sum(layer[k] for layer in layers.values())) for k in kinds},
        "max_cycles": max_cycles,
        "max_cycles_node": str(perf["max_cycles_node_name"]),
        "critical_path_cycles": critical,
        "throughput_fps": 1e9 / (max_cycles * clk_period_ns),
        "latency_ms": critical * clk_period_ns / 1e6,
        **words,
    }


ESTIMATES_FILE = "estimates.json"
ESTIMATES_FORMAT = "ddi-fpga-finn-estimates"
ESTIMATES_VERSION = 1


def _finn_file(spec: Any) -> str | None:
    """The QONNX file FINN builds for a graph: a backbone graph's ``qonnx``, or a quantized
    gate's ``finn`` graph (built only when named: the default set is the backbone's)."""
    if spec.qonnx is not None:
        return spec.qonnx.file
    finn = getattr(spec, "finn", None)
    return None if finn is None else finn.file


MAX_BALANCED_FPS = 10_000_000
"""The highest frame rate :func:`balanced_fps` asks for (a 10-cycle budget at 100 MHz: beyond
any layer's full unfolding)."""


def balanced_fps(macs: dict[str, int], target_fps: int | None) -> dict[str, int | None]:
    """Per graph, the frame rate at which it computes as many MACs per second as the graph with
    the most MACs at ``target_fps`` (``FrontendConfig.balance_macs``); None stays None."""
    if target_fps is None or not macs:
        return {name: target_fps for name in macs}
    most = max(macs.values())
    return {
        name: min(MAX_BALANCED_FPS, math.ceil(target_fps * most / max(n, 1)))
        for name, n in macs.items()
    }


def build_bundle(
    bundle: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: FrontendConfig | None = None,
    graphs: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Build every graph of a bundle that has a QONNX graph (or ``graphs``) into ``out_dir``.

    ``graphs`` may also name the gates of a bundle with quantized gates (their FINN graphs).

    Each graph gets its own FINN build folder ``out_dir/<graph>``; the estimates of all of them
    are written to ``out_dir/estimates.json`` and returned, by graph name.
    """
    from tqdm.auto import tqdm

    config = config or FrontendConfig()
    loaded = load_bundle(bundle)
    manifest = loaded.manifest
    specs = manifest.graphs
    names = [n for n, g in specs.items() if g.qonnx is not None] if graphs is None else graphs
    for name in names:
        if name not in specs or _finn_file(specs[name]) is None:
            raise GraphError(
                f"bundle {str(loaded.path)!r} has no QONNX graph {name!r}; FINN compiles "
                f"{sorted(n for n, g in specs.items() if _finn_file(g) is not None)!r}"
            )
    out = Path(out_dir)
    fps = balanced_fps({n: specs[n].macs for n in names}, config.target_fps)
    results: dict[str, dict[str, Any]] = {}
    for name in tqdm(names, desc="FINN front end", unit="graph"):
        spec = specs[name]
        source = loaded.path / _finn_file(spec)
        graph_config = replace(config, target_fps=fps[name]) if config.balance_macs else config
        table = manifest.preprocess.lut if config.stem_pixels and name == manifest.stem else None
        parent = to_hw(source, spec.inputs[0].datatype, out / name, graph_config, table)
        results[name] = estimate(parent, config.clk_period_ns, config.fpga_part)
    document = {
        "format": ESTIMATES_FORMAT,
        "version": ESTIMATES_VERSION,
        "bundle_id": loaded.bundle_id,
        "config": asdict(config),
        "graphs": results,
    }
    (out / ESTIMATES_FILE).write_text(json.dumps(document, indent=1) + "\n")
    return results


def read_estimates(path: str | os.PathLike) -> dict[str, Any]:
    """The ``estimates.json`` that :func:`build_bundle` wrote; :class:`BuildError` in one line
    for a file of another format or version (rebuild it)."""
    path = Path(path)
    try:
        return formats.read(
            path,
            ESTIMATES_FORMAT,
            ESTIMATES_VERSION,
            error=BuildError,
            remedy="rebuild it (python -m fpga estimate BUNDLE --out DIR)",
            what="FINN estimates",
        )
    except FileNotFoundError as exc:
        raise BuildError(f"cannot read FINN estimates {str(path)!r}: {exc}") from None


def estimate_table(estimates: dict[str, dict[str, Any]]) -> str:
    """A Markdown table of :func:`build_bundle`'s estimates, one row per graph, and the sum."""
    head = (
        "| graph | HW layers | max cycles | bottleneck | fps | latency ms | LUT | BRAM18 | DSP |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for name, e in estimates.items():
        t = e["total"]
        rows.append(
            f"| {name} | {len(e['layers'])} | {e['max_cycles']:,} | {e['max_cycles_node']} | "
            f"{e['throughput_fps']:,.0f} | {e['latency_ms']:.3f} | {t['LUT']:,.0f} | "
            f"{t['BRAM_18K']:,.0f} | {t['DSP']:,.0f} |"
        )
    total = {k: sum(e["total"][k] for e in estimates.values()) for k in XC7Z020}
    share = ", ".join(f"{k} {100 * total[k] / XC7Z020[k]:.1f}%" for k in XC7Z020)
    rows.append(
        f"| all (one engine each) | {sum(len(e['layers']) for e in estimates.values())} | | | | | "
        f"{total['LUT']:,.0f} | {total['BRAM_18K']:,.0f} | {total['DSP']:,.0f} |"
    )
    return head + "\n".join(rows) + f"\n\nShare of the XC7Z020: {share}.\n"

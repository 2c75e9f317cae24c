"""Tests of the shared-engine design (fpga/architecture.py).

- The engine plan: every graph FINN compiles is served by exactly one engine; a stage's
  non-downsampling blocks share one engine with runtime-writeable weights.
- FINN's front end on an untrained quantized ResNet-14 (it has every block shape of ResNet-74:
  two blocks per stage), through ``python -m fpga estimate --design shared``: the report fits,
  the shared engines' MVAUs and thresholds are runtime-writeable in the FINN model, and the
  emulator's timing reads the report for every graph of the bundle.
- The recorded ResNet-74 report (measurements/fpga/resnet74-shared-engines.json): all 36 blocks
  mapped, the totals fit, throughput rises with skipping.
- The cost model's arithmetic on a synthetic report (no FINN).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fpga.architecture import BUDGET, ArmWork, CostModel, plan_engines, skip_pattern
from fpga.board.accel import OverlaySpec
from fpga.finn.errors import GraphError
from tests.conftest import needs_cifar10

ROOT = Path(__file__).resolve().parents[2]
RECORDED = ROOT / "measurements" / "fpga" / "resnet74-shared-engines.json"


@pytest.fixture(scope="module")
def r14_build(r14, tmp_path_factory):
    """``python -m fpga estimate BUNDLE --out DIR --design shared`` on the ResNet-14 bundle."""
    pytest.importorskip("finn", reason="finn-plus not installed (make setup installs it)")
    from fpga.__main__ import main

    out = tmp_path_factory.mktemp("r14-engines")
    assert main(["estimate", str(r14.path), "--out", str(out), "--design", "shared"]) == 0
    return out, json.loads((out / "hw_report.json").read_text())


def test_plan_covers_every_graph_once(r14):
    manifest = r14.manifest
    engines = plan_engines(manifest)
    served = [g for e in engines for g in e.graphs]
    # the backbone's QONNX graphs and the quantized gates' FINN graphs
    compiled = [n for n, g in manifest.graphs.items() if g.qonnx is not None or g.finn]
    assert sorted(served) == sorted(compiled) and len(served) == len(set(served))
    by_graph = {g: e for e in engines for g in e.graphs}
    # ResNet-14: stage blocks 0,1 | 2 (down), 3 | 4 (down), 5
    assert by_graph["block0"] is by_graph["block1"] and by_graph["block0"].runtime_weights
    assert by_graph["block2"] is not by_graph["block3"]
    assert not by_graph["block2"].runtime_weights and not by_graph["block3"].runtime_weights
    assert by_graph["shortcut2"].kind == "shortcut" and by_graph["stem"].name == "stem"
    backbone = [e for e in engines if not e.kind.endswith("_gate")]
    assert len(backbone) == 9
    # gates group by their block input and FINN output: a layer gate engine per block input
    # shape (blocks 0-2, 3-4, 5), a channel gate engine per (input, kept channels) pair
    assert manifest.graphs["layer_gate0"].finn is not None  # quantized gates (the default)
    assert by_graph["layer_gate0"] is by_graph["layer_gate2"] is not by_graph["layer_gate3"]
    assert by_graph["channel_gate0"] is by_graph["channel_gate1"]
    assert by_graph["channel_gate1"] is not by_graph["channel_gate2"]
    assert by_graph["layer_gate0"].runtime_weights
    assert len(engines) - len(backbone) == 3 + 5


def test_shared_build_fits_and_has_writeable_weights(r14_build):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    out, report = r14_build
    assert report["kind"] == "FINN estimates, no synthesis" and report["fits"]
    assert all(report["total"][k] <= BUDGET[k] for k in BUDGET)
    shared = [
        n
        for n, e in report["engines"].items()
        if e["runtime_writeable_weights"] and not e["kind"].endswith("_gate")
    ]
    assert shared == ["block_16to16_s1_32px"]
    hw = ModelWrapper(
        str(out / shared[0] / "intermediate_models" / "step_generate_estimate_reports.onnx")
    )
    writeable = [
        (n.op_type, getCustomOp(n).get_nodeattr("runtime_writeable_weights"))
        for n in hw.graph.node
        if n.op_type in ("MVAU_rtl", "Thresholding_rtl")
    ]
    assert len(writeable) == 5 and all(flag == 1 for _, flag in writeable)
    engine = report["engines"][shared[0]]
    assert (
        engine["weight_words"] > 0 and engine["external_mem_mode"]["BRAM_18K"] < engine["BRAM_18K"]
    )
    assert report["graphs"]["block1"]["weight_load_cycles"] > 0
    # every graph of a shared engine got its own weight file, as many words as the engine's
    # memories: the stage's blocks, and the gates of the shared gate engines
    served = {
        g: e["weight_words"]
        for e in report["engines"].values()
        if e["runtime_writeable_weights"]
        for g in e["serves"]
    }
    assert report["runtime_weights"]["words"] == served
    assert served["block0"] == served["block1"] == engine["weight_words"]
    assert {"layer_gate0", "channel_gate0"} <= set(served)
    assert (out / report["runtime_weights"]["manifest"]).is_file()
    assert report["graphs"]["block2"]["weight_load_cycles"] == 0  # fixed weights
    # the completed budget of one overlay of the engines: an IODMA pair per DMA group (a stage's
    # backbone engines, a stage's gate engines) behind AXI-Stream switches, and a mask DMA for
    # a group with a block engine. One pair per engine would be more AXI masters than two
    # SmartConnects take (ResNet-14 with its gates' engines: 39)
    budget = report["resource_budget"]
    groups = report["dma_groups"]
    assert sorted(n for g in groups.values() for n in g) == sorted(report["engines"])
    masks = sum(any(report["engines"][n]["kind"] == "block" for n in g) for g in groups.values())
    assert masks >= 1
    masters = 2 * len(groups) + masks
    assert budget["interconnect"]["axi_masters"] == masters <= 32
    per_engine = 2 * len(report["engines"]) + sum(
        e["kind"] == "block" for e in report["engines"].values()
    )
    assert per_engine > 32
    iodma = {line["item"]: line["count"] for line in budget["lines"]}
    assert iodma["IODMA_hls"] == masters and iodma["axis_switch_port"] > 0
    assert budget["verdict"].startswith("fits" if budget["fits"] else "does not fit")
    assert budget["label"].startswith("modelled")


def _mvaus(path: Path) -> dict[str, Any]:
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    model = ModelWrapper(str(path))
    return {n.name: getCustomOp(n) for n in model.graph.node if n.op_type.startswith("MVAU")}


def test_mvaus_are_refolded_for_dsps_and_whole_weight_lines(r14_build):
    """``step_refold_mvaus`` against FINN's own folding of the same build: per MVAU no more
    DSPs (FINN's estimate), no more padded AXI-lite words, more BRAM only for fewer DSPs, and
    no slower than the partition's bottleneck before it; the shared block engine's 288-bit
    lines (PE 8, SIMD 9 at 4 bits, written as 512) become whole 256-bit lines with fewer
    DSPs."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    from fpga.finn.steps import padded_weight_words

    out, report = r14_build
    part = report["fpga_part"]
    changed = {}
    for engine in report["engines"]:
        steps = out / engine / "intermediate_models"
        before = _mvaus(steps / "step_apply_folding_config.onnx")
        after = _mvaus(steps / "step_refold_mvaus.onnx")
        assert before.keys() == after.keys()
        folded = ModelWrapper(str(steps / "step_apply_folding_config.onnx"))
        bottleneck = max(getCustomOp(n).get_exp_cycles() for n in folded.graph.node)
        for name, old in before.items():
            new = after[name]
            assert new.dsp_estimation(part) <= old.dsp_estimation(part), (engine, name)
            # BRAM grows only where DSPs fall (deeper memories of narrower lines)
            assert new.bram_estimation(part) <= old.bram_estimation(part) or (
                new.dsp_estimation(part) < old.dsp_estimation(part)
            ), (engine, name)
            assert new.get_exp_cycles() <= max(bottleneck, old.get_exp_cycles()), (engine, name)
            if new.get_nodeattr("runtime_writeable_weights") == 1:
                shape = [new.get_nodeattr(k) for k in ("MH", "MW")]
                bits = new.get_input_datatype(1).bitwidth()
                words = [
                    padded_weight_words(
                        *shape, op.get_nodeattr("PE"), op.get_nodeattr("SIMD"), bits
                    )
                    for op in (old, new)
                ]
                assert words[1] <= words[0] or new.dsp_estimation(part) < old.dsp_estimation(part)
            fold = [(op.get_nodeattr("PE"), op.get_nodeattr("SIMD")) for op in (old, new)]
            if fold[0] != fold[1]:
                changed[(engine, name)] = fold
    stage = {k: v for k, v in changed.items() if k[0] == "block_16to16_s1_32px"}
    assert stage and all(new[0] * new[1] == 64 for _, new in stage.values()), changed


def test_padded_weight_words_are_the_words_the_weight_file_holds():
    from fpga.finn.steps import padded_weight_words
    from fpga.weights import mvau_words

    rng = np.random.default_rng(0)
    for mw, mh, pe, simd, bits in [
        (144, 16, 8, 9, 4),
        (144, 16, 8, 8, 4),
        (16, 10, 2, 1, 8),
        (576, 64, 4, 16, 4),
    ]:
        weights = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=(mw, mh))
        assert len(mvau_words(weights, bits, pe, simd)) == padded_weight_words(
            mh, mw, pe, simd, bits
        )
    # ResNet-74's third-stage MVAU: 288-bit lines padded to 512, against whole 256-bit lines
    assert padded_weight_words(64, 576, 8, 9, 4) == 8192
    assert padded_weight_words(64, 576, 8, 8, 4) == 4608


@pytest.fixture(scope="module")
def r14_overlay(r14, tmp_path_factory):
    """``python -m fpga overlay BUNDLE --design shared --gates-on-arm``: the ResNet-14's
    shared engines as one overlay (its backbone: the quantized gates run on the ARM, see
    prepare_shared_overlay), on the emulated PL."""
    from fpga.__main__ import main
    from fpga.architecture import SharedOverlay
    from fpga.emulator.overlay import EmulatedDmaOverlay

    out = tmp_path_factory.mktemp("r14-shared-overlay")
    argv = ["overlay", str(r14.path), "--out", str(out), "--design", "shared", "--gates-on-arm"]
    assert main([*argv, "--batch", "8"]) == 0
    spec = OverlaySpec.load(out / "deploy")
    engines = {e.engine: (e.input, e.output, e.mask_input) for e in spec.engines.values()}
    report = json.loads((out / "hw_report.json").read_text())
    build = SharedOverlay(out, r14.bundle_id, out / "overlay.onnx", engines, out / "deploy", report)
    return build, EmulatedDmaOverlay.from_build(out)


def test_a_shared_overlay_lists_each_graph_on_its_engine(r14, r14_overlay):
    build, _ = r14_overlay
    spec = OverlaySpec.load(build.deploy)
    b0, b1 = spec.engines["block0"], spec.engines["block1"]
    assert (b0.input, b0.output, b0.mask_input) == (b1.input, b1.output, b1.mask_input)
    assert b0.tail != b1.tail  # each block's own float tail (its own output scale)
    assert spec.shared("block0") == spec.shared("block1") == "block_16to16_s1_32px"
    assert spec.shared("block2") is None and spec.shared("stem") is None
    assert not any(g.startswith(("layer_gate", "channel_gate")) for g in spec.engines)
    windows = spec.axilite["block_16to16_s1_32px"]
    assert len(windows) == 5 and len(set(windows.values())) == 5  # 2 MVAUs, 3 thresholds
    assert all(k.startswith("StreamingDataflowPartition_") for k in windows.values())
    weights = json.loads((spec.root / spec.runtime_weights).read_text())
    assert set(weights["engines"]) == set(spec.axilite)
    assert {"block0", "block1"} <= set(weights["blocks"])
    masters = 2 * len(build.engines) + sum(m is not None for _, _, m in build.engines.values())
    assert masters <= 32


@needs_cifar10
def test_the_board_loads_each_blocks_weights_into_its_shared_engine(r14, r14_overlay):
    """iadi and full mode through FinnBackend over the emulated PL: block0 and block1 run on
    one engine, the board's WeightLoader writing each one's words through the overlay's
    AXI-lite windows (and a flush frame) before it runs; predictions, executed blocks and
    logits equal the onnxruntime executor's. The same overlay without the loader computes
    both blocks with the weights the engine last held, and the logits differ."""
    from export.executor import BundleExecutor
    from fpga.board.accel import load_overlay
    from fpga.board.runtime import FinnBackend
    from train.data import load_cifar10

    build, emulated = r14_overlay
    bundle = r14
    images = load_cifar10("test").images[:6]
    overlay, accelerators = load_overlay(bundle, build.deploy, overlay=emulated)
    engine = emulated.engines[accelerators["block0"].accelerator.input][1]
    loads = accelerators["block0"].prepare.func.__self__
    backend = FinnBackend(bundle, accelerators, overlay=overlay, threads=1)
    for mode in ("full", "iadi"):
        before = loads.loads
        got = BundleExecutor(bundle, backend=backend).run(images, mode=mode)
        want = BundleExecutor(bundle, threads=1).run(images, mode=mode)
        np.testing.assert_array_equal(got.predictions, want.predictions)
        np.testing.assert_array_equal(got.executed, want.executed)
        np.testing.assert_allclose(got.logits, want.logits, rtol=0, atol=1e-5)
        ran = int(got.executed[:, :2].any(axis=0).sum())
        assert loads.loads - before >= ran - 1  # a load per block call, but the one held
    # the first load writes block0's words over the bitstream's (the same: the engine was built
    # from block0); every later one changes the memories, and its flush frame took the stale
    # frame that follows a change (no image of the run was stale: the outputs equal the twin's)
    assert loads.loads >= 3 and engine.weight_changes == loads.loads - 1
    assert engine.stale_frames == engine.weight_changes
    for accelerator in accelerators.values():
        accelerator.prepare = None
    stale = BundleExecutor(bundle, backend=backend).run(images, mode="full")
    want = BundleExecutor(bundle, threads=1).run(images, mode="full")
    assert not np.allclose(stale.logits, want.logits, atol=1e-3)


def test_the_real_builds_numbering_replaces_the_predicted_windows(r14_overlay, caplog):
    """After synthesis the flow reads FINN's driver's runtime weight files (without the graph:
    by the names FINN gave the layers, as predicted) and takes each memory's key from them
    (fpga.bitstream.flow.adopt_windows): the same numbering keeps the windows; another is
    adopted (and logged); a file whose words are not the memory's stops the build."""
    from qonnx.core.modelwrapper import ModelWrapper

    from fpga.architecture import axilite_windows
    from fpga.bitstream.flow import adopt_windows
    from fpga.bitstream.overlay import predict_driver
    from fpga.finn.errors import BuildError

    build, _ = r14_overlay
    spec = OverlaySpec.load(build.deploy)
    _, files = predict_driver(ModelWrapper(str(build.model)), 10.0)
    weights = json.loads((spec.root / spec.runtime_weights).read_text())
    folder = (spec.root / spec.runtime_weights).parent
    windows, names = axilite_windows(build.engines, files, weights, folder)
    assert windows == spec.axilite
    real = [(*f[:4], frozenset()) for f in files]  # the driver's files say nothing of the graph
    assert adopt_windows(spec, names, real).axilite == spec.axilite
    moved = [(sdp + 1, *rest) for sdp, *rest in real]
    adopted = adopt_windows(spec, names, moved).axilite
    key = next(iter(adopted["block_16to16_s1_32px"].values()))
    assert key.startswith(f"StreamingDataflowPartition_{files[0][0] + 1}/")
    assert "otherwise than predicted" in caplog.text
    wrong = [(*f[:3], f[3] + 1, f[4]) for f in real]
    with pytest.raises(BuildError, match="no runtime weight file of"):
        adopt_windows(spec, names, wrong)
    with pytest.raises(GraphError, match="claim"):
        axilite_windows(build.engines, [*files, (*files[0][:4], frozenset({999}))], weights, folder)


@needs_cifar10
def test_three_shared_engines_each_get_their_own_windows(r20, tmp_path):
    """ResNet-20's backbone: three shared stage engines, whose layers FINN's SortGraph
    interleaves in the merged overlay; each engine's memories are found by the overlay input
    that feeds their partitions, and the blocks equal their onnxruntime twins through the
    board's loader on the emulated PL."""
    from export.executor import BundleExecutor
    from fpga.architecture import prepare_shared_overlay
    from fpga.board.accel import load_overlay
    from fpga.board.runtime import FinnBackend
    from fpga.emulator.overlay import EmulatedDmaOverlay
    from train.data import load_cifar10

    build = prepare_shared_overlay(r20.path, tmp_path, gates=False, batch_size=8)
    spec = OverlaySpec.load(build.deploy)
    assert len(spec.axilite) == 3
    keys = [k for windows in spec.axilite.values() for k in windows.values()]
    assert len(set(keys)) == len(keys)
    emulated = EmulatedDmaOverlay.from_build(build.out)
    overlay, accelerators = load_overlay(r20, build.deploy, overlay=emulated)
    backend = FinnBackend(r20, accelerators, overlay=overlay, threads=1)
    images = load_cifar10("test").images[:4]
    got = BundleExecutor(r20, backend=backend).run(images, mode="full")
    want = BundleExecutor(r20, threads=1).run(images, mode="full")
    np.testing.assert_array_equal(got.predictions, want.predictions)
    np.testing.assert_allclose(got.logits, want.logits, rtol=0, atol=1e-5)
    loader = accelerators["block0"].prepare.func.__self__
    assert loader.loads >= 7  # blocks 0-2, 4-5 and 7-8 each loaded into their engine


def test_a_window_the_bitstream_lacks_is_refused_in_one_line(r14, r14_overlay, tmp_path):
    import shutil

    from fpga.board.accel import OVERLAY_FILE, AcceleratorError, load_overlay

    build, emulated = r14_overlay
    deploy = tmp_path / "deploy"
    shutil.copytree(build.deploy, deploy)
    doc = json.loads((deploy / OVERLAY_FILE).read_text())
    node = next(iter(doc["axilite"]["block_16to16_s1_32px"]))
    doc["axilite"]["block_16to16_s1_32px"][node] = "StreamingDataflowPartition_9/s_axilite_9"
    (deploy / OVERLAY_FILE).write_text(json.dumps(doc))
    with pytest.raises(AcceleratorError, match="s_axilite_9") as err:
        load_overlay(r14, deploy, overlay=emulated)
    assert "\n" not in str(err.value)
    good = json.loads((build.deploy / OVERLAY_FILE).read_text())
    cases = {
        "has AXI-lite windows but no runtime_weights": lambda d: d.pop("runtime_weights"),
        "another of its graphs through": lambda d: d["engines"]["block1"].update(input=0),
        "that no graph runs on": lambda d: d["axilite"].update(gone={"MVAU_rtl_0": "x"}),
    }
    for message, edit in cases.items():
        doc = json.loads(json.dumps(good))
        edit(doc)
        (deploy / OVERLAY_FILE).write_text(json.dumps(doc))
        with pytest.raises(AcceleratorError, match=message) as err:
            load_overlay(r14, deploy, overlay=emulated)
        assert "\n" not in str(err.value)
    # weights of another bundle (a runtime_weights folder of another build copied in)
    (deploy / OVERLAY_FILE).write_text(json.dumps(good))
    manifest = deploy / good["runtime_weights"]
    weights = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**weights, "bundle_id": "other"}))
    with pytest.raises(AcceleratorError, match="of bundle 'other'"):
        load_overlay(r14, deploy, overlay=emulated)


def test_report_is_read_by_the_emulator_timing(r14, r14_build):
    from fpga.emulator.timing import HardwareReportTiming

    _, report = r14_build
    timing = HardwareReportTiming(report)
    timing.check(r14.manifest)
    assert (
        timing.cycles["block1"]
        == timing.cycles["block0"]
        == report["engines"]["block_16to16_s1_32px"]["cycles"]
    )


def test_recorded_resnet74_report():
    """The record is what this code makes of it: every block and gate mapped to an engine, the
    FINN estimate's totals, and the throughput table recomputed from its cost model."""
    from fpga.architecture import throughput
    from fpga.emulator.timing import HardwareReportTiming

    report = json.loads(RECORDED.read_text())
    assert report["label"] == "FINN estimates, no synthesis"
    assert report["fits"] == all(report["total"][k] <= BUDGET[k] for k in BUDGET)
    blocks = report["blocks"]
    assert [b["index"] for b in blocks] == list(range(36))
    engines = report["engines"]
    for b in blocks:
        assert b["graph"] in engines[b["engine"]]["serves"]
        assert report["graphs"][b["graph"]]["cycles"] == engines[b["engine"]]["cycles"]
        for gate in (b["layer_gate"], b["channel_gate"]):  # quantized gates: engines too
            assert report["graphs"][gate]["engine"] in engines
    stage_engines = {b["engine"] for b in blocks}
    assert len(stage_engines) == 5  # 3 shared stage engines + 2 downsampling engines
    # stem, head, 36 blocks, 2 shortcuts and 72 gates
    assert sum(len(e["serves"]) for e in engines.values()) == 112
    assert set(HardwareReportTiming(report).cycles) == set(report["graphs"])
    cost = CostModel(**report["cost_model"])
    assert throughput(report, cost) == report["throughput"]
    rates = [r["images_per_s"] for r in report["throughput"]["by_skip"].values()]
    assert rates == sorted(rates)
    for row in report["throughput"]["by_skip"].values():  # pipelined beats one call at a time
        assert row["images_per_s"] > row["images_per_s_sequential"]
    groups = report["dma_groups"]
    assert sorted(n for g in groups.values() for n in g) == sorted(engines)
    assert report["resource_budget"]["interconnect"]["axi_masters"] <= 32


# -- the cost model on a synthetic report ------------------------------------------------------


def _graph(cycles, latency, shared, words=0, act=1_000):
    return {
        "cycles": cycles,
        "latency_cycles": latency,
        "runtime_weights": shared,
        "weight_words": words,
        "weight_bytes": 2 * words,
        "activation_bytes": act,
    }


SYNTHETIC = {
    "stem": "stem",
    "head": "head",
    "graphs": {
        "stem": _graph(100, 150, False),
        "head": _graph(10, 12, False),
        "b0": _graph(1_000, 3_000, True, words=500),
        "b1": _graph(1_000, 3_000, True, words=500),
        "b2": _graph(2_000, 5_000, False),
        "s2": _graph(300, 400, False),
    },
    "blocks": [
        {"graph": "b0", "shortcut": None},
        {"graph": "b1", "shortcut": None},
        {"graph": "b2", "shortcut": "s2"},
    ],
}


SEQUENTIAL = {"schedule": "sequential"}


def _cost(**kw):
    """A cost model of the PL alone (no ARM work per image): the PL's parts are tested here,
    the ARM's work in test_the_arms_work_is_charged_per_image_and_call."""
    return CostModel(arm_work=ArmWork(), **kw)


def test_cost_of_one_call():
    cost = _cost(call_overhead_cycles=50, axilite_cycles_per_word=4)
    g = SYNTHETIC["graphs"]["b0"]
    flush = 50 + 3_000  # one more call, and one frame's latency through the engine
    assert cost.load_cycles(g) == 2_000 + flush
    assert cost.call_cycles(g, 0) == 0
    assert cost.call_cycles(g, 8) == 50 + 2_000 + flush + (3_000 - 1_000) + 8 * 1_000
    no_flush = _cost(call_overhead_cycles=50, axilite_cycles_per_word=4, flush_frame=False)
    assert no_flush.load_cycles(g) == 2_000
    assert cost.load_cycles(SYNTHETIC["graphs"]["b2"]) == 0  # fixed weights: no load, no flush
    dma = _cost(weight_loader="dma", dma_bytes_per_cycle=8.0, flush_frame=False)
    assert dma.load_cycles(g) == 250  # 500 words x 4 bytes / 8 bytes per cycle
    slow_dma = _cost(dma_bytes_per_cycle=0.5)  # activations, not the engine, bound it
    assert slow_dma.image_cycles(g) == 2_000


def test_skipping_a_block_for_every_image_saves_its_cycles_and_weight_load():
    cost = _cost(call_overhead_cycles=50, **SEQUENTIAL)
    everything = np.ones((10, 3), dtype=bool)
    without_b1 = everything.copy()
    without_b1[:, 1] = False
    full, skip = cost.batch_parts(SYNTHETIC, everything), cost.batch_parts(SYNTHETIC, without_b1)
    b1 = SYNTHETIC["graphs"]["b1"]
    assert full["total"] - skip["total"] == cost.call_cycles(b1, 10)
    assert full["weight_load"] - skip["weight_load"] == cost.load_cycles(b1)
    assert full["weight_bytes"] - skip["weight_bytes"] == b1["weight_bytes"]
    assert full["engine"] - skip["engine"] == 10 * 1_000


def test_skipping_for_some_images_keeps_the_weight_load():
    cost = _cost(**SEQUENTIAL)
    some = np.ones((10, 3), dtype=bool)
    some[:4, 0] = False
    full = cost.batch_parts(SYNTHETIC, np.ones((10, 3), dtype=bool))
    part = cost.batch_parts(SYNTHETIC, some)
    assert full["total"] - part["total"] == 4 * 1_000
    assert full["weight_load"] == part["weight_load"]


def test_skipped_downsampling_block_runs_its_shortcut():
    cost = _cost(call_overhead_cycles=50, **SEQUENTIAL)
    executed = np.ones((10, 3), dtype=bool)
    executed[:3, 2] = False
    g = SYNTHETIC["graphs"]
    full = cost.batch_cycles(SYNTHETIC, np.ones((10, 3), dtype=bool))
    assert cost.batch_cycles(SYNTHETIC, executed) == full - 3 * 2_000 + cost.call_cycles(g["s2"], 3)


def test_batching_pays_each_weight_load_once_per_batch():
    cost = _cost(call_overhead_cycles=50, **SEQUENTIAL)
    batch = cost.batch_parts(SYNTHETIC, np.ones((10, 3), dtype=bool))
    single = cost.batch_parts(SYNTHETIC, np.ones((1, 3), dtype=bool))
    assert batch["weight_load"] == single["weight_load"]
    assert batch["engine"] == 10 * single["engine"]
    assert cost.images_per_s(SYNTHETIC, np.ones((10, 3), dtype=bool)) > cost.images_per_s(
        SYNTHETIC, np.ones((1, 3), dtype=bool)
    )


def _staged():
    """SYNTHETIC with its engines and stages: stem, b0 and b1 (one shared engine) read 32 px;
    b2, its shortcut and the head 16 px."""
    report = json.loads(json.dumps(SYNTHETIC))
    for name, engine, stage in (
        ("stem", "stem", "32px"),
        ("b0", "e01", "32px"),
        ("b1", "e01", "32px"),
        ("b2", "e2", "16px"),
        ("s2", "s2", "16px"),
        ("head", "head", "16px"),
    ):
        report["graphs"][name].update(engine=engine, stage=stage)
    return report


def test_pipelined_batch_period_is_the_busiest_resource():
    """Stages work on different batches at once: a batch period is the busiest DMA group's
    calls in a row (or the ARM's, or the HP ports'); one call at a time it is their sum."""
    report, executed = _staged(), np.ones((10, 3), dtype=bool)
    pipelined = _cost(call_overhead_cycles=50, dma_group="stage")
    sequential = _cost(call_overhead_cycles=50, **SEQUENTIAL)
    g = report["graphs"]
    by_stage = {
        "32px": sum(pipelined.call_cycles(g[k], 10) for k in ("stem", "b0", "b1")),
        "16px": sum(pipelined.call_cycles(g[k], n) for k, n in (("b2", 10), ("head", 10))),
    }
    parts = pipelined.batch_parts(report, executed)
    assert parts["resources"]["dma group 32px"] == by_stage["32px"]
    assert parts["resources"]["dma group 16px"] == by_stage["16px"]
    assert parts["total"] == max(parts["resources"].values()) == by_stage["32px"]
    assert parts["busiest"] == "dma group 32px"
    assert parts["work"] == sequential.batch_cycles(report, executed) == sum(by_stage.values())
    assert pipelined.images_per_s(report, executed) > sequential.images_per_s(report, executed)
    # the ARM starts 5 calls (no image runs the shortcut) and 2 flush frames, and writes
    # 2 x 500 words
    assert parts["resources"]["ARM"] == 7 * 50 + 2 * math.ceil(500 * 16.0)
    # a pair per engine: the shared engine of b0 and b1 is the busiest
    per_engine = _cost(call_overhead_cycles=50, dma_group="engine").batch_parts(report, executed)
    assert per_engine["busiest"] == "dma group e01"
    assert per_engine["total"] < parts["total"]
    # a stage's gates behind a pair of their own: b1 stands in for a gate engine here
    report["graphs"]["b1"]["kind"] = "channel_gate"
    split = _cost(call_overhead_cycles=50, dma_group="stage_gates").batch_parts(report, executed)
    assert split["resources"]["dma group 32px gates"] == pipelined.call_cycles(g["b1"], 10)
    assert (
        split["resources"]["dma group 32px backbone"]
        == by_stage["32px"] - (split["resources"]["dma group 32px gates"])
    )


def test_pipelined_period_can_be_the_arm_or_the_ports():
    report, executed = _staged(), np.ones((10, 3), dtype=bool)
    # the ARM starts every group's calls: slow starts make it the busiest
    slow_starts = _cost(call_overhead_cycles=1_000_000).batch_parts(report, executed)
    assert slow_starts["busiest"] == "ARM"
    assert slow_starts["total"] == slow_starts["resources"]["ARM"]
    narrow = _cost(dma_bytes_per_cycle=0.01, hp_ports=1).batch_parts(report, executed)
    assert narrow["busiest"] == "HP ports"
    assert narrow["total"] == math.ceil(narrow["activation_bytes"] / 0.01)
    # skipping half of b0 and b1 shortens the busiest stage by those images' cycles
    half = executed.copy()
    half[:5, :2] = False
    cost = _cost(call_overhead_cycles=50, dma_group="stage")
    saved = cost.batch_parts(report, executed)["total"] - cost.batch_parts(report, half)["total"]
    assert saved == 2 * 5 * 1_000


def test_the_arms_work_is_charged_per_image_and_call():
    """Every engine call costs the ARM its images' work (a per-image part and one per byte of
    activations, the LSTM step for a layer gate), every image its stem input and the
    executor's work per block: one call at a time it adds to the batch, pipelined it is part
    of the ARM's busy time, and a skipped block's images cost it nothing."""
    report, executed = _staged(), np.ones((10, 3), dtype=bool)
    report["graphs"]["b1"]["kind"] = "layer_gate"  # b1 stands in for a layer gate here
    arm = ArmWork(
        call_s=7e-5,
        call_image_s=1e-6,
        call_byte_s=1e-9,
        byte_s_by_kind={"layer_gate": 4e-9},  # b1's bytes cost more; the others 1 ns each
        lstm_call_s=4e-5,
        lstm_image_s=5e-6,
        image_s=3e-6,
        block_call_s=6e-5,
        block_image_s=2e-7,
    )
    calls = {"stem": 10, "b0": 10, "b1": 10, "b2": 10, "head": 10}  # no image runs s2
    g = report["graphs"]
    rate = {"b1": 4e-9}
    seconds = sum(
        7e-5 + n * (1e-6 + rate.get(k, 1e-9) * g[k]["activation_bytes"]) for k, n in calls.items()
    )
    seconds += 4e-5 + 10 * 5e-6  # b1's LSTM steps: its call, its images
    seconds += 10 * 3e-6 + 3 * (6e-5 + 10 * 2e-7)  # stem inputs; the executor's work per block
    cycles = math.ceil(seconds * 100e6)
    sequential = _cost(**SEQUENTIAL).batch_parts(report, executed)
    charged = CostModel(arm_work=arm, **SEQUENTIAL).batch_parts(report, executed)
    assert charged["arm_work"] == cycles and sequential["arm_work"] == 0
    assert charged["total"] == sequential["total"] + cycles == charged["work"] + cycles
    pipelined = CostModel(arm_work=arm, call_overhead_cycles=50).batch_parts(report, executed)
    plain = _cost(call_overhead_cycles=50).batch_parts(report, executed)
    assert pipelined["resources"]["ARM"] == plain["resources"]["ARM"] + cycles
    slow = CostModel(arm_work=ArmWork(call_image_s=1.0), call_overhead_cycles=50)
    assert slow.batch_parts(report, executed)["busiest"] == "ARM"
    skipped = executed.copy()
    skipped[:, 0] = False  # nobody runs b0: its call, and its images' work, are gone
    fewer = CostModel(arm_work=arm, **SEQUENTIAL).batch_parts(report, skipped)["arm_work"]
    b0 = 7e-5 + 10 * (1e-6 + 1e-9 * g["b0"]["activation_bytes"])
    assert fewer == pytest.approx((seconds - b0) * 100e6, abs=1)
    assert CostModel(**{"arm_work": {**arm.__dict__}}).arm_work == arm  # a report, read back
    assert arm.seconds(0, 1_000, "block") == 0.0 and arm.seconds(2, 0, None) == 7e-5 + 2e-6
    assert arm.seconds(2, 0, "layer_gate") == pytest.approx(7e-5 + 2e-6 + 4e-5 + 2 * 5e-6)
    # a batch twice as large shares the executor's per-block work among twice the images
    per_image = [arm.executor_seconds(n, 3) / n for n in (10, 20)]
    assert per_image[0] - per_image[1] == pytest.approx(3 * 6e-5 / 20)
    assert arm.executor_seconds(0, 3) == 0.0


def test_the_default_arm_work_is_the_recorded_bench(tmp_path):
    """The cost model charges what the committed ARM bench measured, and its fit reproduces
    that run; a record without the model is refused in one line that says what to run."""
    arm = CostModel().arm_work
    bench = json.loads((Path(__file__).parents[2] / "measurements/bench/arm_work.json").read_text())
    assert arm == ArmWork.recorded() and bench["bundle"] in arm.source
    assert "modelled" in arm.source
    assert arm.call_image_s + arm.call_byte_s > 0 and arm.image_s > 0 and arm.lstm_image_s > 0
    assert arm.block_call_s > 0 and arm.lstm_call_s > 0  # the executor's numpy calls per batch
    assert {"block", "layer_gate", "channel_gate"} <= set(arm.byte_s_by_kind)
    check = bench["arm_model"]["check"]
    assert check["a9_s_per_image_model"] == pytest.approx(
        check["a9_s_per_image_measured"], rel=0.25
    )
    assert check["a9_s_per_image_measured"] == pytest.approx(
        bench["modelled_a9_s_per_image"]["arm_total"]
    )
    by_batch = {b["batch_size"]: b for b in bench["arm_model"]["by_batch"]}
    assert min(by_batch) < 256 < max(by_batch)  # calls of fewer and of more images
    for b in by_batch.values():  # one model for every batch size
        assert b["a9_s_per_image_model"] == pytest.approx(b["a9_s_per_image_measured"], rel=0.25)
    # more images a batch share the per-call work: the ARM's work per image falls
    assert by_batch[max(by_batch)]["a9_s_per_image_measured"] < check["a9_s_per_image_measured"]
    old = tmp_path / "arm_work.json"
    old.write_text(json.dumps({k: v for k, v in bench.items() if k != "arm_model"}))
    with pytest.raises(GraphError, match=r"run `python -m fpga\.board\.arm_bench`") as info:
        ArmWork.recorded(old)
    assert "\n" not in str(info.value)


def test_skip_pattern_and_errors():
    executed = skip_pattern(36, 250, 0.4)
    assert executed.shape == (250, 36)
    assert (executed.sum(axis=0) == 150).all()
    assert not skip_pattern(3, 10, 1.0).any() and skip_pattern(3, 10, 0.0).all()
    with pytest.raises(GraphError, match=r"skip_fraction 1\.5"):
        skip_pattern(3, 10, 1.5)
    with pytest.raises(GraphError, match="weight_loader 'pcie'"):
        _cost(weight_loader="pcie")
    with pytest.raises(GraphError, match="schedule 'overlapped'"):
        _cost(schedule="overlapped")
    with pytest.raises(GraphError, match="dma_group 'layer'"):
        _cost(dma_group="layer")
    with pytest.raises(GraphError, match="hp_ports=5"):
        _cost(hp_ports=5)
    with pytest.raises(GraphError, match=r"executed has shape \(4, 2\)"):
        _cost().batch_cycles(SYNTHETIC, np.ones((4, 2), dtype=bool))

"""Runtime weights of a shared engine, end to end on the emulated PL (slow: two FINN builds).

An untrained quantized ResNet-14 (blocks 0 and 1 share one engine, fpga/architecture.py):
:func:`fpga.architecture.write_block_weights` runs FINN's front end on both blocks with
``runtime_writeable_weights`` set before bit-width minimization, checks block 1 against the
representative (block 0) and writes their ``.npz`` files. On the emulated PL, one engine built
from block 0 (:class:`fpga.emulator.weights.RuntimeWeightEngine`) sits behind the stand-in's
IODMAs; the board's :class:`fpga.board.weights.WeightLoader` writes each block's words into its
AXI-lite windows and sends the flush frame through the board's ``DmaEngine``. Each block's
output through the board's ``GraphAccelerator`` (its own float tail) then equals its onnxruntime
twin bit for bit on real CIFAR-10 test images, with the channel masks of its gate. Without the
flush frame the first image after a write is computed with stale weights, as on the PL.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from tests.conftest import needs_cifar10

pytest.importorskip("finn", reason="finn-plus not installed (make setup installs it)")

pytestmark = [pytest.mark.slow, needs_cifar10]

IMAGES = 4
ENGINE = "block_16to16_s1_32px"


@pytest.fixture(scope="module")
def built(r14, tmp_path_factory):
    from fpga.architecture import write_block_weights

    out = tmp_path_factory.mktemp("r14-runtime-weights")
    return out, write_block_weights(r14.path, out)


@pytest.fixture(scope="module")
def twins(r14):
    """Inputs and onnxruntime outputs of blocks 0 and 1 on real test images, with masks."""
    import onnxruntime as ort

    from train.data import load_cifar10

    m = r14.manifest
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1

    def run(name, *args):
        path = r14.path / m.graphs[name].onnx.file
        s = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return s.run(None, dict(zip([i.name for i in s.get_inputs()], args, strict=True)))[0]

    x = m.preprocess.apply(load_cifar10("test").images[:IMAGES])
    y = run(m.stem, x)
    out = {}
    for block in m.blocks[:2]:
        mask = (run(block.channel_gate, y) > m.gate_threshold).astype(np.float32)
        mask[0] = 1.0
        mask[-1, ::3] = 0.0  # one image that surely drops channels
        out[block.graph] = (y, mask, run(block.graph, y, mask))
        y = run(block.graph, y, np.ones_like(mask))
    return out


def _parent(out, graph):
    from qonnx.core.modelwrapper import ModelWrapper

    folder = out / ENGINE if graph == "block0" else out / ENGINE / graph
    return ModelWrapper(str(folder / "hw_parent.onnx"))


@pytest.fixture
def board(r14, built):
    """The emulated PL (one shared engine from block 0) and the board's loader over it."""
    from fpga.board.accel import DmaEngine, FloatTail, GraphAccelerator
    from fpga.board.weights import WeightLoader, WeightStore, flush_frame
    from fpga.emulator.overlay import EmulatedDmaOverlay
    from fpga.emulator.weights import RuntimeWeightEngine, io_shape_dict
    from fpga.finn.frontend import dataflow_model, python_model

    out, _ = built
    hw = dataflow_model(python_model(_parent(out, "block0")))
    engine = RuntimeWeightEngine(hw)
    shapes = io_shape_dict(hw)
    masked = len(shapes["idt"]) == 2
    overlay = EmulatedDmaOverlay(
        {"driver_information": {"io_shape_dict": shapes}},
        {0: (0, engine)},
        batch_size=IMAGES,
        mask_inputs={0: 1} if masked else None,
    )
    dma = DmaEngine(overlay, 0, 0, mask_input=1 if masked else None)
    store = WeightStore(out / "runtime_weights")
    loader = WeightLoader(store, {ENGINE: engine.memories}, {ENGINE: flush_frame(dma)})
    accels = {
        g: GraphAccelerator(r14.manifest.graphs[g], dma, FloatTail.from_parent(_parent(out, g)))
        for g in ("block0", "block1")
    }
    return engine, loader, store, accels


def test_manifest_lists_both_blocks_with_hashes(built):
    import hashlib

    out, manifest = built
    folder = out / "runtime_weights"
    assert json.loads((folder / "runtime_weights.json").read_text()) == manifest
    assert set(manifest["blocks"]) == {"block0", "block1"}
    memories = manifest["engines"][ENGINE]["memories"]
    assert {m["op_type"] for m in memories} >= {"MVAU_rtl", "Thresholding_rtl"}
    for entry in manifest["blocks"].values():
        data = (folder / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert entry["words"] == sum(m["words"] for m in memories)
    a, b = (np.load(folder / f"block{i}.npz") for i in (0, 1))
    assert any(not np.array_equal(a[k], b[k]) for k in a.files)  # different blocks' values


def test_runtime_weights_are_set_before_bit_width_minimization(built):
    """Block 1's build is as wide as block 0's: FINN left every datatype at the worst case."""
    from qonnx.custom_op.registry import getCustomOp

    from fpga.finn.frontend import dataflow_model

    out, _ = built
    for graph in ("block0", "block1"):
        hw = dataflow_model(_parent(out, graph))
        for node in hw.graph.node:
            if node.op_type.startswith(("MVAU", "Thresholding")):
                op = getCustomOp(node)
                assert op.get_nodeattr("runtime_writeable_weights") == 1
                if node.op_type.startswith("MVAU"):
                    assert op.get_nodeattr("mem_mode") == "internal_decoupled"


def test_each_block_equals_its_twin_after_loading_its_weights(board, twins):
    engine, loader, store, accels = board
    for graph in ("block1", "block0", "block1"):
        report = loader.load(graph)
        assert report.words == store.block(graph).words > 0
        stale = engine.stale_frames
        x, mask, expected = twins[graph]
        (got,) = accels[graph].run([x, mask])
        assert engine.stale_frames == stale  # the flush frame took the stale one
        np.testing.assert_array_equal(got, expected)
    assert loader.load("block1").words == 0  # the engine holds block 1 already
    assert loader.loads == 3 and engine.weight_changes == 3


def test_without_the_flush_frame_the_first_image_is_stale(board, twins):
    engine, _, store, accels = board
    x, mask, expected = twins["block1"]
    for node, words in store.block("block1").memories.items():  # a write, no flush
        engine.memories[node].array[: words.size] = words
    (got,) = accels["block1"].run([x, mask])
    assert engine.stale_frames == 1
    assert not np.array_equal(got[0], expected[0])  # block 0's weights computed image 0
    np.testing.assert_array_equal(got[1:], expected[1:])


def test_a_block_of_another_structure_is_refused(built):
    from qonnx.custom_op.registry import getCustomOp

    from fpga.finn.errors import GraphError
    from fpga.finn.frontend import dataflow_model
    from fpga.weights import check_same_structure

    out, _ = built
    rep = dataflow_model(_parent(out, "block0"))
    other = copy.deepcopy(dataflow_model(_parent(out, "block1")))
    check_same_structure(rep, other, "block1")
    mvau = next(n for n in other.graph.node if n.op_type.startswith("MVAU"))
    op = getCustomOp(mvau)
    op.set_nodeattr("PE", op.get_nodeattr("PE") * 2)
    with pytest.raises(GraphError, match="attributes"):
        check_same_structure(rep, other, "block1")


def test_corrupt_weights_file_is_refused(built, tmp_path):
    import shutil

    from fpga.board.weights import WeightsError, WeightStore

    out, _ = built
    folder = tmp_path / "w"
    shutil.copytree(out / "runtime_weights", folder)
    path = folder / "block1.npz"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        WeightStore(folder).block("block1")

"""Tests of the board's FINN backend adapter (fpga.board.accel) without a board.

A stand-in for the PL runs the REAL dataflow partition of a ResNet-8 block, built by the FINN
front end (fpga.finn.to_hw), with FINN's Python execution on the integer NHWC codes, as the
engine would; :class:`GraphAccelerator` does the rest (codes, layout, mask map, float tail).
Inside :class:`BundleExecutor` the FINN backend must give the onnxruntime executor's results
exactly on real CIFAR-10 images. The trained ResNet-8 W4A4 without gates (``base``) runs every
block with all channels; a mask with zeros runs on the masked engine too, bit-exact to the twin.
The gated bundle (IADI-60, MGL2S) in ``iadi`` mode runs every block call on the emulated PL.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("finn", reason="finn-plus not installed (make setup installs it)")

from export.executor import BundleExecutor, OnnxRuntimeBackend
from export.manifest import Bundle, load_bundle
from export.program import NumpyBackend
from fpga.board.accel import (
    AcceleratorError,
    EngineTensor,
    FloatTail,
    GraphAccelerator,
    as_floats,
)
from fpga.board.runtime import BoardRuntimeError, FinnBackend
from tests.conftest import needs_cifar10

ROOT = Path(__file__).resolve().parents[2]
TRAINED = ROOT / "measurements" / "train" / "resnet8-w4a4" / "base" / "final.pt"
"""ResNet-8 W4A4 without gates (a recorded training run): every block runs with mask ones."""
GATED = ROOT / "measurements" / "train" / "resnet8-w4a4" / "iadi-60" / "final.pt"
"""ResNet-8 W4A4 with MGL2S gates at 60% savings: no executed block keeps every channel."""
GRAPH = "block1"
"""16 -> 32 channels, stride 2, projection shortcut: the richest block of ResNet-8."""
IMAGES = 6


class PartitionStandIn:
    """The PL's engine: FINN's Python execution of the graph's dataflow partition only (a
    masked block's: on the codes and the mask map)."""

    def __init__(self, parent) -> None:
        from fpga.emulator.overlay import _finn_engine
        from fpga.finn import dataflow_model, python_model

        model = python_model(dataflow_model(parent))
        self.engine = _finn_engine(model)
        masks = [
            t.name for t in model.graph.input if model.get_tensor_datatype(t.name).bitwidth() == 1
        ]
        self.mask_shape = tuple(model.get_tensor_shape(masks[0])[1:]) if masks else None
        self.calls = 0

    def execute(self, codes: np.ndarray, *mask_map: np.ndarray) -> np.ndarray:
        assert codes.dtype.kind == "i" and codes.ndim == 4  # integer codes, NHWC, batch first
        assert len(mask_map) == (self.mask_shape is not None)
        for m in mask_map:
            assert m.dtype == np.uint8 and m.shape == (len(codes), *self.mask_shape)
        self.calls += 1
        return np.concatenate(
            [
                self.engine(codes[i : i + 1], *(m[i : i + 1] for m in mask_map))
                for i in range(len(codes))
            ]
        )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Bundle:
    path = tmp_path_factory.getbasetemp() / "fpga-bundles" / "r8-base"
    if not path.is_dir():
        import torch

        from export.bundle import export_bundle

        torch.set_num_threads(1)
        export_bundle(TRAINED, path, progress=False)
    return load_bundle(path)


@pytest.fixture(scope="module")
def accelerator(bundle, tmp_path_factory) -> GraphAccelerator:
    """block1 built by the FINN front end; its tail stored as JSON and read back."""
    from fpga.finn import to_hw

    spec = bundle.manifest.graphs[GRAPH]
    out = tmp_path_factory.mktemp("accel")
    parent = to_hw(bundle.path / spec.qonnx.file, spec.inputs[0].datatype, out / GRAPH)
    tail = FloatTail.from_parent(parent)
    assert [op["op"] for op in tail.ops] == ["Mul", "Transpose"]  # output scale, back to NCHW
    tail.save(out / "accel_tail.json")
    return GraphAccelerator(spec, PartitionStandIn(parent), out / "accel_tail.json")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    from train.data import load_cifar10

    return load_cifar10("test").images[:IMAGES]


@needs_cifar10
def test_finn_backend_equals_onnxruntime(bundle, accelerator, images):
    assert not any(b.layer_gate or b.channel_gate for b in bundle.manifest.blocks)
    backend = FinnBackend(bundle, accelerators={GRAPH: accelerator}, threads=1)
    calls = accelerator.accelerator.calls
    got = BundleExecutor(bundle, backend=backend).run(images, mode="full")
    # the rest runs on the numpy programs, as the board's ARM runs them
    want = BundleExecutor(bundle, backend=NumpyBackend(bundle)).run(images, mode="full")
    assert accelerator.accelerator.calls > calls  # block1 ran on the stand-in
    np.testing.assert_array_equal(got.logits, want.logits)  # bit for bit
    np.testing.assert_array_equal(got.predictions, want.predictions)
    np.testing.assert_array_equal(got.macs, want.macs)
    reference = BundleExecutor(bundle, threads=1).run(images, mode="full")  # onnxruntime
    np.testing.assert_array_equal(got.predictions, reference.predictions)
    np.testing.assert_allclose(got.logits, reference.logits, rtol=0, atol=1e-4)


@needs_cifar10
def test_masks_and_bad_codes(bundle, accelerator, images):
    m = bundle.manifest
    spec = m.graphs[GRAPH]
    cpu = OnnxRuntimeBackend(bundle, threads=1)
    (x,) = cpu.run(m.graphs[m.stem], [m.preprocess.apply(images[:2])])
    (x,) = cpu.run(m.graphs[m.blocks[0].graph], [x, np.ones((2, 16), np.float32)])
    backend = FinnBackend(bundle, accelerators={GRAPH: accelerator}, threads=1)

    # a mask that drops channels: the masked engine runs it, bit-exact to the twin
    assert spec.masked and accelerator.masked
    mask = np.ones((2, 32), np.float32)
    mask[:, ::3] = 0
    mask[1, 1] = 0
    calls = accelerator.accelerator.calls
    y = as_floats(backend.run(spec, [x, mask])[0])
    assert accelerator.accelerator.calls == calls + 1
    np.testing.assert_array_equal(y, cpu.run(spec, [x, mask])[0])
    ones = np.ones((2, 32), np.float32)
    assert not np.array_equal(y, cpu.run(spec, [x, ones])[0])  # the mask changed the output

    # all ones: the engine, bit-exact to the twin
    y = as_floats(backend.run(spec, [x, ones])[0])
    assert accelerator.accelerator.calls == calls + 2
    np.testing.assert_array_equal(y, cpu.run(spec, [x, ones])[0])
    with pytest.raises(AcceleratorError, match="not 0/1"):
        accelerator.run([x, ones * 0.5])
    with pytest.raises(AcceleratorError, match=r"takes \(N, 32\)"):
        accelerator.run([x, ones[:, :16]])

    scale = spec.inputs[0].datatype.scale
    with pytest.raises(AcceleratorError, match="is not integer") as info:
        accelerator.run([x + np.float32(0.3 * scale), ones])
    assert "\n" not in str(info.value)
    with pytest.raises(AcceleratorError, match=r"outside UINT4's \[0, 15\]"):
        accelerator.run([x + np.float32(16 * scale), ones])


# --- one overlay of every engine, behind its IODMAs ------------------------------------------


@pytest.fixture(scope="module")
def overlay_build(bundle, tmp_path_factory):
    """The overlay of every compiled graph (FINN front end, multi-DNN merge, predicted driver
    settings), as `python -m fpga overlay` makes it."""
    from fpga.bitstream.overlay import prepare_overlay

    return prepare_overlay(bundle.path, tmp_path_factory.mktemp("overlay"))


def test_overlay_deploy_folder(bundle, overlay_build):
    from fpga.board.accel import OverlaySpec

    m = bundle.manifest
    compiled = [n for n, g in m.graphs.items() if g.qonnx is not None]
    spec = OverlaySpec.load(overlay_build.deploy)
    assert spec.bundle_id == bundle.bundle_id
    assert spec.settings_origin == "predicted"
    assert sorted(spec.engines) == sorted(compiled)
    masked = [n for n in compiled if m.graphs[n].masked]
    assert sorted(masked) == sorted(b.graph for b in m.blocks)  # every block streams its mask
    inputs = [e.input for e in spec.engines.values()]
    inputs += [spec.engines[n].mask_input for n in masked]
    assert sorted(inputs) == list(range(len(compiled) + len(masked)))  # an input DMA each
    assert sorted(e.output for e in spec.engines.values()) == list(range(len(compiled)))

    # FINN's driver settings: an input DMA per stream, an output DMA per engine, the shapes
    info = spec.driver_information()
    shapes = info["io_shape_dict"]
    assert info["driver_type"] == "FINNDMAOverlay" and info["platform"] == "zynq-iodma"
    assert shapes["num_inputs"] == len(compiled) + len(masked)
    assert shapes["num_outputs"] == len(compiled)
    assert sorted(shapes["idma_names"]) == sorted(f"idma{k}" for k in range(len(inputs)))
    for name, e in spec.engines.items():
        c, h, w = m.graphs[name].inputs[0].shape[1:]
        assert tuple(shapes["ishape_normal"][e.input]) == (1, h, w, c)
        # the stem's engine takes the images' pixels and thresholds them itself
        takes = "UINT8" if name == m.stem else m.graphs[name].inputs[0].datatype.name
        assert e.pixels == (name == m.stem)
        assert shapes["idt"][e.input] == f"DataType['{takes}']"
        if e.mask_input is not None:  # (1, H', W', C') 1-bit values: the output's shape
            c, h, w = m.graphs[name].outputs[0].shape[1:]
            assert tuple(shapes["ishape_normal"][e.mask_input]) == (1, h, w, c)
            assert shapes["idt"][e.mask_input] == "DataType['BINARY']"
            # a pixel's C mask bits a stream word: ceil(C / 8) bytes a pixel in the buffer
            assert tuple(shapes["ishape_folded"][e.mask_input]) == (1, h, w, 1, c)
            assert tuple(shapes["ishape_packed"][e.mask_input]) == (1, h, w, 1, -(-c // 8))
        FloatTail.load(spec.root / e.tail)
    assert overlay_build.estimates["fits"]
    with pytest.raises(AcceleratorError, match="pynq"):  # no PYNQ here: one line, before all
        from fpga.board.accel import open_finn_overlay

        open_finn_overlay(spec)


@pytest.fixture(scope="module")
def emulated(overlay_build):
    from fpga.emulator.overlay import EmulatedDmaOverlay

    return EmulatedDmaOverlay.from_build(overlay_build.out, batch_size=4)


@needs_cifar10
def test_overlay_engines_equal_onnxruntime(bundle, overlay_build, emulated, images):
    """Every graph through its own IODMA pair (FINN's packing, chunks of 4 images, the last one
    padded): predictions and MACs exactly as onnxruntime's, logits within float rounding."""
    from fpga.board.accel import load_overlay

    overlay, accelerators = load_overlay(bundle, overlay_build.deploy, overlay=emulated)
    backend = FinnBackend(bundle, accelerators, overlay=overlay, threads=1)
    got = BundleExecutor(bundle, backend=backend).run(images, mode="full")
    want = BundleExecutor(bundle, threads=1).run(images, mode="full")
    np.testing.assert_array_equal(got.predictions, want.predictions)
    np.testing.assert_array_equal(got.macs, want.macs)
    np.testing.assert_allclose(got.logits, want.logits, rtol=0, atol=1e-5)
    m = bundle.manifest
    for name in (m.stem, *(b.graph for b in m.blocks), "head"):
        engine = accelerators[name].accelerator
        assert emulated.images_run[engine.input] >= len(images), name  # ran on the "PL"

    # a block through the DMA engine gives the twin's output bit for bit
    cpu = OnnxRuntimeBackend(bundle, threads=1)
    (x,) = cpu.run(m.graphs[m.stem], [m.preprocess.apply(images)])
    (x,) = cpu.run(m.graphs[m.blocks[0].graph], [x, np.ones((len(x), 16), np.float32)])
    ones = np.ones((len(x), 32), np.float32)
    (y,) = accelerators[GRAPH].run([x, ones])
    np.testing.assert_array_equal(y, cpu.run(m.graphs[GRAPH], [x, ones])[0])


def test_overlay_refusals(bundle, overlay_build, emulated, tmp_path):
    import json
    import shutil

    from fpga.board.accel import DmaEngine, OverlaySpec, load_overlay

    spec = OverlaySpec.load(overlay_build.deploy)
    block = spec.engines[GRAPH]
    codes = np.zeros((2, *emulated.ishape_normal(block.input)[1:]), np.int32)
    # the wrong output DMA never finishes: the engine's output goes to its own DMA
    other = (block.output + 1) % len(spec.engines)
    wrong = DmaEngine(emulated, block.input, other, mask_input=block.mask_input, timeout_s=0.2)
    mask_map = np.ones((2, *wrong.mask_shape), np.uint8)
    with pytest.raises(AcceleratorError, match="did not finish 2 images") as info:
        wrong.execute(codes, mask_map)
    assert "\n" not in str(info.value)
    emulated.odma[(block.output + 1) % len(spec.engines)].finish()  # reset the stalled DMA
    # a masked engine whose mask stream never starts waits for it
    no_mask = DmaEngine(emulated, block.input, block.output, timeout_s=0.2)
    with pytest.raises(AcceleratorError, match="did not finish 2 images"):
        no_mask.execute(codes)
    emulated.odma[block.output].finish()

    def variant(edit) -> Path:
        folder = tmp_path / f"v{len(list(tmp_path.iterdir()))}"
        shutil.copytree(overlay_build.deploy, folder)
        doc = json.loads((folder / "accelerators.json").read_text())
        edit(doc)
        (folder / "accelerators.json").write_text(json.dumps(doc))
        return folder

    cases = {
        "holds no accelerators.json": tmp_path,
        "format 'x' version 3, not": variant(lambda d: d.update(format="x")),
        "version 9, not 'ddi-fpga overlay' version 3": variant(lambda d: d.update(version=9)),
        # an older runtime's file: graphs sharing an engine did not exist
        "version 2, not 'ddi-fpga overlay' version 3": variant(lambda d: d.update(version=2)),
        "has no mask input": variant(lambda d: d["engines"][GRAPH].pop("mask_input")),
        "has 10 inputs": variant(lambda d: d["engines"][GRAPH].update(input=99)),
        "was built from bundle 'other'": variant(lambda d: d.update(bundle_id="other")),
        "which bundle": variant(lambda d: d["engines"].update(exit9=d["engines"][GRAPH])),
    }
    for message, folder in cases.items():
        with pytest.raises(AcceleratorError, match=message) as info:
            load_overlay(bundle, folder, overlay=emulated)
        assert "\n" not in str(info.value), message


@needs_cifar10
def test_board_runtime_on_the_emulated_overlay(bundle, overlay_build, emulated, images, tmp_path):
    """The host's client -> pty -> the board runtime -> FinnBackend -> DMA engines: a batch run
    in full mode answers what the onnxruntime executor computes."""
    import threading

    from fpga.board.accel import load_overlay
    from fpga.board.runtime import BoardRuntime, RuntimeConfig
    from host.board import BoardClient
    from wire.link import Server
    from wire.ports import open_pty_pair

    def executor(selected: Bundle) -> BundleExecutor:
        overlay, accelerators = load_overlay(selected, overlay_build.deploy, overlay=emulated)
        return BundleExecutor(
            selected, backend=FinnBackend(selected, accelerators, overlay=overlay, threads=1)
        )

    runs = dict(emulated.images_run)
    runtime = BoardRuntime(
        RuntimeConfig(store_dir=tmp_path / "store", backend="cpu", threads=1),
        executor_factory=executor,
        backend="emulated",  # the PL is the stand-in: HELLO must not claim a real overlay
    )
    board_end, host_end = open_pty_pair()
    server = Server(board_end)
    thread = threading.Thread(target=server.serve_forever, args=(runtime,), daemon=True)
    thread.start()
    try:
        with BoardClient(host_end.port, timeout_s=30.0) as client:
            assert client.hello().backend == "emulated"
            client.ensure_bundle(bundle.path, progress=False)
            client.upload(1, images)
            client.run(1, "full")
            records = client.fetch(1, len(images))
    finally:
        server.stop()
        thread.join(timeout=10.0)
        runtime.close()
        board_end.close()
        host_end.close()
    want = BundleExecutor(bundle, threads=1).run(images, mode="full")
    np.testing.assert_array_equal(records["prediction"], want.predictions)
    np.testing.assert_array_equal(records["macs"], want.macs)
    m = bundle.manifest
    for name in (m.stem, *(b.graph for b in m.blocks), "head"):
        k = overlay_build.engines[name][0]
        assert emulated.images_run[k] - runs[k] >= len(images), name


@needs_cifar10
def test_engines_pass_codes_and_packed_bytes_on(bundle, overlay_build, emulated, images):
    """Carrying (the default): each engine's output codes, and its packed output bytes where the
    next input DMA has the same word format, go straight to the next engine. The board's own
    driver (PynqDmaOverlay) over a stand-in of the PL's registers that checks every packed input
    against what FINN's packing gave for that call (recorded with carrying off): the bytes, the
    results and the logits are identical, and no input is converted from floats: the stem's
    codes come from the manifest's preprocessing table (FinnBackend.stem_input)."""
    from fpga.board.accel import GraphAccelerator, OverlaySpec, load_overlay
    from fpga.board.finnio import PynqDmaOverlay
    from tests.arm.pl_standin import CALL_ARRAYS, RecordedPL, record_calls

    recording, run_engine = record_calls(emulated)
    try:
        overlay, accelerators = load_overlay(bundle, overlay_build.deploy, overlay=emulated)
        backend = FinnBackend(bundle, accelerators, overlay=overlay, carry=False)
        want = BundleExecutor(bundle, backend=backend).run(images, mode="full")
    finally:
        emulated._run = run_engine

    spec = OverlaySpec.load(overlay_build.deploy)
    info = spec.driver_information()
    counts = {"codes": 0, "pack": 0}
    codes, pack_input = GraphAccelerator.codes, PynqDmaOverlay.pack_input

    def counted_codes(self, x):
        counts["codes"] += 1
        return codes(self, x)

    def counted_pack(self, folded, ind=0):
        counts["pack"] += 1
        return pack_input(self, folded, ind)

    results = {}
    for carry in (False, True):
        pl = RecordedPL(np.load(_saved(recording)), info["io_shape_dict"])
        board = PynqDmaOverlay(info, emulated.batch_size, allocate=pl.allocate, ip=pl.ip)
        overlay, accelerators = load_overlay(bundle, overlay_build.deploy, overlay=board)
        tails: list[str] = []
        for name, acc in accelerators.items():
            acc.codes = counted_codes.__get__(acc)
            apply = acc.tail.apply
            acc.tail.apply = lambda y, _n=name, _apply=apply, _tails=tails: (
                _tails.append(_n) or _apply(y)
            )
        board.pack_input = counted_pack.__get__(board)
        counts.update(codes=0, pack=0)
        backend = FinnBackend(bundle, accelerators, overlay=overlay, carry=carry)
        got = BundleExecutor(bundle, backend=backend).run(images, mode="full")
        results[carry] = (got, dict(counts, tails=sorted(set(tails))), pl.served)
    engines = len(accelerators)
    chunks = -(-len(images) // emulated.batch_size)
    for carry, (got, _, served) in results.items():
        assert served == len(recording) // CALL_ARRAYS, (
            carry
        )  # every call's packed input as recorded
        np.testing.assert_array_equal(got.logits, want.logits)
        np.testing.assert_array_equal(got.predictions, want.predictions)
        np.testing.assert_array_equal(got.macs, want.macs)
    (_, off, _), (_, on, _) = results[False], results[True]
    # blocks, head..: each converted input folded and packed (the stem's engine takes the
    # images' pixels either way); the masks' bytes are one packed pixel repeated
    # (pixel_words), checked against FINN's packing of the map by the stand-in
    assert off["codes"] >= 4 and off["pack"] == off["codes"] * chunks
    # no input converted: the stem's engine thresholds the pixels itself (stem_input)
    assert on["codes"] == 0
    assert on["pack"] < off["pack"], (on, off)  # some packed outputs went on as they were
    # the activations stayed codes from engine to engine: only the logits were made floats
    m = bundle.manifest
    assert on["tails"] == ["head"]
    assert set(off["tails"]) == {m.stem, m.head, *(b.graph for b in m.blocks)}  # full mode
    assert engines >= 5

    # the stem's engine takes the images' pixels, carrying or not: no preprocessing on the ARM
    overlay, accelerators = load_overlay(bundle, overlay_build.deploy, overlay=emulated)
    stem = accelerators[m.stem]
    assert stem.pixels
    floats = m.preprocess.apply(images)
    for carry in (True, False):
        backend = FinnBackend(bundle, accelerators, overlay=overlay, carry=carry)
        stem_in = backend.stem_input(images)
        assert isinstance(stem_in, EngineTensor) and stem.takes(stem_in.carried)
        np.testing.assert_array_equal(stem_in.carried.codes, images)
        np.testing.assert_array_equal(stem_in.floats(), floats)
    with pytest.raises(BoardRuntimeError, match="takes uint8 pixels") as info:
        backend.stem_input(images.astype(np.int16))
    assert "\n" not in str(info.value)
    with pytest.raises(AcceleratorError, match="takes the images' uint8 pixels"):
        stem.run([floats])
    # a stem engine that takes codes (an overlay built without stem_pixels): the codes of the
    # preprocessed floats, from the preprocessing table
    table_stem = GraphAccelerator(stem.graph, stem.accelerator, stem.tail)
    coded = {**accelerators, m.stem: table_stem}
    backend = FinnBackend(bundle, coded, overlay=overlay)
    stem_in = backend.stem_input(images)
    np.testing.assert_array_equal(stem_in.floats(), floats)
    np.testing.assert_array_equal(stem_in.carried.codes, table_stem.codes(floats))
    assert table_stem.takes(stem_in.carried)
    no_carry = FinnBackend(bundle, coded, overlay=overlay, carry=False)
    np.testing.assert_array_equal(no_carry.stem_input(images), floats)
    # anything but uint8 is not looked up (a negative value would index the table's end)
    np.testing.assert_array_equal(backend.stem_input(images.astype(np.int16)), floats)

    # rows of a carried tensor (the executor's gather for the images that run a block)
    m = bundle.manifest
    rows = np.array([0, 2, 3, 5])
    outs = {}
    for carry in (False, True):
        overlay, accelerators = load_overlay(bundle, overlay_build.deploy, overlay=emulated)
        backend = FinnBackend(bundle, accelerators, overlay=overlay, carry=carry)
        (x,) = backend.run(m.graphs[m.stem], [backend.stem_input(images)])  # its pixels
        assert isinstance(x, EngineTensor) is carry  # the stem's codes, no floats made
        xs = backend.take(x, rows)
        block = accelerators[m.blocks[0].graph]
        block.codes = counted_codes.__get__(block)
        counts["codes"] = 0
        (outs[carry],) = backend.run(m.graphs[m.blocks[0].graph], [xs, np.ones((4, 16), "f4")])
        assert counts["codes"] == (0 if carry else 1), carry
    np.testing.assert_array_equal(as_floats(outs[True]), outs[False])


def _saved(arrays: dict[str, np.ndarray]):
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    return buf


# --- a gated bundle: every executed block on the PL -------------------------------------------


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """The IADI-60 (MGL2S) bundle and its overlay of every compiled graph, emulated."""
    from fpga.bitstream.overlay import prepare_overlay
    from fpga.emulator.overlay import EmulatedDmaOverlay

    path = tmp_path_factory.getbasetemp() / "fpga-bundles" / "r8-iadi60"
    if not path.is_dir():
        import torch

        from export.bundle import export_bundle

        torch.set_num_threads(1)
        export_bundle(GATED, path, progress=False)
    bundle = load_bundle(path)
    build = prepare_overlay(bundle.path, tmp_path_factory.mktemp("gated-overlay"))
    return bundle, build, EmulatedDmaOverlay.from_build(build.out, batch_size=16)


def _gated_iadi_on_the_pl(gated, images: np.ndarray) -> None:
    """iadi mode through FinnBackend over the emulated PL: no block call on the ARM (only the
    gates run there), every executed block on its masked engine, predictions and MACs as the
    onnxruntime executor's."""
    from fpga.board.accel import load_overlay

    bundle, build, emulated = gated
    m = bundle.manifest
    assert m.has_layer_gates and m.has_channel_gates
    overlay, accelerators = load_overlay(bundle, build.deploy, overlay=emulated)
    backend = FinnBackend(bundle, accelerators, overlay=overlay, threads=1)
    on_arm: list[str] = []
    cpu_run = backend.cpu.run

    def arm(graph, inputs):
        on_arm.append(graph.kind)
        return cpu_run(graph, inputs)

    backend.cpu.run = arm
    runs = dict(emulated.images_run)
    got = BundleExecutor(bundle, backend=backend).run(images, mode="iadi")
    want = BundleExecutor(bundle, threads=1).run(images, mode="iadi")
    np.testing.assert_array_equal(got.predictions, want.predictions)
    np.testing.assert_array_equal(got.macs, want.macs)
    np.testing.assert_array_equal(got.executed, want.executed)
    np.testing.assert_allclose(got.logits, want.logits, rtol=0, atol=1e-5)
    assert set(on_arm) <= {"layer_gate", "channel_gate"}, sorted(set(on_arm))
    masked_calls = 0
    for i, block in enumerate(m.blocks):
        engine = accelerators[block.graph].accelerator
        assert engine.mask_input is not None
        ran = int(got.executed[:, i].sum())
        assert emulated.images_run[engine.input] - runs[engine.input] == ran, block.graph
        dropped = got.executed[:, i] & (got.channels[:, i] < block.out_channels)
        masked_calls += int(dropped.sum())
    assert masked_calls > 0  # the gates dropped channels: masked blocks ran on the PL


@needs_cifar10
@pytest.mark.parametrize("images", [48, pytest.param(500, marks=pytest.mark.slow)])
def test_gated_bundle_runs_every_block_on_the_pl(gated, images):
    from train.data import load_cifar10

    _gated_iadi_on_the_pl(gated, load_cifar10("test").images[:images])


# --- quantized gates: the gates' engines on the PL too ------------------------------------------


@pytest.fixture(scope="module")
def gate_engines(quantized_gates_overlay):
    """The quantized-gate bundle (tests/fpga/conftest.py), its overlay with an engine per gate
    FINN graph, emulated."""
    from fpga.emulator.overlay import EmulatedDmaOverlay

    bundle, build = quantized_gates_overlay
    return bundle, build, EmulatedDmaOverlay.from_build(build.out, batch_size=16)


def test_the_overlay_has_an_engine_per_gate(gate_engines):
    """Each gate's FINN graph is an engine with its own DMA pair (no mask stream), counted in
    the interconnect plan and in the completed resource budget; the budget's verdict is what
    it is (ResNet-8 with 29 IODMAs does not fit: their LUTs dominate)."""
    from fpga.bitstream.overlay import engine_graphs
    from fpga.board.accel import OverlaySpec

    bundle, build, _ = gate_engines
    m = bundle.manifest
    gates = [g for b in m.blocks for g in (b.layer_gate, b.channel_gate)]
    assert all(m.graphs[g].finn is not None for g in gates)
    spec = OverlaySpec.load(build.deploy)
    assert sorted(spec.engines) == sorted(engine_graphs(m))
    assert set(gates) <= set(spec.engines)
    shapes = spec.driver_information()["io_shape_dict"]
    for g in gates:
        e = spec.engines[g]
        assert e.mask_input is None
        (out,) = m.graphs[g].finn.outputs
        finn_name = {"UINT1": "BINARY"}.get(out.datatype.name, out.datatype.name)  # one type
        assert shapes["odt"][e.output] == f"DataType['{finn_name}']"
        assert int(np.prod(shapes["oshape_normal"][e.output])) == int(np.prod(out.shape))
        tail = [op["op"] for op in FloatTail.load(spec.root / e.tail).ops]
        # keep bits leave the PL as they are; the embedding's codes get their scale on the ARM
        assert tail == ([] if g.startswith("channel_gate") else ["Transpose", "Flatten", "Mul"])
    masks = sum(e.mask_input is not None for e in spec.engines.values())
    budget = build.estimates["resource_budget"]
    assert budget["interconnect"]["engines"] == len(spec.engines)
    assert budget["interconnect"]["axi_masters"] == 2 * len(spec.engines) + masks
    iodma = [line for line in budget["lines"] if line["item"] == "IODMA_hls"]
    assert iodma[0]["count"] == 2 * len(spec.engines) + masks
    assert budget["verdict"].startswith("fits" if budget["fits"] else "does not fit")


def _gates_on_their_engines(gate_engines, images: np.ndarray) -> None:
    """iadi mode through FinnBackend over the emulated PL: no numpy program runs whole on the
    ARM (only the layer gates' LSTM steps, from their engines' embeddings), every gate call and
    every executed block on its engine, predictions, MACs, executed blocks and channels exactly
    as the onnxruntime executor's."""
    from fpga.board.accel import load_overlay

    bundle, build, emulated = gate_engines
    m = bundle.manifest
    overlay, accelerators = load_overlay(bundle, build.deploy, overlay=emulated)
    backend = FinnBackend(bundle, accelerators, overlay=overlay, threads=1)
    on_arm: list[str] = []
    lstm_steps: list[tuple[str, int]] = []
    cpu_run, cpu_run_from = backend.cpu.run, backend.cpu.run_from

    def arm(graph, inputs):
        on_arm.append(graph.name)
        return cpu_run(graph, inputs)

    def lstm(graph, given, inputs):
        assert given[0] == graph.finn.twin_tensor  # from the engine's embedding on
        lstm_steps.append((graph.name, len(inputs[0])))
        return cpu_run_from(graph, given, inputs)

    backend.cpu.run, backend.cpu.run_from = arm, lstm
    runs = dict(emulated.images_run)
    got = BundleExecutor(bundle, backend=backend).run(images, mode="iadi")
    want = BundleExecutor(bundle, threads=1).run(images, mode="iadi")
    np.testing.assert_array_equal(got.predictions, want.predictions)
    np.testing.assert_array_equal(got.macs, want.macs)
    np.testing.assert_array_equal(got.executed, want.executed)
    np.testing.assert_array_equal(got.channels, want.channels)
    np.testing.assert_allclose(got.logits, want.logits, rtol=0, atol=1e-5)
    assert on_arm == []  # 0 calls on the ARM but the LSTM steps
    assert sorted({name for name, _ in lstm_steps}) == sorted(b.layer_gate for b in m.blocks)

    def ran(name: str) -> int:
        k = accelerators[name].accelerator.input
        return emulated.images_run[k] - runs[k]

    for i, block in enumerate(m.blocks):
        reached = sum(n for name, n in lstm_steps if name == block.layer_gate)
        assert ran(block.layer_gate) == reached == len(images)  # iadi: every image, every gate
        assert ran(block.channel_gate) == ran(block.graph) == int(got.executed[:, i].sum())
    assert not got.executed.all()  # the layer gates skip blocks
    kept = [got.channels[got.executed[:, i], i] for i in range(len(m.blocks))]
    assert any((k < b.out_channels).any() for k, b in zip(kept, m.blocks, strict=True))


@needs_cifar10
@pytest.mark.parametrize("images", [48, pytest.param(500, marks=pytest.mark.slow)])
def test_quantized_gates_run_on_their_engines(gate_engines, images):
    from train.data import load_cifar10

    _gates_on_their_engines(gate_engines, load_cifar10("test").images[:images])


def test_emulator_charges_the_gate_engines(gate_engines):
    """The timing model from the overlay's FINN estimates: a gate with an engine costs its
    marshalling and the longer of its estimated cycles and its DMA, a layer gate also its LSTM
    step on the ARM; without engine estimates the gates stay on the ARM, charged as before."""

    from fpga.emulator.timing import ARM, ENGINE, HardwareReportTiming, lstm_step_macs
    from fpga.hwreport import per_graph_report

    bundle, build, _ = gate_engines
    m = bundle.manifest
    from fpga.finn.frontend import read_estimates

    front_end = read_estimates(build.out / "graphs" / "estimates.json")
    estimates = front_end["graphs"]  # FINN's estimates of every engine's graph
    timing = HardwareReportTiming(per_graph_report(estimates, 10.0, m.bundle_id))
    n = len(m.blocks)
    phases = timing.image_phases(m, np.ones(n, bool), np.ones(n, np.int64), -1, gated=True)
    by_graph = {(p.unit, p.graph): p.duration_s for p in phases}
    for block in m.blocks:
        for gate in (block.layer_gate, block.channel_gate):
            assert (ARM, gate) not in by_graph  # the gate itself is not on the ARM
            spec = m.graphs[gate]
            (out,) = spec.finn.outputs
            # the block input is the previous engine's codes; the keep bits or embedding the
            # ARM needs as floats
            carried, converted = int(np.prod(spec.inputs[0].shape[1:])), int(np.prod(out.shape))
            nbytes = (
                np.prod(spec.inputs[0].shape[1:]) * spec.inputs[0].datatype.bits
                + np.prod(out.shape) * out.datatype.bits
            ) / 8
            compute = estimates[gate]["max_cycles"] / 100e6
            fill = (estimates[gate]["critical_path_cycles"] - estimates[gate]["max_cycles"]) / 100e6
            assert timing.fill_s(m, gate) == pytest.approx(max(fill, 0.0))
            assert by_graph[(ENGINE, gate)] == pytest.approx(  # an image alone in its call
                max(compute, nbytes / timing.dma_bytes_per_s) + timing.fill_s(m, gate)
            )
            # the overlay's engines read and write one pixel a DMA word: the block input's
            # packed bytes go to the gate's DMA as they are
            assert timing.passes_bytes(m, gate)
            assert by_graph[(ARM, f"io:{gate}")] == pytest.approx(
                converted * timing.arm_marshal_s_per_value
            )
            assert carried > 0
        step = by_graph[(ARM, f"lstm:{block.layer_gate}")]
        assert step == pytest.approx(timing.gate_s(lstm_step_macs(m, block.layer_gate)))
        assert lstm_step_macs(m, block.layer_gate) == 4 * 10 * (10 + 10) + 10
        assert step < timing.gate_s(block.layer_gate_macs)
    backbone = {k: v for k, v in estimates.items() if m.graphs[k].finn is None}
    on_arm = HardwareReportTiming(per_graph_report(backbone, 10.0, m.bundle_id))
    phases = on_arm.image_phases(m, np.ones(n, bool), np.ones(n, np.int64), -1, gated=True)
    for block in m.blocks:
        (gate,) = [p for p in phases if p.graph == block.layer_gate]
        assert (gate.unit, gate.duration_s) == (ARM, on_arm.gate_s(block.layer_gate_macs))


def test_emulator_charges_the_arm_bench_model(gate_engines):
    """With the ARM bench's model (``arm_work``) every engine call's ARM phase is its share of
    the call, its own part and its activation bytes at its kind's rate; a layer gate's LSTM
    step and the executor's work per image and block are the bench's; the engines' phases do
    not change; the scale moves only the ARM's phases, and the per-value rates it replaces are
    no parameters then."""
    from fpga.architecture import ArmWork, activation_bytes
    from fpga.emulator.timing import ARM, ENGINE, EXECUTOR, HardwareReportTiming, reached_key
    from fpga.finn.frontend import read_estimates
    from fpga.hwreport import per_graph_report

    bundle, build, _ = gate_engines
    m = bundle.manifest
    estimates = read_estimates(build.out / "graphs" / "estimates.json")["graphs"]
    report = per_graph_report(estimates, 10.0, m.bundle_id)
    work = ArmWork(
        call_s=8e-3,
        call_image_s=2e-5,
        call_byte_s=1e-8,
        byte_s_by_kind={"block": 3e-8},
        lstm_call_s=6.4e-3,
        lstm_image_s=1.5e-4,
        image_s=1e-3,
        block_call_s=3.2e-3,
        block_image_s=3e-4,
    )
    n, images = len(m.blocks), 64
    calls = {name: images for name in m.graphs} | {reached_key(i): images for i in range(n)}
    rows = (m, np.ones(n, bool), np.ones(n, np.int64), -1, True, calls)
    rates = HardwareReportTiming(report).image_phases(*rows)
    timing = HardwareReportTiming(report, arm_work=work)
    phases = timing.image_phases(*rows)
    by_graph = {(p.unit, p.graph): p.duration_s for p in phases}
    for p in phases:
        if p.unit == ARM and p.graph.startswith("io:"):
            graph = p.graph[3:]
            rate = 3e-8 if m.graphs[graph].kind == "block" else 1e-8
            want = 8e-3 / images + 2e-5 + rate * activation_bytes(m, graph)
            assert p.duration_s == pytest.approx(want)
    for block in m.blocks:
        assert by_graph[(ARM, f"lstm:{block.layer_gate}")] == pytest.approx(1.5e-4 + 1e-4)
    assert by_graph[(ARM, EXECUTOR)] == pytest.approx(1e-3 + n * (3e-4 + 5e-5))
    ran = np.ones((5, n), bool)
    ran[:, 1:] = False  # each image ran block 0 only; its layer gates still reach every block
    counted = timing.batch_calls(m, ran, np.full(5, -1), True)
    assert [counted[reached_key(i)] for i in range(n)] == [5] * n
    engine = [(p.graph, p.duration_s) for p in phases if p.unit == ENGINE]
    assert engine == [(p.graph, p.duration_s) for p in rates if p.unit == ENGINE]
    doubled = timing.with_params(arm_work_scale=2.0).image_phases(*rows)
    for a, b in zip(phases, doubled, strict=True):
        assert b.duration_s == pytest.approx(a.duration_s * (2.0 if a.unit == ARM else 1.0))
    assert "arm_work_scale" in timing.params and "arm_pack_s_per_value" not in timing.params
    assert "arm_work_scale" not in HardwareReportTiming(report).params


def test_float_gates_get_no_engine(gated):
    """A float gate has no FINN graph: an accelerator named for it is refused in one line."""
    from fpga.board.runtime import BoardRuntimeError

    bundle = gated[0]
    assert bundle.manifest.graphs["layer_gate0"].finn is None
    with pytest.raises(BoardRuntimeError, match="gates without a FINN graph") as info:
        FinnBackend(bundle, {"layer_gate0": object()})
    assert "\n" not in str(info.value)


@needs_cifar10
def test_arm_bench_times_the_boards_finn_path(gate_engines):
    """``make bench``'s ARM-work run (fpga/board/arm_bench.py) on the quantized-gate bundle:
    the board's PynqDmaOverlay over the bench's register stand-in gives the numpy executor's
    results; no block or gate runs whole on the ARM; each engine's images are counted; a run
    with the same inputs is answered from the stand-in's first run."""
    from cifar.reader import load_cifar10
    from fpga.board import arm_bench

    bundle, build, emulated = gate_engines
    imgs = load_cifar10("test").images[:12]
    answers: dict = {}
    on = arm_bench.finn_work(bundle, build, emulated, imgs, "iadi", True, answers)
    seen = len(answers)
    off = arm_bench.finn_work(bundle, build, emulated, imgs, "iadi", False, answers)
    assert len(answers) == seen > 0  # carrying changes the ARM's work, not the engines' inputs
    want = BundleExecutor(bundle, backend=NumpyBackend(bundle)).run(imgs, mode="iadi")
    for run in (on, off):
        for field in ("predictions", "macs", "executed", "channels"):
            np.testing.assert_array_equal(getattr(run["result"], field), getattr(want, field))
        t = run["per_image"]
        assert t.get("masked_blocks", 0.0) == 0.0
        assert t["marshalling"] > 0 and t["driver"] > 0 and t["gates"] > 0  # the LSTM steps
        m = bundle.manifest
        assert run["calls"][m.stem] == run["calls"][m.head] == len(imgs)
        for i, block in enumerate(m.blocks):
            assert run["calls"].get(block.graph, 0) == int(want.executed[:, i].sum())
        # the timed run's engine calls were the stand-in's replays of the untimed run's
        assert run["replayed_calls"] == sum(run["graph_calls"].values()) > 0
    assert on["per_image"]["marshalling"] < off["per_image"]["marshalling"]


def test_the_bench_stand_in_replays_only_the_recorded_calls():
    """The ARM bench's stand-in PL replays, in the timed run, the bytes each call wrote when it
    was recorded, and refuses a call that is not the recorded one (another engine, or another
    count of images)."""
    from fpga.board.arm_bench import Replay

    replay = Replay()
    replay.calls += [(0, 4, np.arange(8, dtype=np.uint8)), (3, 2, np.ones(2, np.uint8))]
    replay.start()
    np.testing.assert_array_equal(replay.replayed(0, 4), np.arange(8))
    with pytest.raises(AssertionError, match="DMA 3 with 1 images; recorded: 3 with 2"):
        replay.replayed(3, 1)
    replay.start()
    with pytest.raises(AssertionError, match="recorded: 0 with 4"):
        replay.replayed(2, 4)

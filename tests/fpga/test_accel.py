"""Tests of the board's FINN backend adapter (fpga.board.accel) without a board.

A stand-in for the PL runs the REAL dataflow partition of a ResNet-8 block, built by the FINN
front end (fpga.finn.to_hw), with FINN's Python execution on the integer NHWC codes, as the
engine would; :class:`GraphAccelerator` does the rest (codes, layout, float tail). Inside
:class:`BundleExecutor` the FINN backend must give the onnxruntime executor's results exactly on
real CIFAR-10 images. The trained ResNet-8 W4A4 without gates (``base``) runs every block dense,
so every call takes the engine; a mask with zeros must go to onnxruntime instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("finn", reason="finn-plus not installed (make setup installs it)")

from export.executor import BundleExecutor, OnnxRuntimeBackend
from export.manifest import Bundle, load_bundle
from fpga.board.accel import AcceleratorError, FloatTail, GraphAccelerator
from fpga.board.runtime import FinnBackend
from tests.conftest import needs_cifar10

ROOT = Path(__file__).resolve().parents[2]
TRAINED = ROOT / "measurements" / "train" / "resnet8-w4a4" / "base" / "final.pt"
"""ResNet-8 W4A4 without gates (a recorded training run): every block runs with mask ones."""
GRAPH = "block1"
"""16 -> 32 channels, stride 2, projection shortcut: the richest block of ResNet-8."""
IMAGES = 6


class PartitionStandIn:
    """The PL's engine: FINN's Python execution of the graph's dataflow partition only."""

    def __init__(self, parent) -> None:
        from fpga.finn import dataflow_model, python_model

        self.model = python_model(dataflow_model(parent))
        self.calls = 0

    def execute(self, codes: np.ndarray) -> np.ndarray:
        from qonnx.core.onnx_exec import execute_onnx

        assert codes.dtype.kind == "i" and codes.ndim == 4  # integer codes, NHWC, batch first
        self.calls += 1
        name_in, name_out = self.model.graph.input[0].name, self.model.graph.output[0].name
        out = [
            execute_onnx(self.model, {name_in: codes[i : i + 1].astype(np.float32)})[name_out]
            for i in range(len(codes))
        ]
        return np.concatenate(out)


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
    want = BundleExecutor(bundle, threads=1).run(images, mode="full")
    assert accelerator.accelerator.calls > calls  # block1 ran on the stand-in
    np.testing.assert_array_equal(got.logits, want.logits)  # bit for bit
    np.testing.assert_array_equal(got.predictions, want.predictions)
    np.testing.assert_array_equal(got.macs, want.macs)


@needs_cifar10
def test_masks_and_bad_codes(bundle, accelerator, images):
    m = bundle.manifest
    spec = m.graphs[GRAPH]
    cpu = OnnxRuntimeBackend(bundle, threads=1)
    (x,) = cpu.run(m.graphs[m.stem], [m.preprocess.apply(images[:2])])
    (x,) = cpu.run(m.graphs[m.blocks[0].graph], [x, np.ones((2, 16), np.float32)])
    backend = FinnBackend(bundle, accelerators={GRAPH: accelerator}, threads=1)

    # a mask that drops channels: onnxruntime runs the call, not the dense engine
    mask = np.ones((2, 32), np.float32)
    mask[:, ::3] = 0
    calls = accelerator.accelerator.calls
    (y,) = backend.run(spec, [x, mask])
    assert accelerator.accelerator.calls == calls
    np.testing.assert_array_equal(y, cpu.run(spec, [x, mask])[0])

    # all ones: the engine, bit-exact to the twin
    ones = np.ones((2, 32), np.float32)
    (y,) = backend.run(spec, [x, ones])
    assert accelerator.accelerator.calls == calls + 1
    np.testing.assert_array_equal(y, cpu.run(spec, [x, ones])[0])

    scale = spec.inputs[0].datatype.scale
    with pytest.raises(AcceleratorError, match="is not integer") as info:
        accelerator.run([x + np.float32(0.3 * scale), ones])
    assert "\n" not in str(info.value)
    with pytest.raises(AcceleratorError, match=r"outside UINT4's \[0, 15\]"):
        accelerator.run([x + np.float32(16 * scale), ones])

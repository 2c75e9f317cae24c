"""FINN front end on the quantized gates: hw layers only, and bit-exact against the twins.

The model (tests/fpga/gate_bundle.py) is the recorded ResNet-8 W4A4 MGL2S run with quantized
gates started from its float gates (as an ``iadi`` run on a float-gated checkpoint starts
them), their activation scales set from real training images and their operating point
calibrated again (a logit offset folded into the biases, which must become the FINN engine's
keep threshold). For every gate graph:
(a) FINN's builder maps it to specialized HW layers only: the channel gate to FMPadding,
ConvolutionInputGenerator, MVAU, Thresholding (conv, BN, ReLU), GlobalAccPool, Thresholding
(the pooled vector's quantizer), MVAU (FC) and a one-step Thresholding (the keep bit); the
layer gate's front to GlobalAccPool, Thresholding, MVAU, Thresholding (the embedding's codes);
(b) FINN's Python execution on real CIFAR-10 test images equals the onnxruntime twin bit for
bit: keep bits = ``prob > gate_threshold`` of the channel gate's twin, the embedding = the layer
gate twin's tensor that feeds its LSTM step.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("finn", reason="finn-plus not installed (make setup installs it)")

from export.manifest import Bundle
from fpga.finn import dataflow_model, estimate, execute, to_hw
from tests.conftest import needs_cifar10
from tests.fpga.gate_bundle import images

pytestmark = needs_cifar10

IMAGES = 100
CHANNEL_GATE_LAYERS = [
    "FMPadding",
    "ConvolutionInputGenerator",
    "MVAU",
    "Thresholding",
    "GlobalAccPool",
    "Thresholding",
    "MVAU",
    "Thresholding",
]
LAYER_GATE_LAYERS = ["GlobalAccPool", "Thresholding", "MVAU", "Thresholding"]
GATES = [f"{kind}{i}" for i in range(3) for kind in ("channel_gate", "layer_gate")]


def _images(split: str, n: int) -> np.ndarray:
    return images(split, n)


@pytest.fixture(scope="module")
def gate_bundle(quantized_gates) -> Bundle:
    bundle, delta, cost = quantized_gates  # tests/fpga/conftest.py
    assert delta != 0.0  # the offset the engines' thresholds must carry
    assert 0.3 < cost < 0.5  # gates that really decide
    return bundle


@pytest.fixture(scope="module")
def builds(gate_bundle, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("finn-gate-builds")
    graphs = gate_bundle.manifest.graphs
    return {
        name: to_hw(
            gate_bundle.path / graphs[name].finn.file,
            graphs[name].inputs[0].datatype,
            out / name,
        )
        for name in GATES
    }


@pytest.fixture(scope="module")
def gate_inputs(gate_bundle) -> dict[str, np.ndarray]:
    """Each gate's input on IMAGES real test images: the stream entering its block, from the
    twins chained with every block running at full width."""
    manifest = gate_bundle.manifest
    x = manifest.preprocess.apply(_images("test", IMAGES))
    (y,) = _run(gate_bundle, manifest.stem, [x])
    inputs = {}
    for block in manifest.blocks:
        inputs[block.channel_gate] = inputs[block.layer_gate] = y
        mask = np.ones((len(y), block.out_channels), np.float32)
        (y,) = _run(gate_bundle, block.graph, [y, mask])
    return inputs


def _run(bundle: Bundle, name: str, args: list[np.ndarray], extra: tuple[str, ...] = ()):
    """The twin of graph ``name`` in onnxruntime; ``extra`` inner tensors are returned too."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(bundle.path / bundle.manifest.graphs[name].onnx.file))
    model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in extra)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, args, strict=True)))


def _producer_input(bundle: Bundle, name: str, tensor: str) -> str:
    """The first input of the twin's node that writes ``tensor``."""
    import onnx

    graph = onnx.load(str(bundle.path / bundle.manifest.graphs[name].onnx.file)).graph
    (node,) = [n for n in graph.node if tensor in n.output]
    return node.input[0]


def _base_op(node) -> str:
    return node.op_type.rsplit("_", 1)[0]


def test_the_bundle_holds_a_finn_graph_for_every_gate_and_none_for_the_backbone(gate_bundle):
    manifest = gate_bundle.manifest
    graphs = manifest.graphs
    assert sorted(n for n, g in graphs.items() if g.finn is not None) == sorted(GATES)
    for block in manifest.blocks:
        for name in (block.channel_gate, block.layer_gate):
            assert graphs[name].qonnx is None  # not a backbone engine (fpga/architecture.py)
        (keep,) = graphs[block.channel_gate].finn.outputs
        assert (keep.name, keep.datatype.name, keep.shape) == (
            "keep",
            "UINT1",
            (1, block.out_channels),
        )
        (code,) = graphs[block.layer_gate].finn.outputs
        assert (code.name, code.datatype.name, code.shape) == ("embedding", "INT8", (1, 10))


@pytest.mark.parametrize("name", GATES)
def test_gate_graph_reaches_only_specialized_hw_layers(builds, name):
    parent = builds[name]
    hw = dataflow_model(parent)
    for node in hw.graph.node:
        assert node.domain.startswith("finn.custom_op.fpgadataflow"), node.name
        assert node.domain.split(".")[-1] in ("hls", "rtl"), (node.name, node.domain)
    expected = CHANNEL_GATE_LAYERS if name.startswith("channel_gate") else LAYER_GATE_LAYERS
    assert [_base_op(n) for n in hw.graph.node] == expected
    outside = [n.op_type for n in parent.graph.node if n.op_type != "StreamingDataflowPartition"]
    if name.startswith("channel_gate"):
        assert outside == ["Transpose"]  # the keep bits leave the PL as they are
        from qonnx.custom_op.registry import getCustomOp

        keep = getCustomOp(hw.graph.node[-1])
        assert keep.get_nodeattr("numSteps") == 1  # logit > 0: one threshold per channel
    else:  # the codes leave the PL; their scale (a float Mul) is applied on the ARM
        assert outside == ["Transpose", "Transpose", "Flatten", "Mul"]
    report = estimate(parent)
    assert set(report["layers"]) == {n.name for n in hw.graph.node}
    assert all(layer["cycles"] > 0 for layer in report["layers"].values())


@pytest.mark.parametrize("name", GATES)
def test_gate_python_execution_equals_the_twin(gate_bundle, builds, gate_inputs, name):
    """Bit for bit, except where the twin's float32 sums put a value within float rounding of
    a decision: a logit within 1e-4 of 0, or an embedding within 1e-3 codes of a rounding tie
    (the engine's integer accumulator has no rounding; a float64 recomputation sides with it,
    docs/finn-frontend.md). At most 1% of the values may be such near-ties."""
    manifest = gate_bundle.manifest
    spec = manifest.graphs[name]
    x = gate_inputs[name]
    scale = np.float32(spec.inputs[0].datatype.scale)
    codes = np.round(x / scale)
    assert np.array_equal(codes * scale, x), "twin input is not code * scale"
    if name.startswith("channel_gate"):
        logits = _producer_input(gate_bundle, name, "prob")
        prob, before = _run(gate_bundle, name, [x], extra=(logits,))
        expected = (prob > manifest.gate_threshold).astype(np.float32)  # (N, C_out)
        near = np.abs(before) < 1e-4
    else:
        hidden = np.zeros((len(x), manifest.gate_hidden), np.float32)
        embedding = spec.finn.twin_tensor  # Flatten <- DequantizeLinear <- QuantizeLinear
        dequantized = _producer_input(gate_bundle, name, embedding)
        quantized = _producer_input(gate_bundle, name, dequantized)
        rounded = _producer_input(gate_bundle, name, quantized)  # the conv's output, unrounded
        *_, expected, before = _run(
            gate_bundle, name, [x, hidden, hidden], extra=(embedding, rounded)
        )
        out_scale = np.float32(spec.finn.outputs[0].datatype.scale)
        frac = np.abs(before.reshape(expected.shape) / out_scale) % 1.0
        near = np.abs(frac - 0.5) < 1e-3
    got = np.concatenate([execute(builds[name], codes[i : i + 1]) for i in range(len(x))])
    assert got.shape == expected.shape
    differ = got != expected
    assert not (differ & ~near).any(), np.argwhere(differ & ~near)[:5]
    assert near.mean() <= 0.01
    if name.startswith("channel_gate"):
        assert expected.any()  # the gate keeps channels (gate 0 keeps all of them here)
    else:
        assert np.abs(got - expected).max() <= out_scale * 1.0001  # one code at most
        assert np.array_equal(np.round(got / out_scale) * out_scale, got)
        assert len(np.unique(got)) > 10


def test_the_channel_gates_skip_channels_on_real_images(gate_bundle, gate_inputs):
    threshold = gate_bundle.manifest.gate_threshold
    kept = [
        (_run(gate_bundle, name, [gate_inputs[name]])[0] > threshold).mean()
        for name in GATES
        if name.startswith("channel_gate")
    ]
    assert min(kept) < 0.9 and max(kept) > 0.0, kept


def test_the_boards_numpy_programs_make_the_twins_decisions(gate_bundle):
    """The ARM's numpy programs of the quantized gates (export/lower.py) decide as the
    onnxruntime twins on real test images: same executed blocks, channels and MACs."""
    from export.executor import BundleExecutor
    from export.program import NumpyBackend

    images = _images("test", IMAGES)
    want = BundleExecutor(gate_bundle, threads=1).run(images, mode="iadi")
    got = BundleExecutor(gate_bundle, backend=NumpyBackend(gate_bundle)).run(images, "iadi")
    np.testing.assert_array_equal(got.executed, want.executed)
    np.testing.assert_array_equal(got.channels, want.channels)
    np.testing.assert_array_equal(got.macs, want.macs)
    np.testing.assert_array_equal(got.predictions, want.predictions)
    assert not want.executed.all()  # the layer gates skip blocks


def test_the_front_end_command_builds_a_gate_named_on_it(gate_bundle, tmp_path):
    from fpga.finn.frontend import build_bundle

    results = build_bundle(gate_bundle.path, tmp_path, graphs=["channel_gate1"])
    assert list(results) == ["channel_gate1"]
    assert [
        layer["op_type"].rsplit("_", 1)[0] for layer in results["channel_gate1"]["layers"].values()
    ] == CHANNEL_GATE_LAYERS

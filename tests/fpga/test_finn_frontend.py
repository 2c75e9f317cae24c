"""Tests of the FINN front end (fpga.finn) on every QONNX graph of a trained ResNet-8 bundle.

For each graph, FINN's builder runs the front end once per session: (a) the dataflow partition
holds only specialized FINN HW layers, with the float ends outside it, and FINN's estimates
cover every layer; (b) FINN's Python execution of the result (the dataflow parent, its
partition run node by node) equals the graph's onnxruntime twin on real CIFAR-10 test images
pushed through the twins of the graphs before it; blocks with the channel masks that the
trained channel gates give those images (as a 1-bit map, the manifest's ``qonnx_inputs``).
Tolerance: bit-exact, except where the graph ends in a float classifier (head, exits), whose
logits differ from the twin's by float32 rounding of the same sums (|diff| <= 1e-5 + 1e-5
|logit|) and pick the same class. Exits come from an untrained quantized ResNet-8 with exits
(the trained bundle has none).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("finn", reason="finn-plus not installed (make setup installs it)")

from export.manifest import Bundle, load_bundle
from fpga.finn import (
    GraphError,
    dataflow_model,
    estimate,
    execute,
    to_hw,
)
from fpga.finn.frontend import XC7Z020, estimate_table
from fpga.finn.steps import FRONTEND_STEPS
from tests.conftest import needs_cifar10

ROOT = Path(__file__).resolve().parents[2]
TRAINED = ROOT / "measurements" / "train" / "resnet8-w4a4" / "iadi-60" / "final.pt"
"""ResNet-8 W4A4 with MGL2S gates at 60% compute savings (a recorded training run)."""
GRAPHS = ["stem", "block0", "block1", "block2", "shortcut1", "shortcut2", "head"]
"""Every graph of the ResNet-8 bundle that has a QONNX graph (checked below)."""
EXIT_GRAPHS = ["exit0", "exit1"]
FLOAT_TAIL = {"head", "exit0", "exit1"}
"""Graphs that end in the classifier's float scale and bias (not bit-exact, see above)."""
IMAGES = 4
OUTSIDE_OPS = {"Transpose", "Mul", "Add"}
"""What may stay outside the partition: the input/output transposes and the float tail."""
NOT_HW_OPS = {"Transpose", "Im2Col", "MatMul", "Conv", "MultiThreshold", "Add", "Mul"}


def _export(checkpoint: Path, path: Path) -> Path:
    if not path.is_dir():
        import torch

        from export.bundle import export_bundle

        torch.set_num_threads(1)
        export_bundle(checkpoint, path, progress=False)
    return path


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Bundle:
    """The bundle of TRAINED, exported once per session (the same folder as the other fpga
    tests use, so a full run exports it once)."""
    path = tmp_path_factory.getbasetemp() / "fpga-bundles" / "r8-iadi60"
    return load_bundle(_export(TRAINED, path))


@pytest.fixture(scope="session")
def exits_bundle(tmp_path_factory) -> Bundle:
    """An untrained quantized ResNet-8 with exits (BN statistics and activation scales from
    random images), exported: its exit graphs have max pools the backbone lacks."""
    import torch

    from train.checkpoint import save_checkpoint
    from train.model import create_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("resnet8", gating="mgl2s", exits=True, quant={})
    model.train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(2):
            model(torch.randint(0, 256, (64, 3, 32, 32), generator=g).float().div(255))
    model.eval()
    folder = tmp_path_factory.mktemp("finn-exits")
    save_checkpoint(folder / "r8-exits.pt", model, phase="test", config={})
    return load_bundle(_export(folder / "r8-exits.pt", folder / "bundle"))


def _build(bundle: Bundle, names: list[str], out: Path) -> dict:
    graphs = bundle.manifest.graphs
    return {
        name: to_hw(
            bundle.path / graphs[name].qonnx.file, graphs[name].inputs[0].datatype, out / name
        )
        for name in names
    }


@pytest.fixture(scope="session")
def builds(bundle, tmp_path_factory) -> dict:
    """Graph name -> the dataflow parent from FINN's builder (one build per graph)."""
    return _build(bundle, GRAPHS, tmp_path_factory.mktemp("finn-builds"))


@pytest.fixture(scope="session")
def exit_builds(exits_bundle, tmp_path_factory) -> dict:
    return _build(exits_bundle, EXIT_GRAPHS, tmp_path_factory.mktemp("finn-exit-builds"))


class Twins:
    """The bundle's onnxruntime twins, and each FINN graph's input on some images: the twins
    chained (all channels kept) from the manifest's exact preprocessing on."""

    def __init__(self, bundle: Bundle, images: np.ndarray) -> None:
        import onnxruntime as ort

        self.bundle, manifest = bundle, bundle.manifest
        self.options = ort.SessionOptions()
        self.options.intra_op_num_threads = 1
        x = manifest.preprocess.apply(images)  # (N, 3, 32, 32)
        self.inputs = {manifest.stem: x}
        y = self.run(manifest.stem, x)
        for block in manifest.blocks:
            self.inputs[block.graph] = y
            if block.shortcut is not None:
                self.inputs[block.shortcut] = y
            y = self.run(block.graph, y, np.ones((len(y), block.out_channels), np.float32))
            for ex in manifest.exits:
                if ex.after_block == block.index:
                    self.inputs[ex.graph] = y
        self.inputs[manifest.head] = y

    def run(self, name: str, *args: np.ndarray) -> np.ndarray:
        import onnxruntime as ort

        path = self.bundle.path / self.bundle.manifest.graphs[name].onnx.file
        session = ort.InferenceSession(str(path), self.options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return session.run(None, dict(zip(names, args, strict=True)))[0]


@pytest.fixture(scope="session")
def cifar_images() -> np.ndarray:
    from train.data import load_cifar10

    return load_cifar10("test").images[:IMAGES]  # (N, 32, 32, 3) uint8


@pytest.fixture(scope="session")
def twins(bundle, cifar_images) -> Twins:
    return Twins(bundle, cifar_images)


@pytest.fixture(scope="session")
def exit_twins(exits_bundle, cifar_images) -> Twins:
    return Twins(exits_bundle, cifar_images)


def _check_parity(twins: Twins, parent, name: str) -> None:
    spec = twins.bundle.manifest.graphs[name]
    x = twins.inputs[name]
    extra, maps = [], [None] * len(x)
    if spec.kind == "block":  # the trained channel gate's masks for these images
        m = twins.bundle.manifest
        (block,) = [b for b in m.blocks if b.graph == name]
        prob = twins.run(block.channel_gate, x)
        mask = (prob > m.gate_threshold).astype(np.float32)  # (N, C_out)
        mask[0] = 1.0  # one image with every channel kept,
        mask[-1, ::3] = 0.0  # and one that surely drops some
        extra = [mask]
        _, c, h, w = spec.qonnx_inputs[1].shape
        maps = np.broadcast_to(mask[:, :, None, None], (len(x), c, h, w))
    expected = twins.run(name, x, *extra)
    scale = np.float32(spec.inputs[0].datatype.scale)
    for i in range(len(x)):
        codes = np.round(x[i : i + 1] / scale)  # (1, C, H, W) integer codes
        assert np.array_equal(codes * scale, x[i : i + 1]), "twin input is not code * scale"
        got = execute(parent, codes, None if maps[i] is None else maps[i][None])
        assert got.shape == expected[i : i + 1].shape
        assert np.any(got != 0)
        if name in FLOAT_TAIL:
            np.testing.assert_allclose(got, expected[i : i + 1], rtol=1e-5, atol=1e-5)
            assert got.argmax() == expected[i].argmax()
        else:
            np.testing.assert_array_equal(got, expected[i : i + 1])


def _check_hw(parent) -> None:
    partitions = parent.get_nodes_by_op_type("StreamingDataflowPartition")
    assert len(partitions) == 1
    outside = {n.op_type for n in parent.graph.node} - {"StreamingDataflowPartition"}
    assert outside <= OUTSIDE_OPS, outside
    hw = dataflow_model(parent)
    for node in hw.graph.node:
        assert node.domain.split(".")[-1] in ("hls", "rtl"), (node.name, node.domain)
        assert node.domain.startswith("finn.custom_op.fpgadataflow")
        assert node.op_type not in NOT_HW_OPS
    report = estimate(parent)
    assert set(report["layers"]) == {n.name for n in hw.graph.node}
    assert all(layer["cycles"] > 0 for layer in report["layers"].values())
    assert report["max_cycles"] == max(v["cycles"] for v in report["layers"].values())
    assert report["critical_path_cycles"] >= report["max_cycles"]
    for kind, budget in XC7Z020.items():
        assert 0 <= report["total"][kind] <= budget


def test_every_qonnx_graph_is_covered(bundle):
    assert sorted(GRAPHS) == sorted(n for n, g in bundle.manifest.graphs.items() if g.qonnx)


@pytest.mark.parametrize("name", GRAPHS)
def test_graph_reaches_specialized_hw_layers(builds, name):
    _check_hw(builds[name])


@needs_cifar10
@pytest.mark.parametrize("name", GRAPHS)
def test_python_execution_matches_onnxruntime_twin(builds, twins, name):
    _check_parity(twins, builds[name], name)


@pytest.mark.parametrize("name", EXIT_GRAPHS)
def test_exit_graph_reaches_specialized_hw_layers(exit_builds, name):
    _check_hw(exit_builds[name])
    ops = {n.op_type for n in dataflow_model(exit_builds[name]).graph.node}
    assert "Pool_hls" in ops or any(op.startswith("StreamingMaxPool") for op in ops)


@needs_cifar10
@pytest.mark.parametrize("name", EXIT_GRAPHS)
def test_exit_python_execution_matches_onnxruntime_twin(exit_builds, exit_twins, name):
    _check_parity(exit_twins, exit_builds[name], name)


def test_build_folder_keeps_every_step_and_report(builds):
    from qonnx.custom_op.registry import getCustomOp

    partition = builds["block1"].get_nodes_by_op_type("StreamingDataflowPartition")[0]
    folder = Path(getCustomOp(partition).get_nodeattr("model")).parent.parent
    for step in FRONTEND_STEPS:
        name = step if isinstance(step, str) else step.__name__
        assert (folder / "intermediate_models" / f"{name}.onnx").is_file(), name
    for report in ("estimate_layer_cycles", "estimate_layer_resources", "time_per_step"):
        assert (folder / "report" / f"{report}.json").is_file(), report
    assert json.loads((folder / "report" / "metadata_builder.json").read_text())["status"] == "ok"
    config = json.loads((folder / "frontend_config.json").read_text())
    assert config["fpga_part"] == "xc7z020clg484-1"


def test_builder_leaves_streams_logging_and_environment_alone(bundle, tmp_path):
    root = logging.getLogger()
    before = (sys.stdout, sys.stderr, list(root.handlers), root.level)
    vivado = os.environ.get("XILINX_VIVADO")
    spec = bundle.manifest.graphs["head"]
    to_hw(bundle.path / spec.qonnx.file, spec.inputs[0].datatype, tmp_path / "head")
    assert (sys.stdout, sys.stderr, list(root.handlers), root.level) == before
    assert os.environ.get("XILINX_VIVADO") == vivado


def test_input_datatype_must_match_the_graph(bundle, tmp_path):
    spec = bundle.manifest.graphs["block0"]
    with pytest.raises(GraphError, match="INT8"):
        to_hw(bundle.path / spec.qonnx.file, "INT8", tmp_path / "int8")
    wrong = type(spec.inputs[0].datatype)(spec.inputs[0].datatype.name, 0.5)
    with pytest.raises(GraphError, match="scale"):
        to_hw(bundle.path / spec.qonnx.file, wrong, tmp_path / "scale")


def test_estimate_table_lists_every_graph(builds):
    estimates = {name: estimate(parent) for name, parent in builds.items()}
    table = estimate_table(estimates)
    for name in GRAPHS:
        assert f"| {name} |" in table
    assert "XC7Z020" in table


def _all_pixel_values(channels: int) -> np.ndarray:
    """One (1, 32, 32, C) uint8 image holding every pixel value 0..255 in every channel (each
    channel shifted, so that the channels' values differ at a pixel)."""
    index = np.arange(32 * 32).reshape(32, 32, 1) + 85 * np.arange(channels)
    return (index % 256).astype(np.uint8)[None]


def test_pixel_thresholds_reproduce_the_preprocessing_table(bundle):
    """The stem's thresholds over the uint8 pixels give the manifest's preprocessing table
    for every pixel value of every channel; a table that is not 256 non-decreasing integer
    codes a channel is refused in one line."""
    from qonnx.custom_op.general.multithreshold import multithreshold

    from fpga.finn.transforms import pixel_thresholds

    table = np.asarray(bundle.manifest.preprocess.lut)
    thresholds, low = pixel_thresholds(table)
    pixels = np.tile(np.arange(256, dtype=np.float32), (len(table), 1))[None]  # (1, C, 256)
    got = multithreshold(pixels, thresholds, out_bias=low)[0]
    np.testing.assert_array_equal(got, table)
    assert thresholds.shape == (len(table), table.max() - table.min())
    for bad, match in (
        (table[:, :255], "not C rows of 256 integer codes"),
        (table + 0.5, "not C rows of 256 integer codes"),
        (table[:, ::-1], "decreases with the pixel value"),
    ):
        with pytest.raises(GraphError, match=match) as info:
            pixel_thresholds(bad)
        assert "\n" not in str(info.value)


@pytest.fixture(scope="session")
def pixel_stem(bundle, tmp_path_factory):
    """The stem built to take the images' uint8 pixels (``pixel_table``)."""
    spec = bundle.manifest.graphs["stem"]
    out = tmp_path_factory.mktemp("finn-pixel-stem")
    table = bundle.manifest.preprocess.lut
    return to_hw(bundle.path / spec.qonnx.file, spec.inputs[0].datatype, out, None, table)


@needs_cifar10
def test_stem_takes_pixels_and_thresholds_them_itself(bundle, pixel_stem, twins, cifar_images):
    """A stem built with the preprocessing table: its engine's first layer is a Thresholding
    of UINT8 pixels, and FINN's Python execution on the pixels equals the stem's onnxruntime
    twin on the preprocessed images, bit for bit, for real test images and an image holding
    every pixel value in every channel."""
    from qonnx.core.datatype import DataType

    _check_hw(pixel_stem)
    hw = dataflow_model(pixel_stem)
    first = hw.graph.node[0]
    assert first.op_type.startswith("Thresholding")
    assert hw.get_tensor_datatype(first.input[0]) == DataType["UINT8"]
    m = bundle.manifest
    images = np.concatenate([cifar_images, _all_pixel_values(len(m.preprocess.lut))])
    expected = twins.run(m.stem, m.preprocess.apply(images))
    for i, image in enumerate(images):
        pixels = np.transpose(image[None], (0, 3, 1, 2)).astype(np.float32)  # NCHW values
        np.testing.assert_array_equal(execute(pixel_stem, pixels), expected[i : i + 1])

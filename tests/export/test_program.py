"""The numpy programs (what the board runs) against the onnxruntime twins (the reference)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from export.errors import BundleError
from export.executor import BundleExecutor
from export.manifest import load_bundle
from export.program import NumpyBackend, Program
from tests.conftest import needs_cifar10

LOGIT_TOLERANCE = 1e-4
"""Largest |numpy - onnxruntime| logit allowed: float32 rounding of a different summation order
(measured on the IADI-60 ResNet-8: about 3e-6 on 1,000 test images)."""


@needs_cifar10
@pytest.mark.parametrize("mode", ["full", "iadi"])
def test_numpy_backend_equals_onnxruntime_on_test_images(trained_bundle, mode):
    """Real CIFAR-10 test images, the trained IADI bundle: same predictions, same executed
    blocks and channels, same MACs, logits within float32 rounding."""
    from train.data import load_cifar10

    images = load_cifar10("test").images[:500]
    want = BundleExecutor(trained_bundle, threads=1).run(images, mode=mode)
    got = BundleExecutor(trained_bundle, backend=NumpyBackend(trained_bundle)).run(images, mode)
    np.testing.assert_array_equal(got.predictions, want.predictions)
    np.testing.assert_array_equal(got.executed, want.executed)
    np.testing.assert_array_equal(got.channels, want.channels)
    np.testing.assert_array_equal(got.macs, want.macs)
    np.testing.assert_allclose(got.logits, want.logits, rtol=0, atol=LOGIT_TOLERANCE)
    if mode == "iadi":
        assert not got.executed.all()  # the gates really skip blocks here


def test_numpy_backend_equals_onnxruntime_with_exits(exits_bundle):
    """Every graph kind (exits with max pooling included) under a DDI budget."""
    images = np.random.default_rng(3).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    numpy_executor = BundleExecutor(exits_bundle, backend=NumpyBackend(exits_bundle))
    reference = BundleExecutor(exits_bundle, threads=1)
    answered = set()
    for fraction in (0.2, 0.5, 0.8, 1.2):
        budget = fraction * exits_bundle.manifest.full_macs
        want = reference.run(images, "ddi", budget_macs=budget)
        got = numpy_executor.run(images, "ddi", budget_macs=budget)
        for field in ("predictions", "exits", "executed", "channels", "macs", "over_budget"):
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field), field)
        np.testing.assert_allclose(got.logits, want.logits, rtol=0, atol=LOGIT_TOLERANCE)
        answered |= set(got.exits.tolist())
    assert len(answered) > 1  # several classifiers answered


def test_quantized_graphs_are_bit_exact_on_integer_codes(trained_bundle):
    """A block's output is quantized: on the same codes numpy and onnxruntime agree exactly."""
    m = trained_bundle.manifest
    cpu = BundleExecutor(trained_bundle, threads=1).backend
    rng = np.random.default_rng(0)
    for block in m.blocks:
        spec = m.graphs[block.graph]
        dt = spec.inputs[0].datatype
        low, high = dt.integer_range()
        x = rng.integers(low, high + 1, (8, *spec.inputs[0].shape[1:])).astype(np.float32)
        x *= np.float32(dt.scale)
        mask = (rng.random((8, block.out_channels)) > 0.3).astype(np.float32)
        program = Program.from_bytes(trained_bundle.read(spec.numpy))
        (want,) = cpu.run(spec, [x, mask])
        (got,) = program.run([x, mask])
        np.testing.assert_array_equal(got, want)
    ops = {n["op"] for n in program.nodes}
    assert "quant" in ops and "conv" in ops and "batchnorm" not in ops  # fused, BN folded
    quant = next(n for n in program.nodes if n["op"] == "quant")["attrs"]
    assert quant["bits"] == 4 and not quant["signed"]  # W4A4: 4-bit unsigned activations


def test_an_older_manifest_is_refused_in_one_line(trained_bundle, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(trained_bundle.path, copy)
    doc = json.loads((copy / "manifest.json").read_text())
    doc["version"] = 1
    (copy / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=r"version 1.*python -m export CKPT --out DIR") as info:
        load_bundle(copy)
    assert "\n" not in str(info.value)


def test_a_damaged_program_is_refused(trained_bundle, tmp_path):
    copy = tmp_path / "bad"
    shutil.copytree(trained_bundle.path, copy)
    (copy / "block0.npz").write_bytes(b"not an npz")
    with pytest.raises(BundleError, match=r"block0\.npz"):
        NumpyBackend(load_bundle(copy, verify=False))
    with pytest.raises(BundleError, match="cannot be read"):
        Program.from_bytes(b"not an npz", "x.npz")


def test_a_program_runs_from_an_inner_tensor():
    """``starting_at``: the nodes below the given tensors only, with the same results; an
    output that needs an input not given is refused in one line."""
    from export.errors import ExecutionError

    nodes = [
        {"op": "mul", "inputs": ["x"], "outputs": ["a"], "attrs": {"const": 3.0}},
        {"op": "add", "inputs": ["a", "h"], "outputs": ["b"], "attrs": {}},
        {"op": "relu", "inputs": ["b"], "outputs": ["y"], "attrs": {}},
        {"op": "mul", "inputs": ["h"], "outputs": ["h_out"], "attrs": {"const": 2.0}},
    ]
    program = Program("p", ["x", "h"], ["y", "h_out"], nodes, {})
    x = np.array([[-1.0, 2.0]], np.float32)
    h = np.array([[0.5, -9.0]], np.float32)
    y, h_out = program.run([x, h])
    part = program.starting_at(["a", "h"])
    assert [n["op"] for n in part.nodes] == ["add", "relu", "mul"]  # not the first mul
    got = part.run([x * np.float32(3.0), h])
    np.testing.assert_array_equal(got[0], y)
    np.testing.assert_array_equal(got[1], h_out)
    with pytest.raises(ExecutionError, match="need input 'h'") as info:
        program.starting_at(["a"])
    assert "\n" not in str(info.value)
    with pytest.raises(ExecutionError, match="no tensor"):
        program.starting_at(["zz"])

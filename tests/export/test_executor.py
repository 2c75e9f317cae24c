"""The bundle executor against the PyTorch model: decisions, exits, predictions, MACs, logits."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from export.errors import ExecutionError
from export.executor import BundleExecutor
from export.verify import LOGIT_ATOL, verify_bundle
from tests.conftest import needs_cifar10

from .conftest import TRAINED


@needs_cifar10
def test_trained_bundle_matches_the_model_on_real_test_images(trained_bundle):
    """Must-show parity: trained, gated, W4A4 ResNet-8 on real CIFAR-10 test images."""
    report = verify_bundle(trained_bundle.path, TRAINED, images=1000, threads=1, progress=False)
    (iadi,) = report.modes
    assert report.ok, report.lines()
    assert iadi.all_agree >= 0.995 and iadi.macs_agree >= 0.995
    assert iadi.max_logit_diff <= LOGIT_ATOL
    assert "JPEG" in report.data or "original" in report.data


@needs_cifar10
def test_exits_bundle_matches_anytime_inference_under_every_budget(exits_bundle, exits_checkpoint):
    report = verify_bundle(
        exits_bundle.path, exits_checkpoint, images=300, threads=1, progress=False
    )
    assert len(report.modes) == 1 + len(exits_bundle.manifest.exits) + 1  # iadi, exits, full
    assert report.ok, report.lines()


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_decisions_are_mixed_and_batching_changes_no_decision(exits_bundle):
    ex = BundleExecutor(exits_bundle, threads=1)
    images = _images(96)
    # A budget at which some images finish and others halt at an exit (the exit's price is
    # kept in reserve until the end, so it lies between the IADI costs plus an exit's).
    iadi_macs = ex.run(images).macs
    exit_macs = max(e.macs for e in exits_bundle.manifest.exits)
    candidates = np.linspace(iadi_macs.min(), iadi_macs.max() + exit_macs, 25)
    budget = next(
        float(b)
        for b in candidates
        if len(np.unique(ex.run(images, mode="ddi", budget_macs=b).exits)) > 1
    )
    for mode, b in (("iadi", None), ("ddi", budget)):
        whole = ex.run(images, mode=mode, budget_macs=b)
        parts = ex.run(images, mode=mode, budget_macs=b, batch_size=7)
        for field in whole.__dataclass_fields__:
            if field == "logits":  # float tail: onnxruntime's GEMM rounds per batch shape
                np.testing.assert_allclose(whole.logits, parts.logits, atol=1e-6)
            else:
                np.testing.assert_array_equal(getattr(whole, field), getattr(parts, field))
    # the executor's own batch size is the default of run(): the same batches of 7
    seven = BundleExecutor(exits_bundle, backend=ex.backend, batch_size=7)
    np.testing.assert_array_equal(seven.run(images).logits, ex.run(images, batch_size=7).logits)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ExecutionError, match="batch_size") as info:
            BundleExecutor(exits_bundle, backend=ex.backend, batch_size=bad)
        assert "\n" not in str(info.value)
    iadi = ex.run(images)
    assert 0.1 < iadi.executed.mean() < 0.9  # the fixture's gates skip about half
    ran = iadi.channels[iadi.executed]
    assert ran.min() > 0 and (ran < 64).any()  # channel gates thin some running blocks
    ddi = ex.run(images, mode="ddi", budget_macs=budget)
    assert (ddi.exits == -1).any() and (ddi.exits >= 0).any()
    # only images that never reached an exit may spend more than the budget
    assert not (ddi.over_budget & (ddi.exits >= 0)).any()
    assert (ddi.macs[ddi.exits >= 0] <= budget).all()


def test_cost_falls_with_skipping_and_full_mode_is_the_plain_network(trained_bundle):
    m = trained_bundle.manifest
    ex = BundleExecutor(trained_bundle, threads=1)
    images = _images(64, seed=1)
    full = ex.run(images, mode="full")
    assert (full.macs == m.full_macs).all() and full.executed.all()
    assert (full.channels == [b.out_channels for b in m.blocks]).all()
    mono = ort.InferenceSession(trained_bundle.read(m.graphs["full"].onnx))
    (logits,) = mono.run(None, {"x": m.preprocess.apply(images)})
    np.testing.assert_allclose(full.logits, logits, atol=LOGIT_ATOL)
    np.testing.assert_array_equal(full.predictions, logits.argmax(1))
    gated = ex.run(images, mode="iadi")
    # per image, MACs = stem + head + gates + the blocks that ran at their width
    expected = np.full(len(images), m.stem_macs + m.head_macs)
    for i, b in enumerate(m.blocks):
        expected += b.layer_gate_macs + b.shortcut_macs
        ran = gated.executed[:, i]
        expected += np.where(ran, b.channel_gate_macs + b.body_macs(gated.channels[:, i]), 0)
        expected -= np.where(ran, b.shortcut_macs, 0)  # body_macs includes the shortcut
    np.testing.assert_array_equal(gated.macs, expected)
    assert gated.macs.mean() < 0.6 * m.full_macs


@pytest.mark.parametrize("shape", [(32, 32, 3), (1, 32, 32, 3)])
def test_a_single_image_runs(trained_bundle, shape):
    result = BundleExecutor(trained_bundle, threads=1).run(np.zeros(shape, np.uint8))
    assert len(result) == 1 and result.logits.shape == (1, 10)

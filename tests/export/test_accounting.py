"""Realized against modelled savings (export.accounting): dense engines do every masked
channel's work, so only skipped blocks and early exits are realized."""

from __future__ import annotations

import numpy as np
import pytest

from export.accounting import masked_macs, realized_macs
from export.executor import BundleExecutor


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _dense_engine_macs(manifest, result, gated: bool) -> np.ndarray:
    """Per image, what dense engines execute, counted from the decisions alone (iadi/full:
    every block is reached): stem, gates, whole running blocks, shortcuts of skipped ones."""
    out = []
    for k in range(len(result)):
        total = manifest.stem_macs + manifest.head_macs
        for i, b in enumerate(manifest.blocks):
            total += b.layer_gate_macs if gated and b.layer_gate else 0
            if result.executed[k, i]:
                total += b.conv1_macs + b.conv2_macs + b.shortcut_macs
                total += b.channel_gate_macs if gated and b.channel_gate else 0
            else:
                total += b.shortcut_macs
        out.append(total)
    return np.array(out)


def test_realized_macs_count_whole_blocks(exits_bundle):
    ex = BundleExecutor(exits_bundle, threads=1)
    m = exits_bundle.manifest
    images = _images(64)
    iadi = ex.run(images, mode="iadi")
    assert (
        iadi.channels[iadi.executed]
        < np.repeat([[b.out_channels for b in m.blocks]], len(iadi), axis=0)[iadi.executed]
    ).any(), "the fixture must mask some channels"
    realized = realized_macs(m, iadi.macs, iadi.executed, iadi.channels)
    np.testing.assert_array_equal(realized, _dense_engine_macs(m, iadi, gated=True))
    assert np.all(realized >= iadi.macs) and np.any(realized > iadi.macs)
    # the plain network: nothing masked, both accounts agree and equal the backbone
    full = ex.run(images, mode="full")
    assert np.all(masked_macs(m, full.executed, full.channels) == 0)
    np.testing.assert_array_equal(realized_macs(m, full.macs, full.executed, full.channels),
                                  np.full(len(images), m.full_macs))  # fmt: skip


def test_bad_shapes_are_one_line(exits_bundle):
    m = exits_bundle.manifest
    nb = len(m.blocks)
    with pytest.raises(ValueError, match=r"must both be \(N, blocks\)"):
        masked_macs(m, np.ones((3, nb), bool), np.ones((2, nb), int))
    with pytest.raises(ValueError, match=f"bundle {m.bundle_id!r} has {nb}"):
        masked_macs(m, np.ones((3, nb + 1), bool), np.ones((3, nb + 1), int))

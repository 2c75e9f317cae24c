"""Which saved MACs the hardware realizes: the books behind Table I's two compute columns.

The executor reports, per image, the blocks that ran, the output channels each kept and the
MACs of the paper's cost model (train/cost.py): a block keeping ``r`` of its channels costs
``conv1 * r + conv2 * r**2 + shortcut``. That is the **model**'s account. The hardware keeps
another one: every engine the bundle runs on today is dense (a FINN dataflow engine streams
every channel of every pixel through fixed-shape MVAUs, and the onnxruntime twins multiply
by the channel mask after computing every channel), so a running block does all of its work
whatever its mask. Only what is not executed at all is a saving the hardware realizes: a
skipped block (its shortcut projection, when it has one, still runs), and the blocks after an
early exit.

Per image, then::

    model MACs    = the executor's MACs (gates included)
    realized MACs = model MACs + sum over running blocks of (dense body - thinned body)

``realized >= model`` always; they are equal for a network without channel gates. Savings of
both are taken against the plain backbone (``manifest.full_macs``), as the model's are.
"""

from __future__ import annotations

import numpy as np

from export.manifest import Manifest


def masked_macs(manifest: Manifest, executed: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """(N,) MACs the cost model saves by channel masks that dense engines still compute.

    ``executed`` (N, blocks) bool and ``channels`` (N, blocks) kept output channels, as the
    executor's :class:`~export.executor.BatchResult` (or the board's result records) give them.
    """
    executed = np.asarray(executed, dtype=bool)
    channels = np.asarray(channels, dtype=np.int64)
    if executed.shape != channels.shape or executed.ndim != 2:
        raise ValueError(
            f"executed {executed.shape} and channels {channels.shape} must both be (N, blocks)"
        )
    if executed.shape[1] != len(manifest.blocks):
        raise ValueError(
            f"results have {executed.shape[1]} blocks, bundle {manifest.bundle_id!r} has "
            f"{len(manifest.blocks)}"
        )
    out = np.zeros(len(executed), dtype=np.int64)
    for i, block in enumerate(manifest.blocks):
        ran = executed[:, i]
        if not ran.any():
            continue
        dense = int(block.body_macs(np.array([block.out_channels]))[0])
        out[ran] += dense - block.body_macs(channels[ran, i])
    return out


def realized_macs(
    manifest: Manifest, macs: np.ndarray, executed: np.ndarray, channels: np.ndarray
) -> np.ndarray:
    """(N,) MACs the dense hardware executes for images whose model MACs are ``macs``."""
    return np.asarray(macs, dtype=np.int64) + masked_macs(manifest, executed, channels)

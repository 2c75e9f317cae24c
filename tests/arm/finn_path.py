"""The board's FINN backend data path on whatever Python runs it (the emulated ARM, in
tests/arm): codes, FINN packing, the IODMA register sequence, unpacking and float tails, with
the PL replaced by pl_standin.RecordedPL.

    python finn_path.py BUNDLE DEPLOY RECORDING.npz IMAGES.npy OUT.npz
"""

from __future__ import annotations

import platform
import sys

import numpy as np
from pl_standin import RecordedPL

from export.executor import BundleExecutor
from export.manifest import load_bundle
from fpga.board.accel import OverlaySpec, load_overlay
from fpga.board.finnio import PynqDmaOverlay
from fpga.board.runtime import FinnBackend


def main(bundle_dir, deploy, recording, images, out):
    bundle = load_bundle(bundle_dir)
    spec = OverlaySpec.load(deploy)
    info = spec.driver_information()
    with np.load(recording) as z:
        pl = RecordedPL(z, info["io_shape_dict"])
    overlay = PynqDmaOverlay(info, spec.batch_size, allocate=pl.allocate, ip=pl.ip)
    overlay, accelerators = load_overlay(bundle, deploy, overlay=overlay)
    backend = FinnBackend(bundle, accelerators, overlay=overlay)
    result = BundleExecutor(bundle, backend=backend).run(np.load(images), mode="full")
    np.savez(
        out,
        predictions=result.predictions,
        logits=result.logits,
        macs=result.macs,
        served=pl.served,
        machine=np.array(platform.machine()),
    )


if __name__ == "__main__":
    main(*sys.argv[1:6])

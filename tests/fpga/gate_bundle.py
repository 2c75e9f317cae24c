"""A bundle with quantized gates, made from the recorded ResNet-8 W4A4 MGL2S (IADI-60) run.

The recorded checkpoint predates quantized gates (``quant_gates`` false): its float gate
weights initialise the quantized gates (as an ``iadi`` run on a float-gated checkpoint starts
them), the gates' activation scales are set from real training images (Brevitas' statistics
phase on the gates' quantizers only) and their operating point is calibrated again (a logit
offset folded into the biases, which the FINN engine's keep threshold must carry). Shared by
the tests of the gates' FINN graphs and of their engines on the emulated PL.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.manifest import Bundle

ROOT = Path(__file__).resolve().parents[2]
TRAINED = ROOT / "measurements" / "train" / "resnet8-w4a4" / "iadi-60" / "final.pt"
"""ResNet-8 W4A4 with (float) MGL2S gates at 60% compute savings (a recorded training run)."""
CALIBRATION_IMAGES = 512
TARGET_COST = 0.4
"""The calibrated operating point: 40% of the full network's MACs (60% savings)."""


def images(split: str, n: int) -> np.ndarray:
    from train.data import load_cifar10

    return load_cifar10(split).images[:n]  # (n, 32, 32, 3) uint8


def as_tensor(batch: np.ndarray):
    import torch

    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255)


def quantized_gate_bundle(folder: Path) -> tuple[Bundle, float, float]:
    """Export the quantized-gate model into ``folder/bundle``; returns the bundle, the
    calibration's logit offset (``delta``) and the calibrated model's mean cost (share of the
    full network's MACs) on the calibration images."""
    import torch

    from export.bundle import export_bundle
    from train.calibrate import calibrate_gates, mean_cost
    from train.checkpoint import load_backbone, load_checkpoint, save_checkpoint
    from train.model import create_model

    torch.set_num_threads(1)
    payload = load_checkpoint(TRAINED)
    assert payload["model"]["kwargs"]["quant_gates"] is False  # recorded before the option
    kwargs = {**payload["model"]["kwargs"], "quant_gates": True}
    model = create_model(payload["model"]["name"], **kwargs)
    load_backbone(model, payload)
    model.eval()
    quantizers = [
        m
        for part in (model.channel_gates, model.layer_gates)
        for m in part.modules()
        if type(m).__name__ in ("QuantReLU", "QuantIdentity")
    ]
    for m in quantizers:  # Brevitas' statistics phase: only the gates' activation quantizers
        m.train()
    train_images = images("train", CALIBRATION_IMAGES)
    with torch.no_grad():
        for start in range(0, len(train_images), 128):
            model(as_tensor(train_images[start : start + 128]))
    for m in quantizers:
        m.eval()
    batches = [
        (as_tensor(train_images[s : s + 256]), None) for s in range(0, CALIBRATION_IMAGES, 256)
    ]
    full = model.costs().full

    def cost(out):
        return out.macs / full

    calibration = calibrate_gates(model, batches, TARGET_COST, cost)
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "r8-qgates.pt", model, phase="test", config={})
    bundle = export_bundle(folder / "r8-qgates.pt", folder / "bundle", progress=False)
    return bundle, float(calibration.delta), float(mean_cost(model, batches, cost))

"""Bundles shared by the export tests: one from a trained checkpoint, one with exits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from export.bundle import export_bundle
from train.calibrate import calibrate_gates
from train.checkpoint import save_checkpoint
from train.model import create_model

ROOT = Path(__file__).resolve().parents[2]
TRAINED = ROOT / "measurements" / "train" / "resnet8-w4a4" / "iadi-60" / "final.pt"
"""A recorded run: ResNet-8 W4A4, MGL2S gates, 60% compute savings on CIFAR-10 (JPEG q75)."""


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g).float().div(255)


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory):
    torch.set_num_threads(1)
    return export_bundle(TRAINED, tmp_path_factory.mktemp("bundles") / "r8", progress=False)


@pytest.fixture(scope="session")
def exits_checkpoint(tmp_path_factory) -> Path:
    """An untrained quantized ResNet-8 with MGL2S gates and exits, its gates set to skip ~half
    of the work, so that blocks, channels and exits all see mixed decisions."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("resnet8", gating="mgl2s", exits=True, quant={})
    model.train()
    with torch.no_grad():  # BN statistics and Brevitas' activation scales from data
        for seed in range(4):
            model(_images(64, seed))
    model.eval()
    batches = [(_images(64, 10 + i), None) for i in range(2)]
    full = model.costs().full
    calibrate_gates(model, batches, 0.5, lambda out: out.macs / full)
    path = tmp_path_factory.mktemp("ckpt") / "r8-exits.pt"
    save_checkpoint(path, model, phase="test", config={})
    return path


@pytest.fixture(scope="session")
def exits_bundle(exits_checkpoint, tmp_path_factory):
    return export_bundle(
        exits_checkpoint, tmp_path_factory.mktemp("bundles") / "r8-exits", progress=False
    )

"""Fixtures of the FPGA tests shared across modules (built once per session: minutes)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def quantized_gates(tmp_path_factory):
    """The quantized-gate ResNet-8 bundle (tests/fpga/gate_bundle.py): ``(bundle, delta,
    mean_cost)``."""
    pytest.importorskip("brevitas")
    from tests.fpga.gate_bundle import quantized_gate_bundle

    return quantized_gate_bundle(tmp_path_factory.mktemp("quantized-gates"))


@pytest.fixture(scope="session")
def quantized_gates_overlay(quantized_gates, tmp_path_factory):
    """Its overlay (fpga.bitstream.overlay.prepare_overlay): an engine per backbone graph and
    per gate's FINN graph; returns ``(bundle, build)``."""
    pytest.importorskip("finn", reason="finn-plus not installed (make setup installs it)")
    from fpga.bitstream.overlay import prepare_overlay

    bundle = quantized_gates[0]
    return bundle, prepare_overlay(bundle.path, tmp_path_factory.mktemp("quantized-gates-overlay"))


def _untrained_bundle(tmp_path_factory, name: str):
    """An untrained quantized MGL2S bundle of ``name`` (random-image BN and activation
    statistics): only its structure matters."""
    import torch

    from export.bundle import export_bundle
    from export.manifest import load_bundle
    from train.checkpoint import save_checkpoint
    from train.model import create_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model(name, gating="mgl2s", quant={})
    model.train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(2):
            model(torch.randint(0, 256, (16, 3, 32, 32), generator=g).float().div(255))
    model.eval()
    folder = tmp_path_factory.mktemp(name)
    save_checkpoint(folder / f"{name}.pt", model, phase="test", config={})
    export_bundle(folder / f"{name}.pt", folder / "bundle", progress=False)
    torch.set_num_threads(threads)
    return load_bundle(folder / "bundle")


@pytest.fixture(scope="session")
def r14(tmp_path_factory):
    """An untrained quantized ResNet-14 MGL2S bundle: two blocks per stage, so a shared engine
    serves two graphs."""
    return _untrained_bundle(tmp_path_factory, "resnet14")


@pytest.fixture(scope="session")
def r20(tmp_path_factory):
    """An untrained quantized ResNet-20 MGL2S bundle: three shared stage engines."""
    return _untrained_bundle(tmp_path_factory, "resnet20")

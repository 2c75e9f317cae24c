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

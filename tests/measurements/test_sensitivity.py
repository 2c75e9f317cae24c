"""The sensitivity table (measurements/sensitivity.py) recomputes a run's emulated energy from
its own per-image records: its baseline is the emulator's energy, static power cancels in the
net savings, and every parameter moves the figures it should."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from export.executor import BundleExecutor
from fpga.emulator.board import PowerModel
from fpga.emulator.timing import MacRateTiming
from host.records import RESULT_COLUMNS, write_json
from measurements.sensitivity import markdown, sensitivity
from tests.fpga.test_runtime import shared_bundle


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder as the harness writes it: config.json and results.csv of two models."""
    bundle = shared_bundle(tmp_path_factory)
    images = np.random.default_rng(3).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    ex = BundleExecutor(bundle, threads=1)
    folder = tmp_path_factory.mktemp("run")
    models = [("full", "full"), ("iadi", "iadi")]
    config = {
        "reference": "full",
        "models": [{"key": k, "bundle": str(bundle), "mode": m, "budget_macs": None}
                   for k, m in models],
    }  # fmt: skip
    write_json(folder / "config.json", "config", config)
    results = {}
    with open(folder / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        w.writeheader()
        for key, mode in models:
            r = results[key] = ex.run(images, mode=mode)
            for i in range(len(images)):
                w.writerow({
                    "window": f"{key}/r0/w0", "model": key, "repeat": 0, "image_index": i,
                    "label": 0, "prediction": int(r.predictions[i]), "exit": int(r.exits[i]),
                    "executed_blocks": "".join("1" if e else "0" for e in r.executed[i]),
                    "channels_per_block": ";".join(str(int(c)) for c in r.channels[i]),
                    "macs": int(r.macs[i]),
                })  # fmt: skip
    return folder, ex.manifest, results


def test_baseline_is_the_emulators_energy_and_static_power_cancels(run):
    folder, manifest, results = run
    timing, power = MacRateTiming(), PowerModel()
    table = sensitivity(folder, timing, power)

    def energy(key, mode, kind):
        phases = timing.batch_phases(manifest, results[key], mode)
        return sum(
            p.duration_s * (power.phase_w(p) - (power.static_w if kind == "net" else 0.0))
            for image in phases
            for p in image
        )

    for kind in ("net", "total"):
        want = 1 - energy("iadi", "iadi", kind) / energy("full", "full", kind)
        assert table["baseline"]["iadi"][kind] == pytest.approx(want, rel=1e-9)
    by_name = {p["parameter"]: p for p in table["parameters"]}
    assert set(by_name) == set(timing.params) | set(PowerModel.SCALARS)
    base = table["baseline"]["iadi"]
    for name in ("ps_idle_w", "pl_static_w", "ddr_idle_w", "board_other_w"):
        for f in ("0.5", "1.5"):
            moved = by_name[name]["results"][f]["iadi"]
            assert moved["net"] == pytest.approx(base["net"], abs=1e-12)  # idle subtracted
            assert moved["total"] != pytest.approx(base["total"], abs=1e-6)
    # slower gates on the ARM cost the gated model more: its savings fall
    gates = by_name["arm_gate_s_per_call"]["results"]
    assert gates["1.5"]["iadi"]["net"] < base["net"] < gates["0.5"]["iadi"]["net"]
    md = markdown(table)
    assert md.count("| timing.macs_per_s |") == 2 and "Modelled, not measured" in md

"""Where a run's energy came from (host/provenance.py): only the finn backend with a real meter
is "measured on hardware"; a cpu-backend board or a simulated meter never is, end to end."""

from __future__ import annotations

import itertools

import pytest

from fpga.emulator.meter import SimulatedMeter, SimulatedMeterConfig
from fpga.emulator.power import ConstantPower
from host.measure import MeasureError, MeasurementConfig, ModelSpec, measure
from host.provenance import ENERGY_SOURCES, ProvenanceError, energy_source
from host.records import RunFolder, read_json, write_json
from measurements.table1 import TableError, build_table
from tests.conftest import needs_cifar10
from tests.fpga.test_runtime import board, shared_bundle
from wire.protocol import BOARD_BACKENDS


def test_only_finn_with_a_real_meter_is_measured_on_hardware():
    for backend, kind, simulated in itertools.product(
        BOARD_BACKENDS, ("keysight34465a", "wattsup", "sim", "none"), (False, True)
    ):
        source = energy_source(backend, kind, simulated)
        assert source in ENERGY_SOURCES
        hardware = backend == "finn" and kind != "none" and not simulated
        assert (source == "hardware") == hardware, (backend, kind, simulated)
        if backend == "cpu" and kind != "none":
            assert source == ("emulated" if simulated else "arm_only")
        if simulated and kind != "none":
            assert source == "emulated"
    with pytest.raises(ProvenanceError, match="backend 'gpu'"):
        energy_source("gpu", "keysight34465a", False)
    with pytest.raises(ProvenanceError, match="must be True or False"):
        energy_source("finn", "keysight34465a", "no")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return shared_bundle(tmp_path_factory)


def _measure(bundle_dir, tmp_path, port, meter_address, label):
    config = MeasurementConfig(
        port=port,
        models=[ModelSpec("full", str(bundle_dir), "full")],
        reference="full",
        meter=f"keysight34465a:{meter_address}",
        images=16,
        images_per_window=16,
        repeats=1,
        idle_s=0.3,
        reply_timeout_s=5.0,
    )
    run = RunFolder.create(tmp_path / label, label, config.to_dict())
    return config, run, measure(config, run, progress=False)


@needs_cifar10
def test_a_cpu_board_or_a_simulated_meter_is_never_measured_on_hardware(bundle_dir, tmp_path):
    """The real board runtime on a pty (cpu backend, onnxruntime) and the real 34465A driver:
    with a meter whose *IDN? looks real, the run is "measured, ARM only"; with the simulated
    meter's own identity, "emulated"; a board that claims finn with that meter is still
    emulated. Each run folder records the backend and whether the meter was simulated, and a
    table refuses to mix them."""
    real_looking = SimulatedMeterConfig(serial_number="MY59001234")
    runs = {}
    cases = (("cpu", real_looking, "arm_only"), ("cpu", None, "emulated"),
             ("finn", None, "emulated"))  # fmt: skip
    for i, (backend, meter_config, want) in enumerate(cases):
        with (
            SimulatedMeter(ConstantPower(3.0), meter_config) as meter,
            board(tmp_path / f"store{i}", backend="cpu") as (runtime, port),
        ):
            runtime.backend = backend  # what HELLO reports; the graphs run on onnxruntime
            _, run, summary = _measure(bundle_dir, tmp_path, port, meter.address, f"r{i}")
        assert summary["energy_source"] == want != "hardware"
        saved = read_json(run.path / "source.json", "source")
        assert saved == {
            "board_backend": backend,
            "meter_kind": "keysight34465a",
            "meter_simulated": meter_config is None,
            "energy_source": want,
        }
        runs[want] = run.path
    with pytest.raises(TableError, match="mix"):
        build_table([runs["arm_only"], runs["emulated"]])


@needs_cifar10
def test_a_resumed_run_must_keep_its_board_and_meter(bundle_dir, tmp_path):
    with (
        SimulatedMeter(ConstantPower(3.0)) as meter,
        board(tmp_path / "store", backend="cpu") as (_runtime, port),
    ):
        config, run, _ = _measure(bundle_dir, tmp_path, port, meter.address, "first")
        (run.path / "summary.json").unlink()
        source = read_json(run.path / "source.json", "source")
        write_json(run.path / "source.json", "source", {**source, "meter_simulated": False})
        with pytest.raises(MeasureError, match=r"another board or meter \(meter_simulated"):
            measure(config, RunFolder.resume(run.path, config.to_dict()), progress=False)

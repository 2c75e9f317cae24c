"""Tests of the emulated board (fpga.emulator.board, fpga.emulator.timing) over real ptys, with
the host's BoardClient and the host's 34465A driver: modelled time equals the timing model,
the ground-truth power trace integrates to the power model's energy, skipping saves energy, and
the simulated meter reads the emulated board's mean power."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import numpy as np
import pytest

from export.executor import BundleExecutor
from export.manifest import load_bundle
from fpga.emulator import EmulatorError
from fpga.emulator.board import EmulatedBoard, PowerModel, describe
from fpga.emulator.timing import ARM, ENGINE, IO_PREFIX, HardwareReportTiming, MacRateTiming
from host.board import BoardClient
from tests.fpga.test_runtime import ROOT, shared_bundle

N_IMAGES = 24


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return shared_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(bundle_dir) -> BundleExecutor:
    return BundleExecutor(load_bundle(bundle_dir), threads=1)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (N_IMAGES, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def emulated(bundle_dir, images):
    """An emulated board with the default models, a client, and a run of each mode."""
    with EmulatedBoard(bundle_dir) as board, BoardClient(board.address, timeout_s=5.0) as client:
        client.hello()
        client.upload(1, images)
        runs = {}
        for mode in ("iadi", "full"):
            host_before = time.monotonic()
            start_ns, end_ns = client.run(1, mode)
            runs[mode] = (start_ns, end_ns, host_before, time.monotonic(), board.runs[-1])
        yield board, client, runs


def test_modelled_run_lasts_the_timing_models_sum(emulated, reference, images):
    board, client, runs = emulated
    manifest = reference.manifest
    for mode, (start_ns, end_ns, host_before, host_after, record) in runs.items():
        expected_s = board.timing.image_times_s(manifest, reference.run(images, mode), mode)
        assert (end_ns - start_ns) * 1e-9 == pytest.approx(expected_s.sum(), abs=1e-6)
        assert record.image_time_s == pytest.approx(expected_s, rel=1e-12)
        # the board's clock is not the host's, but runs on it: the run lies inside the call
        assert host_before <= board.board_ns_to_host_s(start_ns) < host_after
        assert board.board_ns_to_host_s(end_ns) <= host_after
        assert host_after - host_before >= expected_s.sum()  # paced in real time
    hello = client.hello()
    assert hello.host_send_s <= board.board_ns_to_host_s(hello.board_clock_ns) + 1e-6
    assert abs(hello.board_clock_ns * 1e-9 - hello.host_mid_s) > 1.0  # another clock origin


def test_power_trace_integrates_to_the_power_models_energy(emulated, reference, images):
    board, _, runs = emulated
    model = board.power
    for mode, (*_, record) in runs.items():
        phases = board.timing.batch_phases(reference.manifest, reference.run(images, mode), mode)
        duration = sum(p.duration_s for image in phases for p in image)
        dynamic = 0.0
        for image in phases:
            for p in image:
                if p.unit == ARM:
                    dynamic += (model.arm_active_w + model.ddr_active_w) * p.duration_s
                else:
                    assert p.unit == ENGINE
                    busy_w = model.engine_dynamic_w + model.arm_poll_w + model.ddr_active_w
                    dynamic += busy_w * p.duration_s
        t0, t1 = record.host_start_s, record.host_end_s
        truth = board.ground_truth_energy_j(t0, t1)
        assert truth == pytest.approx(model.static_w * duration + dynamic, rel=1e-9)
        assert truth == pytest.approx(record.energy_j, rel=1e-9)
        assert record.dynamic_energy_j == pytest.approx(dynamic, rel=1e-9)
        # outside the run the board draws static power only
        assert board.ground_truth_energy_j(t1, t1 + 0.01) == pytest.approx(model.static_w * 0.01)
        if mode == "full":  # no gates: the ARM only marshals each engine call
            assert all(
                p.unit == ENGINE or p.graph.startswith(IO_PREFIX) for image in phases for p in image
            )


def test_skipped_work_saves_energy(emulated):
    board, client, runs = emulated
    iadi, full = runs["iadi"][-1], runs["full"][-1]
    records = client.fetch(1, N_IMAGES)  # the last run: full
    assert np.all(records["macs"] == records["macs"][0])
    per_image = {mode: r.image_energy_j for mode, r in (("iadi", iadi), ("full", full))}
    assert per_image["iadi"].mean() < 0.6 * per_image["full"].mean()
    # an image's energy is its time at a power between static + ARM and static + engine
    model, t = board.power, iadi.image_time_s
    low_w = model.static_w + model.arm_active_w + model.ddr_active_w
    high_w = model.static_w + model.engine_dynamic_w + model.arm_poll_w + model.ddr_active_w
    assert np.all((low_w * t <= per_image["iadi"] + 1e-12) & (per_image["iadi"] <= high_w * t))
    assert np.all(per_image["full"] == pytest.approx(per_image["full"][0]))


def test_engines_are_charged_dense_whatever_the_mask(reference, images):
    """A running block costs its full engine time whatever its channel mask (FINN's engines
    are dense); only a skipped block saves it. Weight loads and DMA are charged on top."""
    manifest = reference.manifest
    engines = [manifest.stem, manifest.head] + [b.graph for b in manifest.blocks]
    engines += [b.shortcut for b in manifest.blocks if b.shortcut]
    report = {
        "clock_mhz": 1000.0,  # one cycle per MAC at 1 GHz: the same as MacRateTiming(1e9)
        "graphs": {name: {"cycles": manifest.graphs[name].macs} for name in engines},
    }
    hw = HardwareReportTiming(report)
    hw.check(manifest)
    block = manifest.blocks[1]
    nb = len(manifest.blocks)
    executed = np.ones(nb, dtype=bool)
    full = np.array([b.out_channels for b in manifest.blocks])
    for channels in (full, full // 2, np.ones(nb, dtype=np.int64)):
        phases = hw.image_phases(manifest, executed, channels, -1, gated=False)
        (engine,) = [p for p in phases if p.graph == block.graph]
        assert engine.duration_s == pytest.approx(manifest.graphs[block.graph].macs / 1e9)
    # every engine call has its marshalling phase on the ARM, as long as its values say
    io = [p for p in phases if p.graph.startswith(IO_PREFIX)]
    assert len(io) == sum(p.unit == ENGINE for p in phases) == nb + 2
    assert all(p.unit == ARM and p.duration_s > 0 for p in io)
    result = reference.run(images, "iadi")
    assert hw.image_times_s(manifest, result, "iadi") == pytest.approx(
        MacRateTiming(1e9).image_times_s(manifest, result, "iadi"), rel=1e-12
    )
    # a shared engine's weight load is charged once per call, shared by the call's images
    report["graphs"][block.graph]["weight_load_cycles"] = 5000
    loaded = HardwareReportTiming(report).image_phases(manifest, executed, full, -1, False)
    (engine,) = [p for p in loaded if p.graph == block.graph]
    assert engine.duration_s == pytest.approx(manifest.graphs[block.graph].macs / 1e9 + 5e-6)
    (engine,) = [
        p
        for p in HardwareReportTiming(report).engine_phases(manifest, block.graph, 4)
        if p.unit == ENGINE
    ]
    assert engine.duration_s == pytest.approx(manifest.graphs[block.graph].macs / 1e9 + 5e-6 / 4)
    # a DMA slower than the engine bounds the phase from below: a block's DMA moves its input
    # codes, its mask map (1 bit per output value) and its output codes
    slow = hw.with_params(dma_bytes_per_s=1.0)
    (engine,) = [p for p in slow.engine_phases(manifest, block.graph) if p.unit == ENGINE]
    spec = manifest.graphs[block.graph]
    assert spec.masked
    c, h, w = spec.outputs[0].shape[1:]
    x_bits = math.prod(spec.inputs[0].shape[1:]) * spec.inputs[0].datatype.bits
    y_bits = c * h * w * spec.outputs[0].datatype.bits
    mask_bits = c * h * w * 1
    assert engine.duration_s == pytest.approx((x_bits + mask_bits + y_bits) / 8)
    (io,) = [p for p in slow.engine_phases(manifest, block.graph) if p.unit == ARM]
    # codes in and out: the previous engine's codes packed, the output unpacked to codes (the
    # board keeps a block's activations in integer form); the stem's input is converted
    values = math.prod(spec.inputs[0].shape[1:]) + c * h * w
    marshal = values * slow.arm_pack_s_per_value
    stem = manifest.graphs[manifest.stem]
    (io_stem,) = [p for p in slow.engine_phases(manifest, manifest.stem) if p.unit == ARM]
    assert io_stem.duration_s == pytest.approx(
        math.prod(stem.inputs[0].shape[1:]) * slow.arm_marshal_s_per_value
        + math.prod(stem.outputs[0].shape[1:]) * slow.arm_pack_s_per_value
    )
    head = manifest.graphs[manifest.head]
    (io_head,) = [p for p in slow.engine_phases(manifest, manifest.head) if p.unit == ARM]
    assert (
        io_head.duration_s
        == pytest.approx(  # logits: floats
            math.prod(head.inputs[0].shape[1:]) * slow.arm_pack_s_per_value
            + math.prod(head.outputs[0].shape[1:]) * slow.arm_marshal_s_per_value
        )
    )
    assert io.duration_s == pytest.approx(marshal + c * h * w * slow.arm_mask_s_per_value)
    cheap = slow.with_params(arm_mask_s_per_value=0.0)
    (io,) = [p for p in cheap.engine_phases(manifest, block.graph) if p.unit == ARM]
    assert io.duration_s == pytest.approx(marshal)
    del report["graphs"]["block2"]
    with pytest.raises(EmulatorError, match=r"no cycles for graph\(s\) \['block2'\]"):
        HardwareReportTiming(report).check(manifest)
    with pytest.raises(EmulatorError, match="clock_mhz 0 is not a positive frequency"):
        HardwareReportTiming({"clock_mhz": 0, "graphs": {}})
    with pytest.raises(EmulatorError, match="dma_bytes_per_s=0"):
        hw.with_params(dma_bytes_per_s=0)


def test_a_gate_calls_overhead_is_shared_by_the_images_of_its_batch(reference, images):
    """The executor evaluates a gate once per batch for every image that reaches it: the
    per-call overhead is charged once per call and batch, the MACs per image."""
    manifest = reference.manifest
    result = reference.run(images, "iadi")
    timing = MacRateTiming(1e9)
    for batch in (len(images), 5):  # one call per gate, or calls of at most 5 images
        phases = timing.batch_phases(manifest, result, "iadi", batch_size=batch)
        calls = math.ceil(len(images) / batch)
        for i, block in enumerate(manifest.blocks):
            gate = [p.duration_s for ph in phases for p in ph if p.graph == block.layer_gate]
            assert len(gate) == len(images)  # iadi: every image evaluates every layer gate
            assert sum(gate) == pytest.approx(
                calls * timing.arm_gate_s_per_call
                + len(images) * block.layer_gate_macs / timing.arm_macs_per_s
            )
            ran = result.executed[:, i]
            gate = [p.duration_s for ph in phases for p in ph if p.graph == block.channel_gate]
            assert len(gate) == ran.sum()
            if ran.any():
                callers = [ran[s : s + batch].any() for s in range(0, len(images), batch)]
                assert sum(gate) == pytest.approx(
                    sum(callers) * timing.arm_gate_s_per_call
                    + ran.sum() * block.channel_gate_macs / timing.arm_macs_per_s
                )
    # an image alone in its call pays the whole overhead
    (alone,) = [p for p in timing.gate_phases(manifest, block.layer_gate, 0) if p.unit == ARM]
    assert alone.duration_s == timing.arm_gate_s_per_call


def test_each_dma_transfer_pays_the_engines_pipeline_fill(reference, images):
    """FINN's latency beyond one image's interval is paid once per DMA transfer of at most
    ``dma_batch`` images: shared by the images of the call."""
    manifest = reference.manifest
    engines = [manifest.stem, manifest.head] + [b.graph for b in manifest.blocks]
    engines += [b.shortcut for b in manifest.blocks if b.shortcut]
    report = {
        "clock_mhz": 10.0,  # slow enough that no DMA bounds an engine
        "graphs": {name: {"cycles": 1000, "latency_cycles": 5000} for name in engines},
    }
    result = reference.run(images, "full")
    for dma_batch, transfers in ((64, 1), (5, math.ceil(len(images) / 5))):
        timing = HardwareReportTiming(report, dma_batch=dma_batch)
        phases = timing.batch_phases(manifest, result, "full")
        stem = [p.duration_s for ph in phases for p in ph if (p.unit, p.graph) == (ENGINE, "stem")]
        assert sum(stem) == pytest.approx(len(images) * 100e-6 + transfers * 400e-6)
    assert HardwareReportTiming({"clock_mhz": 100.0, "graphs": {}}).fill_s(manifest, "stem") == 0
    with pytest.raises(EmulatorError, match="latency_cycles -1 is not a count"):
        HardwareReportTiming(
            {"clock_mhz": 1.0, "graphs": {"a": {"cycles": 1, "latency_cycles": -1}}}
        )
    with pytest.raises(EmulatorError, match="dma_batch=0 must be a count"):
        MacRateTiming(dma_batch=0)


def test_simulated_meter_reads_the_emulated_boards_mean_power(bundle_dir, images):
    from host.meters import Keysight34465A

    # engines at 60 MMAC/s: a 24-image gated run lasts about 1 s of mixed ARM/engine power
    timing = MacRateTiming(60e6)
    power = PowerModel(arm_active_w=0.3, engine_dynamic_w=1.5, arm_poll_w=0.2)
    emulator = EmulatedBoard(bundle_dir, timing=timing, power=power, meter=True)
    with emulator as board, BoardClient(board.address, timeout_s=5.0) as client:
        client.upload(1, images)
        meter = Keysight34465A(board.meter_address, timeout_s=5.0, sample_interval_s=1e-3)
        with meter:
            meter.start()
            client.run(1, "iadi")
            time.sleep(0.1)
            meter.stop()
            t, p = meter.read_samples()
    record = board.runs[-1]
    assert record.duration_s > 0.5
    inside = (t > record.host_start_s + 0.01) & (t < record.host_end_s - 0.01)
    assert inside.sum() > 300
    truth_w = board.trace.mean_power_w(record.host_start_s + 0.01, record.host_end_s - 0.01)
    assert truth_w > power.static_w + 0.5  # the run is visible above static power
    assert p[inside].mean() == pytest.approx(truth_w, rel=0.01)
    idle = t > record.host_end_s + 0.01
    assert p[idle].mean() == pytest.approx(power.static_w, rel=0.005)


def test_emulate_cli_serves_a_board_and_a_meter(bundle_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "fpga", "emulate", str(bundle_dir), "--meter", "--speed", "0.5"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        board_line, meter_line = proc.stdout.readline(), proc.stdout.readline()
        assert board_line.startswith("board: /dev/") and meter_line.startswith("meter: /dev/")
        with BoardClient(board_line.split()[1], timeout_s=5.0) as client:
            hello = client.hello()
            assert "speed 0.5" in hello.identity
            assert hello.backend == "emulated"
            assert hello.bundle.bundle_id == load_bundle(bundle_dir).bundle_id
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0


def test_the_runtimes_executor_batch_is_what_the_model_shares_calls_among(
    bundle_dir, reference, images
):
    """An emulated board started with ``executor_batch`` runs a window in batches of that many
    images and charges each call's overhead once per such batch (more calls, more time than
    one batch); the run's configuration records it."""
    batch = 5
    assert batch < len(images)
    with (
        EmulatedBoard(bundle_dir, executor_batch=batch) as board,
        BoardClient(board.address, timeout_s=5.0) as client,
    ):
        assert describe(board)["executor_batch"] == batch
        client.upload(1, images)
        start_ns, end_ns = client.run(1, "iadi")
        result = reference.run(images, "iadi")
        small = board.timing.batch_phases(reference.manifest, result, "iadi", batch_size=batch)
        whole = board.timing.batch_phases(reference.manifest, result, "iadi", len(images))
        seconds = sum(p.duration_s for ph in small for p in ph)
        assert (end_ns - start_ns) * 1e-9 == pytest.approx(seconds, abs=1e-6)
        assert seconds > sum(p.duration_s for ph in whole for p in ph)

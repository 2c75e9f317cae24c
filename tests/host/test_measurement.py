"""End to end: emulated board + simulated meter -> run folder -> Table I, against ground truth."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from export.bundle import export_bundle
from fpga.emulator.board import EmulatedBoard
from host.measure import MeasureError, MeasurementConfig, ModelSpec, measure
from host.records import RunFolder
from measurements.table1 import write_table
from tests.conftest import needs_cifar10

ROOT = Path(__file__).resolve().parents[2]
RECORDED = ROOT / "measurements" / "train" / "resnet8-w4a4"

pytestmark = needs_cifar10


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundles")
    return {
        key: export_bundle(RECORDED / name / "final.pt", folder / key, progress=False).path
        for key, name in (("base", "base"), ("iadi60", "iadi-60"))
    }


def _config(board, bundles, **kw):
    defaults = dict(
        port=board.address,
        models=[
            ModelSpec("full", str(bundles["base"]), "full"),
            ModelSpec("iadi60", str(bundles["iadi60"])),
        ],
        reference="full",
        meter=f"keysight34465a:{board.meter_address}",
        images=120,
        images_per_window=60,
        repeats=2,
        idle_s=1.0,
    )
    return MeasurementConfig(**{**defaults, **kw})


def test_table1_energies_match_the_emulators_ground_truth(bundles, tmp_path):
    with EmulatedBoard(bundles["base"], meter=True) as board:
        config = _config(board, bundles)
        run = RunFolder.create(tmp_path, "e2e", config.to_dict())
        summary = measure(config, run, progress=False)
        windows = run.windows()
        assert len(windows) == 2 * 2 * 2
        static = board.power.static_w
        for w in windows:
            t0, t1 = w["start_host_s"], w["end_host_s"]
            truth = board.ground_truth_energy_j(t0, t1)
            assert w["energy_j"] == pytest.approx(truth, rel=0.02)
            net_truth = truth - static * (t1 - t0)
            assert w["net_energy_j"] == pytest.approx(net_truth, rel=0.02)
    assert summary["energy_source"] == "emulated"
    assert summary["idle_power_w"] == pytest.approx(static, rel=0.01)
    full, iadi = summary["models"]
    assert full["compute_savings"] == 0 and 0.5 < iadi["compute_savings"] < 0.7
    # dense engines compute masked channels: only skipped blocks are realized savings
    assert full["realized_compute_savings"] == 0
    assert 0 < iadi["realized_compute_savings"] < iadi["compute_savings"]
    assert iadi["energy_per_image_j"][0] < full["energy_per_image_j"][0]
    assert summary["board_backend"] == "emulated" and summary["meter_simulated"] is True
    lo, hi = iadi["accuracy_ci95"]
    assert iadi["accuracy_images"] == 120 and lo < iadi["accuracy"] < hi
    assert len(run.read_results()) == 2 * 2 * 120  # models x repeats x images
    paths = write_table([run.path], tmp_path / "table1")
    md = paths["md"].read_text()
    assert "EMULATED" in md and "| iadi60 |" in md
    # the table's energy per image is the windows' net energy over their images
    row = next(line for line in md.splitlines() if line.startswith("| iadi60 |"))
    mean_mj = sum(iadi["energy_per_image_j"]) / 2 * 1e3
    assert f"{mean_mj:.4f}" in row


def test_bad_settings_are_refused_in_one_line(bundles, tmp_path):
    with pytest.raises(MeasureError, match="KEY=BUNDLE_DIR"):
        ModelSpec.parse("nobundle")
    with pytest.raises(MeasureError, match="mode 'fast'"):
        ModelSpec.parse("a=b:fast")
    with pytest.raises(MeasureError, match="--reference 'x'"):
        MeasurementConfig(port="p", models=[ModelSpec("a", "b")], reference="x").validate()


RUNNER = """
import sys
from measurements.run_measurement import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_run_killed_with_sigkill_resumes_to_the_same_records(bundles, tmp_path):
    """The measurement CLI, killed mid-run and resumed, gives an uninterrupted run's records."""
    with EmulatedBoard(bundles["base"], meter=True) as board:
        args = [
            "--port", board.address, "--meter", f"keysight34465a:{board.meter_address}",
            "--model", f"full={bundles['base']}:full", "--model", f"iadi60={bundles['iadi60']}",
            "--images", "120", "--images-per-window", "40", "--repeats", "1", "--idle-s", "1",
            "--quiet",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

        def start(*extra):
            return subprocess.Popen(
                [sys.executable, "-c", RUNNER, *args, *extra],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )

        clean = start("--out", str(tmp_path / "clean"), "--label", "clean")
        _, err = clean.communicate(timeout=300)
        assert clean.returncode == 0, err
        victim = start("--out", str(tmp_path / "killed"), "--label", "killed")
        deadline = time.time() + 120
        run_dir = None
        while time.time() < deadline:
            found = list((tmp_path / "killed").glob("*_killed"))
            if found and len(RunFolder(found[0], {}).completed_windows()) >= 2:
                run_dir = found[0]
                break
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=30)
        assert run_dir is not None
        done = len(RunFolder(run_dir, {}).completed_windows())
        assert 2 <= done < 6
        resumed = start("--resume", str(run_dir))
        _, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err
    a = RunFolder(next((tmp_path / "clean").iterdir()), {})
    b = RunFolder(run_dir, {})
    assert sorted(a.completed_windows()) == sorted(b.completed_windows())

    def rows(run):
        return sorted(tuple(r.values()) for r in run.read_results())

    assert rows(a) == rows(b)  # per-image results: none lost, none duplicated
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [m["images"] for m in summary["models"]] == [120, 120]


def test_a_run_through_a_faulty_cable_gives_a_clean_runs_results(bundles, tmp_path):
    """Host harness -> cable flipping, dropping and duplicating bytes at 1e-3 and stalling, both
    ways -> emulated board: the run completes with the clean run's per-image results."""
    bundle = str(bundles["iadi60"])
    models = [ModelSpec("full", bundle, "full"), ModelSpec("iadi60", bundle)]
    cable = {
        "seed": 15,
        "byte_error_rate": 1e-3,
        "drop_rate": 2.5e-4,
        "duplicate_rate": 2.5e-4,
        "stall_s": 0.02,
        "stall_every_bytes": 10_000,
    }
    runs = {}
    for name, faults in (("clean", None), ("faulty", cable)):
        with EmulatedBoard(bundle, meter=True, faults=faults) as board:
            config = _config(
                board, bundles, models=models, images=24, images_per_window=12, repeats=1,
                idle_s=0.3, baud_rate=4_000_000,
            )  # fmt: skip
            runs[name] = RunFolder.create(tmp_path, name, config.to_dict())
            measure(config, runs[name], progress=False)
            if faults is not None:
                damage = board.cable.stats
                link = board.server.stats
    assert damage.bits_flipped > 10 and damage.bytes_dropped > 0 and damage.stalls > 0
    assert damage.bytes_duplicated > 0 and link.naks_sent > 0  # damage was seen and recovered

    def rows(run):
        return sorted(tuple(r.values()) for r in run.read_results())

    assert len(rows(runs["clean"])) == 2 * 24
    assert rows(runs["faulty"]) == rows(runs["clean"])

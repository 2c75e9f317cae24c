"""The hardware report's owner (fpga/hwreport.py): a versioned format, validated on write and
read, tied to its bundle; the emulator reads it through the owner."""

from __future__ import annotations

import json

import pytest

from fpga import hwreport
from fpga.emulator import EmulatorError
from fpga.emulator.timing import HardwareReportTiming

ESTIMATES = {
    "stem": {
        "max_cycles": 1024,
        "critical_path_cycles": 2048,
        "max_cycles_node": "MVAU_hls_0",
        "throughput_fps": 97656.25,
        "latency_ms": 0.02,
        "fpga_part": "xc7z020clg400-1",
        "total": {"LUT": 1000.0, "BRAM_18K": 2.0, "DSP": 0.0},
    }
}


def test_a_per_graph_report_round_trips_through_the_owner(tmp_path):
    report = hwreport.per_graph_report(ESTIMATES, 10.0, "bundle-1")
    assert report["format"] == hwreport.FORMAT and report["version"] == hwreport.FORMAT_VERSION
    path = hwreport.write(tmp_path / hwreport.FILE, report)
    assert hwreport.read(path, "bundle-1") == json.loads(path.read_text()) == report
    timing = HardwareReportTiming.from_json(path)
    assert timing.clock_mhz == 100.0 and timing.cycles == {"stem": 1024}


def test_a_report_for_another_bundle_is_refused_in_one_line(tmp_path):
    path = hwreport.write(tmp_path / "r.json", hwreport.per_graph_report(ESTIMATES, 10.0, "a"))
    with pytest.raises(hwreport.HardwareReportError, match=r"made for bundle 'a', not 'b'") as e:
        hwreport.read(path, "b")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": None}, r"format None version 1, not 'ddi-fpga-hw-report' version 1"),
        ({"version": 0}, r"version 0, not 'ddi-fpga-hw-report' version 1"),
        ({"bundle_id": ""}, r"bundle_id '' is not an id"),
        ({"clock_mhz": 0}, r"clock_mhz 0 is not a positive frequency"),
        ({"graphs": {"stem": {"cycles": -1}}}, r"graphs.stem.cycles -1 is not a count"),
    ],
)
def test_a_bad_report_is_refused_naming_the_field(tmp_path, change, message):
    report = {**hwreport.per_graph_report(ESTIMATES, 10.0, "a"), **change}
    with pytest.raises(hwreport.HardwareReportError, match=message):
        hwreport.write(tmp_path / "r.json", report)
    assert not (tmp_path / "r.json").exists()  # nothing half-written
    (tmp_path / "r.json").write_text(json.dumps(report))
    with pytest.raises(hwreport.HardwareReportError, match=message):
        hwreport.read(tmp_path / "r.json")


def test_the_emulator_refuses_an_unversioned_report_in_one_line(tmp_path):
    old = {"clock_mhz": 100.0, "graphs": {"stem": {"cycles": 5}}}  # before format and bundle_id
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(EmulatorError, match=r"regenerate it with `python -m fpga estimate") as e:
        HardwareReportTiming.from_json(tmp_path / "old.json")
    assert "\n" not in str(e.value)

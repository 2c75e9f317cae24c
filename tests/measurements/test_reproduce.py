"""The main job (measurements/reproduce.py) as a table of steps: it resumes after its last
finished step, logs every step, refuses a state file of another format, and uses a hardware
report only when it was made for the reference bundle."""

from __future__ import annotations

import json
import logging

import pytest

from export.manifest import load_bundle
from fpga import hwreport
from fpga.emulator.timing import HardwareReportTiming, MacRateTiming
from measurements import reproduce
from measurements.reproduce import (
    STATE_FILE,
    Job,
    ReproduceError,
    build_parser,
    run_steps,
    step_hw_report,
)
from tests.fpga.test_runtime import shared_bundle


def _job(tmp_path, *argv: str) -> Job:
    args = build_parser().parse_args(["--out", str(tmp_path / "out"), *argv])
    return Job(args, tmp_path / "out")


class Steps:
    """Three plain steps; ``second`` fails while ``fail`` is set."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail = False

    def table(self):
        def first(job):
            self.calls.append("first")
            return {"made": "a"}

        def second(job):
            self.calls.append("second")
            if self.fail:
                raise ReproduceError("second failed")
            return job.results["first"]["made"] + "b"

        def third(job):
            self.calls.append("third")
            return job.results["second"] + "c"

        return [("first", first), ("second", second), ("third", third)]


def test_a_failed_job_resumes_after_its_last_finished_step(tmp_path, caplog):
    steps = Steps()
    steps.fail = True
    with pytest.raises(ReproduceError, match="second failed"):
        run_steps(_job(tmp_path), steps.table())
    state = json.loads((tmp_path / "out" / STATE_FILE).read_text())
    assert state["format"] == reproduce.STATE_FORMAT and state["version"] == 1
    assert [d["step"] for d in state["done"]] == ["first"]

    steps.fail = False
    steps.calls.clear()
    with caplog.at_level(logging.INFO, logger="measurements.reproduce"):
        results = run_steps(_job(tmp_path), steps.table())
    assert steps.calls == ["second", "third"]  # the finished step is not run again
    assert results == {"first": {"made": "a"}, "second": "ab", "third": "abc"}
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("step 1/3: first (finished earlier")
    assert "step 2/3: second" in lines and "step 3/3: third" in lines
    assert any(line.startswith("step 3/3: third done in ") for line in lines)

    steps.calls.clear()
    run_steps(_job(tmp_path), steps.table())
    assert steps.calls == []  # everything finished: nothing runs
    run_steps(_job(tmp_path), steps.table(), restart=True)
    assert steps.calls == ["first", "second", "third"]


def test_other_options_run_every_step_again(tmp_path):
    steps = Steps()
    run_steps(_job(tmp_path), steps.table())
    steps.calls.clear()
    run_steps(_job(tmp_path, "--images", "500"), steps.table())
    assert steps.calls == ["first", "second", "third"]


def test_a_state_file_of_another_format_is_refused_in_one_line(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / STATE_FILE).write_text(json.dumps({"done": []}))
    with pytest.raises(ReproduceError, match=r"not a state file of this job.*--restart") as e:
        run_steps(_job(tmp_path), Steps().table())
    assert "\n" not in str(e.value)


def test_the_steps_are_the_documented_table():
    names = [name for name, _ in reproduce.STEPS]
    assert names == ["models", "bundles", "hw_report", "measure", "table", "sensitivity"]
    for name, step in reproduce.STEPS:
        assert step.__name__ == f"step_{name}" and step.__doc__, name
        assert f"``{name}``" in reproduce.__doc__, f"the module's docstring omits step {name}"


def _report(bundle_id: str) -> dict:
    return {
        "format": hwreport.FORMAT,
        "version": hwreport.FORMAT_VERSION,
        "bundle_id": bundle_id,
        "kind": "test",
        "clock_mhz": 100.0,
        "graphs": {"stem": {"cycles": 10}},
    }


def test_a_hardware_report_is_used_only_for_its_bundle(tmp_path_factory, tmp_path):
    bundle = shared_bundle(tmp_path_factory)
    bundle_id = load_bundle(bundle, verify=False).bundle_id

    given = hwreport.write(tmp_path / "given.json", _report("another-bundle"))
    job = _job(tmp_path, "--hw-report", str(given))
    job.results["bundles"] = {"base": str(bundle)}
    with pytest.raises(hwreport.HardwareReportError, match=r"made for bundle 'another-bundle'"):
        step_hw_report(job)
    hwreport.write(given, _report(bundle_id))
    assert step_hw_report(job) == str(given)

    # The job's own copy is reused when it belongs to the bundle (no FINN build here).
    job = _job(tmp_path)
    job.results["bundles"] = {"base": str(bundle)}
    own = hwreport.write(job.work / "hw" / hwreport.FILE, _report(bundle_id))
    assert step_hw_report(job) == str(own)
    job.results["hw_report"] = step_hw_report(job)
    assert isinstance(job.timing(), HardwareReportTiming)

    job = _job(tmp_path, "--mac-rate")
    job.results["bundles"] = {"base": str(bundle)}
    job.results["hw_report"] = step_hw_report(job)
    assert job.results["hw_report"] is None and isinstance(job.timing(), MacRateTiming)


@pytest.mark.slow
def test_a_copy_made_for_another_bundle_is_rebuilt(tmp_path_factory, tmp_path):
    bundle = shared_bundle(tmp_path_factory)
    job = _job(tmp_path)
    job.results["bundles"] = {"base": str(bundle)}
    stale = hwreport.write(job.work / "hw" / hwreport.FILE, _report("another-bundle"))
    assert step_hw_report(job) == str(stale)  # FINN's estimates made anew
    report = hwreport.read(stale, load_bundle(bundle, verify=False).bundle_id)
    assert report["kind"] == "FINN estimate (no synthesis)" and len(report["graphs"]) > 1


def test_the_notes_say_where_the_gates_ran_and_whether_the_engines_fit(tmp_path_factory, tmp_path):
    """The record's sentences come from the bundles and the report: float gates run on the
    ARM; a report whose engines exceed the part says so, naming the resource."""
    from pathlib import Path

    bundle = shared_bundle(tmp_path_factory)
    manifest = load_bundle(bundle, verify=False).manifest
    report = _report(manifest.bundle_id)
    report["graphs"] = {name: {"cycles": 100} for name in manifest.graphs}
    report |= {"fits": False, "utilization": {"LUT": 0.5, "BRAM_18K": 0.2, "DSP": 1.89}}
    args = build_parser().parse_args(["--out", str(tmp_path)])
    notes = reproduce._notes(args, HardwareReportTiming(report), {"base": Path(bundle)})
    assert "channel and layer gates on the ARM (numpy programs)" in notes[0]
    assert "on their own FINN engines" not in notes[0]  # float gates have no FINN graph
    assert "do NOT fit the XC7Z020 (DSP 189% of the part)" in notes[0]
    report["fits"] = True
    notes = reproduce._notes(args, HardwareReportTiming(report), {"base": Path(bundle)})
    assert "these engines' HW layers fit the XC7Z020." in notes[0]
    assert not any("calNN" in n for n in notes)  # no calibrated rows by default


def test_only_some_models_are_measured_with_only():
    """``--only``: base and the named models of Table I, in Table I's order; an unknown key is
    refused in one line naming the choices."""
    from measurements.reproduce import selected

    assert selected(build_parser().parse_args([])) == list(reproduce.MODELS)
    args = build_parser().parse_args(["--only", "mgl2s60", "layer40"])
    assert selected(args) == ["base", "mgl2s60", "layer40"]
    with pytest.raises(ReproduceError, match=r"^--only mgl2s65: not a model of Table I; choose"):
        selected(build_parser().parse_args(["--only", "mgl2s65"]))


def test_the_shared_design_report_is_the_jobs_own_when_it_belongs_to_the_bundle(
    tmp_path_factory, tmp_path
):
    """``--design shared``: the report of the shared-engine build (fpga/architecture.py) in
    ``work/hw/shared``, reused when it was made for the reference bundle (no FINN build)."""
    bundle = shared_bundle(tmp_path_factory)
    bundle_id = load_bundle(bundle, verify=False).bundle_id
    job = _job(tmp_path, "--design", "shared")
    job.results["bundles"] = {"base": str(bundle)}
    own = hwreport.write(job.work / "hw" / "shared" / hwreport.FILE, _report(bundle_id))
    assert step_hw_report(job) == str(own)
    assert not (job.work / "hw" / hwreport.FILE).exists()  # the per-graph report is not made

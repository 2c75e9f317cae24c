"""`python -m fpga estimate`: a bundle -> hardware report (FINN estimates) the emulator reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("finn", reason="finn-plus not installed (make setup installs it)")

from fpga.__main__ import main
from fpga.emulator.timing import HardwareReportTiming

ROOT = Path(__file__).resolve().parents[2]
TRAINED = ROOT / "measurements" / "train" / "resnet8-w4a4" / "iadi-60" / "final.pt"


def test_estimate_writes_a_report_that_fits_and_times_the_emulator(tmp_path, capsys):
    from export.bundle import export_bundle

    bundle = export_bundle(TRAINED, tmp_path / "bundle", progress=False)
    record = tmp_path / "rec" / "r8"
    args = ["estimate", str(bundle.path), "--out", str(tmp_path / "hw"), "--record", str(record)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "fits the XC7Z020" in out and "| block1 |" in out
    report = json.loads((tmp_path / "hw" / "hw_report.json").read_text())
    from fpga.finn.frontend import read_estimates

    assert read_estimates(tmp_path / "hw" / "estimates.json")["bundle_id"] == report["bundle_id"]
    assert report["clock_mhz"] == 100.0 and report["fits"] is True
    engines = {n for n, g in bundle.manifest.graphs.items() if g.qonnx is not None}
    assert set(report["graphs"]) == engines
    for g in report["graphs"].values():
        assert g["cycles"] > 0 and g["latency_cycles"] >= g["cycles"]
    # balanced folding: the stem (a tenth of a block's MACs) is folded to the blocks' MAC rate,
    # not to their frame rate, so it takes a fraction of a block's time
    graphs, macs = report["graphs"], {n: g.macs for n, g in bundle.manifest.graphs.items()}
    assert macs["stem"] < macs["block1"] / 8
    assert graphs["stem"]["cycles"] < graphs["block1"]["cycles"] / 4
    timing = HardwareReportTiming.from_json(tmp_path / "hw" / "hw_report.json")
    timing.check(bundle.manifest)  # every engine graph of the bundle has its cycles
    # the completed budget of one overlay of every engine: FINN's estimate + what it leaves out
    budget = report["resource_budget"]
    assert budget["label"].startswith("modelled")
    items = {line["item"]: line for line in budget["lines"]}
    assert items["FINN estimate (HW layers)"]["LUT"] == pytest.approx(report["total"]["LUT"])
    masks = 3  # ResNet-8's blocks each stream their mask map through one more input DMA
    assert items["IODMA_hls"]["count"] == 2 * len(engines) + masks
    fifos = items["skip-path FIFOs"]["fifos"]
    assert len(fifos) == 6  # ResNet-8: three residual joins, three mask maps at conv2's output
    assert (
        sorted(f["join"].split("_")[1] for f in fifos)
        == ["ElementwiseAdd"] * 3 + ["ElementwiseMul"] * 3
    )
    assert {f["dataType"] for f in fifos if "ElementwiseMul" in f["join"]} == {"BINARY"}
    assert budget["total"]["LUT"] > 2 * report["total"]["LUT"]
    assert f"one overlay of every engine {budget['verdict']}" in out
    assert budget["interconnect"]["axi_masters"] == 14 + masks
    assert budget["interconnect"]["mask_dmas"] == masks
    assert json.loads(record.with_suffix(".json").read_text()) == report
    assert f"Verdict: the overlay {budget['verdict']}." in record.with_suffix(".md").read_text()


def test_balanced_fps_gives_every_graph_the_largest_ones_mac_rate():
    from fpga.finn.frontend import MAX_BALANCED_FPS, balanced_fps

    fps = balanced_fps({"block": 4_000_000, "stem": 400_000, "gate": 1000, "head": 0}, 1000)
    assert fps == {"block": 1000, "stem": 10_000, "gate": 4_000_000, "head": MAX_BALANCED_FPS}
    assert balanced_fps({"block": 10, "stem": 1}, None) == {"block": None, "stem": None}


def test_estimate_builds_the_quantized_gates_engines_too(tmp_path, tmp_path_factory, monkeypatch):
    """``estimate`` builds what the overlay has an engine for (engine_graphs), not only the
    backbone: the emulator then runs the quantized gates on their engines."""
    import fpga.__main__ as cli
    import fpga.bitstream.overlay as overlay
    from export.manifest import load_bundle
    from fpga.bitstream.overlay import engine_graphs
    from tests.fpga.test_runtime import shared_bundle

    asked = {}

    def build(bundle, out, config, graphs=None):
        asked.update(graphs=graphs, balance=config.balance_macs)
        raise cli.FinnFrontendError("stop here")

    monkeypatch.setattr(overlay, "build_bundle", build)  # estimate builds as the overlay does
    path = shared_bundle(tmp_path_factory)
    manifest = load_bundle(path).manifest
    assert main(["estimate", str(path), "--out", str(tmp_path / "hw")]) == 1
    assert asked == {"graphs": engine_graphs(manifest), "balance": True}
    assert main(["estimate", str(path), "--out", str(tmp_path / "hw"), "--uniform-fps"]) == 1
    assert asked["balance"] is False


def test_estimates_of_another_format_are_refused_in_one_line(tmp_path):
    from fpga.finn.errors import BuildError
    from fpga.finn.frontend import ESTIMATES_FORMAT, read_estimates

    path = tmp_path / "estimates.json"
    path.write_text(json.dumps({"bundle_id": "x", "graphs": {}}))  # written before the field
    with pytest.raises(BuildError, match=r"has format None version None, not .*rebuild it") as e:
        read_estimates(path)
    assert "\n" not in str(e.value)
    path.write_text(json.dumps({"format": ESTIMATES_FORMAT, "version": 1, "graphs": {}}))
    assert read_estimates(path)["graphs"] == {}


def test_estimate_refuses_a_missing_bundle_in_one_line(tmp_path, capsys):
    assert main(["estimate", str(tmp_path / "none"), "--out", str(tmp_path / "hw")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1

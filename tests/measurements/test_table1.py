"""Table I from run summaries: paired savings, the realized column, intervals, labels, refusals."""

from __future__ import annotations

import csv
import json
import math

import pytest

from host.records import read_json, write_json
from measurements.table1 import TableError, build_table, main, markdown, mean_ci, title


def _run(
    tmp_path,
    name,
    source="emulated",
    full=(2.0, 2.2, 2.1),
    half=(1.0, 1.2, 1.0),
    backend="emulated",
    simulated=True,
    realized=0.30,
):
    run = tmp_path / name
    run.mkdir()
    summary = {
        "energy_source": source,
        "board_backend": backend,
        "meter_simulated": simulated,
        "reference": "full",
        "data": "CIFAR-10 (JPEG q75 re-encoding)",
        "images": 1000,
        "repeats": len(full),
        "board": "emulated ZedBoard",
        "meter": "sim 34465A",
        "machine": "test",
        "recorded_utc": "2026-11-25T00:00:00+00:00",
        "model_family": "ResNet-8 W4A4",
        "models": [
            {"key": "full", "bundle_id": "f", "compute_savings": 0.0, "accuracy": 0.74,
             "realized_compute_savings": 0.0, "accuracy_correct": 740, "accuracy_images": 1000,
             "energy_per_image_j": list(full)},
            {"key": "iadi-50", "bundle_id": "h", "compute_savings": 0.49, "accuracy": 0.66,
             "realized_compute_savings": realized, "accuracy_correct": 660,
             "accuracy_images": 1000, "energy_per_image_j": list(half)},
        ],
    }  # fmt: skip
    write_json(run / "summary.json", "summary", summary)
    return run


def test_savings_are_paired_by_repeat_with_a_t_interval(tmp_path):
    rows, meta = build_table([_run(tmp_path, "a")])
    (row,) = rows
    expected = [1 - 1.0 / 2.0, 1 - 1.2 / 2.2, 1 - 1.0 / 2.1]
    mean, half = mean_ci(expected)
    assert row.energy_savings == pytest.approx(mean)
    assert row.energy_repeatability_ci95 == pytest.approx(half)
    assert half == pytest.approx(
        4.303 * math.sqrt(sum((e - mean) ** 2 for e in expected) / 2) / 3**0.5, rel=1e-4
    )
    assert row.paper["compute_savings"] == 0.5 and row.paper["energy_savings"] == 0.471
    assert meta["energy_source"] == "emulated"
    # realized and model savings kept apart; accuracy's interval is Wilson over 1000 images
    assert row.compute_savings == 0.49 and row.realized_compute_savings == 0.30
    assert row.energy_to_realized == pytest.approx(mean / 0.30)
    lo, hi = row.accuracy_ci95
    assert lo < 0.66 < hi and hi - lo == pytest.approx(0.0587, abs=1e-3)  # 2 x 1.96 x 1.5%


def test_files_are_written_and_labelled(tmp_path, capsys):
    run = _run(tmp_path, "a")
    assert main([str(run), "--out", str(tmp_path / "t")]) == 0
    md = (tmp_path / "t" / "table1.md").read_text()
    assert "EMULATED" in md and "47.10%" in md
    header = next(line for line in md.splitlines() if line.startswith("| model"))
    assert "compute savings realized by the hardware" in header
    assert "energy repeatability (95%)" in header and "interval over images" in header
    assert "Rows with realized compute savings above 20%: 1 (iadi-50)" in md
    with open(tmp_path / "t" / "table1.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["compute_savings_realized"] == "0.300000" and row["board_backend"] == "emulated"
    assert (tmp_path / "t" / "table1.png").stat().st_size > 1000
    _, meta = build_table([run])
    assert "\n" not in title(meta) and title(meta).endswith("emulated")
    assert len(title(meta)) <= 80, title(meta)  # one short line; details go in the Markdown


def test_sentences_follow_the_data(tmp_path):
    rows, meta = build_table([_run(tmp_path, "a", realized=0.49)])
    md = markdown(rows, meta)
    assert "realizes all the compute savings the model counts" in md
    rows, meta = build_table([_run(tmp_path, "b", realized=0.10)])
    md = markdown(rows, meta)
    assert "No row's realized compute savings exceed 20%." in md
    assert "in 1 of 1 rows" in md


def test_labels_follow_the_energy_source(tmp_path):
    for source, backend, simulated, words in (
        ("hardware", "finn", False, "Energy measured on hardware"),
        ("arm_only", "cpu", False, "Energy measured, ARM only"),
        ("emulated", "cpu", True, "Energy EMULATED"),
    ):
        run = _run(tmp_path, source, source=source, backend=backend, simulated=simulated)
        rows, meta = build_table([run])
        assert f"**{words}" in markdown(rows, meta)


def test_refusals(tmp_path, capsys):
    with pytest.raises(TableError, match=r"mix energy sources \(emulated, measured on hardware"):
        build_table([_run(tmp_path, "a"), _run(tmp_path, "b", source="hardware")])
    with pytest.raises(TableError, match="mix energy sources"):
        build_table(
            [_run(tmp_path, "c", source="arm_only"), _run(tmp_path, "d", source="hardware")]
        )
    with pytest.raises(TableError, match="before boards reported their backend"):
        build_table([_run(tmp_path, "e", source="measured")])
    with pytest.raises(TableError, match="2 repeats, the reference 3"):
        build_table([_run(tmp_path, "f", half=(1.0, 1.1))])
    old = _run(tmp_path, "g")
    summary = read_json(old / "summary.json", "summary")
    del summary["models"][1]["realized_compute_savings"]
    write_json(old / "summary.json", "summary", summary)
    with pytest.raises(TableError, match="predates realized accounting"):
        build_table([old])
    assert main([str(tmp_path / "none"), "--out", str(tmp_path / "t")]) == 1
    assert "no summary.json" in capsys.readouterr().err
    unversioned = _run(tmp_path, "h")
    (unversioned / "summary.json").write_text(json.dumps(summary))  # no format field
    with pytest.raises(TableError, match=r"version None, not 'ddi-fpga-run-summary' version 1"):
        build_table([unversioned])
    other = _run(tmp_path, "i")
    write_json(other / "summary.json", "config", summary)  # another document of a run
    with pytest.raises(TableError, match=r"format 'ddi-fpga-run-config' version 1, not"):
        build_table([other])

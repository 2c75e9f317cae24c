"""Table I from run summaries: paired savings, confidence intervals, labels, refusals."""

from __future__ import annotations

import json
import math

import pytest

from measurements.table1 import TableError, build_table, main, mean_ci


def _run(tmp_path, name, source="emulated", full=(2.0, 2.2, 2.1), half=(1.0, 1.2, 1.0)):
    run = tmp_path / name
    run.mkdir()
    summary = {
        "energy_source": source,
        "reference": "full",
        "data": "CIFAR-10 (JPEG q75 re-encoding)",
        "images": 1000,
        "board": "emulated ZedBoard",
        "meter": "sim 34465A",
        "machine": "test",
        "recorded_utc": "2026-11-25T00:00:00+00:00",
        "model_family": "ResNet-8 W4A4",
        "models": [
            {"key": "full", "bundle_id": "f", "compute_savings": 0.0, "accuracy": 0.74,
             "energy_per_image_j": list(full)},
            {"key": "iadi-50", "bundle_id": "h", "compute_savings": 0.49, "accuracy": 0.66,
             "energy_per_image_j": list(half)},
        ],
    }  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_savings_are_paired_by_repeat_with_a_t_interval(tmp_path):
    rows, meta = build_table([_run(tmp_path, "a")])
    (row,) = rows
    expected = [1 - 1.0 / 2.0, 1 - 1.2 / 2.2, 1 - 1.0 / 2.1]
    mean, half = mean_ci(expected)
    assert row.energy_savings == pytest.approx(mean)
    assert row.energy_savings_ci95 == pytest.approx(half)
    assert half == pytest.approx(
        4.303 * math.sqrt(sum((e - mean) ** 2 for e in expected) / 2) / 3**0.5
    )
    assert row.paper["compute_savings"] == 0.5 and row.paper["energy_savings"] == 0.471
    assert meta["energy_source"] == "emulated"


def test_files_are_written_and_labelled(tmp_path, capsys):
    run = _run(tmp_path, "a")
    assert main([str(run), "--out", str(tmp_path / "t")]) == 0
    md = (tmp_path / "t" / "table1.md").read_text()
    assert "EMULATED" in md and "47.10%" in md
    assert (tmp_path / "t" / "table1.csv").read_text().count("\n") == 2
    assert (tmp_path / "t" / "table1.png").stat().st_size > 1000


def test_refusals(tmp_path, capsys):
    with pytest.raises(TableError, match="mix measured and emulated"):
        build_table([_run(tmp_path, "a"), _run(tmp_path, "b", source="measured")])
    with pytest.raises(TableError, match="2 repeats, the reference 3"):
        build_table([_run(tmp_path, "c", half=(1.0, 1.1))])
    assert main([str(tmp_path / "none"), "--out", str(tmp_path / "t")]) == 1
    assert "no summary.json" in capsys.readouterr().err

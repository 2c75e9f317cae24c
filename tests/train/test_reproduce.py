"""The training recipe as a table of steps: runs, records, resumes and refuses bad steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train.errors import RecordError
from train.evaluate import read_eval
from train.loop import read_metrics, write_metrics
from train.reproduce import RECIPES, main, steps, summarize

ROOT = Path(__file__).resolve().parents[2]


def test_recipe_has_float_qat_ten_iadi_and_one_ddi_step(tmp_path):
    table = steps(RECIPES["resnet20-cpu"], tmp_path, {})
    names = [name for name, _ in table]
    assert names[:3] == ["float", "float-restart", "base"]
    assert sorted(n for n in names if n.startswith("iadi-")) == sorted(
        f"iadi-{g}-{t}" for g in ("mgl2s", "layer") for t in (40, 50, 60, 70, 80)
    )
    assert names[-1] == "ddi-mgl2s-60"
    cfg = dict(table)
    assert cfg["float"].quant is False and cfg["float-restart"].quant is False
    assert cfg["float-restart"].init == str(tmp_path / "float" / "final.pt")
    assert cfg["base"].quant is True
    assert cfg["base"].init == str(tmp_path / "float-restart" / "final.pt")
    assert cfg["base-sd"].init == cfg["base"].init and cfg["base-sd"].stochastic_depth > 0
    assert cfg["iadi-mgl2s-40"].init == str(tmp_path / "base-sd" / "final.pt")
    assert cfg["iadi-mgl2s-40"].budget_loss == "squared" and cfg["iadi-mgl2s-40"].alpha > 0
    assert cfg["iadi-layer-70"].gating == "layer" and cfg["iadi-layer-70"].target_savings == 0.7
    assert cfg["ddi-mgl2s-60"].init == str(tmp_path / "iadi-mgl2s-60" / "final.pt")


def test_gpu_recipe_is_the_papers_network_with_amp(tmp_path):
    table = dict(steps(RECIPES["resnet74-gpu"], tmp_path, {}))
    assert table["float"].model == "resnet74" and table["float"].amp
    assert "float-restart" not in table  # one long cosine cycle on a GPU
    assert table["base"].init == str(tmp_path / "float" / "final.pt")


def test_quick_recipe_runs_float_then_qat_then_iadi_and_skips_what_is_done(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--model", "resnet8", "--limit-steps", "2"]
    args += ["--train-limit", "256", "--eval-limit", "100", "--calibration-images", "100"]
    args += ["--until", "iadi-layer-40", "--only", "float", "float-restart", "base", "base-sd"]
    args += ["iadi-layer-40"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["format"] == "ddi-fpga-train-summary"
    runs = {r["run"]: r for r in summary["runs"]}
    assert set(runs) == {"float", "float-restart", "base", "base-sd", "iadi-layer-40"}
    assert runs["float"]["precision"] == "float" and runs["base"]["precision"] == "w4a4"
    assert runs["float-restart"]["precision"] == "float"
    layer = runs["iadi-layer-40"]
    # Layer-only gating skips whole blocks: what the model saves, dense engines save too.
    assert layer["compute_savings_realized"] == pytest.approx(layer["compute_savings_modelled"])
    for name in runs:
        ev = json.loads((tmp_path / name / "eval.json").read_text())
        assert ev["images"] == 100
    assert "5 of 15 steps done" in (tmp_path / "summary.md").read_text()
    stamp = (tmp_path / "base" / "eval.json").stat().st_mtime_ns
    assert main(args) == 0  # everything done: nothing is trained or evaluated again
    assert (tmp_path / "base" / "eval.json").stat().st_mtime_ns == stamp


def test_unknown_step_is_refused_in_one_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--until", "iadi-99"]) == 1
    err = capsys.readouterr().err.strip()
    assert "iadi-99" in err and "\n" not in err
    assert not (tmp_path / "summary.json").exists()


def test_the_recorded_runs_are_of_this_format():
    """The committed records (measurements/train) are read by the strict readers."""
    evals = sorted((ROOT / "measurements" / "train").glob("*/*/eval.json"))
    metrics = sorted((ROOT / "measurements" / "train").glob("*/*/metrics.json"))
    # every evaluated run has its metrics (a run may have no eval.json: resnet74's brief float
    # run, whose final.pt is not kept)
    assert {p.parent for p in evals} <= {p.parent for p in metrics} and len(evals) >= 18
    assert all(read_eval(p)["images"] == 10_000 for p in evals)
    assert all(read_metrics(p)["phase"] in ("base", "iadi", "ddi") for p in metrics)


def test_an_unversioned_record_stops_the_recipe_in_one_line(tmp_path, capsys):
    folder = tmp_path / "float"
    folder.mkdir()
    (folder / "final.pt").touch()  # a finished step: only its eval.json is read
    (folder / "eval.json").write_text(json.dumps({"images": 100, "accuracy": 0.5}))
    assert main(["--out", str(tmp_path), "--only", "float"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and repr(str(folder / "eval.json")) in err
    assert "format None version None" in err and "python -m train eval" in err
    # the summary reads metrics.json too: an unversioned one is refused the same way
    table = steps(RECIPES["resnet20-cpu"], tmp_path, {})
    eval_json = (ROOT / "measurements/train/resnet20-w4a4/base/eval.json").read_text()
    (folder / "eval.json").write_text(eval_json)
    (folder / "metrics.json").write_text(json.dumps({"phase": "base"}))
    with pytest.raises(RecordError, match=r"metrics '.*metrics\.json' has format None") as e:
        summarize("resnet20-cpu", table, tmp_path)
    assert "\n" not in str(e.value)
    base = ROOT / "measurements/train/resnet20-w4a4/base/metrics.json"
    write_metrics(folder / "metrics.json", read_metrics(base))
    assert [r["run"] for r in summarize("resnet20-cpu", table, tmp_path)["runs"]] == ["float"]

"""Evaluation: savings accounting, anytime inference under a budget, the skip-ratio plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from train.calibrate import calibrate_gates
from train.errors import RecordError
from train.evaluate import (
    EVAL_FORMAT,
    EVAL_VERSION,
    evaluate,
    plot_skip_ratios,
    read_eval,
    write_eval,
)
from train.model import create_model


def _batches(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return [(x[:32], y[:32]), (x[32:], y[32:])]


@pytest.fixture(scope="module")
def result():
    torch.manual_seed(0)
    model = create_model("resnet20", gating="mgl2s", exits=True)
    model.train()
    with torch.no_grad():  # realistic BN statistics
        for x, _ in _batches(seed=1):
            model(x)
    model.eval()
    full = model.costs().full
    # a mix of skipped and executed blocks: put the mean cost at 60% of the backbone
    calibrate_gates(model, _batches(), 0.6, lambda out: out.macs / full)
    return evaluate(model, _batches(), progress=False)


def test_savings_are_net_of_gate_overhead(result):
    costs = result.model.costs()
    assert result.full_macs == costs.full
    assert result.compute_savings == pytest.approx(1 - result.macs.mean() / costs.full)
    np.testing.assert_allclose(result.block_macs.sum(1) + costs.stem + costs.head, result.macs)
    summary = result.summary()
    assert summary["gate_overhead_macs"] > 0
    assert 0 < summary["skip_ratio"] < 1
    assert len(summary["skip_ratio_per_block"]) == costs.num_blocks
    assert summary["energy_savings"] < 1 and "citation" in summary["energy_model"]


def test_anytime_with_an_unlimited_budget_uses_the_final_classifier(result):
    r = result.anytime(1e12)
    assert r["exits_used"]["final"] == len(result.labels)
    assert r["accuracy"] == pytest.approx(result.accuracy)
    assert r["mean_macs"] == pytest.approx(result.macs.mean())
    assert r["over_budget_fraction"] == 0.0


def test_anytime_below_the_first_exit_is_forced_there_and_flagged(result):
    r = result.anytime(1.0)
    assert r["exits_used"]["exit0"] == len(result.labels)
    assert r["over_budget_fraction"] == 1.0
    assert r["accuracy"] == pytest.approx(
        float((result.exit_predictions[:, 0] == result.labels).mean())
    )


def test_anytime_spending_grows_with_the_budget_and_respects_it(result):
    budgets = result.default_budgets()
    assert budgets == sorted(budgets) and budgets[-1] == result.full_macs
    rows = [result.anytime(b) for b in budgets]
    spent = [r["mean_macs"] for r in rows]
    assert spent == sorted(spent)
    for b, r in zip(budgets[1:], rows[1:], strict=True):
        if r["over_budget_fraction"] == 0.0:
            assert r["mean_macs"] <= b
    # the budget of the last exit lets images that skipped blocks go further than that exit
    late = result.anytime(budgets[-2])
    assert late["exits_used"]["final"] + late["exits_used"][f"exit{len(budgets) - 2}"] > 0


def test_model_without_exits_always_answers_with_the_final_classifier():
    model = create_model("resnet8", gating="layer").eval()
    r = evaluate(model, _batches(16), progress=False)
    assert r.exit_predictions.shape == (16, 0)
    assert r.anytime(1.0)["exits_used"] == {"final": 16}
    assert "anytime" not in r.summary()


def test_skip_ratio_plot_is_written(result, tmp_path):
    path = plot_skip_ratios(result, tmp_path / "skip.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_evaluation_file_round_trips_with_its_format(tmp_path):
    path = write_eval(tmp_path / "run" / "eval.json", {"images": 3, "accuracy": 0.5})
    document = json.loads(path.read_text())
    assert (document["format"], document["version"]) == (EVAL_FORMAT, EVAL_VERSION)
    assert read_eval(path) == {"images": 3, "accuracy": 0.5}


@pytest.mark.parametrize(
    ("document", "found"),
    [
        ({"images": 3}, "format None version None"),  # written before the fields
        ({"format": EVAL_FORMAT, "version": EVAL_VERSION + 1}, f"version {EVAL_VERSION + 1}"),
        ({"format": "ddi-fpga-train-metrics", "version": 1}, "'ddi-fpga-train-metrics'"),
        ({"format": EVAL_FORMAT, "version": True}, "version True"),
        ([1, 2], "holds a list"),
    ],
)
def test_an_evaluation_of_another_format_is_refused_in_one_line(tmp_path, document, found):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(document))
    with pytest.raises(RecordError) as e:
        read_eval(path)
    message = str(e.value)
    assert found in message and repr(str(path)) in message and "\n" not in message
    assert f"python -m train eval {tmp_path / 'final.pt'} --out {path}" in message

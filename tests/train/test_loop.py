"""Training phases on real CIFAR-10: target mode, warm-up, resume after interruption."""

from __future__ import annotations

import json

import pytest
import torch

from train.calibrate import calibrate_gates, gate_biases, mean_cost
from train.checkpoint import build_model, load_checkpoint, save_checkpoint
from train.data import CifarLoader, load_cifar10
from train.errors import ConfigError, RecordError
from train.loop import (
    METRICS_FORMAT,
    METRICS_VERSION,
    AlphaController,
    TrainConfig,
    Trainer,
    read_metrics,
    train,
    write_metrics,
)
from train.model import create_model

SMALL = dict(batch_size=64, train_limit=10_000, eval_limit=1_000, eval_batch_size=500)


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory):
    """A float ResNet-8 backbone trained briefly on real CIFAR-10."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("base")
    train(
        TrainConfig(
            phase="base", out_dir=str(out), model="resnet8", quant=False, steps=120, lr=0.1, **SMALL
        )
    )
    return out / "final.pt"


@pytest.mark.parametrize(
    "budget", [dict(budget_loss="dual"), dict(budget_loss="squared", alpha=2.0)], ids=str
)
def test_target_mode_lands_within_three_points_on_a_short_real_run(
    base_checkpoint, tmp_path, budget
):
    target = 0.5
    metrics = train(
        TrainConfig(
            phase="iadi",
            out_dir=str(tmp_path),
            init=str(base_checkpoint),
            steps=150,
            warmup_steps=20,
            finetune_steps=30,
            target_savings=target,
            calibration_images=1_000,
            **budget,
            **SMALL,
        )
    )
    achieved = metrics["test"]["compute_savings"]  # 1,000 real test images, gates included
    assert abs(achieved - target) <= 0.03, achieved
    assert [c["when"] for c in metrics["calibrations"]] == ["after main", "after finetune"]
    assert metrics["test"]["accuracy"] > 0.2  # the skipping network still classifies
    saved = load_checkpoint(tmp_path / "final.pt")
    assert saved["train_state"] is None and saved["metrics"]["test"]["compute_savings"] == achieved


def test_warmup_trains_only_the_gates(base_checkpoint, tmp_path):
    cfg = TrainConfig(
        phase="iadi",
        out_dir=str(tmp_path),
        init=str(base_checkpoint),
        steps=1,
        warmup_steps=4,
        **SMALL,
    )
    trainer = Trainer(cfg)
    model = trainer.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer._run_stage(trainer._batches(), 4, None)
    after = model.state_dict()
    gate_keys = [k for k in after if k.startswith(("layer_gates", "gate_rnn", "channel_gates"))]
    backbone = [k for k in after if k not in gate_keys]
    changed = [k for k in gate_keys if not torch.equal(before[k], after[k])]
    assert any(k.startswith("gate_rnn") for k in changed), "the layer gate got no gradient"
    assert any(k.startswith("channel_gates") for k in changed), "the channel gates got no gradient"
    # the backbone, BN running statistics included, is fixed during the warm-up (paper IV-A)
    assert [k for k in backbone if not torch.equal(before[k], after[k])] == []


def test_interrupted_run_resumes_to_the_same_weights(base_checkpoint, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    common = dict(
        phase="iadi",
        init=str(base_checkpoint),
        steps=6,
        warmup_steps=3,
        checkpoint_every_steps=2,
        target_savings=0.3,
        alpha=0.5,
        **SMALL,
    )
    reference = tmp_path / "reference"
    train(TrainConfig(out_dir=str(reference), **common))

    resumed = tmp_path / "resumed"
    original = Trainer._loss

    def interrupt(self, out, y, *teacher):
        if self.stage == "main" and self.step == 3:
            raise KeyboardInterrupt
        return original(self, out, y, *teacher)

    monkeypatch.setattr(Trainer, "_loss", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out_dir=str(resumed), **common))
    state = load_checkpoint(resumed / "last.pt")["train_state"]
    assert (state["stage"], state["step"]) == ("main", 2)
    monkeypatch.setattr(Trainer, "_loss", original)
    train(TrainConfig(out_dir=str(resumed), **common))

    a = load_checkpoint(reference / "final.pt")
    b = load_checkpoint(resumed / "final.pt")
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert a["metrics"]["alpha"] == b["metrics"]["alpha"]
    assert a["metrics"]["test"] == b["metrics"]["test"]
    log = [json.loads(line) for line in (resumed / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["stage"] == "main"][-1] == 6


def test_resume_with_other_settings_is_refused(base_checkpoint, tmp_path):
    cfg = dict(
        phase="iadi",
        out_dir=str(tmp_path),
        init=str(base_checkpoint),
        steps=2,
        warmup_steps=1,
        **SMALL,
    )
    train(TrainConfig(**cfg))
    with pytest.raises(ConfigError, match="other settings"):
        train(TrainConfig(**{**cfg, "lr": 0.2}))


def test_calibration_meets_a_cost_target_and_restores_on_failure(base_checkpoint):
    model = build_model(load_checkpoint(base_checkpoint), gating="mgl2s")
    loader = CifarLoader(load_cifar10("test"), 250, train=False, limit=500)
    full = model.costs().full

    def cost(out):
        return out.macs / full

    before = [b.clone() for b in gate_biases(model)]
    result = calibrate_gates(model, loader, 0.7, cost)
    assert abs(mean_cost(model, loader, cost) - 0.7) < 0.02
    assert result.cost_after == pytest.approx(mean_cost(model, loader, cost))
    shifts = {
        float((b - a).detach().mean()) for a, b in zip(before, gate_biases(model), strict=True)
    }
    assert len(shifts) == 1 and shifts.pop() == pytest.approx(result.delta, abs=1e-5)
    unreachable = calibrate_gates(model, loader, 0.01, cost)  # below the gate-free minimum
    assert unreachable.delta == -16.0 and unreachable.cost_after > 0.01


def test_alpha_controller_rises_above_and_falls_below_the_budget():
    c = AlphaController(budget=0.5, alpha=0.0, step=0.1, ema=0.0)
    assert c.update(1.0) == pytest.approx(0.1)
    assert c.update(1.0) == pytest.approx(0.2)
    assert c.update(0.25) == pytest.approx(0.15)
    for _ in range(10):
        c.update(0.0)
    assert c.alpha == 0.0


def test_invalid_settings_are_refused():
    with pytest.raises(ConfigError, match="pass --init"):
        TrainConfig(phase="iadi", out_dir="x")
    with pytest.raises(ConfigError, match=r"target_savings 1\.5"):
        TrainConfig(phase="base", out_dir="x", target_savings=1.5)
    with pytest.raises(ConfigError, match="phase 'finetune'"):
        TrainConfig(phase="finetune", out_dir="x")
    with pytest.raises(ConfigError, match=r"distill=1\.5"):
        TrainConfig(phase="iadi", out_dir="x", init="b.pt", distill=1.5)
    with pytest.raises(ConfigError, match="distill needs a teacher"):
        TrainConfig(phase="base", out_dir="x", distill=0.5)
    with pytest.raises(ConfigError, match="budget_loss 'hinge'"):
        TrainConfig(phase="base", out_dir="x", budget_loss="hinge")
    with pytest.raises(ConfigError, match=r"alpha=0\.0.*pass --alpha > 0"):
        TrainConfig(phase="base", out_dir="x", budget_loss="squared", target_savings=0.5)


def test_ddi_phase_adds_exits_and_trains_them(base_checkpoint, tmp_path):
    iadi = tmp_path / "iadi"
    train(
        TrainConfig(
            phase="iadi",
            out_dir=str(iadi),
            init=str(base_checkpoint),
            steps=2,
            warmup_steps=1,
            **SMALL,
        )
    )
    metrics = train(
        TrainConfig(
            phase="ddi",
            out_dir=str(tmp_path / "ddi"),
            init=str(iadi / "final.pt"),
            steps=3,
            **SMALL,
        )
    )
    model = build_model(load_checkpoint(tmp_path / "ddi" / "final.pt"))
    assert model.has_exits and model.gating == "mgl2s"
    # the model comes from --init: the configs record the ResNet-8 that ran, not the default
    for phase in ("iadi", "ddi"):
        assert json.loads((tmp_path / phase / "config.json").read_text())["model"] == "resnet8"
    assert len(metrics["test"]["exits"]) == len(model.exit_positions) == 2
    assert [a["budget_macs"] for a in metrics["test"]["anytime"]][-1] == model.costs().full


def test_checkpoint_round_trip_keeps_decisions(tmp_path):
    model = create_model("resnet8", gating="mgl2s").eval()
    path = save_checkpoint(tmp_path / "m.pt", model, phase="iadi", config={})
    again = build_model(load_checkpoint(path)).eval()
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x).block_gates, again(x).block_gates)


def test_wall_time_is_summed_over_resumed_segments(tmp_path, monkeypatch):
    import time as real_time
    from types import SimpleNamespace

    import train.loop as loop

    offset = [0.0]
    clock = SimpleNamespace(
        time=lambda: real_time.time() + offset[0], process_time=real_time.process_time
    )
    monkeypatch.setattr(loop, "time", clock)
    cfg = dict(phase="base", out_dir=str(tmp_path), model="resnet8", quant=False, steps=4)
    cfg.update(checkpoint_every_steps=2, **SMALL)
    original = Trainer._loss

    def slow_then_interrupt(self, out, y, *teacher):
        offset[0] += 1000.0  # the first segment "takes" 1000 s per step
        if self.step == 2:
            raise KeyboardInterrupt
        return original(self, out, y, *teacher)

    monkeypatch.setattr(Trainer, "_loss", slow_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**cfg))
    first = load_checkpoint(tmp_path / "last.pt")["train_state"]["train_wall_time_s"]
    assert first >= 2000.0
    monkeypatch.setattr(Trainer, "_loss", original)
    metrics = train(TrainConfig(**cfg))
    # The first segment up to its checkpoint (2 x 1000 s) plus the second; the last segment
    # alone would be seconds.
    assert metrics["train_wall_time_s"] >= first >= 2000.0
    assert 0.0 < metrics["train_cpu_time_s"] < 1000.0  # CPU time is not the patched clock


def test_qat_starts_from_float_weights(base_checkpoint, tmp_path):
    cfg = TrainConfig(phase="base", out_dir=str(tmp_path), init=str(base_checkpoint), steps=1)
    assert cfg.model == "resnet20"  # the field's default; the init checkpoint is a ResNet-8
    trainer = Trainer(cfg)
    assert trainer.cfg.model == trainer.model.spec()["name"] == "resnet8"
    assert trainer.model.spec()["kwargs"]["quant"]["weight_bits"] == 4
    float_state = load_checkpoint(base_checkpoint)["state_dict"]
    quant_state = trainer.model.state_dict()
    for key in ("stem.0.weight", "blocks.0.conv1.weight", "blocks.0.bn1.running_mean"):
        assert torch.equal(float_state[key], quant_state[key]), key


def test_learning_rate_warms_up_linearly_then_follows_the_cosine():
    from train.loop import _lr_at

    cfg = TrainConfig(phase="base", out_dir="x", lr=0.1, steps=110, lr_warmup_steps=10)
    assert _lr_at(cfg, 0, 110, 10) == pytest.approx(0.01)
    assert _lr_at(cfg, 9, 110, 10) == pytest.approx(0.1)
    assert _lr_at(cfg, 10, 110, 10) == pytest.approx(0.1)
    assert _lr_at(cfg, 60, 110, 10) == pytest.approx(0.05)
    with pytest.raises(ConfigError, match="lr_warmup_steps"):
        TrainConfig(phase="base", out_dir="x", steps=10, lr_warmup_steps=10)
    with pytest.raises(ConfigError, match="label_smoothing"):
        TrainConfig(phase="base", out_dir="x", label_smoothing=1.0)


def test_distillation_mixes_label_and_teacher_terms(base_checkpoint, tmp_path):
    lam, t = 0.6, 4.0
    train(
        TrainConfig(
            phase="iadi",
            out_dir=str(tmp_path),
            init=str(base_checkpoint),
            gating="layer",
            steps=4,
            warmup_steps=2,
            alpha=0.5,
            distill=lam,
            distill_temperature=t,
            calibration_images=200,
            **SMALL,
        )
    )
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").open()]
    main = [d for d in lines if d["stage"] == "main"]
    assert main and all("kd" not in d for d in lines if d["stage"] == "warmup")
    for d in main:
        # The teacher is the ungated backbone the gates were added to: after the warm-up the
        # student runs every block, so the two disagree only through what training changed.
        assert d["kd"] >= 0.0
        expected = (1 - lam) * d["ce"] + lam * t * t * d["kd"] + d["alpha"] * d["cost"]
        assert d["loss"] == pytest.approx(expected, rel=1e-5)


def test_stochastic_depth_skips_blocks_per_image_in_training_only():
    torch.manual_seed(0)
    model = create_model("resnet8")
    model.block_drop = 0.5
    images = torch.rand(256, 3, 32, 32)
    model.train()
    kept = model(images).block_gates
    assert set(kept.unique().tolist()) == {0.0, 1.0}
    assert 0.4 < float(kept.mean()) < 0.6  # 768 Bernoulli(0.5) draws
    model.eval()
    assert float(model(images).block_gates.mean()) == 1.0  # evaluation runs every block
    with pytest.raises(ConfigError, match="stochastic_depth applies to the base phase"):
        TrainConfig(phase="iadi", out_dir="x", init="b.pt", stochastic_depth=0.3)


def test_metrics_round_trip_with_their_format(tmp_path):
    path = write_metrics(tmp_path / "metrics.json", {"phase": "base", "train_wall_time_s": 1.5})
    document = json.loads(path.read_text())
    assert (document["format"], document["version"]) == (METRICS_FORMAT, METRICS_VERSION)
    assert read_metrics(path) == {"phase": "base", "train_wall_time_s": 1.5}


@pytest.mark.parametrize(
    ("document", "found"),
    [
        ({"phase": "base"}, "format None version None"),  # written before the fields
        ({"format": METRICS_FORMAT, "version": 0}, "version 0, not"),
        ({"format": "ddi-fpga-train-eval", "version": 1}, "format 'ddi-fpga-train-eval'"),
    ],
)
def test_metrics_of_another_format_are_refused_in_one_line(tmp_path, document, found):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(document))
    with pytest.raises(RecordError) as e:
        read_metrics(path)
    message = str(e.value)
    assert found in message and repr(str(path)) in message and "\n" not in message
    assert "write_metrics" in message

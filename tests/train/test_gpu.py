"""CUDA runs of the same code paths (deselected by default: ``pytest -m gpu`` on a GPU machine)."""

from __future__ import annotations

import pytest
import torch

from train.checkpoint import build_model, load_checkpoint
from train.loop import TrainConfig, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_phases_run_on_the_gpu_and_decide_like_the_cpu(tmp_path):
    small = dict(batch_size=128, train_limit=4096, eval_limit=1000, device="cuda")
    train(
        TrainConfig(
            phase="base", out_dir=str(tmp_path / "base"), model="resnet20", steps=30, **small
        )
    )
    metrics = train(
        TrainConfig(
            phase="iadi",
            out_dir=str(tmp_path / "iadi"),
            init=str(tmp_path / "base" / "final.pt"),
            steps=30,
            warmup_steps=5,
            target_savings=0.5,
            finetune_steps=5,
            **small,
        )
    )
    assert metrics["machine"]["device"].startswith("cuda")
    model = build_model(load_checkpoint(tmp_path / "iadi" / "final.pt")).eval()
    x = torch.rand(64, 3, 32, 32)
    with torch.no_grad():
        cpu = model(x)
        gpu = model.cuda()(x.cuda())
    agree = (cpu.block_gates == gpu.block_gates.cpu()).float().mean()
    assert agree > 0.98  # float differences may flip a decision that sits on the threshold


def test_one_step_of_the_gpu_recipe_runs_with_amp(tmp_path):
    from train.reproduce import RECIPES, steps

    table = dict(steps(RECIPES["resnet74-gpu"], tmp_path, {"device": "cuda"}))
    cfg = table["float"]
    short = {**cfg.to_dict(), "steps": 2, "lr_warmup_steps": 1, "train_limit": 512}
    metrics = train(TrainConfig(**{**short, "eval_limit": 500}))
    assert cfg.amp and metrics["machine"]["device"].startswith("cuda")
    assert metrics["model"]["name"] == "resnet74"

"""Training phases of Dual Dynamic Inference (paper, sections III-C and IV-A).

- ``base``: the plain backbone (no gates), cross-entropy.
- ``iadi``: gates are added to a trained backbone. First a warm-up: the backbone is frozen and
  only the gates train (cross-entropy) until no block or channel is skipped; then gates and
  backbone train jointly on ``CE + alpha * E`` (Eq. 5), E the executed cost per image as a
  fraction of the plain backbone's (MACs, or the modelled energy of Eq. 6).
- ``ddi``: RADI exits are added to a trained IADI model and everything trains on the sum of the
  final and exit losses (Eq. 4), keeping the resource term so the skipping policy holds.

Target mode (beyond the paper): instead of a hand-tuned alpha, ``target_savings`` asks for a
compute saving s, i.e. the constraint E <= 1 - s. alpha is the constraint's Lagrange multiplier,
raised by dual ascent while the running cost exceeds the target and lowered (to 0 at least)
while it is below; cross-entropy alone pulls the cost back up, so the cost settles at the
target. Each Table I point is then one run with its own ``--target-savings``.

Every phase runs on the CPU, one GPU, or several GPUs under ``torchrun`` (DDP); checkpoints are
written every ``checkpoint_every_steps`` and a run resumes from ``last.pt`` in its folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import formats
from train.calibrate import calibrate_gates
from train.checkpoint import build_model, load_backbone, load_checkpoint, save_checkpoint, unwrap
from train.cost import EnergyCost
from train.data import CifarLoader, load_cifar10
from train.errors import ConfigError, RecordError
from train.evaluate import evaluate_on_test
from train.model import DDIOutput, DDIResNet, create_model

logger = logging.getLogger(__name__)

PHASES = ("base", "iadi", "ddi")
METRICS_FILE = "metrics.json"
METRICS_FORMAT = "ddi-fpga-train-metrics"
METRICS_VERSION = 1
"""1: ``metrics.json`` carries ``format`` and ``version`` (files before them are refused)."""
RESOURCES = ("macs", "energy")
BUDGET_LOSSES = ("dual", "squared")


@dataclass
class TrainConfig:
    """Settings of one training phase; saved as ``config.json`` beside its checkpoints."""

    phase: str
    """'base', 'iadi' or 'ddi'."""
    out_dir: str
    """Run folder: config.json, log.jsonl, last.pt, final.pt, metrics.json."""
    model: str = "resnet20"
    """Registered model name (resnet8, 14, 20, 38, 74, 110). With ``init``, the checkpoint's
    model is built and the trainer sets this field to its name, so config.json records what ran."""
    init: str | None = None
    """Checkpoint to start from: required for iadi (a base model) and ddi (an IADI model)."""
    gating: str = "mgl2s"
    """Gates added in the iadi phase: 'layer', 'channel' or 'mgl2s'."""
    quant: bool = True
    """Brevitas quantization-aware training (ignored when ``init`` fixes it)."""
    weight_bits: int = 4
    act_bits: int = 4
    input_bits: int = 8
    steps: int = 10_000
    """Optimizer steps of the phase (the joint part for iadi); the paper uses 50k per phase."""
    warmup_steps: int = 500
    """iadi only: most steps of the gate warm-up (it stops once nothing is skipped)."""
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"
    """'cosine' (to 0 over ``steps``) or 'constant'."""
    lr_warmup_steps: int = 0
    """Main stage: steps of linear learning-rate warm-up from ``lr / lr_warmup_steps`` to ``lr``
    before the schedule (which then runs over the remaining steps)."""
    label_smoothing: float = 0.0
    """Label smoothing of every cross-entropy term (0 = plain cross-entropy)."""
    channels_last: bool = False
    """Train in the channels-last memory format (NHWC), faster for convolutions on some CPUs."""
    amp: bool = False
    """Mixed precision on CUDA: forward and loss under bfloat16 autocast (ignored on the CPU)."""
    resource: str = "macs"
    """What E measures: 'macs' or 'energy' (Eq. 6 model)."""
    alpha: float = 0.0
    """Weight of E in CE + alpha * E with E a fraction of the backbone cost (fixed-alpha mode)."""
    target_savings: float | None = None
    """Target mode: the savings to reach; alpha is then adapted and ``alpha`` is its start."""
    alpha_step: float = 0.01
    """Dual-ascent step of alpha per unit of relative cost excess, per step (target mode)."""
    budget_loss: str = "dual"
    """Target mode: how the budget b = 1 - target_savings enters the loss. ``dual``: CE + alpha*E
    with alpha raised by dual ascent while E exceeds b (Eq. 5, alpha as a Lagrange multiplier).
    ``squared``: CE + alpha*(E - b)^2 with a fixed weight ``alpha``, E the batch's mean cost: the
    pull reverses below the budget, so hard gates cannot collapse to skip-everything (a
    target-rate loss as in ConvNet-AIG, Veit & Belongie, ECCV 2018)."""
    stochastic_depth: float = 0.0
    """base phase: the probability that a block is skipped per image in training (stochastic
    depth with a layer gate's skip semantics, train.model.DDIResNet.block_drop), so that the
    backbone the gates are later added to already works with blocks left out. 0 = off."""
    distill: float = 0.0
    """iadi/ddi, joint and fine-tuning stages: weight lambda of knowledge distillation from the
    ``init`` checkpoint's network (frozen teacher in evaluation mode): the classification term
    becomes (1 - lambda) * CE + lambda * T^2 * KL(teacher || student) at temperature T
    (Hinton et al., 2015), so the backbone adapts to skipping from the full network's soft
    targets, not from labels alone. 0 = labels only (the paper)."""
    distill_temperature: float = 4.0
    finetune_steps: int = 0
    """Target mode: after joint training and a calibration of the gates' operating point, steps
    of backbone fine-tuning (learning rate ``0.1 * lr``, cosine) with the gates frozen, followed
    by a final calibration (see train.calibrate)."""
    calibration_images: int = 2000
    """Target mode: un-augmented training images the calibration measures the cost on."""
    data: str | None = None
    """CIFAR-10 location (see train.data.locate_cifar10)."""
    train_limit: int | None = None
    """Use only the first N training images (quick runs and tests)."""
    eval_limit: int | None = None
    """Evaluate on the first N test images only."""
    eval_batch_size: int = 500
    checkpoint_every_steps: int = 500
    seed: int = 0
    device: str = "auto"
    """'auto' (CUDA if present), 'cpu', 'cuda' or 'cuda:N'."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes recorded with the run (e.g. the recipe that launched it)."""

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ConfigError(f"phase {self.phase!r} is unknown; choose one of {PHASES}")
        if self.resource not in RESOURCES:
            raise ConfigError(f"resource {self.resource!r} is unknown; choose one of {RESOURCES}")
        if self.phase in ("iadi", "ddi") and not self.init:
            raise ConfigError(
                f"phase {self.phase!r} starts from a trained model: pass --init CHECKPOINT"
            )
        if self.budget_loss not in BUDGET_LOSSES:
            raise ConfigError(
                f"budget_loss {self.budget_loss!r} is unknown; choose one of {BUDGET_LOSSES}"
            )
        if self.budget_loss == "squared" and self.target_savings is not None and self.alpha <= 0:
            raise ConfigError(
                f"budget_loss 'squared' weighs (E - budget)^2 by alpha, and alpha={self.alpha!r}; "
                "pass --alpha > 0 (e.g. 2)"
            )
        if not 0.0 <= self.distill <= 1.0 or self.distill_temperature <= 0:
            raise ConfigError(
                f"distill={self.distill!r} at temperature {self.distill_temperature!r}: the "
                "weight must be in [0, 1] and the temperature > 0, e.g. --distill 0.5"
            )
        if not 0.0 <= self.stochastic_depth < 1.0:
            raise ConfigError(
                f"stochastic_depth {self.stochastic_depth!r} must be in [0, 1), e.g. 0.3"
            )
        if self.stochastic_depth and self.phase != "base":
            raise ConfigError(
                "stochastic_depth applies to the base phase (ungated backbones); the gates "
                "decide what is skipped in the iadi and ddi phases"
            )
        if self.distill and self.phase == "base":
            raise ConfigError("distill needs a teacher: use it in the iadi or ddi phase (--init)")
        if self.target_savings is not None and not 0.0 <= self.target_savings < 1.0:
            raise ConfigError(
                f"target_savings {self.target_savings!r} must be in [0, 1), e.g. 0.6 for 60%"
            )
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(
                f"steps {self.steps!r} and batch_size {self.batch_size!r} must be >= 1"
            )
        if self.lr_schedule not in ("cosine", "constant"):
            raise ConfigError(f"lr_schedule {self.lr_schedule!r} must be 'cosine' or 'constant'")
        if not 0 <= self.lr_warmup_steps < self.steps:
            raise ConfigError(
                f"lr_warmup_steps {self.lr_warmup_steps!r} must be in [0, steps={self.steps})"
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(
                f"label_smoothing {self.label_smoothing!r} must be in [0, 1), e.g. 0.1"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Devices and DDP


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> tuple[Dist, torch.device]:
    """Initialize DDP when launched by torchrun (WORLD_SIZE > 1) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda":
        device = f"cuda:{local}"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r} requested but CUDA is not available; use --device cpu"
        )
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local), dev


# ---------------------------------------------------------------------------------------------
# Resource loss and the target controller


class AlphaController:
    """Dual ascent on alpha for the constraint ``cost <= budget`` (cost as a fraction of full).

    ``alpha <- max(0, alpha + step * (ema_cost - budget) / budget)``: the relative excess makes the
    step independent of the budget's size; the exponential average (over ~20 steps) smooths the
    per-batch cost so alpha does not chase noise.
    """

    def __init__(self, budget: float, alpha: float, step: float, ema: float = 0.98) -> None:
        self.budget, self.alpha, self.step, self.ema = budget, alpha, step, ema
        self.cost: float | None = None

    def update(self, batch_cost: float) -> float:
        self.cost = (
            batch_cost if self.cost is None else self.ema * self.cost + (1 - self.ema) * batch_cost
        )
        self.alpha = max(0.0, self.alpha + self.step * (self.cost - self.budget) / self.budget)
        return self.alpha

    def state_dict(self) -> dict[str, float | None]:
        return {"alpha": self.alpha, "cost": self.cost}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alpha, self.cost = float(state["alpha"]), state["cost"]


class ResourceCost:
    """Executed cost per image as a fraction of the plain backbone: MACs or modelled energy."""

    def __init__(self, model: DDIResNet, resource: str) -> None:
        self.model, self.resource = model, resource
        if resource == "energy":
            self.energy = EnergyCost.from_model(model, surfaces=True)

    def __call__(self, out: DDIOutput) -> torch.Tensor:
        """Differentiable cost for the loss (energy: the fitted surrogate)."""
        if self.resource == "macs":
            return out.macs / self.model.costs().full  # (B,)
        return self.energy.surrogate(out.block_gates, out.channel_fraction) / self.energy.full

    def exact(self, out: DDIOutput) -> torch.Tensor:
        """Exact cost of hard decisions (evaluation, calibration)."""
        if self.resource == "macs":
            return out.macs / self.model.costs().full
        return self.energy.executed(out.block_gates, out.channel_fraction) / self.energy.full


# ---------------------------------------------------------------------------------------------


def _lr_at(cfg: TrainConfig, step: int, total: int, warmup: int = 0) -> float:
    """Learning rate at ``step`` of ``total``: linear warm-up over ``warmup`` steps, then the
    schedule (cosine to 0, or constant) over the remaining ``total - warmup`` steps."""
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.lr_schedule == "constant":
        return cfg.lr
    step, total = step - warmup, total - warmup
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * min(step, total) / total))


def _build(cfg: TrainConfig) -> tuple[DDIResNet, dict | None]:
    """The model of this phase, initialized from ``cfg.init`` where given."""
    quant = (
        {"weight_bits": cfg.weight_bits, "act_bits": cfg.act_bits, "input_bits": cfg.input_bits}
        if cfg.quant
        else None
    )
    if cfg.phase == "base":
        if not cfg.init:
            return create_model(cfg.model, gating="none", exits=False, quant=quant), None
        payload = load_checkpoint(cfg.init)
        if quant is not None and payload["model"]["kwargs"].get("quant") is None:
            # Float pre-training, then quantization-aware training: the float weights start the
            # quantized network; its activation scales start from their statistics phase.
            kwargs = {**payload["model"]["kwargs"], "quant": quant, "quant_gates": None}
            model = create_model(payload["model"]["name"], **kwargs)
            load_backbone(model, payload, quantize=True)
            return model, payload
        return build_model(payload), payload
    payload = load_checkpoint(cfg.init)
    kwargs = dict(payload["model"]["kwargs"])
    if cfg.phase == "iadi":
        # The gates are quantized where the backbone is (train/model.py); gates of a gated
        # init checkpoint, float or not, start the new gates (load_backbone).
        kwargs.update(gating=cfg.gating, exits=False, quant_gates=None)
    else:
        if kwargs.get("gating", "none") == "none":
            logger.warning("ddi phase on an ungated model: exits only (RADI without IADI)")
        kwargs.update(exits=True)
    model = create_model(payload["model"]["name"], **kwargs)
    load_backbone(model, payload)
    return model, payload


def _gate_parameters(model: DDIResNet) -> list[nn.Parameter]:
    parts = [model.layer_gates, model.gate_rnn, model.channel_gates]
    return [p for part in parts if part is not None for p in part.parameters()]


_GATE_MODULES = ("layer_gates", "gate_rnn", "channel_gates")


def _set_trainable(model: DDIResNet, stage: str) -> None:
    """What trains in a stage; frozen parts also keep their BN statistics fixed (eval mode).

    warmup: only the gates (backbone fixed, paper IV-A); main: everything; finetune: everything
    but the gates, whose calibrated decisions stay put.
    """
    model.train()
    gate_ids = {id(p) for p in _gate_parameters(model)}
    for p in model.parameters():
        is_gate = id(p) in gate_ids
        p.requires_grad_(stage == "main" or (stage == "warmup") == is_gate)
    if stage in ("warmup", "finetune"):
        for name, m in model.named_modules():
            if m is not model and name.startswith(_GATE_MODULES) == (stage == "finetune"):
                m.eval()


class Trainer:
    """Runs one phase; ``run()`` returns the final metrics."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.dist, self.device = setup_distributed(cfg.device)
        self.out = Path(cfg.out_dir)
        torch.manual_seed(cfg.seed)
        self.model, self.init_payload = _build(cfg)
        if self.init_payload is not None:
            # The init checkpoint decides the backbone (_build), not the field's default.
            built = self.init_payload["model"]["name"]
            if built != cfg.model:
                logger.info("model %s comes from --init %s (not %s)", built, cfg.init, cfg.model)
            self.cfg = cfg = replace(cfg, model=built)
        self.model.to(self.device)
        self.amp = cfg.amp and self.device.type == "cuda"
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.net: nn.Module = self.model  # DDP-wrapped per stage by _prepare_stage()
        self.resource = ResourceCost(self.model, cfg.resource)
        self.controller: AlphaController | None = None
        if cfg.phase != "base" and cfg.target_savings is not None:
            start = cfg.alpha
            if cfg.phase == "ddi" and self.init_payload:
                start = float(self.init_payload.get("metrics", {}).get("alpha", start))
            self.controller = AlphaController(1.0 - cfg.target_savings, start, cfg.alpha_step)
        self.alpha = cfg.alpha
        self.model.block_drop = cfg.stochastic_depth
        self.teacher: DDIResNet | None = None
        if cfg.distill and self.init_payload is not None:
            self.teacher = build_model(self.init_payload).to(self.device).eval()
            self.teacher.requires_grad_(False)
            if cfg.channels_last:
                self.teacher.to(memory_format=torch.channels_last)
        train_arrays = self.train_arrays = load_cifar10("train", cfg.data)
        self.data_source = train_arrays.source
        self.loader = CifarLoader(
            train_arrays,
            cfg.batch_size,
            train=True,
            seed=cfg.seed,
            device=self.device,
            limit=cfg.train_limit,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        self.stage = "warmup" if cfg.phase == "iadi" else "main"
        self.calibrations: list[dict[str, Any]] = []
        self.step = 0  # steps done in the current stage
        self.epoch, self.batch_in_epoch = 0, 0
        # Wall and CPU time of the segments before this one (a resumed run), and this segment's
        # start: a resumed run reports the sum over its segments.
        self.wall_before_s, self.segment_start = 0.0, time.time()
        self.cpu_before_s, self.segment_cpu_start = 0.0, time.process_time()
        self.images_seen = 0  # training images through the optimizer, all stages
        self._prepare_stage()

    # -- setup ---------------------------------------------------------------------------------
    def _prepare_stage(self) -> None:
        """Freeze what the stage does not train, then build DDP and the optimizer over the rest.

        DDP is built after freezing: it expects a gradient for every parameter that requires one
        when it is constructed, so a wrapper built before the warm-up froze the backbone would
        wait forever for the backbone's gradients.
        """
        _set_trainable(self.model, self.stage)
        self.net = self.model
        if self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = self._optimizer()

    def _optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        # No weight decay on BN, biases and quantizer scales (1-d parameters).
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        return torch.optim.SGD(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=True,
        )

    def _stage_steps(self) -> int:
        return {
            "warmup": self.cfg.warmup_steps,
            "main": self.cfg.steps,
            "finetune": self.cfg.finetune_steps,
        }[self.stage]

    def _next_stage(self) -> str | None:
        if self.stage == "warmup":
            return "main"
        if self.stage == "main" and self.controller is not None and self.cfg.finetune_steps > 0:
            return "finetune"
        return None

    def _calibrate(self, when: str) -> None:
        """Target mode: set the gates' operating point to the target (train.calibrate)."""

        assert self.cfg.target_savings is not None
        loader = CifarLoader(
            self.train_arrays,
            self.cfg.eval_batch_size,
            train=False,
            device=self.device,
            limit=self.cfg.calibration_images,
        )
        result = calibrate_gates(
            self.model, loader, 1.0 - self.cfg.target_savings, self.resource.exact
        )
        self.calibrations.append({"when": when, **result.to_dict()})

    # -- checkpoints ---------------------------------------------------------------------------
    def _train_state(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "optimizer": self.optimizer.state_dict(),
            "alpha": self.alpha,
            "controller": self.controller.state_dict() if self.controller else None,
            "calibrations": self.calibrations,
            "torch_rng": torch.get_rng_state(),
            "train_wall_time_s": self.wall_time_s(),
            "train_cpu_time_s": self.cpu_time_s(),
            "train_images_seen": self.images_seen,
        }

    def wall_time_s(self) -> float:
        """Training wall time so far, summed over every resumed segment of the run."""
        return self.wall_before_s + (time.time() - self.segment_start)

    def cpu_time_s(self) -> float:
        """CPU time of this process's threads so far (all cores), summed over the segments.

        On a shared machine the wall time grows with the other load; the CPU time does not.
        """
        return self.cpu_before_s + (time.process_time() - self.segment_cpu_start)

    def save(
        self, name: str, metrics: dict[str, Any] | None = None, *, resumable: bool = True
    ) -> Path | None:
        """Write a checkpoint; ``resumable=False`` leaves out the optimizer and RNG state."""
        if not self.dist.main:
            return None
        metrics = {**(metrics or {}), "alpha": self.alpha}
        return save_checkpoint(
            self.out / name,
            self.model,
            phase=self.cfg.phase,
            config=self.cfg.to_dict(),
            metrics=metrics,
            train_state=self._train_state() if resumable else None,
        )

    def try_resume(self) -> bool:
        last = self.out / "last.pt"
        if not last.exists():
            return False
        payload = load_checkpoint(last, map_location=self.device)
        saved = dict(payload["config"])
        mine = self.cfg.to_dict()
        ignored = {"device", "out_dir", "data", "extra", "checkpoint_every_steps"}
        if self.cfg.init:
            # the init checkpoint decides the model; runs saved before the trainer recorded it
            # hold the field's default there
            ignored.add("model")
        # A setting added after the checkpoint was written counts as its default there.
        defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
        diff = {
            k: (saved.get(k, defaults.get(k)), v)
            for k, v in mine.items()
            if k not in ignored and saved.get(k, defaults.get(k)) != v
        }
        if diff:
            raise ConfigError(
                f"{str(last)!r} was written with other settings {diff!r}; use another --out "
                "or the same settings to resume"
            )
        self.model.load_state_dict(payload["state_dict"])
        state = payload["train_state"]
        self.stage = state["stage"]
        self._prepare_stage()
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.alpha = float(state["alpha"])
        self.calibrations = list(state.get("calibrations") or [])
        self.wall_before_s = float(state.get("train_wall_time_s", 0.0))
        self.cpu_before_s = float(state.get("train_cpu_time_s", 0.0))
        self.images_seen = int(state.get("train_images_seen", 0))
        if self.controller and state.get("controller"):
            self.controller.load_state_dict(state["controller"])
        torch.set_rng_state(state["torch_rng"])
        logger.info("resumed %s at %s step %d", last, self.stage, self.step)
        return True

    # -- loop ----------------------------------------------------------------------------------
    def _batches(self):
        """Training batches forever, resuming mid-epoch exactly where a checkpoint left off."""
        while True:
            self.loader.set_epoch(self.epoch)
            for x, y in self.loader.iter_from(self.batch_in_epoch):
                self.batch_in_epoch += 1
                yield x, y
            self.epoch += 1
            self.batch_in_epoch = 0

    def _loss(
        self, out: DDIOutput, y: torch.Tensor, teacher: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        smooth = self.cfg.label_smoothing
        ce = F.cross_entropy(out.logits, y, label_smoothing=smooth)
        loss = ce
        stats: dict[str, float] = {"ce": float(ce.detach())}
        if teacher is not None:
            t, lam = self.cfg.distill_temperature, self.cfg.distill
            kd = F.kl_div(
                F.log_softmax(out.logits.float() / t, dim=1),
                F.log_softmax(teacher.float() / t, dim=1),
                reduction="batchmean",
                log_target=True,
            )
            loss = (1.0 - lam) * ce + lam * t * t * kd
            stats["kd"] = float(kd.detach())
        if out.exit_logits:
            exit_ce = sum(F.cross_entropy(e, y, label_smoothing=smooth) for e in out.exit_logits)
            loss = loss + exit_ce  # Eq. 4: plain sum of the branch losses
            stats["exit_ce"] = float(exit_ce.detach())
        cost = self.resource(out).mean()
        stats["cost"] = float(cost.detach())
        if self.stage == "main" and self.cfg.phase != "base":
            if self.controller is not None and self.cfg.budget_loss == "squared":
                excess = cost - self.controller.budget
                loss = loss + self.alpha * excess * excess  # two-sided target loss
            else:
                if self.controller is not None:
                    self.alpha = self.controller.update(self._global_mean(float(cost.detach())))
                loss = loss + self.alpha * cost  # Eq. 5
        stats["alpha"] = self.alpha
        stats["acc"] = float((out.logits.argmax(1) == y).float().mean())
        stats["skip"] = float(1.0 - out.block_gates.detach().mean())
        return loss, stats

    def _global_mean(self, value: float) -> float:
        if self.dist.world_size == 1:
            return value
        t = torch.tensor([value], device=self.device)
        dist.all_reduce(t)
        return float(t) / self.dist.world_size

    def _warmup_done(self, recent_skip: list[float]) -> bool:
        """The warm-up ends once 20 consecutive batches skipped nothing (skip ratio 0)."""
        return len(recent_skip) >= 20 and max(recent_skip[-20:]) == 0.0

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
        resumed = self.try_resume()
        self.segment_start, self.segment_cpu_start = time.time(), time.process_time()
        if self.dist.main and not resumed:
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        # a fresh run starts its log anew; a resumed one goes on with it
        log = (self.out / "log.jsonl").open("a" if resumed else "w") if self.dist.main else None
        batches = self._batches()
        try:
            while True:
                self._run_stage(batches, self._stage_steps(), log)
                if self.controller is not None and self.stage in ("main", "finetune"):
                    self._calibrate(f"after {self.stage}")
                nxt = self._next_stage()
                if nxt is None:
                    break
                self.stage, self.step = nxt, 0
                self._prepare_stage()
                self.save("last.pt")  # a resume starts the next stage
        finally:
            if log:
                log.close()
        metrics = self.final_metrics(self.wall_time_s(), self.cpu_time_s())
        if self.dist.main:
            self.save("final.pt", metrics, resumable=False)
            write_metrics(self.out / METRICS_FILE, metrics)
        if self.dist.world_size > 1:
            dist.barrier()
        return metrics

    def _run_stage(self, batches, total: int, log) -> None:
        cfg = self.cfg
        recent_skip: list[float] = []
        desc = f"{cfg.phase}:{self.stage}"
        bar = tqdm(
            total=total,
            initial=self.step,
            desc=desc,
            disable=not self.dist.main,
            dynamic_ncols=True,
            mininterval=2.0,
        )
        while self.step < total:
            x, y = next(batches)
            lr = cfg.lr
            if self.stage == "main":
                lr = _lr_at(cfg, self.step, total, cfg.lr_warmup_steps)
            elif self.stage == "finetune":
                lr = 0.1 * _lr_at(cfg, self.step, total)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", torch.bfloat16, enabled=self.amp):
                teacher = None
                if self.teacher is not None and self.stage in ("main", "finetune"):
                    with torch.no_grad():
                        teacher = self.teacher(x).logits
                out = self.net(x)
                loss, stats = self._loss(out, y, teacher)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            self.images_seen += len(y)
            stats.update(step=self.step, stage=self.stage, lr=lr, loss=float(loss.detach()))
            if log and (self.step % 20 == 0 or self.step == total):
                log.write(json.dumps(stats) + "\n")
                log.flush()
            bar.update(1)
            bar.set_postfix(
                loss=f"{stats['loss']:.3f}",
                acc=f"{stats['acc']:.2f}",
                cost=f"{stats['cost']:.3f}",
                alpha=f"{self.alpha:.3g}",
                refresh=False,
            )
            if self.stage == "warmup":
                # Every rank must end the warm-up at the same step: agree on the skip indicator.
                skipped = stats["skip"] + float(out.channel_fraction.lt(1).any())
                recent_skip.append(self._global_mean(skipped))
                if self._warmup_done(recent_skip):
                    logger.info("warm-up reached skip ratio 0 after %d steps", self.step)
                    break
            if self.step % cfg.checkpoint_every_steps == 0:
                self.save("last.pt")
        bar.close()
        self.save("last.pt")

    def final_metrics(self, wall_s: float, cpu_s: float | None = None) -> dict[str, Any]:
        cfg = self.cfg
        metrics: dict[str, Any] = {
            "phase": cfg.phase,
            "model": unwrap(self.model).spec(),
            "train_wall_time_s": round(wall_s, 1),
            "train_cpu_time_s": None if cpu_s is None else round(cpu_s, 1),
            "train_images_seen": self.images_seen,
            "alpha": self.alpha,
            "calibrations": self.calibrations,
            "data": self.data_source,
            "machine": machine_description(self.device),
        }
        if self.dist.main:
            result = evaluate_on_test(
                self.model,
                cfg.data,
                device=self.device,
                batch_size=cfg.eval_batch_size,
                limit=cfg.eval_limit,
            )
            metrics["test"] = result.summary()
        return metrics


def write_metrics(path: str | os.PathLike, metrics: dict[str, Any]) -> Path:
    """Write a run's final ``metrics`` (:meth:`Trainer.final_metrics`, also in its
    ``final.pt``) as its ``metrics.json``."""
    path = Path(path)
    document = {"format": METRICS_FORMAT, "version": METRICS_VERSION, **metrics}
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """A run's ``metrics.json`` without its ``format`` and ``version``; :class:`RecordError`
    in one line for a file of another format or version."""
    path = Path(path)
    try:
        document = formats.read(
            path,
            METRICS_FORMAT,
            METRICS_VERSION,
            error=RecordError,
            remedy="write it again from the metrics its run's final.pt holds "
            "(train.loop.write_metrics), or train the run again",
            what="the metrics",
        )
    except FileNotFoundError as exc:
        raise RecordError(f"cannot read the metrics {str(path)!r}: {exc}") from None
    return {k: v for k, v in document.items() if k not in ("format", "version")}


def machine_description(device: torch.device) -> dict[str, Any]:
    """What the run ran on, for the record."""
    import platform

    info: dict[str, Any] = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run one phase to completion (resuming from ``out_dir/last.pt`` if present)."""
    return Trainer(cfg).run()

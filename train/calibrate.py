"""Operating-point calibration of the gates, the last step of the savings-target mode.

Joint training with ``CE + alpha * E`` learns *which* images skip which blocks and channels; with
hard 0/1 gates the achieved cost is a step function of the gate logits, and in short runs a
controller on alpha alone oscillates between "run everything" and "skip everything" (observed on
ResNet-8: cost 1.14 -> 0.06 -> 1.14 within 100 steps). Calibration sets the operating point
explicitly: every gate logit (the layer gate's shared projection and each channel gate's
classifier) is shifted by one offset ``delta``, found by bisection so that the mean executed cost
over un-augmented training images meets the target. The offset is folded into the gates' biases,
so the network's structure, and what export sees, is unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from train.model import DDIOutput, DDIResNet, eval_mode

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calibration:
    """Outcome of one calibration: the offset applied and the costs before and after."""

    delta: float
    target_cost: float
    cost_before: float
    cost_after: float
    images: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def gate_biases(model: DDIResNet) -> list[Tensor]:
    """The bias of every gate's final layer (the logits' offset)."""
    biases = []
    if model.gate_rnn is not None:
        biases.append(model.gate_rnn.proj.bias)
    if model.channel_gates is not None:
        biases.extend(gate.fc.bias for gate in model.channel_gates)
    return biases


@contextmanager
def shifted_gates(model: DDIResNet, delta: float) -> Iterator[None]:
    """Temporarily add ``delta`` to every gate logit (exactly restored afterwards)."""
    biases = gate_biases(model)
    saved = [b.detach().clone() for b in biases]
    with torch.no_grad():
        for b in biases:
            b.add_(delta)
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(biases, saved, strict=True):
                b.copy_(s)


@torch.no_grad()
def mean_cost(
    model: DDIResNet, batches: Iterable[tuple[Tensor, Tensor]], cost: Callable[[DDIOutput], Tensor]
) -> float:
    """Mean per-image cost (a fraction of the plain backbone) in evaluation mode."""
    total, n = 0.0, 0
    with eval_mode(model):
        for x, _ in batches:
            values = cost(model(x))
            total += float(values.sum())
            n += values.numel()
    return total / max(n, 1)


@torch.no_grad()
def calibrate_gates(
    model: DDIResNet,
    batches: Iterable[tuple[Tensor, Tensor]],
    target_cost: float,
    cost: Callable[[DDIOutput], Tensor],
    *,
    span: float = 16.0,
    iterations: int = 20,
) -> Calibration:
    """Shift all gate logits by one offset so that the mean cost is as close to ``target_cost``.

    The cost grows with the offset (more blocks and channels run), so a bisection over
    ``[-span, span]`` finds it; ``iterations`` halvings leave the offset within
    ``span / 2**iterations``. The chosen offset is added to the gates' biases in place.
    """
    batches = list(batches)  # iterated once per bisection step
    images = sum(len(x) for x, _ in batches)

    def at(delta: float) -> float:
        with shifted_gates(model, delta):
            return mean_cost(model, batches, cost)

    before = at(0.0)
    lo, hi = -span, span
    c_lo, c_hi = at(lo), at(hi)
    if target_cost <= c_lo:
        best, best_cost = lo, c_lo
    elif target_cost >= c_hi:
        best, best_cost = hi, c_hi
    else:
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            c_mid = at(mid)
            if c_mid > target_cost:
                hi, c_hi = mid, c_mid
            else:
                lo, c_lo = mid, c_mid
        best, best_cost = (lo, c_lo) if target_cost - c_lo <= c_hi - target_cost else (hi, c_hi)
    for b in gate_biases(model):
        b.add_(best)
    result = Calibration(best, target_cost, before, best_cost, images)
    logger.info(
        "calibrated gates: offset %+.4f, cost %.4f -> %.4f (target %.4f) on %d images",
        best,
        before,
        best_cost,
        target_cost,
        images,
    )
    return result

"""Evaluation of a DDI model: accuracy, compute and modelled-energy savings, skipping, exits.

Savings are always measured against the plain backbone (the same network without gates or
exits) with the gates' own cost counted as spent work, so a saving here is a net saving.

Anytime inference under a budget (RADI, paper section III-B and Table II): per image the runtime
walks the blocks in order and keeps the latest exit branch it has passed. Before a block it runs
the block's gates only if, after them, the latest exit branch still fits the budget; once the
gates fix the block's cost, the block runs only if the latest exit still fits after it. When a
block does not fit, inference halts and the latest exit classifies; an image that passes every
block classifies with the final classifier if that fits, else with the latest exit. The MACs
spent thus never exceed the budget, except for images that must reach the first exit at all
(reported as ``over_budget_fraction``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import formats
from train.cost import EnergyCost
from train.data import CifarLoader, load_cifar10
from train.errors import RecordError
from train.model import DDIResNet, eval_mode

logger = logging.getLogger(__name__)

EVAL_FILE = "eval.json"
EVAL_FORMAT = "ddi-fpga-train-eval"
EVAL_VERSION = 1
"""1: an evaluation file carries ``format`` and ``version`` (files before them are refused)."""


@dataclass
class EvalResult:
    """Per-image outcomes of one pass over a test set (numpy arrays, first axis = image)."""

    labels: np.ndarray  # (N,)
    predictions: np.ndarray  # (N,) final classifier
    exit_predictions: np.ndarray  # (N, exits)
    block_gates: np.ndarray  # (N, blocks) bool: block ran
    channel_fraction: np.ndarray  # (N, blocks): fraction of channels computed (0 if skipped)
    macs: np.ndarray  # (N,) executed MACs to the final classifier, gates included
    block_macs: np.ndarray  # (N, blocks) per-block MACs, gates included
    energy: np.ndarray | None  # (N,) modelled energy to the final classifier
    model: DDIResNet
    source: str = ""
    logits: np.ndarray | None = None  # (N, classes) final classifier

    @property
    def accuracy(self) -> float:
        return float((self.predictions == self.labels).mean())

    @property
    def full_macs(self) -> int:
        return self.model.costs().full

    @property
    def compute_savings(self) -> float:
        return 1.0 - float(self.macs.mean()) / self.full_macs

    @property
    def realized_compute_savings(self) -> float:
        """Savings that dense engines deliver: only skipped blocks save their work.

        A FINN engine computes every channel whatever the channel mask says, so a kept block is
        charged its full convolutions here; the gates' own MACs count as spent, as in
        ``compute_savings`` (the modelled savings, which also credit masked channels).
        """
        costs = self.model.costs()
        gates = torch.as_tensor(self.block_gates, dtype=torch.float64)
        dense = costs.executed_macs(gates, torch.ones_like(gates))  # (N,)
        return costs.savings(dense)

    def gate_macs(self) -> np.ndarray:
        """(N, blocks) MACs of the gates: G^L always, G^C only where G^L kept the block."""
        costs = self.model.costs()
        lg = np.asarray(costs.layer_gate, dtype=float)
        return lg + np.asarray(costs.channel_gate, dtype=float) * self.block_gates

    def skip_ratio_per_block(self) -> np.ndarray:
        return 1.0 - self.block_gates.mean(axis=0)

    def channel_keep_per_block(self) -> np.ndarray:
        """Mean fraction of channels computed, over the images where the block ran."""
        ran = self.block_gates.sum(axis=0)
        kept = (self.channel_fraction * self.block_gates).sum(axis=0)
        return np.divide(kept, ran, out=np.zeros_like(kept, dtype=float), where=ran > 0)

    def exit_accuracies(self) -> list[float]:
        return [
            float((self.exit_predictions[:, j] == self.labels).mean())
            for j in range(self.exit_predictions.shape[1])
        ]

    def default_budgets(self) -> list[float]:
        """Table II budgets: the plain backbone's MACs to each exit (branch included), and full."""
        costs = self.model.costs()
        cum = costs.stem + np.cumsum(costs.block_body)
        budgets = [
            float(cum[p] + e) for p, e in zip(costs.exit_positions, costs.exits, strict=True)
        ]
        return [*budgets, float(costs.full)]

    def anytime_decisions(self, budget_macs: float) -> tuple[np.ndarray, np.ndarray]:
        """Per image, the classifier that answers under ``budget_macs`` and the MACs spent.

        Returns ``(answered_by, spent)``: ``answered_by`` (N,) is -1 for the final classifier or
        the index of an exit branch. The rule is the one a runtime can follow online (the bundle
        executor does, export/executor.py): before the layer gate, before the channel gate of a
        kept block and before the block itself, an image that has passed an exit halts if that
        work plus its latest exit would exceed the budget; an exit branch is paid only by the
        images it answers. At the end an image uses the final classifier if the budget allows it.
        """
        costs = self.model.costs()
        n = len(self.labels)
        positions = list(costs.exit_positions)
        exit_cost = np.asarray([*costs.exits, 0], dtype=float)  # [-1] -> no exit passed yet
        lg = np.asarray(costs.layer_gate, dtype=float)
        cg = np.asarray(costs.channel_gate, dtype=float) * self.block_gates  # (N, blocks)
        body = self.block_macs - lg - cg  # shortcut, plus the convolutions where the block ran
        spent = np.full(n, float(costs.stem))
        last = np.full(n, -1)
        halted = np.zeros(n, dtype=bool)
        for i in range(costs.num_blocks):
            for work in (np.full(n, lg[i]), cg[:, i], body[:, i]):
                pending = exit_cost[last]
                halted |= (last >= 0) & ~halted & (spent + work + pending > budget_macs)
                spent = spent + np.where(halted, 0.0, work)
            if i in positions:
                last = np.where(halted, last, positions.index(i))
        final = ~halted & (spent + costs.head <= budget_macs)
        final |= last < 0  # no exit reached: only the final classifier can answer
        answered_by = np.where(final, -1, last)
        spent = spent + np.where(final, costs.head, exit_cost[last])
        return answered_by, spent

    def anytime(self, budget_macs: float) -> dict[str, Any]:
        """Accuracy and spending of anytime inference under ``budget_macs``."""
        answered_by, spent = self.anytime_decisions(budget_macs)
        preds = self.predictions.copy()
        for j in range(self.exit_predictions.shape[1]):
            preds = np.where(answered_by == j, self.exit_predictions[:, j], preds)
        exits_used = {
            ("final" if j < 0 else f"exit{j}"): int((answered_by == j).sum())
            for j in [*range(self.exit_predictions.shape[1]), -1]
        }
        return {
            "budget_macs": float(budget_macs),
            "accuracy": float((preds == self.labels).mean()),
            "mean_macs": float(spent.mean()),
            "over_budget_fraction": float((spent > budget_macs).mean()),
            "exits_used": exits_used,
        }

    def summary(self, budgets: list[float] | None = None) -> dict[str, Any]:
        """JSON-ready summary of the evaluation."""
        costs = self.model.costs()
        out: dict[str, Any] = {
            "data": self.source,
            "images": len(self.labels),
            "accuracy": self.accuracy,
            "full_macs": costs.full,
            "mean_macs": float(self.macs.mean()),
            "compute_savings": self.compute_savings,
            "realized_compute_savings": self.realized_compute_savings,
            "gate_overhead_macs": float(self.gate_macs().sum(1).mean()),
            "skip_ratio": float(1.0 - self.block_gates.mean()),
            "skip_ratio_per_block": self.skip_ratio_per_block().round(4).tolist(),
            "channel_keep_per_block": self.channel_keep_per_block().round(4).tolist(),
        }
        if self.energy is not None:
            energy = EnergyCost.from_model(self.model)
            out["energy_model"] = energy.describe()
            out["mean_energy"] = float(self.energy.mean())
            out["full_energy"] = energy.full
            out["energy_savings"] = 1.0 - float(self.energy.mean()) / energy.full
        if self.exit_predictions.shape[1]:
            out["exits"] = [
                {"after_block": p, "macs": m, "accuracy": a}
                for p, m, a in zip(
                    costs.exit_positions, costs.exits, self.exit_accuracies(), strict=True
                )
            ]
            out["anytime"] = [self.anytime(b) for b in (budgets or self.default_budgets())]
        return out


@torch.no_grad()
def evaluate(model: DDIResNet, loader, *, energy: bool = True, progress: bool = True) -> EvalResult:
    """Run ``model`` in evaluation mode (real skipping) over ``loader``'s batches."""
    costs = model.costs()
    energy_model = None
    if energy:
        energy_model = EnergyCost.from_model(model)
    parts: dict[str, list[np.ndarray]] = {
        k: []
        for k in (
            "labels",
            "pred",
            "exit_pred",
            "gates",
            "fraction",
            "macs",
            "block_macs",
            "energy",
            "logits",
        )
    }
    with eval_mode(model):
        for x, y in tqdm(loader, desc="eval", disable=not progress, leave=False, mininterval=2.0):
            out = model(x)
            parts["labels"].append(y.cpu().numpy())
            parts["pred"].append(out.logits.argmax(1).cpu().numpy())
            parts["logits"].append(out.logits.cpu().numpy())
            exits = [e.argmax(1) for e in out.exit_logits]
            parts["exit_pred"].append(
                torch.stack(exits, 1).cpu().numpy()
                if exits
                else np.zeros((len(y), 0), dtype=np.int64)
            )
            parts["gates"].append(out.block_gates.bool().cpu().numpy())
            parts["fraction"].append(out.channel_fraction.cpu().numpy())
            parts["macs"].append(out.macs.cpu().numpy())
            parts["block_macs"].append(
                costs.block_costs(out.block_gates.double(), out.channel_fraction.double())
                .cpu()
                .numpy()
            )
            if energy_model is not None:
                parts["energy"].append(
                    energy_model.executed(out.block_gates, out.channel_fraction).cpu().numpy()
                )
    cat = {k: np.concatenate(v) if v else None for k, v in parts.items()}
    return EvalResult(
        labels=cat["labels"],
        predictions=cat["pred"],
        exit_predictions=cat["exit_pred"],
        block_gates=cat["gates"],
        channel_fraction=cat["fraction"],
        macs=cat["macs"],
        block_macs=cat["block_macs"],
        energy=cat["energy"],
        model=model,
        source=getattr(loader, "source", ""),
        logits=cat["logits"],
    )


def evaluate_on_test(
    model: DDIResNet,
    data: str | None = None,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 500,
    limit: int | None = None,
    progress: bool = True,
) -> EvalResult:
    """Evaluate ``model`` on the CIFAR-10 test split (the first ``limit`` images if given)."""

    test = load_cifar10("test", data)
    loader = CifarLoader(test, batch_size, train=False, device=device, limit=limit)
    return evaluate(model, loader, progress=progress)


def plot_skip_ratios(result: EvalResult, path: str | Path, title: str | None = None) -> Path:
    """Bar chart of the skip ratio per block (and channel keep ratio where channels are gated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    skip = result.skip_ratio_per_block()
    keep = result.channel_keep_per_block()
    blocks = np.arange(len(skip))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(skip) + 3), 3.6))
    ax.bar(blocks, skip, color="tab:blue", label="block skip ratio (G^L)")
    if result.model.has_channel_gates:
        ax.plot(
            blocks,
            1.0 - keep,
            "o-",
            color="tab:orange",
            ms=3,
            label="channels skipped in running blocks (G^C)",
        )
    stages = [info.stage for info in result.model.block_infos]
    for i in range(1, len(stages)):
        if stages[i] != stages[i - 1]:
            ax.axvline(i - 0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("residual block")
    ax.set_ylabel("ratio over test images")
    ax.set_ylim(0, 1)
    ax.set_xticks(blocks)
    ax.set_title(
        fontsize=9,
        label=title
        or f"{result.model.spec()['name']}: accuracy {result.accuracy:.2%}, "
        f"compute savings {result.compute_savings:.1%}",
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def eval_document(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` (:meth:`EvalResult.summary` and what the caller adds) as an evaluation
    document: ``eval.json`` of ``python -m train eval`` and of each step of ``train.reproduce``."""
    return {"format": EVAL_FORMAT, "version": EVAL_VERSION, **report}


def write_eval(path: str | os.PathLike, report: dict[str, Any]) -> Path:
    """Write ``report`` as an evaluation file (:func:`eval_document`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(eval_document(report), indent=2) + "\n")
    return path


def read_eval(path: str | os.PathLike) -> dict[str, Any]:
    """The evaluation file at ``path`` without its ``format`` and ``version``;
    :class:`RecordError` in one line for a file of another format or version."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RecordError(f"cannot read the evaluation {str(path)!r}: {exc}") from None
    checkpoint = document.get("checkpoint") if isinstance(document, dict) else None
    formats.check(
        document,
        EVAL_FORMAT,
        EVAL_VERSION,
        source=f"evaluation {str(path)!r}",
        error=RecordError,
        remedy="re-evaluate it: python -m train eval "
        f"{checkpoint or path.with_name('final.pt')} --out {path}",
    )
    return {k: v for k, v in document.items() if k not in ("format", "version")}

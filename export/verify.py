"""Execution parity: a bundle, run by the executor, against the PyTorch model it came from.

Both run the same real CIFAR-10 test images. For every image the comparison asks: did the same
blocks run, with the same number of channels? Did the same classifier answer, with the same
class? Are the MACs the same? How far apart are the logits? In ``iadi`` mode the final classifier
answers; in ``ddi`` mode (models with exits) each budget of Table II is checked as well, against
:meth:`train.evaluate.EvalResult.anytime_decisions`.

The gates run in float32 in both, by different libraries (PyTorch, onnxruntime); their
probabilities differ by about 1e-7, so an image whose gate probability lies that close to the
threshold can take the other branch. The quantized graphs agree exactly where the decisions do;
the float classifier tail (average pool, fully connected layer) sums in a different order, so
logits are compared with :data:`LOGIT_ATOL`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError
from export.executor import BundleExecutor
from export.manifest import Bundle, load_bundle, sha256_file

log = logging.getLogger(__name__)

LOGIT_ATOL = 1e-4
"""Largest accepted |logit difference| on images whose decisions agree (float tail)."""
MIN_AGREEMENT = 0.995
"""Smallest accepted fraction of images with identical decisions and prediction."""


@dataclass
class ModeParity:
    """Agreement between executor and model for one mode (and budget)."""

    mode: str
    budget_macs: float | None
    images: int
    decisions_agree: float
    """Fraction of images whose executed blocks and channel counts are identical."""
    exits_agree: float
    predictions_agree: float
    all_agree: float
    """Fraction of images identical in decisions, exit and prediction."""
    macs_agree: float
    max_logit_diff: float | None
    """Largest |logit difference| over images that agree (final classifier; None in ddi mode)."""
    disagreeing_images: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        logits_ok = self.max_logit_diff is None or self.max_logit_diff <= LOGIT_ATOL
        return self.all_agree >= MIN_AGREEMENT and logits_ok


@dataclass
class ParityReport:
    bundle_id: str
    bundle_sha256: str
    checkpoint: str
    data: str
    images: int
    modes: list[ModeParity]
    logit_atol: float = LOGIT_ATOL
    min_agreement: float = MIN_AGREEMENT

    @property
    def ok(self) -> bool:
        return all(m.ok for m in self.modes)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        for row, mode in zip(out["modes"], self.modes, strict=True):
            row["ok"] = mode.ok
        return out

    def lines(self) -> list[str]:
        rows = [
            f"bundle {self.bundle_id} vs {self.checkpoint} on {self.images} images of {self.data}",
            "mode  budget_MMACs  decisions  exits  predictions  all  MACs  max|dlogit|  ok",
        ]
        for m in self.modes:
            budget = "-" if m.budget_macs is None else f"{m.budget_macs / 1e6:.3f}"
            diff = "-" if m.max_logit_diff is None else f"{m.max_logit_diff:.2e}"
            rows.append(
                f"{m.mode:5s} {budget:>12s} {m.decisions_agree:10.4%} {m.exits_agree:6.2%} "
                f"{m.predictions_agree:11.4%} {m.all_agree:8.4%} {m.macs_agree:6.2%} "
                f"{diff:>10s}  {'yes' if m.ok else 'NO'}"
            )
        return rows


def _checkpoint_for(bundle: Bundle, checkpoint: str | os.PathLike | None) -> Path:
    source = bundle.manifest.source
    path = Path(checkpoint) if checkpoint is not None else Path(source.get("checkpoint_path", ""))
    if checkpoint is None and not path.is_file():
        raise ExportError(
            f"bundle {bundle.bundle_id!r} was exported from {source.get('checkpoint_path')!r}, "
            "which is not here; pass --checkpoint PATH"
        )
    if not path.is_file():
        raise ExportError(f"checkpoint {str(path)!r} does not exist; pass the .pt file exported")
    digest = sha256_file(path)
    if source.get("checkpoint_sha256") and digest != source["checkpoint_sha256"]:
        raise ExportError(
            f"checkpoint {str(path)!r} (sha256 {digest[:12]}...) is not the one bundle "
            f"{bundle.bundle_id!r} was exported from ({source['checkpoint_sha256'][:12]}...)"
        )
    return path


def verify_bundle(
    bundle_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    *,
    images: int = 1000,
    data: str | os.PathLike | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> ParityReport:
    """Run the bundle and its checkpoint's model on the first ``images`` test images."""
    import torch

    # torch: loaded only when this runs
    from train.checkpoint import build_model, load_checkpoint
    from train.data import CifarLoader, load_cifar10
    from train.evaluate import evaluate

    bundle = load_bundle(bundle_dir)  # every file's sha256 checked
    ckpt = _checkpoint_for(bundle, checkpoint)
    model = build_model(load_checkpoint(ckpt)).eval()
    test = load_cifar10("test", data)
    n = min(images, len(test.labels))
    if n < 1:
        raise ExportError(f"--images {images!r} must be >= 1")
    if threads:
        torch.set_num_threads(threads)
    ref = evaluate(
        model, CifarLoader(test, 250, train=False, limit=n), energy=False, progress=progress
    )
    executor = BundleExecutor(bundle, threads=threads)
    uint8 = test.images[:n]
    costs = model.costs()
    out_channels = np.array([b.out_channels for b in bundle.manifest.blocks])
    ref_channels = np.rint(ref.channel_fraction * out_channels).astype(np.int64)  # (N, blocks)

    def compare(mode: str, budget: float | None) -> ModeParity:
        got = executor.run(uint8, mode=mode, budget_macs=budget)
        if budget is None:
            answered = np.full(n, -1)
            preds, spent = ref.predictions, ref.macs
        else:
            answered, spent = ref.anytime_decisions(budget)
            preds = ref.predictions.copy()
            for j in range(ref.exit_predictions.shape[1]):
                preds = np.where(answered == j, ref.exit_predictions[:, j], preds)
        decisions = (got.executed == ref.block_gates).all(1) & (got.channels == ref_channels).all(1)
        if budget is not None:
            # The model ran every block it kept; the executor stops where an image halts. Blocks
            # the executor ran must match; where it halted shows in the MACs.
            same = ref.block_gates & (got.channels == ref_channels)
            decisions = (~got.executed | same).all(1) & (got.macs == np.rint(spent))
        exits = got.exits == answered
        same_pred = got.predictions == preds
        agree = decisions & exits & same_pred
        diff = None
        if budget is None and agree.any():
            diff = float(np.abs(got.logits[agree] - ref.logits[agree]).max())
        return ModeParity(
            mode=mode,
            budget_macs=budget,
            images=n,
            decisions_agree=float(decisions.mean()),
            exits_agree=float(exits.mean()),
            predictions_agree=float(same_pred.mean()),
            all_agree=float(agree.mean()),
            macs_agree=float((got.macs == np.rint(spent).astype(np.int64)).mean()),
            max_logit_diff=diff,
            disagreeing_images=np.flatnonzero(~agree).tolist()[:50],
        )

    modes = [compare("iadi", None)]
    if costs.exit_positions:
        modes += [compare("ddi", b) for b in ref.default_budgets()]
    report = ParityReport(
        bundle_id=bundle.bundle_id,
        bundle_sha256=bundle.sha256,
        checkpoint=ckpt.name,
        data=ref.source,
        images=n,
        modes=modes,
    )
    for line in report.lines():
        log.info(line)
    return report

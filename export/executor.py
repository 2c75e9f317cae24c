"""The bundle executor: runs a bundle per image with real skipping (numpy + onnxruntime).

This is the library the emulated board and the board runtime call. It imports neither torch nor
brevitas (the ZedBoard's ARM runs it) and sequences a bundle's graphs as the trained model does in
evaluation mode (train/model.py, ``DDIResNet._forward_eval``):

1. uint8 images -> the manifest's exact preprocessing table -> ``stem``;
2. for each block, the layer gate G^L (one LSTM step; h and c carried per image) decides whether
   the block runs; for a running block the channel gate G^C picks its output channels and the
   block graph runs with that mask; a skipped block passes its input (downsampling blocks: their
   shortcut projection);
3. ``head`` -> logits; in DDI mode, an image may instead halt at an exit under a MAC budget.

Images travel together: at every block the batch splits into the images that run it and those
that skip it, so each graph runs once per block on just the images that need it, and cost falls
with skipping. Decisions are per image: the batch size changes only float rounding in the gates
and the classifier tail (about 1e-7), never a decision unless a probability is that close to the
threshold.

Modes: ``full`` runs every block at full width and no gate (the plain network); ``iadi`` applies
the gates and answers with the final classifier; ``ddi`` applies the gates and the exits under
``budget_macs`` with the rule of :meth:`train.evaluate.EvalResult.anytime`: before each gate and
each block, an image that already passed an exit halts if doing that work and then running its
latest exit would exceed the budget; at the end it uses the final classifier if the budget allows.
Only an image that has not reached its first exit can overspend (reported as ``over_budget``).

A backend may have ``take(x, rows)``: the executor gathers the rows of a tensor it passes to a
graph with it instead of ``x[rows]`` (the board's FINN backend keeps the rows' integer codes
with them, :class:`fpga.board.runtime.FinnBackend`), and ``assemble(base, shape, parts,
consume=...)`` for a block's output (``consume``: no exit saved ``base``, so the backend may
fill the output into it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.errors import ExecutionError
from export.manifest import Bundle, GraphSpec, Manifest, load_bundle

log = logging.getLogger(__name__)

MODES = ("full", "iadi", "ddi")


class OnnxRuntimeBackend:
    """Runs a bundle's onnxruntime twins; each file is sha256-checked when its session is made.

    Another backend (the FINN accelerators on the board) provides the same ``run`` method and may
    delegate to this one for the graphs it does not accelerate (the gates).
    """

    def __init__(self, bundle: Bundle, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or 0  # 0: onnxruntime's default, every core
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # no warnings about initializers and unused shapes
        self.sessions = {
            name: ort.InferenceSession(
                bundle.read(spec.onnx), opts, providers=["CPUExecutionProvider"]
            )
            for name, spec in bundle.manifest.graphs.items()
        }

    def run(self, graph: GraphSpec, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        feeds = {spec.name: value for spec, value in zip(graph.inputs, inputs, strict=True)}
        return self.sessions[graph.name].run(None, feeds)


@dataclass
class BatchResult:
    """Per-image outcomes of one executor call (first axis = image)."""

    predictions: np.ndarray
    """(N,) int64 class index."""
    logits: np.ndarray
    """(N, classes) float32 logits of the classifier that answered."""
    exits: np.ndarray
    """(N,) int64: index of the exit branch that answered, -1 for the final classifier."""
    executed: np.ndarray
    """(N, blocks) bool: the block ran (a skipped downsampling block still runs its shortcut)."""
    channels: np.ndarray
    """(N, blocks) int64: output channels computed by the block (0 where it did not run)."""
    macs: np.ndarray
    """(N,) int64 MACs executed, gates and the answering classifier included."""
    over_budget: np.ndarray
    """(N,) bool: spent more than the budget (only images that could not reach an exit)."""

    def __len__(self) -> int:
        return len(self.predictions)

    @staticmethod
    def concat(parts: Sequence[BatchResult]) -> BatchResult:
        fields = BatchResult.__dataclass_fields__
        return BatchResult(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in fields})


def assemble_floats(
    base: np.ndarray | None, shape: tuple[int, ...], parts: Sequence[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """A block's output for a batch whose images went different ways: ``base`` (the block
    input, for a block without shortcut: the skipping images' rows; None: zeros) with
    ``rows`` replaced by each part's tensor. A new array: arrays saved for exits stay intact."""
    y = np.zeros(shape, dtype=np.float32) if base is None else np.array(base)
    for rows, tensor in parts:
        y[rows] = tensor
    return y


BATCH_SIZE = 256
"""Images the executor runs through the network together (one call per graph and batch), by
default; the board runtime's ``--executor-batch`` sets it."""


class BundleExecutor:
    """Runs a bundle on uint8 images ``(N, H, W, C)``; see the module docstring."""

    def __init__(
        self,
        bundle: Bundle | str | os.PathLike,
        *,
        backend: OnnxRuntimeBackend | None = None,
        threads: int | None = None,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ExecutionError(f"batch_size {batch_size!r} must be a count of images >= 1")
        self.batch_size = batch_size
        """Images :meth:`run` takes through the network together unless told otherwise."""
        if not isinstance(bundle, Bundle):
            bundle = load_bundle(Path(bundle), verify=False)  # files are checked as they load
        self.bundle = bundle
        self.manifest: Manifest = bundle.manifest
        self.backend = backend or OnnxRuntimeBackend(bundle, threads=threads)
        m = self.manifest
        self._exit_at = {e.after_block: j for j, e in enumerate(m.exits)}
        self._exit_macs = np.array([e.macs for e in m.exits] + [0], dtype=np.int64)

    def _run(self, name: str, *inputs: np.ndarray) -> list[np.ndarray]:
        return self.backend.run(self.manifest.graphs[name], inputs)

    def _check(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        expected = tuple(self.manifest.image_shape)
        h, w, c = expected
        if images.ndim == 3:
            images = images[None]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
            raise ExecutionError(
                f"images of dtype {images.dtype} and shape {images.shape} do not fit bundle "
                f"{self.manifest.bundle_id!r}, which takes uint8 (N, {h}, {w}, {c})"
            )
        return images

    def run(
        self,
        images: np.ndarray,
        mode: str = "iadi",
        budget_macs: float | None = None,
        batch_size: int | None = None,
    ) -> BatchResult:
        """Classify ``images`` in ``mode``; ``budget_macs`` is required in (and only in) ``ddi``;
        ``batch_size`` images at a time (default: :attr:`batch_size`)."""
        batch_size = self.batch_size if batch_size is None else batch_size
        if mode not in MODES:
            raise ExecutionError(f"mode {mode!r} is unknown; choose one of {', '.join(MODES)}")
        if (mode == "ddi") != (budget_macs is not None):
            raise ExecutionError(
                f"mode {mode!r} with budget_macs={budget_macs!r}: a budget is needed in, and only "
                "in, mode 'ddi'"
            )
        if mode == "ddi" and not self.manifest.exits:
            raise ExecutionError(
                f"bundle {self.manifest.bundle_id!r} has no exit branches; mode 'ddi' needs a "
                "model trained with exits (`python -m train ddi`)"
            )
        if batch_size < 1:
            raise ExecutionError(f"batch_size {batch_size!r} must be >= 1")
        images = self._check(images)
        parts = [
            self._run_batch(images[s : s + batch_size], mode, budget_macs)
            for s in range(0, len(images), batch_size)
        ]
        return BatchResult.concat(parts) if parts else self._run_batch(images, mode, budget_macs)

    # -----------------------------------------------------------------------------------------
    def _run_batch(self, images: np.ndarray, mode: str, budget: float | None) -> BatchResult:
        m = self.manifest
        n, nb = len(images), len(m.blocks)
        ddi, gated = mode == "ddi", mode != "full"
        executed = np.zeros((n, nb), dtype=bool)
        channels = np.zeros((n, nb), dtype=np.int64)
        spent = np.full(n, m.stem_macs, dtype=np.int64)
        last_exit = np.full(n, -1, dtype=np.int64)  # latest exit passed; -1: none yet
        halted = np.zeros(n, dtype=bool)
        saved: dict[int, np.ndarray] = {}  # exit index -> feature maps at that exit (N, ...)
        h = np.zeros((n, m.gate_hidden), dtype=np.float32)
        c = np.zeros_like(h)
        if n == 0:
            return self._result(
                np.zeros((0, m.num_classes), np.float32),
                last_exit,
                executed,
                channels,
                spent,
                np.zeros(0, dtype=bool),
            )
        # a backend may take the images as they are (the FINN backend: the stem's codes from
        # the preprocessing table, no floats)
        stem_input = getattr(self.backend, "stem_input", None)
        first = m.preprocess.apply(images) if stem_input is None else stem_input(images)
        (x,) = self._run(m.stem, first)  # (N, C, H, W)

        gather = getattr(self.backend, "take", None)  # a backend may keep rows' codes too
        custom = getattr(self.backend, "assemble", None)  # ... and assemble them

        def assemble(base, shape, parts):
            """The block's output; the backend may fill it into ``base`` itself where no
            exit saved that tensor (it is not read again)."""
            if custom is None:
                return assemble_floats(base, shape, parts)
            owned = base is not None and all(s is not base for s in saved.values())
            return custom(base, shape, parts, consume=owned)

        def take(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
            """``a[rows]`` without the copy when ``rows`` is every image (rows are sorted)."""
            if rows.size == len(a):
                return a
            return a[rows] if gather is None else gather(a, rows)

        def halt_if(rows: np.ndarray, extra: np.ndarray | int) -> np.ndarray:
            """Halt the images in ``rows`` whose ``extra`` work would break the budget."""
            if not ddi or rows.size == 0:
                return rows
            pending = self._exit_macs[last_exit[rows]] if len(m.exits) else 0
            stop = (last_exit[rows] >= 0) & (spent[rows] + extra + pending > budget)
            halted[rows[stop]] = True
            return rows[~stop]

        for i, block in enumerate(m.blocks):
            rows = np.flatnonzero(~halted)
            if rows.size == 0:
                break
            if gated and block.layer_gate:
                rows = halt_if(rows, block.layer_gate_macs)
                if rows.size == 0:
                    break
                prob, h_rows, c_rows = self._run(
                    block.layer_gate, take(x, rows), take(h, rows), take(c, rows)
                )
                h[rows], c[rows] = h_rows, c_rows
                spent[rows] += block.layer_gate_macs
                keep = prob > m.gate_threshold
            else:
                keep = np.ones(rows.size, dtype=bool)
            run, skip = rows[keep], rows[~keep]
            if gated and block.channel_gate and run.size:
                run = halt_if(run, block.channel_gate_macs)
            mask = np.ones((run.size, block.out_channels), dtype=np.float32)
            x_run = take(x, run) if run.size else None  # the rows the gate and the block read
            if gated and block.channel_gate and run.size:
                (prob,) = self._run(block.channel_gate, x_run)
                spent[run] += block.channel_gate_macs
                mask = (prob > m.gate_threshold).astype(np.float32)  # (run, C_out)
            kept = mask.sum(axis=1).astype(np.int64)  # (run,)
            body = block.body_macs(kept)
            if ddi and run.size:
                before = run
                run = halt_if(run, body)
                alive = np.isin(before, run)
                mask, kept, body = mask[alive], kept[alive], body[alive]
                if run.size < before.size:
                    x_run = take(x, run) if run.size else None
            skip = halt_if(skip, block.shortcut_macs)
            out_shape = (n, block.out_channels, block.out_size, block.out_size)
            parts = []  # (rows, their output) of the images that went either way
            if run.size == n:  # every image runs the block: no gather, no scatter
                (y,) = self._run(block.graph, x, mask)
            elif run.size:
                parts.append((run, self._run(block.graph, x_run, mask)[0]))
            if run.size:
                executed[run, i] = True
                channels[run, i] = kept
                spent[run] += body
            if skip.size and block.shortcut is not None:
                parts.append((skip, self._run(block.shortcut, take(x, skip))[0]))
                spent[skip] += block.shortcut_macs
            if run.size < n:  # identity-skipping images keep their rows of x (halted ones too)
                base = x if block.shortcut is None else None
                y = assemble(base, out_shape, parts) if parts or base is None else x
            x = y  # a new tensor whenever a row changed: tensors saved for exits stay intact
            j = self._exit_at.get(i)
            if ddi and j is not None:
                alive = np.flatnonzero(~halted)
                last_exit[alive] = j
                saved[j] = x

        logits = np.zeros((n, m.num_classes), dtype=np.float32)
        final = ~halted
        if ddi:
            final &= spent + m.head_macs <= budget
            final |= last_exit < 0  # no exit reached: only the final classifier can answer
        answered_by = np.where(final, -1, last_exit)
        rows = np.flatnonzero(final)
        if rows.size:
            (logits[rows],) = self._run(m.head, take(x, rows))
            spent[rows] += m.head_macs
        for j, e in enumerate(m.exits):
            rows = np.flatnonzero(answered_by == j)
            if rows.size:
                (logits[rows],) = self._run(e.graph, take(saved[j], rows))
                spent[rows] += e.macs
        over = spent > budget if ddi else np.zeros(n, dtype=bool)
        return self._result(logits, answered_by, executed, channels, spent, over)

    @staticmethod
    def _result(logits, exits, executed, channels, spent, over) -> BatchResult:
        return BatchResult(
            predictions=logits.argmax(axis=1).astype(np.int64),
            logits=logits,
            exits=exits,
            executed=executed,
            channels=channels,
            macs=spent,
            over_budget=over,
        )

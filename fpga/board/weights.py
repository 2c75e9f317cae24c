"""Runtime weights on the board: a block's weights and thresholds into its shared engine.

A shared engine (docs/fpga-architecture.md) serves several blocks of a stage; before a block
runs on it, the ARM writes that block's words into the engine's runtime-writeable memories over
AXI-lite, then streams one flush frame through the engine: FINN's weight streamer has already
fetched words of the old weights into its FIFOs, so the first frame after a write computes with
a mix of both (finn-plus-driver's ``load_runtime_weights(flush_accel=True)`` runs the
accelerator once for the same reason).

finn-plus-driver's ``load_runtime_weights`` is not usable once per block per batch: it parses
hex text files, reads every memory back to verify and starts every DMA of the overlay to flush.
Here the words were laid out and parsed at build time (:mod:`fpga.weights` on the host): per
block one ``<graph>.npz`` of ``uint32`` arrays, one per memory, listed with its sha256 in
``runtime_weights.json``. :class:`WeightLoader` writes each memory with one bulk copy (slice
assignment into the memory's ``MMIO.array``, pynq's numpy view of the mapped AXI-lite range)
and runs one flush frame through that engine only; it skips both when the engine already holds
the block's weights, and reports the words written and the time taken.

Runs on the board: standard library and numpy (>= 1.21). The register windows come from the
overlay (:meth:`fpga.board.finnio.PynqDmaOverlay.axilite`, ``pynq.MMIO``), wired up by
:func:`fpga.board.accel.load_overlay`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import formats
from fpga.board.errors import BoardError

log = logging.getLogger(__name__)

MANIFEST_FILE = "runtime_weights.json"
MANIFEST_FORMAT = "ddi-fpga-runtime-weights"
MANIFEST_VERSION = 2
"""2: ``format`` recorded (version 1 had a version only). The board's reader owns the file's
format; :func:`fpga.architecture.write_block_weights` writes it."""


class WeightsError(BoardError):
    """Runtime weights cannot be read or written (one line naming the file or memory)."""


@dataclass(frozen=True)
class MemorySpec:
    """One runtime-writeable memory of an engine (the same for every block it serves)."""

    node: str
    """FINN node name of the layer (``MVAU_rtl_0``): the key in every block's ``.npz``."""
    op_type: str
    index: int
    """Position among the engine's runtime-writeable layers (FINN's ``s_axilite_<index>``)."""
    words: int


@dataclass(frozen=True)
class BlockWeights:
    """The words one block writes into its engine, one ``uint32`` array per memory."""

    graph: str
    engine: str
    memories: dict[str, np.ndarray]

    @property
    def words(self) -> int:
        return int(sum(w.size for w in self.memories.values()))


class WeightStore:
    """``runtime_weights.json`` and the ``.npz`` files beside it (see the module docstring).

    Files are read and checked (sha256, memory names, word counts) on first use of a block;
    :meth:`preload` reads them all, so that no timed window reads the SD card.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        path = self.folder / MANIFEST_FILE
        try:
            data = formats.read(
                path,
                MANIFEST_FORMAT,
                MANIFEST_VERSION,
                error=WeightsError,
                remedy="rebuild the weights (python -m fpga estimate --design shared) and "
                "deploy them, or update the board runtime",
            )
        except FileNotFoundError:
            raise WeightsError(
                f"{str(path)!r} is missing; build the shared engines' runtime weights "
                "(python -m fpga estimate --design shared) and deploy them"
            ) from None
        self.bundle_id = data.get("bundle_id")
        self.engines = {
            name: [MemorySpec(**m) for m in e["memories"]] for name, e in data["engines"].items()
        }
        self.blocks: dict[str, dict[str, Any]] = dict(data["blocks"])
        for graph, entry in self.blocks.items():
            if entry["engine"] not in self.engines:
                raise WeightsError(
                    f"{str(path)!r}: block {graph!r} names engine {entry['engine']!r}, which the "
                    "file does not describe"
                )
        self._cache: dict[str, BlockWeights] = {}

    def engine_of(self, graph: str) -> str:
        try:
            return self.blocks[graph]["engine"]
        except KeyError:
            raise WeightsError(
                f"block {graph!r} has no runtime weights in {str(self.folder)!r} (it has: "
                f"{sorted(self.blocks)!r})"
            ) from None

    def block(self, graph: str) -> BlockWeights:
        """The words of ``graph``, read and checked once."""
        if graph in self._cache:
            return self._cache[graph]
        engine = self.engine_of(graph)
        entry = self.blocks[graph]
        path = self.folder / entry["file"]
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise WeightsError(f"cannot read {str(path)!r}: {exc}") from None
        digest = hashlib.sha256(raw).hexdigest()
        if digest != entry["sha256"]:
            raise WeightsError(
                f"{str(path)!r} has sha256 {digest[:12]}..., the manifest says "
                f"{entry['sha256'][:12]}...; copy the weights folder again"
            )
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        memories = {}
        for spec in self.engines[engine]:
            words = arrays.get(spec.node)
            if words is None or words.dtype != np.dtype("<u4") or words.shape != (spec.words,):
                got = None if words is None else f"{words.dtype} {words.shape}"
                raise WeightsError(
                    f"{str(path)!r}: memory {spec.node!r} should be {spec.words} uint32 words, "
                    f"found {got}; rebuild the weights"
                )
            memories[spec.node] = np.ascontiguousarray(words, dtype=np.uint32)
        weights = BlockWeights(graph, engine, memories)
        self._cache[graph] = weights
        return weights

    def preload(self) -> int:
        """Read and check every block's words; return how many words they hold."""
        return sum(self.block(g).words for g in self.blocks)


@dataclass(frozen=True)
class LoadReport:
    """One :meth:`WeightLoader.load`: measured with ``time.perf_counter`` on the machine that
    ran it (on a stand-in of the PL this is host time, not the board's)."""

    graph: str
    engine: str
    words: int
    """32-bit words written (0: the engine already held this block's weights)."""
    write_s: float
    flush_s: float


class WeightLoader:
    """Writes blocks' weights into their engines, at most once per block per batch.

    ``memories[engine][node]`` is the memory's register window: an object whose ``array`` is a
    ``uint32`` numpy view of its AXI-lite range (``pynq.MMIO``, or the emulated PL's
    :class:`fpga.emulator.weights.AxiLiteMemory`). ``flush[engine]()`` streams one frame
    through that engine (:func:`flush_frame`). The loader remembers which block each engine
    holds: loading that block again writes nothing. :meth:`invalidate` forgets it (after the
    bitstream is downloaded again, the memories hold the representative's weights).
    """

    def __init__(
        self,
        store: WeightStore,
        memories: Mapping[str, Mapping[str, Any]],
        flush: Mapping[str, Callable[[], Any]],
    ) -> None:
        for engine, specs in store.engines.items():
            have = memories.get(engine, {})
            missing = [s.node for s in specs if s.node not in have]
            if missing or engine not in flush:
                raise WeightsError(
                    f"engine {engine!r}: no register window for memories {missing!r}"
                    if missing
                    else f"engine {engine!r} has no flush frame; pass flush[{engine!r}]"
                )
            for s in specs:
                size = len(have[s.node].array)
                if size < s.words:
                    raise WeightsError(
                        f"engine {engine!r}: memory {s.node!r} maps {size} words, the weights "
                        f"need {s.words}; the bitstream and the weights come from different builds"
                    )
        self.store = store
        self.memories = memories
        self.flush = flush
        self.holds: dict[str, str | None] = dict.fromkeys(store.engines)
        self.words_written = 0
        self.loads = 0

    def invalidate(self) -> None:
        self.holds = dict.fromkeys(self.store.engines)

    def load(self, graph: str) -> LoadReport:
        """Make ``graph``'s engine hold ``graph``'s weights: bulk writes, then one flush frame."""
        weights = self.store.block(graph)
        engine = weights.engine
        if self.holds[engine] == graph:
            return LoadReport(graph, engine, 0, 0.0, 0.0)
        self.holds[engine] = None  # a failed write leaves the engine's contents unknown
        start = time.perf_counter()
        for node, words in weights.memories.items():
            # one bulk copy per memory: numpy's slice assignment into the mapped range; a
            # Python loop of MMIO.write calls costs microseconds per word on a Cortex-A9
            self.memories[engine][node].array[: words.size] = words
        written = time.perf_counter()
        self.flush[engine]()
        done = time.perf_counter()
        self.holds[engine] = graph
        self.words_written += weights.words
        self.loads += 1
        return LoadReport(graph, engine, weights.words, written - start, done - written)


def flush_frame(engine: Any) -> Callable[[], Any]:
    """One frame through ``engine`` (a :class:`fpga.board.accel.DmaEngine`), output dropped.

    The frame is one image of the engine's lowest code (0 for unsigned streams; the mask map of
    a masked block all zeros): its values do not matter, only that it drives the weight
    streamer once through every weight line.
    """
    shape = tuple(int(d) for d in engine.overlay.ishape_normal(engine.input)[1:])
    codes = np.zeros((1, *shape), dtype=np.float32)
    low = _low(engine.overlay.idt(engine.input))
    if low > 0:
        codes += low
    mask = None
    if engine.mask_input is not None:
        mask = np.zeros((1, *engine.mask_shape), dtype=np.float32)

    def run() -> None:
        engine.run_packed(codes, mask_map=mask)

    return run


def _low(datatype: Any) -> int:
    """The smallest value of a FINN datatype (qonnx ``DataType`` or the board's
    ``StreamType``); 0 when it holds 0."""
    low = datatype.min() if callable(getattr(datatype, "min", None)) else datatype.low
    return 0 if low <= 0 else int(low)

"""The emulated PL's shared engines: runtime-writeable memories behind AXI-lite windows.

:class:`RuntimeWeightEngine` is an engine of :class:`fpga.emulator.overlay.EmulatedDmaOverlay`
(a callable from one image's streams to its output) whose MVAU weights and thresholds live in
:class:`AxiLiteMemory` windows, one per runtime-writeable layer, as on the PL: the bitstream
fills them with the representative block's words (FINN's layout, :mod:`fpga.weights`), the
board's :class:`fpga.board.weights.WeightLoader` overwrites them, and every frame computes with
the weights the windows hold, decoded back from the words (not with the build's copy).

A write does not reach the datapath at once on the PL: FINN's weight streamer has words of the
old contents in flight, so the first frame after a write computes with stale weights. The
emulator models that as: the first frame after the windows changed computes with the weights
of before the change and is counted in :attr:`RuntimeWeightEngine.stale_frames`; the next
frames use the new words. A loader that sends its flush frame gets correct outputs from the
first real image on; one that does not gets one wrong image, as the hardware would give.

Host only (FINN executes the engine's HW layers in Python).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np

from fpga.board.finnio import SHAPE_KEYS
from fpga.weights import memory_values, runtime_memories

log = logging.getLogger(__name__)


class AxiLiteMemory:
    """An AXI-lite window of 32-bit words, as ``pynq.MMIO`` maps it: ``array`` is the
    ``uint32`` view the board writes through; ``read``/``write`` take byte offsets."""

    def __init__(self, words: int) -> None:
        size = 1 << max(0, int(words - 1).bit_length())  # the address range: a power of two
        self.array = np.zeros(size, dtype=np.uint32)

    def read(self, offset: int) -> int:
        return int(self.array[offset // 4])

    def write(self, offset: int, value: int) -> None:
        self.array[offset // 4] = np.uint32(value)


class RuntimeWeightEngine:
    """A HW partition (FINN, Python-executable) whose runtime-writeable layers read their
    values from :attr:`memories` (node name -> :class:`AxiLiteMemory`)."""

    def __init__(self, model: Any) -> None:

        self.model = copy.deepcopy(model)
        specs = runtime_memories(self.model)
        if not specs:
            raise ValueError("the engine has no runtime-writeable layer; build it with them")
        self.nodes = {n.name: n for n in self.model.graph.node}
        self.sizes = {m.node: m.words.size for m in specs}
        self.memories = {m.node: AxiLiteMemory(m.words.size) for m in specs}
        for m in specs:  # the bitstream's initial contents: the representative's words
            self.memories[m.node].array[: m.words.size] = m.words
        self._applied = {k: self._words(k).copy() for k in self.memories}
        self._apply()
        self.frames = 0
        self.stale_frames = 0
        self.weight_changes = 0
        names = [t.name for t in self.model.graph.input]
        masks = [n for n in names if self.model.get_tensor_datatype(n).bitwidth() == 1]
        self._order = [n for n in names if n not in masks] + masks
        self._out = self.model.graph.output[0].name

    def _words(self, node: str) -> np.ndarray:
        return self.memories[node].array[: self.sizes[node]]

    def _apply(self) -> None:
        """Decode the windows into the layers' initializers (what the datapath computes with)."""

        for name in self.memories:
            node = self.nodes[name]
            values = memory_values(self.model, node, self._applied[name])
            self.model.set_initializer(node.input[1], values.astype(np.float32))

    def __call__(self, *streams: np.ndarray) -> np.ndarray:
        from qonnx.core.onnx_exec import execute_onnx

        changed = [k for k in self.memories if not np.array_equal(self._words(k), self._applied[k])]
        feeds = {n: s.astype(np.float32) for n, s in zip(self._order, streams, strict=True)}
        # a frame right after a write still computes with the old words (in flight in the
        # weight streamer): the initializers change only after it
        out = execute_onnx(self.model, feeds)[self._out]
        self.frames += 1
        if changed:
            log.debug("frame %d followed a weight write: computed with stale weights", self.frames)
            self.stale_frames += 1
            self.weight_changes += 1
            for k in changed:
                self._applied[k] = self._words(k).copy()
            self._apply()
        return out


def io_shape_dict(model: Any) -> dict[str, Any]:
    """FINN's driver ``io_shape_dict`` for a single-engine overlay of a HW partition (its
    inputs, the codes first, then its output; DMAs ``idma<k>``/``odma0``), as
    ``MakePYNQDriver`` computes it from the first and last layers' normal, folded and packed
    shapes."""
    from qonnx.custom_op.registry import getCustomOp

    out: dict[str, Any] = {k: [] for k in ("idt", "odt", *SHAPE_KEYS, "idma_names", "odma_names")}
    inputs = sorted(  # the codes first, then a masked block's 1-bit mask map
        model.graph.input, key=lambda t: model.get_tensor_datatype(t.name).bitwidth() == 1
    )
    for k, tensor in enumerate(inputs):
        node = model.find_consumer(tensor.name)
        ind = list(node.input).index(tensor.name)
        op = getCustomOp(node)
        folded = list(op.get_folded_input_shape(ind))
        dt = op.get_input_datatype(ind)
        out["idt"].append(f"DataType['{dt.name}']")
        out["ishape_normal"].append(list(op.get_normal_input_shape(ind)))
        out["ishape_folded"].append(folded)
        out["ishape_packed"].append([*folded[:-1], (folded[-1] * dt.bitwidth() + 7) // 8])
        out["idma_names"].append(f"idma{k}")
    node = model.find_producer(model.graph.output[0].name)
    op = getCustomOp(node)
    folded = list(op.get_folded_output_shape())
    dt = op.get_output_datatype()
    out["odt"].append(f"DataType['{dt.name}']")
    out["oshape_normal"].append(list(op.get_normal_output_shape()))
    out["oshape_folded"].append(folded)
    out["oshape_packed"].append([*folded[:-1], (folded[-1] * dt.bitwidth() + 7) // 8])
    out["odma_names"].append("odma0")
    return out

"""Runtime weights of shared engines, built on the host: FINN's AXI-lite memory layout in numpy.

A shared engine (:mod:`fpga.architecture`) is built once from its representative block; every
other block it serves differs only in the values of its weights and thresholds. Those values go
into the engine's runtime-writeable memories over AXI-lite before the block runs. This module
turns each block's FINN graph into the words the ARM writes, one ``uint32`` array per memory, so
the board does no parsing (:mod:`fpga.board.weights` loads them):

- :func:`mvau_words` / :func:`threshold_words`: the words of one MVAU weight memory
  (``mem_mode="internal_decoupled"``) and of one ``Thresholding_rtl`` threshold memory, in the
  layout of FINN's ``make_weight_file(..., "decoupled_runtime", ...)``: a memory line is one
  folded weight word of ``PE * SIMD`` values, padded to a power of two of 32-bit words, least
  significant word first; a threshold channel is ``2**ceil(log2(numSteps))`` words, ``PE``
  channels padded to a power of two per fold. FINN writes text (one hex word a line) that its
  driver parses on the board; the same words are computed here as arrays, vectorized, and a
  host test compares them with FINN's files word for word. :func:`mvau_values` /
  :func:`threshold_values` invert them (the emulated PL reads its memories with them).
- :func:`runtime_memories`: the runtime-writeable memories of a HW partition, in node order
  (the order FINN's stitched IP numbers their ``s_axilite`` interfaces).
- :func:`check_same_structure`: a block may use an engine only if its FINN graph after the
  front end equals the representative's in everything but those values.
- :func:`save_block`: one block's memories as ``<graph>.npz``. The orchestration (per block of
  every shared engine: FINN's front end with ``runtime_writeable_weights`` set before bit-width
  minimization, :func:`fpga.finn.steps.step_runtime_writeable_weights`; the check; a
  ``runtime_weights.json`` manifest with sha256 per file and words per memory) is
  :func:`fpga.architecture.write_block_weights`, which knows the engine plan.

Host only (FINN and qonnx); the board reads the ``.npz`` files with numpy alone.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fpga.finn.errors import GraphError

log = logging.getLogger(__name__)

WEIGHTS_DIR = "runtime_weights"
MVAU_OPS = ("MVAU", "MVAU_rtl", "MVAU_hls")
THRESHOLD_OPS = ("Thresholding", "Thresholding_rtl")
_VOLATILE_ATTRS = ("code_gen_dir", "ipgen_path", "ip_path", "executable_path", "rtlsim")
"""Node attributes that name build folders, not structure (left out of the comparison)."""


@dataclass(frozen=True)
class Memory:
    """One runtime-writeable memory of a HW partition and the words a block writes into it."""

    node: str
    """FINN node name (``MVAU_rtl_0``, ``Thresholding_rtl_1``): the same in every block."""
    op_type: str
    index: int
    """Position among the partition's runtime-writeable nodes (``s_axilite_<index>``)."""
    words: np.ndarray
    """``uint32``, in AXI-lite address order (word ``i`` at byte offset ``4 * i``)."""


def line_words(bits: int) -> int:
    """32-bit words per memory line of ``bits`` bits (FINN pads to a power of two)."""
    return max(1, 2 ** math.ceil(math.log2(bits / 32)))


def _unsigned(values: np.ndarray, bits: int, bipolar: bool) -> np.ndarray:
    v = np.asarray(values)
    if not np.array_equal(v, np.round(v)):
        raise GraphError("runtime weights are not integers; build the graph with FINN first")
    ints = v.astype(np.int64)
    if bipolar:  # FINN stores {-1, +1} as {0, 1}
        ints = (ints + 1) // 2
    return (ints & ((1 << bits) - 1)).astype(np.uint64)


def _signed(u: np.ndarray, bits: int, signed: bool, bipolar: bool) -> np.ndarray:
    u = u.astype(np.int64)
    if bipolar:
        return (2 * u - 1).astype(np.float32)
    if signed:
        u = np.where(u >= (1 << (bits - 1)), u - (1 << bits), u)
    return u.astype(np.float32)


def mvau_words(
    weights: np.ndarray, bits: int, pe: int, simd: int, *, bipolar: bool = False
) -> np.ndarray:
    """Words of an MVAU's weight memory for ``weights`` (MW, MH) of ``bits``-bit integers.

    FINN's layout (``MVAU.make_weight_file``, ``decoupled_runtime``, TH = 1): output row ``r``
    goes to PE ``r % PE``; memory line ``(r // PE) * (MW // SIMD) + c // SIMD`` holds input
    column ``c`` of every PE; inside the line, value ``pe * SIMD + c % SIMD`` sits at bit
    ``bits * (pe * SIMD + c % SIMD)`` (value 0 least significant), zero-padded to
    :func:`line_words` words, least significant word first.
    """
    mw, mh = weights.shape
    if mh % pe or mw % simd:
        raise GraphError(f"weights {weights.shape!r} do not fold by PE={pe}, SIMD={simd}")
    u = _unsigned(weights, bits, bipolar)
    lines = u.T.reshape(mh // pe, pe, mw // simd, simd).transpose(0, 2, 1, 3)
    lines = lines.reshape(-1, pe * simd)  # (WMEM, PE * SIMD), value 0 first
    per_line = line_words(pe * simd * bits)
    # every value's bits, least significant first, then one packbits per line: FINN packs
    # any width from 1 to 32 bits, so a shift-and-or per width would need many cases
    b = (lines[..., None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)
    flat = np.zeros((len(lines), per_line * 32), dtype=np.uint8)
    flat[:, : pe * simd * bits] = b.reshape(len(lines), -1)
    packed = np.packbits(flat, axis=-1, bitorder="little")  # (WMEM, 4 * per_line) bytes
    return packed.view("<u4").reshape(-1).astype(np.uint32)


def mvau_values(
    words: np.ndarray,
    shape: tuple[int, int],
    bits: int,
    pe: int,
    simd: int,
    *,
    signed: bool,
    bipolar: bool = False,
) -> np.ndarray:
    """The weights (MW, MH), float32 integers, that :func:`mvau_words` laid out as ``words``."""
    mw, mh = shape
    per_line = line_words(pe * simd * bits)
    wmem = (mw // simd) * (mh // pe)
    words = np.asarray(words, dtype="<u4")
    if words.shape != (wmem * per_line,):
        raise GraphError(
            f"an MVAU memory of {wmem} lines x {per_line} words takes {wmem * per_line} words, "
            f"got {words.shape!r}"
        )
    b = np.unpackbits(words.reshape(wmem, per_line).view(np.uint8), axis=-1, bitorder="little")
    b = b[:, : pe * simd * bits].reshape(wmem, pe * simd, bits).astype(np.uint64)
    u = (b << np.arange(bits, dtype=np.uint64)).sum(axis=-1)
    u = u.reshape(mh // pe, mw // simd, pe, simd).transpose(0, 2, 1, 3).reshape(mh, mw)
    return _signed(u.T, bits, signed, bipolar)


def _threshold_layout(channels: int, steps: int, pe: int) -> tuple[int, int, int]:
    if channels % pe:
        raise GraphError(f"{channels} threshold channels do not fold by PE={pe}")
    slots = 1 << max(0, math.ceil(math.log2(steps)))
    return channels // pe, 1 << (pe - 1).bit_length(), slots


def threshold_words(thresholds: np.ndarray, bits: int, pe: int) -> np.ndarray:
    """Words of a ``Thresholding_rtl`` memory for ``thresholds`` (C or 1, numSteps).

    FINN's layout (``Thresholding_rtl.make_weight_file``, ``decoupled_runtime``): one 32-bit
    word per threshold (its ``bits``-bit two's complement pattern, zero-extended),
    ``2**ceil(log2(numSteps))`` words per channel; per fold of ``PE`` channels,
    ``2**ceil(log2(PE))`` channel slots, the unused ones zero. One row of thresholds for all
    channels is broadcast to ``PE`` channels, as FINN does.
    """
    if bits > 32:
        raise GraphError(
            f"thresholds of {bits} bits take two AXI-lite words each, which FINN's runtime "
            "weight files do not describe; narrow the accumulator (fewer input bits)"
        )
    t = np.asarray(thresholds)
    if t.shape[0] == 1:
        t = np.broadcast_to(t, (pe, t.shape[1]))
    channels, steps = t.shape
    folds, slots_pe, slots = _threshold_layout(channels, steps, pe)
    out = np.zeros((folds, slots_pe, slots), dtype=np.uint32)
    u = _unsigned(t, bits, False).astype(np.uint32)
    out[:, :pe, :steps] = u.reshape(folds, pe, steps)
    return out.reshape(-1)


def threshold_values(
    words: np.ndarray, shape: tuple[int, int], bits: int, pe: int, *, signed: bool
) -> np.ndarray:
    """The thresholds of ``shape`` that :func:`threshold_words` laid out as ``words``."""
    rows, steps = shape
    channels = pe if rows == 1 else rows
    folds, slots_pe, slots = _threshold_layout(channels, steps, pe)
    words = np.asarray(words, dtype=np.uint32)
    if words.shape != (folds * slots_pe * slots,):
        raise GraphError(
            f"a threshold memory of {channels} channels x {slots} slots takes "
            f"{folds * slots_pe * slots} words, got {words.shape!r}"
        )
    u = words.reshape(folds, slots_pe, slots)[:, :pe, :steps].reshape(channels, steps)
    u = u.astype(np.uint64) & np.uint64((1 << bits) - 1)
    values = _signed(u, bits, signed, False)
    return values[:1] if rows == 1 else values


def _is_runtime(node: Any) -> bool:
    from qonnx.custom_op.registry import getCustomOp

    return node.op_type in MVAU_OPS + THRESHOLD_OPS and bool(
        getCustomOp(node).get_nodeattr("runtime_writeable_weights")
    )


def memory_words(model: Any, node: Any, values: np.ndarray | None = None) -> np.ndarray:
    """The words of ``node``'s memory (its initializer, or ``values`` of the same shape)."""
    from qonnx.core.datatype import DataType
    from qonnx.custom_op.registry import getCustomOp

    op = getCustomOp(node)
    v = model.get_initializer(node.input[1]) if values is None else values
    dt = op.get_input_datatype(1)
    if node.op_type in MVAU_OPS:
        if op.get_nodeattr("mem_mode") != "internal_decoupled":
            raise GraphError(
                f"{node.name}: runtime weights need mem_mode 'internal_decoupled', not "
                f"{op.get_nodeattr('mem_mode')!r}"
            )
        if op.get_nodeattr("TH") != 1:
            raise GraphError(f"{node.name}: tiled MVAUs (TH > 1) are not supported here")
        return mvau_words(
            v,
            dt.bitwidth(),
            op.get_nodeattr("PE"),
            op.get_nodeattr("SIMD"),
            bipolar=dt == DataType["BIPOLAR"],
        )
    return threshold_words(v, dt.bitwidth(), op.get_nodeattr("PE"))


def memory_values(model: Any, node: Any, words: np.ndarray) -> np.ndarray:
    """The inverse of :func:`memory_words`: ``node``'s initializer as ``words`` encode it."""
    from qonnx.core.datatype import DataType
    from qonnx.custom_op.registry import getCustomOp

    op = getCustomOp(node)
    shape = tuple(model.get_initializer(node.input[1]).shape)
    dt = op.get_input_datatype(1)
    if node.op_type in MVAU_OPS:
        return mvau_values(
            words,
            shape,
            dt.bitwidth(),
            op.get_nodeattr("PE"),
            op.get_nodeattr("SIMD"),
            signed=dt.signed(),
            bipolar=dt == DataType["BIPOLAR"],
        )
    return threshold_values(words, shape, dt.bitwidth(), op.get_nodeattr("PE"), signed=dt.signed())


def runtime_memories(hw: Any) -> list[Memory]:
    """The runtime-writeable memories of a HW partition, in node order, with their words."""
    nodes = [n for n in hw.graph.node if _is_runtime(n)]
    return [Memory(n.name, n.op_type, i, memory_words(hw, n)) for i, n in enumerate(nodes)]


def _structure(hw: Any) -> list[tuple]:
    """What an engine is made of: per node its type, name, attributes, tensor shapes and
    datatypes (every value but the runtime weights' and thresholds')."""
    from onnx import helper

    rows = []
    for node in hw.graph.node:
        attrs = tuple(
            (a.name, repr(helper.get_attribute_value(a)))
            for a in sorted(node.attribute, key=lambda a: a.name)
            if not a.name.startswith(_VOLATILE_ATTRS)
        )
        tensors = tuple(
            (tuple(hw.get_tensor_shape(t) or ()), hw.get_tensor_datatype(t).name)
            for t in [*node.input, *node.output]
        )
        constants = tuple(
            None if _is_runtime(node) and i == 1 else _digest(hw.get_initializer(t))
            for i, t in enumerate(node.input)
        )
        rows.append((node.op_type, node.name, attrs, tensors, constants))
    return rows


def _digest(value: np.ndarray | None) -> str | None:
    return None if value is None else hashlib.sha256(np.ascontiguousarray(value)).hexdigest()


def check_same_structure(representative: Any, block: Any, name: str = "block") -> None:
    """Raise :class:`GraphError` unless ``block``'s HW partition equals the representative's
    in op types, names, attributes (folding, datatypes), tensor shapes and datatypes, and in
    every constant that is not a runtime-writeable memory."""
    a, b = _structure(representative), _structure(block)
    if len(a) != len(b):
        raise GraphError(
            f"{name} has {len(b)} HW layers, its engine's representative {len(a)}; it cannot "
            "share that engine (plan engines by graph shape)"
        )
    fields = ("op type", "name", "attributes", "tensor shapes/datatypes", "fixed constants")
    for ra, rb in zip(a, b, strict=True):
        for what, x, y in zip(fields, ra, rb, strict=True):
            if x != y:
                detail = ""
                if what == "attributes":
                    diff = sorted(set(x) ^ set(y))
                    detail = f": {diff[:4]!r}"
                raise GraphError(
                    f"{name}'s layer {rb[1]!r} differs from the engine's representative in its "
                    f"{what}{detail}; it cannot share that engine"
                )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_block(folder: Path, graph: str, memories: list[Memory]) -> dict[str, Any]:
    """Write ``<graph>.npz`` (one uint32 array per memory, keyed by node name); return its
    manifest entry."""
    path = folder / f"{graph}.npz"
    np.savez(path, **{m.node: m.words.astype("<u4") for m in memories})
    return {
        "file": path.name,
        "sha256": _sha256(path),
        "words": int(sum(m.words.size for m in memories)),
    }

"""A bundle graph as a numpy program: what the board's ARM runs instead of onnxruntime.

PyPI has no armv7l build of onnxruntime or onnx, and a PYNQ image for the ZedBoard has numpy
from apt, so every graph the ARM runs (the gates, the CPU backend's blocks, the float tails) must
execute with numpy alone. At export, :mod:`export.lower` turns each onnxruntime twin into a
*program*: a short list of the operators below, in graph order, with its constants, saved as one
``.npz`` file (``graph.npz``: the program's JSON under ``__program__``, every constant under its
own key; no pickles). Lowering folds what is constant, folds each ``BatchNormalization`` into a
per-channel affine of the ``Conv`` before it, and fuses each ``QuantizeLinear -> Clip ->
DequantizeLinear`` chain into one ``quant`` operator that keeps the quantizer's scale, zero point
and integer range (bit width and sign). Weights stay integer codes with their per-channel scale.

The operators reproduce the ONNX (QCDQ) semantics of the twin in float32: ``quant`` rounds half
to even and saturates as ``QuantizeLinear`` does, ``conv`` is a float32 correlation of the
dequantized weights. Only the order of float additions differs from onnxruntime, so outputs agree
to float32 rounding (docs/bundle.md states the measured difference); a quantizer can move one
code where a value lies within that rounding of a rounding boundary.

Runs on the board: standard library and numpy only (Python 3.10, numpy >= 1.21).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import formats
from export.errors import BundleError, ExecutionError

log = logging.getLogger(__name__)

PROGRAM_KEY = "__program__"
PROGRAM_FORMAT = "ddi-fpga numpy program"
PROGRAM_VERSION = 1
CONV_CHUNK_ELEMENTS = 4 << 20
"""Largest im2col matrix (float32 elements, 16 MB) one ``conv`` builds: bounds the memory of a
batch on the ZedBoard's 512 MB."""


# ---------------------------------------------------------------------------------------------
# The operators: fn(inputs, attributes, constants) -> outputs


def _conv(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Float32 2-D correlation, NCHW x OIHW -> NCHW, by im2col and one matmul per chunk.

    The windows are gathered channels-last (each window row is contiguous memory), which is
    about twice as fast as gathering NCHW windows.
    """
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xh = np.zeros((n, h + 2 * pad, wd + 2 * pad, c), dtype=np.float32)  # (N, H+2p, W+2p, C)
    xh[:, pad : pad + h, pad : pad + wd, :] = x.transpose(0, 2, 3, 1)
    ho = (h + 2 * pad - kh) // stride + 1
    wo = (wd + 2 * pad - kw) // stride + 1
    wmat = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(kh * kw * c, o))  # (K, O)
    out = np.empty((n, o, ho, wo), dtype=np.float32)
    step = max(1, CONV_CHUNK_ELEMENTS // max(ho * wo * kh * kw * c, 1))
    sn, sh, sw, sc = xh.strides
    for s in range(0, n, step):
        xs = xh[s : s + step]
        m = len(xs)
        win = np.lib.stride_tricks.as_strided(  # (m, Ho, Wo, kh, kw, C): every window
            xs, (m, ho, wo, kh, kw, c), (sn, sh * stride, sw * stride, sh, sw, sc), writeable=False
        )
        y = win.reshape(m * ho * wo, kh * kw * c) @ wmat  # (m*Ho*Wo, O)
        out[s : s + m] = y.reshape(m, ho, wo, o).transpose(0, 3, 1, 2)
    return out


def op_conv(ins: Sequence[np.ndarray], a: dict[str, Any], k: dict[str, np.ndarray]) -> list:
    (x,) = ins
    w = k[a["weight"]]
    if a.get("weight_scale"):  # integer codes (O, C, kh, kw) and their per-channel scale
        scale = k[a["weight_scale"]].astype(np.float32).reshape(-1, 1, 1, 1)
        zero = k[a["weight_zero_point"]].astype(np.float32).reshape(-1, 1, 1, 1)
        w = (w.astype(np.float32) - zero) * scale
    y = _conv(np.asarray(x, dtype=np.float32), w.astype(np.float32), a["stride"], a["pad"])
    if a.get("bias"):
        y += k[a["bias"]].reshape(1, -1, 1, 1)
    if a.get("bn_scale"):  # BatchNormalization folded: y * gamma/sqrt(var+eps) + (beta - ...)
        y *= k[a["bn_scale"]].reshape(1, -1, 1, 1)
        y += k[a["bn_bias"]].reshape(1, -1, 1, 1)
    return [y]


def quantize(x: np.ndarray, scale: Any, zero_point: Any, low: int, high: int) -> np.ndarray:
    """``QuantizeLinear`` then ``Clip``: float -> integer codes (float32 holding integers).

    ONNX divides by the scale, rounds half to even (``np.rint``) and saturates; the clip to
    [low, high] is the quantizer's bit width (inside the 8-bit container).
    """
    q = np.divide(np.asarray(x, dtype=np.float32), scale, dtype=np.float32)
    np.rint(q, out=q)
    if np.any(zero_point):
        q += zero_point
    return np.clip(q, low, high, out=q)


def op_quant(ins: Sequence[np.ndarray], a: dict[str, Any], k: dict[str, np.ndarray]) -> list:
    (x,) = ins
    scale = _param(a["scale"], k, a.get("axis"), x.ndim)
    zero = _param(a["zero_point"], k, a.get("axis"), x.ndim)
    q = quantize(x, scale, zero, a["low"], a["high"])
    if np.any(zero):
        q -= zero
    q *= scale
    return [q]


def _param(value: Any, k: dict[str, np.ndarray], axis: int | None, ndim: int) -> np.ndarray:
    v = k[value].astype(np.float32) if isinstance(value, str) else np.float32(value)
    if isinstance(value, str) and v.ndim == 1 and axis is not None:
        shape = [1] * ndim
        shape[axis] = -1
        v = v.reshape(shape)
    return v


def op_gemm(ins: Sequence[np.ndarray], a: dict[str, Any], k: dict[str, np.ndarray]) -> list:
    x = np.asarray(ins[0], dtype=np.float32)
    b = k[a["weight"]]
    if a.get("trans_a"):
        x = x.T
    y = x @ (b.T if a.get("trans_b") else b)
    if a.get("alpha", 1.0) != 1.0:
        y = y * np.float32(a["alpha"])
    if a.get("bias"):
        y = y + np.float32(a.get("beta", 1.0)) * k[a["bias"]]
    return [y.astype(np.float32, copy=False)]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # 1/(1+exp(-x)) overflows exp for x < -88 in float32; both halves stay finite this way.
    # In place where it can be, and 1 + e once: the same float32 operations as
    # where(x >= 0, 1 / (1 + e), e / (1 + e)), so the same values, in fewer numpy calls (the
    # LSTM step's four sigmoids on (N, 10) arrays cost mostly per call on the ARM).
    x = np.asarray(x, dtype=np.float32)
    e = np.abs(x)
    np.negative(e, out=e)
    np.exp(e, out=e)
    d = e + np.float32(1)
    r = np.divide(np.float32(1), d)
    np.divide(e, d, out=e)
    return np.where(x >= 0, r, e)


def _operand(v: Any, k: dict[str, np.ndarray]) -> Any:
    return k[v] if isinstance(v, str) else v


def _binary(fn: Callable[[Any, Any], np.ndarray]):
    def op(ins: Sequence[np.ndarray], a: dict[str, Any], k: dict[str, np.ndarray]) -> list:
        operands = list(ins)
        if "const" in a:  # one constant operand, before or after the tensor
            c = _operand(a["const"], k)
            operands = [c, operands[0]] if a.get("const_first") else [operands[0], c]
        return [np.asarray(fn(*operands))]

    return op


def op_maxpool(ins: Sequence[np.ndarray], a: dict[str, Any], k: dict[str, np.ndarray]) -> list:
    (x,) = ins
    kh, kw = a["kernel"]
    st = a["stride"]
    n, c, h, w = x.shape
    ho, wo = (h - kh) // st + 1, (w - kw) // st + 1
    x = np.ascontiguousarray(x, dtype=np.float32)
    sn, sc, sh, sw = x.strides
    win = np.lib.stride_tricks.as_strided(  # (N, C, Ho, Wo, kh, kw)
        x, (n, c, ho, wo, kh, kw), (sn, sc, sh * st, sw * st, sh, sw), writeable=False
    )
    return [win.max(axis=(4, 5))]


def op_split(ins: Sequence[np.ndarray], a: dict[str, Any], k: dict[str, np.ndarray]) -> list:
    (x,) = ins
    # views by slicing, as np.split makes them, without its per-call overhead
    axis, start, parts = a["axis"] % x.ndim, 0, []
    for size in a["split"]:
        index = [slice(None)] * x.ndim
        index[axis] = slice(start, start + int(size))
        parts.append(x[tuple(index)])
        start += int(size)
    return parts


def op_where(ins: Sequence[np.ndarray], a: dict[str, Any], k: dict[str, np.ndarray]) -> list:
    cond, x, y = ins
    return [np.where(cond, x, y).astype(np.float32)]


OPS: dict[str, Callable[..., list]] = {
    "conv": op_conv,
    "quant": op_quant,
    "gemm": op_gemm,
    "relu": lambda ins, a, k: [np.maximum(ins[0], np.float32(0), dtype=np.float32)],
    "sigmoid": lambda ins, a, k: [_sigmoid(ins[0])],
    "tanh": lambda ins, a, k: [np.tanh(ins[0]).astype(np.float32)],
    "gap": lambda ins, a, k: [ins[0].mean(axis=(2, 3), keepdims=True, dtype=np.float32)],
    "flatten": lambda ins, a, k: [ins[0].reshape(ins[0].shape[0], -1)],
    "add": _binary(np.add),
    "sub": _binary(np.subtract),
    "mul": _binary(np.multiply),
    "div": _binary(np.divide),
    "greater": _binary(np.greater),
    "where": op_where,
    "split": op_split,
    "maxpool": op_maxpool,
    "squeeze": lambda ins, a, k: [np.squeeze(ins[0], axis=tuple(a["axes"]))],
    "unsqueeze": lambda ins, a, k: [np.expand_dims(ins[0], tuple(a["axes"]))],
    "clip": lambda ins, a, k: [np.clip(ins[0], a["low"], a["high"]).astype(ins[0].dtype)],
}
"""Every operator a program may hold (docs/bundle.md lists their attributes)."""


# ---------------------------------------------------------------------------------------------
# A program


class Program:
    """A lowered graph: ``run(inputs) -> outputs`` in numpy.

    ``nodes`` are ``{"op", "inputs", "outputs", "attrs"}`` in execution order; tensor names not
    produced by a node are the program's ``inputs``; ``constants`` hold every array an attribute
    names.
    """

    def __init__(
        self,
        name: str,
        inputs: Sequence[str],
        outputs: Sequence[str],
        nodes: Sequence[dict[str, Any]],
        constants: dict[str, np.ndarray],
    ) -> None:
        self.name = name
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.nodes = [dict(n) for n in nodes]
        self.constants = dict(constants)
        for node in self.nodes:
            if node["op"] not in OPS:
                raise BundleError(
                    f"program {name!r} uses operator {node['op']!r}, which this runtime lacks "
                    f"(it has {', '.join(sorted(OPS))}); update ddi-fpga on the board"
                )

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(inputs) != len(self.inputs):
            raise ExecutionError(
                f"program {self.name!r} takes {len(self.inputs)} inputs "
                f"({', '.join(self.inputs)}), got {len(inputs)}"
            )
        values: dict[str, np.ndarray] = dict(zip(self.inputs, inputs, strict=True))
        for node in self.nodes:
            args = [values[t] for t in node["inputs"]]
            results = OPS[node["op"]](args, node["attrs"], self.constants)
            values.update(zip(node["outputs"], results, strict=True))
        return [np.ascontiguousarray(values[t]) for t in self.outputs]

    def starting_at(self, given: Sequence[str]) -> Program:
        """The part of this program that computes its outputs from the tensors ``given``.

        ``given`` names tensors of the program (an inner tensor, such as the embedding a layer
        gate's FINN engine computes, and inputs); the new program takes them in that order and
        runs only the nodes its outputs need below them. Raises :class:`ExecutionError` when
        the outputs need a tensor that ``given`` does not cut off (e.g. another input).
        """
        given = list(given)
        producer = {t: k for k, node in enumerate(self.nodes) for t in node["outputs"]}
        known = set(self.inputs) | set(producer)
        unknown = [t for t in given if t not in known]
        if unknown:
            raise ExecutionError(f"program {self.name!r} has no tensor(s) {unknown!r}")
        needed: set[int] = set()
        stack = [t for t in self.outputs if t not in given]
        seen = set(stack)
        while stack:
            tensor = stack.pop()
            if tensor not in producer:
                raise ExecutionError(
                    f"program {self.name!r}: its outputs need input {tensor!r} above "
                    f"{given!r}; pass it too"
                )
            k = producer[tensor]
            needed.add(k)
            for t in self.nodes[k]["inputs"]:
                if t not in given and t not in seen:
                    seen.add(t)
                    stack.append(t)
        nodes = [node for k, node in enumerate(self.nodes) if k in needed]
        return Program(f"{self.name}@{given[0]}", given, self.outputs, nodes, self.constants)

    # -- the .npz file ---------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        doc = {
            "format": PROGRAM_FORMAT,
            "version": PROGRAM_VERSION,
            "name": self.name,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "nodes": self.nodes,
        }
        text = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **{PROGRAM_KEY: text}, **self.constants)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, origin: str = "<memory>") -> Program:
        remedy = "re-export the bundle: python -m export CKPT --out DIR"
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {key: z[key] for key in z.files}
            doc = json.loads(arrays.pop(PROGRAM_KEY).tobytes().decode())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BundleError(
                f"numpy program {origin!r} cannot be read ({type(exc).__name__}: {exc}); {remedy}"
            ) from None
        formats.check(
            doc,
            PROGRAM_FORMAT,
            PROGRAM_VERSION,
            source=f"numpy program {origin!r}",
            error=BundleError,
            remedy=remedy,
        )
        try:
            return cls(doc["name"], doc["inputs"], doc["outputs"], doc["nodes"], arrays)
        except (KeyError, TypeError) as exc:
            raise BundleError(
                f"numpy program {origin!r} cannot be read ({type(exc).__name__}: {exc}); {remedy}"
            ) from None


class NumpyBackend:
    """Runs a bundle's numpy programs (the board's CPU backend; no onnxruntime).

    Same ``run(graph, inputs)`` as :class:`export.executor.OnnxRuntimeBackend`; each program's
    file is sha256-checked when it is loaded.
    """

    def __init__(self, bundle: Any) -> None:
        self._parts: dict[tuple[str, tuple[str, ...]], Program] = {}
        self.programs: dict[str, Program] = {}
        for name, spec in bundle.manifest.graphs.items():
            self.programs[name] = Program.from_bytes(bundle.read(spec.numpy), spec.numpy.file)

    def run(self, graph: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.programs[graph.name].run(inputs)

    def run_from(
        self, graph: Any, given: Sequence[str], inputs: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        """The rest of ``graph``'s program from the tensors ``given`` (their values ``inputs``):
        the work below a part of the graph that ran elsewhere (a layer gate's LSTM step after
        its FINN engine's embedding). Sub-programs are made once per graph and ``given``."""
        key = (graph.name, tuple(given))
        program = self._parts.get(key)
        if program is None:
            program = self._parts[key] = self.programs[graph.name].starting_at(given)
        return program.run(inputs)

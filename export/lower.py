"""ONNX twin -> numpy program (:mod:`export.program`): the lowering done once, at export.

Runs on the host (it reads ONNX with the ``onnx`` package). The lowering

1. folds every node whose inputs are all constant (weight ``Clip``, ``Constant``), except the
   ``DequantizeLinear`` of a convolution's weights: those stay integer codes with their
   per-channel scale and zero point;
2. fuses ``QuantizeLinear [-> Clip] -> DequantizeLinear`` into ``quant`` (scale, zero point, the
   integer range: the bit width);
3. folds ``BatchNormalization`` after a ``Conv`` into that conv's per-channel ``bn_scale`` and
   ``bn_bias``, computed in float32 as ``gamma / sqrt(var + eps)`` and
   ``beta - mean * bn_scale``;
4. maps the remaining nodes one to one onto :data:`export.program.OPS`.

Anything else raises :class:`~export.errors.ExportError` naming the node.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from export.errors import ExportError
from export.program import OPS, Program

_SIMPLE = {
    "Relu": "relu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "GlobalAveragePool": "gap",
}
_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Greater": "greater"}


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class _Lowering:
    def __init__(self, model: onnx.ModelProto, name: str) -> None:
        self.name = name
        self.graph = model.graph
        self.consts: dict[str, np.ndarray] = {
            i.name: numpy_helper.to_array(i) for i in self.graph.initializer
        }
        self.users: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for t in node.input:
                self.users.setdefault(t, []).append(node)
        self.weight_codes: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.saved: dict[str, np.ndarray] = {}  # constants the program keeps, by key
        self.nodes: list[dict[str, Any]] = []
        self.done: set[int] = set()

    def fail(self, node: onnx.NodeProto, why: str) -> ExportError:
        return ExportError(
            f"graph {self.name!r}: node {node.name or node.op_type!r} ({node.op_type}) {why}; "
            "the numpy lowering (export/lower.py) cannot express it"
        )

    def keep(self, value: np.ndarray) -> str:
        key = f"k{len(self.saved)}"
        self.saved[key] = np.ascontiguousarray(value)
        return key

    def only_user(self, tensor: str, op: str) -> onnx.NodeProto | None:
        users = self.users.get(tensor, [])
        outputs = {o.name for o in self.graph.output}
        if len(users) == 1 and users[0].op_type == op and tensor not in outputs:
            return users[0]
        return None

    def emit(self, op: str, node_inputs: list[str], outputs: list[str], **attrs: Any) -> None:
        assert op in OPS, op
        self.nodes.append({"op": op, "inputs": node_inputs, "outputs": outputs, "attrs": attrs})

    # -- constant folding ------------------------------------------------------------------
    def fold(self, node: onnx.NodeProto) -> bool:
        ins = [t for t in node.input if t]
        if node.op_type == "Constant":
            self.consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
            return True
        if not all(t in self.consts for t in ins):
            return False
        a, v = _attrs(node), [self.consts[t] for t in ins]
        if node.op_type == "Clip":
            lo = v[1] if len(v) > 1 else None
            hi = v[2] if len(v) > 2 else None
            self.consts[node.output[0]] = np.clip(v[0], lo, hi).astype(v[0].dtype)
        elif node.op_type == "DequantizeLinear":
            codes, scale = v[0], v[1].astype(np.float32)
            zero = v[2] if len(v) > 2 else np.zeros_like(scale, dtype=codes.dtype)
            self.weight_codes[node.output[0]] = (codes, scale, zero)
            axis = a.get("axis", 1)
            shape = [1] * codes.ndim
            if scale.ndim == 1:
                shape[axis] = -1
            deq = (codes.astype(np.float32) - zero.astype(np.float32).reshape(shape)) * (
                scale.reshape(shape)
            )
            self.consts[node.output[0]] = deq.astype(np.float32)
        else:
            raise self.fail(node, "has only constant inputs but is not Constant, Clip or DQ")
        return True

    # -- the graph -------------------------------------------------------------------------
    def run(self) -> Program:
        nodes = list(self.graph.node)
        index = {id(n): i for i, n in enumerate(nodes)}
        for i, node in enumerate(nodes):
            if i in self.done or self.fold(node):
                continue
            op = node.op_type
            a = _attrs(node)
            if op == "QuantizeLinear":
                self.quant(node, index)
            elif op == "Conv":
                self.conv(node, index, a)
            elif op in _SIMPLE:
                self.emit(_SIMPLE[op], [node.input[0]], [node.output[0]])
            elif op == "Flatten":
                if a.get("axis", 1) != 1:
                    raise self.fail(node, f"has axis {a.get('axis')!r}, not 1")
                self.emit("flatten", [node.input[0]], [node.output[0]])
            elif op == "Gemm":
                self.gemm(node, a)
            elif op in _BINARY:
                self.binary(node, _BINARY[op])
            elif op == "MaxPool":
                kernel, strides = list(a["kernel_shape"]), list(a.get("strides", [1, 1]))
                if any(a.get("pads", [0])) or len(set(strides)) != 1 or a.get("ceil_mode", 0):
                    raise self.fail(node, "pads, rounds up or has unequal strides")
                if any(d != 1 for d in a.get("dilations", [1, 1])) or len(node.output) > 1:
                    raise self.fail(node, "is dilated or returns indices")
                self.emit(
                    "maxpool", [node.input[0]], [node.output[0]], kernel=kernel, stride=strides[0]
                )
            elif op == "Where":
                self.emit("where", list(node.input), [node.output[0]])
            elif op == "Split":
                split = self.consts.get(node.input[1]) if len(node.input) > 1 else None
                if split is None:
                    raise self.fail(node, "has no constant split sizes")
                self.emit(
                    "split",
                    [node.input[0]],
                    list(node.output),
                    axis=int(a.get("axis", 0)),
                    split=[int(s) for s in split],
                )
            elif op in ("Squeeze", "Unsqueeze"):
                axes = self.consts.get(node.input[1]) if len(node.input) > 1 else None
                if axes is None:
                    raise self.fail(node, "has no constant axes")
                self.emit(op.lower(), [node.input[0]], [node.output[0]], axes=axes.tolist())
            else:
                raise self.fail(node, "is not a supported operator")
        return Program(
            self.name,
            [i.name for i in self.graph.input],
            [o.name for o in self.graph.output],
            self.nodes,
            self.saved,
        )

    def quant(self, q: onnx.NodeProto, index: dict[int, int]) -> None:
        scale = self.consts.get(q.input[1])
        zero = self.consts.get(q.input[2]) if len(q.input) > 2 else np.uint8(0)
        if scale is None or zero is None or scale.size != 1 or zero.size != 1:
            raise self.fail(q, "has no constant per-tensor scale and zero point")
        info = np.iinfo(zero.dtype)
        low, high, tail = int(info.min), int(info.max), q.output[0]
        clip = self.only_user(tail, "Clip")
        if clip is not None:
            bounds = [self.consts.get(t) for t in clip.input[1:3]]
            if any(b is None for b in bounds):
                raise self.fail(clip, "has no constant bounds")
            low, high = max(low, int(bounds[0])), min(high, int(bounds[1]))
            self.done.add(index[id(clip)])
            tail = clip.output[0]
        dq = self.only_user(tail, "DequantizeLinear")
        if dq is None:
            raise self.fail(q, "is not followed by DequantizeLinear alone")
        dq_scale = self.consts.get(dq.input[1])
        dq_zero = self.consts.get(dq.input[2]) if len(dq.input) > 2 else np.uint8(0)
        if dq_scale is None or dq_zero is None or dq_scale.item() != scale.item():
            raise self.fail(dq, "dequantizes with another scale than its QuantizeLinear")
        if dq_zero.item() != zero.item():
            raise self.fail(dq, "dequantizes with another zero point than its QuantizeLinear")
        self.done.add(index[id(dq)])
        self.emit(
            "quant",
            [q.input[0]],
            [dq.output[0]],
            scale=float(np.float32(scale.item())),
            zero_point=int(zero.item()),
            low=low,
            high=high,
            bits=int(np.ceil(np.log2(high - low + 1))),
            signed=bool(low < 0),
        )

    def conv(self, node: onnx.NodeProto, index: dict[int, int], a: dict[str, Any]) -> None:
        kernel = list(a.get("kernel_shape", []))
        strides = list(a.get("strides", [1, 1]))
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])):
            raise self.fail(node, "is grouped or dilated")
        if len(set(strides)) != 1 or len(set(pads)) != 1 or len(kernel) != 2:
            raise self.fail(node, f"has strides {strides!r} / pads {pads!r}, not square")
        w_name = node.input[1]
        if w_name not in self.consts:
            raise self.fail(node, "has no constant weights")
        attrs: dict[str, Any] = {"stride": int(strides[0]), "pad": int(pads[0])}
        if w_name in self.weight_codes:
            codes, scale, zero = self.weight_codes[w_name]
            if scale.size not in (1, codes.shape[0]):
                raise self.fail(
                    node, "has weight scales that are neither per tensor nor per channel"
                )
            attrs["weight"] = self.keep(codes)
            attrs["weight_scale"] = self.keep(np.broadcast_to(scale, (codes.shape[0],)))
            attrs["weight_zero_point"] = self.keep(np.broadcast_to(zero, (codes.shape[0],)))
        else:
            attrs["weight"] = self.keep(self.consts[w_name].astype(np.float32))
        if len(node.input) > 2 and node.input[2]:
            attrs["bias"] = self.keep(self.consts[node.input[2]].astype(np.float32))
        out = node.output[0]
        bn = self.only_user(out, "BatchNormalization")
        if bn is not None:
            gamma, beta, mean, var = (self.consts.get(t) for t in bn.input[1:5])
            if any(v is None for v in (gamma, beta, mean, var)):
                raise self.fail(bn, "has no constant parameters")
            eps = np.float32(_attrs(bn).get("epsilon", 1e-5))
            s = (gamma.astype(np.float32) / np.sqrt(var.astype(np.float32) + eps)).astype(
                np.float32
            )
            attrs["bn_scale"] = self.keep(s)
            attrs["bn_bias"] = self.keep((beta - mean * s).astype(np.float32))
            self.done.add(index[id(bn)])
            out = bn.output[0]
        self.emit("conv", [node.input[0]], [out], **attrs)

    def gemm(self, node: onnx.NodeProto, a: dict[str, Any]) -> None:
        b = self.consts.get(node.input[1])
        if b is None:
            raise self.fail(node, "has no constant weights")
        attrs: dict[str, Any] = {
            "weight": self.keep(b.astype(np.float32)),
            "trans_a": bool(a.get("transA", 0)),
            "trans_b": bool(a.get("transB", 0)),
            "alpha": float(a.get("alpha", 1.0)),
            "beta": float(a.get("beta", 1.0)),
        }
        if len(node.input) > 2 and node.input[2]:
            attrs["bias"] = self.keep(self.consts[node.input[2]].astype(np.float32))
        self.emit("gemm", [node.input[0]], [node.output[0]], **attrs)

    def binary(self, node: onnx.NodeProto, op: str) -> None:
        x, y = node.input[0], node.input[1]
        if x in self.consts and y in self.consts:
            raise self.fail(node, "has two constant operands")
        if x in self.consts or y in self.consts:
            first = x in self.consts
            c = self.consts[x if first else y]
            const: Any = c.item() if c.size == 1 and c.ndim == 0 else self.keep(c)
            if isinstance(const, float):
                const = float(np.float32(const))
            self.emit(
                op, [y if first else x], [node.output[0]], const=const, const_first=bool(first)
            )
        else:
            self.emit(op, [x, y], [node.output[0]])


def lower(model: onnx.ModelProto | str | bytes, name: str) -> Program:
    """The numpy :class:`~export.program.Program` of an ONNX twin (path, bytes or model)."""
    if isinstance(model, bytes):
        model = onnx.load_from_string(model)
    elif isinstance(model, str):
        model = onnx.load(model)
    return _Lowering(model, name).run()

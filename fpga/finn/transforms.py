"""Graph rewrites the bundle graphs need before and around FINN's own, QONNX style.

Each class is one ``Transformation``: ``model = model.transform(T())``. They exist because of
two properties of the bundle's graphs that FINN's stock flow does not expect:

- every graph starts with the quantizer that produced its input (export/bundle.py), so its
  input is a dequantized float tensor; :class:`IntegerInput` makes it the integer tensor that
  the hardware streams, with the scale as a ``Mul`` that streamlining then absorbs;
- a block with an identity shortcut adds its own input to the residual branch, so after
  streamlining a graph input feeds a join (``Add``) directly, which trips FINN passes that
  assume every join operand has a producer (:class:`OrderJoinInputs`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import qonnx.core.data_layout as data_layout
from onnx import helper as oh
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation

from fpga.finn.errors import GraphError

log = logging.getLogger(__name__)


def pixel_thresholds(table: Any) -> tuple[np.ndarray, int]:
    """The preprocessing table as thresholds: (C, steps) float32 and the lowest code.

    ``table`` is the manifest's ``preprocess.lut``: ``code = table[c][pixel]`` for each channel
    and uint8 pixel value, non-decreasing in the pixel (a normalization with a positive std,
    then a quantizer). A ``MultiThreshold`` with out_bias ``low`` gives ``low + #{k: pixel >=
    thresholds[c, k]}``; threshold ``k`` of channel ``c`` is the first pixel whose code exceeds
    ``low + k`` (256, never reached, where none does), so it gives ``table[c][pixel]`` for every
    pixel exactly. Refused in one line where a row is not 256 non-decreasing integers."""
    t = np.asarray(table)
    if t.ndim != 2 or t.shape[1] != 256 or not np.array_equal(t, np.round(t)):
        raise GraphError(
            f"preprocessing table of shape {t.shape!r} is not C rows of 256 integer codes; "
            "re-export the bundle"
        )
    t = t.astype(np.int64)
    if np.any(np.diff(t, axis=1) < 0):
        raise GraphError(
            "the preprocessing table decreases with the pixel value (a negative std?); the "
            "stem's input codes cannot be thresholds of the pixels"
        )
    low, high = int(t.min()), int(t.max())
    levels = np.arange(low + 1, high + 1)  # (steps,)
    # the first pixel with code >= level: how many pixels have a code below it
    thresholds = (t[:, None, :] < levels[None, :, None]).sum(axis=2)
    return thresholds.astype(np.float32), low


class PixelThresholds(Transformation):
    """The graph takes uint8 pixels: a ``MultiThreshold`` of the preprocessing table
    (:func:`pixel_thresholds`) makes the input codes that the graph took before.

    Run after :class:`IntegerInput`, on a graph whose input holds the integer codes
    ``datatype`` (the stem's). The input becomes ``UINT8`` pixels (N, C, H, W), the same
    tensor name, and feeds a ``MultiThreshold`` whose output (``datatype`` codes) feeds what the
    input fed; FINN makes it a standalone ``Thresholding`` layer, the engine's first, so the
    board sends the images' bytes as they are and computes nothing of the preprocessing."""

    def __init__(self, table: Any, datatype: str) -> None:
        super().__init__()
        self.thresholds, self.low = pixel_thresholds(table)
        self.datatype = DataType[datatype]
        steps = self.thresholds.shape[1]
        if self.low < self.datatype.min() or self.low + steps > self.datatype.max():
            raise GraphError(
                f"the preprocessing table's codes [{self.low}, {self.low + steps}] are not "
                f"{self.datatype.name} codes; re-export the bundle"
            )

    def apply(self, model: ModelWrapper) -> tuple[ModelWrapper, bool]:
        name = model.graph.input[0].name
        shape = model.get_tensor_shape(name)
        if len(shape) != 4 or shape[1] != self.thresholds.shape[0]:
            raise GraphError(
                f"graph input {name!r} of shape {shape!r} does not take images of "
                f"{self.thresholds.shape[0]} channels (N, C, H, W)"
            )
        codes = model.make_new_valueinfo_name()
        thresholds = model.make_new_valueinfo_name()
        model.set_initializer(thresholds, self.thresholds)
        for node in model.find_consumers(name):
            node.input[:] = [codes if i == name else i for i in node.input]
        node = oh.make_node(
            "MultiThreshold",
            [name, thresholds],
            [codes],
            domain="qonnx.custom_op.general",
            out_dtype=self.datatype.name,
            out_bias=float(self.low),
            out_scale=1.0,
            data_layout="NCHW",
            name="PixelThresholds",
        )
        model.graph.node.insert(0, node)
        model.set_tensor_shape(codes, shape)
        model.set_tensor_datatype(codes, self.datatype)
        model.set_tensor_datatype(name, DataType["UINT8"])
        steps = self.thresholds.shape[1]
        log.debug("graph input %s: uint8 pixels, %d thresholds per channel", name, steps)
        return model, False


class IntegerInput(Transformation):
    """Replace the leading quantizer on the graph input by its scale: input codes, then ``Mul``.

    The bundle's graphs take ``code * scale`` and begin with the quantizer that made it
    (``Quant``, after a ``Relu`` for an unsigned stream), the identity on such values. This
    transformation checks that the quantizer matches ``datatype`` (bit width, sign, zero point
    0, and ``scale`` when given), annotates the graph input with ``datatype`` and rewires it as
    ``input -> Mul(scale) -> consumers``; the graph then takes integer codes, as the hardware
    does, and FINN's streamlining moves the ``Mul`` into the next thresholds. Run it after
    QONNX cleanup, before ``ConvertQONNXtoFINN``.
    """

    def __init__(self, datatype: str, scale: float | None = None) -> None:
        super().__init__()
        self.datatype, self.scale = DataType[datatype], scale
        if not self.datatype.is_integer():
            raise GraphError(f"input datatype {datatype!r} is not an integer type (INTk, UINTk)")

    def apply(self, model: ModelWrapper) -> tuple[ModelWrapper, bool]:
        name = model.graph.input[0].name
        consumers = model.find_consumers(name)
        relu = None
        if len(consumers) == 1 and consumers[0].op_type == "Relu":
            relu = consumers[0]
            consumers = model.find_consumers(relu.output[0])
        if len(consumers) != 1 or consumers[0].op_type != "Quant":
            found = [n.op_type for n in consumers]
            raise GraphError(
                f"graph input {name!r} feeds {found!r}, not one Quant (after an optional Relu); "
                "export the bundle with export/bundle.py, whose graphs start with the input's "
                "quantizer"
            )
        quant = consumers[0]
        scale, zeropt, bits = (model.get_initializer(i) for i in quant.input[1:4])
        signed = bool(oh.get_node_attr_value(quant, "signed"))
        if scale is None or zeropt is None or bits is None or np.asarray(scale).size != 1:
            raise GraphError(
                f"input quantizer {quant.name!r} has no constant per-tensor scale, zero point "
                "and bit width; FINN needs a per-tensor input format"
            )
        found = DataType[f"{'INT' if signed else 'UINT'}{int(bits)}"]
        if found != self.datatype or float(zeropt) != 0.0:
            raise GraphError(
                f"input quantizer {quant.name!r} makes {found.name} with zero point "
                f"{float(zeropt)!r}, the manifest says {self.datatype.name!r}; re-export the "
                "bundle"
            )
        if self.scale is not None and np.float32(scale) != np.float32(self.scale):
            raise GraphError(
                f"input quantizer {quant.name!r} has scale {float(scale)!r}, the manifest says "
                f"{self.scale!r}; re-export the bundle"
            )
        mul = oh.make_node("Mul", [name, quant.input[1]], [quant.output[0]], name=quant.name)
        position = list(model.graph.node).index(relu if relu is not None else quant)
        model.graph.node.insert(position, mul)
        model.graph.node.remove(quant)
        if relu is not None:
            model.graph.node.remove(relu)
        model.set_tensor_datatype(name, self.datatype)
        log.debug("graph input %s: %s codes, scale %r", name, self.datatype.name, float(scale))
        return model, False


class OrderJoinInputs(Transformation):
    """Put a graph input that feeds a two-input ``Add`` or ``Mul`` join first (or last).

    ``ModelWrapper.is_join_node`` only counts a graph input as a predecessor when it is the
    node's first input. FINN passes use it to tell a residual add from an add of a constant:
    ``AbsorbAddIntoMultiThreshold`` asserts on a residual add it takes for a constant one
    unless the graph input comes first, while ``MoveTransposePastJoinAdd`` fails on a join
    whose first operand has no producer unless it comes last. Streamlining runs this with
    ``graph_input_first=True``, the transpose clean-up after lowering with ``False``. In a
    masked block the mask (a graph input) joins ``Mul`` nodes: FINN's
    ``MoveConstMulPastJoinMul`` moves a scale past such a join only when it is one. Addition
    and multiplication are commutative, so the result is unchanged.
    """

    def __init__(self, graph_input_first: bool) -> None:
        super().__init__()
        self.graph_input_first = graph_input_first

    def apply(self, model: ModelWrapper) -> tuple[ModelWrapper, bool]:
        inputs = {i.name for i in model.graph.input}
        for node in model.graph.node:
            if node.op_type not in ("Add", "Mul") or len(node.input) != 2:
                continue
            a, b = node.input
            if any(model.get_initializer(t) is not None for t in (a, b)):
                continue
            wrong_first = (a in inputs) != self.graph_input_first
            wrong_last = (b in inputs) == self.graph_input_first
            if wrong_first and wrong_last:
                node.input[0], node.input[1] = b, a
        return model, False


class InputsChannelsLast(Transformation):
    """Make every 4-D NCHW graph input channels-last, as QONNX's ``MakeInputChannelsLast`` does
    for the first input only: the input becomes NHWC and a ``Transpose`` gives its consumers
    NCHW. A masked block has two inputs (the block input and the mask map), both streamed."""

    def apply(self, model: ModelWrapper) -> tuple[ModelWrapper, bool]:
        for graph_input in model.graph.input:
            name = graph_input.name
            shape = model.get_tensor_shape(name)
            if len(shape) != 4 or model.get_tensor_layout(name) == data_layout.NHWC:
                continue
            inner = f"{name}_transposed"
            for node in model.find_consumers(name):
                node.input[:] = [inner if t == name else t for t in node.input]
            model.graph.node.insert(
                0, oh.make_node("Transpose", [name], [inner], perm=[0, 3, 1, 2])
            )
            n, c, h, w = shape
            model.set_tensor_shape(name, [n, h, w, c])
            model.set_tensor_shape(inner, [n, c, h, w])
            model.set_tensor_layout(name, data_layout.NHWC)
            model.set_tensor_layout(inner, data_layout.NCHW)
        return model, False


class ChannelsFirstInput(Transformation):
    """Give channels-last graph inputs back their NCHW interface through a leading ``Transpose``.

    After lowering, the graph works channels-last from its inputs on
    (:class:`InputsChannelsLast`). The bundle's graphs take NCHW, so this puts a
    ``Transpose(0, 2, 3, 1)`` in front of every 4-D input: it stays outside the dataflow
    partition (the hardware streams NHWC), and the whole graph keeps the interface of its
    onnxruntime twin.
    """

    def apply(self, model: ModelWrapper) -> tuple[ModelWrapper, bool]:
        for k, graph_input in enumerate(model.graph.input):
            outer = graph_input.name
            shape = model.get_tensor_shape(outer)
            if len(shape) != 4 or model.get_tensor_layout(outer) != data_layout.NHWC:
                continue
            datatype = model.get_tensor_datatype(outer)
            inner = f"{outer}_nhwc"
            for node in model.find_consumers(outer):
                node.input[:] = [inner if t == outer else t for t in node.input]
            n, h, w, c = shape
            transpose = oh.make_node(
                "Transpose",
                [outer],
                [inner],
                perm=[0, 2, 3, 1],
                name="InputToNHWC" if k == 0 else f"InputToNHWC_{k}",
            )
            model.graph.node.insert(k, transpose)  # in input order: the partition's too
            model.set_tensor_shape(inner, [n, h, w, c])
            model.set_tensor_shape(outer, [n, c, h, w])
            for tensor, layout in ((inner, data_layout.NHWC), (outer, data_layout.NCHW)):
                model.set_tensor_datatype(tensor, datatype)
                model.set_tensor_layout(tensor, layout)
        return model, False


class NarrowMaskedProducts(Transformation):
    """Give an ``ElementwiseMul`` of a value and a 1-bit mask the value's datatype.

    A masked block multiplies codes by its 0/1 mask map (export/bundle.py,
    ``MaskedBlockGraph``). FINN derives a product's width as the sum of its operands' widths
    (``ElementwiseMul._derive_out_dtype``), so ``UINT4 x BINARY`` becomes ``UINT5``, and the
    next MVAU would take 5-bit activations. The product of ``x`` with 0 or 1 is 0 or ``x``:
    within ``x``'s own datatype whenever that holds 0. Run after every bit-width minimization
    (FINN's recomputes the sum); the MVAU that takes the product follows through
    ``InferDataTypes`` (its accumulator stays sized for the wider input, which is safe).
    """

    def apply(self, model: ModelWrapper) -> tuple[ModelWrapper, bool]:
        from qonnx.custom_op.registry import getCustomOp

        for node in model.graph.node:
            if node.op_type.removesuffix("_hls").removesuffix("_rtl") != "ElementwiseMul":
                continue
            op = getCustomOp(node)
            lhs, rhs = op.lhs_dtype, op.rhs_dtype
            if rhs.bitwidth() == 1 and not rhs.signed():
                value = lhs
            elif lhs.bitwidth() == 1 and not lhs.signed():
                value = rhs
            else:
                continue
            if not value.is_integer() or not value.min() <= 0 <= value.max():
                continue
            if op.out_dtype != value:
                op.set_nodeattr("out_dtype", value.name)
                model.set_tensor_datatype(node.output[0], value)
        return model, False


class HWLayersForPython(Transformation):
    """Map every specialized HLS/RTL layer back onto the HW layer it specializes.

    FINN executes a specialized layer (``MVAU_rtl``, ``ElementwiseAdd_hls``) only by
    simulation: cppsim (Vitis HLS headers) or rtlsim (Vivado's XSI), neither of which exists
    here. The HW layer it was specialized from (``MVAU``, ``ElementwiseAdd``) has FINN's Python
    execution. The node keeps all its attributes (folding, datatypes, weights, thresholds), so
    the result computes what the folded, bit-width-minimized partition computes, layer by
    layer; only the generated HLS/RTL code is not exercised.
    """

    def apply(self, model: ModelWrapper) -> tuple[ModelWrapper, bool]:
        for node in model.graph.node:
            for suffix in ("hls", "rtl"):
                if node.domain == f"finn.custom_op.fpgadataflow.{suffix}":
                    node.domain = "finn.custom_op.fpgadataflow"
                    node.op_type = node.op_type.removesuffix(f"_{suffix}")
        return model, False

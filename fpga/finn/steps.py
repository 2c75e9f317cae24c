"""FINN build steps for the bundle's graphs: the custom ones, and the step table.

A step is FINN's ``step_x(model, cfg) -> model`` over a ``DataflowBuildConfig``; FINN's builder
runs :data:`FRONTEND_STEPS` in order and saves each step's result as
``intermediate_models/<step>.onnx``, so a build can be resumed with ``start_step``. Stock FINN
steps are named by string (FINN looks them up), ours are functions here:

- :func:`step_integer_input`: QONNX cleanup, then the input becomes integer codes
  (:class:`~fpga.finn.transforms.IntegerInput`); the datatype comes from the manifest through
  the model's metadata (:data:`INPUT_DATATYPE_KEY`).
- :func:`step_resnet_streamline`: FINN's ResNet-50 streamlining (finn-examples), in rounds
  until nothing changes, with two fixes for blocks whose shortcut is the identity, the
  global average pool turned into FINN's accumulator plus a scale that streamlines away, and
  a signed quantizer's offset (the layer gate's embedding) kept in its threshold.
- :func:`step_resnet_lower`: convolutions to Im2Col + MatMul, the graph channels-last, then the
  transposes moved and cancelled, ResNet-50 style.
- :func:`step_resnet_convert_to_hw`: only integer layers become HW layers, so the float tail
  (output scale, classifier bias, the output transpose) stays outside the dataflow partition.
- :func:`step_runtime_writeable_weights`: a shared engine's MVAUs and thresholds become
  runtime-writeable before bit-width minimization (only with :data:`RUNTIME_WEIGHTS_KEY`).
- :func:`step_check_hw_layers`: after ``SpecializeLayers``, every node of the partition must be
  an HLS or RTL layer.
- :func:`step_refold_mvaus`: every MVAU refolded, at the engine's frame interval, for the
  fewest DSPs (FINN's RTL MVAU packs four PEs into a DSP48) and, runtime-writeable, the fewest
  padded AXI-lite words.
- :func:`step_pixel_words`: an engine's boundary layers take and give one pixel a stream word.

Why each of these exists, and what was tried first, is in docs/finn-frontend.md.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from finn.builder.build_dataflow_config import DataflowBuildConfig
from finn.builder.custom_step_library.resnet import step_resnet50_streamline_linear
from finn.transformation.fpgadataflow.convert_to_hw.conv_inp_gen import InferConvInpGen
from finn.transformation.fpgadataflow.convert_to_hw.duplicate_streams import (
    InferDuplicateStreamsLayer,
)
from finn.transformation.fpgadataflow.convert_to_hw.elementwise_binary_operation import (
    InferElementwiseBinaryOperation,
)
from finn.transformation.fpgadataflow.convert_to_hw.global_acc_pool import InferGlobalAccPoolLayer
from finn.transformation.fpgadataflow.convert_to_hw.pool import InferPool
from finn.transformation.fpgadataflow.convert_to_hw.quantized_matrix_vector_activation import (
    InferQuantizedMatrixVectorActivation,
)
from finn.transformation.fpgadataflow.convert_to_hw.thresholding import InferThresholdingLayer
from finn.transformation.move_reshape import RemoveCNVtoFCFlatten
from finn.transformation.streamline.absorb import (
    AbsorbConsecutiveTransposes,
    AbsorbScalarBiasIntoMultiThreshold,
    AbsorbTransposeIntoMultiThreshold,
)
from finn.transformation.streamline.reorder import (
    MakeMaxPoolNHWC,
    MoveConstMulPastJoinMul,
    MoveLinearPastEltwiseAdd,
    MoveLinearPastFork,
    MoveMulPastMaxPool,
    MoveTransposePastEltwise,
    MoveTransposePastFork,
    MoveTransposePastJoinAdd,
    MoveTransposePastJoinMul,
)
from finn.transformation.streamline.round_thresholds import RoundAndClipThresholds
from onnx import NodeProto
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.double_to_single_float import DoubleToSingleFloat
from qonnx.transformation.general import (
    GiveReadableTensorNames,
    GiveUniqueNodeNames,
    RemoveUnusedTensors,
    SortGraph,
)
from qonnx.transformation.infer_data_layouts import InferDataLayouts
from qonnx.transformation.infer_datatypes import InferDataTypes
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul
from qonnx.util.cleanup import cleanup_model

from fpga.finn.errors import GraphError
from fpga.finn.transforms import (
    ChannelsFirstInput,
    InputsChannelsLast,
    IntegerInput,
    NarrowMaskedProducts,
    OrderJoinInputs,
    PixelThresholds,
)
from fpga.weights import line_words

log = logging.getLogger(__name__)

INPUT_DATATYPE_KEY = "ddi_fpga.input_datatype"
"""Model metadata key: the FINN datatype of the graph input (``UINT4``), from the manifest."""
INPUT_SCALE_KEY = "ddi_fpga.input_scale"
"""Model metadata key: the scale of the input codes (``repr`` of a float), from the manifest."""
RUNTIME_WEIGHTS_KEY = "ddi_fpga.runtime_writeable_weights"
"""Model metadata key: ``"1"`` when the engine's weights are written at run time (a shared
engine); set by :func:`fpga.finn.frontend.to_hw` from ``FrontendConfig``."""
PIXEL_TABLE_KEY = "ddi_fpga.pixel_table"
"""Model metadata key: the stem's preprocessing table (JSON of the manifest's
``preprocess.lut``) when its engine takes the images' uint8 pixels and thresholds them to its
input codes itself (:class:`~fpga.finn.transforms.PixelThresholds`); set by
:func:`fpga.finn.frontend.to_hw`."""
MASK_DATATYPE = "UINT1"
"""FINN datatype of a masked block's second input, the channel mask map (export/bundle.py)."""
MAX_ROUNDS = 8
"""Streamlining and transpose clean-up repeat until the graph stops changing, at most this."""
HW_DOMAIN = "finn.custom_op.fpgadataflow"


def _fingerprint(model: ModelWrapper) -> bytes:
    return model.model.graph.SerializeToString(deterministic=True)


def _tidy(model: ModelWrapper) -> ModelWrapper:
    for transformation in (
        InferShapes(),
        InferDataTypes(),
        InferDataLayouts(),
        RemoveUnusedTensors(),
        GiveUniqueNodeNames(),
        GiveReadableTensorNames(),
        SortGraph(),
    ):
        model = model.transform(transformation)
    return model


def step_integer_input(model: ModelWrapper, cfg: DataflowBuildConfig) -> ModelWrapper:
    """QONNX cleanup, then the leading quantizer becomes integer input codes and a ``Mul``;
    for a stem that takes pixels (:data:`PIXEL_TABLE_KEY`) the codes come from thresholds.

    The input datatype (and scale, checked against the graph's quantizer) come from the model's
    metadata, which :func:`fpga.finn.frontend.to_hw` copies from the bundle manifest.
    """
    datatype = model.get_metadata_prop(INPUT_DATATYPE_KEY)
    scale = model.get_metadata_prop(INPUT_SCALE_KEY)
    if datatype is None:
        raise GraphError(
            f"model has no {INPUT_DATATYPE_KEY!r} metadata; build bundle graphs with "
            "fpga.finn.frontend.to_hw, which copies the input datatype from the manifest"
        )
    model = cleanup_model(model)
    model = model.transform(IntegerInput(datatype, None if scale is None else float(scale)))
    table = model.get_metadata_prop(PIXEL_TABLE_KEY)
    if table is not None:  # the stem: uint8 pixels in, thresholded to the codes
        model = model.transform(PixelThresholds(json.loads(table), datatype))
    for mask in model.graph.input[1:]:  # a masked block's mask map: 0/1 per output value
        model.set_tensor_datatype(mask.name, DataType[MASK_DATATYPE])
    return model.transform(InferShapes())


def step_resnet_streamline(model: ModelWrapper, cfg: DataflowBuildConfig) -> ModelWrapper:
    """FINN's ResNet-50 streamlining, repeated until the graph stops changing.

    One round is FINN's linear pass (``step_resnet50_streamline_linear``: BN to affine, scalar
    Mul/Add moved past Conv/MatMul and absorbed into MultiThreshold) and the residual pass,
    with two changes to finn-examples' ``step_resnet50_streamline``:

    - the residual pass moves scales past forks *before* past the residual ``Add``
      (``MoveLinearPastFork``, then ``MoveLinearPastEltwiseAdd``): the other order deletes a
      ``Mul`` that still feeds the conv branch when the shortcut is the identity;
    - :class:`~fpga.finn.transforms.OrderJoinInputs` puts the graph input first in such an
      ``Add``, so that ``AbsorbAddIntoMultiThreshold`` sees a join and leaves it alone.

    Scales also move past max pools (``MoveMulPastMaxPool``, exits), which the ResNet-50 list
    lacks. A ``GlobalAveragePool`` on integers (head, exits) becomes FINN's ``GlobalAccPool``
    (a sum) and a scalar ``Mul``, which the next round moves past the classifier's MatMul.
    """
    in_types = {i.name: model.get_tensor_datatype(i.name) for i in model.graph.input}
    for _ in range(MAX_ROUNDS):
        before = _fingerprint(model)
        model = model.transform(OrderJoinInputs(graph_input_first=True))
        # A signed quantizer (the layer gate's embedding) is a MultiThreshold and an Add of
        # -2**(bits-1); absorbed before the linear pass moves that Add past the scale's Mul.
        model = model.transform(AbsorbScalarBiasIntoMultiThreshold())
        model = model.transform(MoveMulPastMaxPool())
        # masked blocks: scales past the mask joins first (FINN's CollapseRepeatedMul asserts on
        # a scale Mul followed by the mask's Mul, which has no constant)
        model = model.transform(MoveLinearPastFork())
        model = model.transform(MoveConstMulPastJoinMul())
        for name, datatype in in_types.items():  # the move drops the inputs' annotations
            model.set_tensor_datatype(name, datatype)
        model = step_resnet50_streamline_linear(model, cfg)
        model = model.transform(MoveLinearPastFork())
        model = model.transform(MoveConstMulPastJoinMul())
        model = model.transform(MoveLinearPastEltwiseAdd())
        model = model.transform(InferDataLayouts())
        model = model.transform(InferGlobalAccPoolLayer())
        model = _tidy(model)
        if _fingerprint(model) == before:
            break
    else:
        log.warning("streamlining still changed the graph after %d rounds", MAX_ROUNDS)
    model = model.transform(RoundAndClipThresholds())
    return model.transform(DoubleToSingleFloat())


def step_resnet_lower(model: ModelWrapper, cfg: DataflowBuildConfig) -> ModelWrapper:
    """Lower convolutions to Im2Col + MatMul and make the graph channels-last.

    The input is made NHWC (QONNX's ``MakeInputChannelsLast``); the transposes that lowering
    puts around every Im2Col/MatMul are then moved past forks, residual adds and thresholds
    and cancelled, as finn-examples' ResNet-50 does, until none is left inside. Finally a
    leading ``Transpose`` gives the graph back its NCHW input (outside the partition), and the
    output's transpose back to NCHW stays at the end (also outside).
    """
    model = model.transform(OrderJoinInputs(graph_input_first=False))
    model = model.transform(InputsChannelsLast())
    model = model.transform(LowerConvsToMatMul())
    model = model.transform(MakeMaxPoolNHWC())
    model = _tidy(model)
    for _ in range(MAX_ROUNDS):
        before = _fingerprint(model)
        for transformation in (
            MoveTransposePastFork(),
            MoveTransposePastJoinAdd(),
            MoveTransposePastJoinMul(),  # masked blocks: the mask joins
            MoveTransposePastEltwise(),
            AbsorbConsecutiveTransposes(),
            AbsorbTransposeIntoMultiThreshold(),
            MakeMaxPoolNHWC(),
        ):
            model = model.transform(transformation)
        model = _tidy(model)
        if _fingerprint(model) == before:
            break
    else:
        log.warning("transpose clean-up still changed the graph after %d rounds", MAX_ROUNDS)
    model = model.transform(ChannelsFirstInput())
    return _tidy(model)


def _is_integer_node(model: ModelWrapper, node: NodeProto) -> bool:
    """Whether every tensor of ``node`` holds integers (constants: integer-valued)."""
    for name in [*node.input, *node.output]:
        if model.get_initializer(name) is not None:
            if not model.get_tensor_datatype(name).is_integer():
                values = model.get_initializer(name)
                if (values != values.round()).any():
                    return False
        elif not model.get_tensor_datatype(name).is_integer():
            return False
    return True


def step_resnet_convert_to_hw(model: ModelWrapper, cfg: DataflowBuildConfig) -> ModelWrapper:
    """Turn the integer part of the graph into FINN HW layers; leave the float tail alone.

    FINN's ``step_convert_to_hw`` also converts the float output scale (``ElementwiseMul``) and
    the output ``Transpose`` (``Shuffle``), which puts float arithmetic in the partition;
    this step applies the same inferences but elementwise operations only on integers.
    Thresholds stay standalone (``Thresholding``), so MVAUs can be RTL.
    """
    for transformation in (
        InferThresholdingLayer(),
        InferQuantizedMatrixVectorActivation(),
        InferPool(),  # MaxPool -> Im2Col + Pool, so before Im2Col -> ConvolutionInputGenerator
        InferConvInpGen(),
        InferGlobalAccPoolLayer(),
        InferElementwiseBinaryOperation(_filter=_is_integer_node),
        InferDuplicateStreamsLayer(),
        RemoveCNVtoFCFlatten(),
        AbsorbConsecutiveTransposes(),
    ):
        model = model.transform(transformation)
        model = model.transform(InferDataLayouts())
        model = model.transform(InferDataTypes())
    model = model.transform(InferShapes())
    return model.transform(GiveUniqueNodeNames())


def step_runtime_writeable_weights(model: ModelWrapper, cfg: DataflowBuildConfig) -> ModelWrapper:
    """For a shared engine (:data:`RUNTIME_WEIGHTS_KEY` set): every MVAU keeps its weights in
    a runtime-writeable memory (``mem_mode="internal_decoupled"``,
    ``runtime_writeable_weights=1``) and every Thresholding layer its thresholds.

    It must run before ``step_minimize_bit_width_initial``: FINN narrows weight, threshold and
    accumulator datatypes to the values of the graph being built unless these attributes are
    set (``MVAU.minimize_weight_bit_width``, ``minimize_accumulator_width``), and never widens
    them again, so an engine built from one block would be too narrow for the others.
    Without the key, the model passes unchanged.
    """
    from qonnx.custom_op.registry import getCustomOp

    if model.get_metadata_prop(RUNTIME_WEIGHTS_KEY) != "1":
        return model
    for node in model.graph.node:
        if node.op_type.startswith("MVAU"):
            getCustomOp(node).set_nodeattr("mem_mode", "internal_decoupled")
            getCustomOp(node).set_nodeattr("runtime_writeable_weights", 1)
        elif node.op_type.startswith("Thresholding"):
            getCustomOp(node).set_nodeattr("runtime_writeable_weights", 1)
    return model


def _narrow(model: ModelWrapper) -> ModelWrapper:
    model = model.transform(NarrowMaskedProducts())
    return model.transform(InferDataTypes())


def step_minimize_bit_width_masked_initial(
    model: ModelWrapper, cfg: DataflowBuildConfig
) -> ModelWrapper:
    """FINN's ``step_minimize_bit_width_initial``, then a mask product keeps its value's
    datatype (:class:`~fpga.finn.transforms.NarrowMaskedProducts`)."""
    from finn.builder.build_dataflow_steps import step_minimize_bit_width_initial

    return _narrow(step_minimize_bit_width_initial(model, cfg))


def step_minimize_bit_width_masked(model: ModelWrapper, cfg: DataflowBuildConfig) -> ModelWrapper:
    """FINN's ``step_minimize_bit_width``, then the same narrowing of mask products."""
    from finn.builder.build_dataflow_steps import step_minimize_bit_width

    return _narrow(step_minimize_bit_width(model, cfg))


def step_check_hw_layers(model: ModelWrapper, cfg: DataflowBuildConfig) -> ModelWrapper:
    """Raise :class:`GraphError` unless every node of the partition is an HLS or RTL layer."""
    bad = [
        f"{n.name} ({n.op_type})"
        for n in model.graph.node
        if not (n.domain.endswith(".hls") or n.domain.endswith(".rtl"))
        or not n.domain.startswith(HW_DOMAIN)
    ]
    if bad:
        raise GraphError(
            f"dataflow partition holds nodes that are not specialized HW layers: {bad!r}; "
            "FINN has no HW layer for them, change the model or add a conversion step"
        )
    return model


def padded_weight_words(mh: int, mw: int, pe: int, simd: int, bits: int) -> int:
    """AXI-lite words of an MVAU's runtime-writeable weight memory: ``MH/PE * MW/SIMD`` lines
    of ``PE * SIMD * bits`` bits, each padded to a power of two of 32-bit words (FINN's
    ``decoupled_runtime`` weight file; :func:`fpga.weights.line_words`)."""
    return (mh // pe) * (mw // simd) * line_words(pe * simd * bits)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def step_refold_mvaus(model: ModelWrapper, cfg: DataflowBuildConfig) -> ModelWrapper:
    """Refold every MVAU for the fewest DSPs, and a runtime-writeable one (a shared engine's)
    for the fewest AXI-lite words, without slowing the engine down.

    ``SetFolding`` grows SIMD up to ``mvau_wwidth_max`` first, then PE, and knows neither cost:

    - DSPs: on DSP48 (7-series) FINN's RTL MVAU packs four PEs into one DSP
      (``MVAU_rtl.dsp_estimation``: ``ceil(PE / 4) * SIMD``), so PE = 1, SIMD = 4 takes as many
      DSPs as PE = 4, SIMD = 4 at a quarter of the rate, and PE = 1, SIMD = 12 four times the
      DSPs of PE = 4, SIMD = 3 at the same rate;
    - words: each memory line of a runtime-writeable MVAU (``PE * SIMD`` weights) is padded to
      a power of two of 32-bit words, and the ARM writes every word before each block runs
      (``fpga/board/weights.py``): at 4-bit weights SIMD = 9, PE = 8 gives 288-bit lines
      written as 512 bits, 44% of the words padding.

    Each MVAU takes, among the ``PE`` dividing MH and ``SIMD`` dividing MW with
    ``SIMD * bits <= mvau_wwidth_max`` whose cycles stay within the partition's bottleneck (the
    engine's frame interval is unchanged), the folding with the fewest DSPs (the part's scarcest
    resource), then the fewest padded words (runtime-writeable only), then the fewest BRAMs
    (FINN's ``bram_estimation``), then the least parallelism; on a tie the folding it has
    stays. Fewer DSPs may cost BRAM: a 3x3 conv of 64 channels at PE 8, SIMD 8 has 576 memory
    lines, one more BRAM18 deep than PE 8, SIMD 9's 512 (8 -> 15 BRAM18 for 18 -> 16 DSP, by
    FINN's estimates); the log line of each refolded node says what it traded. Nodes that
    ``folding_config_file`` names keep their folding.
    """

    from qonnx.custom_op.registry import getCustomOp

    named: set[str] = set()
    if cfg.folding_config_file is not None:
        named = set(json.loads(Path(cfg.folding_config_file).read_text())) - {"Defaults"}
    part = cfg._resolve_fpga_part()
    ops = [(n, getCustomOp(n)) for n in model.graph.node]
    bottleneck = max(int(op.get_exp_cycles()) for _, op in ops)
    for node, op in ops:
        if node.op_type.startswith("MVAU") and node.name not in named:
            _refold(node.name, op, max(bottleneck, int(op.get_exp_cycles())), part, cfg)
    return model


def _fold_rank(
    op: Any, pe: int, simd: int, limit: int, part: str
) -> tuple[int, int, int, int] | None:
    """(DSPs, padded words if runtime-writeable, BRAM18s, -cycles) of ``op`` folded by (PE,
    SIMD), or None above ``limit`` cycles; leaves ``op`` folded so."""
    op.set_nodeattr("PE", pe)
    op.set_nodeattr("SIMD", simd)
    cycles = int(op.get_exp_cycles())
    if cycles > limit:
        return None
    words = 0
    if op.get_nodeattr("runtime_writeable_weights") == 1:
        mw, mh = int(op.get_nodeattr("MW")), int(op.get_nodeattr("MH"))
        words = padded_weight_words(mh, mw, pe, simd, op.get_input_datatype(1).bitwidth())
    return int(op.dsp_estimation(part)), words, int(op.bram_estimation(part)), -cycles


def _refold(name: str, op: Any, limit: int, part: str, cfg: DataflowBuildConfig) -> None:
    """One MVAU of :func:`step_refold_mvaus`."""
    bits = op.get_input_datatype(1).bitwidth()
    now = (int(op.get_nodeattr("PE")), int(op.get_nodeattr("SIMD")))
    first = _fold_rank(op, *now, limit, part)  # SetFolding's choice is always a candidate
    assert first is not None
    best, chosen = first, now
    for pe in _divisors(int(op.get_nodeattr("MH"))):
        for simd in _divisors(int(op.get_nodeattr("MW"))):
            if simd * bits > cfg.mvau_wwidth_max or (pe, simd) == now:
                continue
            rank = _fold_rank(op, pe, simd, limit, part)
            if rank is not None and rank < best:
                best, chosen = rank, (pe, simd)
    op.set_nodeattr("PE", chosen[0])
    op.set_nodeattr("SIMD", chosen[1])
    if chosen != now:
        log.info(
            "%s: PE=%d SIMD=%d -> PE=%d SIMD=%d (DSP %d -> %d, weight words %d -> %d, "
            "BRAM18 %d -> %d)",
            name,
            *now,
            *chosen,
            first[0],
            best[0],
            first[1],
            best[1],
            first[2],
            best[2],
        )


PIXEL_WORD_ATTRIBUTE = {
    "FMPadding": "SIMD",
    "DuplicateStreams": "PE",
    "GlobalAccPool": "PE",
    "Thresholding": "PE",
    "AddStreams": "PE",
    "StreamingMaxPool": "PE",
}
"""The channel-folding attribute of the boundary layers :func:`step_pixel_words` widens (cheap
layers: padding, fan-out, pooling, thresholds). A convolution's sliding window or an MVAU at
a boundary keeps its folding (it sets the layer's MAC rate)."""


def _kind(op_type: str) -> str:
    return op_type.removesuffix("_hls").removesuffix("_rtl")


def step_pixel_words(model: ModelWrapper, cfg: DataflowBuildConfig) -> ModelWrapper:
    """Fold the partition's first layer to take, and its last layer to give, one whole pixel
    (every channel) a stream word, where that layer is one of :data:`PIXEL_WORD_ATTRIBUTE`.

    FINN's driver packs an engine's DMA buffer by the folding of the layer at its boundary, so
    two engines' buffers of the same tensor have the same bytes only when the writer's last
    layer and the reader's first fold alike. With one pixel a word at every such boundary the
    board passes an engine's packed output to the next engine as it is
    (``fpga.board.accel.Carried``), with no repacking on the ARM. A masked block's mask map is
    taken a pixel a word too (its C bits): 8 times denser than a bit a byte, and the board
    fills it a word at a time. Data-width converters between
    a widened boundary layer and its neighbour come in with FINN's ``InsertDWC`` in the back
    end; the layers' arithmetic is unchanged."""
    from qonnx.custom_op.registry import getCustomOp

    nodes = list(model.graph.node)
    boundary = [(nodes[0], "input"), (nodes[-1], "output")]
    # a masked block's mask map (its second input): the layer that takes it (the fan-out to
    # the block's two mask products) takes a pixel's C mask bits a word, so the map's DMA
    # buffer holds ceil(C / 8) bytes a pixel, not a byte a channel
    for tensor in model.graph.input[1:]:
        boundary += [(node, "input") for node in model.find_consumers(tensor.name) or ()]
    for node, side in boundary:
        attribute = PIXEL_WORD_ATTRIBUTE.get(_kind(node.op_type))
        if attribute is None:
            continue
        op = getCustomOp(node)
        shape = op.get_normal_input_shape() if side == "input" else op.get_normal_output_shape()
        op.set_nodeattr(attribute, int(shape[-1]))
    return model


FRONTEND_STEPS: list = [
    step_integer_input,
    "step_qonnx_to_finn",
    "step_tidy_up",
    step_resnet_streamline,
    step_resnet_lower,
    step_resnet_convert_to_hw,
    step_runtime_writeable_weights,
    step_minimize_bit_width_masked_initial,
    "step_create_dataflow_partition",
    "step_specialize_layers",
    step_check_hw_layers,
    "step_target_fps_parallelization",
    "step_apply_folding_config",
    step_refold_mvaus,
    step_minimize_bit_width_masked,
    "step_generate_estimate_reports",
]
"""The front end as FINN build steps: QONNX graph -> folded HW layers and estimate reports."""

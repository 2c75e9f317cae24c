"""Layer factories for float and Brevitas-quantized networks.

Every layer of the backbone and the exits is built through these functions, so one model class
serves both the float and the quantized variant: with ``spec=None`` they return plain PyTorch
layers, otherwise Brevitas layers whose QONNX export FINN accepts.

FINN constraints honoured here (and commented where the model uses them):
- activations are quantized ReLUs (unsigned), so every dataflow layer sees integer inputs;
- the input image is quantized to a signed 8-bit tensor by an explicit input quantizer;
- weights are per-output-channel scaled integers; the stem and classifier keep 8-bit weights
  (the first and last layer are the most sensitive), the body uses ``weight_bits``.

Quantized gates are built here too (:func:`pooled`, :func:`pointwise`, :func:`gate_code`): their
convolutions and pools are what FINN compiles (export/bundle.py exports them as FINN graphs);
the layer gate's 10-wide LSTM step stays float, for the board's ARM CPU (FINN has no LSTM). A
keep decision ``logit > 0`` is a one-step threshold of the gate's last accumulator, so it needs
no quantizer of its own in training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from train.errors import ConfigError


@dataclass(frozen=True)
class QuantSpec:
    """Bit widths of a quantized network."""

    weight_bits: int = 4
    """Weight bits of the convolutions in residual blocks and exit branches."""
    act_bits: int = 4
    """Bits of every activation (ReLU outputs, the residual stream)."""
    input_bits: int = 8
    """Bits of the signed input quantizer applied to the normalized image."""
    edge_weight_bits: int = 8
    """Weight bits of the stem convolution and of the classifiers' fully connected layers."""

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or not 1 <= value <= 16:
                raise ConfigError(
                    f"quantization {name}={value!r} is not a bit width in 1..16; "
                    "choose e.g. --weight-bits 4 --act-bits 4"
                )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _brevitas():
    # Imported lazily: float models (and their tests) do not pay Brevitas' import time.
    import brevitas.nn as qnn
    from brevitas.quant import (
        Int8ActPerTensorFloat,
        Int8WeightPerChannelFloat,
        Uint8ActPerTensorFloat,
    )

    return qnn, Int8ActPerTensorFloat, Int8WeightPerChannelFloat, Uint8ActPerTensorFloat


def conv(
    spec: QuantSpec | None,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    *,
    edge: bool = False,
) -> nn.Module:
    """A bias-free ``kernel_size`` convolution with 'same' padding, followed in the model by BN."""
    padding = kernel_size // 2
    if spec is None:
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
    qnn, _, weight_quant, _ = _brevitas()
    return qnn.QuantConv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=padding,
        bias=False,
        weight_quant=weight_quant,
        weight_bit_width=spec.edge_weight_bits if edge else spec.weight_bits,
    )


def linear(spec: QuantSpec | None, in_features: int, out_features: int) -> nn.Module:
    """A classifier layer: 8-bit (``edge_weight_bits``) weights and a float bias when quantized.

    The bias stays float (FINN keeps the final Add outside the dataflow partition); Brevitas'
    Int32Bias would need a QuantTensor input, which the average pool before it does not give.
    """
    if spec is None:
        return nn.Linear(in_features, out_features)
    qnn, _, weight_quant, _ = _brevitas()
    return qnn.QuantLinear(
        in_features,
        out_features,
        bias=True,
        weight_quant=weight_quant,
        weight_bit_width=spec.edge_weight_bits,
    )


def relu(spec: QuantSpec | None) -> nn.Module:
    """A ReLU; quantized to ``act_bits`` unsigned with a learned per-tensor scale."""
    if spec is None:
        return nn.ReLU()
    qnn, _, _, act_quant = _brevitas()
    return qnn.QuantReLU(act_quant=act_quant, bit_width=spec.act_bits, return_quant_tensor=False)


def input_quant(spec: QuantSpec | None) -> nn.Module:
    """The signed ``input_bits`` quantizer applied to the normalized image (identity when float)."""
    if spec is None:
        return nn.Identity()
    qnn, act_quant, _, _ = _brevitas()
    return qnn.QuantIdentity(
        act_quant=act_quant, bit_width=spec.input_bits, return_quant_tensor=False
    )


GATE_POOL_BITS = 8
"""Bits of a gate's pooled input (unsigned): the mean of a ``act_bits`` feature map over 8x8 to
32x32 pixels has more levels than ``act_bits``, and the gate's first MVAU takes 8 bits cheaply
(it runs once per image on a vector)."""
GATE_CODE_BITS = 8
"""Bits of the layer gate's embedding (signed), the 10 values its LSTM step takes on the ARM."""


def pooled(spec: QuantSpec | None) -> nn.Module:
    """The quantizer after a gate's global average pool (identity when float).

    FINN lowers the pool to a GlobalAccPool (a sum) and a scalar Mul by 1/(H*W), which it
    absorbs into the thresholds of this quantizer, so the pool and its requantization are one
    integer engine.
    """
    if spec is None:
        return nn.Identity()
    qnn, _, _, act_quant = _brevitas()
    return qnn.QuantIdentity(
        act_quant=act_quant, bit_width=GATE_POOL_BITS, return_quant_tensor=False
    )


def pointwise(spec: QuantSpec | None, in_channels: int, out_channels: int) -> nn.Module:
    """The layer gate's 1x1 convolution with a bias; 8-bit (``edge_weight_bits``) weights.

    The bias stays float, as in :func:`linear`: FINN absorbs the Add into the thresholds of the
    quantizer that follows (:func:`gate_code`).
    """
    if spec is None:
        return nn.Conv2d(in_channels, out_channels, 1)
    qnn, _, weight_quant, _ = _brevitas()
    return qnn.QuantConv2d(
        in_channels,
        out_channels,
        1,
        bias=True,
        weight_quant=weight_quant,
        weight_bit_width=spec.edge_weight_bits,
    )


def gate_code(spec: QuantSpec | None) -> nn.Module:
    """The signed quantizer of the layer gate's embedding (identity when float)."""
    if spec is None:
        return nn.Identity()
    qnn, act_quant, _, _ = _brevitas()
    return qnn.QuantIdentity(
        act_quant=act_quant, bit_width=GATE_CODE_BITS, return_quant_tensor=False
    )


def is_quantized(module: nn.Module) -> bool:
    """Whether ``module`` contains any Brevitas layer."""
    return any(type(m).__module__.startswith("brevitas") for m in module.modules())

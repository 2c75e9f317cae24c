"""Layer factories for float and Brevitas-quantized networks.

Every layer of the backbone and the exits is built through these functions, so one model class
serves both the float and the quantized variant: with ``spec=None`` they return plain PyTorch
layers, otherwise Brevitas layers whose QONNX export FINN accepts.

FINN constraints honoured here (and commented where the model uses them):
- activations are quantized ReLUs (unsigned), so every dataflow layer sees integer inputs;
- the input image is quantized to a signed 8-bit tensor by an explicit input quantizer;
- weights are per-output-channel scaled integers; the stem and classifier keep 8-bit weights
  (the first and last layer are the most sensitive), the body uses ``weight_bits``.

Gates are not built here: they run on the board's ARM CPU in float (FINN has no LSTM or sigmoid).
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


def is_quantized(module: nn.Module) -> bool:
    """Whether ``module`` contains any Brevitas layer."""
    return any(type(m).__module__.startswith("brevitas") for m in module.modules())

"""The Dual Dynamic Inference model family: CIFAR ResNets (6n+2) with MGL2S gates and RADI exits.

Paper: "Dual Dynamic Inference", IEEE JSTSP 2020, sections III-A (MGL2S), III-B (RADI), IV-A.

Structure (CIFAR ResNet of He et al., basic blocks, widths 16/32/64, n blocks per stage)::

    image (B,3,32,32) in [0,1] -> normalize -> input quantizer -> stem conv3x3 -> BN -> ReLU
      -> stage 1: n blocks at 32x32x16 -> stage 2: n blocks at 16x16x32 -> stage 3: n at 8x8x64
      -> global average pool -> fully connected -> logits

Gating (``gating=``):
- ``"layer"``: the layer gate G^L of Fig. 2a before every block: average pool -> 1x1 conv to 10
  -> one LSTM cell (hidden 10) shared by all blocks -> linear to a scalar -> sigmoid -> 0/1.
- ``"channel"``: the channel gate G^C of Fig. 2b: 3x3 conv stride 2 -> global average pool ->
  fully connected c x k -> sigmoid -> 0/1 per output channel of the block.
- ``"mgl2s"``: both, coarse to fine (Eq. 3): G^C is evaluated only for blocks that G^L runs.
- ``"none"``: the plain backbone.
Hard 0/1 decisions use a straight-through estimator in training, so gradients reach both gates.

Skipping semantics (Eq. 1-3). A skipped block, or a skipped output channel of a running block,
passes its input through unchanged. A channel mask applies to the block's intermediate channels
as well as to its outputs, so a block that keeps r of its k channels is a thinner block: conv1
computes r/k of its filters and conv2 computes (r/k)^2 of its MACs; the cost model counts that.
Downsampling blocks (first block of stages 2 and 3) cannot pass their input, whose shape differs:
they pass their shortcut projection instead (as SkipNet does). The projection (a 1x1 conv, about
4% of the block) therefore always runs; skipping such a block saves its two 3x3 convolutions.

Quantization (``quant=``, FINN constraints): one quantized ReLU per stage, ``stream_acts[s]``,
quantizes the whole residual stream of that stage: the stem's or previous stage's output feeding
it, the residual branch of every block, the shortcut projection, and every block output. Both
inputs of every residual add therefore share one quantizer (FINN's requirement), and skipping a
block or a channel leaves the stream's datatype and scale unchanged, so the next block (a
separately compiled FINN graph) sees the integer format it was built for.

Quantized gates (``quant_gates``, the default of a quantized network): the channel gate and the
layer gate's pool and 1x1 conv are built from Brevitas layers too (train/quant.py), so they
compile to FINN engines; the layer gate's LSTM step stays float (it runs on the ARM). The spec
records the choice: checkpoints written before it existed hold float gates and rebuild them
(train/checkpoint.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from train import quant as Q
from train.cost import trace_costs
from train.data import CIFAR10_MEAN, CIFAR10_STD
from train.errors import ConfigError

NUM_CLASSES = 10
GATINGS = ("none", "layer", "channel", "mgl2s")
STAGE_WIDTHS = (16, 32, 64)
GATE_HIDDEN = 10  # LSTM hidden size of the layer gate (paper, section IV-A)
GATE_INIT_BIAS = 1.0  # gates start open (sigmoid(1) = 0.73) so the warm-up starts at skip ratio ~0


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluation mode for the duration, restoring every submodule's own mode afterwards.

    ``model.train(was_training)`` would not do: it sets every submodule to the same mode, and
    training stages keep frozen parts (e.g. the backbone's BN layers in the warm-up) in eval mode.
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def hard_gate(prob: Tensor) -> Tensor:
    """0/1 decision ``prob > 0.5`` with a straight-through gradient.

    The forward value is exactly 0 or 1 (``prob - prob.detach()`` is exactly zero), the backward
    pass uses the gradient of ``prob``.
    """
    hard = (prob > 0.5).to(prob.dtype)
    return hard + (prob - prob.detach())


@dataclass(frozen=True)
class BlockInfo:
    """Static description of one residual block."""

    index: int
    stage: int  # 0-based stage
    in_channels: int
    out_channels: int
    stride: int
    in_size: int  # spatial size of the input feature map
    out_size: int

    @property
    def downsample(self) -> bool:
        return self.stride != 1 or self.in_channels != self.out_channels


class BasicBlock(nn.Module):
    """Residual basic block with optional per-image layer gate and channel mask."""

    def __init__(self, info: BlockInfo, spec: Q.QuantSpec | None, stream_act: nn.Module) -> None:
        super().__init__()
        self.info = info
        cin, cout, stride = info.in_channels, info.out_channels, info.stride
        self.conv1 = Q.conv(spec, cin, cout, 3, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = Q.relu(spec)
        self.conv2 = Q.conv(spec, cout, cout, 3)
        self.bn2 = nn.BatchNorm2d(cout)
        # Shared with every block of the stage: see the module docstring (FINN residual adds).
        self.stream_act = stream_act
        self.shortcut: nn.Module | None = None
        if info.downsample:
            self.shortcut = nn.Sequential(Q.conv(spec, cin, cout, 1, stride), nn.BatchNorm2d(cout))

    def passthrough(self, x: Tensor) -> Tensor:
        """What the block outputs where it is skipped: its input, or its shortcut projection."""
        if self.shortcut is None:
            return x
        return self.stream_act(self.shortcut(x))  # (B, C_out, H/2, W/2)

    def forward(
        self,
        x: Tensor,
        channel_mask: Tensor | None = None,
        layer_gate: Tensor | None = None,
        skip: Tensor | None = None,
    ) -> Tensor:
        """Run the block on ``x`` (B, C_in, H, W).

        ``channel_mask`` (B, C_out) and ``layer_gate`` (B,) hold 0/1 values (straight-through in
        training); ``skip`` is ``passthrough(x)`` if the caller already has it.
        """
        if skip is None:
            skip = self.passthrough(x)  # (B, C_out, H', W')
        h = self.act1(self.bn1(self.conv1(x)))  # (B, C_out, H', W')
        if channel_mask is not None:
            h = h * channel_mask[:, :, None, None]  # thinner block: masked channels do no work
        r = self.stream_act(self.bn2(self.conv2(h)))  # residual branch, stream quantizer
        y = self.stream_act(r + skip)  # residual add: both inputs share stream_act
        keep = None
        if channel_mask is not None:
            keep = channel_mask[:, :, None, None]  # (B, C_out, 1, 1)
        if layer_gate is not None:
            g = layer_gate[:, None, None, None]  # (B, 1, 1, 1)
            keep = g if keep is None else keep * g
        if keep is None:
            return y
        if keep.requires_grad:  # training the gates (also in the warm-up, backbone in eval mode)
            return keep * y + (1.0 - keep) * skip  # differentiable in the gates (Eq. 3)
        return torch.where(keep > 0.5, y, skip)  # exact pass-through


class LayerGateEmbed(nn.Module):
    """Per-block part of G^L: average pool -> 1x1 conv to the LSTM input size.

    Quantized (``spec`` set), the pooled input and the embedding are quantized as well
    (:func:`train.quant.pooled`, :func:`train.quant.gate_code`), so pool and conv compile to one
    FINN engine whose output is the integer 10-vector the float LSTM step takes.
    """

    def __init__(
        self, in_channels: int, hidden: int = GATE_HIDDEN, spec: Q.QuantSpec | None = None
    ) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pool_quant = Q.pooled(spec)
        self.conv = Q.pointwise(spec, in_channels, hidden)
        self.code = Q.gate_code(spec)

    def forward(self, x: Tensor) -> Tensor:
        return self.code(self.conv(self.pool_quant(self.pool(x)))).flatten(1)  # (B, hidden)


class LayerGateRNN(nn.Module):
    """Shared part of G^L: one LSTM cell and a linear projection to a probability."""

    def __init__(self, hidden: int = GATE_HIDDEN) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(hidden, hidden)
        self.proj = nn.Linear(hidden, 1)
        nn.init.constant_(self.proj.bias, GATE_INIT_BIAS)

    def forward(self, e: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h, c = self.cell(e, (h, c))  # (B, hidden) each
        prob = torch.sigmoid(self.proj(h)).squeeze(1)  # (B,)
        return prob, h, c


class ChannelGate(nn.Module):
    """G^C: 3x3 conv stride 2 -> BN -> ReLU -> global average pool -> FC c x k -> sigmoid.

    Quantized (``spec`` set), the conv has the backbone's weight bits, the ReLU its activation
    bits, the pooled vector is requantized (:func:`train.quant.pooled`) and the FC has 8-bit
    weights with a float bias: the integer form FINN runs as one engine. The decision
    ``sigmoid(logit) > 0.5``, i.e. ``logit > 0``, is then a one-step threshold on the FC's
    accumulator (the bias, calibration offset included, moves that threshold).
    """

    def __init__(
        self, in_channels: int, out_channels: int, spec: Q.QuantSpec | None = None
    ) -> None:
        super().__init__()
        self.conv = Q.conv(spec, in_channels, in_channels, 3, 2)
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = Q.relu(spec)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pool_quant = Q.pooled(spec)
        self.fc = Q.linear(spec, in_channels, out_channels)
        nn.init.constant_(self.fc.bias, GATE_INIT_BIAS)

    def logits(self, x: Tensor) -> Tensor:
        """(B, C_out) keep logits; a channel is kept where its logit is > 0."""
        z = self.pool_quant(self.pool(self.relu(self.bn(self.conv(x))))).flatten(1)  # (B, C_in)
        return self.fc(z)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(x))  # (B, C_out) keep probabilities


class ExitBranch(nn.Module):
    """RADI branch classifier (Fig. 5b): max-pool heavy, two 3x3 convs, pool, classifier.

    Stride-2 max pools first bring the map down to 8x8 (two at stage 1, one at stage 2), then
    conv3x3 -> 64, BN, ReLU, max pool to 4x4, conv3x3 64 -> 64, BN, ReLU, global average pool,
    fully connected. Early, high-resolution exits thus see coarse features cheaply.
    """

    width = 64

    def __init__(self, spec: Q.QuantSpec | None, in_channels: int, in_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size = in_size
        while size > 8:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        w = self.width
        layers += [Q.conv(spec, in_channels, w, 3), nn.BatchNorm2d(w), Q.relu(spec)]
        layers += [nn.MaxPool2d(2), Q.conv(spec, w, w, 3), nn.BatchNorm2d(w), Q.relu(spec)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = Q.linear(spec, w, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))  # (B, classes)


def exit_positions(blocks_per_stage: int, num_stages: int = 3) -> list[int]:
    """Global indices of the blocks after which an exit branch sits (paper, section IV-A).

    Two per stage, after the blocks at about 1/4 and 3/4 of its depth (the 2nd and 6th of 8 in
    the paper's example), rounded half up and at least the first block; coinciding positions
    collapse into one and a position at the very end of the network is dropped (the final
    classifier is there). ResNet-74 (12 per stage) gets six: after blocks 3, 9, 15, 21, 27, 33.
    """
    n = blocks_per_stage
    positions: list[int] = []
    for stage in range(num_stages):
        for frac in (0.25, 0.75):
            k = max(1, math.floor(frac * n + 0.5))  # 1-based position within the stage
            pos = stage * n + k - 1
            if pos not in positions and pos != num_stages * n - 1:
                positions.append(pos)
    return positions


@dataclass
class DDIOutput:
    """What a forward pass returns, per image."""

    logits: Tensor
    """(B, classes) final classifier."""
    exit_logits: list[Tensor]
    """One (B, classes) tensor per exit branch in depth order; empty without exits."""
    block_gates: Tensor
    """(B, blocks): 1 where the block ran (straight-through values in training)."""
    channel_masks: list[Tensor]
    """Per block, (B, C_out): 1 where the output channel was computed; zeros for skipped blocks."""
    layer_probs: Tensor | None
    """(B, blocks) layer-gate probabilities, or None without layer gates."""
    channel_fraction: Tensor
    """(B, blocks): fraction of a block's channels the channel gate keeps when the block runs
    (1 without channel gates; 0 in evaluation where the block was skipped: G^C never ran)."""
    macs: Tensor
    """(B,) MACs executed up to the final classifier, gate overhead included (differentiable
    in the gates in training)."""


class DDIResNet(nn.Module):
    """A CIFAR ResNet with optional MGL2S gating, RADI exits and Brevitas quantization.

    Build it through :func:`create_model`; ``spec()`` returns the registry name and constructor
    arguments that rebuild it (what a checkpoint stores).
    """

    def __init__(
        self,
        depth: int,
        *,
        gating: str = "none",
        exits: bool = False,
        quant: dict[str, int] | None = None,
        quant_gates: bool | None = None,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"ResNet depth {depth!r} is not of the form 6n+2 with n >= 1")
        if gating not in GATINGS:
            raise ConfigError(f"gating {gating!r} is unknown; choose one of {', '.join(GATINGS)}")
        if image_size % 4:
            raise ConfigError(f"image_size {image_size!r} must be a multiple of 4")
        if quant_gates is None:
            quant_gates = quant is not None
        if quant_gates and quant is None:
            raise ConfigError(
                "quant_gates=True needs a quantized network; pass quant= or quant_gates=False"
            )
        self.depth = depth
        self.gating = gating
        self.block_drop = 0.0
        """Training only, ungated models: the probability that a block is skipped per image
        (stochastic depth, Huang et al., ECCV 2016, with the skip semantics of a layer gate and
        no rescaling, so a network trained with it keeps working where gates skip blocks)."""
        self.has_exits = bool(exits)
        self.quant_spec = Q.QuantSpec(**quant) if quant is not None else None
        self.quant_gates = bool(quant_gates)
        self.image_size = image_size
        self._name = f"resnet{depth}"
        n = (depth - 2) // 6
        self.blocks_per_stage = n
        spec = self.quant_spec

        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), persistent=True)
        self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, 3, 1, 1), persistent=True)
        self.input_quant = Q.input_quant(spec)
        # One stream quantizer per stage (module docstring); the stem feeds stage 1's.
        self.stream_acts = nn.ModuleList(Q.relu(spec) for _ in STAGE_WIDTHS)
        self.stem = nn.Sequential(
            Q.conv(spec, 3, STAGE_WIDTHS[0], 3, edge=True),
            nn.BatchNorm2d(STAGE_WIDTHS[0]),
            self.stream_acts[0],
        )
        infos: list[BlockInfo] = []
        cin, size = STAGE_WIDTHS[0], image_size
        for stage, width in enumerate(STAGE_WIDTHS):
            for j in range(n):
                stride = 2 if (stage > 0 and j == 0) else 1
                infos.append(BlockInfo(len(infos), stage, cin, width, stride, size, size // stride))
                cin, size = width, size // stride
        self.block_infos = tuple(infos)
        self.blocks = nn.ModuleList(
            BasicBlock(info, spec, self.stream_acts[info.stage]) for info in infos
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = Q.linear(spec, STAGE_WIDTHS[-1], NUM_CLASSES)

        self.layer_gates: nn.ModuleList | None = None
        self.gate_rnn: LayerGateRNN | None = None
        self.channel_gates: nn.ModuleList | None = None
        gate_spec = spec if self.quant_gates else None
        if gating in ("layer", "mgl2s"):
            self.layer_gates = nn.ModuleList(
                LayerGateEmbed(i.in_channels, spec=gate_spec) for i in infos
            )
            self.gate_rnn = LayerGateRNN()  # float: the LSTM step runs on the ARM
        if gating in ("channel", "mgl2s"):
            self.channel_gates = nn.ModuleList(
                ChannelGate(i.in_channels, i.out_channels, gate_spec) for i in infos
            )
        self.exit_positions: tuple[int, ...] = ()
        self.exits: nn.ModuleList | None = None
        if exits:
            self.exit_positions = tuple(exit_positions(n))
            self.exits = nn.ModuleList(
                ExitBranch(spec, infos[p].out_channels, infos[p].out_size)
                for p in self.exit_positions
            )
        self._init_weights()
        self._costs = None

    # ----------------------------------------------------------------------------------------
    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def spec(self) -> dict[str, Any]:
        """Registry name and constructor arguments: ``create_model(**spec)`` rebuilds the model."""
        return {
            "name": self._name,
            "kwargs": {
                "gating": self.gating,
                "exits": self.has_exits,
                "quant": self.quant_spec.to_dict() if self.quant_spec else None,
                "quant_gates": self.quant_gates,
                "image_size": self.image_size,
            },
        }

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def has_layer_gates(self) -> bool:
        return self.layer_gates is not None

    @property
    def has_channel_gates(self) -> bool:
        return self.channel_gates is not None

    def costs(self):
        """The MAC cost model of this network (traced once, then cached)."""
        if self._costs is None:
            self._costs = trace_costs(self)
        return self._costs

    # ----------------------------------------------------------------------------------------
    def preprocess(self, images: Tensor) -> Tensor:
        """Images (B,3,H,W) in [0,1] -> normalized, input-quantized tensor for the stem."""
        return self.input_quant((images - self.mean) / self.std)

    def layer_gate_step(
        self, index: int, x: Tensor, h: Tensor, c: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One step of G^L before block ``index``: (prob (B,), h', c')."""
        assert self.layer_gates is not None and self.gate_rnn is not None
        return self.gate_rnn(self.layer_gates[index](x), h, c)

    def forward(self, images: Tensor, execute_all: bool = False) -> DDIOutput:
        """Run the network on images (B,3,H,W) in [0,1].

        Training mode executes every block for every image and mixes outputs with the
        straight-through gate values. Evaluation mode really skips: a block runs only on the
        images whose layer gate keeps it. ``execute_all`` (evaluation only) runs every gate,
        block and exit on every image without applying decisions; the cost tracer uses it.
        """
        x = self.stem(self.preprocess(images))  # (B, 16, H, W)
        if self.training:
            return self._forward_train(x)
        return self._forward_eval(x, execute_all)

    def _gate_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = x.new_zeros(x.shape[0], GATE_HIDDEN)
        return z, z

    def _exit(self, i: int, x: Tensor, exit_logits: list[Tensor]) -> None:
        if self.exits is not None and i in self.exit_positions:
            exit_logits.append(self.exits[self.exit_positions.index(i)](x))

    def _forward_train(self, x: Tensor) -> DDIOutput:
        B = x.shape[0]
        h, c = self._gate_state(x)
        gates, probs, masks, fractions, exit_logits = [], [], [], [], []
        for i, block in enumerate(self.blocks):
            g = m = None
            if self.has_layer_gates:
                p, h, c = self.layer_gate_step(i, x, h, c)
                g = hard_gate(p)  # (B,)
                probs.append(p)
            elif self.block_drop:
                g = (torch.rand(B, device=x.device) >= self.block_drop).to(x.dtype)  # (B,)
            if self.has_channel_gates:
                m = hard_gate(self.channel_gates[i](x))  # (B, C_out)
            x = block(x, channel_mask=m, layer_gate=g)
            g = x.new_ones(B) if g is None else g
            m = x.new_ones(B, block.info.out_channels) if m is None else m
            gates.append(g)
            fractions.append(m.mean(dim=1))  # channels a running block computes
            masks.append(m * g[:, None])  # MGL2S: a skipped block computes no channel
            self._exit(i, x, exit_logits)
        logits = self.fc(self.pool(x).flatten(1))  # (B, classes)
        block_gates = torch.stack(gates, dim=1)  # (B, blocks)
        fraction = torch.stack(fractions, dim=1)  # (B, blocks)
        return DDIOutput(
            logits=logits,
            exit_logits=exit_logits,
            block_gates=block_gates,
            channel_masks=masks,
            layer_probs=torch.stack(probs, dim=1) if probs else None,
            channel_fraction=fraction,
            macs=self.costs().executed_macs(block_gates, fraction),
        )

    @torch.no_grad()
    def _forward_eval(self, x: Tensor, execute_all: bool) -> DDIOutput:
        B = x.shape[0]
        h, c = self._gate_state(x)
        gates, probs, masks, exit_logits = [], [], [], []
        for i, block in enumerate(self.blocks):
            keep = torch.ones(B, dtype=torch.bool, device=x.device)
            if self.has_layer_gates:
                p, h, c = self.layer_gate_step(i, x, h, c)
                probs.append(p)
                if not execute_all:
                    keep = p > 0.5
            mask = torch.zeros(B, block.info.out_channels, device=x.device)
            idx = keep.nonzero().squeeze(1)
            skip = block.passthrough(x)  # downsampling blocks: the projection always runs
            if execute_all:
                if self.has_channel_gates:
                    self.channel_gates[i](x)  # traced for its cost, decision not applied
                out = block(x, skip=skip)
                mask.fill_(1.0)
            else:
                out = skip.clone()
                if idx.numel():
                    xs = x.index_select(0, idx)
                    ms = None
                    if self.has_channel_gates:
                        ms = (self.channel_gates[i](xs) > 0.5).to(x.dtype)  # (b, C_out)
                    ys = block(xs, channel_mask=ms, skip=skip.index_select(0, idx))
                    out.index_copy_(0, idx, ys)
                    mask.index_copy_(0, idx, ms if ms is not None else torch.ones_like(mask[idx]))
            x = out
            gates.append(keep.to(x.dtype))
            masks.append(mask)
            self._exit(i, x, exit_logits)
        logits = self.fc(self.pool(x).flatten(1))
        block_gates = torch.stack(gates, dim=1)
        fraction = torch.stack([m.mean(dim=1) for m in masks], dim=1)  # (B, blocks)
        return DDIOutput(
            logits=logits,
            exit_logits=exit_logits,
            block_gates=block_gates,
            channel_masks=masks,
            layer_probs=torch.stack(probs, dim=1) if probs else None,
            channel_fraction=fraction,
            # The cost tracer runs with execute_all and must not ask for the costs it traces.
            # float64: MAC totals of deep networks exceed float32's exact integers (2**24)
            macs=(
                block_gates.new_zeros(B)
                if execute_all
                else self.costs().executed_macs(block_gates.double(), fraction.double())
            ),
        )


# -------------------------------------------------------------------------------------------
# Registry (timm style): every variant by name; create_model raises on unknown names.

_REGISTRY: dict[str, Callable[..., DDIResNet]] = {}
PAPER_DEPTHS = (8, 14, 20, 38, 74, 110)


def _register(depth: int) -> None:
    def factory(**kwargs: Any) -> DDIResNet:
        return DDIResNet(depth, **kwargs)

    factory.__name__ = f"resnet{depth}"
    factory.__doc__ = f"CIFAR ResNet-{depth}: {(depth - 2) // 6} basic blocks per stage."
    _REGISTRY[factory.__name__] = factory


for _depth in PAPER_DEPTHS:
    _register(_depth)


def list_models() -> list[str]:
    """Registered model names, shallowest first."""
    return list(_REGISTRY)


def create_model(name: str, **kwargs: Any) -> DDIResNet:
    """Build a registered model; unknown names raise :class:`ConfigError`."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; registered models: {', '.join(_REGISTRY)}"
        ) from None
    model = factory(**kwargs)
    model._name = name
    return model

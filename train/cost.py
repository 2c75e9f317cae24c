"""MAC cost model, counted from the model itself.

:func:`trace_costs` runs one forward pass that executes every layer (``execute_all``) with
forward hooks on every MAC-bearing module (convolutions, linear layers, the LSTM cell), and
attributes each call to its owner by module name: the stem, a block (conv1, conv2, shortcut),
a block's layer gate (its 1x1 embedding plus one step of the shared LSTM and projection), a
block's channel gate, an exit branch, or the final classifier. Nothing is tabulated by hand.

Only multiply-accumulates are counted: batch norm, ReLU, pooling, residual adds and the LSTM's
elementwise gate arithmetic are not MACs. The cost of one image is then

    stem + head + sum_i [ LG_i + SC_i + g_i * (CG_i + conv1_i * r_i + conv2_i * r_i^2) ]

with g_i the layer-gate decision, r_i the fraction of channels the block computes (the channel
mask thins conv1's outputs and conv2's inputs and outputs, see :mod:`train.model`), LG_i and
CG_i the gate costs (present only where the model has those gates; CG_i only where the block
runs: MGL2S) and SC_i the shortcut projection of a downsampling block, which always runs.
Savings are always reported against the plain backbone (no gates), gate overhead included.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from train import energy as E
from train.energy import LayerShape

if TYPE_CHECKING:
    from train.model import DDIResNet

OWNERS = ("stem", "block", "layer_gate", "channel_gate", "exit", "head")
_NAME_RULES = (
    (re.compile(r"^stem\."), "stem"),
    (re.compile(r"^blocks\.(\d+)\.(.+)$"), "block"),
    (re.compile(r"^layer_gates\.(\d+)\.(.+)$"), "layer_gate"),
    (re.compile(r"^gate_rnn\.(.+)$"), "layer_gate"),  # shared: attributed by call order
    (re.compile(r"^channel_gates\.(\d+)\.(.+)$"), "channel_gate"),
    (re.compile(r"^exits\.(\d+)\.(.+)$"), "exit"),
    (re.compile(r"^fc$"), "head"),
)


@dataclass(frozen=True)
class LayerRecord:
    """One executed MAC-bearing layer call in a full forward pass of one image."""

    owner: str  # one of OWNERS
    index: int  # block or exit index; -1 for the stem and the head
    module: str  # module name in the model, e.g. "blocks.3.conv1"
    shape: LayerShape

    @property
    def macs(self) -> int:
        return self.shape.macs


def _shape_of(name: str, module: nn.Module, inp: Tensor, out: Tensor) -> LayerShape:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return LayerShape(
            name=name,
            kind="conv",
            in_channels=module.in_channels,
            out_channels=module.out_channels,
            kernel_h=kh,
            kernel_w=kw,
            stride=module.stride[0],
            in_h=inp.shape[2],
            in_w=inp.shape[3],
            out_h=out.shape[2],
            out_w=out.shape[3],
            groups=module.groups,
        )
    if isinstance(module, nn.Linear):
        i, o = module.in_features, module.out_features
    else:  # nn.LSTMCell: four gates, each a linear map of [input, hidden]
        i, o = module.input_size + module.hidden_size, 4 * module.hidden_size
    return LayerShape(name, "linear", i, o, 1, 1, 1, 1, 1, 1, 1)


@dataclass(frozen=True)
class CostModel:
    """Per-image MACs of every part of a network, and the executed cost given gate decisions."""

    records: tuple[LayerRecord, ...]
    stem: int
    head: int
    conv1: tuple[int, ...]  # per block
    conv2: tuple[int, ...]
    shortcut: tuple[int, ...]
    layer_gate: tuple[int, ...]  # per block; zeros without layer gates
    channel_gate: tuple[int, ...]  # per block; zeros without channel gates
    exits: tuple[int, ...]  # per exit branch
    exit_positions: tuple[int, ...]  # block index after which each exit sits

    @property
    def num_blocks(self) -> int:
        return len(self.conv1)

    @property
    def block_body(self) -> tuple[int, ...]:
        """MACs of each block at full width (two 3x3 convs and the shortcut projection)."""
        return tuple(
            a + b + s for a, b, s in zip(self.conv1, self.conv2, self.shortcut, strict=True)
        )

    @property
    def full(self) -> int:
        """MACs of the plain backbone (no gates, no exits): the reference for all savings."""
        return self.stem + sum(self.block_body) + self.head

    @property
    def max_executed(self) -> int:
        """MACs when every gate runs and keeps everything (gate overhead on top of ``full``)."""
        return self.full + sum(self.layer_gate) + sum(self.channel_gate)

    def block_costs(self, block_gates: Tensor, fractions: Tensor) -> Tensor:
        """Per-image, per-block MACs (B, blocks), gates included.

        ``block_gates`` (B, blocks): 1 where the block ran; ``fractions`` (B, blocks): fraction of
        the block's channels computed when it runs. Differentiable in both.
        """
        like = dict(device=block_gates.device, dtype=block_gates.dtype)
        c1 = torch.as_tensor(self.conv1, **like)
        c2 = torch.as_tensor(self.conv2, **like)
        fixed = torch.as_tensor(self.layer_gate, **like) + torch.as_tensor(self.shortcut, **like)
        cg = torch.as_tensor(self.channel_gate, **like)
        body = cg + c1 * fractions + c2 * fractions * fractions
        return fixed + block_gates * body

    def executed_macs(self, block_gates: Tensor, fractions: Tensor) -> Tensor:
        """Per-image MACs (B,) up to the final classifier, gate overhead included."""
        return self.stem + self.head + self.block_costs(block_gates, fractions).sum(dim=1)

    def savings(self, executed: Tensor | float) -> float:
        """Compute savings against the plain backbone: ``1 - mean(executed) / full``."""
        mean = float(executed.float().mean()) if isinstance(executed, Tensor) else float(executed)
        return 1.0 - mean / self.full

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (MACs per part) for reports and manifests."""
        return {
            "full_macs": self.full,
            "max_executed_macs": self.max_executed,
            "stem_macs": self.stem,
            "head_macs": self.head,
            "blocks": [
                {
                    "conv1_macs": a,
                    "conv2_macs": b,
                    "shortcut_macs": s,
                    "layer_gate_macs": lg,
                    "channel_gate_macs": cg,
                }
                for a, b, s, lg, cg in zip(
                    self.conv1,
                    self.conv2,
                    self.shortcut,
                    self.layer_gate,
                    self.channel_gate,
                    strict=True,
                )
            ],
            "exits": [
                {"after_block": p, "macs": m}
                for p, m in zip(self.exit_positions, self.exits, strict=True)
            ],
            "layers": [
                {
                    "owner": r.owner,
                    "index": r.index,
                    "module": r.module,
                    **asdict(r.shape),
                    "macs": r.macs,
                }
                for r in self.records
            ],
        }


def _attribute(name: str, rnn_calls: dict[str, int]) -> tuple[str, int]:
    for pattern, owner in _NAME_RULES:
        match = pattern.match(name)
        if not match:
            continue
        if owner in ("stem", "head"):
            return owner, -1
        if name.startswith("gate_rnn."):
            call = rnn_calls.get(name, 0)
            rnn_calls[name] = call + 1
            return owner, call
        return owner, int(match.group(1))
    raise AssertionError(f"MAC-bearing module {name!r} has no owner rule")


@torch.no_grad()
def trace_costs(model: DDIResNet) -> CostModel:
    """Count the MACs of every part of ``model`` with forward hooks on one full pass."""
    calls: list[tuple[str, nn.Module, Tensor, Tensor]] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.LSTMCell)):
            handles.append(
                module.register_forward_hook(
                    lambda mod, inp, out, name=name: calls.append((name, mod, inp[0], out))
                )
            )
    device = next(model.parameters()).device
    # Evaluation mode for the pass, every submodule's own mode restored after it (as
    # train.model.eval_mode does; train.model imports this module, so not imported back).
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        size = model.image_size
        model(torch.zeros(1, 3, size, size, device=device), execute_all=True)
    finally:
        for m, training in modes.items():
            m.training = training
        for handle in handles:
            handle.remove()

    nb, ne = model.num_blocks, len(model.exit_positions)
    stem = head = 0
    conv1, conv2, shortcut = [0] * nb, [0] * nb, [0] * nb
    layer_gate, channel_gate, exits = [0] * nb, [0] * nb, [0] * ne
    records: list[LayerRecord] = []
    rnn_calls: dict[str, int] = {}
    for name, module, inp, out in calls:
        if isinstance(module, nn.LSTMCell):
            out = out[0]
        owner, index = _attribute(name, rnn_calls)
        shape = _shape_of(name, module, inp, out)
        records.append(LayerRecord(owner, index, name, shape))
        macs = shape.macs
        if owner == "stem":
            stem += macs
        elif owner == "head":
            head += macs
        elif owner == "layer_gate":
            layer_gate[index] += macs
        elif owner == "channel_gate":
            channel_gate[index] += macs
        elif owner == "exit":
            exits[index] += macs
        else:
            role = name.split(".", 2)[2]
            part = {"conv1": conv1, "conv2": conv2}.get(role, shortcut)
            part[index] += macs
    return CostModel(
        records=tuple(records),
        stem=stem,
        head=head,
        conv1=tuple(conv1),
        conv2=tuple(conv2),
        shortcut=tuple(shortcut),
        layer_gate=tuple(layer_gate),
        channel_gate=tuple(channel_gate),
        exits=tuple(exits),
        exit_positions=tuple(model.exit_positions),
    )


# ---------------------------------------------------------------------------------------------
# Modelled energy (the paper's Eq. 6) of executed work


@dataclass(frozen=True)
class EnergyCost:
    """Per-image energy of executed work under the analytical model of :mod:`train.energy`.

    Every MAC-bearing layer (gates included) is priced as a layer of the modelled accelerator.
    A running block that keeps c of its k channels costs E(conv1; in=all, out=c) +
    E(conv2; in=c, out=c), looked up exactly per c in evaluation; training uses the fitted
    smooth surfaces (:class:`train.energy.EnergySurface`) so the loss is differentiable.
    """

    units_name: str
    unit: str
    citation: str
    accelerator: dict[str, Any]
    stem: float
    head: float
    fixed: tuple[float, ...]  # per block: layer gate + shortcut (always spent)
    channel_gate: tuple[float, ...]  # per block: spent where the block runs
    body_table: tuple[tuple[float, ...], ...]  # per block: body energy for c = 0..k channels
    surfaces: tuple[tuple[Any, Any], ...] | None  # per block: (conv1, conv2) EnergySurface

    @property
    def full(self) -> float:
        """Energy of the plain backbone (no gates): the reference for energy savings."""
        shortcut = sum(self.fixed) - sum(self._layer_gate)
        return self.stem + self.head + shortcut + sum(t[-1] for t in self.body_table)

    @property
    def _layer_gate(self) -> tuple[float, ...]:
        return self.accelerator["_layer_gate"]

    @classmethod
    def from_model(
        cls, model: DDIResNet, units: str = "eyeriss", *, surfaces: bool = False
    ) -> EnergyCost:
        """Price ``model``'s layers (cached on the model per unit table)."""
        cache = model.__dict__.setdefault("_energy_costs", {})
        key = (units, surfaces)
        if key in cache:
            return cache[key]
        table = E.get_units(units)
        accel = E.AcceleratorConfig()
        costs = model.costs()

        def price(owner: str, index: int | None = None, role: str | None = None) -> float:
            total = 0.0
            for r in costs.records:
                if r.owner != owner or (index is not None and r.index != index):
                    continue
                if role is not None and r.module.split(".", 2)[2] != role:
                    continue
                total += E.layer_energy(r.shape, accel, table)
            return total

        nb = costs.num_blocks
        layer_gate = tuple(price("layer_gate", i) for i in range(nb))
        shortcut = tuple(
            sum(
                E.layer_energy(r.shape, accel, table)
                for r in costs.records
                if r.owner == "block" and r.index == i and ".shortcut." in r.module
            )
            for i in range(nb)
        )
        bodies, fits = [], []
        for i in range(nb):
            conv1 = next(r.shape for r in costs.records if r.module == f"blocks.{i}.conv1")
            conv2 = next(r.shape for r in costs.records if r.module == f"blocks.{i}.conv2")
            k = conv1.out_channels
            row = [0.0] + [
                E.layer_energy(conv1, accel, table, None, c)
                + E.layer_energy(conv2, accel, table, c, c)
                for c in range(1, k + 1)
            ]
            bodies.append(tuple(row))
            if surfaces:
                fits.append(
                    (
                        E.fit_energy_surface(conv1, accel, table),
                        E.fit_energy_surface(conv2, accel, table),
                    )
                )
        result = cls(
            units_name=table.name,
            unit=table.unit,
            citation=table.citation,
            accelerator={**{k: v for k, v in accel.__dict__.items()}, "_layer_gate": layer_gate},
            stem=price("stem"),
            head=price("head"),
            fixed=tuple(a + b for a, b in zip(layer_gate, shortcut, strict=True)),
            channel_gate=tuple(price("channel_gate", i) for i in range(nb)),
            body_table=tuple(bodies),
            surfaces=tuple(fits) if surfaces else None,
        )
        cache[key] = result
        return result

    def describe(self) -> dict[str, Any]:
        return {
            "units": self.units_name,
            "unit": self.unit,
            "citation": self.citation,
            "accelerator": {k: v for k, v in self.accelerator.items() if not k.startswith("_")},
        }

    def executed(self, block_gates: Tensor, fractions: Tensor) -> Tensor:
        """Exact per-image energy (B,) for hard decisions (gates 0/1, fractions c/k)."""
        like = dict(device=block_gates.device, dtype=torch.float64)
        gates = block_gates.detach().to(torch.float64)
        total = torch.full((gates.shape[0],), self.stem + self.head, **like)
        for i, row in enumerate(self.body_table):
            k = len(row) - 1
            kept = (fractions[:, i].detach().to(torch.float64) * k).round().long().clamp(0, k)
            body = torch.as_tensor(row, **like)[kept]
            total = total + self.fixed[i] + gates[:, i] * (self.channel_gate[i] + body)
        return total

    def surrogate(self, block_gates: Tensor, fractions: Tensor) -> Tensor:
        """Differentiable per-image energy (B,) from the fitted surfaces (training loss)."""
        if self.surfaces is None:
            raise AssertionError("EnergyCost built without surfaces=True")
        total = block_gates.new_full((block_gates.shape[0],), self.stem + self.head)
        for i, (s1, s2) in enumerate(self.surfaces):
            r = fractions[:, i]
            body = s1(1.0, r) + s2(r, r)
            total = total + self.fixed[i] + block_gates[:, i] * (self.channel_gate[i] + body)
        return total

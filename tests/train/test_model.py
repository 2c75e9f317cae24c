"""The DDI model family: registry, skipping semantics, gates, exits, quantization."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from train.errors import ConfigError
from train.model import (
    PAPER_DEPTHS,
    DDIResNet,
    create_model,
    exit_positions,
    hard_gate,
    list_models,
)
from train.quant import is_quantized

QUANT = {"weight_bits": 4, "act_bits": 4, "input_bits": 8}


def _set_layer_gates(model: DDIResNet, bias: float) -> None:
    """Make every layer-gate decision constant: keep (bias > 0) or skip (bias < 0)."""
    with torch.no_grad():
        model.gate_rnn.proj.weight.zero_()
        model.gate_rnn.proj.bias.fill_(bias)


def _calibrate(model: DDIResNet, steps: int = 3) -> None:
    """A few training-mode passes so BN statistics and Brevitas scales are realistic."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.rand(16, 3, 32, 32))
    model.eval()


def test_registry_names_and_unknown_name():
    assert list_models() == [f"resnet{d}" for d in PAPER_DEPTHS]
    with pytest.raises(ConfigError, match=r"unknown model 'resnet9'.*resnet8"):
        create_model("resnet9")


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_trains_and_evaluates(name):
    depth = int(name.removeprefix("resnet"))
    n = (depth - 2) // 6
    model = create_model(name, gating="mgl2s", exits=True)
    convs = [m for m in model.blocks.modules() if isinstance(m, torch.nn.Conv2d)]
    # 6n+2 layers: 2 convs per block, the stem conv and the classifier (+2 projection shortcuts)
    assert len(convs) == 2 * 3 * n + 2
    assert model.num_blocks == 3 * n
    x = torch.rand(2, 3, 32, 32)
    model.train()
    out = model(x)
    assert out.logits.shape == (2, 10)
    assert out.block_gates.shape == out.channel_fraction.shape == (2, 3 * n)
    assert len(out.exit_logits) == len(model.exit_positions) >= 2
    F.cross_entropy(out.logits, torch.zeros(2, dtype=torch.long)).backward()
    model.eval()
    out = model(x)
    assert out.logits.shape == (2, 10) and out.macs.shape == (2,)
    assert [m.shape[1] for m in out.channel_masks] == [b.info.out_channels for b in model.blocks]


def test_invalid_options_are_refused():
    with pytest.raises(ConfigError, match="6n\\+2"):
        DDIResNet(21)
    with pytest.raises(ConfigError, match="gating 'skipnet'"):
        create_model("resnet8", gating="skipnet")
    with pytest.raises(ConfigError, match="weight_bits=0"):
        create_model("resnet8", quant={"weight_bits": 0})


def test_exit_positions_follow_the_paper():
    # Paper Fig. 5: 8 blocks per stage -> branches after the 2nd and 6th block of each stage.
    assert exit_positions(8) == [1, 5, 9, 13, 17, 21]
    assert exit_positions(12) == [2, 8, 14, 20, 26, 32]  # ResNet-74: six branches
    assert exit_positions(1) == [0, 1]  # ResNet-8: collapsed, none at the very end


def test_hard_gate_is_exact_forward_and_straight_through_backward():
    p = torch.tensor([0.2, 0.5, 0.51, 0.9], requires_grad=True)
    g = hard_gate(p)
    assert g.tolist() == [0.0, 0.0, 1.0, 1.0]
    (g * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert p.grad.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_quantized_model_uses_brevitas_and_one_stream_quantizer_per_stage():
    model = create_model("resnet20", quant=QUANT)
    assert is_quantized(model)
    assert not is_quantized(create_model("resnet20"))
    for block in model.blocks:
        # FINN: both inputs of the residual add share one quantizer, the stage's stream_act
        assert block.stream_act is model.stream_acts[block.info.stage]
    assert model.stem[-1] is model.stream_acts[0]
    assert type(model.blocks[0].conv1).__name__ == "QuantConv2d"


@pytest.mark.parametrize("quant", [None, QUANT], ids=["float", "w4a4"])
def test_skipped_block_and_channels_pass_their_input_bit_for_bit(quant):
    model = create_model("resnet20", gating="mgl2s", quant=quant)
    _calibrate(model)
    torch.manual_seed(1)
    x = model.stem(model.preprocess(torch.rand(6, 3, 32, 32)))
    block = model.blocks[1]  # an identity block
    gate = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    mask = torch.ones(6, 16)
    mask[:, ::3] = 0.0  # skip every third channel
    with torch.no_grad():
        y = block(x, channel_mask=mask, layer_gate=gate)
        full = block(x)
    assert torch.equal(y[gate == 0], x[gate == 0])  # skipped block: exactly its input
    kept = gate == 1
    assert torch.equal(y[kept][:, ::3], x[kept][:, ::3])  # skipped channels: exactly the input
    assert not torch.equal(y[kept][:, 1::3], x[kept][:, 1::3])  # computed channels changed
    del full


@pytest.mark.parametrize("quant", [None, QUANT], ids=["float", "w4a4"])
def test_network_with_every_block_skipped_is_the_passthrough_chain(quant):
    model = create_model("resnet20", gating="mgl2s", quant=quant)
    _calibrate(model)
    _set_layer_gates(model, -20.0)
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        out = model(images)
        x = model.stem(model.preprocess(images))
        for block in model.blocks:  # identity blocks pass x, downsampling ones their projection
            x = block.passthrough(x)
        expected = model.fc(model.pool(x).flatten(1))
    assert torch.equal(out.logits, expected)
    assert out.block_gates.sum() == 0
    assert all(m.sum() == 0 for m in out.channel_masks)


def test_skipped_work_is_not_done_in_evaluation():
    model = create_model("resnet20", gating="mgl2s").eval()
    _calibrate(model)
    batch_sizes: dict[str, list[int]] = {}

    def record(name):
        return lambda mod, inp, out: batch_sizes.setdefault(name, []).append(inp[0].shape[0])

    for i, block in enumerate(model.blocks):
        block.conv1.register_forward_hook(record(f"block{i}"))
        model.channel_gates[i].conv.register_forward_hook(record(f"cgate{i}"))
    images = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        out = model(images)
    for i in range(model.num_blocks):
        kept = int(out.block_gates[:, i].sum())
        # the block and its channel gate (MGL2S) ran on the kept images only
        assert batch_sizes.get(f"block{i}", [0]) == [kept]
        assert batch_sizes.get(f"cgate{i}", [0]) == [kept]
    batch_sizes.clear()
    _set_layer_gates(model, -20.0)
    with torch.no_grad():
        model(images)
    assert batch_sizes == {}  # nothing ran: no block, no channel gate


def test_per_image_decisions_are_reported_consistently():
    model = create_model("resnet14", gating="mgl2s")
    _calibrate(model)
    with torch.no_grad():
        model.gate_rnn.proj.bias.fill_(0.0)  # mixed decisions
        for gate in model.channel_gates:
            gate.fc.bias.fill_(0.0)
        out = model(torch.rand(16, 3, 32, 32))
    gates = out.block_gates
    assert set(gates.unique().tolist()) <= {0.0, 1.0}
    for i, mask in enumerate(out.channel_masks):
        assert torch.all(mask[gates[:, i] == 0] == 0)  # a skipped block computes no channel
        assert torch.allclose(out.channel_fraction[:, i], mask.mean(dim=1))
    assert out.layer_probs is not None and out.layer_probs.shape == gates.shape


@pytest.mark.parametrize("quant", [None, QUANT], ids=["float", "w4a4"])
def test_gradients_reach_both_gates_in_training(quant):
    torch.manual_seed(0)
    model = create_model("resnet14", gating="mgl2s", exits=True, quant=quant).train()
    out = model(torch.rand(16, 3, 32, 32))
    y = torch.randint(0, 10, (16,))
    loss = F.cross_entropy(out.logits, y) + sum(F.cross_entropy(e, y) for e in out.exit_logits)
    loss = loss + (out.macs / model.costs().full).mean()
    loss.backward()
    assert model.gate_rnn.cell.weight_ih.grad.abs().sum() > 0
    assert model.gate_rnn.proj.weight.grad.abs().sum() > 0
    for i in range(model.num_blocks):
        assert model.layer_gates[i].conv.weight.grad.abs().sum() > 0, f"layer gate {i}"
        assert model.channel_gates[i].fc.weight.grad.abs().sum() > 0, f"channel gate {i}"
    assert all(e.fc.weight.grad.abs().sum() > 0 for e in model.exits)


def test_spec_rebuilds_the_same_architecture():
    model = create_model("resnet14", gating="layer", exits=True, quant=QUANT)
    spec = model.spec()
    again = create_model(spec["name"], **spec["kwargs"])
    assert again.spec() == spec
    assert again.state_dict().keys() == model.state_dict().keys()


def _type_names(module: torch.nn.Module, *names: str) -> list[str]:
    return [type(getattr(module, n)).__name__ for n in names]


def test_a_quantized_network_builds_its_gates_from_brevitas_layers():
    model = create_model("resnet8", gating="mgl2s", quant=QUANT)
    assert model.spec()["kwargs"]["quant_gates"] is True
    for gate in model.channel_gates:
        assert _type_names(gate, "conv", "relu", "pool_quant", "fc") == [
            "QuantConv2d",
            "QuantReLU",
            "QuantIdentity",
            "QuantLinear",
        ]
        assert int(gate.conv.quant_weight().bit_width) == QUANT["weight_bits"]  # the backbone's
        assert int(gate.fc.quant_weight().bit_width) == 8
        assert int(gate.relu.act_quant.bit_width()) == QUANT["act_bits"]
        assert int(gate.pool_quant.act_quant.bit_width()) == 8
        assert not gate.pool_quant.act_quant.is_signed
    for embed in model.layer_gates:
        assert _type_names(embed, "pool_quant", "conv", "code") == [
            "QuantIdentity",
            "QuantConv2d",
            "QuantIdentity",
        ]
        assert int(embed.conv.quant_weight().bit_width) == 8
        assert embed.code.act_quant.is_signed and int(embed.code.act_quant.bit_width()) == 8
    assert not is_quantized(model.gate_rnn)  # the LSTM step runs in float on the ARM

    floats = create_model("resnet8", gating="mgl2s")
    assert floats.spec()["kwargs"]["quant_gates"] is False
    assert not is_quantized(floats.channel_gates) and not is_quantized(floats.layer_gates)
    legacy = create_model("resnet8", gating="mgl2s", quant=QUANT, quant_gates=False)
    assert is_quantized(legacy.blocks) and not is_quantized(legacy.channel_gates)
    assert not is_quantized(legacy.layer_gates)
    with pytest.raises(ConfigError, match="quant_gates=True needs a quantized network"):
        create_model("resnet8", gating="mgl2s", quant_gates=True)


def test_quantized_gates_train_and_decide_on_their_integer_grid():
    torch.manual_seed(0)
    model = create_model("resnet8", gating="mgl2s", quant=QUANT).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.rand(16, 3, 32, 32)
    y = torch.randint(0, 10, (16,))
    # Brevitas sets the activation scales from statistics over its first training steps
    gate_params = {
        name: p
        for name, p in model.named_parameters()
        if name.startswith(("channel_gates.", "layer_gates.")) and "scaling_impl" not in name
    }
    before = {name: p.detach().clone() for name, p in gate_params.items()}
    out = model(x)
    loss = F.cross_entropy(out.logits, y) + (out.macs / model.costs().full).mean()
    loss.backward()
    no_grad = [n for n, p in gate_params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    optimizer.step()
    assert all(not torch.equal(before[n], p) for n, p in gate_params.items())

    model.eval()
    with torch.no_grad():
        stream = model.stem(model.preprocess(x))
        gate = model.channel_gates[0]
        # the FC sees 8-bit unsigned codes of the pooled feature map: the engine's integer input
        pooled = gate.pool_quant(gate.pool(gate.relu(gate.bn(gate.conv(stream))))).flatten(1)
        codes = pooled / gate.pool_quant.act_quant.scale()
        assert torch.allclose(codes, codes.round(), rtol=0, atol=1e-3)  # float division only
        assert codes.min() >= 0 and codes.max() <= 255
        assert torch.equal(gate(stream) > 0.5, gate.logits(stream) > 0)
        embed = model.layer_gates[0]
        e = embed(stream) / embed.code.act_quant.scale()  # the 10 codes the LSTM step takes
        assert e.shape == (16, 10) and torch.allclose(e, e.round(), rtol=0, atol=1e-3)
        assert e.min() >= -128 and e.max() <= 127

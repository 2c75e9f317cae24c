"""MAC and energy cost models, checked against independent counts."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from train.calibrate import calibrate_gates
from train.cost import EnergyCost
from train.model import create_model


def _flop_counter_macs(model, **forward):
    """Independent count: PyTorch's FlopCounterMode (2 FLOPs per MAC), per module FQN."""
    model.eval()
    model.costs()  # trace first: the lazy trace would otherwise run inside the counted pass
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32), **forward)
    counts = {k: sum(v.values()) // 2 for k, v in counter.get_flop_counts().items()}
    return counter.get_total_flops() // 2, counts


@pytest.mark.parametrize("name", ["resnet8", "resnet20", "resnet74"])
def test_macs_agree_with_pytorch_flop_counter(name):
    model = create_model(name, gating="mgl2s", exits=True)
    costs = model.costs()
    total, per_module = _flop_counter_macs(model, execute_all=True)
    assert total == sum(r.macs for r in costs.records)
    assert total == costs.max_executed + sum(costs.exits)
    for i in range(costs.num_blocks):
        block = f"DDIResNet.blocks.{i}"
        assert per_module[f"{block}.conv1"] == costs.conv1[i]
        assert per_module[f"{block}.conv2"] == costs.conv2[i]
        assert per_module.get(f"{block}.shortcut", 0) == costs.shortcut[i]
        assert per_module[f"DDIResNet.channel_gates.{i}"] == costs.channel_gate[i]
        # G^L of block i: its 1x1 embedding plus one step of the shared LSTM and projection
        rnn_step = per_module["DDIResNet.gate_rnn"] // costs.num_blocks
        assert per_module[f"DDIResNet.layer_gates.{i}"] + rnn_step == costs.layer_gate[i]
    for j, macs in enumerate(costs.exits):
        assert per_module[f"DDIResNet.exits.{j}"] == macs
    plain_total, _ = _flop_counter_macs(create_model(name))
    assert plain_total == costs.full


def test_resnet74_costs_match_the_paper():
    costs = create_model("resnet74", gating="mgl2s").costs()
    assert costs.num_blocks == 36
    assert 167e6 < costs.full < 169e6  # about 168 M MACs per image
    lg = costs.layer_gate[-1] / costs.block_body[-1]
    cg = costs.channel_gate[-1] / costs.block_body[-1]
    assert 0.0002 < lg < 0.0006  # paper: the LSTM gate is about 0.04% of a block
    assert 0.12 < cg < 0.13  # paper: the CNN channel gate is 12.5% of a block


def test_executed_macs_equal_the_work_really_done_with_layer_skipping():
    torch.manual_seed(0)
    model = create_model("resnet20", gating="layer").eval()
    images = torch.rand(32, 3, 32, 32)
    # a mix of kept and skipped blocks: the mean cost at 60% of the backbone
    calibrate_gates(model, [(images, None)], 0.6, lambda out: out.macs / model.costs().full)
    done = []

    def count(mod, inp, out):
        if isinstance(mod, torch.nn.LSTMCell):
            done.append(inp[0].shape[0] * 4 * mod.hidden_size * (mod.input_size + mod.hidden_size))
        elif isinstance(mod, torch.nn.Conv2d):
            per = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            done.append(out.numel() * per)
        else:
            done.append(out.numel() * mod.in_features)

    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.LSTMCell)):
            m.register_forward_hook(count)
    done.clear()
    with torch.no_grad():
        out = model(images)
    skipped = 1 - out.block_gates.mean()
    assert 0.05 < skipped < 0.95, "the test needs a mix of kept and skipped blocks"
    assert sum(done) == pytest.approx(float(out.macs.sum()), rel=1e-9)


def test_cost_falls_as_gates_skip():
    model = create_model("resnet20", gating="mgl2s").eval()
    images = torch.rand(8, 3, 32, 32)
    costs = model.costs()
    means, energies = [], []
    energy = EnergyCost.from_model(model)
    for layer_bias, channel_bias in [(20, 20), (20, 0), (0, 0), (-1, -20), (-20, -20)]:
        with torch.no_grad():
            model.gate_rnn.proj.weight.zero_()
            model.gate_rnn.proj.bias.fill_(layer_bias)
            for gate in model.channel_gates:
                gate.fc.bias.fill_(channel_bias)
            out = model(images)
        means.append(float(out.macs.mean()))
        energies.append(float(energy.executed(out.block_gates, out.channel_fraction).mean()))
    assert means == sorted(means, reverse=True) and means[0] > means[-1]
    assert energies == sorted(energies, reverse=True)
    assert means[0] == costs.max_executed  # everything runs, gates included
    # all skipped: stem, head, layer gates and the two projection shortcuts remain
    assert means[-1] == costs.stem + costs.head + sum(costs.layer_gate) + sum(costs.shortcut)
    assert costs.savings(means[0]) < 0 < costs.savings(means[-1])


def test_channel_thinning_cost_is_quadratic_in_the_kept_fraction():
    costs = create_model("resnet8", gating="channel").costs()
    gates = torch.ones(1, 3)
    half = costs.block_costs(gates, torch.full((1, 3), 0.5))[0, 0]
    full = costs.block_costs(gates, torch.ones(1, 3))[0, 0]
    c1, c2, cg = costs.conv1[0], costs.conv2[0], costs.channel_gate[0]
    assert float(full) == c1 + c2 + cg
    assert float(half) == c1 / 2 + c2 / 4 + cg


def test_energy_model_prices_the_backbone_and_its_surrogate_is_close():
    model = create_model("resnet8", gating="mgl2s")
    energy = EnergyCost.from_model(model, surfaces=True)
    gates = torch.ones(4, 3)
    frac = torch.tensor([[1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.25, 1.0, 0.75], [1.0, 0.5, 0.25]])
    exact = energy.executed(gates, frac)
    approx = energy.surrogate(gates, frac.to(torch.float64))
    assert torch.allclose(exact, approx, rtol=0.06)
    plain = EnergyCost.from_model(create_model("resnet8"))
    assert plain.full == pytest.approx(energy.full)
    assert float(energy.executed(gates[:1], frac[:1])) > energy.full  # gate overhead
    assert energy.describe()["units"] == "eyeriss"

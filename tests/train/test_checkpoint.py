"""Tests of train.checkpoint on real quantized models: round trip, refusals, atomic saving."""

from __future__ import annotations

import collections
import random
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from train import checkpoint as ckpt
from train.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    build_model,
    load_backbone,
    load_checkpoint,
    save_checkpoint,
)
from train.errors import CheckpointError, TrainError
from train.loop import TrainConfig, _build
from train.model import DDIResNet, create_model
from train.quant import is_quantized

W4A4 = {"weight_bits": 4, "act_bits": 4, "input_bits": 8}
CONFIG = {"phase": "iadi", "lr": 0.05, "steps": 3}


pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _train_a_step(model: DDIResNet) -> DDIResNet:
    """One real SGD step in training mode: Brevitas' activation scales then hold statistics."""
    torch.manual_seed(0)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = _images(16, seed=1)
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(2))
    out = model(x)
    loss = F.cross_entropy(out.logits, y) + (out.macs / model.costs().full).mean()
    loss.backward()
    optimizer.step()
    model.eval()
    return model


def _gated(quant: dict | None = W4A4, name: str = "resnet8") -> DDIResNet:
    torch.manual_seed(0)
    model = create_model(name, gating="mgl2s", quant=quant)
    with torch.no_grad():  # a gate that really decides: some blocks run, some are skipped
        model.gate_rnn.proj.bias.zero_()
    return _train_a_step(model)


def _base(name: str = "resnet8", quant: dict | None = W4A4) -> DDIResNet:
    torch.manual_seed(0)
    return _train_a_step(create_model(name, gating="none", quant=quant))


@pytest.fixture(scope="module")
def gated_file(tmp_path_factory) -> tuple[DDIResNet, Path]:
    """A trained-a-step resnet8 MGL2S W4A4 model and its checkpoint."""
    model = _gated()
    path = tmp_path_factory.mktemp("gated") / "model.pt"
    save_checkpoint(
        path, model, phase="iadi", config=CONFIG, metrics={"acc": 0.5}, train_state=None
    )
    return model, path


@pytest.fixture(scope="module")
def base_file(tmp_path_factory) -> tuple[DDIResNet, Path]:
    model = _base()
    path = tmp_path_factory.mktemp("base") / "base.pt"
    save_checkpoint(path, model, phase="base", config={"phase": "base"})
    return model, path


def _outputs_equal(a, b) -> None:
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.block_gates, b.block_gates)
    assert torch.equal(a.channel_fraction, b.channel_fraction)
    assert torch.equal(a.macs, b.macs)
    for ma, mb in zip(a.channel_masks, b.channel_masks, strict=True):
        assert torch.equal(ma, mb)


def _one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> str:
    message = str(exc.value)
    assert "\n" not in message and "\r" not in message
    assert str(path) in message
    return message


# ------------------------------------------------------------------------------ round trip


def test_round_trip_is_bit_identical_in_eval_mode(gated_file):
    model, path = gated_file
    x = _images(32, seed=3)
    model.eval()
    before = model(x)
    gates = before.block_gates
    assert 0 < gates.mean() < 1, "the test model should skip some blocks and run others"

    payload = load_checkpoint(path)
    rebuilt = build_model(payload).eval()
    _outputs_equal(before, rebuilt(x))
    state, loaded = model.state_dict(), rebuilt.state_dict()
    assert state.keys() == loaded.keys()
    for key, value in state.items():
        assert torch.equal(value, loaded[key]), key


def test_payload_is_self_describing(gated_file):
    model, path = gated_file
    payload = load_checkpoint(path)
    assert payload["format"] == FORMAT
    assert payload["format_version"] == FORMAT_VERSION
    assert payload["model"] == model.spec()
    assert payload["model"]["name"] == "resnet8"
    assert payload["model"]["kwargs"]["gating"] == "mgl2s"
    assert payload["phase"] == "iadi"
    assert payload["config"] == CONFIG
    assert payload["metrics"] == {"acc": 0.5}
    assert payload["train_state"] is None
    assert set(payload["versions"]) == {"torch", "brevitas"}
    assert payload["created_utc"].endswith("+00:00")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_build_model_uses_the_payload_name_and_kwargs(gated_file):
    _, path = gated_file
    payload = load_checkpoint(path)
    rebuilt = build_model(payload)
    assert isinstance(rebuilt, DDIResNet)
    assert rebuilt.spec() == payload["model"]
    assert rebuilt.depth == 8 and rebuilt.gating == "mgl2s" and not rebuilt.has_exits
    assert rebuilt.quant_spec is not None and rebuilt.quant_spec.to_dict()["weight_bits"] == 4

    # The same weights under another registered name of other kwargs do not fit.
    payload = {**payload, "model": {"name": "resnet8", "kwargs": {"gating": "none"}}}
    with pytest.raises(CheckpointError, match="do not match 'resnet8'"):
        build_model(payload)
    payload["model"] = {"name": "resnet9", "kwargs": {}}
    with pytest.raises(CheckpointError, match="resnet9"):
        build_model(payload)


def test_build_model_with_overrides_adds_parts_to_a_backbone(base_file):
    base, path = base_file
    model = build_model(load_checkpoint(path), gating="mgl2s", exits=True)
    assert model.gating == "mgl2s" and model.has_exits
    gated_state = model.state_dict()
    for key, value in base.state_dict().items():
        assert torch.equal(value, gated_state[key]), key


def test_untrained_quantized_model_round_trips(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet8", gating="mgl2s", quant=W4A4).eval()
    path = save_checkpoint(tmp_path / "fresh.pt", model, phase="iadi", config={})
    rebuilt = build_model(load_checkpoint(path)).eval()
    x = _images()
    _outputs_equal(model(x), rebuilt(x))


def test_weights_of_the_wrong_shape_are_a_checkpoint_error(base_file):
    payload = load_checkpoint(base_file[1])
    state = dict(payload["state_dict"])
    state["fc.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError) as exc:
        build_model({**payload, "state_dict": state})
    assert "\n" not in str(exc.value)


# ---------------------------------------------------------------------------------- refusals


class Payload:
    """A class of this test module: pickling an instance refers to it by name."""

    def __init__(self) -> None:
        self.weights = torch.zeros(2)


class Dict(collections.OrderedDict):
    """A harmless-looking OrderedDict subclass; still not a builtin container."""


def _mark(path: str) -> None:
    """What an unpickled malicious payload would run: it leaves a marker file."""
    Path(path).write_text("unpickled")


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return _mark, (self.marker,)


def _real_payload(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _truncated(path: Path, source: Path) -> None:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt(path: Path, source: Path) -> None:
    data = bytearray(source.read_bytes())
    rng = random.Random(0)
    for i in rng.sample(range(len(data)), k=len(data) // 4):  # garble a quarter of the bytes
        data[i] = rng.randrange(256)
    path.write_bytes(bytes(data))


def _random_bytes(path: Path, source: Path) -> None:
    path.write_bytes(random.Random(1).randbytes(4096))


def _empty(path: Path, source: Path) -> None:
    path.write_bytes(b"")


def _text(path: Path, source: Path) -> None:
    path.write_text("not a checkpoint\n")


def _plain_dict(path: Path, source: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 3}, path)


def _bare_state_dict(path: Path, source: Path) -> None:
    torch.save(_real_payload(source)["state_dict"], path)


def _wrong_format(path: Path, source: Path) -> None:
    torch.save({**_real_payload(source), "format": "someone-else"}, path)


def _future_version(path: Path, source: Path) -> None:
    torch.save({**_real_payload(source), "format_version": FORMAT_VERSION + 1}, path)


def _no_version(path: Path, source: Path) -> None:
    payload = _real_payload(source)
    del payload["format_version"]
    torch.save(payload, path)


def _not_a_dict(path: Path, source: Path) -> None:
    torch.save([FORMAT, FORMAT_VERSION], path)


def _lacks_state_dict(path: Path, source: Path) -> None:
    payload = _real_payload(source)
    del payload["state_dict"]
    torch.save(payload, path)


def _module_class(path: Path, source: Path) -> None:
    torch.save({**_real_payload(source), "metrics": {"extra": Payload()}}, path)


def _dict_subclass(path: Path, source: Path) -> None:
    torch.save({**_real_payload(source), "config": Dict(lr=0.1)}, path)


def _whole_model(path: Path, source: Path) -> None:
    torch.save({**_real_payload(source), "model_object": torch.nn.Linear(2, 2)}, path)


REFUSED = {
    "truncated": (_truncated, "cannot be read safely"),
    "corrupt": (_corrupt, "cannot be read safely"),
    "random bytes": (_random_bytes, "cannot be read safely"),
    "empty": (_empty, "cannot be read safely"),
    "text": (_text, "cannot be read safely"),
    "plain dict": (_plain_dict, "not 'ddi-fpga-checkpoint' format_version 1"),
    "bare state_dict": (_bare_state_dict, "not 'ddi-fpga-checkpoint' format_version 1"),
    "other format": (_wrong_format, "not 'ddi-fpga-checkpoint' format_version 1"),
    "not a dict": (_not_a_dict, "holds a list, not a 'ddi-fpga-checkpoint' object"),
    "future format_version": (_future_version, f"format_version {FORMAT_VERSION + 1}"),
    "no format_version": (_no_version, "format_version None"),
    "no state_dict": (_lacks_state_dict, "lacks 'state_dict'"),
    "class of the test module": (_module_class, "cannot be read safely"),
    "OrderedDict subclass": (_dict_subclass, "cannot be read safely"),
    "pickled nn.Module": (_whole_model, "cannot be read safely"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_files_are_refused_with_one_line_naming_the_file(case, gated_file, tmp_path):
    make, expected = REFUSED[case]
    path = tmp_path / f"{case.replace(' ', '_')}.pt"
    make(path, gated_file[1])
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    message = _one_line_naming(exc, path)
    assert expected in message
    assert isinstance(exc.value, TrainError)


def test_refusal_of_a_pickled_object_names_it_plainly(gated_file, tmp_path):
    path = tmp_path / "object.pt"
    _module_class(path, gated_file[1])
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    message = _one_line_naming(exc, path)
    assert "\x1b" not in message  # no terminal escape codes in a one-line error
    assert "Payload" in message  # the global that was refused


def test_missing_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "nowhere" / "final.pt"
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert "does not exist" in _one_line_naming(exc, path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tmp_path)  # a folder is not a checkpoint either
    _one_line_naming(exc, tmp_path)


def test_loading_never_runs_pickled_code(gated_file, tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "exploit.pt"
    torch.save({**_real_payload(gated_file[1]), "metrics": {"x": Exploit(marker)}}, path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    _one_line_naming(exc, path)
    assert not marker.exists()


# ----------------------------------------------------------------------------- load_backbone


def test_load_backbone_accepts_a_base_checkpoint_into_a_gated_model(base_file):
    base, path = base_file
    payload = load_checkpoint(path)
    torch.manual_seed(1)
    gated = create_model("resnet8", gating="mgl2s", quant=W4A4)
    gate_before = gated.gate_rnn.proj.weight.detach().clone()
    load_backbone(gated, payload)
    state = gated.state_dict()
    for key, value in base.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert torch.equal(gated.gate_rnn.proj.weight, gate_before)  # the new gates stay as built

    # With its gates kept open, the gated network computes what the backbone computes.
    with torch.no_grad():
        gated.gate_rnn.proj.weight.zero_()
        gated.gate_rnn.proj.bias.fill_(10.0)
        for gate in gated.channel_gates:
            gate.fc.weight.zero_()
            gate.fc.bias.fill_(10.0)
    x = _images()
    base.eval()
    gated.eval()
    assert torch.equal(base(x).logits, gated(x).logits)


@pytest.mark.parametrize(
    ("name", "quant", "wrong"),
    [
        ("resnet14", W4A4, "resnet14"),
        ("resnet8", None, "quant=None"),
        ("resnet8", {**W4A4, "act_bits": 2}, "'act_bits': 2"),
    ],
    ids=["other depth", "float vs quantized", "other bit width"],
)
def test_load_backbone_refuses_another_backbone(base_file, name, quant, wrong):
    _, path = base_file
    payload = load_checkpoint(path)
    model = create_model(name, gating="mgl2s", quant=quant)
    with pytest.raises(CheckpointError) as exc:
        load_backbone(model, payload)
    message = str(exc.value)
    assert "\n" not in message
    assert wrong in message and "resnet8" in message


def test_load_backbone_refuses_a_gated_checkpoint_into_a_plain_model(gated_file):
    _, path = gated_file
    plain = create_model("resnet8", gating="none", quant=W4A4)
    with pytest.raises(CheckpointError, match="unexpected"):
        load_backbone(plain, load_checkpoint(path))


# ----------------------------------------------------------------------------------- atomicity


def _leftovers(folder: Path, keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != keep)


def test_save_leaves_no_temporary_file(tmp_path):
    model = _base()
    for _ in range(2):  # a new file, then an overwrite
        path = save_checkpoint(tmp_path / "sub" / "last.pt", model, phase="base", config={})
        assert path == tmp_path / "sub" / "last.pt"
        assert _leftovers(path.parent, "last.pt") == []
    build_model(load_checkpoint(path))


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_save_keeps_the_existing_checkpoint(tmp_path, monkeypatch, error):
    model = _base()
    path = save_checkpoint(tmp_path / "last.pt", model, phase="base", config={"step": 1})
    before = path.read_bytes()
    real_save = torch.save

    def save_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as handle:  # leave a half-written file behind, as a crash would
            handle.truncate(len(before) // 2)
        raise error

    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(type(error)):
        save_checkpoint(path, model, phase="base", config={"step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["config"] == {"step": 1}
    assert _leftovers(tmp_path, "last.pt") == []


# ------------------------------------------------------------------------- non-plain values


def _json_unfriendly_values():
    yield pytest.param(np.float64(0.25), 0.25, id="numpy float64")
    yield pytest.param(torch.__version__, str(torch.__version__), id="TorchVersion")
    yield pytest.param(np.float32(0.25), 0.25, id="numpy float32")
    yield pytest.param(np.int64(3), 3, id="numpy int64")


@pytest.mark.parametrize(("value", "plain"), list(_json_unfriendly_values()))
def test_non_plain_metrics_and_config_still_load_with_weights_only(tmp_path, value, plain):
    model = _base()
    path = save_checkpoint(
        tmp_path / "final.pt",
        model,
        phase="base",
        config={"value": value, "nested": {"list": [value]}},
        metrics={"value": value, "machine": {"torch": torch.__version__}},
    )
    payload = torch.load(path, weights_only=True)  # what load_checkpoint does
    assert load_checkpoint(path)["config"] == payload["config"]
    for got in (payload["config"]["value"], payload["metrics"]["value"]):
        assert got == plain
        assert type(got) is type(plain)  # a builtin, not the numpy or torch type
    assert payload["config"]["nested"] == {"list": [plain]}
    assert type(payload["metrics"]["machine"]["torch"]) is str


def test_unwrap_returns_the_inner_module(gated_file):
    model, _ = gated_file

    class Wrapper(torch.nn.Module):  # the attribute DistributedDataParallel exposes
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert ckpt.unwrap(Wrapper(model)) is model
    assert ckpt.unwrap(model) is model


# ---------------------------------------------------------------------------- quantized gates


def test_a_new_checkpoint_rebuilds_quantized_gates(gated_file):
    _, path = gated_file
    payload = load_checkpoint(path)
    assert payload["model"]["kwargs"]["quant_gates"] is True
    model = build_model(payload)
    assert is_quantized(model.channel_gates) and is_quantized(model.layer_gates)


def test_a_checkpoint_from_before_quantized_gates_rebuilds_its_float_gates(tmp_path):
    torch.manual_seed(0)
    old = create_model("resnet8", gating="mgl2s", quant=W4A4, quant_gates=False)
    _train_a_step(old)
    path = save_checkpoint(tmp_path / "old.pt", old, phase="iadi", config=CONFIG)
    payload = torch.load(path, weights_only=True)
    del payload["model"]["kwargs"]["quant_gates"]  # the spec such a checkpoint holds
    torch.save(payload, path)

    loaded = load_checkpoint(path)
    assert loaded["model"]["kwargs"]["quant_gates"] is False
    model = build_model(loaded).eval()
    assert not is_quantized(model.channel_gates) and not is_quantized(model.layer_gates)
    x = _images()
    _outputs_equal(old(x), model(x))


def _strip_quant_gates(path: Path, out: Path) -> Path:
    payload = torch.load(path, weights_only=True)
    del payload["model"]["kwargs"]["quant_gates"]
    torch.save(payload, out)
    return out


def test_iadi_on_a_quantized_base_adds_quantized_gates(base_file, tmp_path):
    _, path = base_file
    old_style = _strip_quant_gates(path, tmp_path / "old-base.pt")  # written before the option
    for init in (path, old_style):
        cfg = TrainConfig(phase="iadi", out_dir=str(tmp_path / "run"), init=str(init))
        model, _ = _build(cfg)
        assert model.spec()["kwargs"]["quant_gates"] is True
        assert is_quantized(model.channel_gates) and is_quantized(model.layer_gates)


def test_iadi_on_a_float_gated_checkpoint_starts_quantized_gates_from_its_float_ones(tmp_path):
    torch.manual_seed(0)
    old = _train_a_step(create_model("resnet8", gating="mgl2s", quant=W4A4, quant_gates=False))
    path = save_checkpoint(tmp_path / "old.pt", old, phase="iadi", config=CONFIG)
    path = _strip_quant_gates(path, path)
    model, _ = _build(TrainConfig(phase="iadi", out_dir=str(tmp_path / "run"), init=str(path)))
    assert is_quantized(model.channel_gates)
    assert torch.equal(model.channel_gates[1].fc.weight, old.channel_gates[1].fc.weight)
    assert torch.equal(model.layer_gates[2].conv.weight, old.layer_gates[2].conv.weight)

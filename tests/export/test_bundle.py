"""The bundle on disk: manifest contract, per-graph execution parity, refusals of bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export import bundle as bundle_module
from export.bundle import export_bundle
from export.errors import BundleError, ExecutionError, ExportError
from export.executor import BundleExecutor
from export.manifest import MANIFEST, VERSION, load_bundle, manifest_from_dict
from train.checkpoint import CheckpointError, build_model, load_checkpoint, save_checkpoint
from train.model import create_model

from .conftest import ROOT, TRAINED


def test_manifest_lists_every_graph_with_shapes_types_and_costs(trained_bundle):
    m = trained_bundle.manifest
    assert m.version == VERSION and m.model["name"] == "resnet8"
    assert [b.graph for b in m.blocks] == ["block0", "block1", "block2"]
    assert [b.shortcut for b in m.blocks] == [None, "shortcut1", "shortcut2"]
    assert all(b.layer_gate and b.channel_gate for b in m.blocks)
    assert m.gate_hidden == 10 and m.exits == ()
    # MACs add up to the plain network, which is the monolithic graph's cost
    body = sum(b.conv1_macs + b.conv2_macs + b.shortcut_macs for b in m.blocks)
    assert m.stem_macs + body + m.head_macs == m.full_macs == m.graphs["full"].macs
    # the residual stream of a stage has one datatype: block outputs feed the next block
    for prev, nxt in zip(m.blocks, m.blocks[1:], strict=False):
        out = m.graphs[prev.graph].outputs[0].datatype
        assert m.graphs[nxt.graph].inputs[0].datatype == out
        assert out.name == "UINT4" and out.scale > 0
    assert m.graphs["stem"].inputs[0].datatype == m.preprocess.datatype
    assert m.preprocess.datatype.name == "INT8"
    for g in m.graphs.values():
        assert (g.qonnx is None) == (g.kind in ("layer_gate", "channel_gate", "full"))
        assert all(t.shape[0] == "N" for t in g.inputs + g.outputs)


def test_preprocessing_table_reproduces_the_model_bit_for_bit(trained_bundle):
    from train.checkpoint import build_model, load_checkpoint

    model = build_model(load_checkpoint(TRAINED)).eval()
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (8, 32, 32, 3), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        ref = model.preprocess(images.permute(0, 3, 1, 2).float().div(255)).numpy()
    got = trained_bundle.manifest.preprocess.apply(images.numpy())
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ref)


def _features(bundle, n=4):
    """Real intermediate tensors: the twins chained on random images (mask = all channels)."""
    m = bundle.manifest
    run = BundleExecutor(bundle, threads=1)._run
    g = np.random.default_rng(0)
    images = g.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    x = m.preprocess.apply(images)
    feats = {"stem": x}
    (y,) = run("stem", x)
    for b in m.blocks:
        feats[b.graph] = y
        if b.shortcut:
            feats[b.shortcut] = y
        (y,) = run(b.graph, y, np.ones((n, b.out_channels), np.float32))
    feats["head"] = y
    return feats


def test_every_qonnx_graph_equals_its_onnxruntime_twin(trained_bundle):
    """The FINN graph (QONNX, executed by qonnx) and the twin compute the same integers."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    m = trained_bundle.manifest
    feats = _features(trained_bundle, n=1)
    checked = 0
    for name, g in m.graphs.items():
        if g.qonnx is None:
            continue
        x = feats[name]
        twin = ort.InferenceSession(trained_bundle.read(g.onnx))
        feeds, qfeeds = {"x": x}, {"x": x}
        if g.kind == "block":  # half the channels dropped: the mask map applies it exactly
            mask = np.ones((1, g.inputs[1].shape[1]), np.float32)
            mask[:, ::2] = 0.0
            feeds["mask"] = mask
            _, c, h, w = g.qonnx_inputs[1].shape
            qfeeds["mask"] = np.ascontiguousarray(
                np.broadcast_to(mask[:, :, None, None], (1, c, h, w))
            )
            assert g.qonnx_inputs[1].datatype.name == "UINT1"
        (ref,) = twin.run(None, feeds)
        qonnx = ModelWrapper(str(trained_bundle.path / g.qonnx.file)).transform(InferShapes())
        assert (
            [i.name for i in qonnx.graph.input] == [t.name for t in g.qonnx_inputs] == list(qfeeds)
        )
        out = execute_onnx(qonnx, qfeeds)[qonnx.graph.output[0].name]
        if g.kind == "head":  # float classifier tail: summation order differs
            np.testing.assert_allclose(out, ref, atol=1e-5)
        else:
            np.testing.assert_array_equal(out, ref)
        checked += 1
    assert checked == 7  # stem, 3 blocks, 2 shortcuts, head


def test_a_tampered_file_is_refused_on_load(trained_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(trained_bundle.path, copy)
    with open(copy / "block1.onnx", "r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(BundleError, match=r"block1.onnx.*modified or damaged"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="modified or damaged"):
        BundleExecutor(copy)  # the executor checks each file it loads
    (copy / "block1.onnx").unlink()
    with pytest.raises(BundleError, match=r"lacks 'block1\.onnx'"):
        load_bundle(copy)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(version=99), "manifest of bundle .* version 99, not"),
        (lambda d: d.update(format="other"), "format 'other' version 3, not 'ddi-fpga-bundle'"),
        (lambda d: d["blocks"][1].pop("graph"), r"blocks\[1\] lacks 'graph'"),
        (lambda d: d["blocks"][0].update(graph="nope"), "names graph 'nope'"),
        (lambda d: d["graphs"]["stem"]["onnx"].update(file="../x.onnx"), "not a path inside"),
        (lambda d: d["graphs"]["head"].update(macs=-1), "not >= 0"),
        (lambda d: d["preprocess"]["lut"].pop(), "lut is not C rows"),
    ],
)
def test_a_bad_manifest_is_refused_in_one_line(trained_bundle, edit, message):
    data = json.loads((trained_bundle.path / MANIFEST).read_text())
    edit(data)
    with pytest.raises(BundleError, match=message) as info:
        manifest_from_dict(data, "b")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.update(file="/abs.onnx"), r"graphs\.channel_gate0\.finn .*not a path inside"),
        (lambda f: f.pop("twin_tensor"), r"finn lacks 'twin_tensor'"),
        (lambda f: f["outputs"][0]["datatype"].update(name="UINT1", scale=None), "has scale"),
    ],
)
def test_a_bad_gate_finn_entry_is_refused_in_one_line(exits_bundle, edit, message):
    data = json.loads((exits_bundle.path / MANIFEST).read_text())
    edit(data["graphs"]["channel_gate0"]["finn"])
    with pytest.raises(BundleError, match=message) as info:
        manifest_from_dict(data, "b")
    assert "\n" not in str(info.value)


def test_missing_or_unreadable_bundles(tmp_path):
    with pytest.raises(BundleError, match="is not a folder"):
        load_bundle(tmp_path / "none")
    with pytest.raises(BundleError, match=r"has no manifest\.json"):
        load_bundle(tmp_path)
    (tmp_path / MANIFEST).write_text("{")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path)


def test_export_refusals_leave_nothing_behind(tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    with pytest.raises(CheckpointError, match="does not exist"):
        export_bundle(tmp_path / "missing.pt", out, progress=False)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        export_bundle(tmp_path / "junk.pt", out, progress=False)
    float_ckpt = tmp_path / "float.pt"
    save_checkpoint(float_ckpt, create_model("resnet8"), phase="base", config={})
    with pytest.raises(ExportError, match="float model"):
        export_bundle(float_ckpt, out, progress=False)

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(bundle_module, "write_graphs", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export_bundle(TRAINED, out, progress=False)
    # no bundle and no temporary folder left: only the two files this test wrote
    assert sorted(p.name for p in tmp_path.iterdir()) == ["float.pt", "junk.pt"]


def test_an_existing_bundle_is_replaced_only_with_force(trained_bundle, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(trained_bundle.path, out)
    with pytest.raises(ExportError, match="exists; pass --force"):
        export_bundle(TRAINED, out, progress=False)
    again = export_bundle(TRAINED, out, overwrite=True, progress=False)
    assert again.manifest.graphs.keys() == trained_bundle.manifest.graphs.keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_executor_refuses_bad_images_and_modes(trained_bundle):
    ex = BundleExecutor(trained_bundle, threads=1)
    with pytest.raises(ExecutionError, match=r"float32 and shape \(2, 32, 32, 3\)"):
        ex.run(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ExecutionError, match=r"shape \(2, 3, 32, 32\)"):
        ex.run(np.zeros((2, 3, 32, 32), np.uint8))
    with pytest.raises(ExecutionError, match="mode 'fast' is unknown"):
        ex.run(np.zeros((1, 32, 32, 3), np.uint8), mode="fast")
    with pytest.raises(ExecutionError, match="no exit branches"):
        ex.run(np.zeros((1, 32, 32, 3), np.uint8), mode="ddi", budget_macs=1e6)
    with pytest.raises(ExecutionError, match="only in, mode 'ddi'"):
        ex.run(np.zeros((1, 32, 32, 3), np.uint8), mode="iadi", budget_macs=1e6)
    assert len(ex.run(np.zeros((0, 32, 32, 3), np.uint8))) == 0


EXPORT_ELSEWHERE = """
import sys, torch
torch.set_num_threads(2)
from export.bundle import export_bundle
export_bundle(sys.argv[1], sys.argv[2], progress=False)
"""


def test_a_checkpoint_exported_under_other_thread_settings_is_the_same_bundle(
    trained_bundle, tmp_path
):
    """Another process with other torch/OpenMP/BLAS thread counts, torch's portable (non-AVX)
    kernels and MKL's CPU-independent code path writes the same bytes, so the board's store
    recognises the re-export. (With the exporter's own float32 fold of the channel gates,
    ``MKL_CBWR=COMPATIBLE`` alone changed their bytes, as exporting on an AMD EPYC did.)"""
    from export.archive import archive_sha256, pack_bundle
    from fpga.board.store import BundleStore

    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
        "OPENBLAS_NUM_THREADS": "2",
        "ATEN_CPU_CAPABILITY": "default",
        "MKL_CBWR": "COMPATIBLE",
    }
    again = tmp_path / "again"
    subprocess.run(
        [sys.executable, "-c", EXPORT_ELSEWHERE, str(TRAINED), str(again)],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    reexport = load_bundle(again)
    assert reexport.bundle_id == trained_bundle.bundle_id
    assert reexport.sha256 == trained_bundle.sha256  # manifest.json, hence every file, equal
    archive = pack_bundle(trained_bundle.path)
    assert pack_bundle(again) == archive
    store = BundleStore(tmp_path / "store")
    session = store.begin(trained_bundle.bundle_id, len(archive), archive_sha256(archive))
    session.write(0, archive)
    store.finish(session, trained_bundle.bundle_id)
    assert store.find(reexport.bundle_id, reexport.sha256).path == store.path_of(reexport.sha256)


def test_the_bundle_id_names_the_checkpoints_state_and_the_format(trained_bundle):
    payload = load_checkpoint(TRAINED)
    model = build_model(payload).eval()
    digest = bundle_module.bundle_digest(model)
    name = f"{model.spec()['name']}-{model.gating}-{digest[:12]}"
    assert trained_bundle.bundle_id == name
    with torch.no_grad():  # one ulp of one running variance is another network
        var = model.channel_gates[0].bn.running_var
        var[0] = torch.nextafter(var[0], torch.tensor(1.0))
    assert bundle_module.bundle_digest(model) != digest


def test_channel_gates_are_folded_before_export_and_compute_the_models_gate(trained_bundle):
    import onnx
    from onnx import numpy_helper

    model = build_model(load_checkpoint(TRAINED)).eval()
    x = torch.rand(4, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    gate = model.channel_gates[0]
    folded = bundle_module.fold_gate_bn(gate)
    with torch.no_grad():
        np.testing.assert_allclose(folded(x).numpy(), gate(x).numpy(), rtol=0, atol=1e-6)
    assert isinstance(gate.bn, torch.nn.BatchNorm2d)  # the model itself is left as it was
    graph = onnx.load(trained_bundle.path / "channel_gate0.onnx").graph
    assert "BatchNormalization" not in {n.op_type for n in graph.node}
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    # the exporter writes the folded weights bit for bit, folding nothing itself
    assert np.array_equal(weights["gate.conv.weight"], folded.conv.weight.detach().numpy())
    assert np.array_equal(weights["gate.conv.bias"], folded.conv.bias.detach().numpy())


def test_quantized_gates_export_quantized_twins_and_finn_graphs(trained_bundle, exits_bundle):
    """A float-gated checkpoint exports float gates without FINN graphs; quantized gates get
    QCDQ twins and a FINN graph each, listed (and so verified and packed) with the bundle."""
    import onnx

    assert trained_bundle.manifest.model["kwargs"]["quant_gates"] is False
    assert all(g.finn is None for g in trained_bundle.manifest.graphs.values())
    m = exits_bundle.manifest
    assert m.model["kwargs"]["quant_gates"] is True
    files = m.files()
    for block in m.blocks:
        for name in (block.layer_gate, block.channel_gate):
            spec = m.graphs[name]
            assert spec.qonnx is None and spec.finn is not None and spec.finn.ref in files
            twin = onnx.load(exits_bundle.path / spec.onnx.file).graph
            assert "QuantizeLinear" in {n.op_type for n in twin.node}
            assert spec.finn.twin_tensor in {t for n in twin.node for t in n.output}
            engine = onnx.load(exits_bundle.path / spec.finn.file).graph
            ops = [n.op_type for n in engine.node]
            assert "Quant" in ops and "LSTM" not in ops and "Sigmoid" not in ops
        keep = onnx.load(exits_bundle.path / m.graphs[block.channel_gate].finn.file).graph
        assert keep.node[-1].op_type == "MultiThreshold"
        assert [o.name for o in keep.output] == ["keep"]

"""The board's numpy code under the oldest numpy that installs here (numpy 1.23.2 for CPython
3.11; the board needs numpy >= 1.21, PYNQ 3.0.1), in a venv with numpy and pyserial only.

The host (this environment, numpy 2) records every graph's inputs and outputs of a real bundle's
numpy programs in an executor run, and FINN's packed bytes of every stream type the board packs
(fpga.board.finnio, itself checked against FINN in test_finnio.py); the old numpy must give the
same outputs, the same per-image results and the same bytes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from export.executor import BundleExecutor
from export.manifest import load_bundle
from export.program import NumpyBackend
from fpga.board.deploy import ROOT, board_files
from fpga.board.finnio import StreamType, pack
from tests.fpga import old_numpy_env

TRAINED = ROOT / "measurements" / "train" / "resnet8-w4a4" / "iadi-60" / "final.pt"
"""ResNet-8 W4A4 with MGL2S gates (a recorded run): LSTM step, channel gates, blocks, head."""
STREAMS = ["BINARY", "BIPOLAR", "UINT2", "UINT3", "UINT4", "INT4", "UINT8", "INT8", "INT16"]


@pytest.fixture(scope="module")
def old_python() -> Path:
    try:
        return old_numpy_env.ensure()
    except old_numpy_env.EnvUnavailable as exc:
        pytest.skip(f"{exc} (needs PyPI; CI has it)")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "fpga-bundles" / "r8-iadi60"
    if not path.is_dir():
        import torch

        from export.bundle import export_bundle

        torch.set_num_threads(1)
        export_bundle(TRAINED, path, progress=False)
    return load_bundle(path)


def test_board_numpy_code_on_the_oldest_numpy(old_python, bundle, tmp_path):
    rng = np.random.default_rng(12)
    images = rng.integers(0, 256, (24, *bundle.manifest.image_shape), dtype=np.uint8)
    backend = NumpyBackend(bundle)
    calls: list[tuple[str, list[np.ndarray], list[np.ndarray]]] = []
    run = backend.run

    def recorded(graph, inputs):
        outputs = run(graph, inputs)
        calls.append((graph.name, [np.array(v) for v in inputs], [np.array(v) for v in outputs]))
        return outputs

    backend.run = recorded
    BundleExecutor(bundle, backend=backend).run(images[:4], mode="full")  # every block, dense
    want = BundleExecutor(bundle, backend=backend).run(images, mode="iadi")
    kinds = {bundle.manifest.graphs[n].kind for n, _, _ in calls}
    assert {name for name, _, _ in calls} >= {"stem", "head", "block0", "block1", "block2"}
    assert {"layer_gate", "channel_gate"} <= kinds, kinds

    recording: dict[str, np.ndarray] = {"calls": np.array(len(calls)), "images": images}
    for j, (name, inputs, _) in enumerate(calls):
        recording[f"graph_{j}"] = np.array(name)
        recording[f"inputs_{j}"] = np.array(len(inputs))
        recording.update({f"in_{j}_{i}": v for i, v in enumerate(inputs)})
    recording["stream_types"] = np.array(STREAMS)
    for name in STREAMS:
        t = StreamType.parse(name)
        values = rng.integers(t.low, t.high + 1, (3, 5, 2, 9)).astype(np.float32)
        if name == "BIPOLAR":
            values = np.where(values == 0, 1, values).astype(np.float32)
        recording[f"values_{name}"] = values
    np.savez(tmp_path / "recording.npz", **recording)

    tree = tmp_path / "board"
    for rel in board_files():  # the files a board gets, and the check beside them
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, tree / rel)
    shutil.copy2(Path(__file__).with_name("old_numpy_check.py"), tree)
    out = subprocess.run(
        [str(old_python), "-B", "old_numpy_check.py", str(bundle.path),
         str(tmp_path / "recording.npz"), str(tmp_path / "old.npz")],
        cwd=tree, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(tree)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    got = np.load(tmp_path / "old.npz")
    assert str(got["numpy"]) == old_numpy_env.NUMPY
    for j, (name, _, outputs) in enumerate(calls):
        for i, y in enumerate(outputs):
            _same(got[f"out_{j}_{i}"], y, f"{name} output {i}")
    for key in ("predictions", "executed", "channels", "macs", "logits"):
        _same(got[key], getattr(want, key), key)
    for name in STREAMS:
        values = recording[f"values_{name}"]
        np.testing.assert_array_equal(got[f"packed_{name}"], pack(values, name), err_msg=name)
        np.testing.assert_array_equal(got[f"unpacked_{name}"], values, err_msg=name)


def _same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Integer results (codes, keep bits, decisions, MACs) exactly; a float that is not a whole
    number to float32 rounding: numpy's matrix products go through its BLAS, whose kernels
    differ between builds and CPUs (numpy 1.23's OpenBLAS and numpy 2's sum a row in another
    order on some CPUs), so a logit may move by a few float32 ulps; never a decision."""
    whole = np.issubdtype(want.dtype, np.integer) or np.issubdtype(want.dtype, np.bool_)
    if not whole and np.array_equal(want, np.round(want)):
        whole = True  # integer codes held as floats: exactly
    if whole:
        np.testing.assert_array_equal(got, want, err_msg=what)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=what)

"""The real board runtime on an emulated 32-bit ARM, serving the real host harness over a pty.

What the ZedBoard's PYNQ image runs: Debian's armhf python3 and numpy (apt), the project's
board files and pyserial, nothing else. A measurement run against it must give, image for image,
the results of the same run against the runtime on x86.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from export.bundle import export_bundle
from host.measure import MeasurementConfig, ModelSpec, measure
from host.records import RunFolder
from tests.arm.conftest import board_process
from tests.arm.pl_standin import CALL_ARRAYS
from tests.conftest import needs_cifar10

ROOT = Path(__file__).resolve().parents[2]
TRAINED = ROOT / "measurements" / "train" / "resnet8-w4a4" / "iadi-60" / "final.pt"
FORBIDDEN = ("onnxruntime", "onnx", "qonnx", "torch", "brevitas", "finn", "finn_plus_driver")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return export_bundle(TRAINED, tmp_path_factory.mktemp("arm") / "iadi60", progress=False).path


def test_the_arm_python_is_what_a_pynq_image_has(arm_python, board_tree):
    """armv7l, numpy from Debian, and the board's modules import without any host package."""
    code = (
        "import platform, sys, numpy, fpga.board.__main__, fpga.board.runtime, fpga.board.accel\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(platform.machine(), numpy.__version__, bad)\n"
    )
    out = subprocess.run(
        [*arm_python, "-c", code], cwd=board_tree, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(board_tree)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    machine, numpy_version, bad = out.stdout.split(maxsplit=2)
    assert machine == "armv7l" and bad.strip() == "[]"
    assert tuple(int(v) for v in numpy_version.split(".")[:2]) >= (1, 21)


def _run(python, tree, bundle, tmp: Path, name: str) -> list[dict[str, str]]:
    store = tmp / f"store-{name}"
    with board_process(python, tree, store, log=tmp / f"board-{name}.log") as (port, proc):
        config = MeasurementConfig(
            port=port,
            models=[ModelSpec("full", str(bundle), "full"), ModelSpec("iadi60", str(bundle))],
            reference="full",
            images=48,
            images_per_window=24,
            repeats=1,
            idle_s=0.0,
            reply_timeout_s=30.0,
        )
        run = RunFolder.create(tmp / f"runs-{name}", name, config.to_dict())
        try:
            summary = measure(config, run, progress=False)
        except Exception as exc:
            log = (tmp / f"board-{name}.log").read_text()
            raise AssertionError(f"{exc!r}; board log:\n{log}") from None
        assert proc.poll() is None, (tmp / f"board-{name}.log").read_text()
    assert summary["models"][1]["compute_savings"] > 0.3
    return run.read_results()


@needs_cifar10
def test_a_measurement_run_on_armv7l_equals_the_x86_run(arm_python, board_tree, bundle, tmp_path):
    """Full run with the CPU backend (numpy programs) under qemu-arm vs. the same on x86."""
    arm = _run(arm_python, board_tree, bundle, tmp_path, "arm")
    x86 = _run([sys.executable], board_tree, bundle, tmp_path, "x86")
    assert len(arm) == len(x86) == 2 * 48
    assert arm == x86


BASE = ROOT / "measurements" / "train" / "resnet8-w4a4" / "base" / "final.pt"
"""ResNet-8 W4A4 without gates: in full mode every graph runs on its engine."""


@needs_cifar10
def test_the_finn_data_path_on_armv7l(arm_python, board_tree, tmp_path):
    """Codes, packing, IODMA registers, unpacking and tails on the ARM, against a stand-in of the
    PL's registers that returns the engine outputs FINN computed on the host."""
    pytest.importorskip("finn", reason="finn-plus not installed (make setup installs it)")
    import shutil

    import numpy as np

    from export.executor import BundleExecutor
    from export.manifest import load_bundle
    from fpga.bitstream.overlay import prepare_overlay
    from fpga.board.accel import load_overlay
    from fpga.board.runtime import FinnBackend
    from fpga.emulator.overlay import EmulatedDmaOverlay
    from tests.arm.pl_standin import record_calls
    from train.data import load_cifar10

    bundle = load_bundle(export_bundle(BASE, tmp_path / "base", progress=False).path)
    build = prepare_overlay(bundle.path, tmp_path / "overlay")
    emulated = EmulatedDmaOverlay.from_build(build.out)
    recording, _ = record_calls(emulated)
    images = load_cifar10("test").images[:8]
    overlay, accelerators = load_overlay(bundle, build.deploy, overlay=emulated)
    want = BundleExecutor(bundle, backend=FinnBackend(bundle, accelerators, overlay=overlay)).run(
        images, mode="full"
    )
    np.savez(tmp_path / "recording.npz", **recording)
    np.save(tmp_path / "images.npy", images)
    for name in ("finn_path.py", "pl_standin.py"):
        shutil.copy2(ROOT / "tests" / "arm" / name, board_tree / name)
    out = subprocess.run(
        [*arm_python, "finn_path.py", str(bundle.path), str(build.deploy),
         str(tmp_path / "recording.npz"), str(tmp_path / "images.npy"), str(tmp_path / "arm.npz")],
        cwd=board_tree, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(board_tree)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    got = np.load(tmp_path / "arm.npz")
    assert str(got["machine"]) == "armv7l"
    calls = len(recording) // CALL_ARRAYS
    assert int(got["served"]) == calls >= 5  # stem, 3 blocks, shortcuts, head
    np.testing.assert_array_equal(got["predictions"], want.predictions)
    np.testing.assert_array_equal(got["macs"], want.macs)
    np.testing.assert_array_equal(got["logits"], want.logits)  # the tails: float32, same ops

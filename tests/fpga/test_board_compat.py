"""The board's files run on a PYNQ 3.0.1/3.1 image: Python 3.10, numpy and pyserial only."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fpga.board.deploy import (
    BOARD_LAZY,
    BOARD_THIRD_PARTY,
    HOST_ONLY,
    ROOT,
    board_modules,
    third_party,
    walk,
)


def test_board_files_need_at_most_python_3_10():
    """vermin (pinned in the dev extra) over every module the board runtime imports."""
    vermin = shutil.which("vermin", path=str(Path(sys.executable).parent)) or shutil.which("vermin")
    if vermin is None:
        pytest.fail("vermin is not installed: pip install -e '.[dev]'")
    files = [str(ROOT / p) for p in board_modules()]
    out = subprocess.run(
        [vermin, "-t=3.10-", "--violations", "--no-tips", "--eval-annotations", *files],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(files) >= 15  # the walk found the runtime, protocol, executor, programs, driver


def test_the_board_imports_nothing_but_numpy_pyserial_and_pynq():
    eager, lazy = third_party()
    assert eager <= set(BOARD_THIRD_PARTY), eager
    assert lazy <= set(BOARD_LAZY), lazy
    found, _ = walk()
    for name in ("export.program", "fpga.board.finnio", "fpga.board.doctor"):
        assert name in found
    assert not any(n == h or n.startswith(h + ".") for n in found for h in HOST_ONLY)


def test_the_runtime_starts_with_host_packages_blocked(tmp_path):
    """`python -m fpga.board doctor` and the runtime's imports with onnxruntime, onnx, qonnx,
    torch and FINN made unimportable."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('onnxruntime', 'onnx', 'qonnx', 'torch', 'finn',\n"
        "                                  'brevitas', 'finn_plus_driver'):\n"
        "            raise ImportError(f'{name} is blocked: not on the board')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import fpga.board.runtime, fpga.board.accel, fpga.board.finnio\n"
        "from fpga.board.__main__ import main\n"
        f"sys.exit(main(['doctor', '--store', {str(tmp_path)!r}]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok   python" in out.stdout and "ok   numpy" in out.stdout

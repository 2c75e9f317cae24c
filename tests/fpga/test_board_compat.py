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


def test_the_archive_holds_a_runtime_that_runs_on_its_own(tmp_path):
    """`python -m fpga.board.deploy --out` -> unpack -> the doctor runs from the unpacked tree
    (which comes first on the path: the modules are the archive's)."""
    import tarfile

    from fpga.board.deploy import board_files, write_archive

    archive = write_archive(tmp_path / "ddi-board.tar.gz")
    again = write_archive(tmp_path / "again.tar.gz")
    assert archive.read_bytes() == again.read_bytes()  # the same files give the same archive
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "board", filter="data")
    assert sorted(names) == sorted(f"ddi-fpga/{p.as_posix()}" for p in board_files())
    assert "ddi-fpga/fpga/board/install.sh" in names
    tree = tmp_path / "board" / "ddi-fpga"
    code = (
        "import sys, fpga.board.__main__ as m\n"
        f"assert m.__file__.startswith({str(tree)!r}), m.__file__\n"
        f"sys.exit(m.main(['doctor', '--store', {str(tmp_path / 's')!r}]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "checks passed" in out.stdout.splitlines()[-1]

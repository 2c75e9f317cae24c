"""A small virtual environment with the oldest numpy that installs for this Python, and pyserial.

The board runtime must stay valid for numpy >= 1.21 (PYNQ 3.0.1's image). PyPI has no numpy 1.21
or 1.22 wheel for CPython 3.11 (FINN needs 3.11 here); 1.23.2 is the first numpy with one, so it
is the oldest a test environment of this Python can have. The environment holds numpy and
pyserial only (no torch, onnx, onnxruntime or FINN): what tests/fpga/test_board_old_numpy.py runs
the board's numpy code in.

    python -m tests.fpga.old_numpy_env          (make test runs it; prints the venv's python)

Created once under the cache folder (``$DDI_CACHE``, else ``~/.cache/ddi-fpga``) and reused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

NUMPY = "1.23.2"
"""The oldest numpy with a CPython 3.11 wheel on PyPI (1.21.x and 1.22.x have none)."""
PYSERIAL = "3.5"
"""As pinned in pyproject.toml."""


class EnvUnavailable(RuntimeError):
    """pip could not install the environment (no network to PyPI)."""


def env_dir() -> Path:
    cache = Path(os.environ.get("DDI_CACHE", Path.home() / ".cache" / "ddi-fpga"))
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    return cache / f"numpy-{NUMPY}-{tag}"


def python_of(root: Path) -> Path:
    return root / "bin" / "python"


def ensure(root: Path | None = None, timeout_s: float = 300.0) -> Path:
    """The environment's python, creating the environment if it is not complete."""
    root = root or env_dir()
    stamp = root / ".installed"
    if stamp.is_file() and python_of(root).is_file():
        return python_of(root)
    shutil.rmtree(root, ignore_errors=True)
    tmp = root.with_name(root.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    # no pip inside: this environment's pip installs into it (pip --python), which is faster
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp)], check=True)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python_of(tmp)), "install",
         "--quiet", "--disable-pip-version-check", "--only-binary", ":all:", "--no-deps",
         f"numpy=={NUMPY}", f"pyserial=={PYSERIAL}"],
        capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip
    if out.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise EnvUnavailable(
            f"pip cannot install numpy=={NUMPY} pyserial=={PYSERIAL}: "
            + (out.stderr.strip().splitlines() or ["no output"])[-1]
        )
    tmp.rename(root)  # python finds the venv from its pyvenv.cfg beside it: a move is safe
    version = subprocess.run(
        [str(python_of(root)), "-c", "import numpy; print(numpy.__version__)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if version != NUMPY:
        raise EnvUnavailable(f"the environment in {str(root)!r} has numpy {version}, not {NUMPY}")
    stamp.write_text(f"numpy {version}\n")
    return python_of(root)


def main() -> int:
    try:
        print(ensure())
    except EnvUnavailable as exc:
        # CI has PyPI; elsewhere the test skips with this reason
        print(f"tests/fpga/old_numpy_env: {exc}; the old-numpy test will skip", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

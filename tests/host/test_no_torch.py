"""The measurement harness runs on a lab laptop without torch, Brevitas, FINN or onnxruntime.

Every module that host/ imports, at the top of a file or inside a function, is found in its
source and imported in a fresh interpreter; none of the training or compilation stacks may
appear in ``sys.modules`` afterwards. The harness reads test images through the numpy CIFAR-10
reader (cifar.reader) and bundles through export's manifest (sha256 checks, no graph runtime).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ("measurements.run_measurement", "host.measure", "host.board", "host.meters")
# The training stage (torch, Brevitas) and the compilation stack (FINN, QONNX, ONNX graphs and
# their runtime) that a laptop that only measures must not need.
FORBIDDEN = ("torch", "brevitas", "finn", "qonnx", "onnx", "onnxruntime", "train")

_CHILD = """
import importlib, importlib.util, json, sys
skipped = []
for name in json.loads(sys.argv[1]):
    if importlib.util.find_spec(name.split(".")[0]) is None:  # an optional meter's library
        skipped.append(name)
        continue
    importlib.import_module(name)
print(json.dumps({"modules": sorted(sys.modules), "skipped": skipped}))
"""


def _imported_by(folder: Path) -> set[str]:
    """Every absolute import in the package ``folder``, local imports included."""
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
    names.discard("__future__")
    return names


def _loaded_roots(modules: list[str]) -> tuple[set[str], list[str]]:
    """Import ``modules`` in a fresh interpreter: the top-level packages it then holds."""
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(modules)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    return {name.split(".")[0] for name in report["modules"]}, report["skipped"]


def test_harness_imports_no_torch_brevitas_or_finn():
    modules = sorted(set(HARNESS) | _imported_by(ROOT / "host"))
    roots, skipped = _loaded_roots(modules)
    pulled = sorted(roots & set(FORBIDDEN))
    assert not pulled, f"host/ pulls in {pulled}; read CIFAR-10 through cifar.reader"
    assert "cifar.reader" in modules  # the harness does read CIFAR-10, through the reader
    assert {"host", "cifar", "export", "wire", "numpy", "serial", "pyvisa"} <= roots
    assert set(skipped) <= {"joulescope"}, skipped  # only an optional meter's own library


def test_the_check_sees_torch_when_it_is_imported():
    # The same fresh-interpreter check on the training loader, which does need torch.
    roots, _ = _loaded_roots(["train.data"])
    assert {"torch", "train", "cifar"} <= roots

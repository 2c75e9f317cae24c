"""The measurement harness runs on a lab laptop without torch, Brevitas, FINN or onnxruntime.

Every module that host/ imports, at the top of a file or inside a function, is found in its
source and imported in a fresh interpreter; none of the training or compilation stacks may
appear in ``sys.modules`` afterwards. The harness reads test images through the numpy CIFAR-10
reader (cifar.reader) and bundles through export's manifest (sha256 checks, no graph runtime).
Nor does host/ import the emulator: the ``sim`` meter kind comes from an entry point, imported
only when a ``sim`` meter is opened.
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
report = {"skipped": skipped}
if "host.meters" in sys.modules:
    from host.meters import MeterError, create_meter, meter_kinds
    report["kinds"] = meter_kinds()  # lists the entry points' kinds without importing them
    report["modules"] = sorted(sys.modules)
    try:  # imports the kind's module from its entry point
        sim = type(create_meter("sim:1.0"))
        report["sim"] = f"{sim.__module__}.{sim.__qualname__}"
    except MeterError as exc:
        report["sim"] = str(exc)
report.setdefault("modules", sorted(sys.modules))
print(json.dumps(report))
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


def _import_fresh(modules: list[str]) -> dict:
    """Import ``modules`` in a fresh interpreter: the modules it then holds, those skipped (an
    optional meter's library is missing) and the meter kinds it knows."""
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(modules)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def _loaded_roots(modules: list[str]) -> tuple[set[str], list[str]]:
    """Import ``modules`` in a fresh interpreter: the top-level packages it then holds."""
    report = _import_fresh(modules)
    return {name.split(".")[0] for name in report["modules"]}, report["skipped"]


def test_harness_imports_no_torch_brevitas_or_finn():
    modules = sorted(set(HARNESS) | _imported_by(ROOT / "host"))
    roots, skipped = _loaded_roots(modules)
    pulled = sorted(roots & set(FORBIDDEN))
    assert not pulled, f"host/ pulls in {pulled}; read CIFAR-10 through cifar.reader"
    assert "cifar.reader" in modules  # the harness does read CIFAR-10, through the reader
    assert {"host", "cifar", "export", "wire", "numpy", "serial", "pyvisa"} <= roots
    assert set(skipped) <= {"joulescope"}, skipped  # only an optional meter's own library


def test_harness_does_not_import_the_emulator_yet_knows_its_sim_meter():
    assert not any(name.startswith("fpga.emulator") for name in _imported_by(ROOT / "host"))
    report = _import_fresh(sorted(set(HARNESS) | _imported_by(ROOT / "host")))
    emulator = [name for name in report["modules"] if name.startswith("fpga.emulator")]
    assert not emulator, f"host/ imports {emulator}"
    # The kind comes from the entry point in pyproject.toml, which an install writes into the
    # package's metadata: after changing it, reinstall (make setup).
    assert "sim" in report["kinds"], report["kinds"]  # known, not imported
    assert report["sim"] == "fpga.emulator.meter.SimulatedKeysight34465A"  # imported once used


def test_the_check_sees_torch_when_it_is_imported():
    # The same fresh-interpreter check on the training loader, which does need torch.
    roots, _ = _loaded_roots(["train.data"])
    assert {"torch", "train", "cifar"} <= roots

"""The measurement command line (measurements/run_measurement.py): a run that never starts leaves no
run folder behind, whether its bundle is refused or it fails before the first window."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from export.bundle import export_bundle
from measurements.run_measurement import main

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "measurements" / "train" / "resnet8-w4a4" / "base" / "final.pt"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return export_bundle(BASE, tmp_path_factory.mktemp("bundles") / "base", progress=False).path


def _flip_byte(path: Path, offset: int = 200) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 1]))


def test_a_tampered_bundle_is_refused_in_one_line_and_leaves_no_run_folder(
    bundle, tmp_path, capsys
):
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    _flip_byte(tampered / "block1.onnx")
    out = tmp_path / "runs"
    argv = ["--port", "loop://", "--model", f"full={tampered}:full", "--out", str(out), "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith("error: bundle file") and "block1.onnx" in err
    assert "modified or damaged" in err
    assert not out.exists()


def test_a_run_that_fails_before_its_first_window_is_removed(bundle, tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["--port", "loop://", "--model", f"full={bundle}:full", "--out", str(out)]
    assert main([*argv, "--data", str(tmp_path / "no-cifar"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "no-cifar" in err[-1]
    assert "removed: no window was measured" in err[-2]
    assert list(out.iterdir()) == []  # the run folder was created, then removed

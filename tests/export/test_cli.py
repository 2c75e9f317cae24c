"""`python -m export`: export, verify and run, and one-line errors with exit status 1."""

from __future__ import annotations

import json

from export.__main__ import main
from tests.conftest import needs_cifar10

from .conftest import TRAINED


def test_export_then_refuse_to_overwrite(tmp_path, capsys):
    out = tmp_path / "b"
    assert main([str(TRAINED), "--out", str(out), "--quiet"]) == 0
    assert "bundle resnet8-mgl2s-" in capsys.readouterr().out
    assert (out / "manifest.json").is_file()
    assert main([str(TRAINED), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--force" in err and err.count("\n") == 1


def test_errors_are_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "none.pt"), "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and err.count("\n") == 1
    assert main(["verify", str(tmp_path)]) == 1
    assert "has no manifest.json" in capsys.readouterr().err


@needs_cifar10
def test_verify_and_run(trained_bundle, tmp_path, capsys):
    report = tmp_path / "parity.json"
    args = ["verify", str(trained_bundle.path), "--checkpoint", str(TRAINED), "--images", "64"]
    assert main([*args, "--threads", "1", "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["ok"] and data["images"] == 64 and data["modes"][0]["all_agree"] >= 0.995
    assert "iadi" in capsys.readouterr().out
    assert main(["run", str(trained_bundle.path), "--images", "64", "--threads", "1"]) == 0
    assert "compute savings" in capsys.readouterr().out

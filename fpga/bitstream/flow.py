"""Bundle -> one ZedBoard overlay: the FINN front end, the merge, then FINN's back end with Vivado.

1. :func:`fpga.bitstream.overlay.prepare_overlay` (no Vivado): the front end of every graph
   (:func:`fpga.finn.to_hw`: streamlined, HW layers, folded, estimated), FINN's multi-DNN merge
   of their HW partitions into one model with an input and an output per engine
   (``overlay.onnx``), and the deploy folder;
2. FINN's builder on ``overlay.onnx`` over :data:`BACKEND_STEPS`: FINN's
   ``step_generate_hardware`` (HLS/RTL code, IP, FIFO sizing) and ``step_create_stitched_ip``,
   then :func:`step_zedboard_bitfile` (FINN's ``step_synthesize_bitfile`` with the ZedBoard
   registered: an IODMA pair per engine, the Zynq PS7 block design, synthesis,
   implementation, ``.bit`` and ``.hwh``), ``step_make_driver`` (``settings.json`` for
   finn-plus-driver) and ``step_deployment_package``;
3. the bitfile and FINN's ``settings.json`` go into the deploy folder, whose
   ``accelerators.json`` then says ``settings_origin: finn build``.

Before anything starts, :func:`require_vivado` checks ``XILINX_VIVADO`` and the version that
``vivado -version`` prints; each failure is one line (:class:`VivadoError`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fpga.bitstream.zedboard import ZEDBOARD, ZEDBOARD_PART, register_zedboard, zedboard_shell
from fpga.finn.errors import BuildError, ToolchainError

log = logging.getLogger(__name__)

VIVADO_MISSING = (
    "Vivado not found: set XILINX_VIVADO or mount Vivado in the container "
    "(make bitstream VIVADO=/tools/Xilinx/Vivado/2022.2)"
)
SUPPORTED_VIVADO: tuple[tuple[int, int], ...] = ((2022, 2), (2024, 2))
"""Vivado releases the flow accepts: 2022.2 (FINN's recommended release) and 2024.2 (the first
release with the merged Vitis tree, which finn-plus 1.6.1 handles: ``vitis-run``)."""
ALLOW_ANY_VERSION_ENV = "DDI_ALLOW_ANY_VIVADO"
"""Set to 1 to accept an unsupported Vivado release (at your own risk)."""
_VERSION = re.compile(
    r"^[\s*]*vivado\s+v(\d{4})\.(\d+)(?:\.(\d+))?\b", re.IGNORECASE | re.MULTILINE
)
"""``vivado v2022.2 (64-bit)`` (``vivado -version``; ``****** Vivado v2022.2`` in logs)."""


class VivadoError(ToolchainError):
    """Vivado is missing, cannot be run, or is a release the flow does not support."""


def parse_vivado_version(text: str) -> tuple[int, int]:
    """(year, release) from the output of ``vivado -version`` (``vivado v2022.2 (64-bit)``)."""
    match = _VERSION.search(text)
    if match is None:
        first = text.strip().splitlines()[0] if text.strip() else ""
        raise VivadoError(f"cannot read a Vivado version from `vivado -version`: {first!r}")
    return int(match.group(1)), int(match.group(2))


def check_vivado_version(version: tuple[int, int], allow_any: bool = False) -> None:
    """Raise :class:`VivadoError` unless ``version`` is in :data:`SUPPORTED_VIVADO`."""
    if version in SUPPORTED_VIVADO or allow_any:
        return
    names = ", ".join(f"{y}.{r}" for y, r in SUPPORTED_VIVADO)
    raise VivadoError(
        f"Vivado {version[0]}.{version[1]} is not supported (supported: {names}); mount a "
        f"supported release, or set {ALLOW_ANY_VERSION_ENV}=1 to try anyway"
    )


def find_vivado(environ: dict[str, str] | None = None) -> Path:
    """The ``vivado`` executable under ``$XILINX_VIVADO``; :class:`VivadoError` if absent."""
    from fpga.finn.compat import NO_VIVADO

    env = os.environ if environ is None else environ
    root = env.get("XILINX_VIVADO", "")
    if not root or root == NO_VIVADO:
        raise VivadoError(VIVADO_MISSING)
    vivado = Path(root) / "bin" / "vivado"
    if not (vivado.is_file() and os.access(vivado, os.X_OK)):
        raise VivadoError(f"{VIVADO_MISSING}; XILINX_VIVADO={root!r} has no bin/vivado")
    return vivado


def require_vivado(
    environ: dict[str, str] | None = None,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> tuple[Path, tuple[int, int]]:
    """Find Vivado, run ``vivado -version``, check the release; return (executable, version)."""
    env = os.environ if environ is None else environ
    vivado = find_vivado(env)
    try:
        done = run(
            [str(vivado), "-version"], capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VivadoError(f"`{vivado} -version` failed: {type(exc).__name__}: {exc}") from exc
    version = parse_vivado_version(f"{done.stdout}\n{done.stderr}")
    check_vivado_version(version, env.get(ALLOW_ANY_VERSION_ENV, "") not in ("", "0"))
    return vivado, version


def tool_environment(vivado: Path, version: tuple[int, int]) -> None:
    """Put Vivado (and Vitis HLS, where it is) on PATH as FINN's ``finn`` command would."""
    root = vivado.parent.parent
    paths = [str(vivado.parent)]
    if "XILINX_HLS" not in os.environ:
        tag = f"{version[0]}.{version[1]}"
        # <= 2024.1: <Xilinx>/Vitis_HLS/<v>; from 2024.2 HLS lives in <Xilinx>/Vitis/<v>
        for hls in (root.parent.parent / "Vitis_HLS" / tag, root.parent.parent / "Vitis" / tag):
            if (hls / "bin").is_dir():
                os.environ["XILINX_HLS"] = str(hls)
                break
    if "XILINX_HLS" in os.environ:
        paths.append(str(Path(os.environ["XILINX_HLS"]) / "bin"))
    current = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join([p for p in paths if p not in current] + current)


# --- FINN's back end ----------------------------------------------------------------------


def step_zedboard_bitfile(model: Any, cfg: Any) -> Any:
    """FINN's ``step_synthesize_bitfile`` for the ZedBoard (after the stitched IP).

    FINN's ``ZynqBuild`` inserts the IODMAs, builds each partition's stitched IP and calls
    ``MakeZYNQProject``, whose Tcl (:func:`fpga.bitstream.zedboard.shell_template`) creates the
    block design: PS7 with the ZedBoard preset, GP0 -> AXI-lite, DMAs -> HP0, FCLK0 100 MHz into
    the clocking wizard; then synthesis, implementation, bitstream and the ``.hwh``.
    """
    from finn.builder.build_dataflow_steps import step_synthesize_bitfile

    with zedboard_shell():
        return step_synthesize_bitfile(model, cfg)


BACKEND_STEPS: list = [
    "step_generate_hardware",
    "step_create_stitched_ip",
    step_zedboard_bitfile,
    "step_make_driver",
    "step_deployment_package",
]
"""The steps after the front end's ``step_generate_estimate_reports``."""


@dataclass
class BitstreamConfig:
    """How the bitstream flow builds the overlay (saved as ``bitstream_config.json``)."""

    clk_period_ns: float = 10.0
    target_fps: int | None = 1000
    folding_config_file: str | None = None
    graphs: list[str] | None = None
    """Only these bundle graphs (default: every graph with a QONNX file)."""
    batch_size: int = 64
    """Images per DMA transfer on the board (``accelerators.json``)."""


def backend_config(config: BitstreamConfig, out_dir: Path) -> Any:
    """FINN's ``DataflowBuildConfig`` for the back end of the collapsed overlay model (it is
    past the front end's estimates: HW layers, specialized, folded)."""
    from finn.builder.build_dataflow_config import DataflowOutputType, ShellFlowType

    from fpga.finn.frontend import FrontendConfig

    register_zedboard()
    frontend = FrontendConfig(
        fpga_part=ZEDBOARD_PART,
        clk_period_ns=config.clk_period_ns,
        target_fps=config.target_fps,
        folding_config_file=config.folding_config_file,
    )
    cfg = frontend.dataflow_config(out_dir, steps=list(BACKEND_STEPS))
    cfg.board = ZEDBOARD
    cfg.fpga_part = None  # resolved from the board: FINN's part_map, registered above
    cfg.shell_flow_type = ShellFlowType.VIVADO_ZYNQ
    cfg.generate_outputs = [
        DataflowOutputType.STITCHED_IP,
        DataflowOutputType.BITFILE,
        DataflowOutputType.PYNQ_DRIVER,
        DataflowOutputType.DEPLOYMENT_PACKAGE,
    ]
    return cfg


def ensure_finn_deps() -> None:
    """FINN's HLS layers need finn-hlslib (``finn deps update``); fetch it once if missing."""
    deps = os.environ.get("FINN_DEPS")
    if not deps or (Path(deps) / "finn-hlslib").is_dir():
        return
    finn = shutil.which("finn")
    if finn is None:
        raise ToolchainError("FINN's `finn` command is not on PATH; install finn-plus")
    log.info("fetching FINN's dependencies into %s (finn deps update)", deps)
    done = subprocess.run(
        [finn, "deps", "update", "--accept-defaults", "-d", deps], check=False, text=True
    )
    if done.returncode != 0 or not (Path(deps) / "finn-hlslib").is_dir():
        raise ToolchainError(f"`finn deps update -d {deps}` failed; it needs access to GitHub")


def build_bitstreams(
    bundle: str | os.PathLike, out_dir: str | os.PathLike, config: BitstreamConfig | None = None
) -> dict[str, str]:
    """The bundle's overlay: one bitstream with an engine per selected graph, and the board's
    deploy folder (``<out>/deploy``: bitfile, FINN's ``settings.json``, tails,
    ``accelerators.json``; :mod:`fpga.bitstream.overlay`).

    Returns the paths of ``deploy``, ``bitfile``, ``hwh`` and ``settings``. Raises
    :class:`VivadoError` first when Vivado is absent or unsupported, :class:`BuildError` when
    FINN's builder fails.
    """
    from fpga.bitstream.overlay import (
        BITFILE,
        FINN_BUILD,
        SETTINGS,
        OverlayConfig,
        adopt_settings,
        prepare_overlay,
    )
    from fpga.board.accel import OverlaySpec
    from fpga.finn import compat

    config = config or BitstreamConfig()
    vivado, version = require_vivado()  # before FINN is imported: it reaches for Vivado
    tool_environment(vivado, version)
    ensure_finn_deps()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    compat.prepare_finn(out / "finn_tmp")
    from finn.builder.build_dataflow import build_dataflow_cfg
    from finn.util.settings import get_settings

    from fpga.finn.frontend import _failure

    if os.environ.get("FINN_DEPS"):
        get_settings().finn_deps = os.environ["FINN_DEPS"]
    (out / "bitstream_config.json").write_text(json.dumps(asdict(config), indent=1) + "\n")
    prepared = prepare_overlay(
        bundle,
        out,
        OverlayConfig(
            clk_period_ns=config.clk_period_ns,
            target_fps=config.target_fps,
            folding_config_file=config.folding_config_file,
            graphs=config.graphs,
            batch_size=config.batch_size,
        ),
    )
    build = out / "finn"
    cfg = backend_config(config, build)
    log.info(
        "FINN back end of %d engines (Vivado %d.%d) in %s", len(prepared.engines), *version, build
    )
    with compat.builder_session():
        try:
            status = build_dataflow_cfg(str(prepared.model), cfg)
        except Exception as exc:
            raise BuildError(
                f"FINN back end failed: {type(exc).__name__}: {exc}; "
                f"see {str(build / 'build_dataflow.log')!r}"
            ) from exc
    if status != 0:
        raise BuildError(f"FINN back end failed: {_failure(build / 'build_dataflow.log')}")
    finn_deploy = build / "deploy"
    deploy = prepared.deploy
    shutil.copytree(finn_deploy / "bitfile", deploy / "bitfile", dirs_exist_ok=True)
    weights = finn_deploy / "driver" / "runtime_weights"
    if weights.is_dir():
        shutil.copytree(weights, deploy / "runtime_weights", dirs_exist_ok=True)
    settings = json.loads((finn_deploy / "driver" / "settings.json").read_text())
    adopt_settings(OverlaySpec.load(deploy), settings, FINN_BUILD)
    files = {
        "deploy": str(deploy),
        "bitfile": str(deploy / BITFILE),
        "hwh": str((deploy / BITFILE).with_suffix(".hwh")),
        "settings": str(deploy / SETTINGS),
    }
    if not Path(files["bitfile"]).is_file():
        raise BuildError(f"FINN's deployment package has no {BITFILE}: {str(finn_deploy)!r}")
    return files

"""Bundle -> one ZedBoard overlay: the FINN front end, the merge, then FINN's back end with Vivado.

1. :func:`fpga.bitstream.overlay.prepare_overlay` (no Vivado): the front end of every graph
   (:func:`fpga.finn.to_hw`: streamlined, HW layers, folded, estimated), FINN's multi-DNN merge
   of their HW partitions into one model with an input and an output per engine
   (``overlay.onnx``), and the deploy folder;
2. FINN's builder on ``overlay.onnx`` over :data:`BACKEND_STEPS`: FINN's
   ``step_generate_hardware`` (HLS/RTL code, IP, FIFO sizing by FINN's RTL simulation) and
   ``step_create_stitched_ip``, :func:`step_stitched_ip_rtlsim` (a few images through the
   stitched IP before synthesis: a deadlock fails in minutes), then
   :func:`step_zedboard_bitfile` (FINN's ``step_synthesize_bitfile`` with the ZedBoard
   registered: an IODMA pair per engine over HP0, and HP1 beyond 8 engines, the Zynq PS7
   block design, synthesis, implementation, ``.bit`` and ``.hwh``), ``step_make_driver``
   (``settings.json`` for finn-plus-driver) and ``step_deployment_package``;
3. the bitfile and FINN's ``settings.json`` go into the deploy folder, whose
   ``accelerators.json`` then says ``settings_origin: finn build``.

Before anything starts, :func:`require_vivado` checks ``XILINX_VIVADO`` and the version that
``vivado -version`` prints, :func:`check_fifo_tools` pip's ``cmake`` and Boost program_options,
and :func:`fpga.finn.compat.prepare_vivado` prepares FINN as its ``finn`` command does
(settings, XSI, ``FINN_RTLLIB``/``FINN_CUSTOM_HLS``, ``LD_LIBRARY_PATH``); each failure is one
line (:class:`VivadoError`, :class:`ToolchainError`).
"""

from __future__ import annotations

import dataclasses
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

import numpy as np

# the module, not its names: fpga.architecture imports fpga.bitstream.overlay, whose package
# (this one) imports this module first
import fpga.architecture as architecture
from fpga.bitstream.overlay import (
    BITFILE,
    FINN_BUILD,
    SETTINGS,
    OverlayConfig,
    adopt_settings,
    prepare_overlay,
    runtime_weight_files,
)
from fpga.bitstream.zedboard import ZEDBOARD, ZEDBOARD_PART, register_zedboard, zedboard_shell
from fpga.board.accel import OverlaySpec
from fpga.finn import compat
from fpga.finn.compat import NO_VIVADO
from fpga.finn.errors import BuildError, ToolchainError
from fpga.finn.frontend import FrontendConfig, build_failure, python_model

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


RTLSIM_FILE = "rtlsim_check.npz"
"""Inputs and expected outputs (FINN's Python execution) of the stitched-IP RTL simulation."""
RTLSIM_IMAGES = 3
"""Images per engine that the stitched IP simulates before synthesis."""


def rtlsim_reference(model: Any, path: Path, images: int = RTLSIM_IMAGES, seed: int = 0) -> Path:
    """Write ``images`` inputs per engine of ``model`` (the collapsed overlay: random integer
    codes over each input's FINN datatype) and the outputs FINN's Python execution gives for
    them, by position (``in<k>``, ``out<k>``), to ``path``; return it. No Vivado needed."""
    import numpy as np
    from qonnx.core.onnx_exec import execute_onnx

    runnable = python_model(model)
    rng = np.random.default_rng(seed)
    arrays: dict[str, list] = {}
    for _ in range(images):
        context = {}
        for k, tensor in enumerate(runnable.graph.input):
            dt = runnable.get_tensor_datatype(tensor.name)
            shape = [1, *runnable.get_tensor_shape(tensor.name)[1:]]
            codes = rng.integers(int(dt.min()), int(dt.max()) + 1, size=shape)
            context[tensor.name] = codes.astype(np.float32)
            arrays.setdefault(f"in{k}", []).append(context[tensor.name])
        result = execute_onnx(runnable, context)
        for k, tensor in enumerate(runnable.graph.output):
            arrays.setdefault(f"out{k}", []).append(result[tensor.name])
    np.savez(path, **{k: np.concatenate(v) for k, v in arrays.items()})
    return path


def step_stitched_ip_rtlsim(model: Any, cfg: Any) -> Any:
    """A few images per engine through the stitched IP in Vivado's simulator, before synthesis.

    FINN's own ``STITCHED_IP_RTLSIM`` verification takes one input and one output; the overlay
    has one of each per engine, so this runs FINN's ``execute_onnx`` with ``exec_mode=rtlsim``
    (the stitched IP over XSI) on the inputs of :func:`rtlsim_reference`, one image at a time,
    with FINN's liveness watchdog at 1.1 x the critical path + 50 cycles (as FINN sets it): a
    FIFO deadlock stops the build here in minutes instead of on the board after synthesis. Any
    output that differs from FINN's Python execution fails the build (``FINNUserError``, which
    FINN's builder logs in one line; :func:`build_bitstreams` then raises :class:`BuildError`).
    """
    from copy import deepcopy

    import numpy as np
    from finn.analysis.fpgadataflow.dataflow_performance import dataflow_performance
    from finn.core.onnx_exec import execute_onnx
    from finn.transformation.fpgadataflow.annotate_cycles import AnnotateCycles
    from finn.util.exception import FINNUserError  # FINN's builder logs it in one line

    data = np.load(Path(cfg.output_dir).parent / RTLSIM_FILE)
    sim = deepcopy(model)
    sim.set_metadata_prop("exec_mode", "rtlsim")
    perf = sim.transform(AnnotateCycles()).analysis(dataflow_performance)
    sim.set_metadata_prop(
        "rtlsim_liveness_estimate", str(int(np.ceil(perf["critical_path_cycles"] * 1.1 + 50)))
    )
    inputs = [t.name for t in sim.graph.input]
    outputs = [t.name for t in sim.graph.output]
    images = data["in0"].shape[0]
    for b in range(images):
        context = {name: data[f"in{k}"][b : b + 1] for k, name in enumerate(inputs)}
        try:
            result = execute_onnx(sim, context)
        except Exception as exc:
            raise FINNUserError(
                f"stitched-IP RTL simulation of image {b} failed: {type(exc).__name__}: {exc} "
                "(a FIFO deadlock ends at FINN's liveness watchdog)"
            ) from exc
        for k, name in enumerate(outputs):
            expected = data[f"out{k}"][b : b + 1]
            got = np.asarray(result[name]).reshape(expected.shape)
            if not np.array_equal(got, expected):
                bad = int(np.count_nonzero(got != expected))
                raise FINNUserError(
                    f"stitched-IP RTL simulation differs from FINN's Python execution on "
                    f"output {k} ({name!r}) of image {b}: {bad} of {expected.size} values"
                )
    log.info("stitched IP: %d images per engine match FINN's Python execution", images)
    return model


FIFO_STRATEGIES = ("distributed_sim", "live_fifo", "force_minimal_fifos")
"""FINN's ``AutoFIFOSizingMethod`` values; the default is FINN's simulation strategy."""
JOIN_OPS = ("ElementwiseAdd_hls", "ElementwiseAdd_rtl", "AddStreams_hls")


def check_fifo_strategy(strategy: str, model: Any) -> None:
    """Refuse an unknown FIFO strategy, and minimal FIFOs on a design with residual joins (a
    join whose skip path holds less than the main path's sliding-window fills deadlocks)."""
    if strategy not in FIFO_STRATEGIES:
        raise BuildError(f"FIFO strategy {strategy!r} unknown; use one of {FIFO_STRATEGIES!r}")
    joins = [n.name for n in model.graph.node if n.op_type in JOIN_OPS]
    if strategy == "force_minimal_fifos" and joins:
        raise BuildError(
            f"FIFO strategy 'force_minimal_fifos' on {len(joins)} residual joins (e.g. "
            f"{joins[0]!r}) deadlocks; use 'distributed_sim' (FINN's default)"
        )


BOOST_PROGRAM_OPTIONS = "boost/program_options.hpp"
INCLUDE_DIRS = ("/usr/include", "/usr/local/include")


def check_fifo_tools() -> None:
    """FINN's FIFO sizing simulation builds ``finn_xsi`` with ``python -m cmake`` and Boost
    program_options: refuse in one line before any work if either is missing."""
    import importlib.util

    if importlib.util.find_spec("cmake") is None:
        raise ToolchainError(
            "FIFO sizing runs `python -m cmake`: pip install 'cmake>=4.0.3,<4.1' (the [finn] extra)"
        )
    roots = [*os.environ.get("CPATH", "").split(os.pathsep), *INCLUDE_DIRS]
    if not any((Path(r) / BOOST_PROGRAM_OPTIONS).is_file() for r in roots if r):
        raise ToolchainError(
            "FIFO sizing needs Boost program_options (boost/program_options.hpp not found): "
            "apt-get install libboost-program-options-dev"
        )


BACKEND_STEPS: list = [
    "step_generate_hardware",
    "step_create_stitched_ip",
    step_stitched_ip_rtlsim,
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
    balance_macs: bool = True
    """Fold every engine to the MAC rate of the largest one at ``target_fps``
    (``FrontendConfig.balance_macs``: an engine's time then follows its MACs)."""
    pixel_words: bool = True
    """Every engine's boundary layers take and give one pixel a DMA word
    (``FrontendConfig.pixel_words``), so engines pass packed activations on as they are."""
    folding_config_file: str | None = None
    graphs: list[str] | None = None
    """Only these bundle graphs (default: every graph with a QONNX file)."""
    batch_size: int = 64
    """Images per DMA transfer on the board (``accelerators.json``)."""
    fifo_strategy: str = "distributed_sim"
    """FINN's FIFO sizing (``auto_fifo_strategy``): its RTL simulation by default; minimal
    FIFOs are refused on designs with residual joins (:func:`check_fifo_strategy`)."""
    rtlsim_images: int = RTLSIM_IMAGES
    """Images per engine simulated on the stitched IP before synthesis (0: skip the check)."""
    design: str = "per-graph"
    """``per-graph``: an engine per graph (:func:`fpga.bitstream.overlay.prepare_overlay`);
    ``shared``: an engine per graph shape, each block's weights written at run time
    (:func:`fpga.architecture.prepare_shared_overlay`): ``target_fps`` is then the block
    engines' target (None: ``SharedConfig``'s, 2,500), and ``balance_macs``, ``pixel_words``,
    ``folding_config_file`` and ``graphs`` do not apply."""
    gates_on_arm: bool = False
    """``shared`` only: leave the quantized gates' engines out (the ARM runs them)."""


def backend_config(config: BitstreamConfig, out_dir: Path) -> Any:
    """FINN's ``DataflowBuildConfig`` for the back end of the collapsed overlay model (it is
    past the front end's estimates: HW layers, specialized, folded)."""
    from finn.builder.build_dataflow_config import (
        AutoFIFOSizingMethod,
        DataflowOutputType,
        ShellFlowType,
    )

    register_zedboard()
    frontend = FrontendConfig(
        fpga_part=ZEDBOARD_PART,
        clk_period_ns=config.clk_period_ns,
        target_fps=config.target_fps,
        folding_config_file=config.folding_config_file,
    )
    steps = list(BACKEND_STEPS)
    if config.rtlsim_images == 0:
        steps.remove(step_stitched_ip_rtlsim)
    cfg = frontend.dataflow_config(out_dir, steps=steps)
    cfg.board = ZEDBOARD
    cfg.auto_fifo_depths = True
    cfg.auto_fifo_strategy = AutoFIFOSizingMethod(config.fifo_strategy)
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


DESIGNS = ("per-graph", "shared")


def adopt_windows(
    spec: OverlaySpec, finn_nodes: dict[str, dict[str, str]], files: list
) -> OverlaySpec:
    """``spec`` with the AXI-lite windows of the real build: after synthesis FINN's driver
    numbered its runtime weight files (``files``) itself. Each memory's file is found by the
    name FINN gave its layer in the merged overlay (``finn_nodes``, from the prediction:
    :attr:`fpga.architecture.SharedOverlay.finn_nodes`) and checked word for word against the
    block's ``.npz``; its partition and layer give the key. A window that moved is logged and
    the real one kept; a memory the build does not have stops it."""
    weights_dir = (spec.root / str(spec.runtime_weights)).parent
    weights = json.loads((spec.root / str(spec.runtime_weights)).read_text())
    by_name = {f[2]: f for f in files}
    windows: dict[str, dict[str, str]] = {}
    for engine, nodes in finn_nodes.items():
        for node, words in architecture.engine_words(weights, weights_dir, engine):
            finn_node = nodes[node]
            found = by_name.get(finn_node)
            if found is None or not np.array_equal(found[3], words):
                raise BuildError(
                    f"FINN's build has no runtime weight file of {finn_node!r} with the words "
                    f"of {node!r} (engine {engine!r}); the prediction and the build differ: "
                    "report this as a bug"
                )
            windows.setdefault(engine, {})[node] = architecture.axilite_key(*found[:2])
    if windows != spec.axilite:
        log.warning("the build numbered the AXI-lite windows otherwise than predicted; kept")
    return dataclasses.replace(spec, axilite=windows)


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

    config = config or BitstreamConfig()
    if config.fifo_strategy not in FIFO_STRATEGIES:
        raise BuildError(
            f"FIFO strategy {config.fifo_strategy!r} unknown; use one of {FIFO_STRATEGIES!r}"
        )
    vivado, version = require_vivado()  # before FINN is imported: it reaches for Vivado
    if version == (2024, 2):
        log.warning(
            "Vivado 2024.2: FINN's wide memory streamers cost about 2k LUT more each than with "
            "2022.2 (finn-plus#152), not in the resource budget; 2022.2 is the documented pin"
        )
    tool_environment(vivado, version)
    check_fifo_tools()
    ensure_finn_deps()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    compat.prepare_finn(out / "finn_tmp")  # FINN's start-up, as its `finn` command does it
    from finn.builder.build_dataflow import build_dataflow_cfg
    from finn.util.settings import get_settings

    if os.environ.get("FINN_DEPS"):
        get_settings().finn_deps = os.environ["FINN_DEPS"]
    (out / "bitstream_config.json").write_text(json.dumps(asdict(config), indent=1) + "\n")
    if config.design not in DESIGNS:
        raise BuildError(f"design {config.design!r} unknown; use one of {DESIGNS!r}")
    if config.design == "shared":
        shared = architecture.SharedConfig(clk_period_ns=config.clk_period_ns)
        if config.target_fps is not None:
            shared.target_fps = config.target_fps
        prepared = architecture.prepare_shared_overlay(
            bundle,
            out,
            shared,
            gates=not config.gates_on_arm,
            batch_size=config.batch_size,
        )
    else:
        prepared = prepare_overlay(
            bundle,
            out,
            OverlayConfig(
                clk_period_ns=config.clk_period_ns,
                target_fps=config.target_fps,
                balance_macs=config.balance_macs,
                pixel_words=config.pixel_words,
                folding_config_file=config.folding_config_file,
                graphs=config.graphs,
                batch_size=config.batch_size,
            ),
        )
    from qonnx.core.modelwrapper import ModelWrapper

    overlay_model = ModelWrapper(str(prepared.model))
    check_fifo_strategy(config.fifo_strategy, overlay_model)
    if config.rtlsim_images:
        rtlsim_reference(overlay_model, out / RTLSIM_FILE, config.rtlsim_images)
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
        raise BuildError(f"FINN back end failed: {build_failure(build / 'build_dataflow.log')}")
    finn_deploy = build / "deploy"
    deploy = prepared.deploy
    shutil.copytree(finn_deploy / "bitfile", deploy / "bitfile", dirs_exist_ok=True)
    weights = finn_deploy / "driver" / "runtime_weights"
    spec = OverlaySpec.load(deploy)
    if spec.runtime_weights is not None:
        spec = adopt_windows(spec, prepared.finn_nodes, runtime_weight_files(weights))
    elif weights.is_dir():
        shutil.copytree(weights, deploy / "runtime_weights", dirs_exist_ok=True)
    settings = json.loads((finn_deploy / "driver" / "settings.json").read_text())
    adopt_settings(spec, settings, FINN_BUILD)
    files = {
        "deploy": str(deploy),
        "bitfile": str(deploy / BITFILE),
        "hwh": str((deploy / BITFILE).with_suffix(".hwh")),
        "settings": str(deploy / SETTINGS),
    }
    if not Path(files["bitfile"]).is_file():
        raise BuildError(f"FINN's deployment package has no {BITFILE}: {str(finn_deploy)!r}")
    return files

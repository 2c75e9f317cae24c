"""Running finn-plus 1.6.1 without Vivado: what FINN expects at start-up, provided in one place.

FINN is normally started by its ``finn`` command, which reads a settings file, checks Vivado
and builds the XSI simulator binding. The front end only runs the steps before synthesis
(streamlining, HW layers, folding, estimates), which need none of that, but three things stand in
the way when FINN is used as a library on a machine without Vivado:

1. Transformations look up FINN's global settings (build folder, library paths) and raise
   ``Could not find global settings`` until something creates them: :func:`prepare_finn` calls
   FINN's own ``initialize_dummy_settings()`` and points the build folder where we want it.
2. ``finn.builder.build_dataflow_steps`` does ``from finn.xsi import SimEngine`` at import time;
   ``finn.xsi`` resolves that name lazily and raises ``XILINX_VIVADO environment variable not
   set``. Without Vivado, :func:`prepare_finn` binds that one name to :class:`NoVivadoSimEngine`
   (the same binding ``finn.xsi`` makes itself once it has built XSI), which raises a
   :class:`ToolchainError` only if an RTL simulation is actually started.
3. FINN's builder (``build_dataflow_cfg``) reads ``XILINX_VIVADO`` when it writes
   ``report/metadata_builder.json`` at the end, replaces ``sys.stdout``/``sys.stderr`` for good,
   and resets the root logger. :func:`builder_session` sets a placeholder ``XILINX_VIVADO`` for
   the duration of the build (reported as ``tool_version: "no-vivado"``), sends FINN's console
   output to this package's logger, and puts streams and logging back afterwards.

With Vivado present (``XILINX_VIVADO`` set to a real installation), :func:`prepare_vivado`
prepares FINN exactly as finn-plus's ``finn`` command does before a build, by calling its own
``finn.interface.run_finn.prepare_finn``: settings, the multiprocessing start method, the XSI
binding (``xsi.so``, built into a writable copy of ``finn_xsi`` when the installed one is
read-only), Vivado/Vitis HLS on ``PATH``, ``LD_LIBRARY_PATH`` (Vivado ``lib/lnx64.o``, HLS
``fpo_v7_1``), ``XILINX_LOCAL_USER_DATA=no``, ``FINN_RTLLIB`` and ``FINN_CUSTOM_HLS`` (read by
the HLS and RTL IP generation Tcl). :func:`reexec_for_vivado` restarts a command-line process
once so that the loader itself sees that ``LD_LIBRARY_PATH`` (finn-plus's ``main`` does the same).

No FINN file is copied or changed; everything here is undone or inert once Vivado is present.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from fpga.finn.errors import ToolchainError

log = logging.getLogger(__name__)

FINN_DISTRIBUTION = "finn-plus"
FINN_VERSION = "1.6.1"
"""The finn-plus release this front end was written and tested against."""
NO_VIVADO = "/nonexistent/no-vivado"
"""``XILINX_VIVADO`` while FINN's builder runs without Vivado (its name ends up in reports)."""


def vivado_available() -> bool:
    """Whether a Vivado installation is announced (``XILINX_VIVADO`` set, not our placeholder)."""
    root = os.environ.get("XILINX_VIVADO")
    return bool(root) and root != NO_VIVADO


def finn_version() -> str:
    """The installed finn-plus version; raise :class:`ToolchainError` when it is missing."""
    try:
        return importlib.metadata.version(FINN_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ToolchainError(
            f"{FINN_DISTRIBUTION!r} is not installed; run `make setup`, or `pip install -e "
            f"'.[finn]'` then `pip install --no-deps {FINN_DISTRIBUTION}=={FINN_VERSION}`"
        ) from None


class NoVivadoSimEngine:
    """Stands in for ``finn.xsi.SimEngine`` when Vivado is absent: refuses to be started."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise ToolchainError(
            "RTL simulation needs Vivado's XSI simulator and XILINX_VIVADO is not set; run "
            "rtlsim steps where Vivado is installed (`make bitstream`), or use python execution"
        )


_PREPARED: dict[str, object] = {}
"""FINN's settings once :func:`prepare_vivado` has run in this process."""


def prepare_finn(build_dir: str | os.PathLike | None = None) -> None:
    """Make FINN usable as a library here; idempotent.

    ``build_dir`` is where FINN may put temporary build files (its ``FINN_BUILD_DIR``); by
    default FINN's own choice (``FINN_TMP`` beside the working directory) is kept.
    """
    version = finn_version()
    if version != FINN_VERSION:
        warnings.warn(
            f"fpga.finn was tested with {FINN_DISTRIBUTION} {FINN_VERSION}, found {version!r}",
            stacklevel=2,
        )
    from finn.util import settings
    from finn.util.exception import FINNUserError

    if vivado_available():  # FINN's real start-up, once per process
        if _PREPARED.get("vivado") is None:
            if build_dir is None:
                build_dir = os.environ.get("FINN_BUILD_DIR") or Path.cwd() / "FINN_TMP"
            _PREPARED["vivado"] = prepare_vivado(build_dir, os.environ.get("FINN_DEPS"))
        elif build_dir is not None:
            Path(build_dir).mkdir(parents=True, exist_ok=True)
            settings.get_settings().finn_build_dir = Path(build_dir).resolve()
        return
    try:
        current = settings.get_settings()
    except FINNUserError:  # no settings yet: FINN was not started by its command line
        settings.initialize_dummy_settings()
        current = settings.get_settings()
    if build_dir is not None:
        Path(build_dir).mkdir(parents=True, exist_ok=True)
        current.finn_build_dir = Path(build_dir).resolve()  # also exports FINN_BUILD_DIR

    import finn.xsi

    if not vivado_available() and "SimEngine" not in vars(finn.xsi):
        finn.xsi.SimEngine = NoVivadoSimEngine  # what finn.xsi binds itself once XSI is built


class _LogStream(io.TextIOBase):
    """A text stream that hands each written line to a logger (FINN's builder prints)."""

    def __init__(self, logger: logging.Logger, level: int) -> None:
        super().__init__()
        self.logger, self.level, self.buffer = logger, level, ""
        self.lines: list[str] = []
        """Every line logged (FINN's start-up messages, to name its error)."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            if line.strip():
                self.logger.log(self.level, "%s", line.rstrip())
                self.lines.append(line.strip())
        return len(text)

    def flush(self) -> None:
        if self.buffer.strip():
            self.logger.log(self.level, "%s", self.buffer.rstrip())
            self.lines.append(self.buffer.strip())
        self.buffer = ""


@contextlib.contextmanager
def builder_session() -> Iterator[None]:
    """Run FINN's ``build_dataflow_cfg`` inside this and leave the process as it was.

    FINN's builder sets up logging for a command-line run: ``logging.basicConfig(force=True)``
    to its log file, ``sys.stdout``/``sys.stderr`` replaced by a tee, warnings captured. Here
    its console output goes to this module's logger at DEBUG level (the full log stays in the
    build folder's ``build_dataflow.log``), and handlers, levels, streams and the warnings hook
    are restored on exit, so a build inside pytest or a notebook leaves no trace.
    """
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_stdout, saved_stderr = sys.stdout, sys.stderr
    saved_showwarning = warnings.showwarning
    placeholder = "XILINX_VIVADO" not in os.environ
    if placeholder:
        os.environ["XILINX_VIVADO"] = NO_VIVADO
    sys.stdout = _LogStream(log, logging.DEBUG)
    sys.stderr = _LogStream(log, logging.DEBUG)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        sys.stdout, sys.stderr = saved_stdout, saved_stderr
        for handler in list(root.handlers):
            if handler not in saved_handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in saved_handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(saved_level)
        warnings.showwarning = saved_showwarning
        if placeholder:
            os.environ.pop("XILINX_VIVADO", None)


# --- with Vivado: FINN's start-up as finn-plus's `finn` command does it ---------------------

REEXEC_MARKER = "DDI_FPGA_LD_REEXEC"
"""Set in the environment of a process restarted by :func:`reexec_for_vivado` (once only)."""
XSI_DIR = "finn_xsi"
"""Folder (in the build folder) of the writable copy of ``finn_xsi``, when the installed one is
read-only (a system-wide or container install)."""


def xilinx_library_paths() -> list[str]:
    """The folders FINN puts on ``LD_LIBRARY_PATH`` for Vivado's simulator libraries
    (finn-plus's ``xilinx_ld_library_paths``: ``$XILINX_VIVADO/lib/lnx64.o``, HLS ``fpo_v7_1``)."""
    from finn.interface.run_finn import xilinx_ld_library_paths

    return xilinx_ld_library_paths()


def reexec_for_vivado(argv: list[str] | None = None) -> None:
    """Restart this process once with FINN's ``LD_LIBRARY_PATH``, if Vivado is present and the
    path lacks an entry (the loader reads it only at start; the in-process XSI binding needs it).

    finn-plus's own ``ensure_ld_library_path`` restarts ``sys.argv``, which loses ``-m``; this
    restarts ``sys.orig_argv`` (``python -m fpga.bitstream ...``) with the same environment.
    """
    if not vivado_available() or os.environ.get(REEXEC_MARKER) == "1":
        return
    from finn.interface.run_finn import prepend_ld_library_paths

    if not prepend_ld_library_paths(xilinx_library_paths()):
        return
    os.environ[REEXEC_MARKER] = "1"
    argv = list(sys.orig_argv if argv is None else argv)
    log.info("restarting with LD_LIBRARY_PATH=%s", os.environ["LD_LIBRARY_PATH"])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], os.environ)


def writable_xsi(source: Path, build_dir: Path) -> Path:
    """``source`` (FINN's ``finn_xsi`` folder) if this user may write into it (FINN builds
    ``xsi.so`` there), else a copy of it in ``build_dir``, made once."""
    if os.access(source, os.W_OK):
        return source
    target = build_dir / XSI_DIR
    if not (target / "CMakeLists.txt").is_file():
        shutil.copytree(
            source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
        )
        log.info("finn_xsi at %s is read-only: XSI is built in %s", source, target)
    return target


def vivado_environment() -> dict[str, str]:
    """The environment part of finn-plus's ``prepare_finn``, through its own helpers: Vivado and
    Vitis HLS on ``PATH`` (``set_synthesis_tools_paths``), ``LD_LIBRARY_PATH``
    (``xilinx_ld_library_paths``), ``XILINX_LOCAL_USER_DATA=no`` unless set, ``FINN_RTLLIB`` and
    ``FINN_CUSTOM_HLS`` (``resolve_module_path``). Returns the variables it set.

    ``prepare_finn`` does the same after building XSI; doing it first also puts ``vivado`` on
    ``PATH`` for that build (as ``source settings64.sh`` would) and leaves the environment
    prepared where the XSI build then fails.
    """
    from finn.interface.interface_utils import resolve_module_path, set_synthesis_tools_paths
    from finn.interface.run_finn import prepend_ld_library_paths

    tools = [
        Path(os.environ[k]) / "bin" for k in ("XILINX_VIVADO", "XILINX_HLS") if k in os.environ
    ]
    path = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join([str(t) for t in tools if str(t) not in path] + path)
    saved = sys.stdout
    sys.stdout = _LogStream(log, logging.INFO)  # FINN's warnings about XILINX_VITIS etc. (rich)
    try:
        set_synthesis_tools_paths()
    finally:
        sys.stdout.flush()
        sys.stdout = saved
    prepend_ld_library_paths(xilinx_library_paths())
    os.environ.setdefault("XILINX_LOCAL_USER_DATA", "no")
    os.environ["FINN_RTLLIB"] = resolve_module_path("finn-rtllib")
    os.environ["FINN_CUSTOM_HLS"] = resolve_module_path("custom_hls")
    names = ("PATH", "LD_LIBRARY_PATH", "XILINX_LOCAL_USER_DATA", "FINN_RTLLIB", "FINN_CUSTOM_HLS")
    return {k: os.environ[k] for k in names}


def prepare_vivado(build_dir: str | os.PathLike, finn_deps: str | os.PathLike | None = None):
    """FINN's start-up with Vivado present, through finn-plus's ``prepare_finn``; returns the
    settings. Raise :class:`ToolchainError` (one line) where FINN would exit.

    ``build_dir`` is FINN's ``FINN_BUILD_DIR`` (temporary builds) and holds, if needed, the
    writable ``finn_xsi``; ``finn_deps`` is ``FINN_DEPS`` (finn-hlslib, board files,
    nlohmann_json: ``finn deps update``). Dependencies are not updated here: that needs GitHub
    (:func:`fpga.bitstream.flow.ensure_finn_deps` fetches them once).
    """
    if not vivado_available():
        raise ToolchainError(
            "Vivado not found: set XILINX_VIVADO to a Vivado installation before preparing FINN"
        )
    finn_version()
    from finn.interface import run_finn
    from finn.interface.settings import FINNSettings

    build = Path(build_dir).resolve()
    build.mkdir(parents=True, exist_ok=True)
    settings = FINNSettings.init(flow_config=build / "flow.yaml")
    settings.finn_build_dir = build
    if finn_deps is not None:
        settings.finn_deps = Path(finn_deps).resolve()
    settings.automatic_dependency_updates = False  # no GitHub at build time
    settings.finn_xsi = writable_xsi(Path(settings.finn_xsi), build)
    os.environ["FINN_XSI"] = str(settings.finn_xsi)  # for worker processes (spawn)
    vivado_environment()
    saved = sys.stdout, sys.stderr
    streams = _LogStream(log, logging.INFO), _LogStream(log, logging.WARNING)
    sys.stdout, sys.stderr = streams  # FINN's status lines (rich) -> our logger
    try:
        run_finn.prepare_finn(settings, accept_defaults=True, batch=True)
    except SystemExit as exc:
        for stream in streams:
            stream.flush()
        printed = [line for stream in streams for line in stream.lines]
        if any("XSI" in line for line in printed):
            raise ToolchainError(
                f"FINN's start-up failed (exit {exc.code}) building its XSI simulator binding in "
                f"{str(settings.finn_xsi)!r}: it needs g++, pybind11 and Vivado's "
                "data/xsim/include (python -m finn.xsi.setup shows the compiler's output)"
            ) from None
        errors = [line for line in printed if line.startswith("ERROR")] or printed[-1:]
        raise ToolchainError(
            f"FINN's start-up failed (exit {exc.code}): {errors[0] if errors else 'no message'}"
        ) from None
    finally:
        for stream in streams:
            stream.flush()
        sys.stdout, sys.stderr = saved
    missing = [
        k for k in ("FINN_RTLLIB", "FINN_CUSTOM_HLS") if not Path(os.environ.get(k, "")).is_dir()
    ]
    if missing:
        names = ", ".join(missing)
        raise ToolchainError(f"FINN's start-up left {names} unset; reinstall finn-plus")
    return settings

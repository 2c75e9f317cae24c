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

No FINN file is copied or changed; everything here is undone or inert once Vivado is present.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import os
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

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            if line.strip():
                self.logger.log(self.level, "%s", line.rstrip())
        return len(text)

    def flush(self) -> None:
        if self.buffer.strip():
            self.logger.log(self.level, "%s", self.buffer.rstrip())
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

"""ZedBoard bitstreams from a bundle: FINN's front end, then FINN's back end with Vivado.

- :mod:`fpga.bitstream.zedboard`: the ZedBoard as a FINN Zynq board, registered at run time
  (FINN's part and port-width maps, and its Zynq shell Tcl with a ZedBoard branch);
- :mod:`fpga.bitstream.flow`: the Vivado checks and the build (``python -m fpga.bitstream``).

Vivado is not needed to import this package or to render the shell Tcl; building is refused
with one line when it is absent (``make bitstream`` runs it in Docker with Vivado mounted).
See docs/bitstream.md.
"""

from fpga.bitstream.flow import (
    BACKEND_STEPS,
    SUPPORTED_VIVADO,
    VIVADO_MISSING,
    BitstreamConfig,
    VivadoError,
    build_bitstreams,
    check_vivado_version,
    find_vivado,
    parse_vivado_version,
    require_vivado,
)
from fpga.bitstream.zedboard import (
    BOARD_PART,
    ZEDBOARD,
    ZEDBOARD_PART,
    register_zedboard,
    render_shell,
    shell_template,
    zedboard_shell,
)

__all__ = [
    "BACKEND_STEPS",
    "BOARD_PART",
    "SUPPORTED_VIVADO",
    "VIVADO_MISSING",
    "ZEDBOARD",
    "ZEDBOARD_PART",
    "BitstreamConfig",
    "VivadoError",
    "build_bitstreams",
    "check_vivado_version",
    "find_vivado",
    "parse_vivado_version",
    "register_zedboard",
    "render_shell",
    "require_vivado",
    "shell_template",
    "zedboard_shell",
]

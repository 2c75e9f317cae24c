"""The ZedBoard as a FINN (finn-plus 1.6.1) Zynq target, added at run time.

FINN knows Zynq boards by name: ``finn.util.basic`` maps a board to its part
(``pynq_part_map``, and ``part_map`` that ``DataflowBuildConfig`` reads) and to the width of its
AXI HP port (``pynq_native_port_width``), and ``MakeZYNQProject`` fills
``finn.transformation.fpgadataflow.templates.custom_zynq_shell_template``, a Tcl script whose
``if {$BOARD == ...}`` chain picks the Vivado board part. The ZedBoard is in none of them:
``board='ZedBoard'`` is refused, and Pynq-Z1/Z2 are the xc7z020 in the clg400 package.

No FINN file is copied or edited. :func:`register_zedboard` adds ``ZedBoard`` to FINN's three
dictionaries (in place: FINN's modules hold references to the same dict objects), and
:func:`zedboard_shell` puts a ZedBoard version of FINN's own shell template in place for the
duration of a build (:func:`shell_template`: FINN's text with two insertions, one branch in the
board chain and one block after the PS7 is created). Everything else (IODMA, interconnects,
clocking wizard, synthesis, implementation, bitstream, ``.hwh``) is FINN's ``ZynqBuild``.

The PS7 of the ZedBoard, as the Tcl sets it (docs/bitstream.md): board preset applied (DDR3:
2 x MT41K128M16 JT-125, 512 MB, 32-bit bus at 533 MHz; 33.333 MHz PS clock; UART1 on MIO 48/49
to the USB-UART), FCLK_CLK0 at 100 MHz as the reference of FINN's clocking wizard, M_AXI_GP0
(the PS masters the AXI-lite registers of the accelerator and the DMAs, at 0x4000_0000 up) and
S_AXI_HP0 (64-bit, the DMAs read and write DDR through it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from fpga.finn.errors import ToolchainError

ZEDBOARD = "ZedBoard"
"""The board name FINN is given (``DataflowBuildConfig.board``)."""
ZEDBOARD_PART = "xc7z020clg484-1"
"""Zynq-7020 in the CLG484 package, speed grade -1 (the ZedBoard's part)."""
BOARD_PART = "avnet.com:zedboard:part0:1.4"
"""Vivado board part: the Xilinx board store's ZedBoard files (Vivado 2021.1 and later).

Vivado 2019.2 and older shipped ``em.avnet.com:zed:part0:1.4`` in ``data/boards``; Avnet's own
repository (github.com/Avnet/bdf) now has ``avnet-tria:zedboard:part0:1.5``. Override with
``BOARD_PART_ENV`` or ``--board-part``.
"""
BOARD_PART_ENV = "ZEDBOARD_BOARD_PART"
BOARD_REPO_ENV = "ZEDBOARD_BOARD_REPO"
"""A folder with ZedBoard board files (``zedboard/1.4/board.xml``) added to Vivado's board paths."""
HP_PORT_WIDTH = 64
"""Native width of the Zynq-7000 AXI HP ports, in bits (as FINN has for Pynq-Z1/Z2)."""

PS7_SETTINGS: dict[str, str] = {
    "PCW_USE_M_AXI_GP0": "1",
    "PCW_USE_S_AXI_HP0": "1",
    "PCW_S_AXI_HP0_DATA_WIDTH": "64",
    "PCW_FPGA0_PERIPHERAL_FREQMHZ": "100",
    "PCW_EN_CLK0_PORT": "1",
    "PCW_EN_RST0_PORT": "1",
    "PCW_UIPARAM_DDR_PARTNO": "MT41K128M16 JT-125",
    "PCW_UIPARAM_DDR_BUS_WIDTH": "32 Bit",
    "PCW_CRYSTAL_PERIPHERAL_FREQMHZ": "33.333333",
    "PCW_UART1_PERIPHERAL_ENABLE": "1",
}
"""PS7 settings that the shell asserts after the ZedBoard preset (the preset sets them too).

GP0 and HP0 are the ports FINN's shell connects; FCLK0 at 100 MHz feeds its clocking wizard,
which makes the fabric clock (``synth_clk_period_ns``). The DDR part, bus width, crystal and
UART1 are the ZedBoard preset's: set again so that a build with the wrong board files fails
in Vivado's validation instead of running on a wrong memory controller.
"""

MAX_SMARTCONNECT_MASTERS = 16
"""AXI masters (slave interfaces, ``NUM_SI``) one SmartConnect takes: 1..16 (AMD PG247,
SmartConnect v1.0 product guide, "NUM_SI")."""
HP_PORTS = ("S_AXI_HP0", "S_AXI_HP1")
"""The Zynq-7000 HP ports the IODMAs use, one SmartConnect each (FINN's shell uses HP0 only)."""


class InterconnectError(ToolchainError):
    """The design has more AXI masters than the ZedBoard shell's SmartConnects take."""


def interconnect_plan(num_aximm: int) -> list[dict]:
    """How the shell connects ``num_aximm`` AXI masters (IODMAs: two per engine) to DDR.

    Up to 16 on ``smartconnect_0`` -> HP0, as FINN does; up to 32 split evenly over
    ``smartconnect_0`` -> HP0 and ``smartconnect_1`` -> HP1, in FINN's master order
    (``S<k>_AXI`` of ``MakeZYNQProject``: the first half on HP0). The shell Tcl
    (:func:`shell_template`) computes the same split from ``NUM_AXIMM``. More than 32 raise
    :class:`InterconnectError` in one line.
    """
    limit = MAX_SMARTCONNECT_MASTERS * len(HP_PORTS)
    if not 1 <= num_aximm <= limit:
        raise InterconnectError(
            f"{num_aximm} AXI masters ({num_aximm // 2} engines with an IODMA pair each) exceed "
            f"{len(HP_PORTS)} SmartConnects x {MAX_SMARTCONNECT_MASTERS} (HP0, HP1); build "
            "fewer engines per overlay (--graphs)"
        )
    count = 1 if num_aximm <= MAX_SMARTCONNECT_MASTERS else 2
    first = -(-num_aximm // count)  # ceil: as the Tcl's expr {($NUM_AXIMM + n - 1) / n}
    sizes = [first, num_aximm - first][:count]
    plan, start = [], 0
    for i, size in enumerate(sizes):
        plan.append(
            {
                "smartconnect": f"smartconnect_{i}",
                "hp_port": HP_PORTS[i],
                "num_si": size,
                "masters": list(range(start, start + size)),
            }
        )
        start += size
    return plan


# Anchors in finn-plus 1.6.1's custom_zynq_shell_template (the test suite checks they exist).
_BOARD_ANCHOR = '} else {\n    puts "Unrecognized board"\n}'
_PS_ANCHOR = "#instantiate axi interconnect, axi smartconnect"
_NUM_SI_ANCHOR = (
    "set_property -dict [list CONFIG.NUM_SI $NUM_AXIMM] [get_bd_cells smartconnect_0]\n"
)
_RESET_ANCHOR = (
    "connect_bd_net [get_bd_pins proc_sys_reset_0/interconnect_aresetn] "
    "[get_bd_pins smartconnect_0/aresetn]\n"
)
_IP_END_ANCHOR = "#MLO (Multi-Layer Offload) weight streaming"

# The HP0/HP1 split (no '%': the template is filled with Python's % operator). FINN's
# MakeZYNQProject connects master k to smartconnect_0/S<k>_AXI; while its IP instantiations
# run, get_bd_intf_pins maps the masters of the second half to smartconnect_1/S<k - SI0>_AXI.
_NUM_SI_TCL = f"""if {{$BOARD == "{ZEDBOARD}"}} {{
    # ddi-fpga: at most {MAX_SMARTCONNECT_MASTERS} AXI masters per SmartConnect (AMD PG247):
    # up to {MAX_SMARTCONNECT_MASTERS} on smartconnect_0 -> HP0, else split evenly over HP0/HP1.
    set DDI_MAX_SI {MAX_SMARTCONNECT_MASTERS}
    if {{$NUM_AXIMM > 2 * $DDI_MAX_SI}} {{
        error "$NUM_AXIMM AXI masters exceed 2 SmartConnects x $DDI_MAX_SI (HP0, HP1)"
    }}
    set DDI_NUM_SC [expr {{$NUM_AXIMM > $DDI_MAX_SI ? 2 : 1}}]
    set DDI_SI0 [expr {{($NUM_AXIMM + $DDI_NUM_SC - 1) / $DDI_NUM_SC}}]
    set_property -dict [list CONFIG.NUM_SI $DDI_SI0] [get_bd_cells smartconnect_0]
    if {{$DDI_NUM_SC == 2}} {{
        create_bd_cell -type ip -vlnv $smartconnect_vlnv smartconnect_1
        set_property -dict [list CONFIG.NUM_SI [expr {{$NUM_AXIMM - $DDI_SI0}}]] \\
            [get_bd_cells smartconnect_1]
        set_property -dict [list CONFIG.PCW_USE_S_AXI_HP1 {{1}} \\
            CONFIG.PCW_S_AXI_HP1_DATA_WIDTH {{64}}] [get_bd_cells zynq_ps]
        proc ddi_route_aximm {{path}} {{
            global DDI_SI0
            if {{[regexp {{^/?smartconnect_0/S0*([0-9]+)_AXI$}} $path -> k] && $k >= $DDI_SI0}} {{
                set j [expr {{$k - $DDI_SI0}}]
                return "smartconnect_1/S[string range "0$j" end-1 end]_AXI"
            }}
            return $path
        }}
        rename get_bd_intf_pins ddi_vivado_get_bd_intf_pins
        proc get_bd_intf_pins {{args}} {{
            return [ddi_vivado_get_bd_intf_pins {{*}}[lmap a $args {{ddi_route_aximm $a}}]]
        }}
    }}
}} else {{
    {_NUM_SI_ANCHOR.strip()}
}}
"""
_HP1_TCL = f"""if {{$BOARD == "{ZEDBOARD}" && $DDI_NUM_SC == 2}} {{
    # ddi-fpga: the second SmartConnect -> HP1, on the fabric clock and reset
    connect_bd_intf_net [get_bd_intf_pins smartconnect_1/M00_AXI] \\
        [get_bd_intf_pins zynq_ps/S_AXI_HP1]
    connect_bd_net [get_bd_pins clk_wiz_0/clk_out1] [get_bd_pins zynq_ps/S_AXI_HP1_ACLK]
    connect_bd_net [get_bd_pins clk_wiz_0/clk_out1] [get_bd_pins smartconnect_1/aclk]
    connect_bd_net [get_bd_pins proc_sys_reset_0/interconnect_aresetn] \\
        [get_bd_pins smartconnect_1/aresetn]
}}
"""
_IP_END_TCL = """if {[llength [info commands ddi_vivado_get_bd_intf_pins]]} {
    # ddi-fpga: FINN's IP instantiations are done: Vivado's get_bd_intf_pins back
    rename get_bd_intf_pins {}
    rename ddi_vivado_get_bd_intf_pins get_bd_intf_pins
}

"""


def board_part() -> str:
    """The Vivado board part to use: ``$ZEDBOARD_BOARD_PART`` or :data:`BOARD_PART`."""
    return os.environ.get(BOARD_PART_ENV) or BOARD_PART


def register_zedboard() -> None:
    """Add ``ZedBoard`` to FINN's board maps (idempotent); FINN then resolves its part."""
    from finn.util import basic

    basic.pynq_part_map[ZEDBOARD] = ZEDBOARD_PART
    basic.part_map[ZEDBOARD] = ZEDBOARD_PART
    basic.pynq_native_port_width[ZEDBOARD] = HP_PORT_WIDTH


def _tcl_dict(settings: dict[str, str]) -> str:
    return " \\\n".join(f"        CONFIG.{k} {{{v}}}" for k, v in settings.items())


def shell_template(part: str | None = None, board_repo: str | None = None) -> str:
    """FINN's Zynq shell template with a ZedBoard branch (``%`` fields kept for FINN).

    ``part`` is the Vivado board part (default :func:`board_part`); ``board_repo`` a folder of
    board files added to Vivado's search paths (default ``$ZEDBOARD_BOARD_REPO``).
    """
    from finn.transformation.fpgadataflow import templates

    base = getattr(templates, "_ddi_fpga_original_shell", templates.custom_zynq_shell_template)
    for anchor in (_BOARD_ANCHOR, _PS_ANCHOR, _NUM_SI_ANCHOR, _RESET_ANCHOR, _IP_END_ANCHOR):
        if base.count(anchor) != 1:
            raise ToolchainError(
                f"FINN's Zynq shell template has changed (anchor {anchor.splitlines()[0]!r} "
                "not found once); fpga/bitstream/zedboard.py was written for finn-plus 1.6.1"
            )
    part = part or board_part()
    repo = board_repo if board_repo is not None else os.environ.get(BOARD_REPO_ENV, "")
    # '%' is FINN's format character: the inserted Tcl must not contain one.
    repo_tcl = (
        f'    set_param board.repoPaths [concat [get_param board.repoPaths] [list "{repo}"]]\n'
        f"    set_property BOARD_PART_REPO_PATHS [concat [get_property BOARD_PART_REPO_PATHS "
        f'[current_project]] [list "{repo}"]] [current_project]\n'
        if repo
        else ""
    )
    board_branch = (
        f'}} elseif {{$BOARD == "{ZEDBOARD}"}} {{\n'
        f"    # ddi-fpga: Avnet ZedBoard, {ZEDBOARD_PART}\n"
        f"{repo_tcl}"
        f"    if {{[llength [get_board_parts -quiet {part}]] == 0}} {{\n"
        f'        error "board part {part} not installed: install the ZedBoard board files '
        f'(docs/bitstream.md) or set {BOARD_PART_ENV}"\n'
        f"    }}\n"
        f'    set ZYNQ_TYPE "zynq_7000"\n'
        f"    set_property board_part {part} [current_project]\n"
    )
    ps_block = (
        f'if {{$BOARD == "{ZEDBOARD}"}} {{\n'
        "    # ddi-fpga: ZedBoard PS7 after its board preset: GP0 (AXI-lite), HP0 (DMA, 64 bit),\n"
        "    # FCLK0 100 MHz, and the preset's DDR3 / crystal / UART1 asserted.\n"
        f"    set_property -dict [list \\\n{_tcl_dict(PS7_SETTINGS)} \\\n"
        "    ] [get_bd_cells zynq_ps]\n"
        "}\n\n"
    )
    if "%" in board_branch + ps_block:
        raise ToolchainError(f"board part or repo path must not contain '%': {part!r}, {repo!r}")
    text = base.replace(_BOARD_ANCHOR, board_branch + _BOARD_ANCHOR, 1)
    text = text.replace(_PS_ANCHOR, ps_block + _PS_ANCHOR, 1)
    text = text.replace(_NUM_SI_ANCHOR, _NUM_SI_TCL, 1)
    text = text.replace(_RESET_ANCHOR, _RESET_ANCHOR + _HP1_TCL, 1)
    return text.replace(_IP_END_ANCHOR, _IP_END_TCL + _IP_END_ANCHOR, 1)


@contextlib.contextmanager
def zedboard_shell(part: str | None = None, board_repo: str | None = None) -> Iterator[None]:
    """Register the ZedBoard and use :func:`shell_template` while FINN builds; then restore."""
    from finn.transformation.fpgadataflow import templates

    register_zedboard()
    original = templates.custom_zynq_shell_template
    templates._ddi_fpga_original_shell = original
    templates.custom_zynq_shell_template = shell_template(part, board_repo)
    try:
        yield
    finally:
        templates.custom_zynq_shell_template = original
        del templates._ddi_fpga_original_shell


def render_shell(
    clk_period_ns: float = 10.0,
    num_axilite: int = 3,
    num_aximm: int = 2,
    part: str | None = None,
    board_repo: str | None = None,
    ip_config: str = "# (stitched IP instances and connections)\n",
) -> str:
    """The Tcl MakeZYNQProject would write for the ZedBoard (``ip_config.tcl``), for review.

    The fields are filled as in finn-plus 1.6.1's ``MakeZYNQProject.apply``; ``ip_config`` is
    its IP instantiation block (by default a comment: the IP instances come from the stitched
    design at build time).
    """
    text = shell_template(part, board_repo) % (
        int(1 / (clk_period_ns * 0.001)),
        num_axilite,
        num_aximm,
        ZEDBOARD,
        ZEDBOARD_PART,
        ip_config,
        0,
        0,
        0,
    )
    return (
        text.replace("$BOARDFILES$", "$::env(FINN_DEPS)/board_files")
        .replace("$PR_CONFIG$", "")
        .replace("$NUM_JOBS$", "2")
    )

"""The overlay's resource budget: FINN's estimate plus what it leaves out, and a fit verdict.

FINN's analytical estimate (``res_estimation``) counts 0 LUT for DSP-based ``MVAU_rtl`` and for
HLS layers, and knows nothing of what ``ZynqBuild`` adds after it: an IODMA per engine input
and output, the SmartConnects to the HP ports, the AXI-lite interconnect from GP0, the
clocking wizard and reset, and the FIFOs that FIFO sizing inserts (deep ones on every residual
skip path). :func:`resource_budget` adds them, each line with its source:

- ``finn formula``: FINN's own estimate functions applied where FINN does not apply them: the
  FINN-R LUT model of the MVAU (``MVAU_hls.lut_estimation``, with ``resType="dsp"`` so that
  the multipliers are in DSPs, as in ``MVAU_rtl``) and FINN's FIFO cost
  (``StreamingFIFO_rtl``, the ``fifo.sv`` model) for the modelled skip-path depths;
- ``modelled``: skip-path FIFO depths: the sliding-window fills (``(k-1)*W + k`` pixels per
  ``ConvolutionInputGenerator`` with k > 1) on the main path of a residual block minus those on
  its skip path, in words of the join's skip input (docs/bitstream.md, "Resource budget");
- ``reported``: a figure from a published synthesis or implementation report of the same IP
  on the XC7Z020 (FINN's IODMA, its SmartConnect and its AXI-lite path, from FINN builds whose
  reports are committed to public repositories; each source names the repository and file);
- ``derived``: arithmetic on such reports (the AXI-lite crossbar's cost per master interface
  between two crossbar sizes; the AXI-Stream switch per port, scaled by width), with the
  assumption named;
- ``allowance``: per-instance figures for blocks that FINN does not estimate and for which no
  published figure was found (the HLS stream layers, the clocking wizard): round numbers,
  listed in :data:`ALLOWANCES`.

All of them are to be replaced by the synthesis report (``finn/report/post_synth_resources.json``)
after the first Vivado build.

Nothing here has been synthesised; the budget is labelled ``modelled`` and the verdict says
whether the total fits the XC7Z020 with the required margin (:data:`REQUIRED_MARGIN`).
"""

from __future__ import annotations

import math
from typing import Any

from fpga.bitstream.zedboard import interconnect_plan

RESOURCES = ("LUT", "FF", "BRAM_18K", "DSP")
XC7Z020 = {"LUT": 53_200, "FF": 106_400, "BRAM_18K": 280, "DSP": 220}
"""Programmable logic of the ZedBoard's XC7Z020 (AMD DS190, Zynq-7000 overview)."""
REQUIRED_MARGIN = 0.15
"""Share of each resource left free for a design to count as fitting: placement and routing
on a 7-series part degrade well before 100% LUT use, and the allowances are estimates."""
LABEL = (
    "modelled (FINN estimate + FINN formulas + reported and derived figures + allowances; "
    "not synthesised)"
)

ALLOWANCES: dict[str, dict[str, Any]] = {
    "IODMA_hls": {
        "per": "instance",
        "LUT": 1150,
        "FF": 1715,
        "BRAM_18K": 2,
        "DSP": 0,
        "source": "reported: FINN's HLS IODMA on the XC7Z020: idma0 with a 64-bit AXI-MM port "
        "1,149 LUT, 1,715 FF, 1 RAMB36 (Vivado 2024.2, out-of-context synthesis; "
        "emre-akdag/finnDeneme, finn_zynq_link.runs/top_idma0_0_synth_1); 1,149 LUT, 1,602 FF "
        "post-route with a 32-bit port (Vivado 2022.2; akhilvasan/finn_cybsec, "
        "report/post_synth_resources.xml); odma0 938-1,128 LUT in the same builds",
    },
    "smartconnect": {
        "per": "instance",
        "LUT": 1413,
        "FF": 1884,
        "BRAM_18K": 0,
        "DSP": 0,
        "source": "reported: FINN's SmartConnect into HP0 on the XC7Z020, post-route "
        "hierarchical (Vivado 2022.2; akhilvasan/finn_cybsec, report/post_synth_resources.xml): "
        "its master side (m00 exit pipeline and nodes, 1,277 LUT / 1,549 FF), switchboards "
        "(123 / 313) and clock map (13 / 22), per instance",
    },
    "smartconnect_si": {
        "per": "AXI master (slave interface)",
        "LUT": 1206,
        "FF": 1373,
        "BRAM_18K": 0,
        "DSP": 0,
        "source": "reported: the same SmartConnect's two slave interfaces (entry pipeline and "
        "nodes): 1,226 LUT / 1,340 FF and 1,186 / 1,405, their mean per slave interface; "
        "more interfaces on one SmartConnect scaled linearly (an assumption)",
    },
    "axi_interconnect": {
        "per": "instance",
        "LUT": 481,
        "FF": 692,
        "BRAM_18K": 0,
        "DSP": 0,
        "source": "reported: FINN's AXI-lite path from GP0 on the XC7Z020: the AXI3 to AXI4-Lite "
        "protocol converter 384-421 LUT / 510-562 FF (Vivado 2020.1-2024.2; umav1511/finn, "
        "akhilvasan/finn_cybsec, emre-akdag/finnDeneme), plus the crossbar's base, 60 LUT / "
        "130 FF (the 1 x 2 crossbar's 122-135 LUT less two master interfaces)",
    },
    "axi_interconnect_mi": {
        "per": "AXI-lite slave (master interface)",
        "LUT": 34,
        "FF": 2,
        "BRAM_18K": 0,
        "DSP": 0,
        "source": "derived: AXI4-Lite SASD crossbar (AMD PG059) per master interface, "
        "(258 - 122) / 4 LUT between a 1 x 6 (XC7Z020, Vivado 2017.4; ATaylorCEngFIET/Hackster, "
        "Sobel_zybo_z7) and a 1 x 2 crossbar (XC7Z020, Vivado 2020.1; umav1511/finn); their "
        "FFs stay at 121-134",
    },
    "axis_switch_port": {
        "per": "port",
        "LUT": 178,
        "FF": 337,
        "BRAM_18K": 0,
        "DSP": 0,
        "source": "derived: AXI4-Stream Switch (AMD PG085) with AXI-lite routing control, 2 x 1 "
        "at 24-bit TDATA: 133 LUT and 253 FF in its post-synthesis netlist (XC7Z020, Vivado "
        "2017.4; ATaylorCEngFIET/Hackster, MIPI_HDMI_IMAGER design_1_axis_switch_0_0), per "
        "port and scaled by width to 64-bit TDATA (an assumption): engines sharing an IODMA pair",
    },
    "clock_reset": {
        "per": "design",
        "LUT": 200,
        "FF": 300,
        "BRAM_18K": 0,
        "DSP": 0,
        "source": "allowance: clocking wizard (AMD PG065, PLL) and proc_sys_reset (PG164)",
    },
    "DuplicateStreams_hls": {
        "per": "instance",
        "LUT": 150,
        "FF": 200,
        "LUT_per_stream_bit": 4,
        "BRAM_18K": 0,
        "DSP": 0,
        "source": "allowance: HLS stream fork (two output registers per bit, handshakes); "
        "FINN estimates 0",
    },
    "ElementwiseAdd_hls": {
        "per": "instance",
        "LUT": 200,
        "FF": 300,
        "LUT_per_stream_bit": 6,
        "BRAM_18K": 0,
        "DSP": 0,
        "source": "allowance: HLS two-input adder per lane (adder, input registers); FINN "
        "estimates only parameter storage",
    },
    "ElementwiseMul_hls": {
        "per": "instance",
        "LUT": 200,
        "FF": 300,
        "LUT_per_stream_bit": 6,
        "BRAM_18K": 0,
        "DSP": 0,
        "source": "allowance: as ElementwiseAdd_hls (a masked block's product of a k-bit code "
        "and a 1-bit mask is at most an adder's logic per lane); FINN estimates only parameter "
        "storage",
    },
    "GlobalAccPool_hls": {
        "per": "instance",
        "LUT": 300,
        "FF": 400,
        "LUT_per_stream_bit": 12,
        "BRAM_18K": 0,
        "DSP": 0,
        "source": "allowance: HLS accumulate-and-hold per channel (accumulator adders, "
        "accumulator memory in LUTRAM); FINN estimates 0",
    },
}
"""Per-instance figures where FINN has none (LUT/FF/BRAM18/DSP; some add LUTs per stream bit)."""
STREAM_ALLOWANCE_OPS = (
    "DuplicateStreams_hls",
    "ElementwiseAdd_hls",
    "ElementwiseMul_hls",
    "GlobalAccPool_hls",
)


def runtime_writeable(model: Any) -> list[str]:
    """Nodes whose weights or thresholds are written over AXI-lite at run time (each gets its
    own AXI-lite slave in FINN's shell)."""
    from qonnx.custom_op.registry import getCustomOp

    names = []
    for node in model.graph.node:
        try:
            if getCustomOp(node).get_nodeattr("runtime_writeable_weights") == 1:
                names.append(node.name)
        except (AttributeError, KeyError):
            continue
    return names


def _line(item: str, count: int, resources: dict[str, float], source: str, **extra) -> dict:
    return {
        "item": item,
        "count": count,
        **{k: float(resources.get(k, 0.0)) for k in RESOURCES},
        "source": source,
        **extra,
    }


def _allowance(name: str, count: int) -> dict:
    a = ALLOWANCES[name]
    return _line(name, count, {k: a[k] * count for k in RESOURCES if k in a}, a["source"])


def mvau_luts(model: Any, fpga_part: str) -> dict[str, float]:
    """Per ``MVAU_rtl`` node: FINN-R's LUT model (FINN's ``MVAU_hls.lut_estimation``) with the
    multipliers in DSPs (``resType="dsp"``): adder tree, accumulator, weight memory, control."""
    from finn.custom_op.fpgadataflow.hls.matrixvectoractivation_hls import MVAU_hls
    from qonnx.custom_op.registry import getCustomOp

    out = {}
    for node in model.get_nodes_by_op_type("MVAU_rtl"):
        op = getCustomOp(node)
        saved = op.get_nodeattr("resType")
        op.set_nodeattr("resType", "dsp")
        try:
            out[node.name] = float(MVAU_hls.lut_estimation(op, fpga_part))
        finally:
            op.set_nodeattr("resType", saved)
    return out


def _fill_pixels(op: Any, join_pixels: int) -> float:
    """Pixels (at the join's resolution) a ConvolutionInputGenerator holds before its first
    output: (k_h - 1) full rows plus k_w pixels of its input."""
    kh, kw = op.get_nodeattr("ConvKernelDim")
    h, w = op.get_nodeattr("IFMDim")
    if kh * kw == 1:
        return 0.0
    return ((kh - 1) * w + kw) * join_pixels / (h * w)


def _path_fill(model: Any, tensor: str, join: Any, join_pixels: int) -> tuple[float, str] | None:
    """Sliding-window fill (join pixels) from ``tensor`` down a chain of single consumers to
    ``join``, and the tensor that enters ``join``; None if the chain does not reach it."""
    from qonnx.custom_op.registry import getCustomOp

    total = 0.0
    for _ in range(len(model.graph.node)):
        consumers = model.find_consumers(tensor)
        if not consumers:
            return None
        node = consumers[0]
        if node.name == join.name:
            return total, tensor
        if len(consumers) != 1 or len(node.output) != 1:
            return None
        if node.op_type.startswith("ConvolutionInputGenerator"):
            total += _fill_pixels(getCustomOp(node), join_pixels)
        tensor = node.output[0]
    return None


JOIN_OPS = ("ElementwiseAdd_hls", "ElementwiseAdd_rtl", "ElementwiseMul_hls", "ElementwiseMul_rtl")
"""Where a forked stream meets itself again: residual adds, and a masked block's mask map
multiplying conv2's output (export/bundle.py, ``MaskedBlockGraph``)."""


def skip_fifos(model: Any) -> list[dict[str, Any]]:
    """The modelled FIFO of every join of a forked stream: for each ``DuplicateStreams``, the
    nearest join where its outputs meet again (a residual ``ElementwiseAdd``; for a masked
    block's mask map the ``ElementwiseMul`` after conv2), depth = main-path fill - skip-path
    fill, in words of the join input that the skip path feeds (``folded_shape``, datatype and
    width as FINN would insert it)."""
    from qonnx.custom_op.registry import getCustomOp

    fifos = []
    joins = [n for op in JOIN_OPS for n in model.get_nodes_by_op_type(op)]
    for dup in model.get_nodes_by_op_type("DuplicateStreams_hls"):
        met = []
        for join in joins:
            jop = getCustomOp(join)
            pixels = int(math.prod(list(jop.get_folded_input_shape(0))[1:-2]))  # H * W
            paths = [_path_fill(model, out, join, pixels) for out in dup.output]
            if all(p is not None for p in paths):
                met.append((join.name, join, jop, paths))
        if not met:
            continue
        order = {n.name: i for i, n in enumerate(model.graph.node)}  # topologically sorted
        _, join, jop, paths = min(met, key=lambda m: order[m[1].name])  # where they first meet
        fills = [p[0] for p in paths]
        skip = min(range(len(fills)), key=lambda i: fills[i])
        side = list(join.input).index(paths[skip][1])
        folded = list(jop.get_folded_input_shape(side))
        words_per_pixel = int(folded[-2])
        depth = math.ceil((max(fills) - min(fills)) * words_per_pixel)
        fifos.append(
            {
                "join": join.name,
                "fork": dup.name,
                "skip_output": skip,
                "depth": max(depth, 2),
                "folded_shape": [1, max(depth, 2), int(folded[-1])],
                "dataType": jop.get_input_datatype(side).name,
            }
        )
    return fifos


def fifo_cost(fifo: dict[str, Any], fpga_part: str) -> dict[str, float]:
    """FINN's cost of one FIFO (``StreamingFIFO_rtl``: the fifo.sv model, depth and width)."""
    from onnx import helper
    from qonnx.custom_op.registry import getCustomOp

    node = helper.make_node(
        "StreamingFIFO_rtl",
        ["fifo_in"],
        ["fifo_out"],
        domain="finn.custom_op.fpgadataflow.rtl",
        backend="fpgadataflow",
        depth=fifo["depth"],
        folded_shape=fifo["folded_shape"],
        dataType=fifo["dataType"],
        ram_style="auto",
    )
    op = getCustomOp(node)
    return {
        "LUT": float(op.lut_estimation(fpga_part)),
        "BRAM_18K": float(op.bram_estimation(fpga_part)),
        "DSP": 0.0,
    }


def resource_budget(
    model: Any,
    finn_total: dict[str, float],
    engines: int,
    fpga_part: str = "xc7z020clg484-1",
    axilite_slaves: int | None = None,
    required_margin: float = REQUIRED_MARGIN,
    mask_dmas: int = 0,
    switch_ports: int = 0,
) -> dict[str, Any]:
    """The completed budget of an overlay: FINN's ``finn_total`` (LUT/BRAM_18K/DSP of
    ``model``'s HW layers) plus every line FINN leaves out, the interconnect plan, the totals
    against the XC7Z020 and the verdict. ``engines`` is the number of DMA pairs, ``mask_dmas``
    the masked blocks' extra input DMAs (their mask maps), ``switch_ports`` the ports of the
    AXI-Stream switches between shared DMAs and their engines; ``axilite_slaves`` defaults to one
    per IODMA and one per layer with runtime-writeable parameters (FINN's shell gives each its
    own AXI-lite slave)."""
    from qonnx.custom_op.registry import getCustomOp

    masters = 2 * engines + mask_dmas
    plan = interconnect_plan(masters)  # raises for more than 2 x 16 masters
    if axilite_slaves is None:  # each IODMA, and each layer with runtime-writeable parameters
        axilite_slaves = masters + len(runtime_writeable(model))
    lines = [
        _line(
            "FINN estimate (HW layers)",
            len(model.graph.node),
            finn_total,
            "finn estimate: res_estimation (0 LUT for MVAU_rtl and HLS layers; no FF)",
        )
    ]
    mvau = mvau_luts(model, fpga_part)
    if mvau:
        lines.append(
            _line(
                "MVAU_rtl LUTs",
                len(mvau),
                {"LUT": sum(mvau.values())},
                "finn formula: FINN-R LUT model (MVAU_hls.lut_estimation, resType=dsp)",
                per_instance=mvau,
            )
        )
    for op_type in STREAM_ALLOWANCE_OPS:
        nodes = model.get_nodes_by_op_type(op_type)
        if not nodes:
            continue
        a = ALLOWANCES[op_type]
        bits = sum(int(getCustomOp(n).get_instream_width()) for n in nodes)
        lut = a["LUT"] * len(nodes) + a["LUT_per_stream_bit"] * bits
        lines.append(
            _line(
                op_type,
                len(nodes),
                {"LUT": lut, "FF": a["FF"] * len(nodes)},
                f"{a['source']}; {a['LUT']} LUT + {a['LUT_per_stream_bit']} LUT per input "
                "stream bit each",
            )
        )
    fifos = skip_fifos(model)
    costs = [fifo_cost(f, fpga_part) for f in fifos]
    for f, c in zip(fifos, costs, strict=True):
        f.update(c)
    if fifos:
        lines.append(
            _line(
                "skip-path FIFOs",
                len(fifos),
                {k: sum(c[k] for c in costs) for k in ("LUT", "BRAM_18K")},
                "modelled: depth from the sliding-window fills, cost by FINN's StreamingFIFO_rtl",
                fifos=fifos,
            )
        )
    lines.append(_allowance("IODMA_hls", masters))
    if switch_ports:
        lines.append(_allowance("axis_switch_port", switch_ports))
    lines.append(_allowance("smartconnect", len(plan)))
    lines.append(_allowance("smartconnect_si", masters))
    lines.append(_allowance("axi_interconnect", 1))
    lines.append(_allowance("axi_interconnect_mi", axilite_slaves))
    lines.append(_allowance("clock_reset", 1))
    total = {k: sum(line[k] for line in lines) for k in RESOURCES}
    margin = {k: 1.0 - total[k] / XC7Z020[k] for k in RESOURCES}
    fits = all(total[k] <= XC7Z020[k] for k in RESOURCES)
    tightest = min(RESOURCES, key=lambda k: margin[k])
    if not fits:
        verdict = f"does not fit the XC7Z020 ({tightest} at {100 * (1 - margin[tightest]):.0f}%)"
    elif margin[tightest] < required_margin:
        verdict = (
            f"fits the XC7Z020 but with less than the required {100 * required_margin:.0f}% "
            f"margin ({tightest} {100 * margin[tightest]:.1f}% free)"
        )
    else:
        verdict = (
            f"fits the XC7Z020 with at least {100 * required_margin:.0f}% margin "
            f"(tightest: {tightest}, {100 * margin[tightest]:.1f}% free)"
        )
    return {
        "label": LABEL,
        "fpga_part": fpga_part,
        "lines": lines,
        "total": total,
        "available": dict(XC7Z020),
        "utilization": {k: total[k] / XC7Z020[k] for k in RESOURCES},
        "margin": margin,
        "required_margin": required_margin,
        "fits": fits,
        "fits_with_margin": fits and margin[tightest] >= required_margin,
        "verdict": verdict,
        "finn_share_of_total": {
            k: (float(finn_total.get(k, 0.0)) / total[k] if total[k] else None) for k in RESOURCES
        },
        "interconnect": interconnect_report(engines, mask_dmas),
    }


def interconnect_report(engines: int, mask_dmas: int = 0) -> dict[str, Any]:
    """The SmartConnect/HP-port plan for ``engines`` DMA pairs and ``mask_dmas`` more input DMAs
    (masked blocks' mask maps) (JSON-ready)."""
    masters = 2 * engines + mask_dmas
    plan = interconnect_plan(masters)
    return {
        "engines": engines,
        "mask_dmas": mask_dmas,
        "axi_masters": masters,
        "max_masters_per_smartconnect": 16,
        "smartconnects": plan,
    }


def budget_markdown(budget: dict[str, Any], title: str) -> str:
    """The budget as Markdown; every sentence from the budget's fields."""
    rows = [
        f"# {title}",
        "",
        f"Resource budget, {budget['label']}, for {budget['fpga_part']}.",
        "",
        "| item | count | LUT | FF | BRAM18 | DSP | source |",
        "|---|---|---|---|---|---|---|",
    ]
    for line in budget["lines"]:
        rows.append(
            f"| {line['item']} | {line['count']} | {line['LUT']:,.0f} | {line['FF']:,.0f} | "
            f"{line['BRAM_18K']:,.1f} | {line['DSP']:,.0f} | {line['source']} |"
        )
    t, a, u = budget["total"], budget["available"], budget["utilization"]
    rows.append(
        "| **total** | | "
        + " | ".join(
            f"{t[k]:,.0f} of {a[k]:,} ({100 * u[k]:.1f}%)" for k in ("LUT", "FF", "BRAM_18K", "DSP")
        )
        + " | |"
    )
    rows += ["", f"Verdict: the overlay {budget['verdict']}.", ""]
    kinds: dict[str, float] = {}
    for line in budget["lines"]:
        kind = line["source"].split(":")[0]
        kinds[kind] = kinds.get(kind, 0.0) + line["LUT"]
    if t["LUT"]:
        rows += ["| LUT by kind of source | LUT | share of the LUT total |", "|---|---|---|"]
        rows += [f"| {k} | {v:,.0f} | {100 * v / t['LUT']:.0f}% |" for k, v in kinds.items()]
        rows.append("")
    fifo = next((line for line in budget["lines"] if line["item"] == "skip-path FIFOs"), None)
    if fifo:
        rows += [
            "| residual join | fork | depth (words) | datatype x elements/word | LUT | BRAM18 |"
        ]
        rows += ["|---|---|---|---|---|---|"]
        for f in fifo["fifos"]:
            rows.append(
                f"| {f['join']} | {f['fork']} | {f['depth']:,} | {f['dataType']} x "
                f"{f['folded_shape'][-1]} | {f['LUT']:,.0f} | {f['BRAM_18K']:,.1f} |"
            )
        rows.append("")
    rows.append(interconnect_markdown(budget["interconnect"]))
    return "\n".join(rows) + "\n"


def interconnect_markdown(report: dict[str, Any]) -> str:
    """The interconnect plan as Markdown."""
    rows = [
        f"Interconnect: {report['engines']} engines, {report['axi_masters']} AXI masters "
        f"(IODMAs), at most {report['max_masters_per_smartconnect']} per SmartConnect:",
        "",
        "| SmartConnect | HP port | NUM_SI | FINN master indices |",
        "|---|---|---|---|",
    ]
    for sc in report["smartconnects"]:
        m = sc["masters"]
        rows.append(
            f"| {sc['smartconnect']} | {sc['hp_port']} | {sc['num_si']} | {m[0]}..{m[-1]} |"
        )
    return "\n".join(rows) + "\n"

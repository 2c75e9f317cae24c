"""The hardware report (``hw_report.json``): the engine of every graph of one bundle.

The one owner of the file. It is written by ``python -m fpga estimate`` (one engine per graph,
from FINN's estimates: :func:`per_graph_report`), by :func:`fpga.architecture.build_shared`
(one engine per graph shape) and by the main job (``python -m measurements.reproduce``), and
read by the emulated board's timing and power models (fpga/emulator) and by the main job,
which reuses a report only when it was made for the bundle it measures.

The document::

    {"format": "ddi-fpga-hw-report", "version": 1, "bundle_id": "...", "kind": "...",
     "clock_mhz": 100.0, "graphs": {NAME: {"cycles": int, ...}, ...}, ...}

``cycles`` is the bottleneck layer's cycles per image: the time per image of an engine fed a
stream of images (FINN's dataflow is pipelined); ``latency_cycles`` is one image alone. Other
fields (resources, ``resource_budget``, ``engines`` of the shared design) are the writer's;
docs/fpga-architecture.md and docs/bitstream.md describe them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import formats

FORMAT = "ddi-fpga-hw-report"
FORMAT_VERSION = 1
"""1: ``format``, ``version`` and ``bundle_id`` recorded (reports before them are refused)."""
FILE = "hw_report.json"
XC7Z020 = {"LUT": 53_200, "BRAM_18K": 280, "DSP": 220}
"""What FINN estimates of the ZedBoard's Zynq-7020 programmable logic (FF: 106,400, not
estimated)."""


class HardwareReportError(ValueError):
    """A hardware report that cannot be used: unreadable, another format, another bundle."""


WORD_FIELDS = (
    "input_values_per_word",
    "input_channels",
    "output_values_per_word",
    "output_channels",
)
"""Per graph: values per DMA word at the engine's input and output, and the channels there."""


def per_graph_report(
    estimates: dict[str, dict[str, Any]], clk_period_ns: float, bundle_id: str
) -> dict[str, Any]:
    """The report of one engine per graph from FINN's per-graph estimates
    (:func:`fpga.finn.frontend.build_bundle`)."""
    total = {k: sum(e["total"][k] for e in estimates.values()) for k in XC7Z020}
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "bundle_id": bundle_id,
        "kind": "FINN estimate (no synthesis)",
        "clock_mhz": 1e3 / clk_period_ns,
        "fpga_part": next(iter(estimates.values()))["fpga_part"] if estimates else None,
        "graphs": {
            name: {
                "cycles": e["max_cycles"],
                "latency_cycles": e["critical_path_cycles"],
                "bottleneck": e["max_cycles_node"],
                "throughput_fps": e["throughput_fps"],
                "latency_ms": e["latency_ms"],
                **{k: e[k] for k in WORD_FIELDS if k in e},
                **{k: e["total"][k] for k in XC7Z020},
            }
            for name, e in estimates.items()
        },
        "total": total,
        "budget": XC7Z020,
        "utilization": {k: total[k] / XC7Z020[k] for k in XC7Z020},
        "fits": all(total[k] <= XC7Z020[k] for k in XC7Z020),
        "design": "one engine per graph",
    }


def validate(report: Any, source: str = "the hardware report") -> dict[str, Any]:
    """``report`` if it is a report of this format and version with a bundle id, a clock and a
    cycle count for every graph; else :class:`HardwareReportError` naming the first bad field."""
    formats.check(
        report,
        FORMAT,
        FORMAT_VERSION,
        source=source,
        error=HardwareReportError,
        remedy="regenerate it with `python -m fpga estimate BUNDLE --out DIR`",
    )
    if not isinstance(report.get("bundle_id"), str) or not report["bundle_id"]:
        raise HardwareReportError(f"{source}: bundle_id {report.get('bundle_id')!r} is not an id")
    clock = report.get("clock_mhz")
    if isinstance(clock, bool) or not isinstance(clock, (int, float)) or not clock > 0:
        raise HardwareReportError(f"{source}: clock_mhz {clock!r} is not a positive frequency")
    graphs = report.get("graphs")
    if not isinstance(graphs, dict) or not graphs:
        raise HardwareReportError(f"{source}: 'graphs' {graphs!r:.60} is not an object of graphs")
    for name, entry in graphs.items():
        cycles = entry.get("cycles") if isinstance(entry, dict) else None
        if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 0:
            raise HardwareReportError(f"{source}: graphs.{name}.cycles {cycles!r} is not a count")
    return report


def write(path: str | os.PathLike, report: dict[str, Any]) -> Path:
    """Validate ``report`` and write it to ``path`` (whole or not at all)."""
    path = Path(path)
    validate(report, f"the report for {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def read(path: str | os.PathLike, bundle_id: str | None = None) -> dict[str, Any]:
    """The validated report at ``path``; with ``bundle_id``, refused unless made for that bundle."""
    source = f"hardware report {str(path)!r}"
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise HardwareReportError(f"cannot read {source}: {exc}") from None
    validate(report, source)
    if bundle_id is not None and report["bundle_id"] != bundle_id:
        raise HardwareReportError(
            f"{source} was made for bundle {report['bundle_id']!r}, not {bundle_id!r}; "
            "regenerate it for this bundle (`python -m fpga estimate BUNDLE --out DIR`)"
        )
    return report

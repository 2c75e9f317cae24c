"""How long the emulated ZedBoard takes per image: timing models over the executor's decisions.

The emulated board runs the real bundle with the real executor (on the host CPU, fast) to learn
what every image did: which blocks ran, how many channels each kept, which classifier answered.
A :class:`TimingModel` turns that into the image's **phases** on the board, in order:

=====================  ======  ==========================================================
phase                  unit    when
=====================  ======  ==========================================================
``stem``               engine  always
``layer_gate{i}``      arm     gated modes, for every block the image reached
``channel_gate{i}``    arm     gated modes, for every block that ran
``block{i}``           engine  the block ran; its time scales with its kept channels
``shortcut{i}``        engine  a downsampling block was skipped (identity skips cost 0)
``exit{j}``/``head``   engine  the classifier that answered
=====================  ======  ==========================================================

Engines are the FINN accelerators in the PL; gates (an LSTM step and a small CNN with a
sigmoid, which FINN cannot compile) run on the ARM, each call costing ``arm_gate_s_per_call``
(onnxruntime's per-call overhead on a Cortex-A9) plus its MACs at ``arm_macs_per_s``. Phases
run one after another; an image's time is their sum and a batch's the sum over its images.

A block keeping ``r`` of its output channels does ``conv1 * r + conv2 * r**2 + shortcut`` of
its MACs (export.manifest.BlockSpec.body_macs); both models scale its dense time by that
fraction of its dense MACs.

- :class:`MacRateTiming`: every engine computes ``macs_per_s`` (default 1 GMAC/s: an
  assumption of the order of a folded FINN ResNet-8 engine on the XC7Z020 at 100 MHz; replace
  it with the FPGA estimate as soon as there is one).
- :class:`HardwareReportTiming`: per-graph cycle counts at ``clock_mhz`` from the FPGA estimate
  report (``{"clock_mhz": 100.0, "graphs": {"stem": {"cycles": 12345}, ...}}``).

In ``ddi`` mode an image that halted is charged the layer gates up to the later of its last
executed block and its exit's block: the executor does not report gates evaluated after that
(a gate that decided "skip" just before a halt), so those few gate calls are missing.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.executor import BatchResult
from export.manifest import Manifest
from fpga.emulator import EmulatorError

ARM = "arm"
ENGINE = "engine"


@dataclass(frozen=True)
class Phase:
    """One stretch of an image's work on one unit: ``unit`` is ``"arm"`` or ``"engine"``."""

    unit: str
    graph: str
    duration_s: float


class TimingModel:
    """Base: per-image phases from the executor's results (see the module docstring)."""

    def __init__(self, arm_gate_s_per_call: float = 100e-6, arm_macs_per_s: float = 300e6):
        if not (math.isfinite(arm_gate_s_per_call) and arm_gate_s_per_call >= 0):
            raise EmulatorError(f"arm_gate_s_per_call={arm_gate_s_per_call!r} must be >= 0 seconds")
        if not arm_macs_per_s > 0:
            raise EmulatorError(f"arm_macs_per_s={arm_macs_per_s!r} must be > 0 (inf: free)")
        self.arm_gate_s_per_call = float(arm_gate_s_per_call)
        self.arm_macs_per_s = float(arm_macs_per_s)

    # -- what a subclass provides ----------------------------------------------------------
    def engine_s(self, manifest: Manifest, graph: str) -> float:
        """Seconds the engine of ``graph`` takes for one image, dense."""
        raise NotImplementedError

    # -- derived ---------------------------------------------------------------------------
    def gate_s(self, macs: int) -> float:
        """Seconds one gate call of ``macs`` MACs takes on the ARM."""
        return self.arm_gate_s_per_call + macs / self.arm_macs_per_s

    def block_s(self, manifest: Manifest, index: int, kept_channels: int) -> float:
        """Seconds block ``index`` takes keeping ``kept_channels`` output channels."""
        block = manifest.blocks[index]
        r = kept_channels / block.out_channels
        dense = block.conv1_macs + block.conv2_macs + block.shortcut_macs
        work = block.conv1_macs * r + block.conv2_macs * r * r + block.shortcut_macs
        return self.engine_s(manifest, block.graph) * (work / dense if dense else 1.0)

    def image_phases(
        self,
        manifest: Manifest,
        executed: np.ndarray,
        channels: np.ndarray,
        exit_index: int,
        gated: bool,
    ) -> list[Phase]:
        """The phases of one image: ``executed`` and ``channels`` are its (blocks,) rows."""
        phases = [Phase(ENGINE, manifest.stem, self.engine_s(manifest, manifest.stem))]
        ran = np.flatnonzero(executed)
        if exit_index >= 0:
            reach = max(manifest.exits[exit_index].after_block, int(ran[-1]) if ran.size else -1)
        else:
            reach = len(manifest.blocks) - 1
        for i, block in enumerate(manifest.blocks[: reach + 1]):
            if gated and block.layer_gate:
                phases.append(Phase(ARM, block.layer_gate, self.gate_s(block.layer_gate_macs)))
            if executed[i]:
                if gated and block.channel_gate:
                    gate_s = self.gate_s(block.channel_gate_macs)
                    phases.append(Phase(ARM, block.channel_gate, gate_s))
                phases.append(Phase(ENGINE, block.graph, self.block_s(manifest, i, channels[i])))
            elif block.shortcut is not None:
                phases.append(
                    Phase(ENGINE, block.shortcut, self.engine_s(manifest, block.shortcut))
                )
        head = manifest.head if exit_index < 0 else manifest.exits[exit_index].graph
        phases.append(Phase(ENGINE, head, self.engine_s(manifest, head)))
        return phases

    def batch_phases(self, manifest: Manifest, result: BatchResult, mode: str) -> list[list[Phase]]:
        """The phases of every image of an executor result in ``mode``."""
        gated = mode != "full"
        return [
            self.image_phases(
                manifest, result.executed[k], result.channels[k], int(result.exits[k]), gated
            )
            for k in range(len(result))
        ]

    def image_times_s(self, manifest: Manifest, result: BatchResult, mode: str) -> np.ndarray:
        """(N,) modelled seconds per image."""
        return np.array(
            [sum(p.duration_s for p in ph) for ph in self.batch_phases(manifest, result, mode)]
        )


class MacRateTiming(TimingModel):
    """Every engine computes at ``macs_per_s``; gates on the ARM (see the module docstring)."""

    def __init__(
        self,
        macs_per_s: float = 1e9,
        arm_gate_s_per_call: float = 100e-6,
        arm_macs_per_s: float = 300e6,
    ) -> None:
        super().__init__(arm_gate_s_per_call, arm_macs_per_s)
        if not (math.isfinite(macs_per_s) and macs_per_s > 0):
            raise EmulatorError(f"macs_per_s={macs_per_s!r} must be a positive rate")
        self.macs_per_s = float(macs_per_s)

    def engine_s(self, manifest: Manifest, graph: str) -> float:
        return manifest.graphs[graph].macs / self.macs_per_s

    def __repr__(self) -> str:
        return (
            f"MacRateTiming(macs_per_s={self.macs_per_s:g}, arm_gate_s_per_call="
            f"{self.arm_gate_s_per_call:g}, arm_macs_per_s={self.arm_macs_per_s:g})"
        )


class HardwareReportTiming(TimingModel):
    """Engine times from the FPGA estimate report: ``cycles / clock_mhz`` per graph.

    The report is JSON: ``{"clock_mhz": float, "graphs": {NAME: {"cycles": int, ...}}}`` with an
    entry for every engine graph the bundle runs (stem, blocks, shortcuts, exits, head). Extra
    fields are ignored; ``dynamic_power_w`` per graph, if present, is read by
    :meth:`fpga.emulator.board.PowerModel.with_report`.
    """

    def __init__(
        self,
        report: dict,
        arm_gate_s_per_call: float = 100e-6,
        arm_macs_per_s: float = 300e6,
        *,
        source: str = "the hardware report",
    ) -> None:
        super().__init__(arm_gate_s_per_call, arm_macs_per_s)
        self.source = source
        clock = report.get("clock_mhz") if isinstance(report, dict) else None
        if isinstance(clock, bool) or not isinstance(clock, (int, float)) or not clock > 0:
            raise EmulatorError(f"{source}: clock_mhz {clock!r} is not a positive frequency")
        graphs = report.get("graphs")
        if not isinstance(graphs, dict):
            raise EmulatorError(f"{source}: 'graphs' {graphs!r:.60} is not an object of graphs")
        self.clock_mhz = float(clock)
        self.cycles: dict[str, int] = {}
        for name, entry in graphs.items():
            cycles = entry.get("cycles") if isinstance(entry, dict) else None
            if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 0:
                raise EmulatorError(f"{source}: graphs.{name}.cycles {cycles!r} is not a count")
            self.cycles[name] = cycles
        self.report = report

    @classmethod
    def from_json(cls, path: str | os.PathLike, **kwargs: float) -> HardwareReportTiming:
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise EmulatorError(f"cannot read hardware report {str(path)!r}: {exc}") from None
        return cls(report, source=f"hardware report {str(path)!r}", **kwargs)

    def check(self, manifest: Manifest) -> None:
        """Raise unless the report has every engine graph of ``manifest``."""
        needed = [manifest.stem, manifest.head]
        for block in manifest.blocks:
            needed += [block.graph] + ([block.shortcut] if block.shortcut else [])
        needed += [e.graph for e in manifest.exits]
        missing = [name for name in needed if name not in self.cycles]
        if missing:
            raise EmulatorError(
                f"{self.source} has no cycles for graph(s) {missing!r} of bundle "
                f"{manifest.bundle_id!r}; regenerate it for this bundle"
            )

    def engine_s(self, manifest: Manifest, graph: str) -> float:
        try:
            return self.cycles[graph] / (self.clock_mhz * 1e6)
        except KeyError:
            raise EmulatorError(
                f"{self.source} has no cycles for graph {graph!r}; regenerate it for bundle "
                f"{manifest.bundle_id!r}"
            ) from None

    def __repr__(self) -> str:
        return f"HardwareReportTiming({self.source}, clock_mhz={self.clock_mhz:g})"

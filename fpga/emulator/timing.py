"""How long the emulated ZedBoard takes per image: timing models over the executor's decisions.

The emulated board runs the real bundle with the real executor (on the host CPU, fast) to learn
what every image did: which blocks ran, how many channels each kept, which classifier answered.
A :class:`TimingModel` turns that into the image's **phases** on the board, in order:

=====================  ======  ==========================================================
phase                  unit    when
=====================  ======  ==========================================================
``stem``               engine  always
``layer_gate{i}``      arm     gated modes, for every block the image reached (engine
                               when it has one, then ``lstm:layer_gate{i}`` on the arm)
``channel_gate{i}``    arm     gated modes, for every block that ran (engine when it has one)
``block{i}``           engine  the block ran: its full dense time, whatever its mask
``shortcut{i}``        engine  a downsampling block was skipped (identity skips cost 0)
``exit{j}``/``head``   engine  the classifier that answered
``io:{graph}``         arm     before every engine phase: the ARM's marshalling of it
=====================  ======  ==========================================================

Engines are the FINN accelerators in the PL. A FINN engine is a fixed-shape dataflow pipeline:
it streams every channel of every pixel whatever the channel mask says, so a running block is
charged its **dense** time (``engine_s``); only a skipped block saves engine time. A masked
block's engine also streams its mask map (1 bit per output value) through a second input DMA.
An engine phase lasts the longer of its compute and its DMA transfer of all its streams
(``dma_bytes_per_s``: the IODMAs share the port and stream while the engine computes), plus
its share of the pipeline fill (:meth:`TimingModel.fill_s`, once per DMA transfer of at most
``dma_batch`` images, shared by the images of the call), plus
its share of the time to load its weights when the engine's weights are written at run time
(``weight_load_s``, once per call, shared by the images of the call, as the board loads a
block's weights once before streaming the images that run it; 0 for an engine per graph,
whose weights are in the bitstream). Around
every engine call the ARM marshals its streams (fpga/board/accel.py, with the board's default
``carry``: activations stay in the engines' integer form, fpga/board/runtime.py), an ``io:``
phase on the ARM:

- ``arm_marshal_s_per_value`` per value converted between floats and packed codes: the input
  of an engine whose input is not another engine's codes (the stem's: the preprocessed
  images), and an output the ARM needs as floats (a gate's keep bits or embedding, logits);
- ``arm_pack_s_per_value`` per value that stays in integer form: an input taken as another
  engine's codes and packed for this engine's DMA (nothing, when :meth:`TimingModel.passes_bytes`:
  every engine that writes codes and this one's input use one pixel a DMA word, so the board
  hands the packed bytes on as they are), and an output unpacked to codes (the stem's, a
  block's, a shortcut's);
- ``arm_mask_s_per_value`` per value of a masked block's mask map (the ARM broadcasts the
  (N, C) mask over the pixels and packs it, 1 bit a value).

Float gates (an LSTM step and a small CNN with a sigmoid, which FINN cannot compile) run on the
ARM, each call costing ``arm_gate_s_per_call`` (the per-call overhead of a gate's numpy
program on a Cortex-A9, an assumption) plus its MACs at ``arm_macs_per_s``. The executor runs a
gate once for all the images of its batch (``export.executor.BATCH_SIZE``) that reach it, so
each of them is charged its share of the per-call overhead, and its own MACs. A quantized gate
with an engine (:meth:`TimingModel.gate_on_pl`: the hardware report has its FINN graph's
cycles) is charged as an engine call (marshalling, then the longer of its cycles and the DMA of
the block input and of its keep bits or embedding codes); a layer gate's LSTM step and
projection then run on the ARM, charged like a gate call of :func:`lstm_step_macs` MACs.
Phases run one after another; an image's time is their sum and a batch's the sum over its
images.

- :class:`MacRateTiming`: every engine computes ``macs_per_s`` (default 1 GMAC/s: an
  assumption of the order of a folded FINN ResNet-8 engine on the XC7Z020 at 100 MHz; replace
  it with the FPGA estimate as soon as there is one).
- :class:`HardwareReportTiming`: per-graph cycle counts at ``clock_mhz`` from the FPGA estimate
  report (``{"clock_mhz": 100.0, "graphs": {"stem": {"cycles": 12345}, ...}}``); a graph's
  ``weight_load_cycles``, where present (engines shared by several blocks), are charged once
  per call, shared by its images.

The parameters and where their values come from are in docs/board.md ("Time and power model");
:attr:`TimingModel.params` lists them by name (the sensitivity table varies them).

In ``ddi`` mode an image that halted is charged the layer gates up to the later of its last
executed block and its exit's block: the executor does not report gates evaluated after that
(a gate that decided "skip" just before a halt), so those few gate calls are missing.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from export.executor import BATCH_SIZE, BatchResult
from export.manifest import Manifest
from fpga import hwreport
from fpga.board.accel import DEFAULT_BATCH
from fpga.emulator import EmulatorError

ARM = "arm"
ENGINE = "engine"
IO_PREFIX = "io:"
LSTM_PREFIX = "lstm:"
EXECUTOR = "executor"
"""The ARM phase of an image's stem input and the executor's own work (with ``arm_work``)."""


def reached_key(block: int) -> str:
    """The key of :meth:`HardwareReportTiming.batch_calls` that counts the images of a batch
    that reached ``block`` (the executor's work on it is shared among them)."""
    return f"{EXECUTOR}:{block}"


ARM_WORK_WAY = "carry on"
"""The ARM bench's way that the emulated board's time follows: carrying codes on, with the
overlay's own DMA buffers (``batch_size`` images a transfer, the board's default)."""


def recorded_arm_work() -> Any:
    """The ARM bench's model of the board runtime's own work
    (:meth:`fpga.architecture.ArmWork.recorded`, way :data:`ARM_WORK_WAY`)."""
    from fpga.architecture import ArmWork  # qonnx and finn: host side only

    return ArmWork.recorded(way=ARM_WORK_WAY)


# Defaults; docs/board.md ("Time and power model") gives the reasoning and sources.
ARM_GATE_S_PER_CALL = 100e-6
ARM_MACS_PER_S = 300e6
ARM_MARSHAL_S_PER_VALUE = 50e-9
ARM_MASK_S_PER_VALUE = 8e-9
ARM_PACK_S_PER_VALUE = 4e-9
DMA_BYTES_PER_S = 800e6


CODES_KINDS = ("stem", "block", "shortcut")
"""Graph kinds whose output the board keeps as codes (a plain rescale: ``EngineTensor``)."""


def _codes(datatype) -> tuple[str, float | None] | None:
    """An integer datatype with a scale as (name, scale), the key of the codes it carries."""
    if not datatype.is_integer or not datatype.scale:
        return None
    return (datatype.name, float(datatype.scale))


@dataclass(frozen=True)
class Phase:
    """One stretch of an image's work on one unit: ``unit`` is ``"arm"`` or ``"engine"``."""

    unit: str
    graph: str
    duration_s: float


def _rate(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise EmulatorError(f"{name}={value!r} must be > 0 (inf: free)")
    return float(value)


def _seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EmulatorError(f"{name}={value!r} must be a number of seconds >= 0")
    if not (math.isfinite(value) and value >= 0):
        raise EmulatorError(f"{name}={value!r} must be a number of seconds >= 0")
    return float(value)


class TimingModel:
    """Base: per-image phases from the executor's results (see the module docstring)."""

    def __init__(
        self,
        arm_gate_s_per_call: float = ARM_GATE_S_PER_CALL,
        arm_macs_per_s: float = ARM_MACS_PER_S,
        arm_marshal_s_per_value: float = ARM_MARSHAL_S_PER_VALUE,
        dma_bytes_per_s: float = DMA_BYTES_PER_S,
        arm_mask_s_per_value: float = ARM_MASK_S_PER_VALUE,
        arm_pack_s_per_value: float = ARM_PACK_S_PER_VALUE,
        dma_batch: int = DEFAULT_BATCH,
        arm_work: Any = None,
        arm_work_scale: float = 1.0,
    ):
        self.arm_gate_s_per_call = _seconds("arm_gate_s_per_call", arm_gate_s_per_call)
        self.arm_macs_per_s = _rate("arm_macs_per_s", arm_macs_per_s)
        self.arm_marshal_s_per_value = _seconds("arm_marshal_s_per_value", arm_marshal_s_per_value)
        self.dma_bytes_per_s = _rate("dma_bytes_per_s", dma_bytes_per_s)
        self.arm_mask_s_per_value = _seconds("arm_mask_s_per_value", arm_mask_s_per_value)
        self.arm_pack_s_per_value = _seconds("arm_pack_s_per_value", arm_pack_s_per_value)
        if isinstance(dma_batch, bool) or not isinstance(dma_batch, int) or dma_batch < 1:
            raise EmulatorError(f"dma_batch={dma_batch!r} must be a count of images >= 1")
        self.dma_batch = dma_batch
        """Images per DMA transfer (the overlay's ``batch_size``): each pays a pipeline fill."""
        self.arm_work = arm_work
        """The board runtime's own work as the ARM bench measured it
        (:class:`fpga.architecture.ArmWork`), or None: then the per-value rates above."""
        self.arm_work_scale = _seconds("arm_work_scale", arm_work_scale)
        """A factor on all of :attr:`arm_work` (the sensitivity table moves it)."""
        self._bytes: dict[tuple[str, str], int] = {}
        self._streams: dict[tuple[str, str], tuple[int, int, int, float]] = {}
        """:meth:`_io` by (bundle id, graph): it depends on the bundle and the report only."""

    # -- what a subclass provides ----------------------------------------------------------
    def engine_s(self, manifest: Manifest, graph: str) -> float:
        """Seconds the engine of ``graph`` computes one image (dense: FINN engines are)."""
        raise NotImplementedError

    def weight_load_s(self, manifest: Manifest, graph: str) -> float:
        """Seconds to load ``graph``'s weights into its engine per call (0: in the bitstream)."""
        return 0.0

    # -- parameters ------------------------------------------------------------------------
    PARAMS = (
        "arm_gate_s_per_call",
        "arm_macs_per_s",
        "arm_marshal_s_per_value",
        "dma_bytes_per_s",
        "arm_mask_s_per_value",
        "arm_pack_s_per_value",
    )

    BY_VALUE = ("arm_marshal_s_per_value", "arm_mask_s_per_value", "arm_pack_s_per_value")
    """The per-value ARM rates of an engine call, which :attr:`arm_work` replaces."""

    @property
    def params(self) -> dict[str, float]:
        """The model's scalar parameters by name: with :attr:`arm_work`, its scale in place of
        the per-value rates it replaces."""
        if self.arm_work is None:
            names = list(self.PARAMS)
        else:
            names = [n for n in self.PARAMS if n not in self.BY_VALUE] + ["arm_work_scale"]
        return {name: getattr(self, name) for name in names}

    def with_params(self, **changes: float) -> TimingModel:
        """A copy with some parameters changed (checked as the constructor checks them)."""
        unknown = sorted(set(changes) - set(self.params))
        if unknown:
            raise EmulatorError(
                f"timing parameter(s) {unknown!r} unknown; known: {', '.join(self.params)}"
            )
        out = copy.copy(self)
        for name, value in changes.items():
            check = _rate if name.endswith("_per_s") else _seconds
            setattr(out, name, check(name, value))
        return out

    # -- derived ---------------------------------------------------------------------------
    def gate_s(self, macs: int, images: int = 1) -> float:
        """Seconds of one image's gate evaluation of ``macs`` MACs on the ARM, in a call that
        evaluates the gate for ``images`` images (they share the call's overhead)."""
        return self.arm_gate_s_per_call / max(images, 1) + macs / self.arm_macs_per_s

    def passes_bytes(self, manifest: Manifest, graph: str) -> bool:
        """Whether ``graph``'s engine takes the previous engine's packed bytes as they are
        (base: not known, so every carried input is charged its packing)."""
        return False

    def _io(self, manifest: Manifest, graph: str) -> tuple[int, int, int, float]:
        """Per image of an engine call: the values the ARM converts between floats and codes,
        the values it keeps in integer form (packs or unpacks), the values of a masked block's
        mask map (1 bit each in the stream: the manifest's ``qonnx_inputs``), and the bytes the
        DMAs move (every stream at its datatype's width). See the module docstring."""
        key = (manifest.bundle_id, graph)
        if key not in self._streams:  # an engine call's streams: the same on every call
            self._streams[key] = self._count_streams(manifest, graph)
        return self._streams[key]

    def _count_streams(self, manifest: Manifest, graph: str) -> tuple[int, int, int, float]:
        spec = manifest.graphs[graph]
        kept = {k for k, g in manifest.graphs.items() if g.kind in CODES_KINDS}
        codes = {_codes(manifest.graphs[k].outputs[0].datatype) for k in kept}
        converted, integer, mask_values, bits = 0, 0, 0, 0
        # a gate's engine returns its FINN graph's output (keep bits, or the embedding's codes)
        outputs = spec.outputs if spec.finn is None else spec.finn.outputs
        carried_in = graph != manifest.stem and _codes(spec.inputs[0].datatype) in codes
        as_is = carried_in and self.passes_bytes(manifest, graph)
        for k, tensor in enumerate((spec.inputs[0], *outputs)):
            n = math.prod(d for d in tensor.shape if isinstance(d, int))
            bits += n * tensor.datatype.bits
            if k == 0 and as_is:
                continue  # the previous engine's packed bytes go in as they are
            if carried_in if k == 0 else graph in kept:
                integer += n
            else:
                converted += n
        for tensor in spec.qonnx_inputs[1:] if spec.masked else ():
            n = math.prod(d for d in tensor.shape if isinstance(d, int))
            mask_values += n
            bits += n * tensor.datatype.bits
        return converted, integer, mask_values, bits / 8

    def gate_on_pl(self, manifest: Manifest, graph: str) -> bool:
        """Whether gate ``graph`` runs on its own FINN engine (base: no, every gate on the ARM)."""
        return False

    def gate_phases(
        self, manifest: Manifest, graph: str, macs: int, images: int = 1
    ) -> list[Phase]:
        """Gate ``graph`` (``macs`` MACs in all) for one image, in a call for ``images``.

        On the ARM: one phase of :meth:`gate_s`. On its engine (:meth:`gate_on_pl`): the
        engine's phases (:meth:`engine_phases`: marshalling, the engine's time or its DMA's),
        and for a layer gate the LSTM step and projection on the ARM (``lstm{i}``), charged
        :meth:`gate_s` of their MACs (:func:`lstm_step_macs`).
        """
        if not self.gate_on_pl(manifest, graph):
            return [Phase(ARM, graph, self.gate_s(macs, images))]
        phases = self.engine_phases(manifest, graph, images)
        if manifest.graphs[graph].kind == "layer_gate":
            if self.arm_work is not None:  # the LSTM step as the bench measured it
                n = max(int(images), 1)  # the call's LSTM work, shared by its images
                step_s = self.arm_work_scale * self.arm_work.lstm_seconds(n) / n
            else:
                step_s = self.gate_s(lstm_step_macs(manifest, graph), images)
            phases.append(Phase(ARM, LSTM_PREFIX + graph, step_s))
        return phases

    def arm_call_s(self, manifest: Manifest, graph: str, images: int) -> float:
        """With :attr:`arm_work`: the ARM's seconds for one image of an engine call of
        ``images`` images (its share of the call, its own part, its activation bytes)."""
        key = (manifest.bundle_id, graph)
        if key not in self._bytes:
            from fpga.architecture import activation_bytes  # qonnx and finn: host side only

            self._bytes[key] = activation_bytes(manifest, graph)
        images = max(int(images), 1)
        call = self.arm_work.call_seconds(images, self._bytes[key], manifest.graphs[graph].kind)
        return self.arm_work_scale * call / images

    def fill_s(self, manifest: Manifest, graph: str) -> float:
        """Seconds an engine's pipeline takes to fill, beyond one image's interval: paid once
        per DMA transfer (base: 0, no latency known)."""
        return 0.0

    def engine_phases(self, manifest: Manifest, graph: str, images: int = 1) -> list[Phase]:
        """One image of an engine call for ``images`` images: the ARM's marshalling, then the
        engine's phase, with its share of the pipeline fill of each DMA transfer (of at most
        ``dma_batch`` images) of the call."""
        converted, integer, mask_values, nbytes = self._io(manifest, graph)
        compute = max(self.engine_s(manifest, graph), nbytes / self.dma_bytes_per_s)
        images = max(int(images), 1)
        fill = math.ceil(images / self.dma_batch) * self.fill_s(manifest, graph) / images
        busy = compute + fill + self.weight_load_s(manifest, graph) / images
        if self.arm_work is not None:
            marshal = self.arm_call_s(manifest, graph, images)
        else:
            marshal = (
                converted * self.arm_marshal_s_per_value
                + integer * self.arm_pack_s_per_value
                + mask_values * self.arm_mask_s_per_value
            )
        return [Phase(ARM, IO_PREFIX + graph, marshal), Phase(ENGINE, graph, busy)]

    @staticmethod
    def reach(manifest: Manifest, executed: np.ndarray, exit_index: int) -> int:
        """The last block whose layer gate an image evaluated (``executed``: its (blocks,) row)."""
        if exit_index < 0:
            return len(manifest.blocks) - 1
        ran = np.flatnonzero(executed)
        return max(manifest.exits[exit_index].after_block, int(ran[-1]) if ran.size else -1)

    def image_phases(
        self,
        manifest: Manifest,
        executed: np.ndarray,
        channels: np.ndarray,
        exit_index: int,
        gated: bool,
        callers: dict[str, int] | None = None,
    ) -> list[Phase]:
        """The phases of one image: ``executed`` and ``channels`` are its (blocks,) rows;
        ``callers`` the images of its batch in each graph's call (default: the image alone),
        which share the call's overheads (a gate's, an engine's pipeline fill).

        ``channels`` does not change the time: a running block's engine is dense."""
        calls = callers or {}

        def engine(graph: str) -> list[Phase]:
            return self.engine_phases(manifest, graph, calls.get(graph, 1))

        def gate(graph: str, macs: int) -> list[Phase]:
            return self.gate_phases(manifest, graph, macs, calls.get(graph, 1))

        phases = engine(manifest.stem)
        reach = self.reach(manifest, executed, exit_index)
        if self.arm_work is not None:  # the stem's input, the executor's work per block
            work = self.arm_work
            reached = [max(calls.get(reached_key(i), 1), 1) for i in range(reach + 1)]
            # each block's work on the batch, shared by the images that reached it
            own = work.image_s + sum(work.block_seconds(n) / n for n in reached)
            phases.insert(0, Phase(ARM, EXECUTOR, self.arm_work_scale * own))
        for i, block in enumerate(manifest.blocks[: reach + 1]):
            if gated and block.layer_gate:
                phases += gate(block.layer_gate, block.layer_gate_macs)
            if executed[i]:
                if gated and block.channel_gate:
                    phases += gate(block.channel_gate, block.channel_gate_macs)
                phases += engine(block.graph)
            elif block.shortcut is not None:
                phases += engine(block.shortcut)
        head = manifest.head if exit_index < 0 else manifest.exits[exit_index].graph
        phases += engine(head)
        return phases

    def batch_calls(
        self, manifest: Manifest, executed: np.ndarray, exits: np.ndarray, gated: bool
    ) -> dict[str, int]:
        """Graph -> the images of one executor batch (its (N, blocks) ``executed`` and (N,)
        ``exits`` rows) in that graph's call; :func:`reached_key` of each block -> the images
        that reached it."""
        reach = np.array(
            [self.reach(manifest, e, int(x)) for e, x in zip(executed, exits, strict=True)]
        )
        calls = {manifest.stem: len(exits), manifest.head: int(np.sum(exits < 0))}
        calls |= {e.graph: int(np.sum(exits == j)) for j, e in enumerate(manifest.exits)}
        for i, block in enumerate(manifest.blocks):
            reached, ran = int(np.sum(reach >= i)), int(executed[:, i].sum())
            calls[block.graph] = ran
            calls[reached_key(i)] = reached
            if gated and block.layer_gate:
                calls[block.layer_gate] = reached
            if gated and block.channel_gate:
                calls[block.channel_gate] = ran
            if block.shortcut is not None:
                calls[block.shortcut] = reached - ran
        return calls

    def batch_phases(
        self, manifest: Manifest, result: BatchResult, mode: str, batch_size: int = BATCH_SIZE
    ) -> list[list[Phase]]:
        """The phases of every image of an executor result in ``mode``; the executor ran its
        images in batches of ``batch_size`` (one call per gate and batch)."""
        return self.decision_phases(
            manifest, result.executed, result.channels, result.exits, mode, batch_size
        )

    def decision_phases(
        self,
        manifest: Manifest,
        executed: np.ndarray,
        channels: np.ndarray,
        exits: np.ndarray,
        mode: str,
        batch_size: int = BATCH_SIZE,
    ) -> list[list[Phase]]:
        """:meth:`batch_phases` from the executor's decisions alone: (N, blocks) ``executed``
        and ``channels``, (N,) ``exits``."""
        gated = mode != "full"
        n = len(exits)
        phases = []
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size)
            calls = self.batch_calls(manifest, executed[rows], exits[rows], gated)
            phases += [
                self.image_phases(manifest, executed[k], channels[k], int(exits[k]), gated, calls)
                for k in range(start, min(n, start + batch_size))
            ]
        return phases

    def image_times_s(self, manifest: Manifest, result: BatchResult, mode: str) -> np.ndarray:
        """(N,) modelled seconds per image."""
        return np.array(
            [sum(p.duration_s for p in ph) for ph in self.batch_phases(manifest, result, mode)]
        )

    def _args(self) -> str:
        args = ", ".join(f"{k}={v:g}" for k, v in self.params.items())
        if self.arm_work is not None:
            args += f", arm_work={self.arm_work.source}"
        return args


def lstm_step_macs(manifest: Manifest, graph: str) -> int:
    """MACs of a layer gate's part on the ARM: one LSTM step (4 gates, each a product of the
    embedding and of the hidden state with its weights) and the projection to one logit."""
    spec = manifest.graphs[graph]
    embed = int(spec.finn.outputs[0].shape[-1]) if spec.finn is not None else manifest.gate_hidden
    hidden = int(manifest.gate_hidden)
    return 4 * hidden * (embed + hidden) + hidden


class MacRateTiming(TimingModel):
    """Every engine computes at ``macs_per_s``; gates on the ARM (see the module docstring)."""

    PARAMS = ("macs_per_s", *TimingModel.PARAMS)

    def __init__(self, macs_per_s: float = 1e9, **kwargs: float) -> None:
        super().__init__(**kwargs)
        if not (math.isfinite(macs_per_s) and macs_per_s > 0):
            raise EmulatorError(f"macs_per_s={macs_per_s!r} must be a positive rate")
        self.macs_per_s = float(macs_per_s)

    def engine_s(self, manifest: Manifest, graph: str) -> float:
        return manifest.graphs[graph].macs / self.macs_per_s

    def __repr__(self) -> str:
        return f"MacRateTiming({self._args()})"


class HardwareReportTiming(TimingModel):
    """Engine times from the FPGA estimate report: ``cycles / clock_mhz`` per graph.

    The report is JSON: ``{"clock_mhz": float, "graphs": {NAME: {"cycles": int, ...}}}`` with an
    entry for every engine graph the bundle runs (stem, blocks, shortcuts, exits, head). A
    graph's ``weight_load_cycles`` (an engine shared by blocks, weights written per call) are
    charged once per call, shared by its images; other fields are ignored, except
    ``dynamic_power_w`` per graph, read by :meth:`fpga.emulator.board.PowerModel.with_report`.
    """

    PARAMS = ("clock_mhz", *TimingModel.PARAMS)

    def __init__(
        self,
        report: dict,
        *,
        source: str = "the hardware report",
        **kwargs: float,
    ) -> None:
        super().__init__(**kwargs)
        self.source = source
        clock = report.get("clock_mhz") if isinstance(report, dict) else None
        if isinstance(clock, bool) or not isinstance(clock, (int, float)) or not clock > 0:
            raise EmulatorError(f"{source}: clock_mhz {clock!r} is not a positive frequency")
        graphs = report.get("graphs")
        if not isinstance(graphs, dict):
            raise EmulatorError(f"{source}: 'graphs' {graphs!r:.60} is not an object of graphs")
        self.clock_mhz = float(clock)
        self.cycles: dict[str, int] = {}
        self.latency_cycles: dict[str, int] = {}
        self.weight_load_cycles: dict[str, int] = {}
        for name, entry in graphs.items():
            cycles = entry.get("cycles") if isinstance(entry, dict) else None
            if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 0:
                raise EmulatorError(f"{source}: graphs.{name}.cycles {cycles!r} is not a count")
            self.cycles[name] = cycles
            latency = entry.get("latency_cycles", cycles)
            if isinstance(latency, bool) or not isinstance(latency, int) or latency < 0:
                raise EmulatorError(
                    f"{source}: graphs.{name}.latency_cycles {latency!r} is not a count"
                )
            self.latency_cycles[name] = latency
            load = entry.get("weight_load_cycles", 0)
            if isinstance(load, bool) or not isinstance(load, int) or load < 0:
                raise EmulatorError(
                    f"{source}: graphs.{name}.weight_load_cycles {load!r} is not a count"
                )
            self.weight_load_cycles[name] = load
        self.report = report

    @classmethod
    def from_json(cls, path: str | os.PathLike, **kwargs: float) -> HardwareReportTiming:
        try:
            report = hwreport.read(path)
        except hwreport.HardwareReportError as exc:
            raise EmulatorError(str(exc)) from None
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

    def weight_load_s(self, manifest: Manifest, graph: str) -> float:
        return self.weight_load_cycles.get(graph, 0) / (self.clock_mhz * 1e6)

    def passes_bytes(self, manifest: Manifest, graph: str) -> bool:
        """True when the report says ``graph``'s engine reads one pixel a DMA word and every
        engine that writes codes (stem, blocks, shortcuts) writes one: the buffers of a tensor
        then have the same bytes whichever engines wrote and read it."""
        writers = [n for n, g in manifest.graphs.items() if g.kind in CODES_KINDS]
        entries = self.report.get("graphs", {})

        def whole(name: str, side: str) -> bool:
            e = entries.get(name, {})
            per_word = e.get(f"{side}_values_per_word")
            return per_word is not None and per_word == e.get(f"{side}_channels")

        return whole(graph, "input") and all(whole(w, "output") for w in writers)

    def fill_s(self, manifest: Manifest, graph: str) -> float:
        """FINN's estimated latency of one image beyond its interval (``latency_cycles`` -
        ``cycles``): the pipeline filling at the start of every DMA transfer."""
        extra = self.latency_cycles.get(graph, 0) - self.cycles.get(graph, 0)
        return max(extra, 0) / (self.clock_mhz * 1e6)

    def gate_on_pl(self, manifest: Manifest, graph: str) -> bool:
        """A quantized gate (a ``finn`` graph) whose engine the report has cycles for."""
        return manifest.graphs[graph].finn is not None and graph in self.cycles

    def with_params(self, **changes: float) -> TimingModel:
        clock = changes.pop("clock_mhz", None)
        out = super().with_params(**changes)
        if clock is not None:
            out.clock_mhz = _rate("clock_mhz", clock)
        return out

    def __repr__(self) -> str:
        return f"HardwareReportTiming({self.source}, {self._args()})"


AXILITE_S_PER_WORD = 160e-9
"""Modelled time of one 32-bit AXI-lite write from the ARM into a PL memory over M_AXI_GP0
(uncached, posted): HARDWARE.md estimates 100-250 ns (:data:`AXILITE_S_PER_WORD_RANGE`), not
measured; 160 ns is the 16 cycles at 100 MHz of :class:`fpga.architecture.CostModel`."""
AXILITE_S_PER_WORD_RANGE = (100e-9, 250e-9)


def runtime_weight_load_s(
    words: int,
    flush_frame_s: float = 0.0,
    s_per_word: float = AXILITE_S_PER_WORD,
) -> float:
    """Modelled time to write a block's runtime weights into its shared engine: ``words``
    32-bit AXI-lite writes at ``s_per_word`` each, then one flush frame through the engine
    (``flush_frame_s``: one image's engine time; the loader in fpga/board/weights.py sends it).

    For example ResNet-74's stage-3 blocks (18,448 words) take 3.0 ms of writes at 160 ns a
    word, 1.8-4.6 ms over HARDWARE.md's 100-250 ns range. A model, not a measurement.
    """
    if isinstance(words, bool) or not isinstance(words, (int, np.integer)) or words < 0:
        raise EmulatorError(f"words={words!r} must be a count of 32-bit words >= 0")
    return int(words) * _rate("s_per_word", s_per_word) + _seconds("flush_frame_s", flush_frame_s)

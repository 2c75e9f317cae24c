"""The emulated ZedBoard: the real board runtime on a pty, with modelled time and power.

:class:`EmulatedBoard` serves :class:`fpga.board.runtime.BoardRuntime`, the very handler the
ZedBoard runs, on the master end of a pseudo-terminal; the host opens the slave by name exactly
as it opens ``/dev/ttyUSB0``. The bundle is loaded into a temporary store through the same
archive path a LOAD takes, and selected. Only the batch runner differs: :class:`ModelledRunner`

1. runs the executor on the host CPU (fast) to learn each image's decisions and results;
2. turns them into per-image phases with a :class:`~fpga.emulator.timing.TimingModel`;
3. plays the phases back in real time on a modelled board timeline, setting the ground-truth
   :class:`~fpga.emulator.power.PowerTrace` as it goes: static power always, plus the ARM's
   active power while a gate runs, plus an engine's dynamic power (and the ARM polling it)
   while the engine works. Energy is saved only where work is skipped.

RUN_DONE's timestamps are the modelled start and end on the board's clock (the host's
``time.monotonic_ns()`` plus a fixed offset, as a real board's clock has its own origin);
:meth:`EmulatedBoard.board_ns_to_host_s` converts. With ``meter=True`` a simulated Keysight
34465A (:mod:`fpga.emulator.meter`) reads the same trace on a second pty.

``speed`` (default 1) is modelled seconds per host second: 0.1 plays a run ten times slower,
so measurement windows are ten times longer. Power is unchanged, so the host measures times
and energies that are the modelled ones divided by ``speed`` (records keep both).

``faults`` (settings of :class:`wire.ports.FaultyPort`, e.g. ``{"byte_error_rate": 1e-3}``)
puts a faulty cable between the host and the board: bytes are damaged in both directions at the
board's end, so the host's link has to recover from what a bad line does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.archive import archive_sha256, pack_bundle
from export.executor import BATCH_SIZE, BundleExecutor
from export.manifest import Manifest, load_bundle
from fpga.board.errors import LinkError
from fpga.board.runtime import BoardRuntime, RunOutcome, RuntimeConfig
from fpga.emulator import EmulatorError
from fpga.emulator.meter import SimulatedMeter
from fpga.emulator.power import PowerTrace
from fpga.emulator.timing import ARM, HardwareReportTiming, MacRateTiming, Phase, TimingModel
from wire.link import Server
from wire.ports import FaultyPort, open_pty_pair
from wire.protocol import MAX_IDENTITY_BYTES, truncate_utf8

log = logging.getLogger(__name__)

LOOKAHEAD_S = 0.25  # power changes are recorded this far ahead of the host's clock
START_LEAD_S = 0.005  # a run starts this long after the executor finished


@dataclass
class PowerModel:
    """Power of the emulated ZedBoard, as drawn from its 12 V supply (watts).

    Static power (drawn at all times) is the sum of its parts; dynamic power is added while a
    unit works. docs/board.md ("Power model") gives each default's source or says that it is
    an assumption; replace them with your board's numbers (``--power-model JSON`` with these
    field names) and the PL's per-engine dynamic power from Vivado's ``report_power``
    (``dynamic_power_w`` per graph in the hardware report, see :meth:`with_report`).

    Attributes:
        ps_idle_w: The processing system idling under PYNQ Linux (both Cortex-A9 cores in WFI,
            L2, OCM, the PS peripherals that Linux keeps on).
        pl_static_w: The PL's static power with the bitstream loaded (leakage, clock trees).
        ddr_idle_w: The DDR3 chips and the PS DDR controller idling (refresh, termination).
        board_other_w: Everything else on the board: regulator losses, the USB-UART, LEDs,
            oscillators, the OLED and audio parts.
        arm_active_w: Extra power while the ARM computes (a gate, or the marshalling of an
            engine call): one Cortex-A9 core busy rather than idle at 667 MHz.
        arm_poll_w: Extra ARM power while an engine runs: PYNQ's DMA ``wait()`` polls, so one
            core stays busy while it waits.
        engine_dynamic_w: PL dynamic power of an engine while it computes (logic, BRAM, DSP,
            the IODMAs and the HP port). Engines are idle (static only) otherwise.
        ddr_active_w: Extra DDR power while data moves (an engine's DMA, the ARM's buffers).
        engine_dynamic_w_by_graph: Per-graph overrides of ``engine_dynamic_w``.
    """

    ps_idle_w: float = 1.2
    pl_static_w: float = 0.3
    ddr_idle_w: float = 0.5
    board_other_w: float = 1.0
    arm_active_w: float = 0.4
    arm_poll_w: float = 0.4
    engine_dynamic_w: float = 0.5
    ddr_active_w: float = 0.2
    engine_dynamic_w_by_graph: dict[str, float] = field(default_factory=dict)

    SCALARS = (
        "ps_idle_w",
        "pl_static_w",
        "ddr_idle_w",
        "board_other_w",
        "arm_active_w",
        "arm_poll_w",
        "engine_dynamic_w",
        "ddr_active_w",
    )

    def __post_init__(self) -> None:
        values = {name: getattr(self, name) for name in self.SCALARS}
        values |= {
            f"engine_dynamic_w_by_graph[{k!r}]": v
            for k, v in self.engine_dynamic_w_by_graph.items()
        }
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise EmulatorError(f"PowerModel.{name}={value!r} must be a power >= 0 W")

    @property
    def static_w(self) -> float:
        """Power drawn at all times: PS idle + PL static + DDR idle + the rest of the board."""
        return self.ps_idle_w + self.pl_static_w + self.ddr_idle_w + self.board_other_w

    def engine_w(self, graph: str) -> float:
        """Dynamic PL power of the engine running ``graph``."""
        return self.engine_dynamic_w_by_graph.get(graph, self.engine_dynamic_w)

    def phase_w(self, phase: Phase) -> float:
        """Total board power during ``phase``."""
        if phase.unit == ARM:
            return self.static_w + self.arm_active_w + self.ddr_active_w
        return self.static_w + self.engine_w(phase.graph) + self.arm_poll_w + self.ddr_active_w

    def dynamic_w(self, phase: Phase) -> float:
        """Power above static during ``phase``."""
        return self.phase_w(phase) - self.static_w

    def with_report(self, report: dict) -> PowerModel:
        """This model with ``graphs.NAME.dynamic_power_w`` of a hardware report as overrides."""
        by_graph = dict(self.engine_dynamic_w_by_graph)
        for name, entry in (report.get("graphs") or {}).items():
            if isinstance(entry, dict) and "dynamic_power_w" in entry:
                by_graph[name] = entry["dynamic_power_w"]
        return dataclasses.replace(self, engine_dynamic_w_by_graph=by_graph)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> PowerModel:
        """A model from a JSON object of field names (missing fields keep their defaults)."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise EmulatorError(f"cannot read power model {str(path)!r}: {exc}") from None
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) - known:
            raise EmulatorError(
                f"power model {str(path)!r} has unknown field(s) "
                f"{sorted(set(data) - known) if isinstance(data, dict) else data!r}; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**data)


@dataclass
class RunRecord:
    """One modelled RUN_BATCH: what the ground truth says about its window."""

    mode: str
    images: int
    repeats: int
    speed: float
    host_start_s: float  # time.monotonic() of the modelled start
    host_end_s: float
    board_start_ns: int
    board_end_ns: int
    image_time_s: np.ndarray  # (images,) modelled seconds per image (one repeat)
    image_energy_j: np.ndarray  # (images,) modelled joules per image, static included
    arm_s: float  # modelled seconds of ARM work, all repeats
    engine_s: float  # modelled seconds of engine work, all repeats
    dynamic_energy_j: float  # modelled joules above static, all repeats

    @property
    def duration_s(self) -> float:
        """Modelled duration of the run (host seconds times ``speed``)."""
        return float(self.image_time_s.sum()) * self.repeats

    @property
    def energy_j(self) -> float:
        """Modelled energy of the run, as the trace holds it (host-time, i.e. / speed)."""
        return float(self.image_energy_j.sum()) * self.repeats / self.speed


class ModelledRunner:
    """The emulated board's :class:`~fpga.board.runtime.BatchRunner` (see the module doc)."""

    def __init__(
        self,
        timing: TimingModel,
        power: PowerModel,
        trace: PowerTrace,
        *,
        board_offset_ns: int,
        speed: float = 1.0,
    ) -> None:
        if not speed > 0:
            raise EmulatorError(f"speed={speed!r} must be > 0 (1 = modelled time)")
        self.timing = timing
        self.power = power
        self.trace = trace
        self.speed = float(speed)
        self.board_offset_ns = int(board_offset_ns)
        self.runs: list[RunRecord] = []
        self.stopping = threading.Event()
        self._behind_warned = False

    def run(
        self,
        executor: BundleExecutor,
        images: np.ndarray,
        mode: str,
        budget_macs: float | None,
        repeats: int,
    ) -> RunOutcome:
        manifest: Manifest = executor.manifest
        result = executor.run(images, mode=mode, budget_macs=budget_macs)
        phases = self.timing.batch_phases(manifest, result, mode, executor.batch_size)
        image_time = np.array([sum(p.duration_s for p in ph) for ph in phases])
        image_energy = np.array(
            [sum(p.duration_s * self.power.phase_w(p) for p in ph) for ph in phases]
        )
        arm_s = sum(p.duration_s for ph in phases for p in ph if p.unit == ARM) * repeats
        engine_s = float(image_time.sum()) * repeats - arm_s
        dynamic = sum(p.duration_s * self.power.dynamic_w(p) for ph in phases for p in ph)

        t0 = time.monotonic() + START_LEAD_S
        cursor = t0
        for _ in range(repeats):
            for image in phases:
                self._wait_until(cursor - LOOKAHEAD_S)
                if cursor < time.monotonic() and not self._behind_warned:
                    self._behind_warned = True
                    log.warning("the emulator fell behind its timeline; power may be late")
                for phase in image:
                    self.trace.set_power_w(self.power.phase_w(phase), at_s=cursor)
                    cursor += phase.duration_s / self.speed
        self.trace.set_power_w(self.power.static_w, at_s=cursor)
        self._wait_until(cursor)

        start_ns = round(t0 * 1e9) + self.board_offset_ns
        end_ns = start_ns + round((cursor - t0) * 1e9)
        self.runs.append(
            RunRecord(
                mode=mode,
                images=len(images),
                repeats=repeats,
                speed=self.speed,
                host_start_s=t0,
                host_end_s=cursor,
                board_start_ns=start_ns,
                board_end_ns=end_ns,
                image_time_s=image_time,
                image_energy_j=image_energy,
                arm_s=arm_s,
                engine_s=engine_s,
                dynamic_energy_j=dynamic * repeats,
            )
        )
        return RunOutcome(result, start_ns, end_ns)

    def _wait_until(self, host_s: float) -> None:
        while (left := host_s - time.monotonic()) > 0:
            if self.stopping.wait(min(left, 0.1)):
                raise EmulatorError("the emulated board was stopped during a run")


class EmulatedBoard:
    """The board runtime on a pty, with a preloaded bundle and modelled time and power.

    Use as a context manager or call :meth:`start` / :meth:`stop`::

        with EmulatedBoard("bundles/r8-iadi60", meter=True) as board:
            print(board.address, board.meter_address)
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike,
        *,
        timing: TimingModel | None = None,
        power: PowerModel | None = None,
        speed: float = 1.0,
        meter: bool = False,
        meter_config: object | None = None,
        store_dir: str | os.PathLike | None = None,
        max_image_bytes: int | None = None,
        board_clock_origin_s: float = 100.0,
        baudrate: int = 921600,
        faults: dict | None = None,
        executor_batch: int | None = None,
    ) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.timing = timing or MacRateTiming()
        self.power = power or PowerModel()
        self.speed = speed
        self.want_meter = meter
        self.meter_config = meter_config
        self.baudrate = baudrate
        self.faults = faults
        self.executor_batch = BATCH_SIZE if executor_batch is None else executor_batch
        """The runtime's ``executor_batch`` (default: the runtime's default)."""
        self.cable: FaultyPort | None = None
        self._own_store = store_dir is None
        self.store_dir = Path(store_dir) if store_dir else None
        self.max_image_bytes = max_image_bytes
        # the board's monotonic clock reads board_clock_origin_s when the emulator is made
        self.board_offset_ns = round((board_clock_origin_s - time.monotonic()) * 1e9)
        self.trace = PowerTrace(self.power.static_w)
        self.runner = ModelledRunner(
            self.timing, self.power, self.trace, board_offset_ns=self.board_offset_ns, speed=speed
        )
        self.runtime: BoardRuntime | None = None
        self.server: Server | None = None
        self.meter = None
        self.address: str | None = None
        self.meter_address: str | None = None
        self._thread: threading.Thread | None = None
        self._ports: tuple = ()

    # -- clocks ----------------------------------------------------------------------------
    def board_clock_ns(self) -> int:
        """The emulated board's ``time.monotonic_ns()``."""
        return time.monotonic_ns() + self.board_offset_ns

    def board_ns_to_host_s(self, board_ns: int) -> float:
        """The host ``time.monotonic()`` at which the board's clock read ``board_ns``."""
        return (board_ns - self.board_offset_ns) * 1e-9

    # -- ground truth ----------------------------------------------------------------------
    @property
    def runs(self) -> list[RunRecord]:
        """Every modelled run so far, oldest first."""
        return self.runner.runs

    def ground_truth_energy_j(self, t0_host_s: float, t1_host_s: float) -> float:
        """Exact energy the emulated board drew between two host ``time.monotonic()`` times."""
        return self.trace.energy_j(t0_host_s, t1_host_s)

    # -- lifecycle -------------------------------------------------------------------------
    def _identity(self) -> str:
        # the timing model's parameters are in the run's config (describe()), not in HELLO
        text = f"emulated ZedBoard (ddi-fpga; speed {self.speed:g}; {type(self.timing).__name__})"
        return truncate_utf8(text, MAX_IDENTITY_BYTES)

    def start(self) -> str:
        """Load the bundle, open the pty(s) and serve; returns the board's pty path."""
        if self._thread is not None:
            raise EmulatorError(f"the emulated board already serves {self.address!r}")
        bundle = load_bundle(self.bundle_dir, verify=True)
        if isinstance(self.timing, HardwareReportTiming):
            self.timing.check(bundle.manifest)
        if self.store_dir is None:
            self.store_dir = Path(tempfile.mkdtemp(prefix="ddi-emulated-store-"))
        config = RuntimeConfig(
            store_dir=self.store_dir,
            identity=self._identity(),
            threads=1,
            executor_batch=self.executor_batch,
        )
        if self.max_image_bytes is not None:
            config.max_image_bytes = self.max_image_bytes
        self.runtime = BoardRuntime(
            config, runner=self.runner, clock_ns=self.board_clock_ns, backend="emulated"
        )
        archive = pack_bundle(self.bundle_dir)  # preload through the path a LOAD takes
        session = self.runtime.store.begin(bundle.bundle_id, len(archive), archive_sha256(archive))
        session.write(0, archive)
        self.runtime.activate(self.runtime.store.finish(session, bundle.bundle_id))

        board_end, host_end = open_pty_pair(baudrate=self.baudrate)
        self._ports = (board_end, host_end)  # host_end stays open: master reads never hit EIO
        self.address = host_end.port
        if self.faults is not None:  # a faulty cable: damage both directions at the board's end
            self.cable = FaultyPort(board_end, damage_writes=True, **self.faults)
        self.server = Server(self.cable or board_end)
        self.runner.stopping.clear()
        self._thread = threading.Thread(target=self._serve, name="emulated-board", daemon=True)
        self._thread.start()
        if self.want_meter:
            self.meter = SimulatedMeter(self.trace, self.meter_config)
            self.meter_address = self.meter.start()
        log.info("emulated board serving %s on %s", bundle.bundle_id, self.address)
        return self.address

    def _serve(self) -> None:
        assert self.server is not None and self.runtime is not None
        try:
            self.server.serve_forever(self.runtime)
        except LinkError as exc:
            log.error("emulated board stopped: %s", exc)

    def stop(self) -> None:
        """Stop serving, close the ptys and the meter, delete a temporary store (idempotent)."""
        self.runner.stopping.set()
        if self.server is not None:
            self.server.stop()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            self._thread = None
        if self.meter is not None:
            self.meter.stop()
            self.meter = None
        for port in self._ports:
            with contextlib.suppress(OSError):
                port.close()
        self._ports = ()
        if self.runtime is not None:
            self.runtime.close()
        if self._own_store and self.store_dir is not None:
            shutil.rmtree(self.store_dir, ignore_errors=True)
            self.store_dir = None

    def __enter__(self) -> EmulatedBoard:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def describe(board: EmulatedBoard) -> dict:
    """The emulator's settings as a JSON-ready dict (for a run folder's config)."""
    return {
        "timing": repr(board.timing),
        "power_model": {**dataclasses.asdict(board.power), "static_w": board.power.static_w},
        "speed": board.speed,
        "board_offset_ns": board.board_offset_ns,
        "executor_batch": board.executor_batch,
    }


__all__ = [
    "EmulatedBoard",
    "ModelledRunner",
    "PowerModel",
    "RunRecord",
    "describe",
]

"""The measurement harness: timed windows on a board, power from a meter, energy per inference.

For each model (a bundle and a mode) and each repeat, the test images are cut into windows of
``images_per_window`` different images (with input-dependent skipping, repeating one image would
be biased). A window is measured as:

1. upload its images to the board (never inside the timed window);
2. ask the board to run them: it stamps the start and end on its own clock;
3. fetch the per-image results (prediction, exit, executed blocks and channels, MACs);
4. one more HELLO round trip for the clock map (host/clock.py), then wait until the meter has
   delivered samples past the window's end;
5. integrate the power over the window (host/energy.py), subtract the idle power, and commit the
   window's record and result rows to the run folder (host/records.py).

Models are interleaved within each repeat (A B C, A B C, ...) so drift in temperature or supply
touches all alike. The idle power is measured once at the start, with the board waiting. A meter
samples in a background thread for the whole run; every sample is kept in ``power.csv``.

A run killed at any point resumes from its last committed window (``--resume RUN_FOLDER``); the
windows of a resumed run are re-measured whole, never half.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import platform
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cifar.reader import load_cifar10
from export.accounting import realized_macs
from export.manifest import load_bundle
from host.clock import ClockObservation, fit_clock
from host.energy import EnergyError, idle_power_w, window_energy
from host.provenance import ProvenanceError, energy_source
from host.records import RunFolder, read_json, write_json
from wire.protocol import unpack_executed

log = logging.getLogger(__name__)

MODES = ("full", "iadi", "ddi")


class MeasureError(Exception):
    """A measurement cannot start or go on (one line naming the value and what to do)."""


@dataclass(frozen=True)
class ModelSpec:
    """One row of the table: a bundle run in a mode (``ddi`` needs ``budget_macs``)."""

    key: str
    bundle: str
    mode: str = "iadi"
    budget_macs: float | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """``KEY=BUNDLE_DIR[:MODE[:BUDGET_MACS]]``, e.g. ``full=bundles/base:full``."""
        key, sep, rest = text.partition("=")
        if not sep or not key or not rest:
            raise MeasureError(
                f"--model {text!r} is not KEY=BUNDLE_DIR[:MODE[:BUDGET_MACS]], e.g. "
                "full=bundles/r8-base:full"
            )
        parts = rest.split(":")
        mode = parts[1] if len(parts) > 1 else "iadi"
        if mode not in MODES:
            raise MeasureError(f"--model {text!r}: mode {mode!r} is not one of {', '.join(MODES)}")
        budget = None
        if len(parts) > 2:
            try:
                budget = float(parts[2])
            except ValueError:
                raise MeasureError(
                    f"--model {text!r}: budget {parts[2]!r} is not a number"
                ) from None
        if (mode == "ddi") != (budget is not None):
            raise MeasureError(f"--model {text!r}: mode ddi needs a budget, and only it")
        return cls(key, parts[0], mode, budget)


@dataclass
class MeasurementConfig:
    """Settings of one run; saved as the run folder's config.json (a resume must match)."""

    port: str
    """Board serial port or pyserial URL (/dev/ttyUSB0, socket://host:port, a pty)."""
    models: list[ModelSpec]
    reference: str
    """Key of the model whose energy is 0% savings (the full network)."""
    baud_rate: int = 921600
    meter: str = "none"
    """``KIND:ADDRESS`` (host/meters), or ``none`` for timing only."""
    data: str | None = None
    images: int = 1000
    """Test images per model and repeat (the first N of the test split)."""
    images_per_window: int = 250
    repeats: int = 3
    idle_s: float = 3.0
    label: str = "run"
    reply_timeout_s: float = 0.05
    """The board's turnaround allowed beyond line time before a request is sent again."""
    settle_s: float = 0.2
    """Wait after a window before integrating, so the meter's samples cover its end."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["models"] = [asdict(m) for m in self.models]
        return out

    def validate(self) -> None:
        keys = [m.key for m in self.models]
        if len(set(keys)) != len(keys):
            raise MeasureError(f"model keys {keys!r} repeat; give every --model its own KEY")
        if self.reference not in keys:
            raise MeasureError(f"--reference {self.reference!r} is none of the models {keys!r}")
        for name in ("images", "images_per_window", "repeats"):
            if getattr(self, name) < 1:
                raise MeasureError(
                    f"--{name.replace('_', '-')} {getattr(self, name)!r} must be >= 1"
                )
        if self.baud_rate <= 0:
            raise MeasureError(f"--baud {self.baud_rate!r} must be positive")

    def windows(self) -> list[tuple[str, int, int, int, int]]:
        """(key, model index, repeat, first image, count) in measurement order."""
        plan = []
        for r in range(self.repeats):
            for mi, m in enumerate(self.models):
                for w, first in enumerate(range(0, self.images, self.images_per_window)):
                    count = min(self.images_per_window, self.images - first)
                    plan.append((f"{m.key}/r{r}/w{w}", mi, r, first, count))
        return plan


class PowerLog:
    """Samples a meter in a background thread; keeps every sample in memory and on disk."""

    def __init__(self, meter, run: RunFolder, poll_s: float = 0.1) -> None:
        self.meter, self.run, self.poll_s = meter, run, poll_s
        self._t: list[np.ndarray] = []
        self._p: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="power-log", daemon=True)

    def start(self) -> None:
        self.meter.start()
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._drain()
            except BaseException as exc:  # reported to the measuring thread
                self._error = exc
                return
            self._stop.wait(self.poll_s)

    def _drain(self) -> None:
        t, p = self.meter.read_samples()
        if len(t):
            self.run.append_power(t, p)
            with self._lock:
                self._t.append(np.asarray(t, dtype=np.float64))
                self._p.append(np.asarray(p, dtype=np.float64))

    def samples(self) -> tuple[np.ndarray, np.ndarray]:
        if self._error is not None:
            raise self._error
        with self._lock:
            if not self._t:
                return np.zeros(0), np.zeros(0)
            t = np.concatenate(self._t)
            p = np.concatenate(self._p)
            self._t, self._p = [t], [p]
        return t, p

    def wait_past(self, t_s: float, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            t, _ = self.samples()
            if t.size and t[-1] >= t_s:
                return
            time.sleep(self.poll_s)
        raise MeasureError(
            f"the power meter delivered no sample past host time {t_s:.3f} s within "
            f"{timeout_s:.0f} s: meter silent; check its connection and trigger settings"
        )

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        try:
            self.meter.stop()
        finally:
            self._drain_quietly()

    def _drain_quietly(self) -> None:
        try:
            self._drain()
        except Exception:  # the meter may already be gone; its samples so far are on disk
            log.debug("final meter read failed", exc_info=True)


# ---------------------------------------------------------------------------------------------
# The run


def _machine() -> str:
    return f"{platform.node() or 'host'} ({platform.machine()}, Python {platform.python_version()})"


def _summary(
    config: MeasurementConfig, run: RunFolder, meta: dict[str, Any], labels: np.ndarray
) -> dict[str, Any]:
    """Per model: accuracy, compute savings and per-repeat energy per image, from the files."""

    windows = run.windows()
    results = run.read_results()
    models = []
    for m in config.models:
        manifest = load_bundle(m.bundle, verify=False).manifest
        rows = [r for r in results if r["model"] == m.key]
        preds = np.array([int(r["prediction"]) for r in rows])
        truth = np.array([int(r["label"]) for r in rows])
        macs = np.array([int(r["macs"]) for r in rows], dtype=np.float64)
        realized = _realized_macs(manifest, rows).astype(np.float64)
        # the interval is over distinct test images: the first repeat's rows (repeats run the
        # same images; whether they answered alike is recorded beside it)
        first_repeat = min((int(r["repeat"]) for r in rows), default=0)
        first = [r for r in rows if int(r["repeat"]) == first_repeat]
        correct = sum(int(r["prediction"]) == int(r["label"]) for r in first)
        answers: dict[str, set[str]] = {}
        for r in rows:
            answers.setdefault(r["image_index"], set()).add(r["prediction"])
        energy, seconds = [], []
        for rep in range(config.repeats):
            ws = [w for w in windows if w["model"] == m.key and w["repeat"] == rep]
            images = sum(w["images"] for w in ws)
            seconds.append(sum(w["duration_s"] for w in ws) / max(images, 1))
            if ws and all("net_energy_j" in w for w in ws):
                energy.append(sum(w["net_energy_j"] for w in ws) / images)
        models.append(
            {
                "key": m.key,
                "bundle_id": manifest.bundle_id,
                "mode": m.mode,
                "budget_macs": m.budget_macs,
                "images": len(rows),
                "accuracy": float((preds == truth).mean()) if len(rows) else float("nan"),
                "accuracy_images": len(first),
                "accuracy_correct": correct,
                "accuracy_ci95": list(wilson_interval(correct, len(first))),
                "predictions_repeatable": all(len(a) == 1 for a in answers.values()),
                "mean_macs": float(macs.mean()) if len(rows) else float("nan"),
                "full_macs": manifest.full_macs,
                "compute_savings": float(1 - macs.mean() / manifest.full_macs),
                "realized_mean_macs": float(realized.mean()) if len(rows) else float("nan"),
                "realized_compute_savings": float(1 - realized.mean() / manifest.full_macs),
                "energy_per_image_j": energy,
                "latency_per_image_s": seconds,
            }
        )
    return {**meta, "models": models}


def check_bundles(config: MeasurementConfig) -> dict[str, Any]:
    """Every model's bundle, read and verified (each file's sha256), keyed by model key.

    Needs no board: the command line calls it before it creates a run folder, so a refused
    bundle leaves nothing behind. Raises export's :class:`~export.errors.BundleError` (one line
    naming the file) or :class:`MeasureError` (mode ``ddi`` on a bundle without exits).
    """

    bundles = {m.key: load_bundle(m.bundle, verify=True) for m in config.models}
    for m in config.models:
        if m.mode == "ddi" and not bundles[m.key].manifest.exits:
            raise MeasureError(f"model {m.key!r}: bundle {m.bundle!r} has no exits for mode ddi")
    return bundles


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion: accuracy over ``n`` test images (nan if n = 0)."""
    from scipy.stats import binomtest

    if n == 0:
        return math.nan, math.nan
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def _realized_macs(manifest, rows: list[dict[str, str]]) -> np.ndarray:
    """Per result row, the MACs dense engines execute (export/accounting.py)."""

    if not rows:
        return np.zeros(0, dtype=np.int64)
    executed = np.array([[c == "1" for c in r["executed_blocks"]] for r in rows], dtype=bool)
    channels = np.array(
        [[int(c) for c in r["channels_per_block"].split(";")] for r in rows], dtype=np.int64
    )
    macs = np.array([int(r["macs"]) for r in rows], dtype=np.int64)
    return realized_macs(manifest, macs, executed, channels)


SOURCE_FILE = "source.json"


def _record_source(run: RunFolder, source: dict[str, Any]) -> None:
    """Write what the board and meter said they are into the run folder; a resumed run must
    find the same (one run folder never mixes energy sources)."""
    path = run.path / SOURCE_FILE
    if path.exists():
        saved = read_json(path, "source")
        if saved != source:
            diff = sorted(k for k in set(saved) | set(source) if saved.get(k) != source.get(k))
            raise MeasureError(
                f"run {str(run.path)!r} was measured with another board or meter "
                f"({', '.join(diff)}: {saved!r} then, {source!r} now); resume it on the same "
                "set-up or start a new run"
            )
        return
    write_json(path, "source", source)


RUN_RETRY_FACTOR = 3.0
RUN_RETRY_MIN_S = 2.0
RUN_RETRY_FIRST_S = 60.0
"""Before any window has run: how long a RUN_BATCH may stay unanswered before it is sent again
(host.board.RUN_RETRY_S)."""
RUN_RETRY_MAX_S = 3600.0


def run_retry_s(seconds_per_image: dict[str, float], model: str, images: int) -> float:
    """How long to wait for a window's RUN_BATCH reply before sending it again
    (:meth:`host.board.BoardClient.run`): three times the model's last run at ``images``
    images (at least 2 s), so that no request crosses the line while the board runs, and a
    request lost on the line costs seconds, not the run's whole timeout. Before the model's
    first window: three times the slowest model seen yet, else :data:`RUN_RETRY_FIRST_S`."""
    per_image = seconds_per_image.get(model)
    if per_image is None and seconds_per_image:
        per_image = max(seconds_per_image.values())
    if per_image is None:
        return RUN_RETRY_FIRST_S
    return min(max(RUN_RETRY_FACTOR * per_image * images, RUN_RETRY_MIN_S), RUN_RETRY_MAX_S)


def measure(config: MeasurementConfig, run: RunFolder, *, progress: bool = True) -> dict[str, Any]:
    """Measure every window of ``config`` not yet committed in ``run``; return the summary."""
    from tqdm.auto import tqdm

    # serial (pyserial): loaded only when this runs
    from host.board import BoardClient
    from host.meters import open_meter, parse_meter_spec

    config.validate()
    test = load_cifar10("test", config.data)
    if config.images > len(test.labels):
        raise MeasureError(f"--images {config.images!r} exceeds the {len(test.labels)} test images")
    images, labels = test.images[: config.images], test.labels[: config.images]
    bundles = check_bundles(config)

    done = set(run.completed_windows())
    plan = [w for w in config.windows() if w[0] not in done]
    with BoardClient(
        config.port, baud_rate=config.baud_rate, timeout_s=config.reply_timeout_s
    ) as board:
        hellos = board.clock_samples(5)
        identity = hellos[0].identity
        observations = [ClockObservation(h.host_send_s, h.host_receive_s, h.board_clock_ns)
                        for h in hellos]  # fmt: skip
        meter = open_meter(config.meter)
        power = PowerLog(meter, run)
        source = {
            "board_backend": hellos[0].backend,
            "meter_kind": parse_meter_spec(config.meter)[0],
            "meter_simulated": meter.simulated,
        }
        try:
            source["energy_source"] = energy_source(
                source["board_backend"], source["meter_kind"], source["meter_simulated"]
            )
        except ProvenanceError as exc:
            meter.close()
            raise MeasureError(str(exc)) from None
        try:
            _record_source(run, source)
        except MeasureError:
            meter.close()
            raise
        meta = {
            "label": config.label,
            **source,
            "reference": config.reference,
            "board": identity,
            "meter": meter.identify() if config.meter != "none" else "none",
            "data": test.source,
            "images": config.images,
            "repeats": config.repeats,
            "machine": _machine(),
            "recorded_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "notes": list(config.extra.get("notes", [])),
            "model_family": ", ".join(
                sorted(
                    {f"{b.manifest.model['name']} {_quant(b.manifest)}" for b in bundles.values()}
                )
            ),
        }
        try:
            power.start()
            idle_w = _idle(config, run, power)
            meta["idle_power_w"] = idle_w
            active: str | None = None
            run_s_per_image: dict[str, float] = {}  # the last window's run, by model
            bar = tqdm(total=len(plan), desc="windows", unit="window", disable=not progress)
            for key, mi, rep, first, count in plan:
                m = config.models[mi]
                if active != m.key:
                    board.ensure_bundle(m.bundle, progress=progress)
                    active = m.key
                batch_id = 1
                board.upload(batch_id, images[first : first + count])
                retry_s = run_retry_s(run_s_per_image, m.key, count)
                start_ns, end_ns = board.run(batch_id, m.mode, m.budget_macs, retry_s=retry_s)
                run_s_per_image[m.key] = max((end_ns - start_ns) / 1e9, 0.0) / max(count, 1)
                records = board.fetch(batch_id, count)
                h = board.hello()
                observations.append(ClockObservation(h.host_send_s, h.host_receive_s,
                                                     h.board_clock_ns))  # fmt: skip
                clock = fit_clock(observations)
                t0, t1 = clock.to_host_s(start_ns), clock.to_host_s(end_ns)
                record: dict[str, Any] = {
                    "window": key,
                    "model": m.key,
                    "repeat": rep,
                    "first_image": first,
                    "images": count,
                    "board_start_ns": int(start_ns),
                    "board_end_ns": int(end_ns),
                    "start_host_s": t0,
                    "end_host_s": t1,
                    "duration_s": (end_ns - start_ns) * 1e-9,
                    "clock": clock.to_dict(),
                }
                if config.meter != "none":
                    power.wait_past(t1 + config.settle_s)
                    t, p = power.samples()
                    try:
                        e = window_energy(t, p, t0, t1, images=count, idle_w=idle_w)
                    except EnergyError as exc:
                        raise MeasureError(f"window {key}: {exc}") from None
                    record |= {
                        k: v for k, v in e.to_dict().items() if k not in ("start_s", "end_s")
                    }
                run.commit_window(record, _rows(m.key, rep, first, labels, records))
                bar.update(1)
            bar.close()
        finally:
            power.stop()
            meter.close()
    summary = _summary(config, run, meta, labels)
    run.write_summary(summary)
    return summary


def _quant(manifest) -> str:
    q = manifest.model.get("kwargs", {}).get("quant")
    return f"W{q['weight_bits']}A{q['act_bits']}" if q else "float"


def _idle(config: MeasurementConfig, run: RunFolder, power: PowerLog) -> float:
    """Idle power with the board waiting (measured once; a resumed run reuses it)."""
    saved = run.path / "idle.json"
    if saved.exists():
        return float(read_json(saved, "idle")["idle_power_w"])
    if config.meter == "none":
        return 0.0
    power.wait_past(time.monotonic())  # sampling has started: the window is covered from t0
    t0 = time.monotonic()
    time.sleep(config.idle_s)
    t1 = time.monotonic()
    power.wait_past(t1)
    t, p = power.samples()
    try:
        idle = idle_power_w(t, p, t0, t1)
        window_energy(t, p, t0, t1, images=1, idle_w=0.0)  # enough samples, no gaps
    except EnergyError as exc:
        raise MeasureError(f"idle measurement: {exc}") from None
    write_json(saved, "idle", {"idle_power_w": idle, "start_host_s": t0, "end_host_s": t1})
    log.info("idle power %.4f W over %.1f s", idle, t1 - t0)
    return idle


def _rows(
    model: str, repeat: int, first: int, labels: np.ndarray, records: np.ndarray
) -> list[dict[str, Any]]:
    executed = unpack_executed(records)
    rows = []
    for i, rec in enumerate(records):
        rows.append(
            {
                "model": model,
                "repeat": repeat,
                "image_index": first + i,
                "label": int(labels[first + i]),
                "prediction": int(rec["prediction"]),
                "exit": int(rec["exit_index"]),
                "executed_blocks": "".join("1" if e else "0" for e in executed[i]),
                "channels_per_block": ";".join(str(int(c)) for c in rec["channels"]),
                "macs": int(rec["macs"]),
            }
        )
    return rows

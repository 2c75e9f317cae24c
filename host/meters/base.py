"""Power meters: the interface every driver implements, the registry, and sample timestamps.

A meter is chosen by a spec string ``KIND:ADDRESS``
(``keysight34465a:TCPIP::10.0.0.5::5025::SOCKET``, ``keysight34465a:ASRL/dev/ttyUSB1::INSTR``,
``sim:3.0``, ``none``) and opened with :func:`open_meter`::

    with open_meter("keysight34465a:TCPIP::10.0.0.5::5025::SOCKET") as meter:
        meter.start()
        ...                                   # run the board
        host_time_s, power_w = meter.read_samples()
        meter.stop()

Drivers register themselves by kind with :func:`register_meter`. A kind can also live outside
host/: a package declares it in the :data:`METER_ENTRY_POINTS` entry-point group
(``sim = "fpga.emulator.meter:SimulatedKeysight34465A"`` in pyproject.toml), and the registry
imports it when the kind is first used, so importing host/ never imports the emulator. Every
user-facing failure is a :class:`MeterError` with a one-line message that names the port or
value and says what to do.

:class:`SampleClock` turns sample indices of an instrument that paces samples with its own timer
into host ``time.monotonic()`` timestamps, correcting for the instrument's clock drift (see
docs/power-meter.md, "Timestamps").
"""

from __future__ import annotations

import abc
import importlib.metadata
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

logger = logging.getLogger(__name__)


class MeterError(Exception):
    """Base class of the errors that power-meter drivers report to their user."""


class MeterConfigError(MeterError):
    """A meter spec, kind or option is invalid, or the meter refused a setting."""


class MeterPortError(MeterError):
    """The meter's port is missing, busy or not permitted."""


class MeterTimeoutError(MeterError):
    """The meter did not answer in time."""


class MeterIdentityError(MeterError):
    """Something answered, but not the instrument the driver is for."""


class MeterOverRangeError(MeterError):
    """Readings exceeded the meter's range: the measurement is invalid."""


class MeterProtocolError(MeterError):
    """The meter sent a malformed reply, reported an error, or lost readings."""


class PowerMeter(abc.ABC):
    """A power meter that samples continuously and hands back timestamped power.

    ``read_samples`` returns the samples that arrived since its last call, as host
    ``time.monotonic()`` seconds and watts. A meter is a context manager: ``with`` opens it and
    closes it (stopping sampling first).
    """

    kind: ClassVar[str] = ""
    needs_address: ClassVar[bool] = True

    def __init__(self, address: str = "") -> None:
        self.address = address

    @abc.abstractmethod
    def open(self) -> None:
        """Connect, check the instrument's identity and configure it (idempotent)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop sampling if it runs and release the port (idempotent)."""

    @abc.abstractmethod
    def identify(self) -> str:
        """The instrument's identity (for SCPI instruments, the *IDN? reply)."""

    @property
    @abc.abstractmethod
    def simulated(self) -> bool:
        """Whether the instrument is a software stand-in, as the instrument itself says (read
        when the meter is opened, e.g. from its *IDN? reply); a real instrument says False.
        A run is labelled measured only with a meter that is not simulated (host/measure.py).
        """

    @abc.abstractmethod
    def start(self) -> None:
        """Begin continuous sampling."""

    @abc.abstractmethod
    def read_samples(self) -> tuple[np.ndarray, np.ndarray]:
        """New samples since the last call: ``(host_time_s, power_w)``, both float64."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop sampling; samples taken until now stay available to :meth:`read_samples`."""

    def __enter__(self) -> PowerMeter:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address!r})"


# -- registry -------------------------------------------------------------------------------------

METER_ENTRY_POINTS = "ddi_fpga.power_meters"
"""The entry-point group of meter kinds defined outside host/ (name: kind, value: the class)."""

_REGISTRY: dict[str, type[PowerMeter]] = {}
M = TypeVar("M", bound=type[PowerMeter])


def register_meter(kind: str) -> Callable[[M], M]:
    """Class decorator: make a :class:`PowerMeter` subclass available as ``kind``."""
    if not kind or not kind.isidentifier() or kind != kind.lower():
        raise ValueError(f"meter kind {kind!r} must be a lower-case identifier")

    def decorate(cls: M) -> M:
        if kind in _REGISTRY and _REGISTRY[kind] is not cls:
            raise ValueError(f"meter kind {kind!r} is already registered by {_REGISTRY[kind]!r}")
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return decorate


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """The meter kinds that installed packages declare, not yet imported."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=METER_ENTRY_POINTS)}


def _meter_class(kind: str) -> type[PowerMeter] | None:
    """The class of ``kind``: registered, or imported from its entry point; None if unknown."""
    if kind in _REGISTRY:
        return _REGISTRY[kind]
    entry = _entry_points().get(kind)
    if entry is None:
        return None
    try:
        cls = entry.load()
    except Exception as exc:  # any import failure of the providing module is the user's to fix
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MeterConfigError(
            f"power meter kind {kind!r} comes from {entry.value!r}, which failed to import "
            f"({type(exc).__name__}: {first}); reinstall the package (pip install -e .)"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, PowerMeter)):
        raise MeterConfigError(
            f"power meter kind {kind!r} names {entry.value!r}, which is not a PowerMeter class"
        )
    registered = cls.kind if _REGISTRY.get(cls.kind) is cls else ""
    if registered and registered != kind:  # a class has one kind: its ``kind`` attribute
        raise MeterConfigError(
            f"power meter kind {kind!r} names {entry.value!r}, which is kind {registered!r}; "
            f"use {registered!r}"
        )
    if not registered:  # the module did not register it itself
        register_meter(kind)(cls)
    return cls


def meter_kinds() -> list[str]:
    """The known meter kinds, sorted: registered ones and those of entry points (not imported)."""
    return sorted(set(_REGISTRY) | set(_entry_points()))


def parse_meter_spec(spec: str) -> tuple[str, str]:
    """``"KIND:ADDRESS"`` -> ``(kind, address)``; the address may itself contain colons."""
    if not isinstance(spec, str) or not spec.strip():
        raise MeterConfigError(
            f"power meter spec {spec!r} is empty; write KIND:ADDRESS, e.g. "
            "keysight34465a:TCPIP::HOST::5025::SOCKET, or 'none'"
        )
    kind, _, address = spec.strip().partition(":")
    kind = kind.strip().lower()
    cls = _meter_class(kind)
    if cls is None:
        raise MeterConfigError(
            f"unknown power meter kind {kind!r} in {spec!r}; "
            f"known kinds: {', '.join(meter_kinds())}"
        )
    if cls.needs_address and not address.strip():
        raise MeterConfigError(
            f"power meter spec {spec!r} lacks an address; write {kind}:ASRL/dev/ttyUSB0::INSTR "
            f"or {kind}:TCPIP::HOST::5025::SOCKET"
        )
    return kind, address.strip()


def create_meter(spec: str, **options: Any) -> PowerMeter:
    """The meter that ``spec`` names, not yet opened; ``options`` go to its constructor."""
    kind, address = parse_meter_spec(spec)
    cls = _meter_class(kind)
    assert cls is not None  # parse_meter_spec checked the kind
    return cls(address, **options)


def open_meter(spec: str, **options: Any) -> PowerMeter:
    """The meter that ``spec`` names, opened (connected, identified and configured)."""
    meter = create_meter(spec, **options)
    try:
        meter.open()
    except BaseException:
        meter.close()
        raise
    return meter


@register_meter("none")
class NullMeter(PowerMeter):
    """No power meter: runs are timed but no power is measured (``read_samples`` is empty)."""

    needs_address = False

    def __init__(self, address: str = "", **options: Any) -> None:
        if options:
            raise MeterConfigError(
                f"power meter 'none' takes no options, got {sorted(options)!r}; drop them"
            )
        super().__init__(address)

    def open(self) -> None:
        """Nothing to open."""

    def close(self) -> None:
        """Nothing to close."""

    def identify(self) -> str:
        """Says that no meter is used."""
        return "none (no power meter: timing only)"

    @property
    def simulated(self) -> bool:
        """No instrument, so none simulated: a run without a meter has no energy at all."""
        return False

    def start(self) -> None:
        """Nothing to start."""

    def read_samples(self) -> tuple[np.ndarray, np.ndarray]:
        """Always empty."""
        return np.empty(0), np.empty(0)

    def stop(self) -> None:
        """Nothing to stop."""


# -- timestamps -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClockEstimate:
    """Where an instrument's samples lie on the host clock.

    Sample ``k`` starts at host time ``t0_s + k * period_s``; ``drift_ppm`` is how fast the
    instrument's clock runs against the host's (positive: its samples come early). The true
    values are consistent with every poll: the drift lies in ``[drift_ppm_low,
    drift_ppm_high]``, and for the estimated drift, ``t0_s`` is known to ``t0_uncertainty_s``.
    """

    t0_s: float
    period_s: float
    drift_ppm: float
    drift_ppm_low: float
    drift_ppm_high: float
    t0_uncertainty_s: float
    polls: int


class SampleClock:
    """Host timestamps for samples that an instrument paces with its own timer.

    The instrument starts sample ``k`` at ``k * interval_s`` on its own clock after the trigger,
    and the reading is in its memory ``completion_s`` later. On the host clock, sample ``k``
    starts at ``t0 + k * interval_s * ratio``, with ``t0`` the host time of the first sample and
    ``ratio`` the host seconds per instrument second (``1 / (1 + drift)``). Every poll bounds
    both: a poll sent at host time ``sent`` and answered by ``received`` that brings the count
    of readings to ``n`` says that reading ``n - 1`` was complete before ``received`` and reading
    ``n`` was not complete at ``sent``; and the first sample starts after INIT was sent. These
    bounds are linear in ``(t0, ratio)``, so the consistent pairs form a convex set:

    - ``ratio`` is the middle of the interval of ratios (within ``max_drift_ppm`` of 1) for
      which some ``t0`` meets every bound; if no ratio does (a reply delayed beyond the model),
      the ratio that violates them least;
    - ``t0`` is then the middle of the interval that the bounds leave.

    The bounds tighten with every poll: ``t0`` to about the poll latency, the drift to about
    the latency divided by the run's length. The instrument's processing time after the
    aperture is unknown but short: bounds that it loosens allow ``completion_margin_s`` for it,
    so the true values stay consistent. A sample's timestamp is the middle of its
    integration aperture. Memory is bounded: beyond ``max_polls`` polls, every other old poll
    is dropped (the span of the observations, which fixes the drift, is kept).
    """

    def __init__(
        self,
        interval_s: float,
        aperture_s: float,
        *,
        start_host_s: float,
        completion_s: float | None = None,
        completion_margin_s: float = 1e-4,
        max_drift_ppm: float = 10_000.0,
        max_polls: int = 2048,
    ) -> None:
        if not (interval_s > 0 and math.isfinite(interval_s)):
            raise MeterConfigError(f"interval_s={interval_s!r} must be a positive time")
        if not 0 < max_drift_ppm < 1e5:
            raise MeterConfigError(f"max_drift_ppm={max_drift_ppm!r} must lie in (0, 1e5)")
        self.interval_s = float(interval_s)
        self.aperture_s = float(aperture_s)
        # Time from a sample's start until its reading is in memory.
        self.completion_s = float(aperture_s if completion_s is None else completion_s)
        self.completion_margin_s = float(completion_margin_s)
        self.start_host_s = float(start_host_s)
        self.max_drift_ppm = float(max_drift_ppm)
        self.max_polls = max(16, int(max_polls))
        self._polls: list[tuple[float, float, int]] = []
        self._count = 0
        self._cached: ClockEstimate | None = None

    def observe(self, sent_s: float, received_s: float, count: int) -> None:
        """A poll sent at ``sent_s`` and answered at ``received_s`` left ``count`` readings."""
        self._polls.append((float(sent_s), float(received_s), int(count)))
        self._count += 1
        self._cached = None
        if len(self._polls) > self.max_polls:
            half = len(self._polls) // 2
            self._polls = self._polls[:half:2] + self._polls[half:]

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        polls = np.array(self._polls, dtype=np.float64).reshape(-1, 3)
        sent, received, count = polls[:, 0], polls[:, 1], polls[:, 2]
        # t0 > low_at - low_slope * ratio ; t0 <= high_at - high_slope * ratio
        low_at = np.concatenate(([self.start_host_s], sent))
        done = self.completion_s + self.completion_margin_s  # the latest a reading can appear
        low_slope = np.concatenate(([0.0], count * self.interval_s + done))
        have = count > 0
        high_at = received[have]
        high_slope = (count[have] - 1) * self.interval_s + self.completion_s
        return low_at, low_slope, high_at, high_slope

    def estimate(self) -> ClockEstimate:
        """The current estimate of ``t0`` and the sample period on the host clock."""
        if self._cached is not None:
            return self._cached
        low_at, low_slope, high_at, high_slope = self._arrays()

        def bounds(ratio: float) -> tuple[float, float]:
            lower = float(np.max(low_at - low_slope * ratio))
            upper = float(np.min(high_at - high_slope * ratio)) if high_at.size else math.inf
            return lower, upper

        def gap(ratio: float) -> float:  # convex in ratio: <= 0 where the bounds agree
            lower, upper = bounds(ratio)
            return lower - upper

        span = self.max_drift_ppm * 1e-6
        ratio, low, high = 1.0, 1.0 - span, 1.0 + span
        if high_at.size >= 2:
            a, b = low, high
            for _ in range(70):  # ternary search for the least violation
                m1, m2 = a + (b - a) / 3, b - (b - a) / 3
                if gap(m1) <= gap(m2):
                    b = m2
                else:
                    a = m1
            ratio = 0.5 * (a + b)
            if gap(ratio) <= 0:
                low, high = self._edge(gap, ratio, low), self._edge(gap, ratio, high)
                ratio = 0.5 * (low + high)
            else:  # inconsistent polls: the least violation, with no range
                low = high = ratio
        lower, upper = bounds(ratio)
        t0 = lower if math.isinf(upper) else 0.5 * (lower + upper)
        self._cached = ClockEstimate(
            t0_s=t0,
            period_s=self.interval_s * ratio,
            drift_ppm=(1.0 / ratio - 1.0) * 1e6,
            drift_ppm_low=(1.0 / high - 1.0) * 1e6,
            drift_ppm_high=(1.0 / low - 1.0) * 1e6,
            t0_uncertainty_s=math.inf if math.isinf(upper) else 0.5 * abs(upper - lower),
            polls=self._count,
        )
        return self._cached

    @staticmethod
    def _edge(gap: Callable[[float], float], inside: float, outside: float) -> float:
        """The end of the interval where ``gap <= 0``, between ``inside`` and ``outside``."""
        if gap(outside) <= 0:
            return outside
        for _ in range(50):
            middle = 0.5 * (inside + outside)
            if gap(middle) <= 0:
                inside = middle
            else:
                outside = middle
        return inside

    def timestamps(
        self, first: int, count: int, estimate: ClockEstimate | None = None
    ) -> np.ndarray:
        """Host times of the middles of the apertures of samples ``first .. first+count-1``."""
        est = estimate or self.estimate()
        k = first + np.arange(count, dtype=np.float64)
        ratio = est.period_s / self.interval_s
        return est.t0_s + k * est.period_s + 0.5 * self.aperture_s * ratio

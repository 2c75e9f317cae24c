"""Ground-truth power of the emulated board: piecewise-constant power over host time.

The emulated board calls :meth:`PowerTrace.set_power_w` whenever its engines start or stop
working (static power plus the dynamic power of the engines that run), with times on the host's
``time.monotonic()`` clock. The simulated power meter (:mod:`fpga.emulator.meter`) depends only
on the :class:`PowerSource` protocol: the exact energy over an interval, from which it derives
the mean current of each integration aperture. Tests compare what the host measured with the
same exact integrals.

Memory is bounded. A trace keeps the segments that overlap the last ``horizon_s`` seconds
(default one hour) before its newest change, and at most ``max_segments`` segments; older
segments are dropped in batches (amortised O(1) per change). A query that reaches before the
retained history (:attr:`PowerTrace.retained_from_s`) raises :class:`EmulatorError` instead of
answering with a made-up value. The power after the newest change is taken to stay as last set,
so a query may reach into the future.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from fpga.emulator import EmulatorError

logger = logging.getLogger(__name__)

DEFAULT_HORIZON_S = 3600.0
DEFAULT_MAX_SEGMENTS = 8_000_000
"""About 100 bytes a segment (three lists of floats). The emulated board changes power at every
phase of an image, about two per engine call: the main job's ResNet-20 run (11 models, 3 x 1,000
images, some 70 changes an image) makes 2.3 million within the hour its ground-truth check
looks back over."""


@runtime_checkable
class PowerSource(Protocol):
    """Anything that can say how much energy the board drew between two host times."""

    def energy_j(self, t0_s: float, t1_s: float) -> float:
        """Energy in joules drawn from ``t0_s`` to ``t1_s`` (``time.monotonic()`` seconds)."""
        ...


def _check_interval(t0_s: float, t1_s: float) -> None:
    if not (math.isfinite(t0_s) and math.isfinite(t1_s)):
        raise EmulatorError(f"interval ({t0_s!r}, {t1_s!r}) is not finite; pass monotonic seconds")
    if t1_s < t0_s:
        raise EmulatorError(
            f"interval ends before it starts (t0_s={t0_s!r}, t1_s={t1_s!r}); swap the bounds"
        )


def _check_power(power_w: float) -> float:
    power_w = float(power_w)
    if not (math.isfinite(power_w) and power_w >= 0.0):
        raise EmulatorError(
            f"power_w={power_w!r} is not a finite, non-negative power in watts; "
            "the board draws static plus dynamic power, never less than zero"
        )
    return power_w


class ConstantPower:
    """A board that always draws ``power_w`` watts (for tests and demonstrations)."""

    def __init__(self, power_w: float) -> None:
        self.power_w_const = _check_power(power_w)

    def power_w(self, t_s: float) -> float:
        """The power at ``t_s``: always the constant."""
        return self.power_w_const

    def energy_j(self, t0_s: float, t1_s: float) -> float:
        """Exact energy from ``t0_s`` to ``t1_s``."""
        _check_interval(t0_s, t1_s)
        return self.power_w_const * (t1_s - t0_s)

    def __repr__(self) -> str:
        return f"ConstantPower({self.power_w_const!r})"


class SquareWavePower:
    """Power alternating between ``high_w`` and ``low_w``: a board running bursts of work.

    Each period starts at ``phase_s + k * period_s`` with ``duty * period_s`` seconds at
    ``high_w``, then ``low_w`` for the rest of the period.
    """

    def __init__(
        self,
        low_w: float,
        high_w: float,
        period_s: float,
        duty: float = 0.5,
        phase_s: float = 0.0,
    ) -> None:
        self.low_w = _check_power(low_w)
        self.high_w = _check_power(high_w)
        if not (math.isfinite(period_s) and period_s > 0):
            raise EmulatorError(f"period_s={period_s!r} must be a positive number of seconds")
        if not 0.0 <= duty <= 1.0:
            raise EmulatorError(f"duty={duty!r} must lie in [0, 1]")
        self.period_s = float(period_s)
        self.duty = float(duty)
        self.phase_s = float(phase_s)

    def _high_time_s(self, t_s: float) -> float:
        """Seconds spent at ``high_w`` from ``phase_s`` to ``t_s`` (negative before phase)."""
        cycles, frac = divmod((t_s - self.phase_s) / self.period_s, 1.0)
        return (cycles * self.duty + min(frac, self.duty)) * self.period_s

    def power_w(self, t_s: float) -> float:
        """The power at ``t_s``."""
        frac = ((t_s - self.phase_s) / self.period_s) % 1.0
        return self.high_w if frac < self.duty else self.low_w

    def energy_j(self, t0_s: float, t1_s: float) -> float:
        """Exact energy from ``t0_s`` to ``t1_s``."""
        _check_interval(t0_s, t1_s)
        high_s = self._high_time_s(t1_s) - self._high_time_s(t0_s)
        return self.low_w * (t1_s - t0_s) + (self.high_w - self.low_w) * high_s


class PowerTrace:
    """Thread-safe, piecewise-constant power over ``time.monotonic()`` seconds.

    ``initial_power_w`` holds from ``start_s`` (default: now) until the first change. Changes
    must come in time order: a change may not precede the newest one (a change at the same
    time replaces it). Energies are exact integrals, computed from running sums in O(log n).
    """

    def __init__(
        self,
        initial_power_w: float = 0.0,
        *,
        start_s: float | None = None,
        horizon_s: float = DEFAULT_HORIZON_S,
        max_segments: int = DEFAULT_MAX_SEGMENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (math.isfinite(horizon_s) and horizon_s > 0):
            raise EmulatorError(f"horizon_s={horizon_s!r} must be a positive number of seconds")
        if max_segments < 2:
            raise EmulatorError(f"max_segments={max_segments!r} must be at least 2")
        self._clock = clock
        self.horizon_s = float(horizon_s)
        self.max_segments = int(max_segments)
        start = clock() if start_s is None else float(start_s)
        if not math.isfinite(start):
            raise EmulatorError(f"start_s={start_s!r} is not a finite time in seconds")
        self._lock = threading.Lock()
        self._starts: list[float] = [start]  # segment i: [starts[i], starts[i + 1])
        self._powers: list[float] = [_check_power(initial_power_w)]
        self._cum_j: list[float] = [0.0]  # energy from the trace's origin to starts[i]
        self._warned_truncated = False

    # -- writing -------------------------------------------------------------------------
    def set_power_w(self, power_w: float, at_s: float | None = None) -> float:
        """The board draws ``power_w`` watts from ``at_s`` (default: now) on; returns ``at_s``."""
        power_w = _check_power(power_w)
        at = self._clock() if at_s is None else float(at_s)
        if not math.isfinite(at):
            raise EmulatorError(f"at_s={at_s!r} is not a finite time in seconds")
        with self._lock:
            last = self._starts[-1]
            if at < last:
                raise EmulatorError(
                    f"power change at_s={at!r} precedes the newest change at {last!r}; "
                    "record changes in time order"
                )
            if at == last:
                self._powers[-1] = power_w
                return at
            if power_w == self._powers[-1]:
                return at  # no change: keep one segment
            self._cum_j.append(self._cum_j[-1] + self._powers[-1] * (at - last))
            self._starts.append(at)
            self._powers.append(power_w)
            self._prune(at)
        return at

    def _prune(self, newest_s: float) -> None:
        """Drop old segments in batches (the caller holds the lock)."""
        n = len(self._starts)
        # Segment `keep` overlaps the horizon's start; everything before it may go.
        keep = bisect.bisect_right(self._starts, newest_s - self.horizon_s) - 1
        if n > self.max_segments:
            keep = max(keep, n - self.max_segments + self.max_segments // 4)
            if not self._warned_truncated:
                logger.warning(
                    "power trace exceeds max_segments=%d; history is kept for less than "
                    "horizon_s=%.0f s (raise max_segments to keep more)",
                    self.max_segments,
                    self.horizon_s,
                )
                self._warned_truncated = True
        if keep >= max(64, n // 2) or n > self.max_segments:
            del self._starts[:keep], self._powers[:keep], self._cum_j[:keep]

    # -- reading -------------------------------------------------------------------------
    @property
    def retained_from_s(self) -> float:
        """The earliest time that queries may reach (older history was pruned)."""
        with self._lock:
            return self._starts[0]

    def __len__(self) -> int:
        with self._lock:
            return len(self._starts)

    def segments(self) -> list[tuple[float, float]]:
        """A copy of the retained segments as ``(start_s, power_w)`` pairs, oldest first."""
        with self._lock:
            return list(zip(self._starts, self._powers, strict=True))

    def _index(self, t_s: float) -> int:
        if not math.isfinite(t_s):
            raise EmulatorError(f"time {t_s!r} is not finite; pass monotonic seconds")
        if t_s < self._starts[0]:
            raise EmulatorError(
                f"time {t_s!r} precedes the power trace's retained history, which starts at "
                f"{self._starts[0]!r}; query recent times or raise horizon_s"
            )
        return bisect.bisect_right(self._starts, t_s) - 1

    def power_w(self, t_s: float) -> float:
        """The power drawn at ``t_s``."""
        with self._lock:
            return self._powers[self._index(t_s)]

    def energy_j(self, t0_s: float, t1_s: float) -> float:
        """Exact energy in joules from ``t0_s`` to ``t1_s``."""
        _check_interval(t0_s, t1_s)
        with self._lock:
            i0, i1 = self._index(t0_s), self._index(t1_s)
            if i0 == i1:
                return self._powers[i0] * (t1_s - t0_s)
            e0 = self._cum_j[i0] + self._powers[i0] * (t0_s - self._starts[i0])
            e1 = self._cum_j[i1] + self._powers[i1] * (t1_s - self._starts[i1])
            return e1 - e0

    def mean_power_w(self, t0_s: float, t1_s: float) -> float:
        """Mean power from ``t0_s`` to ``t1_s`` (the power at ``t0_s`` if they are equal)."""
        if t1_s == t0_s:
            return self.power_w(t0_s)
        return self.energy_j(t0_s, t1_s) / (t1_s - t0_s)

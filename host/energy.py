"""Energy of a timed window from power samples: trapezoid integration, idle subtraction.

A meter delivers samples ``(t_s, power_w)`` on the host clock. A window ``[t0, t1]`` (the board's
start and end stamps mapped to host time, host/clock.py) rarely starts or ends on a sample, so the
power at the edges is interpolated linearly between the neighbouring samples and the trapezoid
rule integrates the piecewise-linear curve exactly over the window. The idle power (measured
beforehand with the board waiting) times the window's duration is subtracted: what remains is the
energy the inference work added, divided by the window's images for energy per inference.

numpy's ``trapezoid`` does the integration; this module adds the window edges, the checks a
measurement needs (enough samples inside, no gap longer than allowed) and the bookkeeping.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


class EnergyError(ValueError):
    """A window cannot be integrated from the samples at hand (one line, with the numbers)."""


@dataclass(frozen=True)
class WindowEnergy:
    start_s: float
    end_s: float
    images: int
    energy_j: float
    """Integral of power over the window."""
    idle_energy_j: float
    """Idle power times the window's duration."""
    samples: int
    """Meter samples strictly inside the window."""
    max_gap_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def net_energy_j(self) -> float:
        return self.energy_j - self.idle_energy_j

    @property
    def mean_power_w(self) -> float:
        return self.energy_j / self.duration_s

    @property
    def energy_per_image_j(self) -> float:
        return self.net_energy_j / self.images

    def to_dict(self) -> dict[str, float | int]:
        out = asdict(self)
        out |= {
            "duration_s": self.duration_s,
            "net_energy_j": self.net_energy_j,
            "mean_power_w": self.mean_power_w,
            "energy_per_image_j": self.energy_per_image_j,
        }
        return out


def integrate_j(t_s: np.ndarray, power_w: np.ndarray, start_s: float, end_s: float) -> float:
    """Exact integral of the linear interpolation of the samples over ``[start_s, end_s]``."""
    t = np.asarray(t_s, dtype=np.float64)
    p = np.asarray(power_w, dtype=np.float64)
    inside = (t > start_s) & (t < end_s)
    edges = np.interp([start_s, end_s], t, p)
    tt = np.concatenate([[start_s], t[inside], [end_s]])
    pp = np.concatenate([[edges[0]], p[inside], [edges[1]]])
    return float(np.trapezoid(pp, tt))


def window_energy(
    t_s: np.ndarray,
    power_w: np.ndarray,
    start_s: float,
    end_s: float,
    *,
    images: int,
    idle_w: float,
    min_samples: int = 10,
    max_gap_s: float | None = None,
) -> WindowEnergy:
    """Energy of one window; raises :class:`EnergyError` when the samples cannot support it.

    The samples must cover the window on both sides (the edges are interpolated, never
    extrapolated), hold at least ``min_samples`` inside, and have no gap longer than
    ``max_gap_s`` (default: a tenth of the window) around or inside it.
    """
    t = np.asarray(t_s, dtype=np.float64)
    p = np.asarray(power_w, dtype=np.float64)
    if end_s <= start_s:
        raise EnergyError(f"window [{start_s!r}, {end_s!r}] s is empty or reversed")
    if images < 1:
        raise EnergyError(f"window with {images!r} images: nothing to divide the energy by")
    if t.size < 2 or t[0] > start_s or t[-1] < end_s:
        span = "no samples" if t.size == 0 else f"samples span [{t[0]:.3f}, {t[-1]:.3f}] s"
        raise EnergyError(
            f"window [{start_s:.3f}, {end_s:.3f}] s is not covered by the power samples ({span}); "
            "keep the meter running before and after every window"
        )
    if np.any(np.diff(t) <= 0):
        raise EnergyError("power sample times are not strictly increasing; check the meter driver")
    lo = max(int(np.searchsorted(t, start_s)) - 1, 0)
    hi = int(np.searchsorted(t, end_s))
    around = t[lo : hi + 1]
    gap = float(np.diff(around).max()) if around.size > 1 else float("inf")
    allowed = max_gap_s if max_gap_s is not None else (end_s - start_s) / 10
    inside = int(((t > start_s) & (t < end_s)).sum())
    if inside < min_samples or gap > allowed:
        raise EnergyError(
            f"window of {end_s - start_s:.3f} s has {inside} power samples inside and a largest "
            f"gap of {gap:.3f} s (need >= {min_samples} and <= {allowed:.3f} s): raise the "
            "meter's sample rate or run more images per window"
        )
    return WindowEnergy(
        start_s=float(start_s),
        end_s=float(end_s),
        images=int(images),
        energy_j=integrate_j(t, p, start_s, end_s),
        idle_energy_j=float(idle_w) * (end_s - start_s),
        samples=inside,
        max_gap_s=gap,
    )


def idle_power_w(t_s: np.ndarray, power_w: np.ndarray, start_s: float, end_s: float) -> float:
    """Mean power over an idle interval (the time average, robust to uneven sampling)."""
    return integrate_j(t_s, power_w, start_s, end_s) / (end_s - start_s)

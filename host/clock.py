"""Mapping the board's clock onto the host's, from request/reply round trips.

The board stamps the start and end of every timed window with its own monotonic clock; the meter
samples are stamped with the host's. To integrate power over a window, board times must become
host times. Every HELLO (or STATUS) round trip gives one observation: the host sends at ``t_send``,
the board reads its clock ``b`` while answering, the host receives at ``t_recv``. The board's
reading happened somewhere in ``[t_send, t_recv]``; the midpoint is the estimate, half the round
trip its worst-case error (NTP's reasoning, without its network machinery).

With several observations spread over a run, a straight line ``host = offset + rate * board``
absorbs the drift between the two crystals (tens of ppm). Observations with long round trips
(a busy link) carry little information; the fit keeps the quicker half, and ``error_s`` reports
the worst-case error bound of what was kept.

Why not a library: NTP/PTP clients synchronise system clocks over a network; here there is one
serial link and a handful of stamped round trips, and all that is needed is this small fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClockObservation:
    """One round trip: host times (s, host monotonic clock) around a board reading (ns)."""

    host_send_s: float
    host_recv_s: float
    board_ns: int

    @property
    def round_trip_s(self) -> float:
        return self.host_recv_s - self.host_send_s

    @property
    def host_mid_s(self) -> float:
        return 0.5 * (self.host_send_s + self.host_recv_s)


@dataclass(frozen=True)
class ClockMap:
    """``host_s = offset_s + rate * (board_ns - board_ref_ns) * 1e-9``."""

    offset_s: float
    rate: float
    board_ref_ns: int
    error_s: float
    """Half the longest round trip among the observations used: the scale of the mapping's error
    (a bound at each observation; the fitted drift adds a little between and beyond them)."""
    observations: int

    def to_host_s(self, board_ns: int | np.ndarray) -> float | np.ndarray:
        delta = (np.asarray(board_ns, dtype=np.int64) - self.board_ref_ns).astype(np.float64)
        out = self.offset_s + self.rate * delta * 1e-9
        return float(out) if np.ndim(out) == 0 else out

    @property
    def drift_ppm(self) -> float:
        return (self.rate - 1.0) * 1e6

    def to_dict(self) -> dict[str, float | int]:
        return {
            "offset_s": self.offset_s,
            "rate": self.rate,
            "drift_ppm": self.drift_ppm,
            "board_ref_ns": self.board_ref_ns,
            "error_s": self.error_s,
            "observations": self.observations,
        }


def fit_clock(observations: list[ClockObservation], *, min_span_s: float = 30.0) -> ClockMap:
    """Fit the board-to-host map from round trips (at least one).

    The drift is fitted only when the kept observations span at least ``min_span_s`` of board
    time; over shorter spans the round-trip noise would dominate the slope, and a rate of exactly
    1 is the better estimate.
    """
    if not observations:
        raise ValueError("fit_clock needs at least one round trip")
    obs = sorted(observations, key=lambda o: o.round_trip_s)
    keep = obs[: max(1, (len(obs) + 1) // 2)] if len(obs) >= 4 else obs
    board = np.array([o.board_ns for o in keep], dtype=np.int64)
    host = np.array([o.host_mid_s for o in keep], dtype=np.float64)
    ref = int(board.min())
    x = (board - ref).astype(np.float64) * 1e-9
    rate = 1.0
    if len(keep) >= 2 and float(x.max() - x.min()) >= min_span_s:
        rate, offset = np.polyfit(x, host, 1)
    else:
        offset = float(np.mean(host - x))
    error = max(o.round_trip_s for o in keep) / 2
    return ClockMap(float(offset), float(rate), ref, float(error), len(keep))

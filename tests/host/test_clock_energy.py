"""Clock alignment from round trips, and window energy by trapezoid integration."""

from __future__ import annotations

import numpy as np
import pytest

from host.clock import ClockObservation, fit_clock
from host.energy import EnergyError, idle_power_w, integrate_j, window_energy


def _observations(n, *, offset_s, drift_ppm, span_s, seed=0, slow_every=3):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        board_s = 100.0 + span_s * k / max(n - 1, 1)
        host_true = offset_s + board_s * (1 + drift_ppm * 1e-6)
        rtt = 0.002 + (0.2 if k % slow_every == 0 else 0.0)  # some round trips are slow
        before = rng.uniform(0, rtt)  # where within the round trip the board read its clock
        out.append(
            ClockObservation(host_true - before, host_true - before + rtt, int(board_s * 1e9))
        )
    return out


def test_clock_fit_recovers_offset_and_drift_within_a_round_trip():
    obs = _observations(12, offset_s=-37.5, drift_ppm=80.0, span_s=60.0)
    m = fit_clock(obs)
    assert m.drift_ppm == pytest.approx(80.0, abs=40.0)
    for board_s in (100.0, 130.0, 160.0):
        truth = -37.5 + board_s * (1 + 80e-6)
        assert abs(m.to_host_s(int(board_s * 1e9)) - truth) <= 2 * m.error_s
    assert m.error_s == pytest.approx(0.001)  # the slow round trips were left out


def test_clock_fit_on_a_short_span_keeps_rate_one():
    m = fit_clock(_observations(3, offset_s=5.0, drift_ppm=50.0, span_s=0.5))
    assert m.rate == 1.0
    with pytest.raises(ValueError):
        fit_clock([])


def test_trapezoid_is_exact_on_piecewise_linear_power_and_subtracts_idle():
    t = np.linspace(0.0, 10.0, 1001)  # 100 Hz
    p = np.where(t < 5.0, 2.0, 3.5)  # a step; linear interpolation between 4.99 and 5.00
    w = window_energy(t, p, 2.005, 7.003, images=100, idle_w=2.0)
    exact = integrate_j(t, p, 2.005, 7.003)
    assert w.energy_j == pytest.approx(exact)
    # the true step integral and the interpolated one differ by at most one sample period
    assert w.energy_j == pytest.approx(2.0 * 2.995 + 3.5 * 2.003, abs=0.01 * 1.5)
    assert w.net_energy_j == pytest.approx(w.energy_j - 2.0 * 4.998)
    assert w.energy_per_image_j == pytest.approx(w.net_energy_j / 100)
    assert idle_power_w(t, p, 0.0, 4.5) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("t", "start", "end", "message"),
    [
        (np.linspace(0, 1, 100), 0.5, 1.5, "not covered"),
        (np.linspace(0, 10, 5), 1.0, 9.0, "power samples inside"),
        (np.linspace(0, 10, 100), 5.0, 5.0, "empty or reversed"),
    ],
)
def test_windows_the_samples_cannot_support_are_refused(t, start, end, message):
    with pytest.raises(EnergyError, match=message) as info:
        window_energy(t, np.ones_like(t), start, end, images=10, idle_w=0.0)
    assert "\n" not in str(info.value)

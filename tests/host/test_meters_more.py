"""Tests of the further meter drivers: the 34465A under VISA resource names of other forms
(``TCPIP0::...::SOCKET``, a backend suffix), the Watts Up? PRO against its simulated stand-in on
a pty, and the optional Joulescope driver's missing-package error.

Tolerances: the Watts Up? reports tenths of a watt, so a record is within 0.05 W of the exact
mean over the second it averages; its timestamp (arrival minus half an interval) is late by the
serial and thread latency, allowed 50 ms, so near a 2 W step a record may differ from the exact
mean over its stamped second by up to 0.05 + 2 * 0.05 W.
"""

from __future__ import annotations

import os
import sys
import time
import tty

import numpy as np
import pytest

from fpga.emulator.meter import SimulatedMeter
from fpga.emulator.power import ConstantPower, PowerTrace
from fpga.emulator.wattsup import SimulatedWattsUp, SimulatedWattsUpConfig
from host.meters import (
    MeterConfigError,
    MeterPortError,
    MeterProtocolError,
    MeterTimeoutError,
    WattsUp,
    meter_kinds,
    open_meter,
)
from host.meters.joulescope import MISSING
from host.meters.wattsup import RecordReader, parse_packet

LATENCY_S = 0.05  # thread and serial latency allowed on a shared machine


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


def _record(meter, duration_s: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Sample for ``duration_s``; the samples and the host time of ``start()``.

    A Watts Up? sends a record every second: on a loaded machine the last one expected within
    ``duration_s`` may come late, so wait (a few seconds at most) until it has arrived.
    """
    begin = time.monotonic()
    meter.start()
    time.sleep(max(0.0, begin + duration_s - time.monotonic()))
    expected = int(duration_s)  # records sent by the stand-in within duration_s
    deadline = time.monotonic() + 5.0
    while (
        hasattr(meter, "corrupt_records")
        and meter.records + meter.corrupt_records < expected
        and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    meter.stop()
    t, p = meter.read_samples()
    return t, p, begin


def test_new_kinds_are_registered():
    assert {"joulescope", "wattsup"} <= set(meter_kinds())


# -- VISA ---------------------------------------------------------------------------------------


def test_34465a_over_a_visa_socket_reads_constant_power():
    with SimulatedMeter(ConstantPower(3.0), transport="tcp") as sim:
        port = sim.address.rsplit(":", 1)[1]
        address = f"TCPIP0::127.0.0.1::{port}::SOCKET"
        with open_meter(f"keysight34465a:{address}", timeout_s=5.0) as meter:
            assert meter.identify().startswith("Keysight Technologies,34465A,SIM")
            assert meter.simulated
            t, p, _ = _record(meter, 0.5)
    assert t.size > 300  # 1 ms samples
    assert np.all(np.diff(t) > 0)
    assert abs(float(p.mean()) - 3.0) < 1e-3


def test_refused_visa_socket_is_one_line():
    with pytest.raises(MeterPortError) as info:
        open_meter("keysight34465a:TCPIP0::127.0.0.1::9::SOCKET", timeout_s=1.0)
    assert _one_line(info.value) == (
        "power meter 'TCPIP0::127.0.0.1::9::SOCKET' refused the connection; check the IP "
        "address and that the meter's SCPI socket (port 5025) is enabled"
    )


def test_unknown_visa_backend_is_one_line():
    with pytest.raises(MeterConfigError, match=r"VISA backend '@nosuch'") as info:
        open_meter("keysight34465a:TCPIP0::127.0.0.1::5025::SOCKET@nosuch")
    _one_line(info.value)


# -- Watts Up? PRO: protocol pieces -------------------------------------------------------------


def test_packets_parse_and_bad_counts_raise():
    assert parse_packet("#d,-,3,30,2300,23") == ("d", ["30", "2300", "23"])
    assert parse_packet("#v,-,0") == ("v", [])
    with pytest.raises(MeterProtocolError, match="announces '18' fields, has 16") as info:
        parse_packet("#d,-,18," + ",".join(["1"] * 16))
    _one_line(info.value)
    with pytest.raises(MeterProtocolError, match="lacks"):
        parse_packet("d,-,0")


def test_record_reader_splits_the_stream_and_flags_cut_packets():
    reader = RecordReader()
    assert reader.feed(b"\r\nnoise#d,-,1,3", 1.0) == []
    assert reader.feed(b"0;\r\n#d,-,1,", 2.0) == [("#d,-,1,30", 2.0)]
    # a packet cut short (no ';') is reported as "" when the next one starts
    assert reader.feed(b"#v,-,0;", 3.0) == [("", 3.0), ("#v,-,0", 3.0)]


def test_simulated_record_reports_tenths_of_a_watt():
    sim = SimulatedWattsUp(ConstantPower(3.04), SimulatedWattsUpConfig(mains_v=230.0))
    kind, values = parse_packet(sim.record(10.0, 11.0).strip().rstrip(";"))
    assert kind == "d" and len(values) == 18
    assert values[:3] == ["30", "2300", str(round(3.04 / (230.0 * 0.55) * 1000))]


# -- Watts Up? PRO against its stand-in ---------------------------------------------------------


@pytest.fixture
def wattsup():
    """``wattsup(source, **config) -> SimulatedWattsUp`` (started; stopped after the test)."""
    started: list[SimulatedWattsUp] = []

    def make(source, **config) -> SimulatedWattsUp:
        sim = SimulatedWattsUp(source, SimulatedWattsUpConfig(**config))
        sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


def test_wattsup_identifies_itself(wattsup):
    sim = wattsup(ConstantPower(3.0))
    with open_meter(f"wattsup:{sim.address}") as meter:
        assert isinstance(meter, WattsUp)
        assert meter.identify() == (
            "Watts Up? (version record 1,32000,1,2,1,9,20100315,0,simulated)"
        )
        assert meter.simulated  # read from the stand-in's version record
    assert sim.packets_received[:2] == ["#V,R,0", "#H,R,0"]


def test_wattsup_constant_power_once_a_second(wattsup):
    sim = wattsup(ConstantPower(3.0))
    with open_meter(f"wattsup:{sim.address}") as meter:
        t, p, begin = _record(meter, 3.45)
        assert meter.corrupt_records == 0
    assert p.tolist() == [3.0, 3.0, 3.0]
    # each record averages the second before it arrives: stamped at its middle
    expected = begin + np.arange(3) + 0.5
    assert np.all(np.abs(t - expected) < LATENCY_S), t - expected
    assert "#L,W,3,E,,1" in sim.packets_received
    deadline = time.monotonic() + 2.0  # the stand-in reads what stop() sent on its own thread
    while sim.packets_received[-1] != "#L,W,3,I,,1" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sim.packets_received[-1] == "#L,W,3,I,,1"  # back to internal logging: stream ends


def test_wattsup_stepped_power_follows_the_exact_means(wattsup):
    now = time.monotonic()
    trace = PowerTrace(2.0, start_s=now)
    trace.set_power_w(4.0, at_s=now + 1.6)  # a step inside the second record's interval
    sim = wattsup(trace)
    with open_meter(f"wattsup:{sim.address}") as meter:
        t, p, _ = _record(meter, 3.45)
    assert t.size == 3
    exact = np.array([trace.energy_j(s - 0.5, s + 0.5) for s in t])
    assert np.all(np.abs(p - exact) < 0.05 + 2.0 * LATENCY_S), (p, exact)
    assert p[0] == 2.0 and p[2] == 4.0 and 2.0 < p[1] < 4.0


def test_wattsup_skips_corrupt_records_and_counts_them(wattsup, caplog):
    sim = wattsup(ConstantPower(3.0), corrupt_records={0: "truncate", 1: "garble"})
    with open_meter(f"wattsup:{sim.address}") as meter:
        _, p, _ = _record(meter, 3.45)
        assert meter.corrupt_records == 2
        assert meter.records == 1
    assert p.tolist() == [3.0]
    assert sum("skipped malformed record" in r.getMessage() for r in caplog.records) == 2


def test_silent_wattsup_is_one_line():
    master, slave = os.openpty()  # nobody answers on the other end
    tty.setraw(slave)
    path = os.ttyname(slave)
    try:
        begin = time.monotonic()
        with pytest.raises(MeterTimeoutError) as info:
            open_meter(f"wattsup:{path}", timeout_s=0.3)
        assert time.monotonic() - begin < 3.0
    finally:
        os.close(master)
        os.close(slave)
    assert _one_line(info.value) == (
        f"Watts Up? at {path!r} did not answer '#V,R,0;' within 0.3 s; check that it is "
        "plugged in, its USB cable, and that this is its port"
    )


def test_wattsup_options_and_ports_are_checked():
    with pytest.raises(MeterConfigError, match=r"sample_interval_s=0.5 must be whole seconds"):
        open_meter("wattsup:/dev/null", sample_interval_s=0.5)
    with pytest.raises(MeterConfigError, match=r"unknown option\(s\) \['nplc'\] for wattsup"):
        open_meter("wattsup:/dev/null", nplc=1)
    with pytest.raises(MeterPortError, match="does not exist") as info:
        open_meter("wattsup:/dev/ttyNOSUCHWATTSUP0")
    _one_line(info.value)


# -- Joulescope ---------------------------------------------------------------------------------


def test_joulescope_without_its_package_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "joulescope", None)  # import joulescope raises ImportError
    with pytest.raises(MeterConfigError) as info:
        open_meter("joulescope")
    assert _one_line(info.value) == MISSING
    assert "pip install joulescope; the Joulescope JS110/JS220 driver is an optional extra" in (
        MISSING
    )

"""Tests of the power-meter drivers: the real 34465A driver, through pyvisa-py, against the
simulated 34465A over real ptys (ASRL) and sockets (TCPIP SOCKET), its errors, the registry, and
the drift correction of the timestamps.

Tolerances: energy over 0.5 s windows within 2 % of the exact integral (the driver reaches
about 0.05 %); step edges placed within 1.5 ms with 5000 ppm of clock drift; a 100 ppm drift
estimated within 5 ppm over a (synthetic) ten-minute run.
"""

from __future__ import annotations

import math
import os
import re
import termios
import time
import tty

import numpy as np
import pytest

from fpga.emulator.meter import SimulatedMeter, SimulatedMeterConfig
from fpga.emulator.power import ConstantPower, PowerSource, PowerTrace
from fpga.emulator.scpi import expect
from host.meters import (
    Keysight34465A,
    MeterConfigError,
    MeterError,
    MeterIdentityError,
    MeterOverRangeError,
    MeterPortError,
    MeterProtocolError,
    MeterTimeoutError,
    NullMeter,
    SampleClock,
    meter_kinds,
    open_meter,
    parse_meter_spec,
    resource_name,
)

FAST = {"timeout_s": 5.0}  # generous: the machines are shared


@pytest.fixture
def simulator():
    """``simulator(source, **config) -> SimulatedMeter`` (started; stopped after the test)."""
    started: list[SimulatedMeter] = []

    def make(source: PowerSource, transport: str = "pty", **config) -> SimulatedMeter:
        sim = SimulatedMeter(source, SimulatedMeterConfig(**config), transport=transport)
        sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


def _record(meter, duration_s: float, events=()) -> tuple[np.ndarray, np.ndarray]:
    """Sample for ``duration_s``, applying ``events`` [(delay_s, callable)] on the way."""
    times, powers = [], []
    meter.start()
    begin = time.monotonic()
    for delay_s, action in events:
        time.sleep(max(0.0, begin + delay_s - time.monotonic()))
        action()
        t, p = meter.read_samples()
        times.append(t)
        powers.append(p)
    time.sleep(max(0.0, begin + duration_s - time.monotonic()))
    meter.stop()
    t, p = meter.read_samples()
    times.append(t)
    powers.append(p)
    return np.concatenate(times), np.concatenate(powers)


def _energy_j(t: np.ndarray, p: np.ndarray, t0: float, t1: float) -> float:
    """Trapezoid integral over host timestamps, the window's ends interpolated."""
    inside = (t > t0) & (t < t1)
    tt = np.concatenate(([t0], t[inside], [t1]))
    return float(np.trapezoid(np.interp(tt, t, p), tt))


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


# -- registry -----------------------------------------------------------------------------------


def test_registry_knows_the_kinds_and_names_them_on_an_unknown_one():
    assert meter_kinds() == ["joulescope", "keysight34465a", "none", "sim", "wattsup"]
    assert parse_meter_spec("keysight34465a:socket://10.0.0.5:5025") == (
        "keysight34465a",
        "socket://10.0.0.5:5025",
    )
    with pytest.raises(MeterConfigError) as info:
        open_meter("fluke8846a:/dev/ttyUSB0")
    assert _one_line(info.value) == (
        "unknown power meter kind 'fluke8846a' in 'fluke8846a:/dev/ttyUSB0'; "
        "known kinds: joulescope, keysight34465a, none, sim, wattsup"
    )
    with pytest.raises(MeterConfigError, match="lacks an address"):
        open_meter("keysight34465a")
    with pytest.raises(MeterConfigError, match=r"unknown option\(s\) \['rate'\]"):
        open_meter("keysight34465a:/dev/null", rate=5)


def test_kinds_from_entry_points_load_when_used_and_fail_in_one_line(tmp_path, monkeypatch):
    """A package's entry points (a real ``*.dist-info`` on sys.path, read by importlib.metadata)
    add kinds that are listed without importing them; a broken one fails when used."""
    info = tmp_path / "extra_meters-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: extra-meters\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[ddi_fpga.power_meters]\n"
        "brokenmeter = no_such_module_for_meters:Meter\n"
        "notameter = json:dumps\n"
        "nullagain = host.meters.base:NullMeter\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert {"brokenmeter", "notameter", "nullagain"} <= set(meter_kinds())
    with pytest.raises(MeterConfigError) as info_broken:
        open_meter("brokenmeter:x")
    assert _one_line(info_broken.value) == (
        "power meter kind 'brokenmeter' comes from 'no_such_module_for_meters:Meter', which "
        "failed to import (ModuleNotFoundError: No module named 'no_such_module_for_meters'); "
        "reinstall the package (pip install -e .)"
    )
    with pytest.raises(MeterConfigError, match="'json:dumps', which is not a PowerMeter class"):
        open_meter("notameter:x")
    with pytest.raises(MeterConfigError, match="which is kind 'none'; use 'none'"):
        open_meter("nullagain")  # one class, one kind
    assert NullMeter.kind == "none"


def test_null_meter_times_only():
    with open_meter("none") as meter:
        assert isinstance(meter, NullMeter)
        assert "no power meter" in meter.identify()
        meter.start()
        t, p = meter.read_samples()
        meter.stop()
    assert t.size == p.size == 0 and t.dtype == p.dtype == np.float64


# -- port errors --------------------------------------------------------------------------------


def test_missing_port_is_one_line_naming_the_port():
    with pytest.raises(MeterPortError) as info:
        open_meter("keysight34465a:/dev/ttyNOSUCHMETER0")
    assert _one_line(info.value) == (
        "power meter port '/dev/ttyNOSUCHMETER0' does not exist; check the cable and the "
        "address (ls /dev/tty*, or the meter's IP)"
    )


def test_busy_port_is_one_line(simulator):
    sim = simulator(ConstantPower(3.0))
    with open_meter(f"keysight34465a:{sim.address}", **FAST), pytest.raises(MeterPortError) as info:
        open_meter(f"keysight34465a:{sim.address}", **FAST)
    assert _one_line(info.value) == (
        f"power meter port {sim.address!r} is busy: another program has it open; close that "
        "program first"
    )


def test_refused_socket_is_one_line():
    with pytest.raises(MeterPortError, match="refused the connection") as info:
        open_meter("keysight34465a:socket://127.0.0.1:9", timeout_s=1.0)
    _one_line(info.value)


def test_silent_port_times_out_with_one_line():
    master, slave = os.openpty()  # nobody answers on the other end
    tty.setraw(slave)
    path = os.ttyname(slave)
    try:
        begin = time.monotonic()
        with pytest.raises(MeterTimeoutError) as info:
            open_meter(f"keysight34465a:{path}", timeout_s=0.3)
        assert time.monotonic() - begin < 3.0
    finally:
        os.close(master)
        os.close(slave)
    assert _one_line(info.value) == (
        f"power meter at {path!r} did not answer *IDN? within 0.3 s; check that it is on, "
        "connected and that this is its port"
    )


def test_wrong_instrument_is_one_line(simulator):
    sim = simulator(ConstantPower(3.0), model="34461A")
    with pytest.raises(MeterIdentityError) as info:
        open_meter(f"keysight34465a:{sim.resource_name}", **FAST)
    assert _one_line(info.value) == (
        f"{sim.resource_name!r} answered *IDN? with 'Keysight Technologies,34461A,SIM0000001,"
        "A.03.02-03.15-03.02-00.52-04-02', not a Keysight 34465A or 34470A; check the meter's "
        "address"
    )


# -- configuration ------------------------------------------------------------------------------


def test_identify_and_configuration_read_back(simulator):
    sim = simulator(ConstantPower(3.0))
    with open_meter(f"keysight34465a:{sim.resource_name}", **FAST) as meter:
        assert isinstance(meter, Keysight34465A)
        assert meter.identify().startswith("Keysight Technologies,34465A,SIM")
        assert meter.simulated  # the stand-in says so in its *IDN? serial number
        settings = sim.settings  # what the driver's commands set in the instrument
        assert (settings.range_a, settings.nplc, settings.autozero) == (1.0, 0.02, False)
        assert (settings.sample_source, settings.sample_timer_s) == ("TIM", 1e-3)
        assert (settings.sample_count, settings.trigger_count) == (1_000_000_000, 1)
        assert settings.trigger_delay_s == 0.0
        assert (settings.data_format, settings.byte_order) == ("REAL,64", "NORM")
        assert meter.query("CURR:DC:NPLC?;:SAMP:TIM?") == "+2.00000000E-02;+1.00000000E-03"
        assert meter.sample_interval_s == 1e-3
        meter.check_errors()


def test_sample_interval_shorter_than_a_measurement_is_refused(simulator):
    sim = simulator(ConstantPower(3.0))
    with pytest.raises(MeterConfigError) as info:
        open_meter(f"keysight34465a:{sim.resource_name}", nplc=1, **FAST)
    assert _one_line(info.value) == (
        "sample_interval_s=0.001 is shorter than one measurement (0.02002 s at NPLC 1); "
        "lower nplc or raise sample_interval_s"
    )


def test_invalid_nplc_is_reported_with_the_meters_error(simulator):
    sim = simulator(ConstantPower(3.0))
    with pytest.raises(MeterConfigError, match=r'-222,"Data out of range"') as info:
        open_meter(f"keysight34465a:{sim.resource_name}", nplc=500, **FAST)
    _one_line(info.value)


# -- measuring ----------------------------------------------------------------------------------


def test_constant_3w_reads_3w_within_noise(simulator):
    sim = simulator(ConstantPower(3.0), seed=1)
    with open_meter(f"keysight34465a:{sim.resource_name}", **FAST) as meter:
        t, p = _record(meter, 0.6)
        clock = meter.clock
    assert t.size >= 500
    assert np.all(np.diff(t) > 0)
    assert clock is not None and clock.drift_ppm_low <= 0.0 <= clock.drift_ppm_high
    assert np.median(np.diff(t)) == pytest.approx(1e-3, rel=1e-2)  # max_drift_ppm
    # 12 V * (3 uA floor, 10 ppm of 0.25 A, 3 uA steps): about 48 uW RMS
    sigma_w = 12.0 * math.sqrt(3e-6**2 + (10e-6 * 0.25) ** 2 + 3e-6**2 / 12)
    assert p.std() == pytest.approx(sigma_w, rel=0.25)
    assert p.mean() == pytest.approx(3.0, abs=5 * sigma_w / math.sqrt(p.size))


@pytest.mark.parametrize("transport", ["pty", "tcp"])  # ASRL/dev/pts/N, TCPIP::...::SOCKET
def test_stepped_trace_energy_matches_within_2_percent(simulator, transport):
    trace = PowerTrace(2.0)
    sim = simulator(trace, transport=transport, seed=2)
    edges: list[float] = []

    def step(power_w: float):
        return lambda: edges.append(trace.set_power_w(power_w))

    with open_meter(f"keysight34465a:{sim.resource_name}", **FAST) as meter:
        t, p = _record(meter, 1.2, [(0.15, step(3.5)), (0.65, step(2.0))])
        clock = meter.clock
    assert clock is not None
    start = t[0]
    for t0 in (0.05, 0.25, 0.4, 0.6):  # windows of 0.5 s straddling the steps
        window = (start + t0, start + t0 + 0.5)
        measured = _energy_j(t, p, *window)
        exact = trace.energy_j(*window)
        assert measured == pytest.approx(exact, rel=0.02)
        assert measured == pytest.approx(exact, rel=1e-2)  # typically 5e-4 or better
    rising = t[np.argmax(p > 2.75)]
    assert abs(rising - edges[0]) < 1.5e-3 + 2 * clock.t0_uncertainty_s


def test_clock_drift_is_corrected(simulator):
    drift_ppm = 5000.0  # exaggerated, so that a 1.2 s run shows it (6 ms at the end)
    trace = PowerTrace(2.0)
    sim = simulator(trace, clock_drift_ppm=drift_ppm, clock_offset_s=-42.0, seed=3)
    edges: list[float] = []

    def step(power_w: float):
        return lambda: edges.append(trace.set_power_w(power_w))

    with open_meter(f"keysight34465a:{sim.resource_name}", **FAST) as meter:
        t, p = _record(meter, 1.3, [(0.3, step(3.5)), (1.1, step(2.0))])
        clock = meter.clock
    assert clock is not None
    # The true drift is consistent with every poll; on an idle machine the range is ~+-500 ppm.
    assert clock.drift_ppm_low <= drift_ppm <= clock.drift_ppm_high
    slack = 1.5e-3 + 2 * clock.t0_uncertainty_s  # ~0.2 ms of uncertainty on an idle machine
    high = p > 2.75
    rising, falling = np.argmax(high), len(high) - np.argmax(high[::-1])
    assert abs(t[rising] - edges[0]) < slack
    assert abs(t[falling] - edges[1]) < slack
    # The nominal interval from the first sample would put the falling edge ~5.5 ms late.
    nominal = t[0] + np.arange(t.size) * 1e-3
    assert nominal[falling] - edges[1] > 5.5e-3 - slack
    window = (edges[0] - 0.2, edges[1] + 0.1)
    assert _energy_j(t, p, *window) == pytest.approx(trace.energy_j(*window), rel=1e-2)


@pytest.mark.parametrize("drift_ppm", [100.0, -300.0])
def test_sample_clock_corrects_drift_over_a_long_run(drift_ppm):
    """Ten minutes of polls, synthesised: a 100 ppm drift is 60 ms at the end."""
    rng = np.random.default_rng(0)
    interval, aperture = 1e-3, 0.4e-3
    ratio = 1.0 / (1.0 + drift_ppm * 1e-6)  # host seconds per meter second
    init = 1000.0
    t0 = init + 2e-4  # the meter starts shortly after INIT

    def count_at(host_s: float) -> int:
        return max(0, math.floor((host_s - t0 - aperture * ratio) / (interval * ratio)) + 1)

    clock = SampleClock(interval, aperture, start_host_s=init)
    now = init
    while now < init + 600.0:
        sent = now + 0.05 + rng.uniform(0, 5e-3)
        served = sent + rng.uniform(5e-5, 2e-3)
        received = served + rng.uniform(5e-5, 2e-3)
        clock.observe(sent, received, count_at(served))
        now = received
    estimate = clock.estimate()
    assert estimate.drift_ppm_low <= drift_ppm <= estimate.drift_ppm_high
    assert estimate.drift_ppm == pytest.approx(drift_ppm, abs=5.0)
    k = np.array([0, 1000, 100_000, count_at(now) - 1])
    truth = t0 + (k * interval + aperture / 2) * ratio
    assert np.max(np.abs(clock.timestamps(0, int(k[-1]) + 1)[k] - truth)) < 1e-3
    nominal = t0 + k * interval + aperture / 2
    assert np.max(np.abs(nominal - truth)) > 0.05  # what no correction would leave


def test_over_range_is_one_line_asking_for_a_larger_range(simulator):
    sim = simulator(ConstantPower(20.0))  # 1.67 A on the 1 A range
    with open_meter(f"keysight34465a:{sim.resource_name}", **FAST) as meter:
        meter.start()
        time.sleep(0.2)
        with pytest.raises(MeterOverRangeError) as info:
            meter.read_samples()
    text = _one_line(info.value)
    assert re.fullmatch(
        rf"power meter at {re.escape(repr(sim.resource_name))}: \d+ readings over range \(current "
        r"above the 1 A range\); set a larger current_range_a, e\.g\. 3",
        text,
    )
    with open_meter(f"keysight34465a:{sim.resource_name}", current_range_a=3, **FAST) as meter:
        _, p = _record(meter, 0.2)
    assert p.mean() == pytest.approx(20.0, rel=1e-3)


@pytest.mark.parametrize("transport", ["pty", "tcp"])
def test_serial_and_lan_shorthands_reach_the_same_driver(simulator, transport):
    """``/dev/pts/N`` and ``socket://127.0.0.1:PORT`` (what the simulator's address is) open as
    ``ASRL/dev/pts/N::INSTR`` and ``TCPIP::127.0.0.1::PORT::SOCKET``."""
    sim = simulator(ConstantPower(2.5), transport=transport)
    assert resource_name(sim.address) == (sim.resource_name, "@py")
    with open_meter(f"keysight34465a:{sim.address}", **FAST) as meter:
        _, p = _record(meter, 0.3)
    assert p.mean() == pytest.approx(2.5, rel=1e-3)


def test_lan_socket_and_sim_kinds(simulator):
    sim = simulator(ConstantPower(2.5), transport="tcp")
    with open_meter(f"keysight34465a:{sim.resource_name}", **FAST) as meter:
        _, p = _record(meter, 0.3)
    assert p.mean() == pytest.approx(2.5, rel=1e-3)
    with open_meter("sim:4.0", **FAST) as meter:
        _, p = _record(meter, 0.2)
    assert p.mean() == pytest.approx(4.0, rel=1e-3)
    with pytest.raises(MeterConfigError, match="not a power in watts"):
        open_meter("sim:lots")


def test_series_resistance_is_subtracted(simulator):
    sim = simulator(ConstantPower(3.0), noise_floor_a=0.0, noise_ppm_of_reading=0.0)
    with open_meter(f"keysight34465a:{sim.resource_name}", series_ohm=0.1, **FAST) as meter:
        _, p = _record(meter, 0.15)
    assert p.mean() == pytest.approx(3.0 - 0.25**2 * 0.1, abs=1e-4)


# -- addresses, and the instrument's errors ------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "resource", "backend"),
    [
        ("TCPIP::10.0.0.5::5025::SOCKET", "TCPIP::10.0.0.5::5025::SOCKET", "@py"),
        ("tcpip0::10.0.0.5::hislip0::INSTR", "tcpip0::10.0.0.5::hislip0::INSTR", "@py"),
        ("TCPIP::10.0.0.5::INSTR@ivi", "TCPIP::10.0.0.5::INSTR", "@ivi"),
        (
            "USB0::0x2A8D::0x0101::MY59001234::INSTR",
            "USB0::0x2A8D::0x0101::MY59001234::INSTR",
            "@py",
        ),
        ("ASRL/dev/ttyUSB1::INSTR", "ASRL/dev/ttyUSB1::INSTR", "@py"),
        ("socket://10.0.0.5:5025", "TCPIP::10.0.0.5::5025::SOCKET", "@py"),
        ("/dev/ttyUSB1", "ASRL/dev/ttyUSB1::INSTR", "@py"),
        ("COM3", "ASRLCOM3::INSTR", "@py"),
    ],
)
def test_addresses_become_visa_resource_names(address, resource, backend):
    assert resource_name(address) == (resource, backend)


def test_an_address_that_is_no_resource_is_one_line():
    with pytest.raises(MeterConfigError) as info:
        open_meter("keysight34465a:10.0.0.5")
    assert _one_line(info.value) == (
        "power meter address '10.0.0.5' is not a VISA resource name; write e.g. "
        "TCPIP::10.0.0.5::5025::SOCKET (LAN) or ASRL/dev/ttyUSB1::INSTR (serial)"
    )


def test_a_refused_query_is_one_line_quoting_the_meters_error(simulator):
    sim = simulator(ConstantPower(3.0))
    with open_meter(f"keysight34465a:{sim.resource_name}", timeout_s=0.5) as meter:
        with pytest.raises(MeterProtocolError) as info:
            meter.query("CURR:DC:RANG:AUTO?")  # not a command the stand-in models: no reply
        assert _one_line(info.value) == (
            f"power meter at {sim.resource_name!r} refused 'CURR:DC:RANG:AUTO?': "
            '-113,"Undefined header"'
        )
        meter.write("SAMP:COUN 0")
        with pytest.raises(MeterConfigError, match=r'reported -222,"Data out of range" after'):
            meter.check_errors()
        meter.check_errors()  # drained


class _GarbledMeter(SimulatedMeter):
    """The stand-in with a fault: ``R?`` answers ASCII numbers instead of a block."""

    def _not_a_block(self, params: list[str]) -> bytes:
        expect(params, 0, 1)
        self._remove_readings(params)
        return b"+2.50000000E-01,+2.50000000E-01"

    commands = SimulatedMeter.commands.extended({"R?": _not_a_block})


class _SlowMeter(SimulatedMeter):
    """The stand-in with a fault: its first ``DATA:POIN?`` is answered 1.5 s late."""

    late = True

    def _late_points(self, params: list[str]) -> str:
        if self.late:
            self.late = False
            time.sleep(1.5)
        return self._data_points(params)

    commands = SimulatedMeter.commands.extended({"DATA:POINts?": _late_points})


def test_a_late_reply_is_a_timeout_and_the_next_query_is_in_step():
    with (
        _SlowMeter(ConstantPower(3.0)) as sim,
        open_meter(f"keysight34465a:{sim.resource_name}", timeout_s=1.0) as meter,
    ):
        with pytest.raises(MeterTimeoutError) as info:
            meter.query("DATA:POIN?")
        # the late "+0" came while the driver read SYST:ERR?: dropped, not taken for an error
        assert meter.query("*IDN?").startswith("Keysight Technologies,34465A,")
        meter.check_errors()
    assert _one_line(info.value) == (
        f"power meter at {sim.resource_name!r} did not answer 'DATA:POIN?' within 1.0 s; check "
        "that it is on and connected"
    )


def test_a_garbled_block_is_one_line():
    with (
        _GarbledMeter(ConstantPower(3.0)) as sim,
        open_meter(f"keysight34465a:{sim.resource_name}", **FAST) as meter,
    ):
        meter.start()
        time.sleep(0.3)
        with pytest.raises(MeterProtocolError) as info:
            meter.read_samples()
    assert re.fullmatch(
        rf"power meter at {re.escape(repr(sim.resource_name))} answered 'R\? \d+' with no IEEE "
        r"488\.2 block of doubles \(.+\); another program may be talking to the meter",
        _one_line(info.value),
    )


def test_simulated_is_read_from_the_instrument(simulator):
    """The driver believes the instrument: a serial number of Keysight's form reads as a real
    meter, the stand-in's default ``SIM...`` as simulated; the sim kind is simulated too."""
    real_looking = simulator(ConstantPower(3.0), serial_number="MY59001234")
    with open_meter(f"keysight34465a:{real_looking.address}", **FAST) as meter:
        assert meter.simulated is False
    with open_meter("sim:2.0", **FAST) as meter:
        assert meter.simulated is True
    with open_meter("none") as meter:
        assert meter.simulated is False
    with pytest.raises(MeterError, match="not open"):
        _ = Keysight34465A(real_looking.address).simulated


def test_not_a_number_readings_are_one_line_pointing_at_the_error_queue(simulator):
    class Broken:  # the stand-in's measurement fails: readings are 9.91E+37, -240 is queued
        def energy_j(self, t0_s: float, t1_s: float) -> float:
            raise RuntimeError("trace lost")

    sim = simulator(Broken())
    with open_meter(f"keysight34465a:{sim.resource_name}", **FAST) as meter:
        meter.start()
        time.sleep(0.2)
        with pytest.raises(MeterProtocolError) as info:
            meter.read_samples()
        meter.stop()
        with pytest.raises(MeterConfigError, match=r'reported -240,"Hardware error"'):
            meter.check_errors()
    assert re.fullmatch(
        rf"power meter at {re.escape(repr(sim.resource_name))} sent \d+ 'not a number' readings; "
        r"check the meter's display and its error queue",
        _one_line(info.value),
    )


def test_a_serial_connection_runs_at_baud_rate(simulator):
    sim = simulator(ConstantPower(3.0))
    with open_meter(f"keysight34465a:{sim.resource_name}", baud_rate=57600, **FAST):
        fd = os.open(sim.address, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            speeds = termios.tcgetattr(fd)[4:6]  # what the driver set on the line
        finally:
            os.close(fd)
    assert speeds == [termios.B57600, termios.B57600]
    with pytest.raises(MeterConfigError, match="baud_rate=0 must be a positive number"):
        open_meter(f"keysight34465a:{sim.resource_name}", baud_rate=0)

"""Tests of the ground-truth power model, the generic SCPI machinery and the simulated Keysight
34465A over real ptys and sockets.

The simulator is driven with raw SCPI through pyserial, as a program would drive the real
instrument; the host driver's tests (through pyvisa-py) are in tests/host/test_meters.py.
"""

from __future__ import annotations

import logging
import math
import re
import struct
import threading
import time

import numpy as np
import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

from fpga.emulator import EmulatorError
from fpga.emulator.meter import RESOLUTION_PPM, SimulatedMeter, SimulatedMeterConfig
from fpga.emulator.power import ConstantPower, PowerSource, PowerTrace, SquareWavePower
from fpga.emulator.scpi import (
    CommandTable,
    ScpiInstrument,
    definite_block,
    expect,
    format_nr3,
    mnemonic_forms,
    number,
)

# -- the power model ----------------------------------------------------------------------------


def test_power_trace_energy_is_exact_for_steps():
    trace = PowerTrace(2.0, start_s=0.0)
    trace.set_power_w(3.5, at_s=0.5)
    trace.set_power_w(1.0, at_s=0.8)
    assert trace.energy_j(0.2, 1.0) == pytest.approx(2.0 * 0.3 + 3.5 * 0.3 + 1.0 * 0.2, abs=1e-12)
    assert trace.energy_j(0.55, 0.65) == pytest.approx(0.35, abs=1e-12)
    assert trace.mean_power_w(0.0, 1.0) == pytest.approx((1.0 + 1.05 + 0.2) / 1.0)
    assert trace.power_w(0.5) == 3.5 and trace.power_w(0.4999) == 2.0
    assert trace.energy_j(1.0, 3.0) == pytest.approx(2.0)  # the last power holds on
    assert trace.mean_power_w(0.6, 0.6) == 3.5
    assert isinstance(trace, PowerSource) and isinstance(ConstantPower(1.0), PowerSource)


def test_power_trace_same_time_replaces_and_equal_power_merges():
    trace = PowerTrace(1.0, start_s=0.0)
    trace.set_power_w(2.0, at_s=1.0)
    trace.set_power_w(4.0, at_s=1.0)  # same instant: replaces
    trace.set_power_w(4.0, at_s=2.0)  # no change: no new segment
    assert trace.segments() == [(0.0, 1.0), (1.0, 4.0)]
    assert trace.energy_j(0.0, 3.0) == pytest.approx(1.0 + 8.0)


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda t: t.set_power_w(-1.0, at_s=2.0), "power_w=-1.0"),
        (lambda t: t.set_power_w(math.nan, at_s=2.0), "power_w=nan"),
        (lambda t: t.set_power_w(1.0, at_s=0.5), "precedes the newest change"),
        (lambda t: t.energy_j(2.0, 1.0), "ends before it starts"),
        (lambda t: t.energy_j(-5.0, 1.0), "precedes the power trace's retained history"),
    ],
)
def test_power_trace_rejects_bad_input_in_one_line(call, fragment):
    trace = PowerTrace(1.0, start_s=0.0)
    trace.set_power_w(2.0, at_s=1.0)
    with pytest.raises(EmulatorError, match=re.escape(fragment)) as info:
        call(trace)
    assert "\n" not in str(info.value)


def test_power_trace_prunes_history_beyond_the_horizon():
    trace = PowerTrace(0.0, start_s=0.0, horizon_s=10.0)
    powers = [1.0 + (i % 7) for i in range(1, 1001)]
    for i, power in enumerate(powers, start=1):
        trace.set_power_w(power, at_s=0.1 * i)
    assert len(trace) <= 2 * 100 + 64  # bounded: about twice the horizon's segments
    newest = 100.0
    assert trace.retained_from_s <= newest - 10.0
    expected = sum(p * 0.1 for p in powers[-51:-1])  # [95.0, 100.0): segments 950..999
    assert trace.energy_j(95.0, 100.0) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(EmulatorError, match="retained history"):
        trace.energy_j(1.0, 2.0)


def test_power_trace_caps_segments_and_warns(caplog):
    trace = PowerTrace(0.0, start_s=0.0, max_segments=100)
    with caplog.at_level(logging.WARNING, logger="fpga.emulator.power"):
        for i in range(1, 1001):
            trace.set_power_w(float(i % 2 + 1), at_s=float(i))
    assert len(trace) <= 100
    assert "max_segments=100" in caplog.text
    assert trace.energy_j(990.0, 1000.0) == pytest.approx(15.0)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.tuples(st.floats(1e-3, 5.0), st.floats(0.0, 10.0)), min_size=1, max_size=30),
    a=st.floats(0.0, 1.0),
    b=st.floats(0.0, 1.0),
    c=st.floats(0.0, 1.0),
)
def test_power_trace_energy_matches_brute_force_and_is_additive(steps, a, b, c):
    trace = PowerTrace(1.0, start_s=0.0)
    starts, powers, t = [0.0], [1.0], 0.0
    for dt, power in steps:
        t += dt
        trace.set_power_w(power, at_s=t)
        starts.append(t)
        powers.append(power)
    end = t + 1.0
    t0, t1, t2 = sorted(x * end for x in (a, b, c))

    def brute(lo: float, hi: float) -> float:
        edges = [*starts, math.inf]
        return math.fsum(
            p * max(0.0, min(hi, edges[i + 1]) - max(lo, edges[i])) for i, p in enumerate(powers)
        )

    assert trace.energy_j(t0, t2) == pytest.approx(brute(t0, t2), rel=1e-9, abs=1e-9)
    assert trace.energy_j(t0, t1) + trace.energy_j(t1, t2) == pytest.approx(
        trace.energy_j(t0, t2), rel=1e-9, abs=1e-9
    )


def test_power_trace_is_thread_safe():
    trace = PowerTrace(1.0, start_s=0.0)
    errors: list[BaseException] = []

    def writer() -> None:
        for i in range(1, 5001):
            trace.set_power_w(1.0 + i % 3, at_s=i * 1e-3)

    def reader() -> None:
        try:
            for _ in range(2000):
                energy = trace.energy_j(0.0, 0.001)
                assert energy == pytest.approx(1e-3)
        except BaseException as exc:  # collected for the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert trace.energy_j(0.0, 5.0) == pytest.approx(
        1e-3 + sum((1.0 + i % 3) * 1e-3 for i in range(1, 5000))
    )


def test_square_wave_energy_is_exact():
    wave = SquareWavePower(2.0, 3.5, period_s=1.0, duty=0.25, phase_s=10.0)
    # from 9.5 to 12.1: high during [10, 10.25), [11, 11.25), [12, 12.1)
    high_s = 0.25 + 0.25 + 0.1
    assert wave.energy_j(9.5, 12.1) == pytest.approx(2.0 * 2.6 + 1.5 * high_s)
    assert wave.power_w(10.1) == 3.5 and wave.power_w(10.3) == 2.0


# -- the generic SCPI machinery -------------------------------------------------------------------


class _Counter(ScpiInstrument):
    """The smallest instrument on the machinery: one setting and its query."""

    gate_s = 1.0

    def _gate(self, params: list[str]) -> None:
        expect(params, 1, 1)
        self.gate_s = number(params[0], low=1e-3, high=10.0, minimum=1e-3, default=1.0)

    def _gate_query(self, params: list[str]) -> str:
        expect(params, 0, 0)
        return format_nr3(self.gate_s)

    commands = CommandTable(
        {
            "SYSTem:ERRor[:NEXT]?": ScpiInstrument.next_error,
            "[SENSe:]FREQuency:GATE:TIMe": _gate,
            "[SENSe:]FREQuency:GATE:TIMe?": _gate_query,
        }
    )


def test_a_command_table_gives_short_long_forms_paths_and_the_error_queue():
    counter = _Counter(ConstantPower(1.0))  # not served: handle() is the whole parser
    assert mnemonic_forms("NPLCycles") == ("NPLC", "NPLCYCLES")
    assert counter.handle("sense:frequency:gate:time 0.5") is None
    assert counter.handle("FREQ:GATE:TIM?;TIM MIN;TIM?") == b"+5.00000000E-01;+1.00000000E-03"
    assert counter.handle("FREQ:GATE:TIM 20;FREQ:GAT 1") is None  # -222, then -113
    assert counter.handle("SYST:ERR?;ERR?;ERR?") == (
        b'-222,"Data out of range";-113,"Undefined header";+0,"No error"'
    )


# -- the simulated instrument over a pty --------------------------------------------------------


class Client:
    """A program talking SCPI to the instrument, as over its LAN socket or a serial port."""

    def __init__(self, address: str) -> None:
        self.port = serial.serial_for_url(address, timeout=10)

    def write(self, message: str) -> None:
        self.port.write(message.encode("ascii") + b"\n")

    def query(self, message: str) -> str:
        self.write(message)
        line = self.port.read_until(b"\n")
        assert line.endswith(b"\n"), f"no reply to {message!r}"
        return line.decode("ascii").strip()

    def query_block(self, message: str) -> bytes:
        """The payload of a definite-length block reply (its header checked)."""
        self.write(message)
        head = self.port.read(2)
        assert head[:1] == b"#", head
        size = int(self.port.read(int(head[1:2])) or b"0")
        payload = self.port.read(size)
        assert len(payload) == size and self.port.read(1) == b"\n"
        return payload

    def errors(self) -> list[str]:
        out = []
        while (reply := self.query("SYST:ERR?")) != '+0,"No error"':
            out.append(reply)
        return out

    def close(self) -> None:
        self.port.close()


@pytest.fixture
def make_sim():
    """``make_sim(source=None, **config) -> (SimulatedMeter, Client)`` on a fresh pty."""
    started: list[tuple[SimulatedMeter, Client]] = []

    def make(source: PowerSource | None = None, transport: str = "pty", **config):
        sim = SimulatedMeter(
            source or ConstantPower(3.0), SimulatedMeterConfig(**config), transport=transport
        )
        sim.start()
        client = Client(sim.address)
        started.append((sim, client))
        return sim, client

    yield make
    for sim, client in started:
        client.close()
        sim.stop()


FAST_SAMPLING = "CONF:CURR:DC 1;:CURR:DC:NPLC 0.02;ZERO:AUTO OFF;:TRIG:DEL 0"


def _acquire(client: Client, count: int, interval_s: float = 1e-3) -> np.ndarray:
    """``count`` timed samples, fetched with ``R?`` as ASCII once all are in memory."""
    client.write(FAST_SAMPLING)
    client.write(f"SAMP:SOUR TIM;TIM {interval_s};COUN {count}")
    client.write("INIT")
    deadline = time.monotonic() + 10.0
    while int(client.query("DATA:POIN?")) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    payload = client.query_block("R?")
    return np.array([float(x) for x in payload.split(b",")])


def test_idn_and_keyword_forms(make_sim):
    sim, client = make_sim()
    assert sim.address.startswith("/dev/pts/")
    assert sim.resource_name == f"ASRL{sim.address}::INSTR"
    idn = client.query("*IDN?")
    assert re.fullmatch(r"Keysight Technologies,34465A,SIM\d{7},A\.\d\d\.\d\d(-[\d.]+)+", idn)
    assert client.query("*idn?") == idn  # case-insensitive
    client.write("configure:current:dc 1")
    client.write("SENSe:CURRent:DC:NPLCycles 0.02")
    assert client.query("curr:nplc?") == "+2.00000000E-02"  # [SENSe:] and [:DC] optional
    assert sim.settings.range_a == 1.0
    client.write("SAMPLE:TIMER 0.0012345678")
    assert client.query("SAMP:TIM?") == "+1.23500000E-03"  # ~1 us steps
    assert client.errors() == []
    # one message, several queries: one reply line, answers separated by ';'
    assert client.query("CURR:DC:NPLC 0.2;NPLC?;:SAMP:TIM?") == "+2.00000000E-01;+1.23500000E-03"


def test_relative_paths_follow_the_scpi_rule(make_sim):
    sim, client = make_sim()
    client.write("TRIG:SOUR IMM;COUN 3;DEL 0.5")  # COUN and DEL are relative to TRIG:
    assert client.errors() == []
    assert (sim.settings.trigger_count, sim.settings.trigger_delay_s) == (3, 0.5)
    client.write("TRIG:SOUR IMM;SAMP:COUN 4")  # TRIG:SAMP:COUN does not exist
    assert client.errors() == ['-113,"Undefined header"']
    client.write("TRIG:SOUR IMM;:SAMP:COUN 4")  # a leading ':' goes back to the root
    assert client.errors() == [] and sim.settings.sample_count == 4


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("FOO:BAR", '-113,"Undefined header"'),
        ("CONFigur:CURR:DC 1", '-113,"Undefined header"'),  # neither short nor long form
        ("INIT?", '-113,"Undefined header"'),  # a command without a query form
        ("SAMP:COUN 0", '-222,"Data out of range"'),
        ("CONF:CURR:DC 20", '-222,"Data out of range"'),
        ("CURR:DC:NPLC 1000", '-222,"Data out of range"'),
        ("SAMP:SOUR FOO", '-224,"Illegal parameter value"'),
        ("TRIG:SOUR BUS", '-224,"Illegal parameter value"'),  # bus triggers are not modelled
        ("FORM:DATA REAL,16", '-222,"Data out of range"'),
        ("FORM:DATA REAL,48", '-224,"Illegal parameter value"'),
        ("FORM:DATA ASC,64", '-108,"Parameter not allowed"'),
        ("SAMP:TIM? MAX", '-224,"Illegal parameter value"'),
        ("SAMP:COUN", '-109,"Missing parameter"'),
        ("*IDN? 5", '-108,"Parameter not allowed"'),
        ("SAMP:COUN 1,2", '-108,"Parameter not allowed"'),
        ("SAMP:COUN abc", '-104,"Data type error"'),
        ("SAMP:COU$ 1", '-101,"Invalid character"'),
        ("SAMP::COUN 1", '-102,"Syntax error"'),
    ],
)
def test_bad_scpi_queues_the_scpi_error(make_sim, message, error):
    _, client = make_sim()
    client.write(message)
    assert client.query("SYST:ERR?") == error
    assert client.query("SYST:ERR?") == '+0,"No error"'


def test_init_while_measuring_is_ignored(make_sim):
    _, client = make_sim()
    client.write(FAST_SAMPLING + ";:SAMP:SOUR TIM;TIM 0.001;COUN 100000")
    client.write("INIT")
    client.write("INIT")
    client.write("ABOR")
    assert client.errors() == ['-213,"Init ignored"']


def test_error_queue_overflows_at_20_and_cls_empties_it(make_sim):
    _, client = make_sim()
    for _ in range(25):
        client.write("NOPE")
    errors = client.errors()
    assert len(errors) == 20
    assert errors[:19] == ['-113,"Undefined header"'] * 19
    assert errors[19] == '-350,"Error queue overflow"'
    client.write("NOPE;*CLS")  # the command error discards *CLS: one error stays
    client.write("*CLS")
    assert client.errors() == []


def test_command_error_discards_the_rest_of_the_message_execution_error_does_not(make_sim):
    sim, client = make_sim()
    client.write("NOPE;:SAMP:COUN 7")
    assert sim.settings.sample_count == 1
    client.write("SAMP:COUN 0;:SAMP:COUN 7")
    assert client.errors() == ['-113,"Undefined header"', '-222,"Data out of range"']
    assert sim.settings.sample_count == 7


@pytest.mark.parametrize(
    ("form", "code", "size"),
    [("REAL,64;:FORM:BORD NORM", ">d", 8), ("REAL,32;:FORM:BORD SWAP", "<f", 4)],
)
def test_r_blocks_in_ascii_and_binary_and_data_points(make_sim, form, code, size):
    _, client = make_sim(ConstantPower(3.0))
    ascii_readings = _acquire(client, 5, interval_s=0.002)  # *RST state: ASCII
    assert ascii_readings.size == 5 and client.query("DATA:POIN?") == "+0"
    assert np.all(np.abs(ascii_readings - 0.25) < 30e-6)  # 3 W / 12 V, a few uA of noise
    client.write("SAMP:COUN 5;:INIT")
    time.sleep(0.1)
    assert client.query("DATA:POIN?") == "+5"
    client.write(f"FORM:DATA {form}")
    payload = client.query_block("R? 2")  # FORMat applies to readings already in memory
    assert len(payload) == 2 * size
    first_two = np.array(struct.unpack(f"{code[0]}2{code[1]}", payload))
    assert client.query("DATA:POIN?") == "+3"
    assert len(client.query_block("R?")) == 3 * size
    assert client.query_block("R?") == b""  # empty memory: an empty block, #10
    assert np.all(np.abs(first_two - 0.25) < 30e-6)
    assert client.errors() == []


def test_over_range_reads_overload_and_a_larger_range_reads_the_current(make_sim):
    _, client = make_sim(ConstantPower(20.0))  # 20 W / 12 V = 1.67 A
    assert np.all(_acquire(client, 3) == 9.9e37)  # the 1 A range reads up to 1.2 A
    assert int(client.query("STAT:QUES?")) & 2  # current overload event
    client.write("CONF:CURR:DC 3;:CURR:DC:NPLC 0.02;ZERO:AUTO OFF;:SAMP:COUN 3;:INIT")
    time.sleep(0.1)
    values = np.array([float(x) for x in client.query_block("R?").split(b",")])
    assert values == pytest.approx(20.0 / 12.0, abs=1e-3)


def test_readings_have_the_configured_noise_and_resolution_and_are_seeded(make_sim):
    config = {"noise_floor_a": 3e-6, "noise_ppm_of_reading": 10.0, "seed": 7}
    runs = []
    for _ in range(2):
        _, client = make_sim(ConstantPower(3.0), **config)
        runs.append(_acquire(client, 600))
    assert np.array_equal(runs[0], runs[1])  # the same seed gives the same readings
    readings = runs[0]
    step = RESOLUTION_PPM[0.02] * 1e-6 * 1.0
    assert np.allclose(readings / step, np.round(readings / step), atol=1e-3)
    sigma = math.hypot(3e-6, 10e-6 * 0.25)
    expected = math.sqrt(sigma**2 + step**2 / 12)
    assert readings.std() == pytest.approx(expected, rel=0.2)
    assert readings.mean() == pytest.approx(0.25, abs=4 * expected / math.sqrt(600) + 1e-7)


def test_memory_overflow_overwrites_oldest_and_sets_questionable_bit_14(make_sim):
    _, client = make_sim(ConstantPower(3.0), memory_readings=50)
    client.write(FAST_SAMPLING + ";:SAMP:SOUR TIM;TIM 0.001;COUN 120")
    client.write("INIT")
    time.sleep(0.3)
    assert client.query("DATA:POIN?") == "+50"
    assert client.query("STAT:QUES?") == "+16384"
    assert client.query("STAT:QUES?") == "+0"  # reading the event register clears it
    assert client.errors() == []  # like the 34465A: not an error-queue entry


def test_sample_timer_shorter_than_a_measurement_sets_the_timing_bit(make_sim):
    _, client = make_sim()
    client.write("CONF:CURR:DC 1;:CURR:DC:NPLC 1")
    assert float(client.query("SAMP:TIM? MIN")) == pytest.approx(2 / 50 + 20e-6, abs=2e-6)
    client.write("SAMP:SOUR TIM;TIM 0.001;COUN 3")
    client.write("INIT")
    assert int(client.query("STAT:QUES?")) & 4
    client.write("ABOR")


def test_instrument_clock_drift_paces_timed_samples(make_sim):
    drift_ppm = 50_000.0  # exaggerated, so that 0.6 s shows it (30 samples)
    sim, client = make_sim(ConstantPower(3.0), clock_drift_ppm=drift_ppm, clock_offset_s=123.0)
    assert sim.host_time_s(sim.meter_time_s(50.0)) == pytest.approx(50.0, abs=1e-9)
    client.write(FAST_SAMPLING)
    client.write("SAMP:SOUR TIM;TIM 0.001;COUN 100000")
    client.write("INIT")
    time.sleep(0.1)
    t1a = time.monotonic()
    n1 = int(client.query("DATA:POIN?"))
    t1b = time.monotonic()
    time.sleep(0.6)
    t2a = time.monotonic()
    n2 = int(client.query("DATA:POIN?"))
    t2b = time.monotonic()
    client.write("ABOR")
    rate_hz = (1 + drift_ppm * 1e-6) / 1e-3  # samples per host second
    assert (t2a - t1b) * rate_hz - 1 <= n2 - n1 <= (t2b - t1a) * rate_hz + 1


def test_readings_are_the_mean_over_the_aperture(make_sim):
    trace = PowerTrace(2.0)
    _, client = make_sim(trace, noise_floor_a=0.0, noise_ppm_of_reading=0.0)
    client.write("CONF:CURR:DC 1;:CURR:DC:NPLC 10;ZERO:AUTO OFF;:TRIG:DEL 0;:INIT")
    time.sleep(0.05)
    step_s = trace.set_power_w(3.0)  # during the 200 ms aperture
    while client.query("DATA:POIN?") == "+0":
        time.sleep(0.02)
    start_s = step_s - 0.05  # about: the exact mean is checked within the aperture's bounds
    value = float(client.query_block("R?"))
    assert 2.0 / 12 < value < 3.0 / 12
    assert value == pytest.approx(trace.mean_power_w(start_s, start_s + 0.2) / 12, abs=0.01)
    assert client.errors() == []


def test_a_failing_power_source_reads_not_a_number_and_queues_a_hardware_error(make_sim):
    class Broken:
        def energy_j(self, t0_s: float, t1_s: float) -> float:
            raise RuntimeError("trace lost")

    _, client = make_sim(Broken())
    assert np.all(_acquire(client, 2) == 9.91e37)
    assert client.errors() == ['-240,"Hardware error"']


def test_tcp_transport_serves_like_the_lan_socket(make_sim):
    sim, client = make_sim(transport="tcp")
    assert re.fullmatch(r"socket://127\.0\.0\.1:\d+", sim.address)
    port = sim.address.rsplit(":", 1)[1]
    assert sim.resource_name == f"TCPIP::127.0.0.1::{port}::SOCKET"
    assert client.query("*IDN?").startswith("Keysight Technologies,34465A,")


def test_response_formats():
    assert format_nr3(0.123456789) == "+1.23456789E-01"
    assert format_nr3(-4.98748741e-01) == "-4.98748741E-01"
    assert format_nr3(9.9e37) == "+9.90000000E+37"
    assert definite_block(b"") == b"#10"
    assert definite_block(b"x" * 47) == b"#247" + b"x" * 47


def test_config_rejects_bad_values_in_one_line():
    with pytest.raises(EmulatorError, match=r"supply_v=-12\.0"):
        SimulatedMeterConfig(supply_v=-12.0)
    with pytest.raises(EmulatorError, match="line_frequency_hz=55"):
        SimulatedMeterConfig(line_frequency_hz=55)
    with pytest.raises(EmulatorError, match="has no energy_j"):
        SimulatedMeter(object())  # type: ignore[arg-type]
    with pytest.raises(EmulatorError, match="transport='usb' must be 'pty' or 'tcp'"):
        SimulatedMeter(ConstantPower(1.0), transport="usb")

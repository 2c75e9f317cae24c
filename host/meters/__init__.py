"""Power-meter drivers for the measurement harness (see docs/power-meter.md).

``open_meter("KIND:ADDRESS")`` opens a registered meter: ``keysight34465a`` (a Keysight 34465A
or 34470A over its SCPI socket, a serial adapter, the simulator's pty, or a VISA resource),
``wattsup`` (Watts Up? PRO, serial), ``joulescope`` (optional package), ``sim`` (the 34465A
driver against an in-process simulated 34465A) or ``none`` (timing only).
"""

from host.meters.base import (
    ClockEstimate,
    MeterConfigError,
    MeterError,
    MeterIdentityError,
    MeterOverRangeError,
    MeterPortError,
    MeterProtocolError,
    MeterTimeoutError,
    NullMeter,
    PowerMeter,
    SampleClock,
    create_meter,
    meter_kinds,
    open_meter,
    parse_meter_spec,
    register_meter,
)
from host.meters.joulescope import Joulescope, JoulescopeConfig  # imports joulescope lazily
from host.meters.scpi import (
    Keysight34465A,
    Keysight34465AConfig,
    SimulatedKeysight34465A,
    parse_block,
    parse_readings,
    read_block,
)
from host.meters.visa import VisaTransport, is_visa_address
from host.meters.wattsup import WattsUp, WattsUpConfig

__all__ = [
    "ClockEstimate",
    "Joulescope",
    "JoulescopeConfig",
    "Keysight34465A",
    "Keysight34465AConfig",
    "MeterConfigError",
    "MeterError",
    "MeterIdentityError",
    "MeterOverRangeError",
    "MeterPortError",
    "MeterProtocolError",
    "MeterTimeoutError",
    "NullMeter",
    "PowerMeter",
    "SampleClock",
    "SimulatedKeysight34465A",
    "VisaTransport",
    "WattsUp",
    "WattsUpConfig",
    "create_meter",
    "is_visa_address",
    "meter_kinds",
    "open_meter",
    "parse_block",
    "parse_meter_spec",
    "parse_readings",
    "read_block",
    "register_meter",
]

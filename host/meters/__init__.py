"""Power-meter drivers for the measurement harness (see docs/power-meter.md).

``open_meter("KIND:ADDRESS")`` opens a registered meter: ``keysight34465a`` (a Keysight 34465A
or 34470A through pyvisa: its LAN socket, a serial port, USBTMC, or the simulator's pty),
``wattsup`` (Watts Up? PRO, serial), ``joulescope`` (optional package), ``none`` (timing only),
or a kind declared in the ``ddi_fpga.power_meters`` entry-point group and imported only when
used: the emulator's ``sim`` (the 34465A driver against an in-process simulated 34465A).
"""

from host.meters.base import (
    METER_ENTRY_POINTS,
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
from host.meters.scpi import Keysight34465A, Keysight34465AConfig, resource_name
from host.meters.wattsup import WattsUp, WattsUpConfig

__all__ = [
    "METER_ENTRY_POINTS",
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
    "WattsUp",
    "WattsUpConfig",
    "create_meter",
    "meter_kinds",
    "open_meter",
    "parse_meter_spec",
    "register_meter",
    "resource_name",
]

"""Opening and using a meter's serial port (or socket) with one-line errors naming the port.

Shared by the drivers: the Watts Up? talks to its meter through pyserial (``port_call``), and the
34465A driver opens a serial device itself to lock it (``port_error``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import serial

from host.meters.base import MeterPortError
from wire.ports import port_failure


def port_error(address: str, exc: BaseException) -> MeterPortError:
    """One line that names the port and says what to do."""
    why = port_failure(
        exc,
        missing="does not exist; check the cable and the address (ls /dev/tty*, or the meter's IP)",
        denied="is not permitted; add your user to the 'dialout' group or fix its permissions",
        busy="is busy: another program has it open; close that program first",
        more=(
            (
                ("refused",),
                "refused the connection; check the IP address and that the meter's SCPI socket "
                "(port 5025) is enabled",
            ),
            (
                ("timed out", "unreachable", "name or service"),
                "cannot be reached; check the network, the IP address and that the meter is on",
            ),
        ),
    )
    return MeterPortError(f"power meter port {address!r} {why}")


def port_call(
    address: str,
    what: str,
    call: Callable[..., Any],
    *args: Any,
    device: str = "power meter",
    hint: str = "check the cable and that nothing else uses the port",
) -> Any:
    """``call(*args)``; a port failure becomes one line naming the port and ``what`` failed."""
    try:
        return call(*args)
    except (serial.SerialException, OSError) as exc:
        raise MeterPortError(
            f"{device} port {address!r} failed while {what}: {exc}; {hint}"
        ) from None

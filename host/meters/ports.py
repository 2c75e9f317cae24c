"""Opening and using a meter's serial port (or socket) with one-line errors naming the port.

Shared by the drivers that talk to their instrument through pyserial (scpi.py, wattsup.py).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import serial

from host.meters.base import MeterPortError


def port_error(address: str, exc: BaseException) -> MeterPortError:
    """One line that names the port and says what to do."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    lowered = text.lower()
    if code == errno.ENOENT or "no such file" in lowered:
        why = "does not exist; check the cable and the address (ls /dev/tty*, or the meter's IP)"
    elif code in (errno.EACCES, errno.EPERM) or "permission denied" in lowered:
        why = "is not permitted; add your user to the 'dialout' group or fix its permissions"
    elif code in (errno.EBUSY, errno.EAGAIN) or "lock" in lowered or "busy" in lowered:
        why = "is busy: another program has it open; close that program first"
    elif "refused" in lowered:
        why = "refused the connection; check the IP address and that the meter's SCPI socket "
        why += "(port 5025) is enabled"
    elif "timed out" in lowered or "unreachable" in lowered or "name or service" in lowered:
        why = "cannot be reached; check the network, the IP address and that the meter is on"
    else:
        first = text.splitlines()[0] if text else type(exc).__name__
        why = f"cannot be opened ({first})"
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

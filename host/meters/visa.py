"""VISA transport: the 34465A driver over pyvisa (LAN socket, HiSLIP, VXI-11, USBTMC, GPIB).

An address that is a VISA resource name opens through :class:`VisaTransport` instead of pyserial
(:func:`host.meters.scpi.open_transport` chooses by :func:`is_visa_address`)::

    keysight34465a:TCPIP0::10.0.0.5::5025::SOCKET        # the raw SCPI socket
    keysight34465a:TCPIP0::10.0.0.5::hislip0::INSTR      # HiSLIP
    keysight34465a:USB0::0x2A8D::0x0101::MY59001234::INSTR  # USBTMC

The VISA library is pyvisa-py (``@py``, pure Python) unless the address ends with a backend
suffix: ``...::INSTR@ivi`` uses the installed NI-VISA or Keysight IO Libraries. pyvisa is an
optional dependency, imported when a VISA address is opened.

A VISA read returns one message (up to the newline, or the USBTMC END), never "some bytes":
:class:`VisaTransport` keeps what it read in its own buffer, so ``read_line`` and the
``read_exact`` calls of an IEEE 488.2 block work the same on every interface.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from host.meters.base import MeterConfigError, MeterPortError

logger = logging.getLogger(__name__)

DEFAULT_BACKEND = "@py"
# TCPIP0::, USB0::, GPIB0::, ASRL/dev/ttyUSB0::, VXI0::, PXI0:: (case-insensitive).
_VISA_RESOURCE = re.compile(r"^(TCPIP|USB|GPIB|ASRL|VXI|PXI)[^:]*::", re.IGNORECASE)
_BACKEND_SUFFIX = re.compile(r"^(?P<resource>.+?)(?P<backend>@[A-Za-z_][\w.]*)$")
_DISCARD_WAIT_S = 0.01  # how long discard_input waits for bytes still on their way
_MAX_DISCARD_MESSAGES = 1000  # an instrument that never stops talking cannot hang us


def is_visa_address(address: str) -> bool:
    """Whether ``address`` is a VISA resource name (``TCPIP0::HOST::5025::SOCKET``...)."""
    return bool(_VISA_RESOURCE.match(address.strip()))


def split_backend(address: str) -> tuple[str, str]:
    """``"USB0::...::INSTR@ivi"`` -> ``("USB0::...::INSTR", "@ivi")``; default backend ``@py``."""
    match = _BACKEND_SUFFIX.match(address.strip())
    if match is None:
        return address.strip(), DEFAULT_BACKEND
    return match["resource"], match["backend"]


def _import_pyvisa() -> Any:
    try:
        import pyvisa
    except ImportError:
        raise MeterConfigError(
            "VISA addresses need pyvisa; pip install pyvisa pyvisa-py (or use "
            "socket://HOST:5025 for the meter's SCPI socket)"
        ) from None
    return pyvisa


def _open_error(address: str, exc: BaseException, pyvisa: Any) -> MeterPortError:
    """One line for a VISA resource that did not open: what went wrong and what to do."""
    status = pyvisa.constants.StatusCode
    code = getattr(exc, "error_code", None)
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    lowered = text.lower()
    if code == status.error_resource_not_found:
        why = "was not found; check the address (python -m pyvisa info; pyvisa-shell list)"
    elif code in (status.error_resource_busy, status.error_resource_locked):
        why = "is busy: another program has it open; close that program first"
    elif "install" in lowered:  # pyvisa-py lacks the interface's package (pyusb, gpib-ctypes)
        why = f"needs a package that is missing: {text}"
    elif code == status.error_invalid_resource_name or isinstance(exc, ValueError):
        why = (
            f"is not a valid VISA resource name ({text}); write e.g. "
            "TCPIP0::10.0.0.5::5025::SOCKET or USB0::0x2A8D::0x0101::SERIAL::INSTR"
        )
    elif "refused" in lowered:
        why = "refused the connection; check the IP address and that the port is enabled"
    elif code == status.error_timeout or "timed out" in lowered or "could not connect" in lowered:
        why = "cannot be reached; check the network, the IP address and that the meter is on"
    else:
        why = f"cannot be opened ({text}); check the address and the VISA installation"
    return MeterPortError(f"power meter VISA resource {address!r} {why}")


class VisaTransport:
    """SCPI over a pyvisa message-based resource, with the methods of ``scpi.Transport``."""

    def __init__(self, address: str, timeout_s: float) -> None:
        self.address = address
        resource_name, backend = split_backend(address)
        pyvisa = _import_pyvisa()
        self._pyvisa = pyvisa
        self._timeout_code = pyvisa.constants.StatusCode.error_timeout
        try:
            self._manager = pyvisa.ResourceManager(backend)
        except (OSError, ValueError, pyvisa.errors.Error) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            hint = "pip install pyvisa-py" if backend == "@py" else "install that VISA library"
            raise MeterConfigError(
                f"VISA backend {backend!r} for {address!r} cannot be loaded ({first}); {hint}, "
                "or end the address with @py for pyvisa-py"
            ) from None
        timeout_ms = max(1, round(timeout_s * 1000))
        try:
            self._resource = self._manager.open_resource(
                resource_name,
                read_termination="\n",  # enables the termination character: a read is a line
                write_termination="",  # the driver sends its own newlines (write_raw)
                timeout=timeout_ms,
                open_timeout=timeout_ms,
            )
        except Exception as exc:  # pyvisa-py raises bare Exception for a failed connect
            self._manager.close()
            raise _open_error(address, exc, pyvisa) from None
        if not hasattr(self._resource, "read_raw"):
            self._resource.close()
            self._manager.close()
            kind = type(self._resource).__name__
            raise MeterConfigError(
                f"VISA resource {address!r} is not message-based (a {kind}); use its ::INSTR or "
                "::SOCKET resource"
            )
        self._buffer = bytearray()
        logger.debug("VISA resource %s opened with backend %s", resource_name, backend)

    def _fail(self, what: str, exc: BaseException) -> MeterPortError:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, ConnectionRefusedError):  # pyvisa-py connects lazily: seen here
            return MeterPortError(
                f"power meter VISA resource {self.address!r} refused the connection; check the "
                "IP address and that the meter's SCPI port is enabled"
            )
        return MeterPortError(
            f"power meter VISA resource {self.address!r} failed while {what}: {first}; "
            "check the cable or network and that nothing else uses the meter"
        )

    def _set_timeout(self, timeout_s: float) -> None:
        self._resource.timeout = max(0, round(timeout_s * 1000))

    def _fill(self, deadline: float) -> bool:
        """Read one more message into the buffer; False if none came before ``deadline``."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self._set_timeout(remaining)
        try:
            chunk = self._resource.read_raw()
        except self._pyvisa.errors.VisaIOError as exc:
            if exc.error_code == self._timeout_code:
                return False
            raise self._fail("reading", exc) from None
        except OSError as exc:  # pyvisa-py lets socket errors through
            raise self._fail("reading", exc) from None
        self._buffer += chunk
        return bool(chunk)

    def write(self, data: bytes) -> None:
        try:
            self._resource.write_raw(data)
        except (self._pyvisa.errors.VisaIOError, OSError) as exc:
            raise self._fail("writing", exc) from None

    def read_line(self, timeout_s: float) -> bytes:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            if not self._fill(deadline):
                out = bytes(self._buffer)  # fewer: no newline within timeout_s
                self._buffer.clear()
                return out
        end = self._buffer.index(b"\n") + 1
        out = bytes(self._buffer[:end])
        del self._buffer[:end]
        return out

    def read_exact(self, size: int, timeout_s: float) -> bytes:
        while len(self._buffer) < size:
            # as pyserial's timeout: fewer bytes if nothing arrives for timeout_s
            if not self._fill(time.monotonic() + timeout_s):
                break
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out

    def discard_input(self) -> None:
        self._buffer.clear()
        for _ in range(_MAX_DISCARD_MESSAGES):
            if not self._fill(time.monotonic() + _DISCARD_WAIT_S):
                break
            self._buffer.clear()
        self._buffer.clear()

    def close(self) -> None:
        for closing in (self._resource, self._manager):
            try:
                closing.close()
            except Exception as exc:  # closing must not mask the error that led here
                logger.debug("closing VISA resource %s: %s", self.address, exc)


__all__ = ["DEFAULT_BACKEND", "VisaTransport", "is_visa_address", "split_backend"]

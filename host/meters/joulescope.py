"""Optional driver for a Joulescope JS110 or JS220 in series with the board's supply.

The Joulescope measures current and voltage itself and reports power; it is an optional extra:
the ``joulescope`` package is imported when the meter opens, and its absence is a one-line
:class:`MeterConfigError` (``pip install joulescope``). Specs: ``joulescope`` (the only one
connected) or ``joulescope:SERIAL`` (the device whose name contains ``SERIAL``).

Streaming: the instrument downsamples on its side to ``sample_rate_hz`` (its
``sampling_frequency`` parameter) and pushes blocks to the host, which a registered stream
process (:meth:`_Sink.stream_notify`) turns into power samples. Sample ``k`` (the Joulescope's
sample id) is stamped ``anchor_s + k / sample_rate_hz`` on the host clock: for every block, the
host arrival time minus the duration of the samples up to its end bounds the anchor from above;
the anchor is the smallest such bound seen (the block that came with the least delay), so
stamps are late by the smallest delivery latency (milliseconds). The Joulescope's clock drift
is not corrected (tens of ppm: a few ms per minute).

Untested here against hardware or the package; the calls used (``scan``, ``parameter_set``,
``stream_process_register``, ``start``, ``stream_buffer.samples_get``) are those of the
joulescope 1.x API as documented.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from host.meters.base import (
    MeterConfigError,
    MeterError,
    MeterPortError,
    MeterProtocolError,
    PowerMeter,
    register_meter,
)

logger = logging.getLogger(__name__)

MISSING = (
    "power meter 'joulescope' needs the joulescope package: pip install joulescope; "
    "the Joulescope JS110/JS220 driver is an optional extra"
)


@dataclass
class JoulescopeConfig:
    """Settings of the Joulescope driver; every field may be passed to ``open_meter``.

    Attributes:
        sample_rate_hz: Output rate after the instrument's downsampling (its
            ``sampling_frequency``; 1, 2, 5, 10, ... 1000 ... up to the native 2 MHz (JS110) or
            1 MHz (JS220), in 1-2-5 steps).
        buffer_duration_s: The host-side stream buffer (joulescope ``buffer_duration``).
        current_range: The joulescope ``i_range`` parameter (``"auto"`` or a fixed range).
    """

    sample_rate_hz: int = 1000
    buffer_duration_s: float = 2.0
    current_range: str = "auto"

    def __post_init__(self) -> None:
        if not (isinstance(self.sample_rate_hz, int) and self.sample_rate_hz >= 1):
            raise MeterConfigError(
                f"sample_rate_hz={self.sample_rate_hz!r} must be a whole number of samples per "
                "second, e.g. 1000"
            )
        if not (math.isfinite(self.buffer_duration_s) and self.buffer_duration_s > 0):
            raise MeterConfigError(
                f"buffer_duration_s={self.buffer_duration_s!r} must be a positive time"
            )


def import_joulescope() -> Any:
    """The ``joulescope`` module, or a one-line :class:`MeterConfigError` if it is missing."""
    try:
        import joulescope
    except ImportError:
        raise MeterConfigError(MISSING) from None
    return joulescope


class _Sink:
    """A joulescope stream process: collects power and sample ids from each block."""

    def __init__(self, meter: Joulescope) -> None:
        self._meter = meter
        self._next_id: int | None = None

    def stream_notify(self, stream_buffer: Any) -> bool:
        """Called by the joulescope package for each block; False keeps streaming."""
        arrived_s = time.monotonic()
        try:
            start, end = (int(v) for v in stream_buffer.sample_id_range)
            first = start if self._next_id is None else max(self._next_id, start)
            if end <= first:
                return False
            data = stream_buffer.samples_get(first, end, fields=["power"])
            power = np.asarray(data["signals"]["power"]["value"], dtype=np.float64)
        except Exception as exc:  # the package's errors are not typed; report one line
            self._meter._fail(
                MeterProtocolError(
                    f"Joulescope {self._meter.address or '(any)'!r} sent a block the driver "
                    f"cannot read ({type(exc).__name__}: {exc}); check the joulescope version"
                )
            )
            return True  # stop streaming
        if self._next_id is not None and first > self._next_id:  # the buffer wrapped
            self._meter._lost(first - self._next_id)
        self._next_id = first + power.size
        self._meter._push(first, power, arrived_s)
        return False


@register_meter("joulescope")
class Joulescope(PowerMeter):
    """A Joulescope JS110/JS220: ``joulescope`` or ``joulescope:SERIAL``.

    ``options`` are fields of :class:`JoulescopeConfig` (or pass ``config``).
    """

    needs_address = False

    def __init__(
        self, address: str = "", config: JoulescopeConfig | None = None, **options: Any
    ) -> None:
        super().__init__(address)
        known = {f.name for f in dataclasses.fields(JoulescopeConfig)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise MeterConfigError(
                f"unknown option(s) {unknown!r} for joulescope; known: {', '.join(sorted(known))}"
            )
        self.config = dataclasses.replace(config or JoulescopeConfig(), **options)
        self._device: Any = None
        self._lock = threading.Lock()
        self._ids: list[np.ndarray] = []
        self._powers: list[np.ndarray] = []
        self._anchor_s = math.inf
        self._failure: MeterError | None = None
        self._running = False
        self._last_stamp_s = -math.inf
        self.lost_samples = 0

    def open(self) -> None:
        """Find the device, open it and set its rate and current range."""
        if self._device is not None:
            return
        joulescope = import_joulescope()
        devices = list(joulescope.scan(config="auto"))
        chosen = [d for d in devices if self.address in str(d)] if self.address else devices
        if len(chosen) != 1:
            found = ", ".join(str(d) for d in devices) or "none"
            raise MeterPortError(
                f"Joulescope {self.address or '(any)'!r} matched {len(chosen)} devices (found: "
                f"{found}); connect one, or write joulescope:SERIAL"
            )
        device = chosen[0]
        try:
            device.open()
            device.parameter_set("sampling_frequency", self.config.sample_rate_hz)
            device.parameter_set("buffer_duration", self.config.buffer_duration_s)
            device.parameter_set("i_range", self.config.current_range)
        except Exception as exc:  # untyped package errors: one line, the value, what to do
            with contextlib.suppress(Exception):
                device.close()
            raise MeterConfigError(
                f"Joulescope {str(device)!r} refused its settings ({exc}); check "
                f"sample_rate_hz={self.config.sample_rate_hz!r} and current_range="
                f"{self.config.current_range!r}"
            ) from None
        self._device = device
        logger.info("Joulescope %s open at %d Hz", device, self.config.sample_rate_hz)

    def identify(self) -> str:
        """The device's name (model and serial number)."""
        return f"Joulescope {self._device}" if self._device is not None else "Joulescope"

    @property
    def simulated(self) -> bool:
        """False: this driver opens a real Joulescope through its package (there is no
        stand-in for it here)."""
        return False

    def start(self) -> None:
        """Start streaming; blocks arrive on the joulescope package's thread."""
        if self._running:
            return
        if self._device is None:
            raise MeterError("Joulescope is not open; call open() first")
        with self._lock:
            self._ids, self._powers, self._failure = [], [], None
            self._anchor_s = math.inf
            self.lost_samples = 0
        self._device.stream_process_register(_Sink(self))
        self._device.start(stop_fn=None)
        self._running = True

    # -- called from the package's thread ----------------------------------------------------
    def _push(self, first_id: int, power: np.ndarray, arrived_s: float) -> None:
        end = first_id + power.size
        with self._lock:
            self._anchor_s = min(self._anchor_s, arrived_s - end / self.config.sample_rate_hz)
            self._ids.append(first_id + np.arange(power.size, dtype=np.float64))
            self._powers.append(power)

    def _lost(self, count: int) -> None:
        with self._lock:
            self.lost_samples += count
        logger.warning("Joulescope dropped %d samples (the host fell behind)", count)

    def _fail(self, error: MeterError) -> None:
        logger.error("%s", error)
        with self._lock:
            self._failure = error

    # -- host side ---------------------------------------------------------------------------
    def read_samples(self) -> tuple[np.ndarray, np.ndarray]:
        """New samples since the last call: host ``time.monotonic()`` seconds and watts."""
        with self._lock:
            if self._failure is not None:
                raise self._failure
            if not self._ids:
                return np.empty(0), np.empty(0)
            ids, power = np.concatenate(self._ids), np.concatenate(self._powers)
            self._ids, self._powers = [], []
            anchor_s = self._anchor_s
        times = anchor_s + (ids + 0.5) / self.config.sample_rate_hz  # the middle of each sample
        times = np.maximum(times, self._last_stamp_s + 1e-9 * np.arange(1, times.size + 1))
        self._last_stamp_s = float(times[-1])
        return times, power

    def stop(self) -> None:
        """Stop streaming; samples received so far stay available to :meth:`read_samples`."""
        if not self._running:
            return
        self._running = False
        try:
            self._device.stop()
        except Exception as exc:  # untyped package errors
            logger.error("stopping the Joulescope: %s", exc)

    def close(self) -> None:
        """Stop streaming and close the device."""
        try:
            self.stop()
        finally:
            if self._device is not None:
                try:
                    self._device.close()
                except Exception as exc:  # closing must not mask the error that led here
                    logger.debug("closing the Joulescope: %s", exc)
                self._device = None


__all__ = ["MISSING", "Joulescope", "JoulescopeConfig", "import_joulescope"]

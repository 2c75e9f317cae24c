"""Where a run's energy came from: decided by what the board and the meter say they are.

The board says in HELLO_REPLY what runs its graphs (``backend``: ``cpu``, ``finn`` or
``emulated``, docs/protocol.md); every meter driver says whether its instrument is a stand-in
(``PowerMeter.simulated``, read from the instrument). From those two facts alone:

==================  ===================  =================================================
board backend       meter                energy source
==================  ===================  =================================================
any                 none                 ``none``: timing only
``finn``            real                 ``hardware``: measured on hardware
``cpu``             real                 ``arm_only``: measured, ARM only (no FINN engine)
``emulated``        any                  ``emulated``
any                 simulated            ``emulated``
==================  ===================  =================================================

Nothing else (the board's identity text, the port's name) can make a run "measured on
hardware". A table mixes no two sources (measurements/table1.py refuses it).
"""

from __future__ import annotations

from wire.protocol import BOARD_BACKENDS

ENERGY_SOURCES = {
    "hardware": "measured on hardware",
    "arm_only": "measured, ARM only",
    "emulated": "emulated",
    "none": "no energy (timing only)",
}
"""Energy source token (as run folders record it) -> the words every table and plot uses."""


class ProvenanceError(ValueError):
    """A board or meter says something the rules above do not cover."""


def energy_source(backend: str, meter_kind: str, meter_simulated: bool) -> str:
    """The energy source token (a key of :data:`ENERGY_SOURCES`) of a run.

    ``backend`` is HELLO_REPLY's; ``meter_kind`` the meter spec's kind (``none`` for no meter);
    ``meter_simulated`` the driver's :attr:`~host.meters.PowerMeter.simulated`.
    """
    if backend not in BOARD_BACKENDS:
        raise ProvenanceError(
            f"the board reports backend {backend!r}, none of {', '.join(BOARD_BACKENDS)}; "
            "update the board runtime"
        )
    if not isinstance(meter_simulated, bool):
        raise ProvenanceError(f"meter_simulated={meter_simulated!r} must be True or False")
    if meter_kind == "none":
        return "none"
    if meter_simulated or backend == "emulated":
        return "emulated"
    return "hardware" if backend == "finn" else "arm_only"

"""The emulated ZedBoard and its simulated lab instruments (see docs/power-meter.md).

Each stand-in speaks the same bytes as the real part, so the real host code runs against it:
:mod:`fpga.emulator.power` holds the ground-truth power model that the emulated board drives,
:mod:`fpga.emulator.meter` a simulated Keysight 34465A that measures it over SCPI (on the
generic machinery of :mod:`fpga.emulator.scpi`) and provides the host's ``sim`` meter kind, and
:mod:`fpga.emulator.wattsup` a simulated Watts Up? PRO.

Importing this package imports nothing else; import the submodules you need.
"""


class EmulatorError(Exception):
    """Base class of the errors that the emulated board and instruments report to their user."""

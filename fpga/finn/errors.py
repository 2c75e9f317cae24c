"""Exceptions raised by the FINN front end (:mod:`fpga.finn`).

Every user-facing failure derives from :class:`FinnFrontendError`; the command line catches it,
prints its one-line message and exits with status 1 (``--debug`` re-raises). Messages name the
bad value with ``{!r}`` and say what to do. This module imports nothing, so callers can catch
these errors without FINN installed.
"""


class FinnFrontendError(Exception):
    """Base class of the errors that fpga.finn reports to its user."""


class ToolchainError(FinnFrontendError):
    """finn-plus is missing or of another version, or a step needs Vivado, which is absent."""


class GraphError(FinnFrontendError):
    """A bundle graph is not what the front end expects (input quantizer, layers FINN lacks)."""


class BuildError(FinnFrontendError):
    """FINN's builder stopped before the last step; its log says why."""

"""Exceptions raised by the export stage and the bundle executor.

Every user-facing failure derives from :class:`ExportError`; the command line catches it, prints
its one-line message and exits with status 1 (``--debug`` re-raises). This module is imported on
the board (no torch), so it imports nothing.
"""


class ExportError(Exception):
    """Base class of the errors that export/ reports to its user."""


class BundleError(ExportError):
    """A bundle is missing, incomplete, tampered with, or of an unknown manifest version."""


class ExecutionError(ExportError):
    """The executor was given input it cannot run (shape, dtype, mode or budget)."""

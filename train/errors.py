"""Exceptions raised by the training stage.

Every user-facing failure derives from :class:`TrainError`; the command-line entry points catch
it, print its one-line message and exit with status 1 (``--debug`` re-raises).
"""


class TrainError(Exception):
    """Base class of the errors that the training stage reports to its user."""


class DataError(TrainError):
    """CIFAR-10 could not be found, read or verified."""


class CheckpointError(TrainError):
    """A checkpoint is missing, corrupt, of another format or of another model family."""


class ConfigError(TrainError):
    """A model name, option or training setting is invalid."""

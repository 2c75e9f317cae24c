"""Exceptions raised by the training stage.

Every user-facing failure of the stage derives from :class:`TrainError`; the command-line entry
points catch it and the CIFAR-10 reader's :class:`~cifar.errors.DataError` (re-exported here),
print the one-line message and exit with status 1 (``--debug`` re-raises).
"""

from cifar.errors import DataError

__all__ = ["CheckpointError", "ConfigError", "DataError", "RecordError", "TrainError"]


class TrainError(Exception):
    """Base class of the errors that the training stage reports to its user."""


class CheckpointError(TrainError):
    """A checkpoint is missing, corrupt, of another format or of another model family."""


class ConfigError(TrainError):
    """A model name, option or training setting is invalid."""


class RecordError(TrainError):
    """A run's record (``metrics.json``, ``eval.json``) is unreadable or of another format."""

"""The exception of the CIFAR-10 reader.

:class:`DataError` is the reader's one user-facing failure (one line naming the file and what to
do). It is not a :class:`train.errors.TrainError`: the reader sits below every stage, so each
command line that reads CIFAR-10 catches it beside its own base class.
"""


class DataError(Exception):
    """CIFAR-10 could not be found, read or verified."""

"""The board's errors live in :mod:`wire.errors` (shared with the host); re-exported here so the
board runtime's own modules keep one short import."""

from wire.errors import (  # noqa: F401
    BoardError,
    CommandError,
    LinkError,
    LinkTimeout,
    ProtocolError,
    RemoteError,
    UnknownMessageType,
    VersionMismatch,
)

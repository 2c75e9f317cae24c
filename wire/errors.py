"""Exceptions of the host<->board wire contract, also the base of the board runtime's errors.

Every failure derives from :class:`BoardError`; a command-line entry point catches it, prints its
one-line message and exits with status 1 (``--debug`` re-raises). Messages name the bad value
with ``{!r}`` and say what to do.
"""

from __future__ import annotations


class BoardError(Exception):
    """Base class of the errors of ``wire`` (frames, messages, link) and ``fpga.board``."""


class ProtocolError(BoardError):
    """A frame or message payload is malformed, out of bounds, or of the wrong type."""


class UnknownMessageType(ProtocolError):
    """A frame carries a message type this protocol version does not define.

    A server answers it with ``ERROR(UNKNOWN_COMMAND)``.
    """

    def __init__(self, msg_type: int) -> None:
        super().__init__(
            f"unknown message type {msg_type!r} (0x{msg_type:02x}); host and board speak "
            "different protocol versions: update the older side"
        )
        self.msg_type = msg_type


class VersionMismatch(ProtocolError):
    """The peer speaks another protocol version (a frame header or HELLO says so)."""


class LinkError(BoardError):
    """The serial port failed (closed, unplugged) or the link cannot go on."""


class LinkTimeout(LinkError):
    """No valid reply came back after every retransmission (or every smaller frame)."""


class CommandError(BoardError):
    """Raised by a board-side command handler: the server answers ``ERROR(code, message)``.

    ``code`` is an :class:`wire.protocol.ErrorCode`.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RemoteError(BoardError):
    """The board answered a command with an ERROR reply.

    ``code`` is the :class:`wire.protocol.ErrorCode`, ``remote_message`` the board's text.
    """

    def __init__(self, code: int, remote_message: str, command: str, port: str) -> None:
        name = getattr(code, "name", str(code))
        super().__init__(f"board on {port!r} refused {command}: {name}: {remote_message}")
        self.code = code
        self.remote_message = remote_message
        self.command = command
        self.port = port

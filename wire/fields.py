"""The field tables that lay out every message of :mod:`wire.protocol`, on ``struct``.

A :class:`Record` is a frozen dataclass with a ``LAYOUT``: its fields in wire order, each a
:class:`Field` that checks a value (whenever a record is built, by its sender or by a decoder),
packs it and reads it back, and says in ``doc`` how it is laid out. The table is the one place a
layout is written: it encodes, decodes and writes the ``Layout:`` line of the class docstring
and the layouts of docs/protocol.md. Any bad value or short payload is a one-line
:class:`~wire.errors.ProtocolError`.

Hand-written on ``struct`` rather than a declarative library such as ``construct``: this runs on
the board (PYNQ's Python 3.10 on armhf) with numpy and pyserial as its only dependencies.
"""

from __future__ import annotations

import enum
import re
import struct
from typing import Any, ClassVar

import numpy as np

from wire.errors import ProtocolError


def truncate_utf8(text: str, max_bytes: int) -> str:
    """``text`` as valid UTF-8 (unencodable characters become ``?``) of at most ``max_bytes``,
    never cut inside a character; a cut text ends in ``...``."""
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return data.decode("utf-8")
    return data[: max(0, max_bytes - 3)].decode("utf-8", "ignore") + "..."


class _Reader:
    """Reads fields from a payload; any shortfall is a one-line ProtocolError."""

    def __init__(self, payload: bytes, owner: str) -> None:
        self.data = bytes(payload)
        self.pos = 0
        self.owner = owner

    def take(self, n: int, name: str) -> bytes:
        left = len(self.data) - self.pos
        if n > left:
            raise ProtocolError(
                f"{self.owner} payload is truncated: {name!r} needs {n} bytes at offset "
                f"{self.pos}, {left} left; the sender is broken or speaks another version"
            )
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def unpack(self, st: struct.Struct, name: str) -> tuple:
        return st.unpack(self.take(st.size, name))

    def end(self) -> None:
        extra = len(self.data) - self.pos
        if extra:
            raise ProtocolError(
                f"{self.owner} payload has {extra} unexpected trailing bytes; "
                "the sender is broken or speaks another version"
            )


class Field:
    """One field of a layout: ``check(owner, name, value) -> value``, ``pack``, ``unpack``."""

    doc = ""

    def check(self, owner: str, name: str, value: Any) -> Any:
        return value

    def pack(self, value: Any) -> bytes:
        raise NotImplementedError

    def unpack(self, r: _Reader, name: str) -> Any:
        raise NotImplementedError


def _int(owner: str, name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ProtocolError(f"{owner}.{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ProtocolError(f"{owner}.{name} = {value!r} is outside [{lo}, {hi}]")
    return int(value)


class Int(Field):
    """An integer in ``struct`` format ``fmt`` (B, H, I, Q unsigned; q signed), within
    [``lo``, ``hi``] (default: the format's range)."""

    _NAMES: ClassVar[dict[str, str]] = {
        "B": "u8",
        "H": "u16",
        "I": "u32",
        "Q": "u64",
        "q": "i64",
        "b": "i8",
    }

    def __init__(self, fmt: str, lo: int | None = None, hi: int | None = None) -> None:
        self.st = struct.Struct("<" + fmt)
        bits = 8 * self.st.size
        signed = fmt.islower()
        self.lo = (-(1 << (bits - 1)) if signed else 0) if lo is None else lo
        self.hi = ((1 << (bits - 1 if signed else bits)) - 1) if hi is None else hi
        self.doc = self._NAMES[fmt]

    def check(self, owner: str, name: str, value: Any) -> Any:
        return _int(owner, name, value, self.lo, self.hi)

    def pack(self, value: Any) -> bytes:
        return self.st.pack(value)

    def unpack(self, r: _Reader, name: str) -> Any:
        return r.unpack(self.st, name)[0]


class Enum(Int):
    """An :class:`enum.IntEnum` value in ``fmt``; a value the enum lacks is refused, unless
    ``keep_unknown`` (it stays a plain int, e.g. a newer board's error code)."""

    def __init__(self, kind: type[enum.IntEnum], fmt: str = "B", keep_unknown: bool = False):
        super().__init__(fmt)
        self.kind, self.keep_unknown = kind, keep_unknown
        self.doc = f"{self.doc} ({kind.__name__})"

    def check(self, owner: str, name: str, value: Any) -> Any:
        number = super().check(owner, name, value)
        try:
            return self.kind(number)
        except ValueError:
            if self.keep_unknown:
                return number
            raise ProtocolError(
                f"{owner}.{name} = {value!r} is not a {self.kind.__name__} "
                f"({', '.join(m.name for m in self.kind)})"
            ) from None


class Text(Field):
    """UTF-8 text after its byte count (``u8`` or ``u16``), at most ``max_bytes``; an ``ident``
    is non-empty and printable."""

    def __init__(self, max_bytes: int, count: str = "B", *, ident: bool = False) -> None:
        self.max_bytes, self.ident = max_bytes, ident
        self.count = struct.Struct("<" + count)
        self.doc = f"text{8 * self.count.size} (<= {max_bytes} B)"

    def check(self, owner: str, name: str, value: Any) -> Any:
        if not isinstance(value, str):
            raise ProtocolError(f"{owner}.{name} must be a str, got {value!r}")
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise ProtocolError(f"{owner}.{name} {value!r} cannot be encoded as UTF-8") from None
        if size > self.max_bytes:
            raise ProtocolError(
                f"{owner}.{name} is {size} bytes of UTF-8, more than {self.max_bytes}"
            )
        if self.ident and (not value or not value.isprintable()):
            raise ProtocolError(f"{owner}.{name} {value!r} must be non-empty and printable")
        return value

    def pack(self, value: Any) -> bytes:
        raw = value.encode("utf-8")
        return self.count.pack(len(raw)) + raw

    def unpack(self, r: _Reader, name: str) -> Any:
        raw = r.take(r.unpack(self.count, name)[0], name)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{r.owner}.{name} is not UTF-8: {raw[:32]!r}") from None


_SHA256 = re.compile(r"[0-9a-f]{64}")


class Sha256(Field):
    """A sha256 digest: 32 raw bytes on the wire, 64 lowercase hex digits in Python."""

    doc = "32 B"

    def check(self, owner: str, name: str, value: Any) -> Any:
        if not isinstance(value, str) or not _SHA256.fullmatch(value.lower()):
            raise ProtocolError(
                f"{owner}.{name} {value!r} is not a sha256 hex digest (64 hex digits)"
            )
        return value.lower()

    def pack(self, value: Any) -> bytes:
        return bytes.fromhex(value)

    def unpack(self, r: _Reader, name: str) -> Any:
        return r.take(32, name).hex()


class Blob(Field):
    """The rest of the payload as bytes, ``lo`` .. ``hi`` of them (always the last field)."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        self.doc = f"bytes (the rest of the payload, {lo}..{hi})"

    def check(self, owner: str, name: str, value: Any) -> Any:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ProtocolError(f"{owner}.{name} must be bytes, got {type(value).__name__}")
        value = bytes(value)
        if not self.lo <= len(value) <= self.hi:
            raise ProtocolError(
                f"{owner}.{name} is {len(value)!r} bytes, outside [{self.lo}, {self.hi}]"
            )
        return value

    def pack(self, value: Any) -> bytes:
        return value

    def unpack(self, r: _Reader, name: str) -> Any:
        return r.take(len(r.data) - r.pos, name)


class Struct(Field):
    """A nested record (:class:`Record` subclass) laid out by its own table."""

    def __init__(self, kind: type[Record], optional: bool = False) -> None:
        self.kind, self.optional = kind, optional
        inner = " + ".join(f"{n} {f.doc}" for n, f in kind.LAYOUT)
        self.doc = f"presence u8 (0/1) [+ {inner}]" if optional else f"({inner})"

    def check(self, owner: str, name: str, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if not isinstance(value, self.kind):
            raise ProtocolError(f"{owner}.{name} must be a {self.kind.__name__}, got {value!r}")
        return value

    def pack(self, value: Any) -> bytes:
        if self.optional:
            return b"\x00" if value is None else b"\x01" + value.encode()
        return value.encode()

    def unpack(self, r: _Reader, name: str) -> Any:
        if self.optional:
            (present,) = r.unpack(_U8, name)
            if present not in (0, 1):
                raise ProtocolError(f"{r.owner}.{name} presence byte is {present!r}, not 0 or 1")
            if not present:
                return None
        return self.kind.read(r)


class Items(Field):
    """A tuple of at most ``max_items`` records after their count (u16)."""

    def __init__(self, kind: type[Record], max_items: int) -> None:
        self.kind, self.max_items = kind, max_items
        inner = ", ".join(f"{n} {f.doc}" for n, f in kind.LAYOUT)
        self.doc = f"n u16 (<= {max_items}), n x ({inner})"

    def check(self, owner: str, name: str, value: Any) -> Any:
        items = tuple(value)
        if len(items) > self.max_items or not all(isinstance(i, self.kind) for i in items):
            raise ProtocolError(
                f"{owner}.{name} must be at most {self.max_items} {self.kind.__name__}, "
                f"got {len(items)}"
            )
        return items

    def pack(self, value: Any) -> bytes:
        return _U16.pack(len(value)) + b"".join(item.encode() for item in value)

    def unpack(self, r: _Reader, name: str) -> Any:
        (n,) = r.unpack(_U16, name)
        if n > self.max_items:
            raise ProtocolError(f"{r.owner}.{name} lists {n!r}, more than {self.max_items}")
        return tuple(self.kind.read(r) for _ in range(n))


class Shape(Field):
    """An image shape (H, W, C): three u16, each at least 1."""

    doc = "H, W, C u16 each"
    _ST = struct.Struct("<3H")

    def check(self, owner: str, name: str, value: Any) -> Any:
        try:
            dims = tuple(_int(owner, name, d, 1, 0xFFFF) for d in value)
        except TypeError:
            raise ProtocolError(f"{owner}.{name} must be (H, W, C), got {value!r}") from None
        if len(dims) != 3:
            raise ProtocolError(f"{owner}.{name} must be (H, W, C), got {value!r}")
        return dims

    def pack(self, value: Any) -> bytes:
        return self._ST.pack(*value)

    def unpack(self, r: _Reader, name: str) -> Any:
        return r.unpack(self._ST, name)


_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")


# ----------------------------------------------------------------------------------------------
# Records and messages: a dataclass plus its LAYOUT table


class Record:
    """A frozen dataclass whose payload layout is ``LAYOUT`` (wire order; it may differ from the
    constructor's). ``check()`` holds the checks that span fields."""

    LAYOUT: ClassVar[tuple[tuple[str, Field], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = "LAYOUT" in vars(cls) or "TYPE" in vars(cls)
        if declared and cls.__doc__ and "Layout:" not in cls.__doc__:
            cls.__doc__ = f"{cls.__doc__.rstrip()}\n\n    Layout: ``{cls.layout()}``.\n"

    @classmethod
    def layout(cls) -> str:
        """The payload layout in words, from the table (``empty`` for no fields)."""
        return " | ".join(f"{name} {f.doc}" for name, f in cls.LAYOUT) or "empty"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name, f in self.LAYOUT:
            object.__setattr__(self, name, f.check(owner, name, getattr(self, name)))
        self.check()

    def check(self) -> None:
        """Checks across fields (raise ProtocolError)."""

    def encode(self) -> bytes:
        return b"".join(f.pack(getattr(self, name)) for name, f in self.LAYOUT)

    @classmethod
    def read(cls, r: _Reader) -> Any:
        return cls(**{name: f.unpack(r, name) for name, f in cls.LAYOUT})

    @classmethod
    def decode(cls, payload: bytes) -> Any:
        r = _Reader(payload, cls.__name__)
        out = cls.read(r)
        r.end()
        return out

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.encode() == other.encode()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.encode()))

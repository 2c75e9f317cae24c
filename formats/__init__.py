"""The ``format`` and ``version`` of every JSON document ddi-fpga writes and reads back.

Each document has one owner module: it names the document's ``format`` (``ddi-fpga-<name>``)
and ``version``, writes both fields and, on reading, checks them with :func:`check`, which
raises the owner's own error class with one line naming the file, what it holds and what to
do. A reader is strict: a document of another format or version, or one without the fields,
is refused rather than guessed at.

This package imports nothing of the project and nothing outside the standard library, so every
package may use it without an import cycle, the board's runtime included (Python 3.10).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["check", "read"]


def read(
    path: str | os.PathLike,
    format: str,
    version: int,
    *,
    error: type[Exception],
    remedy: str,
    what: str = "",
    version_key: str = "version",
) -> dict[str, Any]:
    """The JSON document at ``path``, :func:`check`-ed. A file that cannot be read or parsed
    is ``error`` in one line (``what``, e.g. ``"the metrics"``, names the document);
    ``FileNotFoundError`` passes, for the caller to say how to make the file."""
    path = Path(path)
    name = f"{what} {str(path)!r}" if what else repr(str(path))
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise error(f"cannot read {name}: {exc}") from None
    return check(
        document, format, version, source=name, error=error, remedy=remedy, version_key=version_key
    )


def check(
    document: Any,
    format: str,
    version: int,
    *,
    source: str,
    error: type[Exception],
    remedy: str,
    version_key: str = "version",
) -> dict[str, Any]:
    """``document`` if it is an object of ``format`` and ``version``; else ``error`` with one
    line: ``source`` (the file, as the message names it), what it holds, then ``remedy``.

    ``version_key`` is the name of the version field (checkpoints say ``format_version``).
    """
    if not isinstance(document, dict):
        raise error(
            f"{source} holds a {type(document).__name__}, not a {format!r} object; {remedy}"
        )
    got_format, got_version = document.get("format"), document.get(version_key)
    # type() is int: JSON's true is not version 1
    if got_format != format or type(got_version) is not int or got_version != version:
        raise error(
            f"{source} has format {got_format!r} {version_key} {got_version!r}, not "
            f"{format!r} {version_key} {version}; {remedy}"
        )
    return document

"""The sandbox's state file: written whole and atomically, read back after a restart.

A save writes the whole state to a temporary file in the state file's directory, flushes
and fsyncs it, and renames it over the state file (``os.replace``, atomic on POSIX and
Windows), then fsyncs the directory. A crash at any moment leaves either the previous file
or the new one, never a mix; at worst a stray temporary file beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

#: The file's ``format`` and ``version``: a file of another format or a later version is
#: refused rather than half understood.
FORMAT = "ledgepay-sandbox-state"
VERSION = 1


class StateFileError(ValueError):
    """A state file that exists but cannot be read back."""


def dump(state: str, deliveries: list[dict[str, Any]]) -> bytes:
    """The file's content: LedgePay's state (``LedgePayState.snapshot()``, a JSON object)
    and the webhook deliveries still to make."""
    head = json.dumps({"format": FORMAT, "version": VERSION})[:-1]
    tail = json.dumps(deliveries, separators=(",", ":"))
    return f'{head},"state":{state},"deliveries":{tail}}}'.encode()


def load(path: Path) -> dict[str, Any] | None:
    """The document in ``path``, or None when there is no such file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise StateFileError(
            f"Cannot read the sandbox state file {path}: {err.strerror}."
        ) from err
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise unreadable(path, "it is not complete JSON") from err
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise unreadable(path, "it is not a LedgePay sandbox state file")
    if document.get("version") != VERSION:
        raise unreadable(
            path, f"it is of version {document.get('version')!r}; this sandbox reads {VERSION}"
        )
    return document


def unreadable(path: Path, reason: str) -> StateFileError:
    return StateFileError(
        f"Cannot read the sandbox state file {path}: {reason}. Move it away to start with an "
        "empty sandbox, or use another file."
    )


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path``'s content with ``data`` so that a crash leaves the old or the new."""
    directory = path.parent
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable, where the system allows (not on Windows)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)

"""A VM's console log as the parts read it: its size, what came after a byte
offset, whether a marker (contract.MARK_*) appeared. One definition for the
local spawner's boot watch, the lab manager's reset and ``labvm``."""

from __future__ import annotations

import os


def size(path: str | os.PathLike) -> int:
    """Bytes in the log now (0 if there is none yet)."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def read_since(path: str | os.PathLike, offset: int) -> bytes | None:
    """What the log holds from byte ``offset`` on; None if there is no log."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return None


def has_marker(path: str | os.PathLike, marker: str, since: int = 0) -> bool | None:
    """Whether ``marker`` appears after byte ``since``; None if there is no log."""
    data = read_since(path, since)
    return None if data is None else marker.encode() in data

"""Write newc cpio archives, the format the Linux initramfs unpacker reads.

The kernel unpacks every archive it finds in the initrd, one after another,
so a small per-VM archive appended to the shared guest initramfs overlays
files (ssh keys) without rebuilding or copying the base image's contents.
ref: Documentation/driver-api/early-userspace/buffer-format.rst
"""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member: a directory (``data is None``) or a regular file."""

    path: str
    mode: int
    data: bytes | None = None


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, mode: int, nlink: int, size: int, name: bytes) -> bytes:
    fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name) + 1, 0]
    return _MAGIC + b"".join(b"%08X" % f for f in fields)


def newc_archive(entries: list[Entry]) -> bytes:
    """Return an uncompressed newc archive holding ``entries`` (owner root).

    Paths are stored relative (no leading ``/``); parents must be listed
    before their children, as the kernel creates them in order.
    """
    out = bytearray()
    for ino, entry in enumerate([*entries, Entry(_TRAILER, 0)], start=1):
        name = entry.path.lstrip("/").encode()
        if not name:
            raise ValueError("cpio entry with an empty path")
        if entry.path == _TRAILER:
            mode, data, nlink = 0, b"", 1
        elif entry.data is None:
            mode, data, nlink = stat.S_IFDIR | entry.mode, b"", 2
        else:
            mode, data, nlink = stat.S_IFREG | entry.mode, entry.data, 1
        head = _header(ino, mode, nlink, len(data), name) + name + b"\0"
        out += head + _pad4(len(head)) + data + _pad4(len(data))
    return bytes(out)


def gzip_archive(entries: list[Entry]) -> bytes:
    """``newc_archive`` compressed with gzip, reproducibly (mtime 0)."""
    return gzip.compress(newc_archive(entries), mtime=0)

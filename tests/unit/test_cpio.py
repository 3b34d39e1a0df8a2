import gzip
import stat

import pytest

from kubevirt_spawner.cpio import Entry, gzip_archive, newc_archive


def read_newc(data: bytes):
    """A minimal independent newc reader: [(name, mode, body)]."""
    out, pos = [], 0
    while True:
        assert data[pos : pos + 6] == b"070701", f"bad magic at {pos}"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = data[name_start : name_start + namesize - 1].decode()
        body_start = (name_start + namesize + 3) & ~3
        body = data[body_start : body_start + size]
        pos = (body_start + size + 3) & ~3
        if name == "TRAILER!!!":
            return out, pos
        out.append((name, mode, body))


def test_round_trip_dirs_and_files():
    entries = [
        Entry("/root", 0o700),
        Entry("root/key", 0o600, b"abc"),
        Entry("etc", 0o755),
        Entry("etc/x", 0o644, b"12345"),
    ]
    data = newc_archive(entries)
    members, end = read_newc(data)
    assert end == len(data) and len(data) % 4 == 0
    assert members == [
        ("root", stat.S_IFDIR | 0o700, b""),
        ("root/key", stat.S_IFREG | 0o600, b"abc"),
        ("etc", stat.S_IFDIR | 0o755, b""),
        ("etc/x", stat.S_IFREG | 0o644, b"12345"),
    ]


def test_gzip_is_reproducible():
    entries = [Entry("a", 0o644, b"x")]
    assert gzip_archive(entries) == gzip_archive(entries)
    assert gzip.decompress(gzip_archive(entries)) == newc_archive(entries)


def test_empty_path_refused():
    with pytest.raises(ValueError, match="empty path"):
        newc_archive([Entry("/", 0o755)])

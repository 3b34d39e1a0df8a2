"""A gdb remote-protocol relay that never lets gdb kill the VM.

    python -m kubevirt_spawner.gdbrelay unix:/path/to/gdb.sock
    python -m kubevirt_spawner.gdbrelay tcp:HOST:PORT

gdb runs it as the pipe in ``target remote | …`` (that is what
``LAB_GDB_REMOTE`` holds): it passes gdb's stdin to QEMU's gdb stub and the
stub's answers back, byte for byte, except gdb's kill requests. QEMU's stub
ends QEMU on a kill (``k``, or ``vKill`` in extended mode), and gdb sends one
for `kill`, for a second `target remote` in the same session, or when a
front end decides to; the relay sends a detach (``D``) instead, so the VM
resumes and stays up, and says so on stderr (gdb shows it). When gdb goes
away without detaching (killed, crashed), the relay detaches for it: QEMU
stops the VM while a debugger is connected and would leave it stopped. It
detaches only once per connection: QEMU 7.2 crashes on a second detach
(after the first, it has no current CPU and dereferences it). The packet
format is gdb's remote serial protocol: ``$data#xx`` with ``xx`` the
modulo-256 sum of data in hex, ``}`` escaping, ``+``/``-`` acknowledgements,
and a lone 0x03 byte for Ctrl-C (ref: gdb manual, "Overview" of "Remote
Protocol").
"""

from __future__ import annotations

import os
import selectors
import socket
import sys

# Detach from process 1 (QEMU numbers its one process 1): valid whether or
# not the session negotiated gdb's multiprocess extensions, which QEMU keeps
# from one connection to the next (a bare "D" then gets "E22" and the VM
# stays stopped).
DETACH = b"$D;1#b0"


def is_kill(data: bytes) -> bool:
    """``k``, or ``vKill;PID`` in extended-remote mode."""
    return data == b"k" or data == b"vKill" or data.startswith(b"vKill;")


class KillFilter:
    """Splits gdb's byte stream into packets and rewrites kills (pure:
    feed bytes, get the bytes to send on; packets may arrive in pieces)."""

    def __init__(self):
        self._packet: bytearray | None = None  # inside $...#xx, collecting
        self._escaped = False  # the previous byte was the escape '}'
        self._tail = 0  # checksum characters still to come after '#'
        self.kills = 0
        self.detached = False  # a detach went to the stub on this connection

    def feed(self, chunk: bytes) -> bytes:
        out = bytearray()
        for byte in chunk:
            if self._packet is None:
                if byte == ord("$"):
                    self._packet = bytearray(b"$")
                else:
                    out.append(byte)  # acks, Ctrl-C, noise between packets
                continue
            self._packet.append(byte)
            if self._tail:
                self._tail -= 1
                if self._tail == 0:
                    out += self._finish(bytes(self._packet))
                    self._packet = None
            elif self._escaped:
                self._escaped = False  # '}' then the escaped byte: data, even '#'
            elif byte == ord("}"):
                self._escaped = True
            elif byte == ord("#"):
                self._tail = 2
        return bytes(out)

    def _finish(self, raw: bytes) -> bytes:
        data = raw[1:-3]
        if is_kill(data):
            self.kills += 1
            if self.detached:
                return b""  # already detached: a second one would crash QEMU
            self.detached = True
            return DETACH
        if data == b"D" or data.startswith(b"D;"):
            self.detached = True
        return raw


def connect(address: str) -> socket.socket:
    kind, _, where = address.partition(":")
    if kind == "unix" and where:
        s = socket.socket(socket.AF_UNIX)
        s.connect(where)
        return s
    if kind == "tcp" and where.count(":") >= 1:
        host, _, port = where.rpartition(":")
        return socket.create_connection((host.strip("[]"), int(port)), timeout=30)
    raise ValueError(f"not an address: {address!r} (unix:PATH or tcp:HOST:PORT)")


def relay(stub: socket.socket, gdb_in: int, gdb_out: int, log=sys.stderr) -> int:
    """Copy until either side closes; return how many kills became detaches."""
    stub.settimeout(None)
    kills = KillFilter()
    sel = selectors.DefaultSelector()
    sel.register(gdb_in, selectors.EVENT_READ, "gdb")
    sel.register(stub, selectors.EVENT_READ, "stub")
    while True:
        for key, _ in sel.select():
            if key.data == "gdb":
                chunk = os.read(gdb_in, 65536)
                if not chunk:
                    if not kills.detached:
                        _detach_on_the_way_out(stub)
                    return kills.kills
                before = kills.kills
                data = kills.feed(chunk)
                if kills.kills > before:
                    print(
                        "labvm gdb relay: gdb asked to kill the VM; detached instead "
                        "(the VM keeps running; `labvm reset` restarts it)",
                        file=log,
                        flush=True,
                    )
                if data:
                    stub.sendall(data)
            else:
                chunk = stub.recv(65536)
                if not chunk:
                    return kills.kills
                os.write(gdb_out, chunk)


def _detach_on_the_way_out(stub: socket.socket) -> None:
    """Detach (harmless if gdb already did) and wait briefly for the stub's
    answer, so that the VM runs on after the connection closes."""
    try:
        stub.sendall(b"+" + DETACH)
        stub.settimeout(2)
        stub.recv(4096)
    except OSError:
        pass


def main(args: list[str] | None = None) -> int:
    argv = sys.argv[1:] if args is None else args
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(
            "usage: python -m kubevirt_spawner.gdbrelay unix:PATH | tcp:HOST:PORT\n"
            "(for gdb's `target remote | …`; see LAB_GDB_REMOTE)",
            file=sys.stderr,
        )
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    try:
        stub = connect(argv[0])
    except ValueError as e:
        print(f"gdbrelay: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(
            f"gdbrelay: cannot reach the VM's gdb stub at {argv[0]}: {e.strerror or e}",
            file=sys.stderr,
        )
        return 1
    with stub:
        try:
            relay(stub, sys.stdin.fileno(), sys.stdout.fileno())
        except (BrokenPipeError, ConnectionResetError):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

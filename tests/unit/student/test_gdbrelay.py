"""kubevirt_spawner.gdbrelay: the remote-protocol filter (a table of byte
streams) and the command line; the relay against a real QEMU is in
tests/local/test_gdb_relay.py."""

import os
import socket
import subprocess
import sys
import threading

import pytest

from kubevirt_spawner.gdbrelay import DETACH, KillFilter, relay


@pytest.mark.parametrize(
    ("chunks", "expected", "kills"),
    [
        pytest.param([b"$g#67"], b"$g#67", 0, id="plain-packet"),
        pytest.param([b"+$k#6b"], b"+" + DETACH, 1, id="kill"),
        pytest.param([b"$vKill;1#6e"], DETACH, 1, id="extended-kill"),
        pytest.param([b"$", b"k", b"#", b"6", b"b"], DETACH, 1, id="kill-in-pieces"),
        pytest.param([b"\x03", b"$?#3f"], b"\x03$?#3f", 0, id="ctrl-c-then-packet"),
        pytest.param([b"$X0,1:}#k#aa"], b"$X0,1:}#k#aa", 0, id="escaped-hash-is-data"),
        pytest.param([b"$X0,1:}}#k#aa"], b"$X0,1:}}#k#aa", 0, id="escaped-brace-then-hash-ends"),
        pytest.param(
            [b"$m0,4#fd$k#6b$c#63"], b"$m0,4#fd" + DETACH + b"$c#63", 1, id="kill-between-packets"
        ),
        pytest.param([b"$kill#00"], b"$kill#00", 0, id="not-a-kill-packet"),
    ],
)
def test_kill_filter(chunks, expected, kills):
    f = KillFilter()
    assert b"".join(f.feed(c) for c in chunks) == expected
    assert f.kills == kills
    assert f.detached is (kills > 0)


def test_one_detach_per_connection():
    """QEMU 7.2 crashes on a second detach: a kill after gdb's own detach,
    or a second kill, sends nothing."""
    f = KillFilter()
    assert f.feed(b"$D;1#b0") == b"$D;1#b0" and f.detached
    assert f.feed(b"$k#6b") == b""
    f = KillFilter()
    assert f.feed(b"$k#6b$vKill;1#6e") == DETACH
    assert f.kills == 2


def test_relay_passes_answers_back_and_logs_a_kill(tmp_path):
    """Through real sockets and pipes: a stand-in stub (a socket that echoes
    what it got) receives D for k, and gdb's side receives the stub's bytes."""
    path = tmp_path / "stub.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    got = []

    def stub():
        conn, _ = server.accept()
        with conn:
            data = conn.recv(100)
            got.append(data)
            conn.sendall(b"+$OK#9a")

    t = threading.Thread(target=stub)
    t.start()
    gdb_r, relay_w = os.pipe()  # relay -> gdb
    relay_r, gdb_w = os.pipe()  # gdb -> relay
    os.write(gdb_w, b"$k#6b")
    log = tmp_path / "log"
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(path))
    with open(log, "w") as logf:
        runner = threading.Thread(target=relay, args=(client, relay_r, relay_w, logf))
        runner.start()
        assert os.read(gdb_r, 100) == b"+$OK#9a"
        os.close(gdb_w)  # gdb goes away: the relay ends
        runner.join(10)
    t.join(10)
    assert got == [DETACH]
    assert "detached instead" in log.read_text()


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "kubevirt_spawner.gdbrelay", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_cli_bad_input(tmp_path):
    r = run()
    assert r.returncode == 2 and r.stderr.startswith("usage: python -m kubevirt_spawner.gdbrelay")
    r = run("ftp:host")
    assert r.returncode == 2
    assert r.stderr.strip() == "gdbrelay: not an address: 'ftp:host' (unix:PATH or tcp:HOST:PORT)"
    r = run(f"unix:{tmp_path}/nothing.sock")
    assert r.returncode == 1 and "cannot reach the VM's gdb stub" in r.stderr, r.stderr
    assert run("--help").returncode == 0

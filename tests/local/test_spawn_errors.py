"""Bad input and broken environments: each spawn fails with a message that
says what to do, and leaves no process, socket or directory behind."""

import socket

import pytest
from harness.localhelpers import CLASH_PORT, assert_nothing_left

pytestmark = pytest.mark.local

USER = "kvst-carol"


def failure(events) -> str:
    assert events, "no progress events"
    assert events[-1].get("failed"), f"spawn should have failed: {events}"
    return events[-1]["message"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param({"profile": "noqemu"}, "QEMU is not installed", id="qemu-missing"),
        pytest.param({"profile": "noguest"}, "make guest", id="guest-not-built"),
        pytest.param({"profile": "panic"}, "Kernel panic", id="kernel-panics"),
        pytest.param({"profile": "hang"}, "did not finish booting within 15s", id="never-ready"),
        pytest.param({"profile": "nosuch"}, "Unknown profile 'nosuch'", id="unknown-profile"),
        pytest.param({"profile": 7}, "profile must be a name", id="profile-not-a-string"),
    ],
)
def test_spawn_fails_cleanly(hub, options, expected):
    message = failure(hub.spawn(USER, options))
    assert expected in message, message
    assert_nothing_left(hub, USER)


def test_kernel_console_tail_is_shown(hub):
    message = failure(hub.spawn(USER, {"profile": "panic"}))
    assert "Attempted to kill init" in message, message
    assert_nothing_left(hub, USER)


def test_ssh_port_clash(hub):
    with socket.socket() as s:
        s.bind(("127.0.0.1", CLASH_PORT))
        s.listen()
        message = failure(hub.spawn(USER, {"profile": "clash"}))
    assert f"ssh port {CLASH_PORT}" in message and "already in use" in message, message
    assert_nothing_left(hub, USER)


async def test_stale_runtime_dir_is_cleared(hub):
    """Sockets and a pidfile left by a crashed run do not block the next one."""
    import os
    from pathlib import Path

    stale = Path(hub.runtime_root, USER)
    stale.mkdir(mode=0o700, exist_ok=True)
    for name in ("gdb.sock", "console.sock", "qmp.sock"):
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(stale / name))
        s.close()
    (stale / "qemu.pid").write_text(str(os.getpid()))  # a live pid that is not QEMU
    events = hub.spawn(USER)
    assert events[-1].get("ready"), events
    assert os.getpid()  # the pid in the stale pidfile was not signalled: we are alive
    hub.stop_server(USER)
    assert_nothing_left(hub, USER)


async def test_no_vm_profile(hub):
    events = hub.spawn(USER, {"profile": "novm"})
    assert events[-1].get("ready"), events
    assert not any("VM booting" in e["message"] for e in events)
    term = await hub.terminal(USER)
    try:
        env = await term.run("env | grep ^LAB_VM_")
        assert [line for line in env.splitlines() if line.startswith("LAB_VM_")] == []
        out = await term.run("labvm status")
        assert term.last_status == 1 and "has no VM" in out, out
    finally:
        term.close()
    hub.stop_server(USER)
    assert_nothing_left(hub, USER)

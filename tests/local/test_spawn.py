"""A student's day, for real: spawn through the hub's REST API, then use the
VM from a JupyterLab terminal (the websocket a browser uses): ssh, the edu
device, gdb on the kernel; two students kept apart; stop leaves nothing."""

import re

import pytest
from harness.localhelpers import assert_nothing_left

pytestmark = pytest.mark.local

A, B = "kvst-alice", "kvst-bob"


def assert_ready(events):
    assert events[-1].get("ready"), f"spawn did not finish: {events}"
    messages = [e["message"] for e in events]
    for step in ("VM booting", "Kernel up", "ssh ready", "gdb stub ready"):
        assert any(step in m for m in messages), f"no {step!r} step in {messages}"


@pytest.fixture(scope="module")
def alice(hub):
    assert_ready(hub.spawn(A))
    return A


@pytest.fixture(scope="module")
def bob(hub):
    assert_ready(hub.spawn(B))
    return B


async def test_terminal_reaches_vm_kernel_and_edu_device(hub, alice, guest):
    term = await hub.terminal(alice)
    try:
        env = await term.run("env | grep ^LAB_ | sort")
        for name in (
            "LAB_VM_HOST",
            "LAB_VM_SSH_PORT",
            "LAB_GDB_REMOTE",
            "LAB_VMLINUX",
            "LAB_KDIR",
            "LAB_ARCH",
        ):
            assert f"{name}=" in env, f"{name} missing from the notebook's environment:\n{env}"
        assert re.search(r"LAB_GDB_REMOTE=\| \S+/python -m kubevirt_spawner.gdbrelay unix:/", env)
        out = await term.run("labvm ssh uname -r")
        assert guest.kernel_release in out, out
        out = await term.run(
            "labvm ssh 'for d in /sys/bus/pci/devices/*; do "
            "echo PCI $(cat $d/vendor):$(cat $d/device); done'"
        )
        assert "PCI 0x1234:0x11e8" in out, f"edu device not in the guest:\n{out}"
    finally:
        term.close()


async def test_gdb_breaks_on_a_syscall_triggered_in_the_vm(hub, alice):
    term = await hub.terminal(alice)
    try:
        # uname(1) in the VM calls newuname(2); keep calling it in the
        # background until gdb, attached and waiting, catches one.
        out = await term.run(
            "(for i in $(seq 20); do sleep 1; labvm ssh uname -n >/dev/null; done) & "
            "labvm gdb -batch -ex 'break __x64_sys_newuname' -ex continue -ex bt -ex detach; "
            "kill %1 2>/dev/null; wait",
            timeout=120,
        )
        assert re.search(r"Breakpoint 1, __x64_sys_newuname", out), out
        assert re.search(r"#\d+ .*do_syscall_64", out), (
            f"no backtrace through do_syscall_64:\n{out}"
        )
        assert "detached" in out, out
        # The VM runs on after gdb detaches.
        assert "labvm" in await term.run("labvm ssh uname -n")
    finally:
        term.close()


async def test_students_reach_only_their_own_vm(hub, alice, bob):
    ta, tb = await hub.terminal(alice), await hub.terminal(bob)
    try:
        await ta.run("labvm ssh touch /root/alice-was-here")
        assert "alice-was-here" in await ta.run("labvm ssh ls /root")
        assert "alice-was-here" not in await tb.run("labvm ssh ls /root")

        bob_env = dict(
            line.split("=", 1)
            for line in (await tb.run("env | grep ^LAB_")).splitlines()
            if line.startswith("LAB_") and "=" in line
        )
        bob_sock = bob_env["LAB_GDB_REMOTE"].rsplit("unix:", 1)[1].strip()
        # gdb socket: refused by file permissions, not by luck.
        out = await ta.run(f"socat -u UNIX-CONNECT:{bob_sock} - </dev/null")
        assert "Permission denied" in out, out
        # (plain gdb: labvm's is attached to her own VM already, and a second
        # `target remote` would make gdb kill that one first)
        out = await ta.run(f"gdb -q -batch -ex 'target remote | socat - UNIX-CONNECT:{bob_sock}'")
        assert "Permission denied" in out or "Remote connection closed" in out, out
        # ssh: alice's key is not authorised in bob's VM.
        out = await ta.run(
            f"ssh -i $LAB_SSH_KEY -p {bob_env['LAB_VM_SSH_PORT']} -o BatchMode=yes "
            "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@127.0.0.1 true"
        )
        assert ta.last_status != 0 and "Permission denied" in out, out
        # nor can she read bob's key.
        out = await ta.run(f"cat {bob_env['LAB_SSH_KEY']}")
        assert "Permission denied" in out, out
    finally:
        ta.close()
        tb.close()


async def test_every_file_of_a_vm_is_the_owners_alone(hub, alice, bob):
    """Not only the gdb socket: the console and QMP sockets (QMP is full
    control of the VM), the console log, the private key, the initrd, and the
    directory itself, from another student's terminal."""
    import os
    import pwd
    from pathlib import Path

    rundir = Path(hub.server_state(bob)["state"]["rundir"])
    st = rundir.stat()
    assert oct(st.st_mode & 0o777) == "0o700" and st.st_uid == pwd.getpwnam(bob).pw_uid
    ta = await hub.terminal(alice)
    try:
        for sock in ("console.sock", "qmp.sock", "gdb.sock"):
            out = await ta.run(f"socat -u UNIX-CONNECT:{rundir / sock} - </dev/null")
            assert "Permission denied" in out, (sock, out)
        for f in ("console.log", "id_ed25519", "initrd.img", "known_hosts", "qemu.log"):
            assert (rundir / f).exists(), f
            out = await ta.run(f"cat {rundir / f} >/dev/null")
            assert "Permission denied" in out, (f, out)
        out = await ta.run(f"ls {rundir}")
        assert "Permission denied" in out, out
    finally:
        ta.close()
    assert os.stat(rundir / "qmp.sock").st_uid == pwd.getpwnam(bob).pw_uid


async def test_the_vm_reaches_neither_the_host_nor_another_students_vm(hub, alice, bob):
    """QEMU's user networking with restrict=on: from inside alice's VM, the
    hub, its proxy and bob's forwarded ssh port on the host are out of reach
    (10.0.2.2 is the host's loopback to the guest), while nc itself works."""
    tb = await hub.terminal(bob)
    bob_port = (await tb.run("echo $LAB_VM_SSH_PORT")).strip().splitlines()[-1]
    tb.close()
    ta = await hub.terminal(alice)
    try:
        out = await ta.run("labvm ssh 'echo | nc -w 3 127.0.0.1 22 | head -c 7'")
        assert "SSH-2.0" in out, (
            f"nc does not work in the guest, the test would prove nothing: {out}"
        )
        for what, port in (
            ("hub proxy", hub.port),
            ("hub API", hub.hub_port),
            ("bob's VM", bob_port),
        ):
            out = await ta.run(f"labvm ssh 'echo | nc -w 3 10.0.2.2 {port}; echo nc-exit:$?'")
            assert re.search(r"nc-exit:[1-9]", out), (what, out)
            assert "SSH-2.0" not in out and "HTTP" not in out, (what, out)
    finally:
        ta.close()


async def test_gdb_kill_does_not_take_the_vm_down(hub, alice):
    """QEMU exits on gdb's kill request; labvm's gdb refuses to send it."""
    term = await hub.terminal(alice)
    try:
        out = await term.run("labvm gdb -batch -ex kill -ex 'info registers rip'")
        assert "'kill' would shut your VM down" in out, out
        assert "labvm" in await term.run("labvm ssh uname -n")
        assert hub.server_state(alice)["ready"]
    finally:
        term.close()


def test_stop_leaves_nothing_behind(hub, alice, bob):
    for name in (alice, bob):
        hub.stop_server(name)
        assert_nothing_left(hub, name)

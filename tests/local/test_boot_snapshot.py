"""Start from a booted snapshot (LocalVMSpawner.boot_from_snapshot) through a
real hub: the first spawn boots cold while the snapshot is made, later ones
start from it and say so; each VM gets its own identity after the restore
(its pinned host key is the server's, not the snapshot's, and differs per
student; another student's key is refused); `labvm gdb` attaches and a
syscall breakpoint hits; `labvm reset` still boots the course kernel."""

import re
import time

import pytest
from harness.hubctl import running_hub
from harness.localhelpers import messages, pinned_host_key, spawn_ok, term_run

from kubevirt_spawner.local.bootsnap import snapshot_path

pytestmark = pytest.mark.local

ALICE, BOB = "kvsb-alice", "kvsb-bob"

CONFIG = """
c.LocalVMSpawner.boot_from_snapshot = True
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory, guest):
    for old in guest.root.glob("booted-*.state"):  # made by an earlier run: make it anew
        old.unlink()
    with running_hub(tmp_path_factory.mktemp("bootsnap"), CONFIG) as h:
        yield h


async def test_spawns_start_from_the_booted_snapshot_with_their_own_identity(hub, guest):
    said = messages(spawn_ok(hub, ALICE))
    assert "being made" in said and "VM booting" in said, said
    deadline = time.monotonic() + 180
    while not list(guest.root.glob("booted-*.state")):
        assert time.monotonic() < deadline, f"no booted snapshot made\n{hub.log_tail()}"
        time.sleep(1)
    (snap,) = guest.root.glob("booted-*.state")
    assert snap == snapshot_path(guest, snap.name[len("booted-") : -len(".state")])
    hub.stop_server(ALICE)

    for name in (ALICE, BOB):
        said = messages(spawn_ok(hub, name))
        assert "Starting from the booted snapshot" in said and "VM booting" not in said, said
        assert "VM started from the booted snapshot" in said, said
    keys = {name: pinned_host_key(hub, name) for name in (ALICE, BOB)}
    assert keys[ALICE] != keys[BOB]

    term = await hub.terminal(ALICE)
    # The host key the VM serves is the one this server pinned, not another's.
    served = await term_run(
        term, "ssh-keyscan -t ed25519 -p $LAB_VM_SSH_PORT 127.0.0.1 2>/dev/null"
    )
    assert keys[ALICE].split()[1] in served and keys[BOB].split()[1] not in served, served
    # Bob's VM refuses Alice's key.
    bob_port = hub.api("GET", f"/users/{BOB}").json()["servers"][""]["state"]["vm_ssh_port"]
    out = await term.run(
        f"ssh -i $LAB_SSH_KEY -p {bob_port} -o BatchMode=yes -o StrictHostKeyChecking=no "
        "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@127.0.0.1 true 2>&1",
        timeout=60,
    )
    assert term.last_status != 0 and "Permission denied" in out, out
    # gdb: attach, a syscall breakpoint hits (triggered by an ssh command).
    out = await term_run(
        term,
        "(sleep 4; labvm ssh uname -n >/dev/null) & "
        "labvm gdb -batch -ex 'break __x64_sys_newuname' -ex continue -ex 'bt 1' -ex detach",
        timeout=180,
    )
    assert "Breakpoint 1, " in out and "newuname" in out, out
    # The VM's clock was set at delivery.
    out = await term_run(term, "labvm ssh 'echo T=$(date +%s)'")
    now = int(re.search(r"T=(\d+)", out)[1])
    assert abs(now - time.time()) < 120
    # reset boots the course kernel cold, with the same identity.
    out = await term_run(term, "labvm reset && labvm ssh 'cat /proc/uptime'", timeout=240)
    assert float(out.split()[-2]) < 120
    assert pinned_host_key(hub, ALICE) == keys[ALICE]
    for name in (ALICE, BOB):
        hub.stop_server(name)
    assert snap.exists()

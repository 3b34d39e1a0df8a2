"""The hub restarts under running servers: it reattaches to live ones, and
one whose VM died meanwhile is reported stopped and cleaned up."""

import os
import signal
import time
from pathlib import Path

import pytest
from harness.localhelpers import assert_nothing_left, qemu_for

pytestmark = pytest.mark.local

USER = "kvst-dave"


def wait_for(predicate, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(f"timed out waiting for {what}")


async def test_restarted_hub_reattaches(hub):
    assert hub.spawn(USER)[-1].get("ready")
    vm_before = qemu_for(str(Path(hub.runtime_root, USER)))
    assert len(vm_before) == 1, vm_before
    hub.stop()
    # The VM outlives the hub: it belongs to the student's session, not the hub's.
    assert qemu_for(str(Path(hub.runtime_root, USER))) == vm_before
    hub.start()
    state = hub.server_state(USER)
    assert state and state["ready"], state
    term = await hub.terminal(USER)
    try:
        out = await term.run("labvm ssh cat /proc/uptime")
        assert term.last_status == 0, out
    finally:
        term.close()
    assert qemu_for(str(Path(hub.runtime_root, USER))) == vm_before, "VM was restarted"


def test_vm_that_died_while_hub_was_down_is_cleaned_up(hub):
    rundir = Path(hub.runtime_root, USER)
    (vm,) = qemu_for(str(rundir))
    hub.stop()
    os.kill(int(vm.split()[0]), signal.SIGKILL)
    hub.start()
    wait_for(lambda: hub.server_state(USER) is None, 60, "the hub to notice the dead VM")
    wait_for(lambda: not rundir.exists(), 30, "the runtime directory to go")
    assert_nothing_left(hub, USER)


def test_vm_that_dies_under_a_running_hub_takes_its_server_down(hub):
    """A crashed QEMU is not hidden behind a healthy notebook: the hub sees
    the server stop, and the notebook and terminals go with it."""
    assert hub.spawn(USER)[-1].get("ready")
    rundir = Path(hub.runtime_root, USER)
    (vm,) = qemu_for(str(rundir))
    os.kill(int(vm.split()[0]), signal.SIGKILL)
    wait_for(lambda: hub.server_state(USER) is None, 60, "the hub to notice the dead VM")
    wait_for(lambda: not rundir.exists(), 30, "the runtime directory to go")
    assert_nothing_left(hub, USER)
    assert "VM of kvst-dave is gone" in hub.log_tail(400)

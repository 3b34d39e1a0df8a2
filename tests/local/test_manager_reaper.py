"""The reaper against a real hub and real VMs: a hub killed mid-spawn leaves a
VM nobody owns, which the (restarted, stateless) reaper removes while running
servers stay untouched; idle and over-age servers are stopped by
jupyterhub-idle-culler, with time travel instead of waiting an hour."""

import os
import signal
from datetime import datetime, timedelta, timezone
from pathlib import Path
from unittest import mock

import jupyterhub_idle_culler
import pytest
from harness.manager_hub import cleanup, nothing_left, qemu_pid, start_hub, vm_pids, wait_for

from kubevirt_spawner.manager.core import LabManager, Settings
from kubevirt_spawner.manager.hubclient import HubClient
from kubevirt_spawner.manager.metrics import Metrics
from kubevirt_spawner.manager.store import Store

pytestmark = pytest.mark.local

ALICE, BOB, CAROL = "kvsm-ralice", "kvsm-rbob", "kvsm-rcarol"


@pytest.fixture(scope="module")
def hub(tmp_path_factory, guest):
    # The service reaps orphans every 3 s; idle/max-age culling is done by the
    # in-process manager below (time travel), so it is off in the service.
    h = start_hub(
        tmp_path_factory.mktemp("mgr-reaper"),
        [
            "--reap-every=3",
            "--orphan-grace=5",
            "--idle-timeout=0",
            "--max-age=0",
            "--sample-interval=2",
            "--inspect-every=3600",
        ],
    )
    try:
        for name in (ALICE, BOB):
            assert h.spawn(name)[-1].get("ready"), h.log_tail()
        yield h
    finally:
        cleanup(h)


def test_hub_killed_mid_spawn_orphans_are_reaped_running_servers_kept(hub):
    alice_vm, bob_vm = qemu_pid(hub, ALICE), qemu_pid(hub, BOB)
    carol_dir = Path(hub.runtime_root, CAROL)
    hub.create_user(CAROL)
    r = hub.api("POST", f"/users/{CAROL}/server", json={})
    assert r.status_code in (201, 202), r.text
    wait_for(lambda: vm_pids(carol_dir), 60, "carol's QEMU to start", hub, every=0.1)
    assert hub.server_state(CAROL)["pending"] == "spawn"
    # The hub (with its proxy and services: one process group) dies at once.
    os.killpg(hub.proc.pid, signal.SIGKILL)
    hub.proc.wait()
    (orphan_pid,) = vm_pids(carol_dir)
    hub.start()
    wait_for(lambda: not vm_pids(carol_dir), 90, "the reaper to stop carol's VM", hub)
    wait_for(lambda: not carol_dir.exists(), 30, "the reaper to remove carol's runtime dir", hub)
    log = hub.log_path.read_text()
    assert f"Reaper deleted qemu {orphan_pid}: orphan-no-server" in log, hub.log_tail()
    assert f"Reaper deleted rundir {carol_dir}: orphan-empty-rundir" in log
    nothing_left(hub, CAROL)
    assert vm_pids(carol_dir) == []
    # Running servers untouched: same VM processes, still ready.
    assert (qemu_pid(hub, ALICE), qemu_pid(hub, BOB)) == (alice_vm, bob_vm)
    assert hub.server_state(ALICE)["ready"] and hub.server_state(BOB)["ready"]
    assert vm_pids(Path(hub.runtime_root, ALICE)) == [alice_vm]


def manager_for(hub, **settings) -> LabManager:
    return LabManager(
        HubClient(f"{hub.url}/hub/api", hub.token),
        Store(":memory:"),
        Settings(runtime_root=hub.runtime_root, orphan_grace=5, **settings),
        Metrics(),
    )


async def test_idle_and_over_age_servers_are_stopped(hub):
    now = datetime.now(timezone.utc)
    # Alice is "active" 45 minutes from now; bob last did something at spawn.
    soon = (now + timedelta(minutes=45)).isoformat()
    r = hub.api(
        "POST",
        f"/users/{ALICE}/activity",
        json={"last_activity": soon, "servers": {"": {"last_activity": soon}}},
    )
    assert r.status_code in (200, 204), r.text
    later = now + timedelta(minutes=50)
    m = manager_for(hub, idle_timeout=40 * 60, max_age=0)
    with mock.patch.object(jupyterhub_idle_culler, "utcnow", return_value=later):
        decided = await m.cull()
    assert decided == [(f"/user/{BOB}/", "idle")]
    wait_for(lambda: hub.server_state(BOB) is None, 120, "bob's idle server to stop", hub)
    assert hub.server_state(ALICE)["ready"]
    assert 'kvs_reaped_objects_total{kind="server",reason="idle"} 1.0' in _metrics(m)
    nothing_left(hub, BOB)
    assert vm_pids(Path(hub.runtime_root, BOB)) == []

    # Alice is active but her server is older than the maximum age.
    m = manager_for(hub, idle_timeout=40 * 60, max_age=30 * 60)
    with mock.patch.object(jupyterhub_idle_culler, "utcnow", return_value=later):
        decided = await m.cull()
    assert decided == [(f"/user/{ALICE}/", "max-age")]
    wait_for(lambda: hub.server_state(ALICE) is None, 120, "alice's old server to stop", hub)
    nothing_left(hub, ALICE)
    assert vm_pids(Path(hub.runtime_root, ALICE)) == []


def _metrics(m) -> str:
    from prometheus_client import generate_latest

    return generate_latest(m.metrics.registry).decode()

"""Per-student limits, enforced by the kernel (cgroups, as this machine has
them: v1): a fork bomb and a memory hog typed in one student's terminal stay
inside that student's server, while a second student spawns and uses their
VM; the limits show in /proc/PID/cgroup and the group's files; stop removes
the group."""

import re
from pathlib import Path

import pytest
from harness.hubctl import Hub
from harness.localhelpers import assert_nothing_left

from kubevirt_spawner.contract import runtime_dir_name
from kubevirt_spawner.local import cgroups

pytestmark = pytest.mark.local

A, B = "kvsq-ada", "kvsq-ben"
LIMITS = """
c.LocalVMSpawner.cpu_limit = 0.5
c.LocalVMSpawner.mem_limit = "900M"
c.LocalVMSpawner.pids_limit = 200
c.LocalVMSpawner.cgroup_parent = "kvs-test-limits"
"""
FORK_BOMB = (
    "python3 -c 'import os, time\n"
    "n = 0\n"
    "try:\n"
    "    while True:\n"
    "        if os.fork() == 0:\n"
    "            time.sleep(40); os._exit(0)\n"
    "        n += 1\n"
    "except OSError as e:\n"
    '    print("forks stopped at", n, type(e).__name__)\n'
    "'"
)
MEMORY_HOG = 'python3 -c \'x = b"x" * (2 << 30); print("hog survived")\'; echo hog-exit:$?'


@pytest.fixture(scope="module")
def hub(tmp_path_factory, guest):
    h = Hub(tmp_path_factory.mktemp("limits"), extra_config=LIMITS).start()
    yield h
    for name in (A, B):
        if h.server_state(name):
            h.stop_server(name)
    h.stop()


def group_of(pid: int, controller: str) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    return ""


async def test_one_students_fork_bomb_and_memory_hog_stay_in_their_server(hub):
    assert hub.spawn(A)[-1].get("ready"), hub.log_tail()
    state = hub.server_state(A)["state"]
    name = runtime_dir_name(A)
    layout = cgroups.detect_layout()
    dirs = cgroups.group_dirs(layout, "kvs-test-limits", name)
    for pid in (state["vm_pid"], state["pid"]):
        for controller in cgroups.CONTROLLERS:
            assert group_of(pid, controller) == f"/kvs-test-limits/{name}", (pid, controller)
    assert (dirs["pids"] / "pids.max").read_text().strip() == "200"
    assert int((dirs["memory"] / "memory.limit_in_bytes").read_text()) == 900 << 20
    assert (dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"

    ta = await hub.terminal(A)
    try:
        out = await ta.run(FORK_BOMB, timeout=120)
        stopped = re.search(r"forks stopped at (\d+) BlockingIOError", out)
        assert stopped and int(stopped.group(1)) < 200, out
        # While ada's 200 processes are used up, ben starts and uses his VM.
        assert hub.spawn(B)[-1].get("ready"), hub.log_tail()
        tb = await hub.terminal(B)
        try:
            out = await tb.run("labvm ssh uname -r")
            assert tb.last_status == 0, out
        finally:
            tb.close()
        out = await ta.run(MEMORY_HOG, timeout=180)
        assert "hog-exit:137" in out and not re.search(r"^hog survived", out, re.M), out
        # the OOM killer chose the hog, not ada's VM
        assert hub.server_state(A)["ready"]
        assert Path(f"/proc/{state['vm_pid']}").exists()
    finally:
        ta.close()
    hub.stop_server(A)
    assert_nothing_left(hub, A)
    assert not any(d.exists() for d in dirs.values()), "the cgroup was left behind"

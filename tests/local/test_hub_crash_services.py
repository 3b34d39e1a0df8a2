"""A hub killed with SIGKILL (the demo's config: lab manager and course
service) takes its services and proxy with it, the student's VM and
JupyterLab live on, and the restarted hub runs exactly one of each service,
each answering, with the student's server reattached and working."""

import os
import signal
import time

import pytest
import requests
from harness.demo_hub import Demo, new_student, processes_mentioning
from harness.hubctl import Hub

pytestmark = pytest.mark.local

STUDENT = "kvsc-cora"


def services(demo: Demo) -> dict[str, list[str]]:
    return {
        "lab manager": processes_mentioning(f"--port={demo.env['KVS_LAB_MANAGER_PORT']}"),
        "course service": [
            p for p in processes_mentioning(str(demo.course_root)) if "jupyterhub.singleuser" in p
        ],
        "proxy": processes_mentioning(f"--api-port {demo.env['KVS_DEMO_PROXY_API_PORT']}"),
    }


def wait(predicate, timeout: float, what: str, demo: Demo):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{demo.log_tail()}")


def api(demo: Demo, method: str, path: str, **kw) -> requests.Response:
    return requests.request(
        method,
        f"{demo.url}/hub/api{path}",
        timeout=30,
        headers={"Authorization": f"token {demo.token}"},
        **kw,
    )


def answering(demo: Demo) -> bool:
    try:
        mgr = requests.get(f"{demo.url}/services/lab-manager/health", timeout=5)
        course = requests.get(f"{demo.url}/services/os-lab/", timeout=5, allow_redirects=False)
    except requests.RequestException:
        return False
    # the course service redirects an anonymous visitor to the hub's login
    return mgr.ok and course.status_code in (302, 200)


async def test_services_end_with_a_killed_hub_and_come_back_once(tmp_path):
    new_student(STUDENT)
    demo = Demo(tmp_path / "state", with_api_token=True)
    demo.state.mkdir()
    try:
        demo.start()
        wait(lambda: answering(demo), 120, "the services to answer", demo)
        demo.spawn(STUDENT)
        before = api(demo, "GET", f"/users/{STUDENT}").json()["servers"][""]["state"]
        assert all(len(v) == 1 for v in services(demo).values()), services(demo)

        os.kill(demo.proc.pid, signal.SIGKILL)
        demo.proc.wait()
        wait(lambda: not any(services(demo).values()), 30, "the services to end", demo)
        for pid in (before["vm_pid"], before["pid"]):
            os.kill(pid, 0)  # the student's VM and JupyterLab live on

        demo.start()
        wait(lambda: answering(demo), 120, "the restarted services to answer", demo)
        running = services(demo)
        assert all(len(v) == 1 for v in running.values()), running
        after = api(demo, "GET", f"/users/{STUDENT}").json()["servers"][""]
        assert after["ready"] and after["state"]["vm_pid"] == before["vm_pid"], after

        # the student's terminal still reaches the same VM
        hub = Hub(tmp_path / "unused")
        hub.url, hub.port, hub.token = demo.url, demo.port, demo.token
        term = await hub.terminal(STUDENT)
        try:
            out = await term.run("labvm ssh cat /proc/sys/kernel/random/boot_id")
            assert term.last_status == 0, out
        finally:
            term.close()
        api(demo, "DELETE", f"/users/{STUDENT}/server")
    finally:
        demo.close()

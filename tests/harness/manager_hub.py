"""A real hub with the lab manager declared, as hub configs do it
(kubevirt_spawner.hubconfig.add_lab_manager)."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import requests

from harness.hubctl import Hub, free_port
from harness.localhelpers import wait_for
from kubevirt_spawner.lab import LabEnv, LabVM

INSTRUCTOR = "kvsm-teach"
SERVICE = "lab-manager"


def manager_config(port: int, db: Path, args: list[str]) -> str:
    return f"""
from kubevirt_spawner.hubconfig import add_lab_manager
add_lab_manager(c, port={port}, args={[f"--db={db}", *args]!r})
c.JupyterHub.load_groups = {{"instructors": {{"users": [{INSTRUCTOR!r}]}}}}
# the tests' own service may mint users' tokens (to act as a student or instructor)
c.JupyterHub.load_roles.append({{"name": "tester-tokens", "services": ["tester"], "scopes": ["tokens"]}})
"""


def start_hub(workdir: Path, args: list[str], extra: str = "") -> Hub:
    port = free_port()
    hub = Hub(workdir, extra_config=manager_config(port, workdir / "manager.sqlite", args) + extra)
    hub.manager_port = port
    hub.db = workdir / "manager.sqlite"
    hub.start()
    wait_for(lambda: _up(hub), 60, "the lab manager to answer", hub)
    return hub


def _up(hub: Hub) -> bool:
    try:
        return requests.get(service_url(hub, "health"), timeout=2).ok
    except requests.RequestException:
        return False


def service_url(hub: Hub, path: str = "") -> str:
    return f"{hub.url}/services/{SERVICE}/{path}"


def user_token(hub: Hub, name: str) -> str:
    hub.create_user(name)
    r = hub.api("POST", f"/users/{name}/tokens", json={"note": "test"})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def server_token(hub: Hub, name: str) -> str:
    """The JUPYTERHUB_API_TOKEN the hub gave ``name``'s running server (read from
    its process environment: we are root)."""
    state = hub.api("GET", f"/users/{name}").json()["servers"][""]["state"]
    env = Path(f"/proc/{state['pid']}/environ").read_bytes().split(b"\0")
    for var in env:
        if var.startswith(b"JUPYTERHUB_API_TOKEN="):
            return var.split(b"=", 1)[1].decode()
    raise AssertionError(f"no JUPYTERHUB_API_TOKEN in {name}'s server environment")


def call(hub: Hub, method: str, path: str, token: str | None = None, **kw) -> requests.Response:
    headers = kw.pop("headers", {})
    if token:
        headers["Authorization"] = f"token {token}"
    return requests.request(
        method,
        service_url(hub, path),
        headers=headers,
        timeout=kw.pop("timeout", 60),
        allow_redirects=False,
        **kw,
    )


async def login(browser, hub, name):
    """A fresh browser session: open the dashboard, log in at the hub, follow
    the OAuth redirects back. Returns (page, HTTP status of the landing page)."""
    page = await (await browser.new_context()).new_page()
    await page.goto(service_url(hub))
    await page.wait_for_url(re.compile(r"/hub/login"))
    await page.fill("input[name=username]", name)
    await page.fill("input[name=password]", "any")
    async with page.expect_response(
        lambda r: "/services/lab-manager" in r.url or "oauth2/authorize" in r.url
    ) as first:
        await page.click("#login_submit")
    # Follow to wherever the OAuth dance ends.
    await page.wait_for_load_state("networkidle")
    resp = await first.value
    last = await page.evaluate("() => location.href")
    status = (await page.request.get(last)).status if "/services/" in last else resp.status
    return page, status


def vm_of(hub: Hub, name: str) -> LabVM:
    """The student's VM as root reaches it (the server's own key in its runtime dir)."""
    state = hub.api("GET", f"/users/{name}").json()["servers"][""]["state"]
    rd = Path(state["rundir"])
    return LabVM(
        LabEnv(
            vm_host="127.0.0.1",
            ssh_port=state["vm_ssh_port"],
            gdb_remote="",
            vmlinux="",
            kdir="",
            arch="x86_64",
            ssh_key=str(rd / "id_ed25519"),
            known_hosts=str(rd / "known_hosts"),
        )
    )


def qemu_pid(hub: Hub, name: str) -> int:
    return hub.api("GET", f"/users/{name}").json()["servers"][""]["state"]["vm_pid"]


def vm_pids(rundir: str | Path) -> list[int]:
    """QEMU processes whose command line names ``rundir`` (read from /proc:
    `ps` output may be cut to 80 columns when it has no terminal)."""
    mark = os.fsencode(f"{rundir}/")
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmd = Path(entry.path, "cmdline").read_bytes()
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            if b"qemu-system" in cmd.split(b"\0")[0] and mark in cmd and ") Z " not in stat:
                found.append(int(entry.name))
    return sorted(found)


def nothing_left(hub: Hub, name: str, timeout: float = 15) -> None:
    """No process of ``name``'s account, no runtime directory, no VM (processes
    get ``timeout`` seconds to finish exiting after the hub says stopped)."""
    from harness.localhelpers import user_processes

    deadline = time.monotonic() + timeout
    while (left := user_processes(name)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == [], f"processes of {name} left behind: {left}"
    rundir = Path(hub.runtime_root, name)
    assert not rundir.exists(), f"runtime dir of {name} left behind"
    assert vm_pids(rundir) == [], f"VM of {name} left behind"


def console_log(hub: Hub, name: str) -> str:
    return Path(hub.runtime_root, name, "console.log").read_text(errors="replace")


def cleanup(hub: Hub) -> None:
    hub.stop_all_servers()
    hub.stop()
    # A hub killed with SIGKILL leaves its managed services running (JupyterHub
    # starts them in sessions of their own): end every lab manager of this hub.
    marker = f"--db={hub.workdir / 'manager.sqlite'}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGTERM)
            except (OSError, ProcessLookupError):
                pass
    os.system(f"rm -rf {hub.runtime_root}")

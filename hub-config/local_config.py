"""JupyterHub on one machine: the embedded default (`make demo`).

Every student gets a LocalVMSpawner server: a QEMU VM in debug mode (gdb
stub, edu PCI device) and a JupyterLab beside it. Log in as `instructor`
(admin) or as any student name; the passwords are printed at start and kept
in .demo/passwords.
"""

import os
import secrets
import sys
from pathlib import Path

from kubevirt_spawner import envsettings, hubchild
from kubevirt_spawner.hubconfig import add_lab_manager, configure_course, course_settings

c = get_config()  # noqa: F821 (provided by JupyterHub)

repo = Path(__file__).resolve().parent.parent
# Everything the environment may change, checked before anything is made
# (a wrong value stops the hub with one line naming the variable).
try:
    state = Path(envsettings.absolute_path("KVS_DEMO_STATE", str(repo / ".demo")))
    ip = envsettings.text("KVS_DEMO_IP", "127.0.0.1", r"[0-9a-fA-F.:]+", "an IP address")
    ports = {
        name: envsettings.port(name, default)
        for name, default in (
            ("KVS_DEMO_PORT", 8000),
            ("KVS_DEMO_HUB_PORT", 8081),
            ("KVS_DEMO_PROXY_API_PORT", 8001),
            ("KVS_LAB_MANAGER_PORT", 10101),
        )
    }
    if os.getuid() != 0:  # without root the course stays beside the demo's state
        os.environ.setdefault("KVS_COURSE_ROOT", str(state / "course"))
        os.environ.setdefault("KVS_NBGRADER_EXCHANGE", str(state / "exchange"))
    course_settings()  # the KVS_COURSE_* variables, checked now
except envsettings.EnvError as e:
    sys.exit(f"make demo: {e}")
state.mkdir(mode=0o700, exist_ok=True)


def demo_passwords() -> dict:
    f = state / "passwords"
    if not f.exists():
        f.touch(mode=0o600)
        f.write_text(
            f"student {secrets.token_urlsafe(9)}\ninstructor {secrets.token_urlsafe(32)}\n"
        )
    return dict(line.split(" ", 1) for line in f.read_text().split("\n") if line)


passwords = demo_passwords()
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = passwords["student"]
c.SharedPasswordAuthenticator.admin_password = passwords["instructor"]
c.Authenticator.admin_users = {"instructor"}
c.Authenticator.allow_all = True

c.JupyterHub.ip = ip
c.JupyterHub.port = ports["KVS_DEMO_PORT"]
# The hub's own API and the proxy's API (JupyterHub's defaults; tests move them).
c.JupyterHub.hub_port = ports["KVS_DEMO_HUB_PORT"]
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{ports['KVS_DEMO_PROXY_API_PORT']}"
c.JupyterHub.db_url = f"sqlite:///{state}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = str(state / "cookie_secret")
c.JupyterHub.pid_file = str(state / "jupyterhub.pid")
# The proxy and the services end with the hub, however it ends (a failed
# start, Ctrl-C, a crash): see kubevirt_spawner/hubchild.py.
c.ConfigurableHTTPProxy.command = hubchild.command(
    os.getpid(), [str(repo / ".venv/node/node_modules/.bin/configurable-http-proxy")]
)
c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")

c.JupyterHub.spawner_class = "localvm"
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 120
# Students get system accounts of their own, so that their VMs' gdb and
# console sockets are private (needs root; as another user all students
# share that account, which is fine for trying it out alone).
c.LocalVMSpawner.create_system_users = True
# Each student's VM and JupyterLab together, in a cgroup of their own: one
# student's runaway build or fork bomb cannot starve the others.
c.LocalVMSpawner.cpu_limit = 1.0
c.LocalVMSpawner.mem_limit = "2G"
c.LocalVMSpawner.pids_limit = 1024
c.LocalVMSpawner.profile_list = [
    {
        "display_name": "Kernel labs",
        "slug": "kernel",
        "description": "JupyterLab and a lab VM (debug kernel, gdb stub, edu device).",
        "default": True,
    },
    {
        "display_name": "Kernel labs, aarch64",
        "slug": "kernel-aarch64",
        "description": "The same on an emulated arm64 VM (Kunpeng-style; no edu device; "
        "slower: TCG). Needs `make guest-aarch64` once.",
        "spawner_override": {"vm_arch": "aarch64"},
    },
    {
        "display_name": "Shell and syscall labs",
        "slug": "novm",
        "description": "JupyterLab only, no VM: for labs 1-3 when the server is busy.",
        "spawner_override": {"with_vm": False},
    },
]

# The lab manager (dashboard, students' VM API, reaper, abuse monitor).
add_lab_manager(
    c, port=ports["KVS_LAB_MANAGER_PORT"], args=[f"--db={state / 'lab-manager.sqlite'}"]
)

# The nbgrader course: student and grader groups, the graders' course
# service (JupyterLab + formgrader as the course account, which releases the
# labs and keeps a grading VM), the exchange.
configure_course(c, notebooks=repo / "notebooks")

print(
    "\n=== kubevirt-spawner demo ===\n"
    f"Open http://{c.JupyterHub.ip}:{c.JupyterHub.port}/ and log in as\n"
    f"  any student name (e.g. alice)  password: {passwords['student']}\n"
    f"  instructor (admin)             password: {passwords['instructor']}\n"
    f"(kept in {state / 'passwords'})\n",
    flush=True,
)

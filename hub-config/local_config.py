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

c = get_config()  # noqa: F821 (provided by JupyterHub)

repo = Path(__file__).resolve().parent.parent
state = Path(os.environ.get("KVS_DEMO_STATE", repo / ".demo"))
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

c.JupyterHub.ip = os.environ.get("KVS_DEMO_IP", "127.0.0.1")
c.JupyterHub.port = int(os.environ.get("KVS_DEMO_PORT", "8000"))
c.JupyterHub.db_url = f"sqlite:///{state}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = str(state / "cookie_secret")
c.JupyterHub.pid_file = str(state / "jupyterhub.pid")
c.ConfigurableHTTPProxy.command = [
    str(repo / ".venv/node/node_modules/.bin/configurable-http-proxy")
]
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

# The lab manager (dashboard, students' VM API, reaper, abuse monitor): manager_service.py
lab_manager = __import__("runpy").run_path(str(repo / "hub-config/manager_service.py"))
lab_manager["add_lab_manager"](c, port=int(os.environ.get("KVS_LAB_MANAGER_PORT", "10101")), args=[f"--db={state / 'lab-manager.sqlite'}"])  # fmt: skip

# The nbgrader course (nbgrader_course.py): student and grader groups, the
# graders' course service (JupyterLab + formgrader as the course account), the
# exchange. Without root it all stays beside the demo's state.
if os.getuid() != 0:
    os.environ.setdefault("KVS_COURSE_ROOT", str(state / "course"))
    os.environ.setdefault("KVS_NBGRADER_EXCHANGE", str(state / "exchange"))
exec(open(repo / "hub-config/nbgrader_course.py").read())  # applies itself to c

print(
    "\n=== kubevirt-spawner demo ===\n"
    f"Open http://{c.JupyterHub.ip}:{c.JupyterHub.port}/ and log in as\n"
    f"  any student name (e.g. alice)  password: {passwords['student']}\n"
    f"  instructor (admin)             password: {passwords['instructor']}\n"
    f"(kept in {state / 'passwords'})\n",
    flush=True,
)

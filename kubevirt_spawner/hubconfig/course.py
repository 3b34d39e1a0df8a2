"""The nbgrader lab course on the hub. From a JupyterHub config::

    from kubevirt_spawner.hubconfig import configure_course
    configure_course(c, notebooks="/path/to/kubevirt-spawner/notebooks")

(or ``load_subconfig("hub-config/nbgrader_course.py")``, which does that).

What it sets up, following nbgrader's "Using nbgrader with JupyterHub" layout:

* groups ``nbgrader-<course>`` (students) and ``formgrade-<course>`` (instructors
  and graders); nbgrader's JupyterHub auth plugin lets a student fetch and
  submit only for courses whose ``nbgrader-`` group they are in;
* a hub-managed service ``<course>``: a JupyterLab run as the course's grader
  account in the course root (made from ``notebooks``, the course's sources),
  where graders use formgrader; only the ``formgrade-`` group may open it;
* the exchange directory (world-writable, sticky) through which assignments
  are released and submissions collected;
* ``LAB_COURSE_*`` variables in every student server, and nbgrader's student
  config (course id, exchange) so that the Assignments tab works unchanged.

Environment: KVS_COURSE_ID (default os-lab), KVS_COURSE_ROOT (default
/srv/nbgrader/<course>: made on first start from ``notebooks``, owned by
the course account), KVS_NBGRADER_EXCHANGE (default /srv/nbgrader/exchange),
KVS_COURSE_GRADERS (comma-separated hub user names, default "instructor"),
KVS_COURSE_ACCOUNT (the system account the course service runs as when the
hub runs as root, default grader-<course>: Jupyter refuses to serve as root,
and graders should not get a root shell), KVS_COURSE_SERVICE_PORT (9999),
KVS_COURSE_AUTO_RELEASE (default 1: when the course service starts, every lab
not released yet is generated and released to students, once; 0: the
instructor releases labs from formgrader), KVS_COURSE_GRADING_VM (default 1:
the course service boots a lab VM that formgrader's autograde runs the
submissions' checks against; 0: none).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

from .. import envsettings, hubchild
from ..jupyter_config import config_dir
from ..local.guest import default_guest_dir


def course_settings(environ=None) -> dict:
    """The course's names and paths, from the environment (pure); a wrong
    value raises envsettings.EnvError naming the variable."""
    env = os.environ if environ is None else environ
    name = r"[a-z0-9][a-z0-9_-]{0,31}"
    course = envsettings.text(
        "KVS_COURSE_ID",
        "os-lab",
        name,
        "a course id of lower-case letters, digits, '_' and '-'",
        env,
    )
    graders = [g for g in env.get("KVS_COURSE_GRADERS", "instructor").split(",") if g]
    return {
        "course_id": course,
        "root": envsettings.absolute_path("KVS_COURSE_ROOT", f"/srv/nbgrader/{course}", env),
        "account": envsettings.text(
            "KVS_COURSE_ACCOUNT",
            f"grader-{course}",
            r"[a-z_][a-z0-9_-]{0,31}",
            "a system account name",
            env,
        ),
        "exchange": envsettings.absolute_path(
            "KVS_NBGRADER_EXCHANGE", "/srv/nbgrader/exchange", env
        ),
        "graders": graders,
        "student_group": f"nbgrader-{course}",
        "grader_group": f"formgrade-{course}",
        "service_port": envsettings.port("KVS_COURSE_SERVICE_PORT", 9999, env),
        "auto_release": envsettings.flag("KVS_COURSE_AUTO_RELEASE", True, env),
        "grading_vm": envsettings.flag("KVS_COURSE_GRADING_VM", True, env),
        # The guest the students' VMs boot (the hub's cache, not the course
        # account's own): the grading VM boots the same one.
        "guest_dir": envsettings.absolute_path("KVS_GUEST_DIR", str(default_guest_dir()), env),
    }


def hub_settings(s: dict, as_root: bool = False, hub_pid: int = 0) -> dict:
    """JupyterHub settings (groups, roles, service) for the course ``s`` (pure).
    ``as_root``: the hub runs as root, so the service runs as the course account.
    ``hub_pid``: the service ends with that process (kubevirt_spawner.hubchild).

    The service first releases the labs (kubevirt_spawner.course), then
    serves JupyterLab with formgrader in the course root."""
    server = [sys.executable, "-m", "jupyterhub.singleuser", f"--ServerApp.root_dir={s['root']}"]
    serve = [sys.executable, "-m", "kubevirt_spawner.course", "serve", f"--root={s['root']}"]
    if not s["auto_release"]:
        serve.append("--no-auto-release")
    if s["grading_vm"]:
        serve.append("--grading-vm")
    service_cmd = [*serve, "--", *server]
    if hub_pid:
        service_cmd = hubchild.command(hub_pid, service_cmd)
    return {
        "load_groups": {
            s["grader_group"]: {"users": list(s["graders"])},
            s["student_group"]: {"users": []},
        },
        "load_roles": [
            {
                "name": s["grader_group"],
                "groups": [s["grader_group"]],
                "scopes": [
                    f"access:services!service={s['course_id']}",
                    f"list:users!group={s['student_group']}",
                ],
            },
        ],
        "services": [
            {
                "name": s["course_id"],
                "url": f"http://127.0.0.1:{s['service_port']}",
                "command": service_cmd,
                "cwd": s["root"],
                "environment": {
                    "JUPYTERHUB_DEFAULT_URL": "/lab",
                    "KVS_COURSE_ID": s["course_id"],
                    "KVS_COURSE_ROOT": s["root"],
                    "KVS_NBGRADER_EXCHANGE": s["exchange"],
                    "JUPYTER_CONFIG_PATH": config_dir("course"),
                    "KVS_GUEST_DIR": s["guest_dir"],
                    # nbgrader runs `alembic` by name.
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.defpath}",
                },
                "oauth_no_confirm": True,
                # JupyterHub waits this long for the service to answer: the
                # grading VM boots first (seconds; more on a loaded machine).
                "timeout": 120,
                **({"user": s["account"]} if as_root else {}),
            }
        ],
    }


def student_environment(s: dict) -> dict:
    """What a student server needs to see the course: nbgrader's student config
    (kubevirt_spawner/jupyter_config/student, which LocalVMSpawner puts on every
    student server's JUPYTER_CONFIG_PATH) reads these."""
    return {"KVS_COURSE_ID": s["course_id"], "KVS_NBGRADER_EXCHANGE": s["exchange"]}


def make_exchange(path: str) -> None:
    """The exchange directory: world-writable and sticky, as nbgrader requires."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    if os.stat(p).st_uid == os.getuid():
        p.chmod(0o1777)


def prepare_course_root(s: dict, as_root: bool, notebooks: Path) -> None:
    """Make the course root from this repository's notebooks/ if it has no
    nbgrader_config.py yet (an existing course is never touched), owned by the
    course account (created if missing) when running as root."""
    root = Path(s["root"])
    if as_root:
        try:
            pwd.getpwnam(s["account"])
        except KeyError:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--create-home",
                    "--shell",
                    "/bin/bash",
                    "--user-group",
                    s["account"],
                ],
                check=True,
            )
    if (root / "nbgrader_config.py").exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(notebooks / "nbgrader_config.py", root)
    shutil.copytree(notebooks / "source", root / "source", dirs_exist_ok=True)
    if as_root:
        pw = pwd.getpwnam(s["account"])
        for d, _dirs, files in os.walk(root):
            for name in [d, *(os.path.join(d, f) for f in files)]:
                os.chown(name, pw.pw_uid, pw.pw_gid)


def configure_course(
    c, notebooks, environ=None, create_exchange: bool = True, prepare: bool = True
) -> dict:
    """Apply the course to JupyterHub config ``c``; return its settings.
    ``notebooks``: the course's sources (this repository's notebooks/), from
    which a missing course root is made."""
    s = course_settings(environ)
    as_root = os.getuid() == 0
    h = hub_settings(s, as_root, hub_pid=os.getpid())
    # extend/update work both on values set before and on traitlets' lazy
    # values (what `c.JupyterHub.services.append(...)` elsewhere leaves behind).
    c.JupyterHub.load_groups.update(h["load_groups"])
    c.JupyterHub.load_roles.extend(h["load_roles"])
    c.JupyterHub.services.extend(h["services"])
    c.Spawner.environment.update(student_environment(s))
    if create_exchange:
        make_exchange(s["exchange"])
    if prepare:
        prepare_course_root(s, as_root, Path(notebooks))
    return s

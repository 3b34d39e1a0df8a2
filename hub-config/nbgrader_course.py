"""The nbgrader lab course on the hub: include from a JupyterHub config with

    exec(open(Path(__file__).with_name("nbgrader_course.py")).read())  # c is in scope

or call ``configure_course(c, ...)`` after importing this file as a module.

What it sets up, following nbgrader's "Using nbgrader with JupyterHub" layout:

* groups ``nbgrader-<course>`` (students) and ``formgrade-<course>`` (instructors
  and graders); nbgrader's JupyterHub auth plugin lets a student fetch and
  submit only for courses whose ``nbgrader-`` group they are in;
* a hub-managed service ``<course>``: a JupyterLab run as the course's grader
  account in the course root (``notebooks/`` of this repository, or a copy),
  where graders use formgrader; only the ``formgrade-`` group may open it;
* the exchange directory (world-writable, sticky) through which assignments
  are released and submissions collected;
* ``LAB_COURSE_*`` variables in every student server, and nbgrader's student
  config (course id, exchange) so that the Assignments tab works unchanged.

Environment: KVS_COURSE_ID (default os-lab), KVS_COURSE_ROOT (default
/srv/nbgrader/<course>: made on first start from notebooks/ here, owned by
the course account), KVS_NBGRADER_EXCHANGE (default /srv/nbgrader/exchange),
KVS_COURSE_GRADERS (comma-separated hub user names, default "instructor"),
KVS_COURSE_ACCOUNT (the system account the course service runs as when the
hub runs as root, default grader-<course>: Jupyter refuses to serve as root,
and graders should not get a root shell), KVS_COURSE_SERVICE_PORT (9999).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def course_settings(environ=None) -> dict:
    """The course's names and paths, from the environment (pure)."""
    env = os.environ if environ is None else environ
    course = env.get("KVS_COURSE_ID", "os-lab")
    graders = [g for g in env.get("KVS_COURSE_GRADERS", "instructor").split(",") if g]
    return {
        "course_id": course,
        "root": env.get("KVS_COURSE_ROOT", f"/srv/nbgrader/{course}"),
        "account": env.get("KVS_COURSE_ACCOUNT", f"grader-{course}"),
        "exchange": env.get("KVS_NBGRADER_EXCHANGE", "/srv/nbgrader/exchange"),
        "graders": graders,
        "student_group": f"nbgrader-{course}",
        "grader_group": f"formgrade-{course}",
        "service_port": int(env.get("KVS_COURSE_SERVICE_PORT", "9999")),
    }


def hub_settings(s: dict, as_root: bool = False) -> dict:
    """JupyterHub settings (groups, roles, service) for the course ``s`` (pure).
    ``as_root``: the hub runs as root, so the service runs as the course account."""
    service_cmd = [sys.executable, "-m", "jupyterhub.singleuser", "--debug",
                   f"--ServerApp.root_dir={s['root']}"]  # fmt: skip
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
            },  # fmt: skip
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
                    # nbgrader runs `alembic` by name.
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.defpath}",
                },
                "oauth_no_confirm": True,
                **({"user": s["account"]} if as_root else {}),
            }
        ],
    }


def student_environment(s: dict) -> dict:
    """What a student server needs to see the course (nbgrader reads these via its config)."""
    return {
        "KVS_COURSE_ID": s["course_id"],
        "KVS_NBGRADER_EXCHANGE": s["exchange"],
        "JUPYTER_CONFIG_PATH": str(REPO / "hub-config" / "nbgrader-student"),
    }


def make_exchange(path: str) -> None:
    """The exchange directory: world-writable and sticky, as nbgrader requires."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    if os.stat(p).st_uid == os.getuid():
        p.chmod(0o1777)


def prepare_course_root(s: dict, as_root: bool) -> None:
    """Make the course root from this repository's notebooks/ if it has no
    nbgrader_config.py yet (an existing course is never touched), owned by the
    course account (created if missing) when running as root."""
    root = Path(s["root"])
    if as_root:
        try:
            pwd.getpwnam(s["account"])
        except KeyError:
            subprocess.run(["useradd", "--system", "--create-home", "--shell", "/bin/bash",
                            "--user-group", s["account"]], check=True)  # fmt: skip
    if (root / "nbgrader_config.py").exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "notebooks" / "nbgrader_config.py", root)
    shutil.copytree(REPO / "notebooks" / "source", root / "source", dirs_exist_ok=True)
    if as_root:
        pw = pwd.getpwnam(s["account"])
        for d, _dirs, files in os.walk(root):
            for name in [d, *(os.path.join(d, f) for f in files)]:
                os.chown(name, pw.pw_uid, pw.pw_gid)


def configure_course(c, environ=None, create_exchange: bool = True, prepare: bool = True) -> dict:
    """Apply the course to JupyterHub config ``c``; return its settings."""
    s = course_settings(environ)
    as_root = os.getuid() == 0
    h = hub_settings(s, as_root)
    # extend/update work both on values set before and on traitlets' lazy
    # values (what `c.JupyterHub.services.append(...)` elsewhere leaves behind).
    c.JupyterHub.load_groups.update(h["load_groups"])
    c.JupyterHub.load_roles.extend(h["load_roles"])
    c.JupyterHub.services.extend(h["services"])
    c.Spawner.environment.update(student_environment(s))
    if create_exchange:
        make_exchange(s["exchange"])
    if prepare:
        prepare_course_root(s, as_root)
    return s


if "get_config" in globals():  # exec'd from a JupyterHub config
    configure_course(get_config())  # noqa: F821

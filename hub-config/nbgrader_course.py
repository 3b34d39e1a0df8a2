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
notebooks/ here), KVS_NBGRADER_EXCHANGE (default /srv/nbgrader/exchange),
KVS_COURSE_GRADERS (comma-separated hub user names, default "instructor").
"""

from __future__ import annotations

import os
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
        "root": env.get("KVS_COURSE_ROOT", str(REPO / "notebooks")),
        "exchange": env.get("KVS_NBGRADER_EXCHANGE", "/srv/nbgrader/exchange"),
        "graders": graders,
        "student_group": f"nbgrader-{course}",
        "grader_group": f"formgrade-{course}",
        "service_port": int(env.get("KVS_COURSE_SERVICE_PORT", "9999")),
    }


def hub_settings(s: dict) -> dict:
    """JupyterHub settings (groups, roles, service) for the course ``s`` (pure)."""
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


def configure_course(c, environ=None, create_exchange: bool = True) -> dict:
    """Apply the course to JupyterHub config ``c``; return its settings."""
    s = course_settings(environ)
    h = hub_settings(s)
    # extend/update work both on values set before and on traitlets' lazy
    # values (what `c.JupyterHub.services.append(...)` elsewhere leaves behind).
    c.JupyterHub.load_groups.update(h["load_groups"])
    c.JupyterHub.load_roles.extend(h["load_roles"])
    c.JupyterHub.services.extend(h["services"])
    c.Spawner.environment.update(student_environment(s))
    if create_exchange:
        make_exchange(s["exchange"])
    return s


if "get_config" in globals():  # exec'd from a JupyterHub config
    configure_course(get_config())  # noqa: F821

"""Jupyter configuration for the two kinds of servers on a course hub.

``student/``: every student's server (JUPYTER_CONFIG_PATH): nbgrader's
student settings, the Assignment List only (no Create Assignment, formgrader
or course list: nbgrader's "one class, multiple graders" table), and no
JupyterLab news pop-up.

``course/``: the graders' course service: formgrader and Create Assignment,
no Assignment List or course list, no news pop-up.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

ROLES = ("student", "course")


def readable_by_all(path: Path) -> bool:
    """Any account can list ``path`` and read what is in it: the directory is
    o+rx and every directory above it o+x."""
    try:
        if path.stat().st_mode & 0o005 != 0o005:
            return False
        return all(parent.stat().st_mode & 0o001 for parent in path.parents)
    except OSError:
        return False


def config_dir(role: str, package_dir: Path | None = None) -> str:
    """The directory for ``role``, one that students' accounts can read.

    The hub may import this package from a clone other accounts cannot enter
    (``python -m jupyterhub`` run in a private clone puts it first on
    sys.path); scripts/install-deps.sh then installs a copy into the Python
    environment, whose directory is the answer. (Asking importlib.metadata
    where the package is installed is no help: a clone's own
    ``kubevirt_spawner.egg-info`` answers first.) ``package_dir``: where this
    package is imported from (for tests)."""
    if role not in ROLES:
        raise ValueError(f"no Jupyter config for {role!r}; roles: {', '.join(ROLES)}")
    here = (package_dir or Path(__file__).resolve().parent) / role
    if readable_by_all(here):
        return str(here)
    installed = Path(sysconfig.get_paths()["purelib"]) / "kubevirt_spawner" / "jupyter_config"
    candidate = installed.resolve() / role
    return str(candidate if candidate.is_dir() and readable_by_all(candidate) else here)

"""Helpers for the local end-to-end tests (a module of its own, not conftest:
tests/local and tests/cluster both have a conftest.py, and `from conftest
import` would pick whichever pytest loaded last)."""

import pwd
import subprocess
from pathlib import Path

from hubctl import Hub

# A port the "clash" profile in the test hub's config forwards ssh to.
CLASH_PORT = 47922


def user_processes(name: str) -> list[str]:
    """ps lines of every live process of system account ``name`` (zombies,
    which have exited and wait only for their parent to collect the status,
    do not count)."""
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return []
    out = subprocess.run(
        ["ps", "-ww", "-o", "stat=,pid=,args=", "-u", str(uid)], capture_output=True, text=True
    ).stdout
    return [line for line in out.splitlines() if line.strip() and not line.startswith("Z")]


def qemu_for(runtime_root: str) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "qemu-system" in line and runtime_root in line]


def assert_nothing_left(hub: Hub, name: str) -> None:
    assert user_processes(name) == [], f"processes of {name} left behind"
    assert not Path(hub.runtime_root, name).exists(), f"runtime dir of {name} left behind"
    assert qemu_for(str(Path(hub.runtime_root, name))) == []

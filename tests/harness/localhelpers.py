"""Helpers for the local end-to-end tests (a module of its own, not conftest:
tests/local and tests/cluster both have a conftest.py, and `from conftest
import` would pick whichever pytest loaded last)."""

import os
import pwd
import subprocess
import time
from pathlib import Path

from harness.hubctl import Hub

# A port the "clash" profile in the test hub's config forwards ssh to.
CLASH_PORT = 47922


def in_this_pid_namespace(pid: int | str) -> bool:
    """The process belongs to this machine's PID namespace, not to a node of
    the KubeVirt test cluster, whose containers run as uids that a student
    account here may also have (KubeVirt's 107, say)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid") == os.readlink("/proc/self/ns/pid")
    except OSError:
        return False


def user_processes(name: str) -> list[str]:
    """ps lines of every live process of system account ``name`` on this
    machine (zombies, which have exited and wait only for their parent to
    collect the status, do not count)."""
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return []
    out = subprocess.run(
        ["ps", "-ww", "-o", "stat=,pid=,args=", "-u", str(uid)], capture_output=True, text=True
    ).stdout
    return [
        line
        for line in out.splitlines()
        if line.strip() and not line.startswith("Z") and in_this_pid_namespace(line.split()[1])
    ]


def qemu_for(runtime_root: str) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "qemu-system" in line and runtime_root in line]


def assert_nothing_left(hub: Hub, name: str, grace: float = 10) -> None:
    """No process, runtime directory or VM of ``name`` (processes get ``grace``
    seconds to finish exiting after the hub says the server stopped)."""
    deadline = time.monotonic() + grace
    while (left := user_processes(name)) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert left == [], f"processes of {name} left behind: {left}"
    assert not Path(hub.runtime_root, name).exists(), f"runtime dir of {name} left behind"
    assert qemu_for(str(Path(hub.runtime_root, name))) == []

"""Helpers for the local end-to-end tests (a module of its own, not conftest:
tests/local and tests/cluster both have a conftest.py, and `from conftest
import` would pick whichever pytest loaded last)."""

import os
import pwd
import subprocess
import time
from pathlib import Path

from harness.hubctl import Hub
from kubevirt_spawner.lab import LabEnv

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


def wait_for(predicate, timeout: float, what: str, hub: Hub | None = None, every: float = 0.5):
    """Poll ``predicate`` until it is true; TimeoutError (with the hub's log) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise TimeoutError(
        f"timed out after {timeout}s waiting for {what}\n" + (hub.log_tail() if hub else "")
    )


def messages(events: list[dict]) -> str:
    """What a spawn's progress events said, one per line."""
    return "\n".join(e.get("message", "") for e in events)


def spawn_ok(hub: Hub, name: str, options: dict | None = None) -> list[dict]:
    """Spawn ``name``'s server (with ``options``, e.g. a profile) and assert it became ready."""
    events = hub.spawn(name, options)
    assert events[-1].get("ready"), f"{messages(events)}\n{hub.log_tail()}"
    return events


def pinned_host_key(hub: Hub, name: str) -> str:
    """The VM host key the spawner pinned for ``name`` (its known_hosts line)."""
    return Path(hub.runtime_root, name, "known_hosts").read_text().split(" ", 1)[1].strip()


async def term_run(term, command: str, timeout: float = 180) -> str:
    """Run ``command`` in a JupyterLab terminal; assert it exited 0; its output."""
    out = await term.run(command, timeout=timeout)
    assert term.last_status == 0, f"{command}: {out}"
    return out


def lab_env_of(pid: int) -> LabEnv:
    """The LAB_* environment of a running process (a student's notebook server)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    env = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
    return LabEnv.from_environ(env)


def pss_mb(pids: list[int]) -> float:
    """Proportional set size of ``pids`` together, MiB (shared pages split among sharers)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024

"""What the parts of kubevirt-spawner agree on, written once.

This module imports nothing else of the package, so that the spawners, the
lab manager and the student side can all depend on it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

_PLAIN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
SERVER_SEPARATOR = "~"  # never in a name part (see runtime_dir_name)
HASHED_MARK = "="  # only in a hashed name part


def _name_part(name: str) -> str:
    if _PLAIN.fullmatch(name):
        return name
    readable = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:16] or "x"
    return f"{readable}{HASHED_MARK}{hashlib.sha256(name.encode()).hexdigest()[:16]}"


def runtime_dir_name(user: str, server: str = "") -> str:
    """The runtime directory of ``user``'s server ``server`` ("" = the default server).

    Distinct (user, server) pairs give distinct names, by construction: a
    part that is plain (lower-case letters, digits, '_', '-', at most 32) is
    used as it is; any other part becomes a readable prefix, '=', and 16 hex
    digits of its SHA-256, and no plain part contains '='; the server part
    follows '~', which no part contains. So "Alice Smith" and the plain name
    "alice-smith-8ae10dfc9a" differ, and user "bob.x" is not bob's server "x".
    Names are filesystem-safe and at most 67 bytes (unix socket paths under
    the runtime root stay short). A spawn still refuses to remove a
    directory marked as another server's (LocalVMSpawner), which holds even
    against a hash collision."""
    if not user:
        raise ValueError("a runtime directory needs a user name")
    name = _name_part(user)
    return name + (f"{SERVER_SEPARATOR}{_name_part(server)}" if server else "")


# ---------------------------------------------------------------------------
# The LAB_* environment: what a spawner gives the notebook server, and what
# the student side (labvm, notebooks, graders) reads. docs/design.md lists it.
# ---------------------------------------------------------------------------
NO_VM_MESSAGE = "This server has no VM (its profile runs labs in the notebook environment only)."


class LabError(Exception):
    """A failure explained in one sentence for the student."""


class NoVMError(LabError):
    """The server was started without a VM."""


@dataclass(frozen=True)
class LabEnv:
    """The ``LAB_*`` contract between a spawner and the notebook server."""

    vm_host: str
    ssh_port: int
    gdb_remote: str
    vmlinux: str
    kdir: str
    arch: str
    ssh_key: str
    known_hosts: str
    backend: str = "local"
    console_socket: str = ""
    console_log: str = ""
    qmp_socket: str = ""
    initrd: str = ""
    state_dir: str = ""
    state_quota: int = 0

    _NAMES = {
        "vm_host": "LAB_VM_HOST",
        "ssh_port": "LAB_VM_SSH_PORT",
        "gdb_remote": "LAB_GDB_REMOTE",
        "vmlinux": "LAB_VMLINUX",
        "kdir": "LAB_KDIR",
        "arch": "LAB_ARCH",
        "ssh_key": "LAB_SSH_KEY",
        "known_hosts": "LAB_SSH_KNOWN_HOSTS",
        "backend": "LAB_BACKEND",
        "console_socket": "LAB_VM_CONSOLE",
        "console_log": "LAB_VM_CONSOLE_LOG",
        "qmp_socket": "LAB_VM_QMP",
        "initrd": "LAB_VM_INITRD",
        "state_dir": "LAB_VM_STATE_DIR",
        "state_quota": "LAB_VM_STATE_QUOTA",
    }

    def to_environ(self) -> dict[str, str]:
        """The environment variables for the notebook server (empty values left out)."""
        env = {name: str(getattr(self, attr)) for attr, name in self._NAMES.items()}
        return {k: v for k, v in env.items() if v and v != "0"}

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> LabEnv:
        env = os.environ if environ is None else environ
        if not env.get("LAB_VM_HOST"):
            raise NoVMError(NO_VM_MESSAGE)
        values = {attr: env.get(name, "") for attr, name in cls._NAMES.items()}
        try:
            values["ssh_port"] = int(values["ssh_port"] or 22)
        except ValueError:
            raise LabError(
                f"LAB_VM_SSH_PORT is not a port number: {values['ssh_port']!r}"
            ) from None
        try:
            values["state_quota"] = int(values["state_quota"] or 0)
        except ValueError:
            raise LabError(
                f"LAB_VM_STATE_QUOTA is not a number of bytes: {values['state_quota']!r}"
            ) from None
        values["backend"] = values["backend"] or "local"
        return cls(**values)


def ssh_argv(env: LabEnv, command: str | None = None, tty: bool = False) -> list[str]:
    """The ssh command line that logs into the VM as root (runs ``command`` if given)."""
    argv = [
        "ssh",
        "-i",
        env.ssh_key,
        "-p",
        str(env.ssh_port),
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={env.known_hosts}",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "ServerAliveInterval=5",
        "-o",
        "ServerAliveCountMax=6",
        "-t" if tty else "-T",
        f"root@{env.vm_host}",
    ]
    return argv + ([command] if command is not None else [])


# ---------------------------------------------------------------------------
# Console markers the course guest prints (images/guest/rcS) and the kernel's
# own panic line: both backends and the student side wait for or look for them.
# ---------------------------------------------------------------------------
MARK_INIT = "labvm: init started"
MARK_SSH_READY = "labvm: ssh ready"
MARK_PANIC = "Kernel panic - not syncing"

# The qcow2 node of a local VM that holds its checkpoints (no guest device sees
# it): QEMU's command line (local/qemu.py) and `labvm snapshot` (checkpoints.py).
STATE_NODE = "labvm-state"

# ---------------------------------------------------------------------------
# Labels on everything the cluster backend creates, which the lab manager's
# reaper lists (kubespawner's own username label included).
# ---------------------------------------------------------------------------
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "kubevirt-spawner"
COMPONENT = "app.kubernetes.io/component"
VM_COMPONENT = "lab-vm"
SERVER_LABEL = "kubevirt-spawner/server"
USERNAME_LABEL = "hub.jupyter.org/username"
MANAGED_SELECTOR = f"{MANAGED_BY}={MANAGED_BY_VALUE}"


# ---------------------------------------------------------------------------
# What each backend's spawner saves in JupyterHub's database (get_state), which
# the lab manager reads to find a server's VM. The keys are written here once.
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalVMState:
    """LocalVMSpawner's saved state: its run directory and its QEMU's identity."""

    rundir: str
    pid: int = 0
    start_time: int = 0  # clock ticks since boot (/proc/PID/stat), with pid the identity
    ssh_port: int = 0
    notebook_start_time: int = 0
    state_key: str = ""  # which guest build and VM shape a suspend would save (local/suspend.py)
    host_key: str = ""  # the VM's pinned public host key, kept across a suspend

    def owned(self) -> bool:
        return bool(self.rundir)

    def to_state(self) -> dict:
        return {
            "rundir": self.rundir,
            "vm_pid": self.pid,
            "vm_start_time": self.start_time,
            "vm_ssh_port": self.ssh_port,
            "vm_state_key": self.state_key,
            "vm_host_key": self.host_key,
        }

    @classmethod
    def from_state(cls, state: Mapping) -> LocalVMState:
        return cls(
            rundir=state.get("rundir", ""),
            pid=int(state.get("vm_pid") or 0),
            start_time=int(state.get("vm_start_time") or 0),
            ssh_port=int(state.get("vm_ssh_port") or 0),
            notebook_start_time=int(state.get("notebook_start_time") or 0),
            state_key=state.get("vm_state_key", ""),
            host_key=state.get("vm_host_key", ""),
        )


@dataclass(frozen=True)
class KubeVirtVMState:
    """KubeVirtSpawner's saved state: its VirtualMachine's name, whether it
    was created, and whether the last start finished (a server a restarted
    hub restores without it was being started when the hub died)."""

    vm_name: str
    started: bool = False
    start_done: bool = False

    def owned(self) -> bool:
        return bool(self.vm_name)

    def to_state(self) -> dict:
        return {"vm_name": self.vm_name, "vm_started": self.started, "start_done": self.start_done}

    @classmethod
    def from_state(cls, state: Mapping) -> KubeVirtVMState:
        return cls(
            vm_name=state.get("vm_name", ""),
            started=bool(state.get("vm_started")),
            # Empty: saved before any start finished. No key but a state:
            # saved by a version that did not record it, after a finished start.
            start_done=bool(state.get("start_done", bool(state))),
        )


# Each backend's saved-state record, by the backend's name (a new backend adds its own).
SAVED_STATES = {"local": LocalVMState, "kubevirt": KubeVirtVMState}


def backend_of_state(state: Mapping) -> str:
    """Which backend saved ``state``: its name in SAVED_STATES, or "none" (no VM)."""
    for name, record in SAVED_STATES.items():
        if record.from_state(state).owned():
            return name
    return "none"

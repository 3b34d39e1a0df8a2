"""Reaper decisions: pure functions from "what the hub says" and "what exists"
to a list of deletions, each with its reason.

Nothing here touches processes, files or the Kubernetes API; the lab manager
gathers the inputs (``hubclient``, ``localvms``, ``cluster``), calls these
functions, and carries out and logs what they return. Because the inputs are
re-read every round, the reaper keeps no state: a crash or restart loses
nothing.

Idle and over-age servers are not decided here: that is
jupyterhub-idle-culler's job (see ``cull_arbiter``, which only adds the
reason to its decision).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..contract import SERVER_LABEL, USERNAME_LABEL, runtime_dir_name

# Reasons, as they appear in logs and in the reaped_total metric's label.
ORPHAN_NO_SERVER = "orphan-no-server"
ORPHAN_STALE_VM = "orphan-stale-vm"
ORPHAN_EMPTY_RUNDIR = "orphan-empty-rundir"
IDLE = "idle"
MAX_AGE = "max-age"
ABUSE = "abuse"


@dataclass(frozen=True)
class ServerInfo:
    """One server the hub knows about (running or pending), from the hub's API."""

    user: str
    name: str = ""  # "" is the default server
    pending: str | None = None  # "spawn", "stop", ... or None when ready/running
    ready: bool = False
    state: Mapping = field(default_factory=dict)  # the spawner's saved state

    @property
    def key(self) -> str:
        return self.user + (f"/{self.name}" if self.name else "")


@dataclass(frozen=True)
class LocalVM:
    """A QEMU process of ours: its command line names a runtime directory."""

    pid: int
    start_time: int  # clock ticks since boot (/proc/PID/stat field 22)
    rundir: str  # the runtime directory named in its command line
    age: float  # seconds since it started


@dataclass(frozen=True)
class LocalProcess:
    """A notebook-side process of ours (its environment names a runtime directory)."""

    pid: int
    start_time: int
    rundir: str
    age: float


@dataclass(frozen=True)
class RunDirInfo:
    path: str
    age: float  # seconds since its last modification


@dataclass(frozen=True)
class ClusterObject:
    """A Kubernetes object carrying this project's labels."""

    kind: str  # "virtualmachine", "service", "network_policy", "pod"
    namespace: str
    name: str
    labels: Mapping[str, str]
    age: float


@dataclass(frozen=True)
class Deletion:
    kind: str  # "qemu", "process", "rundir", or a cluster kind
    target: str  # what to delete: a pid, a path, namespace/name
    reason: str
    detail: str = ""
    ident: tuple = ()  # what the executor needs: (pid, start_time) or (namespace, name)

    def log_line(self) -> str:
        return f"{self.kind} {self.target}: {self.reason}" + (
            f" ({self.detail})" if self.detail else ""
        )


def server_rundir_name(server: ServerInfo) -> str:
    return runtime_dir_name(server.user, server.name)


def local_orphans(
    servers: Iterable[ServerInfo],
    vms: Iterable[LocalVM],
    processes: Iterable[LocalProcess],
    rundirs: Iterable[RunDirInfo],
    runtime_root: str,
    grace: float,
) -> list[Deletion]:
    """What to delete on the local backend.

    - a QEMU whose runtime directory belongs to no server the hub knows
      (running or pending): ``orphan-no-server``;
    - a QEMU in the directory of a *ready* server whose saved state names a
      different VM process: ``orphan-stale-vm``;
    - notebook-side processes (their environment names a runtime directory)
      of no known server: ``orphan-no-server``;
    - a runtime directory of no known server with no live QEMU in it:
      ``orphan-empty-rundir``.

    Anything younger than ``grace`` seconds is left alone, so a spawn that
    began after the hub was asked is never raced.
    """
    root = runtime_root.rstrip("/")
    servers = list(servers)
    known = {server_rundir_name(s) for s in servers}
    ready_vm = {
        server_rundir_name(s): (s.state.get("vm_pid"), s.state.get("vm_start_time"))
        for s in servers
        if s.ready and not s.pending and s.state.get("vm_pid")
    }

    def dir_name(path: str) -> str | None:
        parent, _, name = path.rstrip("/").rpartition("/")
        return name if parent == root and name else None

    out: list[Deletion] = []
    live_dirs = set()
    for vm in sorted(vms, key=lambda v: v.pid):
        name = dir_name(vm.rundir)
        if name is None:
            continue  # not under our runtime root: not ours to judge
        live_dirs.add(name)
        if vm.age < grace:
            continue
        if name not in known:
            out.append(
                Deletion(
                    "qemu",
                    str(vm.pid),
                    ORPHAN_NO_SERVER,
                    f"runtime dir {vm.rundir} belongs to no server",
                    (vm.pid, vm.start_time),
                )
            )
        elif name in ready_vm and ready_vm[name] != (vm.pid, vm.start_time):
            out.append(
                Deletion(
                    "qemu",
                    str(vm.pid),
                    ORPHAN_STALE_VM,
                    f"server's VM is pid {ready_vm[name][0]}, not this one",
                    (vm.pid, vm.start_time),
                )
            )
    for p in sorted(processes, key=lambda p: p.pid):
        name = dir_name(p.rundir)
        if name is None or p.age < grace or name in known:
            continue
        out.append(
            Deletion(
                "process",
                str(p.pid),
                ORPHAN_NO_SERVER,
                f"environment names {p.rundir}, which belongs to no server",
                (p.pid, p.start_time),
            )
        )
    for d in sorted(rundirs, key=lambda d: d.path):
        name = dir_name(d.path)
        if name is None or name in known or name in live_dirs or d.age < grace:
            continue
        out.append(Deletion("rundir", d.path, ORPHAN_EMPTY_RUNDIR, "no server, no VM"))
    return out


# Label keys, as kubevirt_spawner.kubevirt.manifests and kubespawner set them.


def cluster_orphans(
    servers: Iterable[ServerInfo], objects: Iterable[ClusterObject], grace: float
) -> list[Deletion]:
    """What to delete on the cluster: labelled objects of no known server.

    An object belongs to a server when its ``kubevirt-spawner/server`` label
    equals the ``vm_name`` in that server's saved state. A user with a
    *pending* server has no saved state yet, so every object labelled with
    that user's (escaped) name is protected until the spawn settles.
    Objects without the server label, or younger than ``grace``, are kept.
    """
    servers = list(servers)
    vm_names = {s.state.get("vm_name") for s in servers if s.state.get("vm_name")}
    pending_users = {s.user for s in servers if s.pending}
    out = []
    for obj in sorted(objects, key=lambda o: (o.kind, o.namespace, o.name)):
        server = obj.labels.get(SERVER_LABEL)
        if not server or obj.age < grace or server in vm_names:
            continue
        user_label = obj.labels.get(USERNAME_LABEL, "")
        if any(_label_matches_user(user_label, u) for u in pending_users):
            continue
        out.append(
            Deletion(
                obj.kind,
                f"{obj.namespace}/{obj.name}",
                ORPHAN_NO_SERVER,
                f"server label {server!r} matches no running server",
                (obj.namespace, obj.name),
            )
        )
    return out


def _label_matches_user(label: str, user: str) -> bool:
    # kubespawner escapes names into labels (safe_slug); an exact match, or
    # the slug's readable prefix, is enough to *protect* an object.
    if not label:
        return False
    plain = re.sub(r"[^a-z0-9]+", "-", user.lower()).strip("-")
    return label == user or label.startswith(plain[:20])


def cull_reason(
    inactive: timedelta | None, server: Mapping, now: datetime, idle_timeout: float, max_age: float
) -> str | None:
    """Why jupyterhub-idle-culler should stop ``server``: ``idle``,
    ``max-age`` or None. ``idle_timeout``/``max_age`` of 0 turn a rule off.
    ``server`` is the hub's server model (``started`` is an ISO timestamp)."""
    if idle_timeout and inactive is not None and inactive.total_seconds() >= idle_timeout:
        return IDLE
    started = server.get("started")
    if max_age and started:
        age = now - datetime.fromisoformat(started.replace("Z", "+00:00"))
        if age.total_seconds() >= max_age:
            return MAX_AGE
    return None

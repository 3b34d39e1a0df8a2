"""A cgroup per student server: CPU, memory and process-count limits for
the student's QEMU and JupyterLab together, like systemd's per-user slices.

cgroup v2 where the machine has a unified hierarchy with the cpu, memory and
pids controllers; else cgroup v1 with one hierarchy per controller (what
these development machines have: v1 mounts plus an empty v2 one). The
layout is read from /proc/self/mountinfo; the limits are plain files:

=========  ===========================================  ==============
limit      v2 (in the server's group)                   v1
=========  ===========================================  ==============
cpu        ``cpu.max`` = "QUOTA PERIOD"                 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``
memory     ``memory.max`` (and ``memory.swap.max`` 0)   ``memory.limit_in_bytes``
pids       ``pids.max``                                 ``pids.max``
=========  ===========================================  ==============

ref: Documentation/admin-guide/cgroup-v2.rst and cgroup-v1/{cpu,memory,pids}
in the kernel tree. Processes are moved in by writing their pid to
``cgroup.procs``; their later children are born inside.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CONTROLLERS = ("cpu", "memory", "pids")
CPU_PERIOD_US = 100_000


class CgroupError(Exception):
    """No cgroup can be made for the limits; the message says why."""


@dataclass(frozen=True)
class Limits:
    cpu: float | None = None  # cores
    memory: int | None = None  # bytes
    pids: int | None = None

    def any(self) -> bool:
        return any(v is not None for v in (self.cpu, self.memory, self.pids))


@dataclass(frozen=True)
class Layout:
    """Where each controller's hierarchy is mounted; ``version`` 2 means one
    unified mount (the same path for all three)."""

    version: int
    mounts: dict  # controller -> mount point


def parse_layout(mountinfo: str, v2_controllers: str | None) -> Layout | None:
    """The layout from /proc/self/mountinfo's text (pure). ``v2_controllers``
    is the unified mount's ``cgroup.controllers`` (None when unreadable). None:
    no hierarchy has all three controllers."""
    v1, unified = {}, None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        point, fstype, options = fields[4], rfields[0], rfields[2].split(",")
        if fstype == "cgroup2":
            unified = point
        elif fstype == "cgroup":
            for c in CONTROLLERS:
                if c in options:
                    v1.setdefault(c, point)
    if unified and v2_controllers is not None and set(CONTROLLERS) <= set(v2_controllers.split()):
        return Layout(2, {c: unified for c in CONTROLLERS})
    if set(CONTROLLERS) <= set(v1):
        return Layout(1, {c: v1[c] for c in CONTROLLERS})
    return None


def limit_files(layout: Layout, limits: Limits) -> list[tuple[str, str, str]]:
    """(controller, file, value) to write in a server's group (pure)."""
    out = []
    if limits.cpu is not None:
        quota = max(1000, int(limits.cpu * CPU_PERIOD_US))
        if layout.version == 2:
            out.append(("cpu", "cpu.max", f"{quota} {CPU_PERIOD_US}"))
        else:
            out += [
                ("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US)),
                ("cpu", "cpu.cfs_quota_us", str(quota)),
            ]
    if limits.memory is not None:
        if layout.version == 2:
            out += [
                ("memory", "memory.max", str(limits.memory)),
                ("memory", "memory.swap.max", "0"),
            ]
        else:
            out.append(("memory", "memory.limit_in_bytes", str(limits.memory)))
    if limits.pids is not None:
        out.append(("pids", "pids.max", str(limits.pids)))
    return out


def group_dirs(layout: Layout, parent: str, name: str) -> dict[str, Path]:
    """The server's group directory in each controller's hierarchy (pure)."""
    return {c: Path(layout.mounts[c], parent, name) for c in CONTROLLERS}


def detect_layout() -> Layout | None:
    mountinfo = Path("/proc/self/mountinfo").read_text()
    v2 = None
    for line in mountinfo.splitlines():
        if " - cgroup2 " in line:
            try:
                v2 = Path(line.split()[4], "cgroup.controllers").read_text()
            except OSError:
                v2 = None
    return parse_layout(mountinfo, v2)


class ServerCgroup:
    """The cgroup of one student server, ``PARENT/NAME`` in every hierarchy."""

    def __init__(self, layout: Layout, parent: str, name: str):
        self.layout, self.parent, self.name = layout, parent, name
        self.dirs = group_dirs(layout, parent, name)

    def create(self, limits: Limits) -> ServerCgroup:
        try:
            if self.layout.version == 2:
                root = Path(self.layout.mounts["cpu"])
                _enable_controllers(root)
                (root / self.parent).mkdir(exist_ok=True)
                _enable_controllers(root / self.parent)
            for d in set(self.dirs.values()):
                d.mkdir(parents=True, exist_ok=True)
            for controller, name, value in limit_files(self.layout, limits):
                (self.dirs[controller] / name).write_text(value)
        except OSError as e:
            self.remove()
            raise CgroupError(f"cannot set up the cgroup {self.parent}/{self.name}: {e}") from None
        return self

    def add(self, pid: int) -> None:
        for d in set(self.dirs.values()):
            (d / "cgroup.procs").write_text(str(pid))

    def pids(self) -> set[int]:
        found = set()
        for d in set(self.dirs.values()):
            try:
                found |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
            except OSError:
                pass
        return found

    def remove(self, timeout: float = 5) -> None:
        """Kill whatever is still inside, then remove the group everywhere."""
        deadline = time.monotonic() + timeout
        while (left := self.pids()) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        for d in set(self.dirs.values()):
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                # zombies still charged to it, or a process that would not
                # die: leave the empty-handed group rather than fail the stop
                pass


def _enable_controllers(group: Path) -> None:
    wanted = " ".join(f"+{c}" for c in CONTROLLERS)
    (group / "cgroup.subtree_control").write_text(wanted)

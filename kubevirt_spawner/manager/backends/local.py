"""The local backend as the lab manager sees it: QEMU processes and runtime
directories found in /proc and under the spawner's runtime root, their CPU
and memory, and the actions (reset over QMP, inspect over ssh, delete).

Plain functions and :class:`LocalBackend`, which the manager's core uses
through the protocol in ``backends/__init__.py``; no JupyterHub, no tornado.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from ... import consolelog
from ...contract import MARK_SSH_READY, LabEnv, LabError, LocalVMState, ssh_argv
from ...local import vmprocess
from ...local.vmprocess import ProcessId
from ...qmp import qmp_command
from .. import reaper
from ..reaper import Deletion, LocalProcess, LocalVM, RunDirInfo
from . import ActionError, Usage, delete_each

log = logging.getLogger("kubevirt_spawner.manager")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise RuntimeError("/proc/stat has no btime")


BOOT_TIME = _boot_time()


def process_usage(pid: int) -> tuple[float, int, int] | None:
    """(CPU seconds used, resident bytes, start time in ticks) of ``pid``, all threads."""
    f = vmprocess.stat_fields(pid)
    if f is None or f[0] in ("Z", "X"):
        return None
    # fields after comm: state=0 ... utime=11 stime=12 starttime=19 rss=21
    return (int(f[11]) + int(f[12])) / CLK_TCK, int(f[21]) * PAGE, int(f[19])


def start_epoch(start_ticks: int) -> float:
    """Wall-clock time (epoch seconds) at which a process started."""
    return BOOT_TIME + start_ticks / CLK_TCK


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _qmp_rundir(argv: list[str]) -> str | None:
    """The runtime directory of a lab VM's QEMU argv (from its -qmp socket)."""
    if not argv or "qemu-system" not in os.path.basename(argv[0]):
        return None
    if not any(a.startswith("labvm") for a in argv):
        return None
    for i, a in enumerate(argv[:-1]):
        if a == "-qmp" and argv[i + 1].startswith("unix:"):
            sock = argv[i + 1][5:].split(",", 1)[0]
            return os.path.dirname(sock)
    return None


def scan(runtime_root: str) -> tuple[list[LocalVM], list[LocalProcess], list[RunDirInfo]]:
    """Every lab QEMU, notebook-side process and runtime directory under ``runtime_root``."""
    root = runtime_root.rstrip("/")
    now = time.time()
    vms, procs = [], []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        f = vmprocess.stat_fields(pid)
        if f is None or f[0] in ("Z", "X"):
            continue
        start = int(f[19])
        age = now - start_epoch(start)
        rundir = _qmp_rundir(_cmdline(pid))
        if rundir is not None:
            if os.path.dirname(rundir) == root:
                vms.append(LocalVM(pid, start, rundir, age))
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        # LocalVMSpawner gives the notebook (and so its terminals) LAB_VM_QMP.
        for var in environ.split(b"\0"):
            if var.startswith(b"LAB_VM_QMP="):
                rd = os.path.dirname(var[11:].decode(errors="replace"))
                if os.path.dirname(rd) == root:
                    procs.append(LocalProcess(pid, start, rd, age))
                break
    rundirs = []
    try:
        for entry in os.scandir(root):
            if entry.is_dir(follow_symlinks=False):
                rundirs.append(RunDirInfo(entry.path, now - entry.stat().st_mtime))
    except FileNotFoundError:
        pass
    return vms, procs, rundirs


async def delete(d: Deletion) -> None:
    """Carry out one local deletion (idempotent: a gone target is success)."""
    if d.kind in ("qemu", "process"):
        pid, start = d.ident
        await vmprocess.stop_process_group(ProcessId(pid, start), term_timeout=5)
    elif d.kind == "rundir":
        path = Path(d.target)
        if path.is_symlink():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path, ignore_errors=False)
    else:
        raise ValueError(f"not a local deletion: {d.kind}")


def vm_of_state(state: dict) -> ProcessId | None:
    """The VM process a LocalVMSpawner state names, if it is still that process."""
    vm = LocalVMState.from_state(state)
    pid, start, rundir = vm.pid, vm.start_time, vm.rundir
    if not (pid and start and rundir):
        return None
    ident = ProcessId(int(pid), int(start))
    return ident if vmprocess.is_same_process(ident, marker=rundir) else None


async def qmp(rundir: str, command: str, timeout: float = 10) -> dict:
    """One QMP command on the VM's monitor socket (in a thread: it blocks)."""
    return await asyncio.to_thread(qmp_command, os.path.join(rundir, "qmp.sock"), command, timeout)


async def vm_status(rundir: str) -> str:
    """QEMU's run state ("running", "paused", ...) or "unreachable"."""
    try:
        reply = await qmp(rundir, "query-status", timeout=3)
        return reply.get("return", {}).get("status", "unknown")
    except (OSError, LabError, ValueError):
        return "unreachable"


async def ssh_run(state: dict, command: str, timeout: float = 20) -> tuple[int, str]:
    """Run ``command`` in the VM as root with the server's own key (we are root)."""
    vm = LocalVMState.from_state(state)
    env = LabEnv(
        vm_host="127.0.0.1",
        ssh_port=vm.ssh_port,
        gdb_remote="",
        vmlinux="",
        kdir="",
        arch="",
        ssh_key=os.path.join(vm.rundir, "id_ed25519"),
        known_hosts=os.path.join(vm.rundir, "known_hosts"),
    )
    argv = ssh_argv(env, command)
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return 124, "timed out"
    return proc.returncode, out.decode(errors="replace")


async def wait_ssh_ready(rundir: str, since: int, timeout: float) -> bool:
    """Wait until the console log shows the guest's ssh-ready marker after byte ``since``."""
    log = Path(rundir, "console.log")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = consolelog.has_marker(log, MARK_SSH_READY, since)
        if seen is None:  # no console log: the VM is gone
            return False
        if seen:
            return True
        await asyncio.sleep(0.3)
    return False


def console_size(rundir: str) -> int:
    return consolelog.size(os.path.join(rundir, "console.log"))


# -- suspended VMs (kubevirt_spawner.vmstate's layout, in students' homes) --
def state_dir_of(user: str, template: str) -> Path | None:
    """The student's VM-state directory, or None without a system account."""
    import pwd

    try:
        home = pwd.getpwnam(user).pw_dir
    except KeyError:
        return None
    return Path(template.format(home=home, username=user))


def saved_states(user: str, template: str) -> list[dict]:
    """The suspended VMs a student has (also those kept for another guest
    build), by lstat only: root reads nothing the student wrote."""
    import pwd
    import stat

    from ...vmstate import STATE_FILE, usage

    path = state_dir_of(user, template)
    if path is None:
        return []
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return []
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != pwd.getpwnam(user).pw_uid:
        return []
    out = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if not entry.name.startswith(("suspended-", "unrestorable-")):
            continue
        if not entry.is_dir(follow_symlinks=False):
            continue
        try:
            saved = os.lstat(os.path.join(entry.path, STATE_FILE)).st_mtime
        except FileNotFoundError:
            continue
        out.append(
            {
                "user": user,
                "name": entry.name,
                "bytes": usage(Path(entry.path)),
                "saved_at": saved,
                "restorable": entry.name.startswith("suspended-"),
            }
        )
    return out


async def discard_state(user: str, template: str, name: str) -> int:
    """Remove one saved state, as the student (kubevirt_spawner.vmstate discard)."""
    import json
    import pwd
    import sys

    path = state_dir_of(user, template)
    pw = pwd.getpwnam(user)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-m",
        "kubevirt_spawner.vmstate",
        "discard",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        user=pw.pw_uid,
        group=pw.pw_gid,
        extra_groups=[],
        cwd="/",
    )
    out, err = await proc.communicate(json.dumps({"state_dir": str(path), "name": name}).encode())
    try:
        answer = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise LabError(
            f"discarding failed: {err.decode(errors='replace').strip()[-200:]}"
        ) from None
    if "error" in answer:
        raise LabError(answer["error"])
    return answer["freed"]


def request_suspend(rundir: str) -> bool:
    """Mark a server's next stop as a suspend (before the idle cull's DELETE).

    Root writes into the student's runtime directory: the name is created
    fresh (O_EXCL, no link followed), so a student's link cannot redirect it."""
    from ...local.suspend import REQUEST_FILE

    try:
        fd = os.open(
            os.path.join(rundir, REQUEST_FILE),
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
            0o644,
        )
    except FileExistsError:
        return True
    except OSError:
        return False
    os.close(fd)
    return True


class LocalBackend:
    """The local backend as the lab manager's core sees it (``ManagerBackend``)."""

    name = "local"

    def __init__(self, runtime_root: str, vm_state_dir_template: str = "{home}/.labvm"):
        self.runtime_root = runtime_root
        self.vm_state_dir_template = vm_state_dir_template
        self.resetting: dict[str, int] = {}  # server key -> console offset at reset

    def owns(self, state) -> bool:
        return bool(LocalVMState.from_state(state).rundir)

    def has_vm(self, state) -> bool:
        return bool(LocalVMState.from_state(state).pid)

    async def usage(self, servers) -> dict[str, Usage]:
        out = {}
        for s in servers:
            ident = vm_of_state(s.state)
            measured = ident and process_usage(ident.pid)
            if measured:
                cpu_s, rss, start = measured
                out[s.key] = Usage(memory=rss, cpu_seconds=cpu_s, start=start)
        return out

    async def inspect(self, s, script: str) -> tuple[int, str]:
        return await ssh_run(s.state, script)

    async def vm_state(self, s) -> str:
        if vm_of_state(s.state) is None:
            return "stopped"
        rundir = LocalVMState.from_state(s.state).rundir
        if s.key in self.resetting:
            if not await wait_ssh_ready(rundir, self.resetting[s.key], 0.01):
                return "resetting"
            self.resetting.pop(s.key, None)
        return await vm_status(rundir)

    async def reset(self, s, wait: bool, timeout: float) -> str:
        if vm_of_state(s.state) is None:
            raise ActionError(409, f"{s.user}'s VM is not running")
        rundir = LocalVMState.from_state(s.state).rundir
        offset = console_size(rundir)
        try:
            await qmp(rundir, "system_reset")
        except Exception as e:
            raise ActionError(502, f"QEMU's monitor did not take the reset: {e}") from None
        self.resetting[s.key] = offset
        if not wait:
            return "resetting"
        ok = await wait_ssh_ready(rundir, offset, timeout)
        self.resetting.pop(s.key, None)
        if not ok:
            raise ActionError(504, "the VM did not come back in time")
        return "ready"

    async def reap(self, servers, grace: float, metrics) -> list[Deletion]:
        vms, procs, dirs = scan(self.runtime_root)
        orphans = reaper.local_orphans(servers, vms, procs, dirs, self.runtime_root, grace)
        return await delete_each(orphans, delete, metrics)

    def request_suspend(self, state) -> None:
        rundir = LocalVMState.from_state(state).rundir
        if rundir and os.path.dirname(rundir.rstrip("/")) == self.runtime_root.rstrip("/"):
            request_suspend(rundir)

    def saved_states(self, user: str) -> list[dict]:
        return saved_states(user, self.vm_state_dir_template)

    async def discard_state(self, user: str, name: str) -> int:
        try:
            return await discard_state(user, self.vm_state_dir_template, name)
        except LabError as e:
            raise ActionError(502, str(e)) from None

    def spawn_phases(self, s, started: float, ready: float) -> tuple[float, float] | None:
        """The VM phase ends when the notebook process starts (the spawner starts
        it right after the VM answered ssh and gdb)."""
        nb_pid = s.state.get("pid")
        measured = nb_pid and process_usage(int(nb_pid))
        if not measured:
            return None
        nb_start = start_epoch(measured[2])
        return max(0.0, nb_start - started), max(0.0, ready - nb_start)

"""The local backend as the lab manager sees it: QEMU processes and runtime
directories found in /proc and under the spawner's runtime root, their CPU
and memory, and the actions (reset over QMP, inspect over ssh, delete).

Plain functions; no JupyterHub, no tornado.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path

from .. import vmprocess
from ..lab import LabError, qmp_command
from ..vmprocess import ProcessId
from .reaper import Deletion, LocalProcess, LocalVM, RunDirInfo

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise RuntimeError("/proc/stat has no btime")


BOOT_TIME = _boot_time()


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def process_usage(pid: int) -> tuple[float, int, int] | None:
    """(CPU seconds used, resident bytes, start time in ticks) of ``pid``, all threads."""
    f = _stat_fields(pid)
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
        f = _stat_fields(pid)
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
    pid, start, rundir = state.get("vm_pid"), state.get("vm_start_time"), state.get("rundir")
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
    rundir = state["rundir"]
    argv = [
        "ssh", "-i", os.path.join(rundir, "id_ed25519"), "-p", str(state["vm_ssh_port"]),
        "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={os.path.join(rundir, 'known_hosts')}",
        "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", "-T", "root@127.0.0.1", command,
    ]  # fmt: skip
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
    from ..qemu import MARK_SSH_READY

    log = Path(rundir, "console.log")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(log, "rb") as f:
                f.seek(since)
                if MARK_SSH_READY.encode() in f.read():
                    return True
        except FileNotFoundError:
            return False
        await asyncio.sleep(0.3)
    return False


def console_size(rundir: str) -> int:
    try:
        return os.path.getsize(os.path.join(rundir, "console.log"))
    except OSError:
        return 0

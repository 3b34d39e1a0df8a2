"""Start, watch and stop one QEMU process. Plain async functions; no JupyterHub.

Identity: a pid alone is not trusted after a hub restart (it may have been
reused), so a VM is named by (pid, start time from /proc) and its command
line must mention its runtime directory.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from .. import consolelog
from .qemu import MARK_INIT, MARK_PANIC, MARK_SSH_READY, RunDir


class VMStartError(Exception):
    """The VM did not come up. ``str()`` is for the student; ``detail`` for the log."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail


@dataclass(frozen=True)
class ProcessId:
    pid: int
    start_time: int  # clock ticks since boot, field 22 of /proc/PID/stat


def pick_free_port() -> int:
    """A loopback TCP port free right now (QEMU may still lose a race for
    it: the spawner retries when QEMU cannot bind its forward)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name, or None if the
    process is gone: index 0 is the state, 1 the parent, 11/12 user/system
    ticks, 19 the start time, 21 the resident pages (proc(5), minus 3)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses; split after the last ')'.
    return stat.rsplit(")", 1)[1].split()


def proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot; None if it is gone
    (a zombie counts as gone: it has exited and holds nothing)."""
    fields = stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def identify(pid: int) -> ProcessId | None:
    start = proc_start_time(pid)
    return None if start is None else ProcessId(pid, start)


def is_same_process(ident: ProcessId, marker: str | None = None) -> bool:
    """True if ``ident`` still names the process it named when recorded.

    ``marker``, when given, must also appear in the process's command line.
    """
    if proc_start_time(ident.pid) != ident.start_time:
        return False
    if marker is None:
        return True
    try:
        cmdline = Path(f"/proc/{ident.pid}/cmdline").read_bytes()
    except OSError:
        return False
    return os.fsencode(marker) in cmdline


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first found, then theirs)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = stat_fields(entry.name)
        if fields is None:
            continue
        ppid = int(fields[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


async def stop_process_group(ident: ProcessId, term_timeout: float = 5.0) -> None:
    """SIGTERM the process group led by ``ident``, then SIGKILL; wait until gone.

    Does nothing if ``ident`` no longer names the same process.
    """
    if not is_same_process(ident):
        return
    try:
        pgid = os.getpgid(ident.pid)
    except ProcessLookupError:
        return
    if pgid != ident.pid:
        # Not a group leader (should not happen: we start QEMU in a new
        # session); signal only the process itself.
        pgid = None
    for sig, wait in ((signal.SIGTERM, term_timeout), (signal.SIGKILL, 5.0)):
        if pgid:
            _signal_group(pgid, sig)
        else:
            try:
                os.kill(ident.pid, sig)
            except ProcessLookupError:
                return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(ident.pid)
            if not is_same_process(ident):
                return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"process {ident.pid} survived SIGKILL")


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def start_qemu(
    argv: list[str], rundir: RunDir, uid: int | None, gid: int | None
) -> subprocess.Popen:
    """Start QEMU in a new session (its own process group), as ``uid``/``gid``.

    stdout/stderr go to ``rundir.qemu_log``. Raises VMStartError if the
    binary cannot be run.
    """
    kwargs = {}
    if uid is not None and uid != os.getuid():
        kwargs.update(user=uid, group=gid, extra_groups=[])
    with open(rundir.qemu_log, "ab") as log:
        try:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                **kwargs,
            )
        except FileNotFoundError:
            raise VMStartError(
                f"QEMU is not installed: {argv[0]} was not found. "
                "Install it with: apt-get install qemu-system-x86"
            ) from None
        except PermissionError as e:
            raise VMStartError(f"cannot run {argv[0]}: {e}") from None


def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a text file ('' if it does not exist)."""
    try:
        data = path.read_bytes()[-16384:]
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


async def watch_boot(
    proc: subprocess.Popen, rundir: RunDir, timeout: float, since: int = 0
) -> AsyncIterator[str]:
    """Follow the console log from byte ``since``; yield "init" then "ssh".

    Raises VMStartError, with the console tail, if QEMU exits, the kernel
    panics, or ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    pos, buf, seen_init = since, "", False
    while True:
        chunk = consolelog.read_since(rundir.console_log, pos) or b""
        pos += len(chunk)
        buf = (buf + chunk.decode(errors="replace"))[-65536:]
        if not seen_init and MARK_INIT in buf:
            seen_init = True
            yield "init"
        if MARK_PANIC in buf:
            raise VMStartError(
                "The VM's kernel panicked while booting. Last console lines:\n"
                + tail(rundir.console_log),
            )
        if MARK_SSH_READY in buf:
            if not seen_init:
                yield "init"
            yield "ssh"
            return
        if "labvm: error:" in buf:
            line = buf[buf.index("labvm: error:") :].splitlines()[0]
            raise VMStartError(f"The VM's start-up failed: {line}")
        if proc.poll() is not None:
            raise VMStartError(
                f"QEMU exited with status {proc.returncode} before the VM was ready.\n"
                f"QEMU said: {tail(rundir.qemu_log, 5) or '(nothing)'}\n"
                f"Console: {tail(rundir.console_log, 10) or '(nothing)'}",
            )
        if time.monotonic() > deadline:
            raise VMStartError(
                f"The VM did not finish booting within {timeout:.0f}s. Last console lines:\n"
                + (tail(rundir.console_log) or "(the console printed nothing)"),
            )
        await asyncio.sleep(0.1)


async def gdbstub_answers(socket_path: Path, timeout: float = 5.0) -> bool:
    """True if a gdb remote-protocol stub answers on ``socket_path``.

    Connecting stops the guest (QEMU pauses the VM when a debugger attaches),
    so this asks the stop reason and detaches, which resumes it.
    """

    async def exchange(reader, writer, packet: bytes) -> bytes:
        body = packet
        writer.write(b"$%s#%02x" % (body, sum(body) % 256))
        await writer.drain()
        reply = b""
        while b"#" not in reply.lstrip(b"+") or len(reply.split(b"#", 1)[1]) < 2:
            data = await reader.read(1024)
            if not data:
                break
            reply += data
        writer.write(b"+")
        return reply

    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(socket_path))
            try:
                stop = await exchange(reader, writer, b"?")
                await exchange(reader, writer, b"D")
            finally:
                writer.close()
        return b"$S" in stop or b"$T" in stop
    except (OSError, TimeoutError):
        return False

"""The student's side of the lab VM: what ``labvm``, notebooks and graders use.

Everything reads the ``LAB_*`` environment the spawner gives the notebook
server (see docs/design.md), so it works the same on both backends. Failures
raise ``LabError`` with one sentence a student can act on.
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import consolelog, modrecords
from .arch import ARCHES

# The LAB_* contract, re-exported: released notebooks and graders import these from here.
from .contract import (  # noqa: F401
    MARK_PANIC,
    MARK_SSH_READY,
    NO_VM_MESSAGE,
    LabEnv,
    LabError,
    NoVMError,
    ssh_argv,
)
from .qmp import qmp_command


def gdb_binary(arch: str) -> str:
    """gdb for a target of ``arch``: plain gdb for the host's arch, else gdb-multiarch."""
    if arch == platform.machine() or not shutil.which("gdb-multiarch"):
        return "gdb"
    return "gdb-multiarch"


def gdb_argv(
    env: LabEnv, batch_commands: list[str] | None = None, plain: bool = False
) -> list[str]:
    """gdb loaded with the VM kernel's symbols and attached to its gdbstub.

    ``plain`` turns off gdb's colours, for transcripts a program reads.
    """
    argv = [gdb_binary(env.arch), "-q", "-nx"]
    if env.kdir:
        # vmlinux-gdb.py (the lx-* commands) sits in the kernel build tree;
        # gdb compares resolved paths against the safe path.
        argv += ["-iex", f"add-auto-load-safe-path {os.path.realpath(env.kdir)}"]
    if plain or batch_commands is not None:
        argv += ["-iex", "set style enabled off"]
    argv += ["-ex", "set pagination off", "-ex", "set confirm off"]
    if env.arch in ARCHES and env.arch != platform.machine():
        # gdb-multiarch starts as the host's arch; say the target's before
        # anything (labvm.gdb, a missing vmlinux) depends on it.
        argv += ["-ex", f"set architecture {ARCHES[env.arch].gdb_arch}"]
    argv += ["-x", str(Path(__file__).with_name("labvm.gdb"))]
    if env.vmlinux:
        argv += ["-ex", f"file {os.path.realpath(env.vmlinux)}"]
    argv += ["-ex", f"target remote {env.gdb_remote}"]
    if batch_commands is not None:
        argv.insert(1, "-batch")
        for cmd in batch_commands:
            argv += ["-ex", cmd]
    return argv


@dataclass(frozen=True)
class RunResult:
    returncode: int
    stdout: str
    stderr: str


class LabVM:
    """The student's VM, reached over ssh and gdb as the ``LAB_*`` environment says."""

    def __init__(self, env: LabEnv | None = None):
        self.env = env or LabEnv.from_environ()

    # -- running things -------------------------------------------------
    def run(
        self, command: str, timeout: float = 60, check: bool = True, input: bytes | None = None
    ) -> RunResult:
        """Run a shell command in the VM; raise LabError on failure if ``check``."""
        try:
            proc = subprocess.run(
                ssh_argv(self.env, command), input=input, capture_output=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise LabError(f"'{command}' did not finish in the VM within {timeout:.0f}s.") from None
        except FileNotFoundError:
            raise LabError("ssh is not installed in this environment.") from None
        res = RunResult(
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )
        if proc.returncode == 255:
            raise LabError(
                "Cannot reach your VM over ssh"
                + (f" ({res.stderr.strip().splitlines()[-1]})" if res.stderr.strip() else "")
                + ". Is it running? Try `labvm status`, or `labvm reset` to restart it."
            )
        if check and proc.returncode != 0:
            said = (res.stderr.strip() or res.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise LabError(f"'{command}' failed in the VM (exit {proc.returncode}): {said[0]}")
        return res

    def is_up(self, timeout: float = 15) -> bool:
        try:
            return self.run("true", timeout=timeout, check=False).returncode == 0
        except LabError:
            return False

    def push(self, *paths: str | os.PathLike, dest: str = "/root") -> list[str]:
        """Copy local files into ``dest`` in the VM; return their paths there."""
        files = [Path(p) for p in paths]
        for f in files:
            if not f.is_file():
                raise LabError(f"No such file to push: {f}")
        names = []
        for f in files:
            target = f"{dest.rstrip('/')}/{f.name}"
            mode = f.stat().st_mode & 0o777
            self.run(
                f"mkdir -p {shlex.quote(dest)} && cat > {shlex.quote(target)} "
                f"&& chmod {mode:o} {shlex.quote(target)}",
                input=f.read_bytes(),
                timeout=120,
            )
            names.append(target)
        return names

    def dmesg(self) -> str:
        return self.run("dmesg").stdout

    def insmod(self, path: str | os.PathLike, *params: str) -> str:
        """Push and load a module; return what it printed to the kernel log.

        The module is remembered for ``labvm oops`` (``modrecords``): a copy
        of the .ko before it loads, its section addresses after. A load that
        crashes the kernel raises a LabError saying where."""
        from . import oops

        ko = Path(path)
        if ko.suffix != ".ko":
            raise LabError(f"{ko} is not a kernel module (expected a .ko file).")
        (remote,) = self.push(ko)
        try:
            record = modrecords.remember(ko)
        except OSError:
            record = None  # an unwritable home: the module loads, its oops stays raw
        before = len(self.dmesg().splitlines())
        offset = oops.console_offset(self.env)
        name = modrecords.module_name(ko)
        # One ssh: load, then (only if it loaded) where its sections are.
        command = (
            f"insmod {shlex.quote(remote)} {' '.join(map(shlex.quote, params))} "
            f"&& {{ {modrecords.sections_command(name)}; }}"
        )
        res = added = None
        try:
            res = self.run(command, check=False)
            added = "\n".join(self.dmesg().splitlines()[before:])
        except LabError:
            pass  # ssh's 255: the kernel went down (a panic, maybe just after insmod)
        loaded = res is not None and res.returncode == 0
        if loaded and added is not None:
            if record is not None:
                self._commit(record, modrecords.parse_sections(res.stdout))
            return added
        # Killed, segfaulted, or the VM went down: did the kernel oops?
        crash = oops.report_since(self.env, offset)
        if crash is None and offset is None and self.is_up():
            crash = oops.last_report("\n".join(self.dmesg().splitlines()[before:]))
        if crash is not None:
            if record is not None:  # first, so that the decoding finds the module
                self._commit(record, self._sections_after_crash(name, res if loaded else None))
            said = oops.describe(self.env, crash)
            raise LabError(f"Loading {ko.name} crashed the kernel: {said}")
        if record is not None:
            modrecords.discard(record)
        if res is None or added is None:
            raise LabError(
                f"Your VM stopped answering while loading {ko.name}. `labvm console` shows "
                "what it printed; `labvm reset` restarts it."
            )
        said = (res.stderr.strip() or res.stdout.strip()).splitlines()[-1:] or ["no output"]
        kernel = f" The kernel said: {added.strip().splitlines()[-1]}" if added.strip() else ""
        raise LabError(f"The VM rejected {ko.name}: {said[0]}.{kernel}")

    def _sections_after_crash(self, name: str, res: RunResult | None) -> dict[str, int]:
        if res is not None:
            return modrecords.parse_sections(res.stdout)
        try:
            # The VM may have lived (an oops, not a panic): the module stays, half loaded.
            return modrecords.parse_sections(
                self.run(modrecords.sections_command(name), check=False).stdout
            )
        except LabError:
            return {}

    @staticmethod
    def _commit(record: modrecords.ModuleRecord, sections: dict[str, int]) -> None:
        try:
            modrecords.commit(record, sections)
        except OSError:
            pass  # not kept: an oops of this module stays undecoded, and says so

    def rmmod(self, name: str) -> str:
        before = len(self.dmesg().splitlines())
        self.run(f"rmmod {shlex.quote(name)}")
        return "\n".join(self.dmesg().splitlines()[before:])

    # -- gdb ------------------------------------------------------------
    def gdb_batch(self, commands: list[str], timeout: float = 60) -> str:
        """Run gdb non-interactively against the VM kernel; return its transcript."""
        try:
            proc = subprocess.run(
                gdb_argv(self.env, commands), capture_output=True, timeout=timeout, text=True
            )
        except subprocess.TimeoutExpired:
            raise LabError(f"gdb did not finish within {timeout:.0f}s.") from None
        return proc.stdout + proc.stderr

    def gdb_session(self, timeout: float = 30):
        """An interactive gdb (pexpect) attached to the VM, at its first prompt."""
        import pexpect

        argv = gdb_argv(self.env, plain=True)
        child = pexpect.spawn(
            argv[0],
            argv[1:],
            encoding="utf-8",
            timeout=timeout,
            dimensions=(50, 200),
            env={**os.environ, "TERM": "dumb"},
        )
        child.expect_exact("(gdb) ")
        return child

    # -- VM power -------------------------------------------------------
    def status(self) -> dict:
        up = self.is_up()
        info = {
            "backend": self.env.backend,
            "arch": self.env.arch,
            "ssh": up,
            "host": self.env.vm_host,
            "ssh_port": self.env.ssh_port,
        }
        if up:
            info["kernel"] = self.run("uname -r").stdout.strip()
            info["uptime"] = self.run("cut -d' ' -f1 /proc/uptime").stdout.strip()
        return info

    def _console_size(self) -> int:
        return consolelog.size(self.env.console_log)

    def wait_ready(self, timeout: float = 120, console_offset: int | None = None) -> None:
        """Wait until the VM answers ssh again (after a reset or a kexec)."""
        deadline = time.monotonic() + timeout
        if self.env.console_log and console_offset is not None:
            while time.monotonic() < deadline:
                if consolelog.has_marker(self.env.console_log, MARK_SSH_READY, console_offset):
                    break
                time.sleep(0.2)
        while time.monotonic() < deadline:
            if self.is_up(timeout=min(15, max(1, deadline - time.monotonic()))):
                return
            time.sleep(0.5)
        raise LabError(
            f"Your VM did not come back within {timeout:.0f}s. "
            "`labvm console` shows what it printed; `labvm reset` starts it afresh."
        )

    def reset(self, timeout: float = 600) -> None:
        """Restart the VM on the course kernel with a fresh root filesystem;
        return once it answers ssh (LabError after ``timeout`` seconds)."""
        if not self.env.qmp_socket:
            # No monitor socket here (cluster): the lab manager resets the VM for us.
            from .managerclient import ManagerError, reset_vm

            deadline = time.monotonic() + timeout
            try:
                reset_vm(timeout)
            except ManagerError as e:
                raise LabError(str(e)) from None
            return self.wait_ready(max(30.0, deadline - time.monotonic()))
        offset = self._console_size()
        try:
            qmp_command(self.env.qmp_socket, "system_reset")
        except OSError as e:
            raise LabError(f"Cannot reach your VM's monitor ({e}). Is the VM running?") from None
        self.wait_ready(timeout, console_offset=offset)

    def boot_kernel(self, bzimage: str | os.PathLike, timeout: float = 180) -> str:
        """Boot the VM on ``bzimage`` with kexec (same initramfs); return ``uname -r``."""
        image = Path(bzimage)
        if not image.is_file():
            raise LabError(f"No such kernel image: {image}")
        head = image.read_bytes()[:0x206]
        if head[0x202:0x206] != b"HdrS" and self.env.arch == "x86_64":
            raise LabError(
                f"{image} is not a bootable x86 kernel (bzImage); build one with `make bzImage`."
            )
        # arm64 Image header: the magic "ARM\x64" at offset 0x38 (Documentation/arm64/booting.rst).
        if head[0x38:0x3C] != b"ARM\x64" and self.env.arch == "aarch64":
            raise LabError(
                f"{image} is not a bootable arm64 kernel (Image); build one with "
                "`make ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- Image` (arch/arm64/boot/Image)."
            )
        if not self.env.initrd:
            raise LabError("This backend does not say where the VM's initramfs is (LAB_VM_INITRD).")
        self.push(image, dest="/tmp/kexec")
        self.push(self.env.initrd, dest="/tmp/kexec")
        load = self.run(
            f"kexec -l /tmp/kexec/{shlex.quote(image.name)} "
            f"--initrd=/tmp/kexec/{Path(self.env.initrd).name} --reuse-cmdline",
            check=False,
            timeout=120,
        )
        if load.returncode != 0:
            said = (load.stderr.strip() or load.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise LabError(f"The VM's kexec refused {image.name}: {said[0]}")
        offset = self._console_size()
        # The ssh session dies with the old kernel; its exit status means nothing.
        subprocess.run(ssh_argv(self.env, "sync; kexec -e"), capture_output=True, timeout=60)
        self.wait_ready(timeout, console_offset=offset if self.env.console_log else None)
        if self.env.console_log:
            with open(self.env.console_log, "rb") as f:
                f.seek(offset)
                if MARK_PANIC.encode() in f.read():
                    # panic=-1: the VM rebooted into the course kernel, which answered.
                    raise LabError(
                        f"The kernel in {image.name} panicked while booting (`labvm console` "
                        "shows why); your VM is back on the course kernel."
                    )
        return self.run("uname -r").stdout.strip()

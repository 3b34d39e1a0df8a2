"""The student's side of the lab VM: what ``labvm``, notebooks and graders use.

Everything reads the ``LAB_*`` environment the spawner gives the notebook
server (see DESIGN.md), so it works the same on both backends. Failures
raise ``LabError`` with one sentence a student can act on.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .arch import ARCHES

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
    }

    def to_environ(self) -> dict[str, str]:
        """The environment variables for the notebook server (empty values left out)."""
        env = {name: str(getattr(self, attr)) for attr, name in self._NAMES.items()}
        return {k: v for k, v in env.items() if v}

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
        values["backend"] = values["backend"] or "local"
        return cls(**values)


def ssh_argv(env: LabEnv, command: str | None = None, tty: bool = False) -> list[str]:
    """The ssh command line that logs into the VM as root (runs ``command`` if given)."""
    argv = [
        "ssh", "-i", env.ssh_key, "-p", str(env.ssh_port),
        "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={env.known_hosts}",
        "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
        "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6",
        "-t" if tty else "-T", f"root@{env.vm_host}",
    ]  # fmt: skip
    return argv + ([command] if command is not None else [])


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


def qmp_command(socket_path: str, command: str, timeout: float = 10.0) -> dict:
    """Send one QMP command to QEMU's monitor socket; return its reply."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(socket_path)
        f = s.makefile("rwb")
        json.loads(f.readline())  # greeting
        for cmd in ("qmp_capabilities", command):
            f.write(json.dumps({"execute": cmd}).encode() + b"\n")
            f.flush()
            while True:
                reply = json.loads(f.readline())
                if "event" not in reply:
                    break
            if "error" in reply:
                raise LabError(f"QEMU refused {cmd}: {reply['error'].get('desc')}")
        return reply


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
        res = RunResult(proc.returncode, proc.stdout.decode(errors="replace"),
                        proc.stderr.decode(errors="replace"))  # fmt: skip
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
        """Push and load a module; return what it printed to the kernel log."""
        ko = Path(path)
        if ko.suffix != ".ko":
            raise LabError(f"{ko} is not a kernel module (expected a .ko file).")
        (remote,) = self.push(ko)
        before = len(self.dmesg().splitlines())
        res = self.run(f"insmod {shlex.quote(remote)} {' '.join(map(shlex.quote, params))}",
                       check=False)  # fmt: skip
        added = "\n".join(self.dmesg().splitlines()[before:])
        if res.returncode != 0:
            said = (res.stderr.strip() or res.stdout.strip()).splitlines()[-1:] or ["no output"]
            kernel = f" The kernel said: {added.strip().splitlines()[-1]}" if added.strip() else ""
            raise LabError(f"The VM rejected {ko.name}: {said[0]}.{kernel}")
        return added

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
            argv[0], argv[1:], encoding="utf-8", timeout=timeout, dimensions=(50, 200),
            env={**os.environ, "TERM": "dumb"},
        )  # fmt: skip
        child.expect_exact("(gdb) ")
        return child

    # -- VM power -------------------------------------------------------
    def status(self) -> dict:
        up = self.is_up()
        info = {"backend": self.env.backend, "arch": self.env.arch, "ssh": up,
                "host": self.env.vm_host, "ssh_port": self.env.ssh_port}  # fmt: skip
        if up:
            info["kernel"] = self.run("uname -r").stdout.strip()
            info["uptime"] = self.run("cut -d' ' -f1 /proc/uptime").stdout.strip()
        return info

    def _console_size(self) -> int:
        try:
            return os.path.getsize(self.env.console_log)
        except OSError:
            return 0

    def wait_ready(self, timeout: float = 120, console_offset: int | None = None) -> None:
        """Wait until the VM answers ssh again (after a reset or a kexec)."""
        deadline = time.monotonic() + timeout
        if self.env.console_log and console_offset is not None:
            from .qemu import MARK_SSH_READY

            while time.monotonic() < deadline:
                with open(self.env.console_log, "rb") as f:
                    f.seek(console_offset)
                    if MARK_SSH_READY.encode() in f.read():
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

    def reset(self, timeout: float = 120) -> None:
        """Restart the VM on the course kernel with a fresh root filesystem."""
        if not self.env.qmp_socket:
            # No monitor socket here (cluster): the lab manager resets the VM for us.
            from .manager.client import ManagerError, reset_vm

            try:
                reset_vm(timeout)
            except ManagerError as e:
                raise LabError(str(e)) from None
            return self.wait_ready(timeout)
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
            from .qemu import MARK_PANIC

            with open(self.env.console_log, "rb") as f:
                f.seek(offset)
                if MARK_PANIC.encode() in f.read():
                    # panic=-1: the VM rebooted into the course kernel, which answered.
                    raise LabError(
                        f"The kernel in {image.name} panicked while booting (`labvm console` "
                        "shows why); your VM is back on the course kernel."
                    )
        return self.run("uname -r").stdout.strip()

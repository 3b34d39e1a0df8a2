"""QEMU command lines for lab VMs, and the choice of accelerator.

Everything here except ``probe_kvm`` is pure: a ``VMSpec`` in, an argv out.
The process side (starting, watching, stopping QEMU) is in ``vmprocess``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..arch import ARCHES, get_arch

# Printed by the guest's init scripts (images/guest/rootfs); keep in step.
from ..contract import (  # noqa: F401 (re-exported)
    MARK_INIT,
    MARK_PANIC,
    MARK_SSH_READY,
    STATE_NODE,
)

QEMU_BINARIES = {name: a.qemu_binary for name, a in ARCHES.items()}

# -cpu max under TCG, with the cheap IMPLEMENTATION DEFINED pointer-auth
# algorithm: the architected QARMA one makes every function return several
# times slower to emulate.
# ref: https://www.qemu.org/docs/master/system/arm/cpu-features.html
AARCH64_TCG_CPU = "max,pauth-impdef=on"

# Slot for QEMU's edu device on q35's root bus. Fixed so that lab 7's `lspci`
# output is the same for every student; 0x10 is clear of q35's built-ins.
EDU_PCI_ADDR = "0x10"


@dataclass(frozen=True)
class RunDir:
    """The per-server runtime directory and the files QEMU and labvm share.

    It is created mode 0700 and owned by the student, so only the student
    (and root) can reach the gdb, console and monitor sockets in it.
    """

    path: Path

    def __post_init__(self):
        # sun_path is 108 bytes including the NUL.
        longest = self.path / "console.sock"
        if len(os.fsencode(longest)) > 107:
            raise ValueError(f"runtime directory path too long for unix sockets: {self.path}")

    gdb_socket = property(lambda self: self.path / "gdb.sock")
    console_socket = property(lambda self: self.path / "console.sock")
    console_log = property(lambda self: self.path / "console.log")
    qmp_socket = property(lambda self: self.path / "qmp.sock")
    pidfile = property(lambda self: self.path / "qemu.pid")
    qemu_log = property(lambda self: self.path / "qemu.log")
    initrd = property(lambda self: self.path / "initrd.img")
    ssh_key = property(lambda self: self.path / "id_ed25519")
    known_hosts = property(lambda self: self.path / "known_hosts")


@dataclass(frozen=True)
class VMSpec:
    """What one lab VM looks like. Paths are absolute."""

    rundir: RunDir
    kernel: Path
    initrd: Path
    ssh_port: int
    arch: str = "x86_64"
    accel: str = "tcg"
    memory_mb: int = 256
    cpus: int = 1
    edu: bool = True
    network_restrict: bool = True
    name: str = "labvm"
    kernel_args: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = field(default=())
    tcg_tb_size_mb: int = 64
    # A qcow2 image that holds nothing but the VM's checkpoints (`labvm
    # snapshot`): the guest runs from its initramfs and sees no disk.
    state_image: Path | None = None
    # A migration stream to resume instead of booting: a suspended VM
    # (gzipped, *.gz) or the booted snapshot (not compressed).
    incoming: Path | None = None
    # The host's TSC rate (kubevirt_spawner.local.hosttsc), told to an x86_64 guest
    # under TCG so that it can idle without a periodic tick. 0: not told.
    tsc_khz: int = 0


# QMP node name of ``VMSpec.state_image``; labvm snapshot names it.


def kernel_cmdline(extra: tuple[str, ...] = (), console: str = "ttyS0") -> str:
    """The guest kernel command line, its console on ``console``.

    ``nokaslr`` keeps symbol addresses equal to those in ``vmlinux`` (gdb);
    ``panic=-1`` reboots at once on a panic so a student gets a shell back
    (the panic stays in the console log).
    """
    base = [f"console={console}", "nokaslr", "panic=-1", "printk.devkmsg=on"]
    return " ".join([*base, *extra])


def gdb_remote_for_socket(path: Path, python: str = sys.executable) -> str:
    """The argument for gdb's ``target remote`` that reaches a unix-socket gdbstub.

    gdb 13 has no ``unix::PATH`` form, so gdb runs a pipe: the relay
    ``kubevirt_spawner.gdbrelay``, which also turns gdb's kill (which would
    end QEMU) into a detach. ``python`` must be one the student can run.
    """
    return f"| {shlex.quote(python)} -m kubevirt_spawner.gdbrelay unix:{shlex.quote(str(path))}"


def _chardev_unix(path: Path) -> str:
    return f"unix:{path},server=on,wait=off"


def qemu_argv(spec: VMSpec, binary: str | None = None) -> list[str]:
    """Return the full QEMU argv for ``spec``."""
    arch = get_arch(spec.arch)  # UnknownArch is a ValueError
    if spec.accel not in ("kvm", "tcg"):
        raise ValueError(f"accel must be 'kvm' or 'tcg', not {spec.accel!r}")
    if not 1 <= spec.ssh_port <= 65535:
        raise ValueError(f"ssh port out of range: {spec.ssh_port}")
    if spec.memory_mb < 64:
        raise ValueError(f"VM memory must be at least 64 MiB, not {spec.memory_mb}")
    if spec.cpus < 1:
        raise ValueError(f"VM needs at least one CPU, not {spec.cpus}")
    rd = spec.rundir
    if spec.accel == "kvm":
        accel, cpu = ["-accel", "kvm"], ["-cpu", "host"]
    else:
        accel, cpu = ["-accel", f"tcg,tb-size={spec.tcg_tb_size_mb}"], []
    if arch.name == "x86_64":
        machine = ["-machine", "q35"]
    else:
        # virt: the board QEMU recommends for arm64 guests, PCIe and a PL011
        # UART (ttyAMA0) on it; -kernel boots the Image without firmware.
        # Both off for `labvm boot-kernel` (kexec). dtb-randomness: no
        # /chosen/kaslr-seed, which only a KASLR kernel wipes; kexec-tools
        # refuses a device tree that still has one ("kaslr-seed is not wiped
        # to 0"). its: LPIs cannot be switched off once on, so the kexec'd
        # kernel reuses the old kernel's LPI tables where the redistributor
        # points and initialises them in place, over whatever kexec put there
        # (seen: its initramfs). PCI devices use INTx instead of MSI.
        machine = ["-machine", "virt,gic-version=3,its=off,dtb-randomness=off"]
        cpu = cpu or ["-cpu", AARCH64_TCG_CPU]
    netdev = f"user,id=net0,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22"
    if spec.network_restrict:
        netdev += ",restrict=on"
    argv = [
        binary or arch.qemu_binary,
        "-name",
        f"{spec.name},process={spec.name}",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        *machine,
        *accel,
        *cpu,
        "-m",
        str(spec.memory_mb),
        "-smp",
        str(spec.cpus),
        "-kernel",
        str(spec.kernel),
        "-initrd",
        str(spec.initrd),
        "-append",
        kernel_cmdline(_clock_args(spec) + spec.kernel_args, arch.console),
        "-chardev",
        f"socket,id=console,path={rd.console_socket},server=on,wait=off,"
        f"logfile={rd.console_log},logappend=on",
        "-serial",
        "chardev:console",
        "-qmp",
        _chardev_unix(rd.qmp_socket),
        "-gdb",
        _chardev_unix(rd.gdb_socket),
        "-netdev",
        netdev,
        "-device",
        "virtio-net-pci,netdev=net0",
        "-device",
        "virtio-rng-pci",
        "-pidfile",
        str(rd.pidfile),
    ]
    if spec.edu and arch.has_edu:
        argv += ["-device", f"edu,bus=pcie.0,addr={EDU_PCI_ADDR}"]
    if spec.state_image is not None:
        # discard=unmap: a deleted checkpoint's clusters go back to the file
        # system, so the student's quota sees the space again.
        node = (
            f"driver=qcow2,node-name={STATE_NODE},discard=unmap,file.driver=file,"
            f"file.filename={_blockdev_path(spec.state_image)},file.discard=unmap"
        )
        argv += ["-blockdev", node]
    if spec.incoming is not None:
        # QEMU runs this shell command as the student, reading their own file
        # (or the shared booted snapshot, kept uncompressed: no gzip on a spawn).
        reader = "gzip -dc" if spec.incoming.suffix == ".gz" else "cat"
        argv += ["-incoming", f"exec:{reader} {shlex.quote(str(spec.incoming))}"]
    return argv + list(spec.extra_args)


def _clock_args(spec: VMSpec) -> tuple[str, ...]:
    if spec.tsc_khz and spec.accel == "tcg" and spec.arch == "x86_64":
        # tsc=reliable: nothing to check the TSC against, and nothing better.
        return (f"tsc_early_khz={spec.tsc_khz}", "tsc=reliable")
    return ()


def _blockdev_path(path: Path) -> str:
    # In QEMU's key=value option syntax a comma is written twice.
    return str(path).replace(",", ",,")


_KVM_SIGN_OF_LIFE = re.compile(rb"Linux version")


async def probe_kvm(
    kernel: Path, binary: str = "qemu-system-x86_64", timeout: float = 10.0
) -> tuple[bool, str]:
    """Boot ``kernel`` under KVM briefly; return (usable, reason).

    /dev/kvm existing is not enough: on some hosts QEMU with KVM spins
    without running the guest, or aborts on an MSR assertion. Only a guest
    that prints its banner within ``timeout`` seconds counts.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    argv = [
        binary,
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-machine",
        "q35",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-m",
        "128",
        "-kernel",
        str(kernel),
        "-append",
        "console=ttyS0 earlyprintk=ttyS0",
        "-serial",
        "stdio",
        "-no-reboot",
    ]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as e:
        return False, f"cannot run {binary}: {e}"
    seen = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await proc.stdout.read(4096):
                seen = (seen + chunk)[-8192:]
                if _KVM_SIGN_OF_LIFE.search(seen):
                    return True, "a KVM guest printed its banner"
        tail = seen.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return False, f"QEMU with KVM exited ({tail[0]})"
    except TimeoutError:
        return False, f"a KVM guest printed nothing in {timeout:.0f}s"
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()

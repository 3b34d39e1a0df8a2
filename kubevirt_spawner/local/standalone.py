"""Boot one lab VM without a hub: for tests, benchmarks and graders.

The same pieces ``LocalVMSpawner`` uses (per-VM initramfs with fresh ssh
keys, ``qemu_argv``, ``vmprocess``), run synchronously as the current user.
The result is a ``LabEnv`` exactly like the one a spawned notebook server
gets, so notebooks and ``kubevirt_spawner.lab`` cannot tell the difference.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .. import hubchild
from ..contract import LabEnv, ssh_argv
from . import boot, vmprocess
from .guest import Guest, default_guest_dir
from .hosttsc import host_tsc_khz
from .qemu import QEMU_BINARIES, RunDir, VMSpec, gdb_remote_for_socket, qemu_argv


@dataclass
class StandaloneVM:
    """A running lab VM; ``env`` is its ``LAB_*`` view. Stop it with ``stop()``."""

    guest: Guest
    rundir: RunDir
    proc: subprocess.Popen
    env: LabEnv
    boot_seconds: float
    _own_dir: bool = False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def console_tail(self, lines: int = 20) -> str:
        return vmprocess.tail(self.rundir.console_log, lines)

    def stop(self) -> None:
        ident = vmprocess.identify(self.proc.pid)
        if ident is not None:
            asyncio.run(vmprocess.stop_process_group(ident, term_timeout=3))
        self.proc.poll()
        if self._own_dir:
            shutil.rmtree(self.rundir.path, ignore_errors=True)

    def __enter__(self) -> StandaloneVM:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def boot_lab_vm(
    guest_dir: str | os.PathLike | None = None,
    rundir: str | os.PathLike | None = None,
    memory_mb: int = 256,
    edu: bool = True,
    timeout: float = 120,
    kernel_args: tuple[str, ...] = (),
    end_with_parent: bool = False,
) -> StandaloneVM:
    """Boot the built guest (TCG) and wait until ssh answers; return the VM.

    ``rundir`` (made if missing) holds the sockets, keys and logs; by default
    a private temporary directory, removed again by ``stop()``.
    ``end_with_parent``: QEMU gets SIGTERM when this process (or the program
    it execs into) exits, for a VM that must not outlive its user. Raises
    ``vmprocess.VMStartError`` with the console tail if the VM does not
    come up within ``timeout`` seconds.
    """
    guest = Guest.find(guest_dir or os.environ.get("KVS_GUEST_DIR") or default_guest_dir())
    own = rundir is None
    path = Path(rundir) if rundir else Path(tempfile.mkdtemp(prefix="labvm-", dir="/tmp"))
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    rd = RunDir(path)
    _, host_key = boot.write_vm_keys(guest, rd, "student@labvm")
    started = time.monotonic()
    last_error: Exception | None = None
    for port in boot.ports_to_try():
        boot.reset_for_attempt(rd, port, host_key)
        spec = VMSpec(
            rundir=rd,
            kernel=guest.kernel.resolve(),
            initrd=rd.initrd,
            ssh_port=port,
            arch=guest.arch,
            memory_mb=memory_mb,
            edu=edu,
            kernel_args=tuple(kernel_args),
            tsc_khz=host_tsc_khz(),
        )
        argv = qemu_argv(spec, QEMU_BINARIES[guest.arch])
        if end_with_parent:
            argv = hubchild.command(os.getpid(), argv)
        proc = vmprocess.start_qemu(argv, rd, None, None)
        env = LabEnv(
            vm_host="127.0.0.1",
            ssh_port=port,
            gdb_remote=gdb_remote_for_socket(rd.gdb_socket),
            vmlinux=str(guest.vmlinux),
            kdir=str(guest.kdir),
            arch=guest.arch,
            ssh_key=str(rd.ssh_key),
            known_hosts=str(rd.known_hosts),
            console_socket=str(rd.console_socket),
            console_log=str(rd.console_log),
            qmp_socket=str(rd.qmp_socket),
            initrd=str(rd.initrd),
        )
        vm = StandaloneVM(guest, rd, proc, env, 0.0, own)
        try:
            asyncio.run(_wait_boot(proc, rd, timeout))
            _wait_ssh(env, deadline=started + max(timeout, 5))
            vm.boot_seconds = time.monotonic() - started
            return vm
        except vmprocess.VMStartError as e:
            _kill(proc)
            if not boot.lost_the_port(rd):
                if own:
                    shutil.rmtree(path, ignore_errors=True)
                raise
            last_error = e
        except BaseException:
            _kill(proc)
            if own:
                shutil.rmtree(path, ignore_errors=True)
            raise
    raise vmprocess.VMStartError(f"no free ssh port after {boot.PORT_TRIES} tries: {last_error}")


def _kill(proc: subprocess.Popen) -> None:
    ident = vmprocess.identify(proc.pid)
    if ident is not None:
        asyncio.run(vmprocess.stop_process_group(ident, term_timeout=3))


async def _wait_boot(proc: subprocess.Popen, rd: RunDir, timeout: float) -> None:
    async for _step in vmprocess.watch_boot(proc, rd, timeout):
        pass


def _wait_ssh(env: LabEnv, deadline: float) -> None:
    """Return once ``ssh root@VM true`` succeeds (the guest printed its ssh
    marker already; dropbear may still be starting)."""
    while True:
        left = deadline - time.monotonic()
        try:
            r = subprocess.run(
                ssh_argv(env, "true"),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=max(1, min(15, left)),
            )
            if r.returncode == 0:
                return
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() >= deadline:
            raise vmprocess.VMStartError(
                "The VM printed its ssh marker but ssh into it did not succeed in time."
            )
        time.sleep(0.5)

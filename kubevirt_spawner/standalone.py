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

from . import vmprocess
from .guest import Guest, default_guest_dir, write_vm_initrd
from .lab import LabEnv, LabVM
from .qemu import QEMU_BINARIES, RunDir, VMSpec, gdb_remote_for_socket, qemu_argv
from .sshkeys import known_hosts_line, make_ssh_keypair


@dataclass
class StandaloneVM:
    """A running lab VM; ``env`` is its ``LAB_*`` view. Stop it with ``stop()``."""

    guest: Guest
    rundir: RunDir
    proc: subprocess.Popen
    env: LabEnv
    boot_seconds: float
    _own_dir: bool = False

    @property
    def vm(self) -> LabVM:
        return LabVM(self.env)

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
) -> StandaloneVM:
    """Boot the built guest (TCG) and wait until ssh answers; return the VM.

    ``rundir`` (made if missing) holds the sockets, keys and logs; by default
    a private temporary directory, removed again by ``stop()``. Raises
    ``vmprocess.VMStartError`` with the console tail if the VM does not
    come up within ``timeout`` seconds.
    """
    guest = Guest.find(guest_dir or os.environ.get("KVS_GUEST_DIR") or default_guest_dir())
    own = rundir is None
    path = Path(rundir) if rundir else Path(tempfile.mkdtemp(prefix="labvm-", dir="/tmp"))
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    rd = RunDir(path)
    user_key = make_ssh_keypair("student@labvm")
    host_key = make_ssh_keypair("labvm-host")
    write_vm_initrd(guest, rd.initrd, user_key, host_key)
    rd.ssh_key.unlink(missing_ok=True)
    fd = os.open(rd.ssh_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(user_key.private_openssh)
    started = time.monotonic()
    last_error: Exception | None = None
    for _attempt in range(3):
        port = vmprocess.pick_free_port()
        rd.known_hosts.write_text(known_hosts_line("127.0.0.1", port, host_key.public_key))
        rd.console_log.write_bytes(b"")
        rd.qemu_log.write_bytes(b"")
        spec = VMSpec(rundir=rd, kernel=guest.kernel.resolve(), initrd=rd.initrd,
                      ssh_port=port, arch=guest.arch, memory_mb=memory_mb, edu=edu,
                      kernel_args=tuple(kernel_args))  # fmt: skip
        proc = vmprocess.start_qemu(qemu_argv(spec, QEMU_BINARIES[guest.arch]), rd, None, None)
        env = LabEnv(
            vm_host="127.0.0.1", ssh_port=port, gdb_remote=gdb_remote_for_socket(rd.gdb_socket),
            vmlinux=str(guest.vmlinux), kdir=str(guest.kdir), arch=guest.arch,
            ssh_key=str(rd.ssh_key), known_hosts=str(rd.known_hosts),
            console_socket=str(rd.console_socket), console_log=str(rd.console_log),
            qmp_socket=str(rd.qmp_socket), initrd=str(rd.initrd),
        )  # fmt: skip
        vm = StandaloneVM(guest, rd, proc, env, 0.0, own)
        try:
            asyncio.run(_wait_boot(proc, rd, timeout))
            LabVM(env).wait_ready(timeout=max(5, timeout - (time.monotonic() - started)))
            vm.boot_seconds = time.monotonic() - started
            return vm
        except vmprocess.VMStartError as e:
            _kill(proc)
            if "host forwarding rule" not in vmprocess.tail(rd.qemu_log, 5):
                if own:
                    shutil.rmtree(path, ignore_errors=True)
                raise
            last_error = e
        except BaseException:
            _kill(proc)
            if own:
                shutil.rmtree(path, ignore_errors=True)
            raise
    raise vmprocess.VMStartError(f"no free ssh port after 3 tries: {last_error}")


def _kill(proc: subprocess.Popen) -> None:
    ident = vmprocess.identify(proc.pid)
    if ident is not None:
        asyncio.run(vmprocess.stop_process_group(ident, term_timeout=3))


async def _wait_boot(proc: subprocess.Popen, rd: RunDir, timeout: float) -> None:
    async for _step in vmprocess.watch_boot(proc, rd, timeout):
        pass

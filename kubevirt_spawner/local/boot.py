"""What every local VM start does, for the spawner and for standalone VMs:
this VM's own ssh keys in its initramfs and run directory, and the
loopback-port tries (QEMU can lose a free port before it binds it)."""

from __future__ import annotations

import os

from ..sshkeys import KeyPair, known_hosts_line, make_ssh_keypair
from . import vmprocess
from .guest import Guest, write_vm_initrd
from .qemu import RunDir

PORT_TRIES = 3


def write_vm_keys(guest: Guest, rd: RunDir, user_comment: str) -> tuple[KeyPair, KeyPair]:
    """A fresh user key (private half in ``rd.ssh_key``, 0600) and host key,
    both in this VM's initramfs; returns (user key, host key)."""
    user_key = make_ssh_keypair(user_comment)
    host_key = make_ssh_keypair("labvm-host")
    write_vm_initrd(guest, rd.initrd, user_key, host_key)
    rd.ssh_key.unlink(missing_ok=True)
    fd = os.open(rd.ssh_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(user_key.private_openssh)
    return user_key, host_key


def ports_to_try(fixed: int = 0) -> list[int]:
    """The ssh forward ports to try: the fixed one once, else fresh free ones."""
    return [fixed] if fixed else [vmprocess.pick_free_port() for _ in range(PORT_TRIES)]


def reset_for_attempt(rd: RunDir, port: int, host_key: KeyPair) -> None:
    """Pin the host key at this port; empty the logs a failed try wrote."""
    rd.known_hosts.write_text(known_hosts_line("127.0.0.1", port, host_key.public_key))
    rd.console_log.write_bytes(b"")
    rd.qemu_log.write_bytes(b"")


def lost_the_port(rd: RunDir) -> bool:
    """Whether QEMU failed because its ssh forward's port was taken."""
    return "host forwarding rule" in vmprocess.tail(rd.qemu_log, 5)

"""Start from a booted snapshot instead of booting (LocalVMSpawner.boot_from_snapshot).

The course guest is booted once per key (guest build, QEMU, VM shape and
kernel arguments: ``vmstate.state_key``) *without* any per-VM archive, so
it has no ssh keys at all (its rcS says so and starts no ssh server), and
its state is saved beside the guest in the cache (``booted-KEY.state``).
A spawn starts QEMU with ``-incoming`` on that file and then gives the VM its
own identity over the serial console, where the guest runs a root shell:
this server's authorized key and host key, fresh random seed, the clock;
only then does dropbear start, so nothing of the snapshot's keys can exist
in a student's VM. The VM's own initramfs (with the same keys) is still its
``-initrd``: `labvm reset` boots it cold into the same identity.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from ..qmp import QMP, QMPError
from ..sshkeys import KeyPair, known_hosts_line
from . import vmprocess
from .guest import Guest
from .suspend import wait_running
from .vmprocess import ProcessId, VMStartError, pick_free_port, stop_process_group

MARK_IDENTITY = "labvm: identity ready"
MARK_QUIET = "labvm: quiet"
MARK_TEMPLATE = "labvm: template shell"
# What the guest's rcS prints without a per-VM archive (images/guest/rootfs/rcS).
MARK_NO_KEYS = "labvm: error: no ssh keys"


def snapshot_path(guest: Guest, key: str) -> Path:
    # Not compressed: a spawn then reads it without a gzip process beside it
    # (42 MB on disk instead of 12 MB, once per guest build and VM shape).
    return guest.root / f"booted-{key}.state"


def _split(mark: str) -> str:
    # Quoted apart, so that the console's echo of the command never matches.
    return f"'{mark[:6]}''{mark[6:]}'"


def quiet_line() -> str:
    """First line typed on the console: stop echoing what is typed next."""
    return f"stty -echo; echo {_split(MARK_QUIET)}\n"


def identity_line(user_key: KeyPair, host_key: KeyPair, seed: bytes, now: int) -> str:
    """The shell line that makes a restored guest this server's VM (pure)."""
    hk = base64.b64encode(host_key.dropbear_private).decode()
    return (
        "umask 077; mkdir -p /root/.ssh /etc/dropbear && "
        f"echo {hk} | base64 -d > /etc/dropbear/dropbear_ed25519_host_key && "
        f"echo '{user_key.public_line}' > /root/.ssh/authorized_keys && "
        f"echo {base64.b64encode(seed).decode()} | base64 -d > /dev/urandom; "
        f"date -s @{now} >/dev/null; "
        "dropbear -r /etc/dropbear/dropbear_ed25519_host_key -s -j -k -p 22 && "
        f"echo {_split(MARK_IDENTITY)}; stty echo\n"
    )


async def _wait_console(rd, mark: str, since: int, timeout: float, proc=None) -> int:
    deadline = time.monotonic() + timeout
    while True:
        with open(rd.console_log, "rb") as f:
            f.seek(since)
            data = f.read()
        if mark.encode() in data:
            return since + data.index(mark.encode()) + len(mark)
        if proc is not None and proc.poll() is not None:
            raise VMStartError(f"QEMU exited (status {proc.returncode}) on the console's watch")
        if time.monotonic() > deadline:
            raise VMStartError(f"the VM's console did not say {mark!r} within {timeout:.0f}s")
        await asyncio.sleep(0.02)


async def type_on_console(rd, line: str) -> None:
    """Type ``line`` on the VM's serial console (its unix socket)."""
    reader, writer = await asyncio.open_unix_connection(str(rd.console_socket))
    try:
        writer.write(line.encode())
        await writer.drain()
        await asyncio.sleep(0.05)
    finally:
        writer.close()


async def deliver_identity(rd, proc, user_key: KeyPair, host_key: KeyPair, timeout: float) -> None:
    """Give a restored VM its identity over the console; return when dropbear runs.

    One connection for both lines: QEMU's console socket takes one client at
    a time, and a reconnect costs a round of its main loop."""
    since = os.path.getsize(rd.console_log)
    reader, writer = await asyncio.open_unix_connection(str(rd.console_socket))
    try:
        # A Return first: the template's shell prompt may wait on a half line.
        writer.write(("\n" + quiet_line()).encode())
        await writer.drain()
        since = await _wait_console(rd, MARK_QUIET, since, timeout, proc)
        line = identity_line(user_key, host_key, secrets.token_bytes(64), int(time.time()))
        writer.write(line.encode())
        await writer.drain()
        await _wait_console(rd, MARK_IDENTITY, since, timeout, proc)
    finally:
        writer.close()


async def build_snapshot(
    spec_for, guest: Guest, binary_argv, path: Path, work_root: str, timeout: float
) -> None:
    """Boot the guest with no per-VM archive (no keys), wait for its console
    shell, save its state to ``path`` (mode 0644: students' QEMU reads it).

    ``spec_for(rundir, port, initrd)`` makes the VMSpec (the spawner's own
    settings); ``binary_argv(spec)`` the QEMU argv.
    """
    from .qemu import RunDir

    work = Path(tempfile.mkdtemp(prefix="tpl-", dir=work_root))
    rd = RunDir(work)
    rd.console_log.touch()
    proc = None
    try:
        spec = spec_for(rd, pick_free_port(), guest.initramfs)
        proc = vmprocess.start_qemu(binary_argv(spec), rd, None, None)
        pos = await _wait_console(rd, MARK_NO_KEYS, 0, timeout, proc)
        deadline = time.monotonic() + timeout
        while True:  # the console shell starts after rcS; ask until it answers
            await type_on_console(rd, f"echo {_split(MARK_TEMPLATE)}\n")
            try:
                await _wait_console(rd, MARK_TEMPLATE, pos, 1.0, proc)
                break
            except VMStartError:
                if time.monotonic() > deadline:
                    raise
        await asyncio.sleep(1.0)  # let the boot's last work settle: a quiet guest
        part = path.with_name(f".{path.name}.{os.getpid()}.part")
        with QMP(str(rd.qmp_socket), timeout=60) as q:
            q.migrate_and_wait(f"exec:cat > {part}")
        part.chmod(0o644)
        os.rename(part, path)
    except (OSError, QMPError) as e:
        raise VMStartError(f"making the booted snapshot failed: {e}") from None
    finally:
        if proc is not None and (ident := vmprocess.identify(proc.pid)) is not None:
            await stop_process_group(ident, term_timeout=3)
        shutil.rmtree(work, ignore_errors=True)


class BootSnapshotMixin:
    """LocalVMSpawner's start from a booted snapshot (uses its settings and helpers)."""

    _snapshot_builds: dict = {}  # path -> asyncio.Task, shared by all spawners of a hub

    def _snapshot_key_shape(self, shape: dict) -> dict:
        return {**shape, "kernel_args": list(self.vm_kernel_args), "boot": "snapshot-1"}

    def _ensure_snapshot(self, guest: Guest, path: Path, accel: str) -> None:
        task = self._snapshot_builds.get(path)
        if task is not None and not task.done():
            return

        def spec_for(rd, port, initrd):
            return self._vm_spec(guest, rd, port, accel, None, initrd=initrd)

        async def build():
            from .qemu import qemu_argv

            t = time.monotonic()
            await build_snapshot(
                spec_for,
                guest,
                lambda spec: qemu_argv(spec, self._qemu_binary(guest)),
                path,
                self.runtime_root,
                self.vm_boot_timeout,
            )
            self.log.info("Booted snapshot %s made in %.1fs", path, time.monotonic() - t)

        task = asyncio.ensure_future(build())
        task.add_done_callback(
            lambda t: (
                t.cancelled()
                or t.exception() is None
                or self.log.error("Booted snapshot %s not made: %s", path, t.exception())
            )
        )
        self._snapshot_builds[path] = task

    async def _start_from_snapshot(
        self, guest, account, rd, accel, shape, image, keys, on_kernel_up
    ) -> bool | None:
        """True if the VM runs from the booted snapshot with its own identity;
        None (no snapshot yet: one is being made) or False (QEMU was started but
        did not come up: its ssh port is taken over by the cold boot), with the
        reason in the progress bar, for a cold boot."""
        from ..vmstate import state_key
        from .suspend import key_parts

        user_key, host_key = keys
        key = state_key(key_parts(guest, self._qemu_binary(guest), self._snapshot_key_shape(shape)))
        path = snapshot_path(guest, key)
        if not path.is_file():
            self._ensure_snapshot(guest, path, accel)
            self._progress(
                8,
                "Cold boot: the booted snapshot of this guest is being made "
                "(later spawns start from it)",
            )
            return None
        self._progress(8, "Starting from the booted snapshot")
        port = self.ssh_port or pick_free_port()
        rd.known_hosts.write_text(known_hosts_line("127.0.0.1", port, host_key.public_key))
        rd.console_log.touch()
        rd.qemu_log.write_bytes(b"")
        for p in rd.path.iterdir():
            if p.name != ".server":
                os.chown(p, account.uid, account.gid)
        started = time.monotonic()
        proc = await self._launch(
            guest, self._vm_spec(guest, rd, port, accel, image, incoming=path), account
        )
        on_kernel_up()
        try:
            await wait_running(proc, rd, self.vm_boot_timeout)
            restored = time.monotonic()
            await deliver_identity(rd, proc, user_key, host_key, self.vm_boot_timeout)
            delivered = time.monotonic()
            await self._await_ssh_and_gdb(rd, port)
        except (VMStartError, OSError) as e:
            self.log.warning("Start from the booted snapshot failed for %s: %s", self._log_name, e)
            await stop_process_group(ProcessId(proc.pid, self.vm_start_time))
            self.vm_active = False
            self._progress(9, f"The booted snapshot could not be used ({e}); cold boot.")
            return False
        self._progress(
            75, f"VM started from the booted snapshot ({time.monotonic() - started:.1f}s)"
        )
        self.log.info(
            "Snapshot start of %s: restore %.2fs, identity %.2fs, ssh+gdb %.2fs",
            self._log_name,
            restored - started,
            delivered - restored,
            time.monotonic() - delivered,
        )
        return True

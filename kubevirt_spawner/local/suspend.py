"""Suspend and resume for LocalVMSpawner: when a stop saves the VM, what a
start restores, and the calls into ``kubevirt_spawner.vmstate`` that run as
the student. Policy and naming are pure functions; the rest is thin.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from datetime import timezone
from pathlib import Path

from .. import vmstate
from .guest import Guest

# Written into the runtime directory by `labvm suspend` (as the student) or by
# the lab manager before its idle cull: the next stop saves the VM.
REQUEST_FILE = "suspend-requested"

POLICIES = ("never", "requested", "idle", "always")


def should_suspend(policy: str, requested: bool, idle_for: float | None, idle_after: float) -> bool:
    """Whether a stop saves the VM instead of discarding it.

    ``never``: no stop does. ``requested`` (default): a stop asked for by
    `labvm suspend` or by the lab manager's idle cull. ``idle``: those, and
    any stop of a server the hub saw no activity from for ``idle_after``
    seconds (what a stop by a plain jupyterhub-idle-culler service looks
    like). ``always``: every stop, the student's Stop My Server included.
    """
    if policy == "never":
        return False
    if policy == "always" or requested:
        return True
    return policy == "idle" and idle_for is not None and idle_for >= idle_after


_qemu_versions: dict[str, str] = {}


def qemu_version(binary: str) -> str:
    if binary not in _qemu_versions:
        try:
            out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
            _qemu_versions[binary] = out.stdout.splitlines()[0] if out.stdout else ""
        except (OSError, subprocess.TimeoutExpired):
            _qemu_versions[binary] = ""
    return _qemu_versions[binary]


def key_parts(guest: Guest, binary: str, shape: dict) -> dict:
    """What a saved state depends on: the guest build (its cache directory is
    named by the hash of its inputs; the files' sizes and times catch a
    rebuild in place), QEMU, and the VM's shape (memory, CPUs, devices)."""

    def ident(p: Path) -> list:
        st = p.stat()
        return [st.st_size, st.st_mtime_ns]

    return {
        "guest": guest.root.resolve().name,
        "kernel": ident(guest.kernel),
        "initramfs": ident(guest.initramfs),
        "qemu": qemu_version(binary),
        **shape,
    }


def list_state_dir(path: Path, uid: int) -> list[str]:
    """Names in the student's state directory, read without following a link
    the student may have put there; [] when it is missing or not theirs."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return []
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
        return []
    return os.listdir(path)


def stale_message(names: tuple[str, ...], state_dir: Path) -> str:
    return (
        f"Your suspended VM was saved with another course kernel build or VM size; "
        f"it is kept in {state_dir / names[-1]}, not restored. Cold boot."
    )


def saved_ago(saved_at: float, now: float | None = None) -> str:
    secs = max(0, (time.time() if now is None else now) - saved_at)
    if secs < 120:
        return f"{secs:.0f} s ago"
    if secs < 7200:
        return f"{secs / 60:.0f} min ago"
    if secs < 2 * 86400:
        return f"{secs / 3600:.0f} h ago"
    return f"{secs / 86400:.0f} days ago"


async def run_helper(op: str, args: dict, preexec_fn, cwd: str, timeout: float = 300) -> dict:
    """Run ``python -m kubevirt_spawner.vmstate OP`` (as the student, through
    ``preexec_fn``); return its answer or raise StateError with its reason."""
    # -I: the student's home is the working directory, and nothing there
    # (a planted json.py) may be imported by the helper.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-m",
        "kubevirt_spawner.vmstate",
        op,
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=preexec_fn,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(args).encode()), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise vmstate.StateError(f"{op} did not finish within {timeout:.0f}s") from None
    try:
        answer = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise vmstate.StateError(
            f"{op} failed (exit {proc.returncode}): {err.decode(errors='replace').strip()[-300:]}"
        ) from None
    if "error" in answer:
        raise vmstate.StateError(answer["error"])
    return answer


class StatePlan:
    """What a start does with the student's saved states."""

    def __init__(
        self,
        state_dir: Path,
        key: str,
        image: Path | None,
        meta: dict | None = None,
        state: Path | None = None,
    ):
        self.state_dir, self.key, self.image = state_dir, key, image
        self.meta, self.state = meta, state


class SuspendMixin:
    """LocalVMSpawner's suspend/resume steps (uses its settings and helpers)."""

    def _state_dir(self, account) -> Path:
        home = account.home
        if self._shared_account:
            home = os.path.expanduser(self.shared_home_template.format(username=self.user.name))
        return Path(
            self.vm_state_dir_template.format(home=home, username=self.user.name)
        ).expanduser()

    def _helper(self, op: str, args: dict, account) -> asyncio.Future:
        return run_helper(
            op, args, self.make_preexec_fn(account.name), cwd=str(self._state_dir(account).parent)
        )

    async def _plan_state(self, guest: Guest, account, rd, shape: dict) -> StatePlan:
        """Find this student's suspended VM for this guest and shape; make the
        checkpoint image on first use. Never fails a spawn: a state that
        cannot be used is kept and the progress says why."""
        key = vmstate.state_key(key_parts(guest, self._qemu_binary(guest), shape))
        self.vm_state_key = key
        state_dir = self._state_dir(account)
        self._vm_state_dir = str(state_dir)
        found = vmstate.read_listing(list_state_dir(state_dir, account.uid), key)
        if found.stale and not found.suspended:
            self._progress(6, stale_message(found.stale, state_dir))
        if found.has_image and not found.suspended:
            return StatePlan(state_dir, key, vmstate.checkpoint_image(state_dir, key))
        args = {
            "state_dir": str(state_dir),
            "key": key,
            "rundir": str(rd.path),
            "resume": found.suspended,
        }
        try:
            got = await self._helper("prepare", args, account)
        except vmstate.StateError as e:
            self.log.warning("VM states of %s: %s", self._log_name, e)
            if found.suspended:
                self._progress(6, f"Your suspended VM cannot be read ({e}); cold boot.")
            return StatePlan(state_dir, key, None)
        plan = StatePlan(state_dir, key, Path(got["image"]))
        if found.suspended:
            try:
                plan.meta = vmstate.check_meta(got.get("meta"))
            except vmstate.StateError as e:
                self._progress(6, f"Your suspended VM cannot be used ({e}); cold boot.")
                return plan
            plan.state = Path(got["state"])
        return plan

    async def _suspend_vm(self) -> None:
        """If this stop should save the VM, save it (as the student) before it
        is stopped. Never fails the stop: a VM that cannot be saved is stopped."""
        try:
            await self._try_suspend()
        except Exception:
            self.log.exception("Suspending the VM of %s failed; it is stopped", self._log_name)

    async def _try_suspend(self) -> None:
        if not (self.with_vm and self.vm_active and self.rundir_path and self.vm_state_key):
            return
        requested = os.path.lexists(os.path.join(self.rundir_path, REQUEST_FILE))
        last = getattr(self.orm_spawner, "last_activity", None) if self.orm_spawner else None
        idle_for = None
        if last is not None:
            idle_for = time.time() - last.replace(tzinfo=timezone.utc).timestamp()
        if not should_suspend(self.suspend_on_stop, requested, idle_for, self.suspend_idle_seconds):
            return
        if not self.vm_alive():
            return
        account = await self._account()
        meta = {
            "host_key": self.vm_host_key,
            "saved_at": time.time(),
            "requested": requested,
            "idle_for": idle_for,
        }
        args = {
            "state_dir": str(self._state_dir(account)),
            "key": self.vm_state_key,
            "rundir": self.rundir_path,
            "meta": meta,
            "quota": int(self.vm_state_quota or 0),
        }
        try:
            got = await self._helper("suspend", args, account)
        except vmstate.StateError as e:
            self.log.warning("Not suspending the VM of %s (it is stopped): %s", self._log_name, e)
            return
        self.log.info(
            "Suspended the VM of %s: %s in %.2fs to %s",
            self._log_name,
            vmstate.human(got["bytes"]),
            got["seconds"],
            got["path"],
        )

    async def _resume_vm(self, guest: Guest, account, rd, accel: str, plan, on_kernel_up) -> bool:
        """Start QEMU on the suspended state; False (QEMU stopped, the state
        kept aside, the progress saying why) when it does not come up."""
        from ..sshkeys import known_hosts_line
        from .vmprocess import ProcessId, VMStartError, pick_free_port, stop_process_group

        self._progress(8, f"Resuming your suspended VM (saved {saved_ago(plan.meta['saved_at'])})")
        port = self.ssh_port or pick_free_port()
        rd.known_hosts.write_text(known_hosts_line("127.0.0.1", port, plan.meta["host_key"]))
        self.vm_host_key = plan.meta["host_key"]
        rd.console_log.touch()
        rd.qemu_log.write_bytes(b"")
        for p in rd.path.iterdir():
            if p.name != ".server":
                os.chown(p, account.uid, account.gid)
        started = time.monotonic()
        spec = self._vm_spec(guest, rd, port, accel, plan.image, incoming=plan.state)
        proc = await self._launch(guest, spec, account)
        # JupyterLab starts now, beside the resume; if the resume fails the
        # cold boot takes over this ssh port, so its environment stays right.
        on_kernel_up()
        try:
            await wait_running(proc, rd, self.vm_boot_timeout)
            # The guest's clock stood still while it was saved: set it to now.
            await self._await_ssh_and_gdb(rd, port, f"date -s @{int(time.time())} >/dev/null")
        except VMStartError as e:
            self.log.warning("Resuming the VM of %s failed: %s %s", self._log_name, e, e.detail)
            await stop_process_group(ProcessId(proc.pid, self.vm_start_time))
            self.vm_active = False
            try:
                kept = (
                    await self._helper(
                        "shelve", {"state_dir": str(plan.state_dir), "key": plan.key}, account
                    )
                )["kept"]
            except vmstate.StateError as err:
                kept = f"(could not be moved aside: {err})"
            self._progress(
                9, f"Your suspended VM could not be resumed ({e}); it is kept in {kept}. Cold boot."
            )
            return False
        took = time.monotonic() - started
        self._progress(75, f"VM resumed where you left off ({took:.1f}s)")
        self._consumed = asyncio.ensure_future(
            self._helper("consume", {"state_dir": str(plan.state_dir), "key": plan.key}, account)
        )
        return True


async def wait_running(proc, rd, timeout: float) -> None:
    """Wait until a QEMU started with -incoming has loaded the state and runs
    (ssh before then stalls: QEMU's port forward accepts at once)."""
    from ..qmp import QMP, QMPError
    from .vmprocess import VMStartError, tail

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            said = tail(rd.qemu_log, 3) or "(nothing)"
            raise VMStartError(f"QEMU could not load it: {said.splitlines()[-1]}", said)
        try:
            with QMP(str(rd.qmp_socket), timeout=5) as q:
                status = q.execute("query-status")["status"]
            if status == "running":
                return
        except (OSError, QMPError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise VMStartError(f"the saved state did not load within {timeout:.0f}s")
        await asyncio.sleep(0.05)

"""LocalVMSpawner: a QEMU debug VM and a JupyterLab per student, on one machine.

The JupyterHub-facing class only turns settings into a ``VMSpec`` and
drives the plain async helpers in ``vmprocess``; see DESIGN.md for the
lifecycle and the ``LAB_*`` contract.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Bool, Integer, TraitError, Unicode

from . import vmprocess
from .accounts import Account, SpawnError, shared_account, system_account
from .arch import toolchain_env
from .guest import Guest, GuestNotBuilt, default_guest_dir, write_vm_initrd
from .lab import LabEnv, ssh_argv
from .localvm_settings import LocalVMSettings, default_runtime_root
from .profiles import ProfileError, choose_profile
from .qemu import QEMU_BINARIES, RunDir, VMSpec, gdb_remote_for_socket, probe_kvm, qemu_argv
from .sshkeys import known_hosts_line, make_ssh_keypair
from .vmprocess import ProcessId, VMStartError, pick_free_port

__all__ = ["LocalVMSpawner", "default_runtime_root", "pick_free_port", "runtime_dir_name"]


def runtime_dir_name(username: str) -> str:
    """A directory name for ``username``: the name itself when it is short and
    plain, else a readable prefix plus a hash, so that every name is unique,
    filesystem-safe and short enough for unix-socket paths."""
    if re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,31}", username) and username not in (".", ".."):
        return username
    prefix = re.sub(r"[^a-z0-9]+", "-", username.lower()).strip("-")[:16] or "user"
    return f"{prefix}-{hashlib.sha256(username.encode()).hexdigest()[:10]}"


class LocalVMSpawner(LocalVMSettings, LocalProcessSpawner):
    """Start, per student, a QEMU VM in debug mode and a JupyterLab beside it.

    Run as root, each student's VM and notebook run under the student's own
    system account; the VM's gdb, console and monitor sockets live in a 0700
    directory only that account can enter. Run as an ordinary user, every
    student shares that user's account (fine for a demo, not for a class).
    """

    # -- state kept across hub restarts ---------------------------------
    vm_pid = Integer(0)
    notebook_start_time = Integer(0)
    vm_start_time = Integer(0)
    vm_ssh_port = Integer(0)
    rundir_path = Unicode("")
    vm_active = Bool(False)

    _accel_cache: dict = {}

    def get_state(self):
        state = super().get_state()
        if self.rundir_path:
            state.update(
                rundir=self.rundir_path,
                vm_pid=self.vm_pid,
                vm_start_time=self.vm_start_time,
                vm_ssh_port=self.vm_ssh_port,
            )
        if self.pid:
            state["notebook_start_time"] = self.notebook_start_time
        return state

    def load_state(self, state):
        super().load_state(state)
        self.rundir_path = state.get("rundir", "")
        self.vm_pid = state.get("vm_pid", 0)
        self.vm_start_time = state.get("vm_start_time", 0)
        self.vm_ssh_port = state.get("vm_ssh_port", 0)
        self.notebook_start_time = state.get("notebook_start_time", 0)
        self.vm_active = bool(self.vm_pid)

    def clear_state(self):
        super().clear_state()
        self.vm_pid = self.vm_start_time = self.vm_ssh_port = self.notebook_start_time = 0
        self.vm_active = False

    # -- profile and account ---------------------------------------------
    def options_form(self, spawner):
        if len(self.profile_list) < 2:
            return ""
        rows = []
        for i, p in enumerate(self.profile_list):
            from .profiles import profile_slug

            checked = "checked" if p.get("default") or (i == 0) else ""
            rows.append(
                f'<label style="display:block;margin:.5em 0"><input type="radio" name="profile" '
                f'value="{profile_slug(p)}" {checked}> <b>{p["display_name"]}</b> '
                f"{p.get('description', '')}</label>"
            )
        return "\n".join(rows)

    def options_from_form(self, formdata):
        return {"profile": formdata.get("profile", [""])[0]}

    def _apply_profile(self) -> str:
        try:
            profile = choose_profile(self.profile_list, self.user_options or {})
        except ProfileError as e:
            raise SpawnError(str(e)) from None
        # The spawner object outlives one start: undo the last profile's
        # overrides, so that picking another profile does not inherit them.
        for key, value in getattr(self, "_profile_saved", {}).items():
            setattr(self, key, value)
        self._profile_saved = {}
        if profile is None:
            return ""
        for key, value in profile.get("spawner_override", {}).items():
            if not self.has_trait(key):
                raise SpawnError(
                    f"profile {profile['display_name']!r} sets unknown setting {key!r}"
                )
            saved = getattr(self, key)
            try:
                setattr(self, key, value)
            except TraitError as e:
                raise SpawnError(f"profile {profile['display_name']!r}: {e}") from None
            self._profile_saved.setdefault(key, saved)
        return profile["display_name"]

    @property
    def _shared_account(self) -> bool:
        return os.getuid() != 0

    async def _account(self) -> Account:
        if self._shared_account:
            home = os.path.expanduser(self.shared_home_template.format(username=self.user.name))
            return shared_account(home)
        return await system_account(self.user.name, self.create_system_users, self.log)

    def make_preexec_fn(self, name):
        if self._shared_account:
            return None
        return super().make_preexec_fn(name)

    def user_env(self, env):
        if self._shared_account:
            env["USER"] = self.user.name
            return env
        return super().user_env(env)

    def get_args(self):
        args = super().get_args()
        if self.terminal_shell:
            args.append(f"--ServerApp.terminado_settings=shell_command={self.terminal_shell}")
        if self._shared_account:
            home = os.path.expanduser(self.shared_home_template.format(username=self.user.name))
            args.append(f"--ServerApp.root_dir={home}")
        return args

    # -- the VM ------------------------------------------------------------
    @property
    def rundir(self) -> RunDir:
        return RunDir(Path(self.rundir_path))

    def _progress(self, percent: int, message: str) -> None:
        self.log.info("Spawn %s: %s", self._log_name, message)
        self._events.append({"progress": percent, "message": message})

    def _guest_dir(self) -> Path:
        if self.guest_dir:
            return Path(self.guest_dir)
        return default_guest_dir(self.vm_arch or "x86_64")

    def lab_env(self) -> LabEnv | None:
        """The LAB_* view of this server's VM (None without a VM)."""
        if not (self.with_vm and self.rundir_path):
            return None
        guest = Guest(self._guest_dir())
        rd = self.rundir
        return LabEnv(
            vm_host="127.0.0.1",
            ssh_port=self.vm_ssh_port,
            gdb_remote=gdb_remote_for_socket(rd.gdb_socket),
            vmlinux=str(guest.vmlinux),
            kdir=str(guest.kdir),
            arch=guest.arch,
            ssh_key=str(rd.ssh_key),
            known_hosts=str(rd.known_hosts),
            backend="local",
            console_socket=str(rd.console_socket),
            console_log=str(rd.console_log),
            qmp_socket=str(rd.qmp_socket),
            initrd=str(rd.initrd),
        )

    def get_env(self):
        env = super().get_env()
        # labvm lives beside the hub's Python; make it the student's too.
        bindir = os.path.dirname(sys.executable)
        env["PATH"] = bindir + os.pathsep + env.get("PATH", os.defpath)
        lab = self.lab_env()
        if lab:
            env.update(lab.to_environ())
            # kbuild and the checks' compiler target the VM's arch (ARCH,
            # CROSS_COMPILE) when it is not the host's.
            env.update(toolchain_env(lab.arch, platform.machine()))
        return env

    async def _choose_accel(self, guest: Guest) -> tuple[str, str]:
        if self.accel != "auto":
            return self.accel, "set by LocalVMSpawner.accel"
        if guest.arch != platform.machine():
            return "tcg", f"KVM cannot run an {guest.arch} guest on this {platform.machine()} host"
        key = (self._qemu_binary(guest), str(guest.kernel))
        if key not in self._accel_cache:
            ok, why = await probe_kvm(guest.kernel, key[0], self.kvm_probe_timeout)
            self._accel_cache[key] = ("kvm" if ok else "tcg", why)
        return self._accel_cache[key]

    def _qemu_binary(self, guest: Guest) -> str:
        return self.qemu_binary or QEMU_BINARIES.get(guest.arch, "qemu-system-x86_64")

    def _prepare_rundir(self, account: Account) -> RunDir:
        root = Path(self.runtime_root)
        root.mkdir(mode=0o711, parents=True, exist_ok=True)
        try:
            rd = RunDir(
                root / runtime_dir_name(self.user.name + (f".{self.name}" if self.name else ""))
            )
        except ValueError as e:
            raise SpawnError(str(e)) from None
        self.rundir_path = str(rd.path)
        self._remove_rundir()
        rd.path.mkdir(mode=0o700)
        os.chown(rd.path, account.uid, account.gid)
        return rd

    def _remove_rundir(self) -> None:
        path = Path(self.rundir_path) if self.rundir_path else None
        if path and path.is_symlink():
            path.unlink()
        elif path and path.exists():
            shutil.rmtree(path)

    async def _stop_leftover_vm(self) -> None:
        """Kill a QEMU that a previous run of this server left behind."""
        idents = []
        if self.vm_pid:
            idents.append(ProcessId(self.vm_pid, self.vm_start_time))
        if self.rundir_path:
            try:
                pid = int(self.rundir.pidfile.read_text().strip())
                if (ident := vmprocess.identify(pid)) is not None:
                    idents.append(ident)
            except (OSError, ValueError):
                pass
        for ident in idents:
            if vmprocess.is_same_process(ident, marker=self.rundir_path):
                self.log.warning("Stopping leftover VM pid %d of %s", ident.pid, self._log_name)
                await vmprocess.stop_process_group(ident)

    async def _start_vm(self, guest: Guest, account: Account, on_kernel_up) -> None:
        accel, why = await self._choose_accel(guest)
        self._progress(5, f"Accelerator: {accel.upper()} ({why})")
        rd = self._prepare_rundir(account)
        user_key = make_ssh_keypair(f"{runtime_dir_name(self.user.name)}@labvm")
        host_key = make_ssh_keypair("labvm-host")
        write_vm_initrd(guest, rd.initrd, user_key, host_key)
        fd = os.open(rd.ssh_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(user_key.private_openssh)
        for _attempt in range(3):
            port = self.ssh_port or pick_free_port()
            rd.known_hosts.write_text(known_hosts_line("127.0.0.1", port, host_key.public_key))
            rd.console_log.touch()
            rd.qemu_log.write_bytes(b"")
            for p in rd.path.iterdir():
                os.chown(p, account.uid, account.gid)
            spec = VMSpec(
                rundir=rd, kernel=guest.kernel, initrd=rd.initrd, ssh_port=port, arch=guest.arch,
                accel=accel, memory_mb=self.vm_memory_mb, cpus=self.vm_cpus,
                edu=self.vm_edu_device, network_restrict=self.vm_network_restrict,
                name=f"labvm-{runtime_dir_name(self.user.name)}"[:15],
                kernel_args=tuple(self.vm_kernel_args), extra_args=tuple(self.vm_extra_qemu_args),
            )  # fmt: skip
            try:
                argv = qemu_argv(spec, self._qemu_binary(guest))
            except ValueError as e:
                raise SpawnError(f"Bad VM settings: {e}") from None
            self.log.info("Starting VM for %s: %s", self._log_name, " ".join(argv))
            proc = vmprocess.start_qemu(argv, rd, account.uid, account.gid)
            self._qemu = proc
            self.vm_pid, self.vm_ssh_port, self.vm_active = proc.pid, port, True
            await asyncio.sleep(0)
            self.vm_start_time = vmprocess.proc_start_time(proc.pid) or 0
            self._progress(
                10, f"VM booting ({accel.upper()}, {spec.memory_mb} MiB, {spec.cpus} CPU)"
            )
            try:
                async for step in vmprocess.watch_boot(proc, rd, self.vm_boot_timeout):
                    if step == "init":
                        self._progress(40, "Kernel up")
                        on_kernel_up()
                return await self._await_ssh_and_gdb(rd, port)
            except VMStartError:
                if "host forwarding rule" not in vmprocess.tail(rd.qemu_log, 5):
                    raise
                if self.ssh_port:
                    raise SpawnError(
                        f"The VM's ssh port {port} (LocalVMSpawner.ssh_port) is already in use "
                        "on 127.0.0.1; choose another or set it to 0."
                    ) from None
                self.log.warning("ssh port %d taken before QEMU bound it; retrying", port)
        raise SpawnError("Could not find a free loopback port for the VM's ssh after 3 tries.")

    async def _await_ssh_and_gdb(self, rd: RunDir, port: int) -> None:
        env = self.lab_env()
        deadline = self._vm_started + self.vm_boot_timeout
        while True:
            proc = await asyncio.create_subprocess_exec(
                *ssh_argv(env, "true"), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            try:
                _, err = await asyncio.wait_for(proc.communicate(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                err = b"timed out"
            if proc.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise VMStartError(f"The VM booted but ssh into it fails: {err.decode().strip()}")
            await asyncio.sleep(0.5)
        self._progress(60, f"ssh ready (127.0.0.1:{port})")
        if not await vmprocess.gdbstub_answers(rd.gdb_socket):
            raise VMStartError("The VM's gdb stub does not answer on its socket.")
        self._progress(70, "gdb stub ready")

    # -- lifecycle -----------------------------------------------------------
    @property
    def _log_name(self) -> str:
        return self.user.name + (f":{self.name}" if self.name else "")

    async def _start_notebook(self, account: Account):
        self._progress(45, "Starting JupyterLab")
        try:
            address = await LocalProcessSpawner.start(self)
        except PermissionError as e:
            raise SpawnError(
                f"The account {account.name!r} cannot run the notebook server ({e}). "
                "The hub's Python environment must be readable by every user: "
                "install it outside /root, e.g. with Debian's /usr/bin/python3."
            ) from None
        self.notebook_start_time = vmprocess.proc_start_time(self.pid) or 0
        return address

    async def start(self):
        self._events = []
        self._start_done = False
        self._vm_started = time.monotonic()
        self._notebook_future = None
        try:
            profile = self._apply_profile()
            if profile:
                self._progress(2, f"Profile: {profile}")
            account = await self._account()
            await self._stop_leftover_vm()
            if not self.with_vm:
                self.rundir_path = ""
                return await self._start_notebook(account)
            try:
                guest = Guest.find(self._guest_dir(), self.vm_arch or None)
            except GuestNotBuilt as e:
                raise SpawnError(str(e)) from None

            # JupyterLab needs seconds to start; start it as soon as QEMU
            # runs (its ssh port is then bound) and let both boot together.
            def on_kernel_up():
                self._notebook_future = asyncio.ensure_future(self._start_notebook(account))

            try:
                await self._start_vm(guest, account, on_kernel_up)
            except VMStartError as e:
                self.log.error("VM for %s failed: %s %s", self._log_name, e, e.detail)
                raise SpawnError(str(e)) from None
            return await self._notebook_future
        except BaseException:
            if self._notebook_future is not None:
                if not self._notebook_future.done():
                    self._notebook_future.cancel()
                await self._stop_notebook(now=True)
            await self._stop_vm()
            raise
        finally:
            self._start_done = True

    async def progress(self):
        sent = 0
        while True:
            events = getattr(self, "_events", [])
            while sent < len(events):
                yield events[sent]
                sent += 1
            if getattr(self, "_start_done", True):
                return
            await asyncio.sleep(0.2)

    def vm_alive(self) -> bool:
        if not self.vm_active:
            return False
        proc = getattr(self, "_qemu", None)
        if proc is not None and proc.pid == self.vm_pid:
            return proc.poll() is None
        return vmprocess.is_same_process(
            ProcessId(self.vm_pid, self.vm_start_time), marker=self.rundir_path
        )

    def notebook_alive(self) -> bool:
        # Not LocalProcessSpawner.poll(): it clears all state (the VM's too)
        # the moment the notebook exits, and trusts a restored pid blindly.
        if self.proc is not None and self.proc.pid == self.pid:
            return self.proc.poll() is None
        if not self.pid:
            return False
        return vmprocess.is_same_process(ProcessId(self.pid, self.notebook_start_time))

    async def poll(self):
        """None while both the notebook and the VM run; else an exit status.

        A dead VM counts: the hub then stops the server, and the student
        starts a fresh one (their files live in the home directory). The hub
        calls stop() only for servers that poll() says are running, so the
        half that is still alive is stopped here, before saying the server
        is gone.
        """
        if not self.notebook_alive():
            if self.vm_active:
                self.log.warning("Notebook server of %s exited; stopping its VM", self._log_name)
                await self._stop_vm()
            return self.proc.returncode if self.proc is not None and self.proc.returncode else 0
        if self.with_vm and self.vm_active and not self.vm_alive():
            self.log.warning(
                "VM of %s is gone; stopping its notebook server. QEMU said: %s\n"
                "Last console lines:\n%s",
                self._log_name,
                vmprocess.tail(self.rundir.qemu_log, 3) if self.rundir_path else "",
                vmprocess.tail(self.rundir.console_log) if self.rundir_path else "",
            )
            await self._stop_notebook(now=True)
            await self._stop_vm()
            return 1
        return None

    async def _stop_vm(self) -> None:
        if self.vm_pid:
            await vmprocess.stop_process_group(ProcessId(self.vm_pid, self.vm_start_time))
            proc = getattr(self, "_qemu", None)
            if proc is not None:
                proc.poll()
        self.vm_active = False
        self._remove_rundir()

    async def _stop_notebook(self, now: bool) -> None:
        """SIGINT, then SIGTERM, then SIGKILL the notebook server, then every
        process that was under it: terminals run in sessions of their own, so
        signalling the server's pid or group alone would leave them."""
        if not self.notebook_alive():
            return
        tree = [i for i in map(vmprocess.identify, vmprocess.descendants(self.pid)) if i]
        steps = [(signal.SIGTERM, self.term_timeout), (signal.SIGKILL, self.kill_timeout)]
        if not now:
            steps.insert(0, (signal.SIGINT, self.interrupt_timeout))
        for sig, timeout in steps:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + timeout
            while self.notebook_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if not self.notebook_alive():
                break
        for ident in tree:
            await vmprocess.stop_process_group(ident, term_timeout=2)

    async def stop(self, now=False):
        await self._stop_notebook(now)
        await self._stop_vm()

"""LocalVMSpawner: a QEMU debug VM and a JupyterLab per student, on one machine.

The JupyterHub-facing class only turns settings into a ``VMSpec`` and
drives the plain async helpers in ``vmprocess``; see docs/design.md for the
lifecycle and the ``LAB_*`` contract.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Bool, Integer, TraitError, Unicode, default

from ..arch import toolchain_env
from ..contract import LabEnv, LocalVMState, runtime_dir_name, ssh_argv
from ..jupyter_config import readable_by_all
from ..profiles import ProfileError, choose_profile
from ..spawnerror import SpawnError
from . import boot, bootsnap, cgroups, kvmprobe, suspend, vmprocess
from .accounts import Account, shared_account, system_account
from .guest import Guest, GuestNotBuilt, default_guest_dir
from .hosttsc import host_tsc_khz
from .qemu import QEMU_BINARIES, RunDir, VMSpec, gdb_remote_for_socket, qemu_argv
from .settings import LocalVMSettings, default_runtime_root
from .vmprocess import ProcessId, VMStartError, pick_free_port

__all__ = ["LocalVMSpawner", "default_runtime_root", "pick_free_port", "runtime_dir_name"]

# In a runtime directory: which server it is ("USER\nSERVER\n"), written by the hub.
OWNER_FILE = ".server"


class LocalVMSpawner(
    suspend.SuspendMixin, bootsnap.BootSnapshotMixin, LocalVMSettings, LocalProcessSpawner
):
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
    vm_state_key = Unicode("")
    vm_host_key = Unicode("")

    @default("server_token_scopes")
    def _default_server_token_scopes(self):
        # JupyterHub's `server` role, plus stopping itself: `labvm suspend`.
        return ["users:activity!user", "access:servers!server", "servers!server"]

    @default("popen_kwargs")
    def _default_popen_kwargs(self):
        # A Jupyter server whose stdin is the hub's terminal answers SIGINT
        # (the first step of stop) with a "Shutdown this Jupyter server?"
        # prompt and keeps running; from /dev/null it stops at once.
        return {"stdin": subprocess.DEVNULL}

    def get_state(self):
        state = super().get_state()
        if self.rundir_path:
            saved = LocalVMState(
                self.rundir_path,
                self.vm_pid,
                self.vm_start_time,
                self.vm_ssh_port,
                state_key=self.vm_state_key,
                host_key=self.vm_host_key,
            )
            state.update(saved.to_state())
        if self.pid:
            state["notebook_start_time"] = self.notebook_start_time
        return state

    def load_state(self, state):
        super().load_state(state)
        saved = LocalVMState.from_state(state)
        self.rundir_path = saved.rundir
        self.vm_pid, self.vm_start_time, self.vm_ssh_port = (
            saved.pid,
            saved.start_time,
            saved.ssh_port,
        )
        self.notebook_start_time = saved.notebook_start_time
        self.vm_state_key, self.vm_host_key = saved.state_key, saved.host_key
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
            from ..profiles import profile_slug

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
            raise SpawnError(str(e), reason="options", status_code=400) from None
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

    # -- limits (one cgroup per server) ---------------------------------------
    _cgroup_layout: dict = {}

    def _limits(self) -> cgroups.Limits:
        return cgroups.Limits(
            cpu=self.cpu_limit or None,
            memory=int(self.mem_limit) if self.mem_limit else None,
            pids=self.pids_limit or None,
        )

    def _cgroup(self) -> cgroups.ServerCgroup | None:
        """This server's cgroup (not created), or None where there are none:
        a hub not run as root, or no limits set."""
        if self._shared_account or not self._limits().any():
            return None
        if "layout" not in self._cgroup_layout:
            self._cgroup_layout["layout"] = cgroups.detect_layout()
        layout = self._cgroup_layout["layout"]
        if layout is None:
            raise SpawnError(
                "LocalVMSpawner.cpu_limit, mem_limit or pids_limit is set, but this machine "
                "has no cgroup hierarchy with the cpu, memory and pids controllers; "
                "set them to None (pids_limit to 0) or mount cgroups.",
                reason="cgroup",
            )
        return cgroups.ServerCgroup(
            layout, self.cgroup_parent, runtime_dir_name(self.user.name, self.name)
        )

    def _enter_cgroup(self, pid: int) -> None:
        group = self._cgroup()
        if group is not None:
            try:
                group.add(pid)
            except OSError as e:
                raise SpawnError(f"cannot put the server into its cgroup: {e}") from None

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
            state_dir=getattr(self, "_vm_state_dir", ""),
            state_quota=int(self.vm_state_quota or 0),
        )

    def get_env(self):
        env = super().get_env()
        # labvm lives beside the hub's Python; make it the student's too.
        bindir = os.path.dirname(sys.executable)
        env["PATH"] = bindir + os.pathsep + env.get("PATH", os.defpath)
        if self.student_config_dir:
            if os.geteuid() == 0 and not readable_by_all(Path(self.student_config_dir)):
                self.log.warning(
                    "%s: students cannot read student_config_dir %s, so their JupyterLab "
                    "shows the instructor tools; install the package (make deps) or point "
                    "the setting at a directory every account can read",
                    self._log_name,
                    self.student_config_dir,
                )
            extra = env.get("JUPYTER_CONFIG_PATH", "")
            env["JUPYTER_CONFIG_PATH"] = os.pathsep.join(
                p for p in (self.student_config_dir, extra) if p
            )
        lab = self.lab_env()
        if lab:
            env.update(lab.to_environ())
            env["LAB_VM_SUSPEND"] = self.suspend_on_stop
            # kbuild and the checks' compiler target the VM's arch (ARCH,
            # CROSS_COMPILE) when it is not the host's.
            env.update(toolchain_env(lab.arch, platform.machine()))
        return env

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._probe_kvm_early()

    def _probe_kvm_early(self) -> None:
        """Start the KVM probe in the background when the hub creates this
        spawner (at hub start for a server that runs, when its student logs
        in for the others), so that no Start waits for it (kvmprobe)."""
        if self.accel != "auto" or not self.with_vm:
            return
        try:
            asyncio.get_running_loop()
            guest = Guest.find(self._guest_dir(), self.vm_arch or None)
        except (RuntimeError, GuestNotBuilt, ValueError):
            return  # no event loop (not in a hub) or no guest: the Start says why
        if guest.arch == platform.machine():
            binary = self._qemu_binary(guest)
            kvmprobe.start(guest.kernel, binary, self.kvm_probe_timeout, log=self.log)

    async def _choose_accel(self, guest: Guest) -> tuple[str, str]:
        if self.accel != "auto":
            return self.accel, "set by LocalVMSpawner.accel"
        if guest.arch != platform.machine():
            return "tcg", f"KVM cannot run an {guest.arch} guest on this {platform.machine()} host"
        binary = self._qemu_binary(guest)
        ok, why = await kvmprobe.verdict(guest.kernel, binary, self.kvm_probe_timeout, log=self.log)
        return ("kvm" if ok else "tcg"), why

    def _qemu_binary(self, guest: Guest) -> str:
        return self.qemu_binary or QEMU_BINARIES.get(guest.arch, "qemu-system-x86_64")

    def _prepare_rundir(self, account: Account) -> RunDir:
        root = Path(self.runtime_root)
        root.mkdir(mode=0o711, parents=True, exist_ok=True)
        try:
            rd = RunDir(root / runtime_dir_name(self.user.name, self.name))
        except ValueError as e:
            raise SpawnError(str(e)) from None
        owner = f"{self.user.name}\n{self.name}\n"
        marker = rd.path / OWNER_FILE
        if marker.is_file() and not marker.is_symlink() and marker.read_text() != owner:
            # Names are injective, so this is a collision or tampering: never
            # remove or reuse another server's directory.
            raise SpawnError(
                f"The runtime directory {rd.path} belongs to another server; "
                "ask an administrator to look at it."
            )
        self.rundir_path = str(rd.path)
        self._remove_rundir()
        rd.path.mkdir(mode=0o700)
        marker.write_text(owner)
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
        self._tsc_khz = await asyncio.to_thread(host_tsc_khz) if accel == "tcg" else 0
        rd = self._prepare_rundir(account)
        shape = {
            "arch": guest.arch,
            "accel": accel,
            "memory_mb": self.vm_memory_mb,
            "cpus": self.vm_cpus,
            "edu": self.vm_edu_device,
            "extra": list(self.vm_extra_qemu_args),
        }
        plan = await self._plan_state(guest, account, rd, shape)
        port_hint = 0
        if plan.meta is not None:
            if await self._resume_vm(guest, account, rd, accel, plan, on_kernel_up):
                return
            # The notebook may already have the resumed VM's port: boot on it.
            port_hint = self.vm_ssh_port
            rd = self._prepare_rundir(account)
        user_key, host_key = boot.write_vm_keys(
            guest, rd, f"{runtime_dir_name(self.user.name)}@labvm"
        )
        self.vm_host_key = host_key.public_key
        if self.boot_from_snapshot and not port_hint:
            started = await self._start_from_snapshot(
                guest, account, rd, accel, shape, plan.image, (user_key, host_key), on_kernel_up
            )
            if started:
                return
            if started is False:
                port_hint = self.vm_ssh_port
        ports = boot.ports_to_try(self.ssh_port)
        if port_hint and not self.ssh_port:
            ports[0] = port_hint
        for port in ports:
            boot.reset_for_attempt(rd, port, host_key)
            for p in rd.path.iterdir():
                if p.name != OWNER_FILE:
                    os.chown(p, account.uid, account.gid)
            spec = self._vm_spec(guest, rd, port, accel, plan.image)
            proc = await self._launch(guest, spec, account)
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
                if not boot.lost_the_port(rd):
                    raise
                if self.ssh_port:
                    raise SpawnError(
                        f"The VM's ssh port {port} (LocalVMSpawner.ssh_port) is already in use "
                        "on 127.0.0.1; choose another or set it to 0."
                    ) from None
                self.log.warning("ssh port %d taken before QEMU bound it; retrying", port)
        raise SpawnError(
            f"Could not find a free loopback port for the VM's ssh after {len(ports)} tries."
        )

    def _vm_spec(self, guest, rd: RunDir, port: int, accel: str, image, incoming=None, initrd=None):
        return VMSpec(
            rundir=rd,
            kernel=guest.kernel,
            initrd=initrd or rd.initrd,
            ssh_port=port,
            arch=guest.arch,
            accel=accel,
            memory_mb=self.vm_memory_mb,
            cpus=self.vm_cpus,
            edu=self.vm_edu_device,
            network_restrict=self.vm_network_restrict,
            name=f"labvm-{runtime_dir_name(self.user.name)}"[:15],
            kernel_args=tuple(self.vm_kernel_args),
            extra_args=tuple(self.vm_extra_qemu_args),
            state_image=image,
            incoming=incoming,
            tsc_khz=self._tsc_khz,
        )

    async def _launch(self, guest: Guest, spec: VMSpec, account: Account):
        try:
            argv = qemu_argv(spec, self._qemu_binary(guest))
        except ValueError as e:
            raise SpawnError(f"Bad VM settings: {e}") from None
        self.log.info("Starting VM for %s: %s", self._log_name, " ".join(argv))
        proc = vmprocess.start_qemu(argv, spec.rundir, account.uid, account.gid)
        self._enter_cgroup(proc.pid)
        self._qemu = proc
        self.vm_pid, self.vm_ssh_port, self.vm_active = proc.pid, spec.ssh_port, True
        await asyncio.sleep(0)
        self.vm_start_time = vmprocess.proc_start_time(proc.pid) or 0
        return proc

    async def _await_ssh_and_gdb(self, rd: RunDir, port: int, command: str = "true") -> None:
        env = self.lab_env()
        deadline = self._vm_started + self.vm_boot_timeout
        while True:
            proc = await asyncio.create_subprocess_exec(
                *ssh_argv(env, command),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
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

    async def _copy_labs(self, account: Account) -> None:
        """copy_labs_from into ~/labs, as the student (kubevirt_spawner.local.labcopy)."""
        home = account.home
        if self._shared_account:
            home = os.path.expanduser(self.shared_home_template.format(username=self.user.name))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kubevirt_spawner.local.labcopy",
            self.copy_labs_from,
            os.path.join(home, "labs"),
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=self.make_preexec_fn(account.name),
        )
        out, _ = await proc.communicate()
        said = out.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        if proc.returncode == 0:
            self.log.info("Labs for %s: %s", self._log_name, said[0])
        else:
            # Not a reason to refuse the student a server: say it and go on.
            self.log.warning("Labs for %s not copied: %s", self._log_name, said[0])
            self._progress(44, f"Labs not copied into ~/labs ({said[0]}); tell your instructor")

    async def _start_notebook(self, account: Account):
        if self.copy_labs_from:
            await self._copy_labs(account)
        self._progress(45, "Starting JupyterLab")
        try:
            address = await LocalProcessSpawner.start(self)
            # JupyterLab's kernels and terminals, started later, are born inside.
            self._enter_cgroup(self.pid)
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
            group = self._cgroup()
            if group is not None:
                try:
                    group.create(self._limits())
                except cgroups.CgroupError as e:
                    raise SpawnError(str(e), reason="cgroup") from None
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
                if self._notebook_future is None:  # once, even if a resume fell back to a boot
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
        await self._remove_cgroup()

    async def _remove_cgroup(self) -> None:
        """Last, when the server's processes are stopped: kill what is still
        inside its cgroup (a student's leftover background job) and remove it."""
        try:
            group = self._cgroup()
        except SpawnError:
            return
        if group is not None:
            await asyncio.get_running_loop().run_in_executor(None, group.remove)

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
        # Saving the VM (when this stop suspends) and stopping JupyterLab are independent.
        await asyncio.gather(self._suspend_vm(), self._stop_notebook(now))
        await self._stop_vm()

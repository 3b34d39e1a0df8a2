"""The settings of LocalVMSpawner, kept apart from its lifecycle code."""

from __future__ import annotations

import os
import tempfile

from jupyterhub.traitlets import ByteSpecification
from traitlets import (
    Bool,
    Dict,
    Enum,
    Float,
    HasTraits,
    Integer,
    List,
    TraitError,
    Unicode,
    default,
    validate,
)

from ..arch import get_arch
from ..profiles import check_profiles


def default_runtime_root() -> str:
    if os.getuid() == 0:
        return "/run/kubevirt-spawner"
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return os.path.join(base, f"kubevirt-spawner-{os.getuid()}")


class LocalVMSettings(HasTraits):
    """Everything an instructor can set on LocalVMSpawner (``c.LocalVMSpawner.*``)."""

    guest_dir = Unicode(
        "",
        help="""Directory holding the built guest: the kernel (bzImage, or Image
        for arm64), vmlinux, kdir, initramfs.cpio.gz and its `arch`. Empty
        (default): the last guest built for `vm_arch` in the cache
        ($KVS_CACHE_DIR, else /var/cache/kubevirt-spawner for root, else
        ~/.cache/kubevirt-spawner): guest/current from `make guest`, or
        guest/current-aarch64 from `make guest-aarch64`.""",
    ).tag(config=True)

    vm_arch = Unicode(
        "",
        help="""Architecture of the VM: `x86_64` or `aarch64` (QEMU `virt`
        board, arm64 lab kernel; students' modules and programs are then
        cross-built, and gdb-multiarch debugs it). Empty (default): whatever
        `guest_dir`'s guest was built for, x86_64 if guest_dir is empty too.
        Set per profile (spawner_override) to offer both. A guest_dir built for
        another arch fails the spawn with a message naming the build command.""",
    ).tag(config=True)

    @validate("vm_arch")
    def _check_vm_arch(self, proposal):
        if proposal.value:
            try:
                get_arch(proposal.value)
            except ValueError as e:
                raise TraitError(f"LocalVMSpawner.vm_arch: {e}") from None
        return proposal.value

    qemu_binary = Unicode(
        "",
        help="""QEMU executable. Empty: qemu-system-x86_64, or
        qemu-system-aarch64 for an aarch64 guest, from PATH.""",
    ).tag(config=True)

    accel = Enum(
        ["auto", "kvm", "tcg"],
        "auto",
        help="""QEMU accelerator. `auto` uses KVM only when a short probe boot
        under KVM prints the kernel banner (a present /dev/kvm is not enough:
        some hosts spin or abort), and TCG otherwise. The choice and its reason
        are logged and shown in the spawn progress.""",
    ).tag(config=True)

    kvm_probe_timeout = Float(
        10.0, help="Seconds the KVM probe boot may take before TCG is chosen."
    ).tag(config=True)

    vm_memory_mb = Integer(256, help="VM memory in MiB.").tag(config=True)
    vm_cpus = Integer(1, help="Virtual CPUs per VM.").tag(config=True)
    vm_boot_timeout = Float(
        120.0,
        help="""Seconds from starting QEMU until the VM must answer ssh. Under
        TCG the lab kernel needs about 5 s; a kernel panic fails the spawn at
        once, with the console's last lines.""",
    ).tag(config=True)
    vm_edu_device = Bool(
        True,
        help="""Add QEMU's `edu` PCI device (1234:11e8) for the driver lab.
        x86_64 only: aarch64 VMs never get it (lab 7 says what to use there).""",
    ).tag(config=True)
    vm_network_restrict = Bool(
        True,
        help="""Cut the VM off from the host and the internet (QEMU user-mode
        networking with restrict=on); the ssh forward still works. Turn off
        only if labs need to download from inside the VM.""",
    ).tag(config=True)
    vm_kernel_args = List(
        Unicode(), help="Extra guest kernel command-line arguments, e.g. ['loglevel=7']."
    ).tag(config=True)
    vm_extra_qemu_args = List(Unicode(), help="Extra QEMU arguments, appended last.").tag(
        config=True
    )
    with_vm = Bool(
        True,
        help="""Start a VM with the notebook. Profiles for application-level
        labs may set it False: then no LAB_VM_* variables are set and `labvm`
        says the server has no VM.""",
    ).tag(config=True)
    ssh_port = Integer(
        0,
        help="""Loopback port forwarded to the VM's ssh. 0 (default) picks a
        free one per VM. A fixed port only makes sense with one student.""",
    ).tag(config=True)
    runtime_root = Unicode(
        help="""Directory under which each server gets a private 0700 runtime
        directory (sockets, console log, keys). Default /run/kubevirt-spawner
        for root, else under $XDG_RUNTIME_DIR or /tmp. Keep it short: unix
        socket paths are limited to 107 bytes.""",
    ).tag(config=True)

    @default("runtime_root")
    def _default_runtime_root(self):
        return default_runtime_root()

    create_system_users = Bool(
        False,
        help="""When the hub runs as root and a student has no system account,
        create one (useradd, locked password, home under /home). Off: such a
        spawn fails with a message naming the missing account.""",
    ).tag(config=True)
    shared_home_template = Unicode(
        "~/kubevirt-spawner-homes/{username}",
        help="""When the hub does not run as root, students share its account
        and each gets this directory as notebook root ({username} expands).""",
    ).tag(config=True)
    terminal_shell = Unicode(
        "/bin/bash -i",
        help="""Command for JupyterLab terminals. Deliberately not a login
        shell: Debian's /etc/profile resets PATH, which would hide `labvm`
        and the hub's Python environment. Empty: Jupyter's default.""",
    ).tag(config=True)
    # -- limits: one cgroup per server, for its QEMU and JupyterLab together
    cpu_limit = Float(
        None,
        allow_none=True,
        help="""CPU cores a student's server (VM and JupyterLab together) may
        use, e.g. 1.0 or 0.5; enforced with a cgroup (CFS quota) when the hub
        runs as root. None (default): no quota, students share the cores.""",
    ).tag(config=True)
    mem_limit = ByteSpecification(
        None,
        allow_none=True,
        help="""Memory a student's server (VM and JupyterLab together, page
        cache included) may use, e.g. "2G"; past it the kernel's OOM killer
        picks inside that server only. Leave room for the VM (vm_memory_mb
        plus about 100 MB of QEMU) and builds. None (default): no limit.""",
    ).tag(config=True)
    pids_limit = Integer(
        1024,
        help="""Processes and threads a student's server may have at once, so
        that a fork bomb stays inside it (kernel builds with -j2 need a few
        hundred). 0: no limit.""",
    ).tag(config=True)
    cgroup_parent = Unicode(
        "kubevirt-spawner",
        help="""The cgroup under which each server gets its own (one per
        hierarchy on cgroup v1). Limits need a hub running as root; a hub that
        cannot make cgroups while limits are set refuses to spawn, saying why.""",
    ).tag(config=True)

    # -- suspend and checkpoints (kubevirt_spawner.local.suspend, docs/local.md)
    suspend_on_stop = Enum(
        ["never", "requested", "idle", "always"],
        "requested",
        help="""Which stops save the VM (its RAM: loaded modules, files in its
        /tmp, gdb-able kernel state) into the student's vm_state_dir instead of
        discarding it; the next start resumes it (about 0.5 s, instead of a
        boot). `requested` (default): when the student runs `labvm suspend`
        and when the lab manager culls an idle server. `idle`: also any stop
        of a server idle for suspend_idle_seconds (a plain
        jupyterhub-idle-culler service only calls the hub's DELETE, so
        idleness is how a cull is told apart). `always`: every stop, Stop My
        Server and a hub shutdown with cleanup_servers included. `never`: no
        stop does, and `labvm suspend` refuses. Cost per suspended student:
        about 12 MB on disk with the 256 MiB course VM (up to the VM's memory
        size for a VM that filled its RAM) and about 1 s added to the stop.""",
    ).tag(config=True)
    suspend_idle_seconds = Float(
        600.0,
        help="""With suspend_on_stop = `idle`: a stop suspends when the hub saw
        no activity from the server for this many seconds. Keep it below
        the culler's --timeout, and above the hub's activity interval
        (JupyterHub.last_activity_interval, 300 s).""",
    ).tag(config=True)
    boot_from_snapshot = Bool(
        False,
        help="""Start VMs from a booted snapshot instead of booting them: the
        guest is booted once per guest build and VM shape (memory, CPUs,
        devices, vm_kernel_args), with no keys, and its state saved beside the
        guest in the cache (booted-KEY.state, about 42 MB); each spawn
        restores it and gives the VM this server's keys, random seed and clock
        over the serial console before ssh starts. The first spawn after a new
        guest boots cold while the snapshot is made; a snapshot that does not
        come up falls back to a cold boot; the progress bar says which was
        used. False (default): always boot.""",
    ).tag(config=True)
    vm_state_dir_template = Unicode(
        "{home}/.labvm",
        help="""Where a student's suspended VM and `labvm snapshot` checkpoints
        live, in the student's own storage ({home}: the home directory or,
        without root, shared_home_template's directory; {username} expands).
        Written only by the student's own processes. A state saved for another
        guest build (after `make guest` changed the course kernel) or VM size
        stays there, is never restored, and the spawn progress says so.""",
    ).tag(config=True)
    vm_state_quota = ByteSpecification(
        "1G",
        help="""Disk space a student's saved VM states (the suspended VM and
        all checkpoints) may use, e.g. "1G". A suspend or `labvm snapshot save`
        that would exceed it is refused (a refused suspend stops the VM as
        without suspend_on_stop, and logs why). One checkpoint of the 256 MiB
        course VM is about 45 MB (uncompressed); a suspended VM about 12 MB.
        0: no limit.""",
    ).tag(config=True)

    student_config_dir = Unicode(
        help="""A Jupyter config directory put first on every student server's
        JUPYTER_CONFIG_PATH. The default (kubevirt_spawner/jupyter_config/student,
        as installed) shows students nbgrader's Assignment List only (no Create
        Assignment, formgrader or course list) and turns off JupyterLab's news
        pop-up; graders get formgrader in the course service instead. Empty:
        add nothing.""",
    ).tag(config=True)

    @default("student_config_dir")
    def _default_student_config_dir(self):
        from ..jupyter_config import config_dir

        return config_dir("student")

    copy_labs_from = Unicode(
        "",
        help="""For a hub without an nbgrader course: a directory of student
        notebooks (e.g. a course's nbgrader release/ folder) copied into the
        student's ~/labs at every start, as the student. A file the student
        already has is never overwritten, so edits survive; new labs arrive.
        Empty (default): copy nothing (with a course, students fetch labs from
        the Assignment List).""",
    ).tag(config=True)
    profile_list = List(
        Dict(),
        help="""Choices shown on the spawn page, kubespawner-style: each a dict
        with display_name, optional slug, description and default, and
        spawner_override (a dict of LocalVMSpawner settings, e.g.
        {'with_vm': False} or {'vm_memory_mb': 512}).""",
    ).tag(config=True)

    @validate("profile_list")
    def _check_profile_list(self, proposal):
        check_profiles(proposal.value, "spawner_override")
        return proposal.value

"""The settings of LocalVMSpawner, kept apart from its lifecycle code."""

from __future__ import annotations

import os
import tempfile

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

from .arch import get_arch
from .profiles import check_profiles


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

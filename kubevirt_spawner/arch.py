"""What differs between the lab VM architectures, in one table.

Everything else (QEMU argv, guest layout, toolchain environment, gdb,
manifests) looks the facts up here, so adding an architecture means adding
one ``Arch`` and its guest build.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    """One guest architecture, named as ``uname -m`` and ``LAB_ARCH`` name it."""

    name: str
    qemu_binary: str
    kernel_image: str  # file name of the bootable kernel in a guest directory
    console: str  # the guest's serial console device
    kbuild_arch: str  # kbuild's ARCH=
    cross_prefix: str  # CROSS_COMPILE= when the host is another arch
    gdb_arch: str  # gdb's `set architecture`
    kube_arch: str  # the node label kubernetes.io/arch
    syscall_prefix: str  # the syscall wrappers' symbol prefix in vmlinux
    has_edu: bool  # QEMU's `edu` PCI device is offered (lab 7)


ARCHES: dict[str, Arch] = {
    a.name: a
    for a in (
        Arch(
            "x86_64",
            "qemu-system-x86_64",
            "bzImage",
            "ttyS0",
            "x86",
            "x86_64-linux-gnu-",
            "i386:x86-64",
            "amd64",
            "__x64_sys_",
            True,
        ),
        Arch(
            "aarch64",
            "qemu-system-aarch64",
            "Image",
            "ttyAMA0",
            "arm64",
            "aarch64-linux-gnu-",
            "aarch64",
            "arm64",
            "__arm64_sys_",
            False,
        ),
    )
}


class UnknownArch(ValueError):
    """An architecture name that is not in ``ARCHES``; the message is one line."""


def get_arch(name: str) -> Arch:
    """The ``Arch`` called ``name``; UnknownArch naming the choices otherwise."""
    try:
        return ARCHES[name]
    except (KeyError, TypeError):
        raise UnknownArch(
            f"unsupported arch {name!r}; choose one of: {', '.join(sorted(ARCHES))}"
        ) from None


def toolchain_env(arch: str, host_machine: str) -> dict[str, str]:
    """The environment that makes kbuild and gcc target ``arch`` from ``host_machine``.

    Empty when they are the same. Otherwise kbuild's ``ARCH`` and
    ``CROSS_COMPILE``, which it reads from the environment, so that
    ``make -C $LAB_KDIR M=$PWD modules`` cross-builds unchanged.
    """
    a = get_arch(arch)
    if a.name == host_machine:
        return {}
    return {"ARCH": a.kbuild_arch, "CROSS_COMPILE": a.cross_prefix}


def c_compiler(arch: str, host_machine: str) -> str:
    """The gcc that builds user programs for ``arch`` on ``host_machine``."""
    a = get_arch(arch)
    return "gcc" if a.name == host_machine else f"{a.cross_prefix}gcc"

"""The local lab guest: where its artefacts live and the per-VM initramfs.

The guest itself is built by ``images/guest/build.sh`` (``make guest``), the
arm64 one by ``images/guest/build-aarch64.sh`` (``make guest-aarch64``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..arch import get_arch
from ..cpio import Entry, gzip_archive
from ..sshkeys import KeyPair

BUILD_COMMANDS = {"x86_64": "make guest", "aarch64": "make guest-aarch64"}
# The name of the `current` link each build script maintains in cache_dir()/guest.
CURRENT_LINKS = {"x86_64": "current", "aarch64": "current-aarch64"}
# Environment overrides of those links: a guest directory to use instead.
# The test suite pins them at its start (tests/conftest.py), so that another
# checkout's `make guest` moving `current` cannot change a run half-way.
GUEST_DIR_ENV = {"x86_64": "KVS_GUEST_DIR", "aarch64": "KVS_GUEST_DIR_AARCH64"}
BUILD_COMMAND = BUILD_COMMANDS["x86_64"]


def cache_dir() -> Path:
    """Where slow artefacts (guest kernel, rootfs, control-plane binaries) are cached.

    ``$KVS_CACHE_DIR`` if set; else /var/cache/kubevirt-spawner for root (so
    that students' processes can read the guest), else ~/.cache/kubevirt-spawner.
    """
    if os.environ.get("KVS_CACHE_DIR"):
        return Path(os.environ["KVS_CACHE_DIR"])
    if os.getuid() == 0:
        return Path("/var/cache/kubevirt-spawner")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "kubevirt-spawner"


def default_guest_dir(arch: str = "x86_64") -> Path:
    """The last guest built for ``arch`` (UnknownArch for an unknown one), or
    the directory ``$KVS_GUEST_DIR`` (``$KVS_GUEST_DIR_AARCH64``) names."""
    get_arch(arch)
    override = os.environ.get(GUEST_DIR_ENV[arch])
    return Path(override) if override else cache_dir() / "guest" / CURRENT_LINKS[arch]


class GuestNotBuilt(Exception):
    pass


@dataclass(frozen=True)
class Guest:
    """A built guest: kernel, symbols, build tree, initramfs, and its arch."""

    root: Path

    kernel = property(lambda self: self.root / get_arch(self.arch).kernel_image)
    vmlinux = property(lambda self: self.root / "vmlinux")
    kdir = property(lambda self: self.root / "kdir")
    initramfs = property(lambda self: self.root / "initramfs.cpio.gz")

    @property
    def arch(self) -> str:
        """``uname -m`` of the guest; guests built before the `arch` file are x86_64."""
        try:
            return (self.root / "arch").read_text().strip()
        except FileNotFoundError:
            return "x86_64"

    @property
    def kernel_release(self) -> str:
        return (self.root / "kernelrelease").read_text().strip()

    @classmethod
    def find(cls, root: str | os.PathLike, arch: str | None = None) -> Guest:
        """The guest at ``root``; GuestNotBuilt naming the build command if
        incomplete, or if it is not for ``arch`` (when given)."""
        guest = cls(Path(root))
        built_for = guest.arch if (guest.root / "arch").exists() else (arch or "x86_64")
        try:
            kernel = guest.root / get_arch(built_for).kernel_image
            if arch is not None:
                get_arch(arch)
        except ValueError as e:
            raise GuestNotBuilt(f"Guest {root}: {e}.") from None
        if arch is not None and built_for != arch:
            raise GuestNotBuilt(
                f"The guest in {root} is built for {built_for}, not {arch}; build an {arch} "
                f"one with `{BUILD_COMMANDS[arch]}` or choose another guest directory."
            )
        missing = [p.name for p in (kernel, guest.vmlinux, guest.initramfs) if not p.exists()]
        if missing:
            raise GuestNotBuilt(
                f"The lab VM's guest is not built ({', '.join(missing)} missing in {root}). "
                f"Build it once with `{BUILD_COMMANDS[built_for]}` (about 10 minutes)."
            )
        return guest


def per_vm_files(user_key: KeyPair, host_key: KeyPair) -> list[Entry]:
    """The files that make one VM someone's: who may log in, and who it is."""
    return [
        Entry("root", 0o700),
        Entry("root/.ssh", 0o700),
        Entry("root/.ssh/authorized_keys", 0o600, (user_key.public_line + "\n").encode()),
        Entry("etc", 0o755),
        Entry("etc/dropbear", 0o700),
        Entry("etc/dropbear/dropbear_ed25519_host_key", 0o600, host_key.dropbear_private),
    ]


def write_vm_initrd(guest: Guest, dest: Path, user_key: KeyPair, host_key: KeyPair) -> None:
    """Write the shared initramfs followed by this VM's own archive to ``dest``.

    The kernel unpacks both in order, so the second one's files land in the
    same root filesystem.
    """
    base = guest.initramfs.read_bytes()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(base)
        f.write(gzip_archive(per_vm_files(user_key, host_key)))

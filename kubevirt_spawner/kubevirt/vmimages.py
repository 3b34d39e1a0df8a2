"""The catalogue of VM images a hub offers, and the checked choice of one.

An entry of ``KubeVirtSpawner.vm_images`` names a containerDisk per
architecture and where the notebook image keeps that kernel's symbols::

    "openeuler-22.03": {
        "containerdisk": {"x86_64": "registry.example.edu/lab/openeuler:22.03",
                          "aarch64": "registry.example.edu/lab/openeuler:22.03"},
        "vmlinux": "/opt/lab/kernels/openeuler-22.03/{arch}/vmlinux",
        "kdir": "/opt/lab/kernels/openeuler-22.03/{arch}/build",
    }

``{arch}`` in the paths expands to ``x86_64`` or ``aarch64``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

ARCHES = ("x86_64", "aarch64")


# The catalogue a hub has without configuring one: Debian's published
# containerDisk and the notebook image's kernel trees (images/notebook).
DEFAULT_VM_IMAGES = {
    "debian-12": {
        "containerdisk": {
            "x86_64": "quay.io/containerdisks/debian:12",
            "aarch64": "quay.io/containerdisks/debian:12",
        },
        "vmlinux": "/opt/lab/kernels/debian-12/{arch}/vmlinux",
        "kdir": "/opt/lab/kernels/debian-12/{arch}/build",
    },
}


class VMChoiceError(ValueError):
    """A VM image or architecture the hub does not offer; the message is for the user."""


@dataclass(frozen=True)
class VMImage:
    name: str
    arch: str
    containerdisk: str
    vmlinux: str
    kdir: str


def check_catalogue(images: Mapping) -> None:
    """Raise ValueError naming the first malformed entry (for a traitlets validator)."""
    for name, entry in images.items():
        if not isinstance(entry, Mapping):
            raise ValueError(f"vm_images[{name!r}] must be a dict")
        disks = entry.get("containerdisk")
        if not isinstance(disks, Mapping) or not disks:
            raise ValueError(f"vm_images[{name!r}] needs containerdisk: {{arch: image}}")
        for arch, image in disks.items():
            if arch not in ARCHES:
                raise ValueError(f"vm_images[{name!r}]: unknown arch {arch!r}; use {ARCHES}")
            if not isinstance(image, str) or not image:
                raise ValueError(f"vm_images[{name!r}].containerdisk[{arch!r}] must be an image")
        for key in ("vmlinux", "kdir"):
            if not isinstance(entry.get(key, ""), str):
                raise ValueError(f"vm_images[{name!r}].{key} must be a path string")


def choose_vm_image(images: Mapping, name: str, arch: str) -> VMImage:
    """The catalogue entry ``name`` for ``arch``; VMChoiceError if not offered."""
    if arch not in ARCHES:
        raise VMChoiceError(
            f"Unknown VM architecture {arch!r}; this hub offers {', '.join(ARCHES)}."
        )
    if name not in images:
        offered = ", ".join(sorted(images)) or "none"
        raise VMChoiceError(f"Unknown VM image {name!r}; this hub offers: {offered}.")
    entry = images[name]
    disks = entry["containerdisk"]
    if arch not in disks:
        raise VMChoiceError(
            f"VM image {name!r} is not available for {arch}; it is for {', '.join(sorted(disks))}."
        )
    return VMImage(
        name=name,
        arch=arch,
        containerdisk=disks[arch],
        vmlinux=entry.get("vmlinux", "").format(arch=arch),
        kdir=entry.get("kdir", "").format(arch=arch),
    )

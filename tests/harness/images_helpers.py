"""Helpers for the image tests: the images `images/build.sh` made (listed in
its current.json), run through buildah with chroot isolation, and a KubeVirt
style NoCloud seed made from the Secret KubeVirtSpawner writes."""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

import yaml

from kubevirt_spawner.local.guest import cache_dir

REPO = Path(__file__).resolve().parents[2]
BUILD_COMMAND = "make images"

HELLO_C = r"""
#include <linux/module.h>
#include <linux/init.h>
static int __init hello_init(void) { pr_info("hello-image: loaded\n"); return 0; }
static void __exit hello_exit(void) { pr_info("hello-image: bye\n"); }
module_init(hello_init);
module_exit(hello_exit);
MODULE_LICENSE("GPL");
"""


def write_hello_module(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "hello.c").write_text(HELLO_C)
    (dest / "Makefile").write_text("obj-m += hello.o\n")
    return dest


def index() -> dict:
    """What images/build.sh last built (its current.json); a missing build is
    a set-up error with the command that fixes it, not a skip."""
    path = cache_dir() / "images" / "current.json"
    if not path.is_file():
        raise RuntimeError(f"{path} missing: the images are not built; run `{BUILD_COMMAND}`")
    return json.loads(path.read_text())


def values_vm_image(name: str, arch: str = "x86_64") -> dict[str, str]:
    """vmlinux and kdir for one vm_images entry of hub-config/values.yaml."""
    values = yaml.safe_load((REPO / "hub-config" / "values.yaml").read_text())
    entry = values["hub"]["config"]["KubeVirtSpawner"]["vm_images"][name]
    return {k: entry[k].format(arch=arch) for k in ("vmlinux", "kdir")}


class Buildah:
    """buildah on the storage images/build.sh uses."""

    def __init__(self, idx: dict):
        s = idx["storage"]
        self.base = [
            "buildah",
            "--root",
            s["root"],
            "--runroot",
            s["runroot"],
            "--storage-driver",
            s["driver"],
        ]

    def __call__(self, *args: str, check: bool = True, timeout: float = 600):
        proc = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"buildah {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
        return proc

    def image_exists(self, image: str) -> bool:
        return self("inspect", "--type", "image", image, check=False).returncode == 0

    def image_config(self, image: str) -> dict:
        return json.loads(self("inspect", "--type", "image", image).stdout)

    @contextlib.contextmanager
    def container(self, image: str):
        if not self.image_exists(image):
            raise RuntimeError(f"image {image} is not built; run `{BUILD_COMMAND}`")
        name = self("from", "--pull-never", image).stdout.strip().splitlines()[-1]
        try:
            yield Container(self, name)
        finally:
            self("rm", name, check=False)


class Container:
    def __init__(self, bh: Buildah, name: str):
        self.bh, self.name = bh, name

    def run(
        self,
        *argv: str,
        user: str | None = None,
        volumes: tuple[str, ...] = (),
        check: bool = True,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess:
        """Run argv inside the image's root filesystem (chroot isolation)."""
        opts = ["--isolation", "chroot"]
        if user:
            opts += ["--user", user]
        for v in volumes:
            opts += ["--volume", v]
        proc = self.bh("run", *opts, self.name, "--", *argv, check=False, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} failed in the image (exit {proc.returncode}):\n"
                f"{proc.stdout}{proc.stderr}"
            )
        return proc

    @contextlib.contextmanager
    def mounted(self):
        path = Path(self.bh("mount", self.name).stdout.strip())
        try:
            yield path
        finally:
            self.bh("umount", self.name, check=False)


def kubevirt_seed_files(secret: dict, vm: dict) -> dict[str, str]:
    """The NoCloud files KubeVirt makes for ``vm``'s cloudInitNoCloud volume
    from ``secret`` (the object KubeVirtSpawner creates): user-data from the
    secretRef's ``userdata`` key, network-config from networkDataSecretRef's
    ``networkdata``, and meta-data with KubeVirt's instance-id and hostname.

    ref: https://kubevirt.io/user-guide/user_workloads/startup_scripts/#cloud-init-nocloud-secret
    """
    spec = vm["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if "cloudInitNoCloud" in v]
    nocloud = volume["cloudInitNoCloud"]
    name, namespace = vm["metadata"]["name"], vm["metadata"]["namespace"]
    assert nocloud["secretRef"]["name"] == secret["metadata"]["name"]
    assert nocloud["networkDataSecretRef"]["name"] == secret["metadata"]["name"]
    data = secret["stringData"]
    return {
        "user-data": data["userdata"],
        "network-config": data["networkdata"],
        "meta-data": f"instance-id: {name}.{namespace}\nlocal-hostname: {name}\n",
    }


def make_seed_iso(files: dict[str, str], dest: Path) -> Path:
    """An ISO9660 NoCloud seed labelled ``cidata``, made as KubeVirt makes its
    cloud-init disk (genisoimage -volid cidata -joliet -rock)."""
    src = dest.parent / (dest.name + ".d")
    src.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (src / name).write_text(text)
    subprocess.run(
        [
            "genisoimage",
            "-quiet",
            "-output",
            str(dest),
            "-volid",
            "cidata",
            "-joliet",
            "-rock",
            *sorted(files),
        ],
        cwd=src,
        check=True,
    )
    return dest

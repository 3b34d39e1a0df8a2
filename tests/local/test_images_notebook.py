"""The notebook ("gdb client") image built by images/build.sh, run through
buildah with chroot isolation: labvm, gdb with the VM kernel's symbols, and
a module built against the kernel tree at the path hub-config names."""

import os
import re
import subprocess

import pytest
from harness.images_helpers import Buildah, index, values_vm_image, write_hello_module

pytestmark = pytest.mark.local


@pytest.fixture(scope="module")
def built():
    return index()


@pytest.fixture(scope="module")
def nb(built):
    bh = Buildah(built)
    with bh.container(built["notebook"]) as c:
        yield c


def test_runs_as_jovyan_with_jupyterhub_singleuser(built, nb):
    cfg = Buildah(built).image_config(built["notebook"])["OCIv1"]["config"]
    assert cfg["User"] == "1000"
    assert cfg["Cmd"] == ["jupyterhub-singleuser"]
    out = nb.run("sh", "-c", "id -u; id -g; echo $HOME", user="1000:100").stdout.split()
    assert out[:2] == ["1000", "100"], out
    # The same JupyterHub major version as the hub image (z2jh 4.x: 5).
    assert re.match(r"5\.", nb.run("jupyterhub-singleuser", "--version").stdout.strip())
    assert re.match(r"4\.", nb.run("jupyter-lab", "--version", user="1000:100").stdout)


def test_labvm_help_and_no_vm_message(nb):
    out = nb.run("labvm", "--help", user="1000:100").stdout
    for cmd in ("status", "ssh", "gdb", "insmod", "boot-kernel", "reset"):
        assert cmd in out, out
    # Without LAB_* (a no-VM profile) it says so in one line and fails.
    res = nb.run("labvm", "status", user="1000:100", check=False)
    assert res.returncode != 0
    assert "has no VM" in res.stdout + res.stderr


def test_student_tools_are_there(nb):
    for argv in (
        ["strace", "-V"],
        ["ssh", "-V"],
        ["socat", "-V"],
        ["gcc", "--version"],
        ["make", "--version"],
        ["qemu-system-x86_64", "--version"],
        ["gdb-multiarch", "--version"],
        ["/bin/busybox", "true"],
    ):
        nb.run(*argv, user="1000:100")


def test_cross_compiles_static_programs_for_aarch64_vms(nb, tmp_path):
    """What checks.compile_program runs for LAB_ARCH=aarch64, inside the image."""
    (tmp_path / "hi.c").write_text('#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n')
    os.chmod(tmp_path, 0o777)
    nb.run(
        "aarch64-linux-gnu-gcc",
        "-static",
        "-O1",
        "-o",
        "/work/hi",
        "/work/hi.c",
        user="1000:100",
        volumes=(f"{tmp_path}:/work",),
    )
    elf = (tmp_path / "hi").read_bytes()[:20]
    assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == 183  # EM_AARCH64


def test_gdb_loads_the_vm_kernel_symbols_and_scripts(built, nb):
    paths = values_vm_image("debian-12")
    kdir = paths["kdir"]
    out = nb.run(
        "gdb",
        "-batch",
        "-nx",
        "-iex",
        f"add-auto-load-safe-path {kdir}",
        "-ex",
        f"file {paths['vmlinux']}",
        "-ex",
        "info line __x64_sys_newuname",
        "-ex",
        "ptype struct list_head",
        "-ex",
        "help lx-dmesg",
        user="1000:100",
    ).stdout
    assert re.search(r'Line \d+ of "kernel/sys\.c"', out), out
    assert "struct list_head *next" in out, out
    assert "Print Linux kernel log buffer" in out, out  # vmlinux-gdb.py was loaded
    release = nb.run("cat", f"{kdir}/kernelrelease").stdout.strip()
    assert release == built["vm_kernel"]["release"]


def test_module_builds_against_the_baked_kdir(built, nb, tmp_path):
    kdir = values_vm_image("debian-12")["kdir"]
    src = write_hello_module(tmp_path / "hello")
    os.chmod(src, 0o777)
    nb.run(
        "make",
        "-C",
        kdir,
        "M=/home/jovyan/hello",
        "modules",
        user="1000:100",
        volumes=(f"{src}:/home/jovyan/hello",),
    )
    ko = src / "hello.ko"
    assert ko.is_file()
    vermagic = subprocess.run(
        ["modinfo", "-F", "vermagic", str(ko)], capture_output=True, text=True, check=True
    ).stdout
    # The VM disk's kernel will take it: same release, same SMP/unload flags.
    assert vermagic.split()[0] == built["vm_kernel"]["release"], vermagic

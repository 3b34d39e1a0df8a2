"""An aarch64 student, for real (TCG): spawn through the hub's REST API with
the aarch64 profile, then from a JupyterLab terminal ssh in, cross-build and
load a module, and break on a syscall with gdb-multiarch; then the
instructor notebooks of labs 0-3 and 5-6 pass on an arm64 VM.

Needs the arm64 guest (`make guest-aarch64`; $KVS_GUEST_DIR_AARCH64
overrides where it is): a missing one fails with that command, not a skip.
"""

from __future__ import annotations

import base64
import os
import platform
import re
import subprocess
import time

import pytest
from harness.hubctl import running_hub
from harness.localhelpers import assert_nothing_left
from harness.notebook_helpers import (
    NOTEBOOKS,
    errors_outside_grade_cells,
    execute,
    grade_cells,
    kernel_environ,
)

from kubevirt_spawner.arch import toolchain_env
from kubevirt_spawner.lab import LabError, LabVM
from kubevirt_spawner.local.guest import Guest, default_guest_dir
from kubevirt_spawner.local.standalone import boot_lab_vm

pytestmark = pytest.mark.local

USER = "kvst-arm"
LABS = ["lab0", "lab1", "lab2", "lab3", "lab5", "lab6"]

MODULE_C = r"""
#include <linux/module.h>
#include <linux/init.h>
static int __init armhello_init(void) { pr_info("armhello: up on arm64\n"); return 0; }
static void __exit armhello_exit(void) { pr_info("armhello: down\n"); }
module_init(armhello_init);
module_exit(armhello_exit);
MODULE_LICENSE("GPL");
"""


@pytest.fixture(scope="module")
def arm_guest() -> Guest:
    return Guest.find(
        os.environ.get("KVS_GUEST_DIR_AARCH64", default_guest_dir("aarch64")), "aarch64"
    )


@pytest.fixture(scope="module")
def arm_hub(tmp_path_factory, arm_guest):
    profiles = f"""
c.LocalVMSpawner.profile_list = [
    {{"display_name": "Kernel labs", "slug": "kernel", "default": True}},
    {{"display_name": "Kernel labs, aarch64", "slug": "kernel-aarch64",
      "spawner_override": {{"vm_arch": "aarch64", "guest_dir": {str(arm_guest.root)!r}}}}},
    {{"display_name": "Bad arch", "slug": "bad-arch",
      "spawner_override": {{"vm_arch": "arm64"}}}},
]
"""
    with running_hub(tmp_path_factory.mktemp("armhub"), profiles) as h:
        yield h


@pytest.fixture(scope="module")
def arm_user(arm_hub):
    t0 = time.monotonic()
    events = arm_hub.spawn(USER, {"profile": "kernel-aarch64"}, timeout=300)
    assert events[-1].get("ready"), f"aarch64 spawn did not finish: {events}\n{arm_hub.log_tail()}"
    messages = " | ".join(e.get("message", "") for e in events)
    for step in ("Profile: Kernel labs, aarch64", "TCG", "Kernel up", "ssh ready", "gdb stub"):
        assert step in messages, f"no {step!r} step in {messages}"
    print(f"aarch64 spawn-to-ready: {time.monotonic() - t0:.1f}s")
    return USER


async def test_terminal_has_arm64_vm_and_cross_toolchain(arm_hub, arm_user, arm_guest):
    term = await arm_hub.terminal(arm_user)
    try:
        env = await term.run("env | grep -E '^(LAB_ARCH|LAB_VMLINUX|ARCH|CROSS_COMPILE)=' | sort")
        assert "LAB_ARCH=aarch64" in env, env
        assert f"LAB_VMLINUX={arm_guest.vmlinux}" in env, env
        if platform.machine() != "aarch64":
            assert "ARCH=arm64" in env and "CROSS_COMPILE=aarch64-linux-gnu-" in env, env
        assert (await term.run("labvm ssh uname -m")).strip().endswith("aarch64")
        assert arm_guest.kernel_release in await term.run("labvm ssh uname -r")
        # strace, kmod and kexec are arm64 binaries that run in the guest.
        out = await term.run("labvm ssh 'strace -e trace=uname uname -m 2>&1; kexec --version'")
        assert "uname({sysname=" in out and "kexec-tools" in out, out
    finally:
        term.close()


async def test_cross_built_module_loads_in_the_arm64_vm(arm_hub, arm_user):
    term = await arm_hub.terminal(arm_user)
    try:
        await term.run("rm -rf ~/armhello && mkdir ~/armhello && cd ~/armhello")
        source = base64.b64encode(MODULE_C.encode()).decode()
        await term.run(f"echo {source} | base64 -d > armhello.c")
        await term.run("echo 'obj-m := armhello.o' > Kbuild")
        # Unchanged student command: ARCH and CROSS_COMPILE come from the environment.
        out = await term.run("make -s -C $LAB_KDIR M=$PWD modules 2>&1; echo rc=$?", timeout=300)
        assert "rc=0" in out, out
        assert "ARM aarch64" in await term.run("file armhello.ko")
        out = await term.run("labvm insmod armhello.ko 2>&1; labvm dmesg | grep armhello")
        assert "armhello: up on arm64" in out, out
        assert "armhello" in await term.run("labvm ssh lsmod")
        await term.run("labvm ssh rmmod armhello")
    finally:
        term.close()


async def test_gdb_multiarch_breaks_on_an_arm64_syscall(arm_hub, arm_user):
    term = await arm_hub.terminal(arm_user)
    try:
        out = await term.run(
            "(for i in $(seq 30); do sleep 1; labvm ssh uname -n >/dev/null; done) & "
            "labvm gdb -batch -ex 'break __arm64_sys_newuname' -ex continue -ex bt "
            "-ex 'p/x $pc' -ex detach; kill %1 2>/dev/null; wait",
            timeout=240,
        )
        assert re.search(r"Breakpoint 1, __arm64_sys_newuname", out), out
        assert re.search(r"#\d+ .*(invoke_syscall|el0_svc)", out), (
            f"no backtrace through the arm64 syscall entry:\n{out}"
        )
        assert re.search(r"\$1 = 0xffff[0-9a-f]+", out), out  # a kernel address in pc
        assert "detached" in out, out
        assert "labvm" in await term.run("labvm ssh uname -n")
    finally:
        term.close()


def test_unknown_arch_in_a_profile_fails_in_one_line(arm_hub):
    events = arm_hub.spawn("kvst-badarch", {"profile": "bad-arch"}, timeout=120)
    assert events[-1].get("failed"), events
    message = events[-1]["message"]
    assert "unsupported arch 'arm64'; choose one of: aarch64, x86_64" in message, message
    assert "\n" not in message.strip(), message
    assert_nothing_left(arm_hub, "kvst-badarch")


def test_stop_leaves_nothing(arm_hub, arm_user):
    arm_hub.stop_server(arm_user)
    assert_nothing_left(arm_hub, arm_user)


# -- lab notebooks on an arm64 VM (booted directly, like test_notebooks.py) --


@pytest.fixture(scope="module")
def arm_vm(arm_guest, tmp_path_factory):
    vm = boot_lab_vm(arm_guest.root, rundir=tmp_path_factory.mktemp("armvm"), timeout=180)
    yield vm
    vm.stop()


@pytest.fixture(scope="module")
def arm_kenv(arm_vm):
    lab_env = arm_vm.env.to_environ()
    env = kernel_environ(lab_env)
    env.update(toolchain_env(lab_env["LAB_ARCH"], platform.machine()))
    return env


@pytest.mark.parametrize("lab", LABS)
def test_instructor_notebook_passes_on_aarch64(lab, arm_vm, arm_kenv, tmp_path):
    t0 = time.monotonic()
    nb = execute(NOTEBOOKS / "source" / lab / f"{lab}.ipynb", tmp_path, arm_kenv)
    print(f"{lab} on aarch64: executed in {time.monotonic() - t0:.1f}s")
    cells = grade_cells(nb)
    assert cells, f"{lab} has no grade cells"
    failed = [f"{c.grade_id}: {c.error}" for c in cells if not c.passed]
    assert failed == [], f"{lab} on aarch64: checks failed with the solutions in place"
    assert errors_outside_grade_cells(nb) == []
    assert arm_vm.alive(), f"QEMU died after {lab}:\n{arm_vm.console_tail()}"
    assert "Kernel panic" not in arm_vm.console_tail(200), f"kernel panicked in {lab}"
    oops = LabVM(arm_vm.env).run("dmesg | grep -E 'BUG:|Oops|WARNING:' || true").stdout.strip()
    assert not oops, f"kernel complained during {lab}: {oops}"


def test_reset_and_kexec_into_an_arm64_image(arm_vm, arm_guest, tmp_path):
    """`labvm reset` (QMP system_reset) and `labvm boot-kernel` (kexec) on arm64."""
    vm = LabVM(arm_vm.env)
    vm.run("touch /root/before-reset")
    vm.reset()
    assert "before-reset" not in vm.run("ls /root").stdout, "reset kept the old root filesystem"

    def boots() -> int:
        return arm_vm.rundir.console_log.read_text(errors="replace").count("labvm: init started")

    before = boots()
    assert vm.boot_kernel(arm_guest.kernel) == arm_guest.kernel_release
    assert boots() == before + 1, f"no second boot on the console:\n{arm_vm.console_tail()}"
    junk = tmp_path / "Image"
    junk.write_bytes(b"\0" * 4096)
    with pytest.raises(LabError, match="not a bootable arm64 kernel"):
        vm.boot_kernel(junk)
    assert vm.run("uname -m").stdout.strip() == "aarch64"


def test_compile_program_cross_compiles_static_for_aarch64(monkeypatch, tmp_path):
    from kubevirt_spawner.checks import compile_program

    src = tmp_path / "hi.c"
    src.write_text('#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n')
    monkeypatch.setenv("LAB_ARCH", "aarch64")
    out = compile_program(src)
    header = out.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    assert int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    segments = subprocess.run(
        ["aarch64-linux-gnu-readelf", "-l", str(out)], capture_output=True, text=True, check=True
    ).stdout
    assert "INTERP" not in segments, f"not static (it names a program interpreter):\n{segments}"

"""`labvm reset` (QMP system_reset) and `labvm boot-kernel` (kexec) on a real
VM: each gives a freshly booted kernel with a fresh root filesystem, and
reset brings back the course kernel after a student's one."""

import pytest

from kubevirt_spawner.lab import LabVM
from kubevirt_spawner.local.standalone import boot_lab_vm

pytestmark = pytest.mark.local


@pytest.fixture
def vm(guest):
    v = boot_lab_vm(guest.root)
    yield v
    v.stop()


def boot_id(lab) -> str:
    """A random id the kernel makes at each boot (uptime comparisons are racy:
    a fresh VM may be younger than the kernel it kexecs into)."""
    return lab.run("cat /proc/sys/kernel/random/boot_id").stdout.strip()


def boots(v) -> int:
    return v.rundir.console_log.read_text(errors="replace").count("labvm: init started")


def test_reset_gives_a_fresh_vm(vm):
    lab = LabVM(vm.env)
    lab.run("touch /root/scratch")
    before = boot_id(lab)
    lab.reset()
    assert boot_id(lab) != before
    assert "scratch" not in lab.run("ls /root").stdout
    assert boots(vm) == 2


def test_boot_kernel_kexecs_then_reset_restores(vm, guest, tmp_path):
    lab = LabVM(vm.env)
    before = boot_id(lab)
    # The student's kernel: here the course's own bzImage, copied, so the
    # release is known; kexec must still boot it afresh.
    mine = tmp_path / "bzImage"
    mine.write_bytes(guest.kernel.read_bytes())
    assert lab.boot_kernel(mine) == guest.kernel_release
    assert boot_id(lab) not in ("", before)
    assert boots(vm) == 2
    assert "Linux version" in lab.dmesg()
    lab.reset()
    assert lab.run("uname -r").stdout.strip() == guest.kernel_release
    assert boots(vm) == 3

"""Labs 4 (add a system call) and 8 (trim a kernel) against a real lab VM,
through nbgrader's round trip as in test_notebooks.py: they rebuild kernels,
so they live apart.

Lab 4 really rebuilds the course kernel with the student's system call in a
``labvm kernel-tree`` farm, kexecs the VM into it, calls syscall 451 and
resets back. Lab 8 really configures and builds a tinyconfig kernel, makes a
busybox initramfs and boots it in QEMU with the edu device. The solutions
(``bob``) score full marks with no error in any cell; the untouched release
(``alice``) only the free point, every other check saying why in one line.

The kernel trees are shared by both submissions (as a student's ~/linux
would be between two runs of the notebook).
"""

from __future__ import annotations

import re
import time

import pytest
from harness.notebook_helpers import Course, assert_vm_usable, kernel_environ, round_trip_lab

from kubevirt_spawner.lab import LabVM

pytestmark = pytest.mark.local

KERNEL_LABS = ["lab4", "lab8"]


@pytest.fixture(scope="module")
def course(lab_vm, tmp_path_factory):
    trees = tmp_path_factory.mktemp("trees")
    env = {
        **kernel_environ(lab_vm.env.to_environ()),
        "LAB4_TREE": str(trees / "linux"),
        "LAB8_TREE": str(trees / "linux-tiny"),
    }
    return Course.make(tmp_path_factory.mktemp("nbgrader"), KERNEL_LABS, env)


def course_version(guest) -> str:
    text = (guest.root / "kdir/include/generated/utsversion.h").read_text()
    return re.search(r'UTS_VERSION "([^"]*)"', text).group(1)


@pytest.mark.parametrize("lab", KERNEL_LABS)
def test_kernel_lab_round_trip(lab, course, lab_vm, guest):
    t0 = time.monotonic()
    problems, bob_nb = round_trip_lab(course, lab)
    print(f"{lab}: round trip in {time.monotonic() - t0:.0f}s")
    assert problems == [], "\n".join(problems)
    assert_vm_usable(lab_vm, f"autograding {lab}")
    if lab == "lab4":
        patch = "".join(o.get("text", "") for o in bob_nb.cells[-1].outputs)
        assert "+++ b/kernel/lab_whoami.c" in patch and "+obj-y += lab_whoami.o" in patch
    # Whoever was graded last, the VM can be put back on the course kernel.
    LabVM(lab_vm.env).reset()
    assert LabVM(lab_vm.env).run("uname -v").stdout.strip() == course_version(guest)

"""Labs 4 (add a system call) and 8 (trim a kernel) against a real lab VM:
they rebuild kernels, so they live apart from test_notebooks.py.

Lab 4 really rebuilds the course kernel with the student's system call in a
``labvm kernel-tree`` farm, kexecs the VM into it, calls syscall 451 and
resets back. Lab 8 really configures and builds a tinyconfig kernel, makes a
busybox initramfs and boots it in QEMU with the edu device. The nbgrader
round trip then grades both: the solutions score full marks; the untouched
release scores only the free point and every other check says why in one line.

The kernel trees are shared by the module's tests (as a student's ~/linux
would be between two runs of the notebook), so the round trip's rebuilds
are incremental.
"""

from __future__ import annotations

import re
import time

import pytest
from notebook_helpers import (
    NOTEBOOKS,
    assert_vm_usable,
    errors_outside_grade_cells,
    execute,
    grade_cells,
    kernel_environ,
    nbgrader_round_trip,
)

pytestmark = pytest.mark.local

KERNEL_LABS = ["lab4", "lab8"]


@pytest.fixture(scope="module")
def kenv(lab_vm, tmp_path_factory):
    trees = tmp_path_factory.mktemp("trees")
    return {**kernel_environ(lab_vm.env.to_environ()),
            "LAB4_TREE": str(trees / "linux"), "LAB8_TREE": str(trees / "linux-tiny")}  # fmt: skip


def course_version(guest) -> str:
    text = (guest.root / "kdir/include/generated/utsversion.h").read_text()
    return re.search(r'UTS_VERSION "([^"]*)"', text).group(1)


@pytest.mark.parametrize("lab", KERNEL_LABS)
def test_instructor_notebook_passes_every_check(lab, lab_vm, kenv, guest, tmp_path):
    t0 = time.monotonic()
    nb = execute(NOTEBOOKS / "source" / lab / f"{lab}.ipynb", tmp_path, kenv, timeout=1200)
    print(f"{lab}: executed in {time.monotonic() - t0:.1f}s")
    cells = grade_cells(nb)
    failed = [f"{c.grade_id}: {c.error}" for c in cells if not c.passed]
    assert failed == [], f"{lab}: checks failed with the solutions in place"
    assert errors_outside_grade_cells(nb) == []
    assert_vm_usable(lab_vm, lab)
    # Lab 4 ends on the course kernel (its last check resets the VM).
    assert lab_vm.vm.run("uname -v").stdout.strip() == course_version(guest)
    if lab == "lab4":
        patch = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
        assert "+++ b/kernel/lab_whoami.c" in patch and "+obj-y += lab_whoami.o" in patch


def test_nbgrader_round_trip_kernel_labs(lab_vm, kenv, guest, tmp_path):
    """The same round trip as test_notebooks.py's: bob's solutions get full
    marks, alice's untouched release only the free point, in CheckFailed lines."""
    t0 = time.monotonic()
    problems = nbgrader_round_trip(
        tmp_path, KERNEL_LABS, kenv,
        after_lab=lambda lab: assert_vm_usable(lab_vm, f"autograding {lab}"),
    )  # fmt: skip
    print(f"round trip of labs 4 and 8: {time.monotonic() - t0:.0f}s")
    assert problems == [], "\n".join(problems)
    # Whoever was graded last, the VM can be put back on the course kernel.
    lab_vm.vm.reset()
    assert lab_vm.vm.run("uname -v").stdout.strip() == course_version(guest)

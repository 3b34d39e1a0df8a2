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
import shutil
import time

import nbformat
import pytest
from notebook_helpers import (
    NOTEBOOKS,
    Course,
    errors_outside_grade_cells,
    execute,
    grade_cells,
    is_free,
    kernel_environ,
    solve,
)
from test_notebooks import assert_vm_usable

from kubevirt_spawner.standalone import boot_lab_vm

pytestmark = pytest.mark.local

KERNEL_LABS = ["lab4", "lab8"]


@pytest.fixture(scope="module")
def lab_vm(guest, tmp_path_factory):
    vm = boot_lab_vm(guest.root, rundir=tmp_path_factory.mktemp("vm"))
    yield vm
    vm.stop()


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
    course = Course.make(tmp_path, KERNEL_LABS, kenv)
    for lab in KERNEL_LABS:
        course.run(["generate_assignment", lab, "--force"])
        course.run(["release_assignment", lab, "--force"])
    for student in ("alice", "bob"):
        home = course.student_dir(student)
        for lab in KERNEL_LABS:
            course.run(["fetch_assignment", lab], user=student, cwd=home)
            if student == "bob":
                nb_path = home / lab / f"{lab}.ipynb"
                source = nbformat.read(NOTEBOOKS / "source" / lab / f"{lab}.ipynb", 4)
                nbformat.write(solve(nbformat.read(nb_path, 4), source), nb_path)
            course.run(["submit", lab, f"--student={student}"], user=student, cwd=home)
    problems = []
    for lab in KERNEL_LABS:
        course.run(["collect", lab])
        t0 = time.monotonic()
        course.run(["autograde", lab, "--force"])
        print(f"{lab}: autograded two submissions in {time.monotonic() - t0:.0f}s")
        max_scores = course.max_scores(lab)
        bob = course.scores(lab, "bob")
        if bob != max_scores:
            problems.append(f"{lab}: bob (solutions) scored {bob}, expected {max_scores}")
        released = nbformat.read(course.root / "release" / lab / f"{lab}.ipynb", 4)
        free = {c.grade_id: c.points for c in grade_cells(released) if is_free(c)}
        assert free, f"{lab} has no free point"
        expected_alice = {gid: float(free.get(gid, 0)) for gid in max_scores}
        alice = course.scores(lab, "alice")
        if alice != expected_alice:
            problems.append(f"{lab}: alice (untouched) scored {alice}, expected {expected_alice}")
        graded = nbformat.read(course.root / "autograded" / "alice" / lab / f"{lab}.ipynb", 4)
        for cell in grade_cells(graded):
            if not cell.passed:
                print(f"alice {lab}/{cell.grade_id}: {cell.error}")
                if not cell.error.startswith("CheckFailed: "):
                    problems.append(f"{lab}/{cell.grade_id}: untouched release failed without "
                                    f"a CheckFailed message: {cell.error}")  # fmt: skip
        assert_vm_usable(lab_vm, f"autograding {lab}")
    assert problems == [], "\n".join(problems)
    # Whoever was graded last, the VM is back on the course kernel or can be put there.
    lab_vm.vm.reset()
    assert lab_vm.vm.run("uname -v").stdout.strip() == course_version(guest)
    shutil.rmtree(course.root / "autograded", ignore_errors=True)

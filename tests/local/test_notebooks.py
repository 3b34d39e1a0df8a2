"""The lab course against a real lab VM (TCG): instructor notebooks pass every
check; the released student notebooks fail theirs with one-line messages and
leave the VM usable; nbgrader's own round trip grades both correctly.

One VM serves the whole module, booted directly (no hub) with
``kubevirt_spawner.standalone``; the notebooks cannot tell the difference.
Labs 4 and 8 (kernel rebuilds) are in test_notebooks_kernel.py.
"""

from __future__ import annotations

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

from kubevirt_spawner.standalone import boot_lab_vm

pytestmark = pytest.mark.local

KERNEL_LABS = {"lab4", "lab8"}
LABS = [p.name for p in sorted((NOTEBOOKS / "source").iterdir())
        if p.is_dir() and p.name not in KERNEL_LABS]  # fmt: skip


@pytest.fixture(scope="module")
def lab_vm(guest, tmp_path_factory):
    vm = boot_lab_vm(guest.root, rundir=tmp_path_factory.mktemp("vm"))
    yield vm
    vm.stop()


@pytest.fixture(scope="module")
def kenv(lab_vm):
    return kernel_environ(lab_vm.env.to_environ())


def assert_vm_usable(lab_vm, after: str) -> None:
    assert lab_vm.alive(), f"QEMU died after {after}:\n{lab_vm.console_tail()}"
    res = lab_vm.vm.run("cat /proc/uptime", check=False)
    assert res.returncode == 0, f"VM does not answer after {after}:\n{lab_vm.console_tail()}"
    assert "Kernel panic" not in lab_vm.console_tail(200), f"kernel panicked in {after}"
    oops = lab_vm.vm.run("dmesg | grep -E 'BUG:|Oops|WARNING:' || true").stdout.strip()
    assert not oops, f"kernel complained during {after}: {oops}"


@pytest.mark.parametrize("lab", LABS)
def test_instructor_notebook_passes_every_check(lab, lab_vm, kenv, tmp_path):
    t0 = time.monotonic()
    nb = execute(NOTEBOOKS / "source" / lab / f"{lab}.ipynb", tmp_path, kenv)
    print(f"{lab}: executed in {time.monotonic() - t0:.1f}s")
    cells = grade_cells(nb)
    assert cells, f"{lab} has no grade cells"
    failed = [f"{c.grade_id}: {c.error}" for c in cells if not c.passed]
    assert failed == [], f"{lab}: checks failed with the solutions in place"
    assert errors_outside_grade_cells(nb) == []
    assert_vm_usable(lab_vm, lab)


def test_nbgrader_round_trip(lab_vm, kenv, tmp_path):
    """generate -> release -> fetch -> submit -> collect -> autograde, with the real nbgrader.

    alice submits the release untouched; bob submits it with the instructor's
    solutions typed in. bob gets full marks, alice only the free points, and
    every check alice fails says why in one line (CheckFailed), not a traceback.
    """
    course = Course.make(tmp_path, LABS, kenv)
    for lab in LABS:
        course.run(["generate_assignment", lab, "--force"])
        course.run(["release_assignment", lab, "--force"])
    for student in ("alice", "bob"):
        home = course.student_dir(student)
        for lab in LABS:
            course.run(["fetch_assignment", lab], user=student, cwd=home)
            if student == "bob":
                nb_path = home / lab / f"{lab}.ipynb"
                source = nbformat.read(NOTEBOOKS / "source" / lab / f"{lab}.ipynb", 4)
                nbformat.write(solve(nbformat.read(nb_path, 4), source), nb_path)
            course.run(["submit", lab, f"--student={student}"], user=student, cwd=home)
    for lab in LABS:
        course.run(["collect", lab])
        course.run(["autograde", lab, "--force"])

    problems = []
    for lab in LABS:
        max_scores = course.max_scores(lab)
        bob = course.scores(lab, "bob")
        if bob != max_scores:
            problems.append(f"{lab}: bob (solutions) scored {bob}, expected {max_scores}")
        released = nbformat.read(course.root / "release" / lab / f"{lab}.ipynb", 4)
        free = {c.grade_id: c.points for c in grade_cells(released) if is_free(c)}
        expected_alice = {gid: float(free.get(gid, 0)) for gid in max_scores}
        alice = course.scores(lab, "alice")
        if alice != expected_alice:
            problems.append(f"{lab}: alice (untouched) scored {alice}, expected {expected_alice}")
        graded = nbformat.read(course.root / "autograded" / "alice" / lab / f"{lab}.ipynb", 4)
        for cell in grade_cells(graded):
            if not cell.passed and not cell.error.startswith("CheckFailed: "):
                problems.append(f"{lab}/{cell.grade_id}: untouched release failed without a "
                                f"CheckFailed message: {cell.error}")  # fmt: skip
            if not cell.passed:
                print(f"alice {lab}/{cell.grade_id}: {cell.error}")
        assert_vm_usable(lab_vm, f"autograding {lab}")
    assert problems == [], "\n".join(problems)
    shutil.rmtree(course.root / "autograded", ignore_errors=True)

"""The lab course against a real lab VM (TCG): instructor notebooks pass every
check; the released student notebooks fail theirs with one-line messages and
leave the VM usable; nbgrader's own round trip grades both correctly.

One VM serves the whole module, booted directly (no hub) with
``kubevirt_spawner.standalone``; the notebooks cannot tell the difference.
Labs 4 and 8 (kernel rebuilds) are in test_notebooks_kernel.py.
"""

from __future__ import annotations

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

KERNEL_LABS = {"lab4", "lab8"}
LABS = [p.name for p in sorted((NOTEBOOKS / "source").iterdir())
        if p.is_dir() and p.name not in KERNEL_LABS]  # fmt: skip


@pytest.fixture(scope="module")
def kenv(lab_vm):
    return kernel_environ(lab_vm.env.to_environ())


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
    problems = nbgrader_round_trip(
        tmp_path, LABS, kenv, after_lab=lambda lab: assert_vm_usable(lab_vm, f"autograding {lab}")
    )
    assert problems == [], "\n".join(problems)

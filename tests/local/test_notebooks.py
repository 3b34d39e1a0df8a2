"""The lab course against a real lab VM (TCG), through nbgrader's own round
trip, lab by lab: the instructor's solutions, submitted by ``bob``, pass every
check with no error in any cell and get full marks; the untouched release,
submitted by ``alice``, gets only the free points, fails every other check
with a one-line message, and leaves the VM usable.

One VM serves the whole module, booted directly (no hub) with
``kubevirt_spawner.local.standalone``; the notebooks cannot tell the difference.
Labs 4 and 8 (kernel rebuilds) are in test_notebooks_kernel.py.
"""

from __future__ import annotations

import time

import pytest
from harness.notebook_helpers import (
    NOTEBOOKS,
    Course,
    assert_vm_usable,
    kernel_environ,
    round_trip_lab,
)

pytestmark = pytest.mark.local

KERNEL_LABS = {"lab4", "lab8"}
LABS = [
    p.name
    for p in sorted((NOTEBOOKS / "source").iterdir())
    if p.is_dir() and p.name not in KERNEL_LABS
]


@pytest.fixture(scope="module")
def course(lab_vm, tmp_path_factory):
    env = kernel_environ(lab_vm.env.to_environ())
    return Course.make(tmp_path_factory.mktemp("nbgrader"), LABS, env)


@pytest.mark.parametrize("lab", LABS)
def test_lab_round_trip(lab, course, lab_vm):
    t0 = time.monotonic()
    problems, _ = round_trip_lab(course, lab)
    print(f"{lab}: round trip in {time.monotonic() - t0:.1f}s")
    assert problems == [], "\n".join(problems)
    assert_vm_usable(lab_vm, f"autograding {lab}")

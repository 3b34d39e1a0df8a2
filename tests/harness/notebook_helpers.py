"""Run lab notebooks and the nbgrader course the way students and graders do.

Shared by tests/local/test_notebooks*.py and the lab benchmark.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from kubevirt_spawner.lab import LabVM

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
VENV_BIN = Path(sys.executable).parent


def lab_names() -> list[str]:
    return sorted(p.name for p in (NOTEBOOKS / "source").iterdir() if p.is_dir())


def kernel_environ(lab_env: dict[str, str]) -> dict[str, str]:
    """The environment a student's notebook kernel has: the LAB_* variables and labvm on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    env.update(lab_env)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', os.defpath)}"
    return env


@dataclass
class GradeCell:
    grade_id: str
    points: int
    passed: bool
    error: str  # the last traceback line ("" when passed)
    source: str


def execute(nb_path: Path, workdir: Path, env: dict[str, str], timeout: int = 900):
    """Execute a notebook top to bottom in ``workdir`` (errors recorded, not raised)."""
    nb = nbformat.read(nb_path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute(env=env)  # the kernel's environment, as a spawned server would give it
    return nb


def error_text(cell) -> str:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            tb = [line for line in out.get("traceback", []) if line.strip()]
            last = tb[-1] if tb else f"{out.get('ename')}: {out.get('evalue')}"
            return _strip_ansi(last)
    return ""


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def grade_cells(nb) -> list[GradeCell]:
    cells = []
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade") and cell.cell_type == "code":
            err = error_text(cell)
            cells.append(
                GradeCell(meta["grade_id"], meta.get("points", 0), not err, err, cell.source)
            )
    return cells


def errors_outside_grade_cells(nb) -> list[str]:
    out = []
    for cell in nb.cells:
        if cell.cell_type != "code" or cell.metadata.get("nbgrader", {}).get("grade"):
            continue
        err = error_text(cell)
        if err:
            out.append(f"{cell.get('id')}: {err}")
    return out


def is_free(cell: GradeCell) -> bool:
    """A check that passes without any student work (marked "Free point" in its cell)."""
    return cell.source.lstrip().lower().startswith("# free point")


def assert_vm_usable(lab_vm, after: str) -> None:
    assert lab_vm.alive(), f"QEMU died after {after}:\n{lab_vm.console_tail()}"
    res = LabVM(lab_vm.env).run("cat /proc/uptime", check=False)
    assert res.returncode == 0, f"VM does not answer after {after}:\n{lab_vm.console_tail()}"
    assert "Kernel panic" not in lab_vm.console_tail(200), f"kernel panicked in {after}"
    oops = LabVM(lab_vm.env).run("dmesg | grep -E 'BUG:|Oops|WARNING:' || true").stdout.strip()
    assert not oops, f"kernel complained during {after}: {oops}"


# -- nbgrader, through its command line ------------------------------------


def nbgrader(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 3600) -> str:
    proc = subprocess.run(
        [str(VENV_BIN / "nbgrader"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"nbgrader {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc.stdout + proc.stderr


@dataclass
class Course:
    root: Path
    exchange: Path
    env: dict[str, str]

    @classmethod
    def make(cls, base: Path, labs: list[str], env: dict[str, str]) -> Course:
        root, exchange = base / "course", base / "exchange"
        (root / "source").mkdir(parents=True)
        exchange.mkdir(mode=0o777)
        exchange.chmod(0o777)
        shutil.copy(NOTEBOOKS / "nbgrader_config.py", root)
        for lab in labs:
            shutil.copytree(NOTEBOOKS / "source" / lab, root / "source" / lab)
        env = {
            **env,
            "KVS_COURSE_ROOT": str(root),
            "KVS_NBGRADER_EXCHANGE": str(exchange),
            "KVS_COURSE_ID": "os-lab-test",
        }
        return cls(root, exchange, env)

    def run(self, args: list[str], user: str | None = None, cwd: Path | None = None) -> str:
        env = dict(self.env)
        if user:
            # nbgrader's exchange names the student by getpass.getuser(), which reads $USER.
            env.update(USER=user, LOGNAME=user)
        return nbgrader(args, cwd or self.root, env)

    def student_dir(self, user: str) -> Path:
        d = self.root.parent / "home" / user
        if not d.exists():
            d.mkdir(parents=True)
            # The student side needs the course id and exchange; it has no course root.
            (d / "nbgrader_config.py").write_text(
                "c = get_config()  # noqa: F821\n"
                f"c.CourseDirectory.course_id = {self.env['KVS_COURSE_ID']!r}\n"
                f"c.Exchange.root = {str(self.exchange)!r}\n"
            )
        return d

    def scores(self, lab: str, *students: str) -> dict[str, dict[str, float]]:
        """Points per grade cell from the gradebook, after autograde, for each
        of ``students`` (one process: importing nbgrader costs seconds here)."""
        code = (
            "import json, sys\nfrom nbgrader.api import Gradebook\n"
            "with Gradebook(sys.argv[1]) as gb:\n"
            "    subs = {s: gb.find_submission(sys.argv[2], s) for s in sys.argv[3:]}\n"
            "    print(json.dumps({s: {g.name: g.score for nb in sub.notebooks for g in nb.grades}"
            " for s, sub in subs.items()}))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, f"sqlite:///{self.root / 'gradebook.db'}", lab, *students],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return json.loads(out)

    def max_scores(self, lab: str) -> dict[str, float]:
        nb = nbformat.read(self.root / "source" / lab / f"{lab}.ipynb", as_version=4)
        return {
            c.metadata["nbgrader"]["grade_id"]: c.metadata["nbgrader"].get("points", 0)
            for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("grade")
        }


def solve(release_nb, source_nb):
    """The released notebook with every solution cell replaced by the instructor's."""
    solved = copy.deepcopy(release_nb)
    answers = {
        c.metadata["nbgrader"]["grade_id"]: c.source
        for c in source_nb.cells
        if c.metadata.get("nbgrader", {}).get("solution")
    }
    for cell in solved.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if cell.metadata.get("nbgrader", {}).get("solution") and gid in answers:
            cell.source = answers[gid]
    return solved


def round_trip_lab(course: Course, lab: str) -> tuple[list[str], dict]:
    """generate -> release -> fetch -> submit -> collect -> autograde one lab
    with the real nbgrader, for two students: ``alice`` submits the release
    untouched, ``bob`` with the instructor's solutions typed in (the
    instructor's notebook, as formgrader's *Validate* runs it: nothing else
    executes the solutions, so this is also the "solutions pass" check).

    Returns the problems found (empty: bob got full marks with no error in any
    cell, alice exactly the free points, and every check alice failed said why
    in one ``CheckFailed`` line) and bob's autograded notebook.
    """
    course.run(["generate_assignment", lab, "--force"])
    course.run(["release_assignment", lab, "--force"])
    for student in ("alice", "bob"):
        home = course.student_dir(student)
        course.run(["fetch_assignment", lab], user=student, cwd=home)
        if student == "bob":
            nb_path = home / lab / f"{lab}.ipynb"
            source = nbformat.read(NOTEBOOKS / "source" / lab / f"{lab}.ipynb", 4)
            nbformat.write(solve(nbformat.read(nb_path, 4), source), nb_path)
        course.run(["submit", lab, f"--student={student}"], user=student, cwd=home)
    course.run(["collect", lab])
    course.run(["autograde", lab, "--force"])
    problems = []
    max_scores = course.max_scores(lab)
    scores = course.scores(lab, "alice", "bob")
    bob = scores["bob"]
    if bob != max_scores:
        problems.append(f"{lab}: bob (solutions) scored {bob}, expected {max_scores}")
    bob_nb = nbformat.read(course.root / "autograded" / "bob" / lab / f"{lab}.ipynb", 4)
    problems += [f"{lab}: bob (solutions): {e}" for e in errors_outside_grade_cells(bob_nb)]
    released = nbformat.read(course.root / "release" / lab / f"{lab}.ipynb", 4)
    free = {c.grade_id: c.points for c in grade_cells(released) if is_free(c)}
    expected_alice = {gid: float(free.get(gid, 0)) for gid in max_scores}
    alice = scores["alice"]
    if alice != expected_alice:
        problems.append(f"{lab}: alice (untouched) scored {alice}, expected {expected_alice}")
    graded = nbformat.read(course.root / "autograded" / "alice" / lab / f"{lab}.ipynb", 4)
    for cell in grade_cells(graded):
        if not cell.passed:
            print(f"alice {lab}/{cell.grade_id}: {cell.error}")
            if not cell.error.startswith("CheckFailed: "):
                problems.append(
                    f"{lab}/{cell.grade_id}: untouched release failed without "
                    f"a CheckFailed message: {cell.error}"
                )
    return problems, bob_nb

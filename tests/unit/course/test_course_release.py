"""kubevirt_spawner.course (the course service's release of the labs),
kubevirt_spawner.local.labcopy (labs for hubs without nbgrader) and
kubevirt_spawner.hubchild (services that end with the hub): decisions as
tables, real files, real processes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubevirt_spawner import course, hubchild
from kubevirt_spawner.local import labcopy


@pytest.mark.parametrize(
    ("labs", "auto", "exchange", "generated", "expected"),
    [
        pytest.param(["lab0", "lab1"], [], [], [], ["lab0", "lab1"], id="first-start"),
        pytest.param(
            ["lab0", "lab1"], ["lab0", "lab1"], ["lab0", "lab1"], [], [], id="second-start"
        ),
        pytest.param(["lab0", "lab1"], ["lab0"], [], [], ["lab1"], id="withdrawn-by-instructor"),
        pytest.param(["lab0", "lab1", "lab2"], ["lab0", "lab1"], [], [], ["lab2"], id="new-lab"),
        pytest.param(["lab0"], [], ["lab0"], [], [], id="released-by-instructor"),
        pytest.param(["lab0"], [], [], ["lab0"], [], id="generated-by-instructor"),
    ],
)
def test_plan_release(labs, auto, exchange, generated, expected):
    assert course.plan_release(labs, auto, exchange, generated) == expected


def test_labs_are_the_source_folders_with_a_notebook(tmp_path):
    for lab in ("lab1", "lab0", "empty"):
        (tmp_path / "source" / lab).mkdir(parents=True)
    (tmp_path / "source/lab0/lab0.ipynb").write_text("{}")
    (tmp_path / "source/lab1/lab1.ipynb").write_text("{}")
    assert course.labs_in_source(tmp_path) == ["lab0", "lab1"]
    with pytest.raises(course.CourseError, match="has no source/ folder"):
        course.labs_in_source(tmp_path / "source")


def test_state_file_round_trip_and_bad_state(tmp_path):
    assert course.read_state(tmp_path) == {"released": {}}
    course.write_state(tmp_path, {"released": {"lab0": "2026-12-01T00:00:00Z"}})
    assert course.read_state(tmp_path)["released"] == {"lab0": "2026-12-01T00:00:00Z"}
    (tmp_path / course.STATE_FILE).write_text("{not json")
    with pytest.raises(course.CourseError, match="not valid JSON; fix or remove it"):
        course.read_state(tmp_path)
    (tmp_path / course.STATE_FILE).write_text(json.dumps({"released": []}))
    with pytest.raises(course.CourseError, match="no 'released' object"):
        course.read_state(tmp_path)


def run_module(module: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120, **kw
    )


def test_course_cli_bad_input(tmp_path):
    r = run_module("kubevirt_spawner.course", "release", f"--root={tmp_path}")
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
        f"course: {tmp_path} has no source/ folder: is it an nbgrader course root?"
    ), r.stderr
    r = run_module("kubevirt_spawner.course", "serve", f"--root={tmp_path}")
    assert r.returncode == 2 and "serve needs the server's command after --" in r.stderr
    r = run_module("kubevirt_spawner.course", "frobnicate")
    assert r.returncode == 2 and "invalid choice: 'frobnicate'" in r.stderr
    assert run_module("kubevirt_spawner.course", "--help").returncode == 0
    assert list(tmp_path.iterdir()) == [], "a failed command created files"


def test_serve_serves_even_when_the_release_fails(tmp_path):
    """A broken course root is logged by the release beside the server, and
    the graders' server still starts (here: a stand-in that waits for the
    release process it inherits, then says it serves)."""
    server = [sys.executable, "-c", "import os; os.waitpid(-1, 0); print('serving')"]
    r = run_module("kubevirt_spawner.course", "serve", f"--root={tmp_path}", "--", *server)
    assert r.returncode == 0 and r.stdout.strip() == "serving", r
    assert r.stderr.strip().splitlines()[-1] == (
        f"course: {tmp_path} has no source/ folder: is it an nbgrader course root?"
    )


COURSE = Path(__file__).resolve().parents[3] / "notebooks"


def test_release_with_real_nbgrader_is_idempotent(tmp_path, monkeypatch):
    root, exchange = tmp_path / "course", tmp_path / "exchange"
    (root / "source").mkdir(parents=True)
    exchange.mkdir(mode=0o1777)
    exchange.chmod(0o1777)
    (root / "nbgrader_config.py").write_text((COURSE / "nbgrader_config.py").read_text())
    for lab in ("lab0", "lab1"):
        shutil.copytree(COURSE / "source" / lab, root / "source" / lab)
    env = {**os.environ, "KVS_COURSE_ROOT": str(root), "KVS_NBGRADER_EXCHANGE": str(exchange)}
    outbound = exchange / "os-lab" / "outbound"

    r = run_module("kubevirt_spawner.course", "release", env=env)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in outbound.iterdir()) == ["lab0", "lab1"]
    released = (outbound / "lab0" / "lab0.ipynb").read_text()
    assert "### BEGIN SOLUTION" not in released and "YOUR CODE HERE" in released

    # The instructor edits lab0 and withdraws lab1; a later start changes neither.
    src = root / "source/lab0/lab0.ipynb"
    src.write_text(src.read_text().replace("Lab 0", "Lab 0 (edited)"))
    shutil.rmtree(outbound / "lab1")
    r = run_module("kubevirt_spawner.course", "release", env=env)
    assert r.returncode == 0, r.stderr
    assert "left as they are (released before or handled by the instructor): lab0, lab1" in r.stderr
    assert sorted(p.name for p in outbound.iterdir()) == ["lab0"]
    assert (outbound / "lab0" / "lab0.ipynb").read_text() == released

    # A lab added to the course later goes out at the next start.
    shutil.copytree(COURSE / "source" / "lab2", root / "source" / "lab2")
    r = run_module("kubevirt_spawner.course", "release", env=env)
    assert sorted(p.name for p in outbound.iterdir()) == ["lab0", "lab2"], r.stderr


def test_labcopy_never_overwrites_and_skips_links_and_hidden_files(tmp_path):
    src, home = tmp_path / "release", tmp_path / "home"
    (src / "lab0").mkdir(parents=True)
    (src / "lab1" / ".ipynb_checkpoints").mkdir(parents=True)
    (src / "lab0/lab0.ipynb").write_text("course v1")
    (src / "lab1/lab1.ipynb").write_text("lab1")
    (src / "lab1/.ipynb_checkpoints/x.ipynb").write_text("hidden")
    (src / "lab1/link.ipynb").symlink_to("/etc/shadow")
    labs = home / "labs"
    assert labcopy.copy_missing(src, labs) == [Path("lab0/lab0.ipynb"), Path("lab1/lab1.ipynb")]
    (labs / "lab0/lab0.ipynb").write_text("my work")
    (src / "lab0/lab0.ipynb").write_text("course v2")
    (src / "lab2").mkdir()
    (src / "lab2/lab2.ipynb").write_text("lab2")
    assert labcopy.copy_missing(src, labs) == [Path("lab2/lab2.ipynb")]
    assert (labs / "lab0/lab0.ipynb").read_text() == "my work"
    assert not (labs / "lab1/.ipynb_checkpoints").exists()
    assert not (labs / "lab1/link.ipynb").exists()


def test_labcopy_cli(tmp_path):
    r = run_module(
        "kubevirt_spawner.local.labcopy", str(tmp_path / "missing"), str(tmp_path / "labs")
    )
    assert (
        r.returncode == 1 and r.stderr.strip() == f"labcopy: {tmp_path}/missing is not a directory"
    )
    r = run_module("kubevirt_spawner.local.labcopy", "one-argument")
    assert (
        r.returncode == 2
        and r.stderr.strip() == "python -m kubevirt_spawner.local.labcopy SRC DEST"
    )
    (tmp_path / "src").mkdir()
    (tmp_path / "src/a.ipynb").write_text("a")
    r = run_module("kubevirt_spawner.local.labcopy", str(tmp_path / "src"), str(tmp_path / "labs"))
    assert r.returncode == 0 and r.stdout.startswith("labcopy: 1 new file(s)"), r


def proc_state(pid: int) -> str:
    """The process's state letter, or 'gone' (zombies stay: PID 1 here does not reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_hubchild_ends_with_its_parent_and_reads_no_terminal(tmp_path):
    # A stand-in "hub": a Python process that starts a child through
    # hubchild, says its pid, and waits to be killed.
    hub = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, subprocess, sys, time\n"
            "from kubevirt_spawner import hubchild\n"
            "p = subprocess.Popen(hubchild.command(os.getpid(), ['sleep', '300']), start_new_session=True)\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(300)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(hub.stdout.readline())
    deadline = time.monotonic() + 30
    while "sleep" not in Path(f"/proc/{child}/cmdline").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)  # until hubchild has exec'd sleep
    assert Path(f"/proc/{child}/fd/0").resolve() == Path("/dev/null")
    os.kill(hub.pid, signal.SIGKILL)
    hub.wait()
    while proc_state(child) not in ("Z", "gone") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc_state(child) in ("Z", "gone"), "the child outlived its hub"


def test_hubchild_bad_input():
    r = run_module("kubevirt_spawner.hubchild", f"--parent-pid={os.getpid()}")
    assert r.returncode == 2 and "no command given" in r.stderr
    r = run_module("kubevirt_spawner.hubchild", "--parent-pid=1", "--", "true")
    assert r.returncode == 1 and "the hub (pid 1) is gone; not starting true" in r.stderr
    r = run_module(
        "kubevirt_spawner.hubchild", f"--parent-pid={os.getpid()}", "--", "/nonexistent/cmd"
    )
    assert r.returncode == 1
    assert r.stderr.strip() == "hubchild: cannot run /nonexistent/cmd: No such file or directory"
    assert hubchild.command(7, ["a", "b"])[-4:] == ["--parent-pid=7", "--", "a", "b"]

"""`make demo` where a newcomer runs it: from a clone that other accounts
cannot enter (under a 0700 directory, as /root or `mktemp -d` are), with
students spawning for real; Ctrl-C ends everything, no service waiting out a timeout; and a hub
that fails at start leaves no proxy, lab manager or course service behind.

The clone is a copy of this working tree (tracked and untracked, not ignored
files: what `git clone` of the same commit would hold) in a fixed 0700
directory of the cache, so that its Python environment, which
scripts/install-deps.sh keeps under /var/lib/kubevirt-spawner for a private
clone, is reused by the next run instead of installed again."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from harness.demo_hub import Demo, new_student, processes_mentioning
from harness.hubctl import REPO
from harness.localhelpers import user_processes

from kubevirt_spawner.local.guest import cache_dir

pytestmark = pytest.mark.local

STUDENTS = ("kvsp-pia", "kvsp-quinn")


@pytest.fixture(scope="module")
def private_clone() -> Path:
    parent = cache_dir() / "test-private-clone"
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    parent.chmod(0o700)
    clone = parent / "kubevirt-spawner"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    existing = b"\0".join(f for f in files.split(b"\0") if f and (REPO / os.fsdecode(f)).exists())
    subprocess.run(
        [
            "rsync",
            "-a",
            "--delete",
            "--exclude=/.venv",
            "--exclude=/.demo",
            "--exclude=/build",
            "--exclude=*.egg-info",
            "--from0",
            "--files-from=-",
            f"{REPO}/",
            f"{clone}/",
        ],
        input=existing,
        check=True,
    )
    # nobody (like every student) cannot even look inside
    r = subprocess.run(["runuser", "-u", "nobody", "--", "test", "-r", f"{clone}/setup.cfg"])
    assert r.returncode != 0, "the test clone is readable by other accounts"
    return clone


def left_behind(demo: Demo) -> list[str]:
    """Processes of this demo still alive: the hub, its proxy (by its API
    port), the lab manager and course service (by their state paths and
    ports), the students' servers and VMs, the grading VM."""
    return processes_mentioning(
        str(demo.state),
        str(demo.course_base),
        f"--api-port {demo.env['KVS_DEMO_PROXY_API_PORT']}",
        f"--port={demo.env['KVS_LAB_MANAGER_PORT']}",
    ) + [p for name in STUDENTS for p in user_processes(name)]


def why_ctrl_c_would_wait(pid: str) -> str | None:
    """Why the process would not end on the hub's SIGINT at Ctrl-C (None: it
    will). A Jupyter server whose stdin is the terminal asks "Shutdown this
    Jupyter server (y/[n])?" and keeps running; an inherited ignored SIGINT
    stays ignored; either made the hub wait out every timeout (a minute)."""
    status = Path(f"/proc/{pid}/status").read_text()
    ignored = int(re.search(r"^SigIgn:\s*([0-9a-f]+)", status, re.M).group(1), 16)
    if ignored & (1 << (signal.SIGINT - 1)):
        return "ignores SIGINT"
    stdin = os.readlink(f"/proc/{pid}/fd/0")
    if stdin.startswith(("/dev/pts/", "/dev/tty")):
        return f"reads the terminal {stdin}"
    return None


def student_config_paths(name: str) -> list[str]:
    """JUPYTER_CONFIG_PATH entries of the student's running Jupyter server."""
    pids = subprocess.run(
        ["pgrep", "-u", name, "-f", "jupyterhub.singleuser"], capture_output=True, text=True
    ).stdout.split()
    assert pids, f"no Jupyter server of {name}"
    paths = []
    for pid in pids:
        env = dict(
            v.split("=", 1)
            for v in Path(f"/proc/{pid}/environ").read_text().split("\0")
            if "=" in v
        )
        paths += [p for p in env.get("JUPYTER_CONFIG_PATH", "").split(":") if p]
    assert paths, f"{name}'s server has no JUPYTER_CONFIG_PATH"
    return paths


def test_make_demo_from_a_private_clone_then_ctrl_c(private_clone, tmp_path):
    for name in STUDENTS:
        new_student(name)
    demo = Demo(tmp_path / "state", argv=["make", "demo"], cwd=private_clone)
    demo.state.mkdir()
    try:
        # A first run installs the clone's environment (minutes); later ones reuse it.
        demo.start(wait_for="/hub/login", timeout=1200)
        venv = Path(os.readlink(private_clone / ".venv"))
        assert venv.parent == Path("/var/lib/kubevirt-spawner/venvs"), venv
        login_page = demo.login(STUDENTS[0]).get(f"{demo.url}/hub/login", timeout=30)
        assert login_page.status_code == 200
        for name in STUDENTS:
            server = demo.spawn(name)
            assert server["ready"], server
        # The students' servers run the environment's Python, as the students.
        for name in STUDENTS:
            servers = [p for p in user_processes(name) if "jupyterhub.singleuser" in p]
            assert servers and all(str(venv) in p for p in servers), servers
        # ... and the student-only Jupyter config they are given is one they can read
        # (found by hand: the hub imported the package from the private clone, so
        # JUPYTER_CONFIG_PATH pointed into it and students got the instructor tools).
        for name in STUDENTS:
            for path in student_config_paths(name):
                page = Path(path) / "labconfig" / "page_config.json"
                r = subprocess.run(["runuser", "-u", name, "--", "test", "-r", str(page)])
                assert r.returncode == 0, f"{name} cannot read {page}"
        assert left_behind(demo), "the check below would be vacuous"
        services = processes_mentioning(
            str(demo.course_base), f"--port={demo.env['KVS_LAB_MANAGER_PORT']}"
        )
        assert services, "no course service or lab manager found"
        waits = {line: why_ctrl_c_would_wait(line.split()[0]) for line in services}
        assert not any(waits.values()), waits
        took = demo.interrupt(timeout=60)
        deadline = time.monotonic() + 5  # processes finish exiting after the hub
        while (left := left_behind(demo)) and time.monotonic() < deadline:
            time.sleep(0.2)
        print(f"\nCtrl-C with {len(STUDENTS)} students: make demo exited in {took:.1f}s")
        assert demo.proc.returncode is not None, "make demo still running after 60 s"
        assert left == [], "left behind after Ctrl-C:\n" + "\n".join(left)
    finally:
        demo.close()


def test_a_hub_that_fails_at_start_leaves_nothing(private_clone, tmp_path):
    """The failure the issue saw: the hub's Python reached through a directory
    the course account cannot enter, so the course service cannot start."""
    venv = Path(os.readlink(private_clone / ".venv"))  # made by the test above
    hidden = private_clone.parent / "python-behind-0700"
    hidden.unlink(missing_ok=True)
    hidden.symlink_to(venv)
    demo = Demo(
        tmp_path / "state",
        cwd=private_clone,
        argv=[
            str(hidden / "bin/python"),
            "-m",
            "jupyterhub",
            "-f",
            str(private_clone / "hub-config/local_config.py"),
        ],
    )
    demo.state.mkdir()
    try:
        with pytest.raises(RuntimeError, match="demo exited 1"):
            demo.start(timeout=180)
        log = demo.log_path.read_text()
        assert "Failed to start service os-lab" in log or "Service os-lab exited" in log, log[
            -3000:
        ]
        deadline = time.monotonic() + 10
        while (left := left_behind(demo)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert left == [], "a failed hub left these running:\n" + "\n".join(left)
    finally:
        demo.close()
        hidden.unlink(missing_ok=True)

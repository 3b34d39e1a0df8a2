"""hub-config/local_config.py (the demo) declares the lab manager: it starts
with the hub, the instructor (an admin) reaches the dashboard through the
hub's login, a student does not, and notebook servers get LAB_MANAGER_URL."""

import subprocess
import sys

import pytest
import requests
from harness.demo_hub import Demo
from harness.hubctl import REPO

pytestmark = pytest.mark.local


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = Demo(tmp_path_factory.mktemp("demo-mgr"))
    try:
        d.start(wait_for="/services/lab-manager/health")
        yield d.url, d.state, int(d.env["KVS_LAB_MANAGER_PORT"]), d.env
    finally:
        d.close()


def session(url, user, password) -> requests.Session:
    s = requests.Session()
    s.get(f"{url}/hub/login", timeout=10)
    r = s.post(
        f"{url}/hub/login",
        timeout=30,
        allow_redirects=False,
        data={"username": user, "password": password, "_xsrf": s.cookies.get("_xsrf")},
    )
    assert r.status_code == 302, r.text
    return s


def test_instructor_reaches_dashboard_student_does_not(demo):
    url, state, _, _ = demo
    pw = dict(line.split(" ", 1) for line in (state / "passwords").read_text().splitlines())
    teach = session(url, "instructor", pw["instructor"])
    r = teach.get(f"{url}/services/lab-manager/", timeout=30)
    assert r.status_code == 200 and "<h1>Lab manager</h1>" in r.text
    r = teach.get(f"{url}/services/lab-manager/api/vms", timeout=30)
    assert r.status_code == 200 and r.json()["rows"] == []
    student = session(url, "kvst-frank", pw["student"])
    r = student.get(f"{url}/services/lab-manager/", timeout=30)
    assert r.status_code == 403
    assert (state / "lab-manager.sqlite").exists()


def test_notebooks_learn_the_manager_url(demo):
    _, state, mport, env = demo
    # The spawner's environment, as the hub would hand it to a notebook server.
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from traitlets.config import PyFileConfigLoader as L; import os;"
            f"os.environ.update(KVS_DEMO_STATE={str(state)!r}, KVS_LAB_MANAGER_PORT='{mport}');"
            f"c = L('local_config.py', {str(REPO / 'hub-config')!r}).load_config();"
            "print(c.Spawner.environment.to_dict()['update']['LAB_MANAGER_URL'])",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.stdout.strip().endswith(f":{mport}/services/lab-manager/"), out.stderr[-2000:]

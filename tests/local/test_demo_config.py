"""hub-config/local_config.py as `make demo` runs it: passwords printed at
start, students and the instructor log in, wrong passwords are refused."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import requests
from hubctl import REPO, free_port

pytestmark = pytest.mark.local


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    state = tmp_path_factory.mktemp("demo")
    port = free_port()
    # The course account must reach its course root: not under pytest's 0700 tmp.
    course_base = tempfile.mkdtemp(prefix="kvs-course-", dir="/tmp")
    os.chmod(course_base, 0o755)
    env = {**os.environ, "KVS_DEMO_STATE": str(state), "KVS_DEMO_PORT": str(port),
           "KVS_COURSE_ROOT": f"{course_base}/course", "KVS_NBGRADER_EXCHANGE": f"{course_base}/exchange",
           "KVS_COURSE_SERVICE_PORT": str(free_port()), "KVS_LAB_MANAGER_PORT": str(free_port())}  # fmt: skip
    log = open(state / "hub.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterhub", "-f", str(REPO / "hub-config/local_config.py"),
         f"--JupyterHub.hub_port={free_port()}",
         f"--ConfigurableHTTPProxy.api_url=http://127.0.0.1:{free_port()}"],
        cwd=state, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/hub/api/", timeout=2).ok:
                break
        except requests.RequestException:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("demo hub did not start:\n" + (state / "hub.log").read_text())
    yield url, state
    proc.terminate()
    proc.wait(30)
    shutil.rmtree(course_base, ignore_errors=True)


def login(url: str, user: str, password: str) -> requests.Session:
    s = requests.Session()
    s.get(f"{url}/hub/login", timeout=10)
    r = s.post(
        f"{url}/hub/login",
        data={"username": user, "password": password, "_xsrf": s.cookies.get("_xsrf")},
        allow_redirects=False,
        timeout=30,
    )
    s.login_status = r.status_code
    return s


def test_passwords_printed_and_kept(demo):
    url, state = demo
    printed = (state / "hub.log").read_text()
    kept = dict(line.split(" ", 1) for line in (state / "passwords").read_text().splitlines())
    assert kept["student"] in printed and kept["instructor"] in printed
    assert oct((state / "passwords").stat().st_mode & 0o777) == "0o600"
    assert re.search(rf"http://127\.0\.0\.1:{url.rsplit(':', 1)[1]}/", printed)


def test_logins(demo):
    url, state = demo
    kept = dict(line.split(" ", 1) for line in (state / "passwords").read_text().splitlines())
    assert login(url, "kvst-erin", kept["student"]).login_status == 302
    assert login(url, "kvst-erin", "wrong password").login_status == 403
    admin = login(url, "instructor", kept["instructor"])
    assert admin.login_status == 302
    assert admin.get(f"{url}/hub/admin", timeout=10).status_code == 200
    # the student password does not make anyone an admin
    assert login(url, "instructor", kept["student"]).login_status == 403


def test_course_service_serves_graders_only(demo):
    """The nbgrader course service runs (as the course account, not root) and
    lets the instructor into formgrader; a student is refused."""
    url, state = demo
    kept = dict(line.split(" ", 1) for line in (state / "passwords").read_text().splitlines())
    admin = login(url, "instructor", kept["instructor"])
    deadline = time.monotonic() + 90  # the service starts beside the hub
    while True:
        r = admin.get(f"{url}/services/os-lab/formgrader", timeout=30)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert r.status_code == 200, (r.status_code, (state / "hub.log").read_text()[-3000:])
    assert "formgrader" in r.text.lower()
    # It runs as the course account, with the course root made from notebooks/.
    out = subprocess.run(
        ["ps", "-ww", "-eo", "user:32,args"], capture_output=True, text=True
    ).stdout
    (line,) = [ln for ln in out.splitlines()
               if "jupyterhub.singleuser" in ln and "kvs-course-" in ln]  # fmt: skip
    assert line.split()[0] == "grader-os-lab"
    student = login(url, "kvst-frank", kept["student"])
    r = student.get(f"{url}/services/os-lab/formgrader", timeout=30)
    assert r.status_code == 403

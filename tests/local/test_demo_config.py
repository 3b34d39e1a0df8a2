"""hub-config/local_config.py as `make demo` runs it: passwords printed at
start, students and the instructor log in, wrong passwords are refused."""

import re
import subprocess
import time

import pytest
import requests
from harness.demo_hub import Demo

pytestmark = pytest.mark.local


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = Demo(tmp_path_factory.mktemp("demo"))
    try:
        d.start()
        yield d.url, d.state
    finally:
        d.close()


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
    (line,) = [
        ln for ln in out.splitlines() if "jupyterhub.singleuser" in ln and "kvs-course-" in ln
    ]
    assert line.split()[0] == "grader-os-lab"
    student = login(url, "kvst-frank", kept["student"])
    r = student.get(f"{url}/services/os-lab/formgrader", timeout=30)
    assert r.status_code == 403


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        pytest.param(
            "KVS_DEMO_PORT",
            "eighty",
            "make demo: KVS_DEMO_PORT must be a TCP port number (1-65535), not 'eighty'",
            id="port",
        ),
        pytest.param(
            "KVS_DEMO_STATE",
            "relative/state",
            "make demo: KVS_DEMO_STATE must be an absolute path, not 'relative/state'",
            id="state",
        ),
        pytest.param(
            "KVS_COURSE_AUTO_RELEASE",
            "maybe",
            "make demo: KVS_COURSE_AUTO_RELEASE must be 1 or 0 (yes/no, true/false), not 'maybe'",
            id="course-flag",
        ),
    ],
)
def test_a_wrong_environment_stops_the_demo_in_one_line(tmp_path, var, value, message):
    d = Demo(tmp_path / "log", extra_env={var: value})
    d.state.mkdir()
    if var != "KVS_DEMO_STATE":
        d.env["KVS_DEMO_STATE"] = str(tmp_path / "state")
    try:
        with pytest.raises(RuntimeError, match="demo exited"):
            d.start(timeout=60)
        assert d.log_path.read_text().strip().splitlines()[-1] == message
        assert not (tmp_path / "state").exists(), "the demo made its state before refusing"
        assert not d.course_root.exists()
    finally:
        d.close()

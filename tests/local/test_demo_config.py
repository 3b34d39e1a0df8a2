"""hub-config/local_config.py as `make demo` runs it: passwords printed at
start, students and the instructor log in, wrong passwords are refused."""

import os
import re
import subprocess
import sys
import time

import pytest
import requests
from hubctl import REPO, free_port

pytestmark = pytest.mark.local


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    state = tmp_path_factory.mktemp("demo")
    port = free_port()
    env = {**os.environ, "KVS_DEMO_STATE": str(state), "KVS_DEMO_PORT": str(port)}
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

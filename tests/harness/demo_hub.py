"""The demo hub (hub-config/local_config.py) as `make demo` runs it, in a
test: its own ports, state, course root and exchange, so that it never meets
a person's demo on this machine; started in a session of its own so that a
test can send it Ctrl-C (SIGINT to the process group) as a terminal would."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from harness.hubctl import REPO, free_port


@dataclass
class Demo:
    """One demo hub; ``argv`` defaults to `python -m jupyterhub -f local_config.py`."""

    state: Path
    argv: list[str] | None = None
    cwd: Path = REPO
    extra_env: dict = field(default_factory=dict)
    with_api_token: bool = False  # add a service token the test may use (admin scopes)
    proc: subprocess.Popen | None = None

    def __post_init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The course account must reach its course root: not under pytest's 0700 tmp.
        self.course_base = Path(tempfile.mkdtemp(prefix="kvs-course-", dir="/tmp"))
        self.course_base.chmod(0o755)
        self.course_root = self.course_base / "course"
        self.env = {
            **os.environ,
            "KVS_DEMO_STATE": str(self.state),
            "KVS_DEMO_PORT": str(self.port),
            "KVS_DEMO_HUB_PORT": str(free_port()),
            "KVS_DEMO_PROXY_API_PORT": str(free_port()),
            "KVS_COURSE_ROOT": str(self.course_root),
            "KVS_NBGRADER_EXCHANGE": str(self.course_base / "exchange"),
            "KVS_COURSE_SERVICE_PORT": str(free_port()),
            "KVS_LAB_MANAGER_PORT": str(free_port()),
            **self.extra_env,
        }
        self.log_path = self.state / "hub.log"
        self.token = secrets.token_hex(16)

    def _config(self) -> Path:
        """local_config.py itself, or (with_api_token) a file that loads it
        and adds the test's service token."""
        demo = REPO / "hub-config/local_config.py"
        if not self.with_api_token:
            return demo
        wrapper = self.state / "with_token_config.py"
        wrapper.write_text(
            f"c = get_config()  # noqa: F821\n"
            f"load_subconfig({str(demo)!r})  # noqa: F821\n"
            f"c.JupyterHub.services.append({{'name': 'tester', 'api_token': {self.token!r}}})\n"
            "c.JupyterHub.load_roles.append({'name': 'tester', 'services': ['tester'], "
            "'scopes': ['admin:users', 'admin:servers', 'access:servers', 'read:users']})\n"
        )
        return wrapper

    def start(self, wait_for: str = "/hub/api/", timeout: float = 120) -> Demo:
        argv = self.argv or [
            sys.executable,
            "-m",
            "jupyterhub",
            "-f",
            str(self._config()),
        ]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            argv,
            cwd=self.cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"demo exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.url + wait_for, timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.kill()
        raise TimeoutError(f"demo did not serve {wait_for} in {timeout}s:\n{self.log_tail()}")

    @property
    def passwords(self) -> dict[str, str]:
        text = (self.state / "passwords").read_text()
        return dict(line.split(" ", 1) for line in text.splitlines() if line)

    def login(self, user: str, password: str | None = None) -> requests.Session:
        """A logged-in session (the hub's login form); ``login_status`` is its answer."""
        if password is None:
            password = self.passwords["instructor" if user == "instructor" else "student"]
        s = requests.Session()
        s.get(f"{self.url}/hub/login", timeout=10)
        r = s.post(
            f"{self.url}/hub/login",
            timeout=30,
            allow_redirects=False,
            data={"username": user, "password": password, "_xsrf": s.cookies.get("_xsrf")},
        )
        s.login_status = r.status_code
        # The hub checks XSRF on cookie-authenticated API calls, as a page's would.
        s.headers["X-XSRFToken"] = s.cookies.get("_xsrf", "")
        return s

    def spawn(self, user: str, profile: str = "kernel", timeout: float = 300) -> dict:
        """Log in as ``user`` and press Start on the spawn page (the form a browser
        posts); wait until the hub says the server is ready; return its model."""
        s = self.login(user)
        assert s.login_status == 302, f"login of {user} refused ({s.login_status})"
        r = s.post(
            f"{self.url}/hub/spawn/{user}",
            data={"profile": profile, "_xsrf": s.cookies.get("_xsrf")},
            allow_redirects=False,
            timeout=60,
        )
        assert r.status_code in (200, 302), f"{r.status_code} {r.text[:500]}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = s.get(f"{self.url}/hub/api/user", timeout=30).json()["servers"].get("", {})
            if server.get("ready"):
                return server
            if not server and time.monotonic() > deadline - timeout + 30:
                raise AssertionError(f"{user}'s spawn failed:\n{self.log_tail()}")
            time.sleep(1)
        raise TimeoutError(f"{user}'s server not ready in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def interrupt(self, timeout: float = 60) -> float:
        """Ctrl-C: SIGINT to the demo's process group; seconds until it exited."""
        t0 = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        return time.monotonic() - t0

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.interrupt(60)
        self.kill()
        shutil.rmtree(self.course_base, ignore_errors=True)


def new_student(name: str) -> str:
    """``name``, with no system account or home left from an earlier run:
    tests of a first login need a student the machine has never seen."""
    subprocess.run(["userdel", "--remove", name], capture_output=True)
    shutil.rmtree(f"/home/{name}", ignore_errors=True)
    return name


def processes_mentioning(*needles: str) -> list[str]:
    """Every live process whose full command line (`ps -eww`) names one of ``needles``."""
    out = subprocess.run(
        ["ps", "-eww", "-o", "pid=,stat=,args="], capture_output=True, text=True
    ).stdout
    return [
        line.strip()
        for line in out.splitlines()
        if any(n in line for n in needles) and line.split()[1][0] != "Z"
    ]

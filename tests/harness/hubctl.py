"""Drive a real JupyterHub (and its users' terminals) from tests and benchmarks.

Starts ``jupyterhub`` as a subprocess with a generated config in a temporary
directory, talks to it over its REST API with a service token, and to
single-user servers through their terminal websocket, as a browser does.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

REPO = Path(__file__).resolve().parents[2]
CHP = REPO / ".venv/node/node_modules/.bin/configurable-http-proxy"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


# Listening ports for the processes a test starts come from below the kernel's
# ephemeral range (32768-60999 here): a port that bind(0) hands out can be
# taken by any outgoing connection before the process that is meant to listen
# on it starts (seen in CI: the lab manager lost its port to a client socket).
# Two pytest-xdist workers (make test) draw from halves of it, so that they
# never hand out the same port either.
_LISTEN_PORTS = {"gw0": range(20000, 26000), "gw1": range(26000, 32000)}.get(
    os.environ.get("PYTEST_XDIST_WORKER", ""), range(20000, 32000)
)
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nobody listens on now, never the same twice in a run."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.choice(_LISTEN_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {_LISTEN_PORTS}")


@dataclass
class Hub:
    """One JupyterHub process with LocalVMSpawner, its state in ``workdir``."""

    workdir: Path
    extra_config: str = ""
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    proc: subprocess.Popen | None = None

    def __post_init__(self):
        self.port, self.hub_port, self.api_port = free_port(), free_port(), free_port()
        # Short: unix socket paths must stay under 108 bytes.
        self.runtime_root = tempfile.mkdtemp(prefix="kvs-", dir="/tmp")
        os.chmod(self.runtime_root, 0o711)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "hub.log"

    def write_config(self) -> Path:
        cfg = self.workdir / "jupyterhub_config.py"
        cfg.write_text(
            textwrap.dedent(f"""
            import sys
            c.JupyterHub.spawner_class = "localvm"
            c.JupyterHub.authenticator_class = "dummy"
            c.Authenticator.allow_all = True
            c.JupyterHub.ip = "127.0.0.1"
            c.JupyterHub.port = {self.port}
            c.JupyterHub.hub_port = {self.hub_port}
            c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.api_port}"
            c.ConfigurableHTTPProxy.command = [{str(CHP)!r}]
            c.ConfigurableHTTPProxy.should_start = True
            c.JupyterHub.cleanup_servers = False
            # POST returns at once, so the progress stream shows every step.
            c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
            c.JupyterHub.cleanup_proxy = True
            c.JupyterHub.db_url = "sqlite:///{self.workdir}/jupyterhub.sqlite"
            c.JupyterHub.cookie_secret_file = "{self.workdir}/cookie_secret"
            c.JupyterHub.pid_file = "{self.workdir}/hub.pid"
            c.JupyterHub.services = [{{"name": "tester", "api_token": {self.token!r}}}]
            c.JupyterHub.load_roles = [{{
                "name": "tester", "services": ["tester"],
                "scopes": ["admin:users", "admin:servers", "access:servers", "read:users"],
            }}]
            c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
            c.Spawner.start_timeout = 180
            c.Spawner.poll_interval = 3
            c.Spawner.http_timeout = 120
            c.LocalVMSpawner.create_system_users = True
            c.LocalVMSpawner.runtime_root = {self.runtime_root!r}
            c.LocalVMSpawner.interrupt_timeout = 5
            c.LocalVMSpawner.term_timeout = 5
            """)
            + textwrap.dedent(self.extra_config)
        )
        return cfg

    # -- process ------------------------------------------------------------
    def start(self, timeout: float = 60) -> Hub:
        cfg = self.write_config()
        log = open(self.log_path, "ab")
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(cfg)],
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/hub/api/", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"hub did not answer in {timeout}s:\n{self.log_tail()}")

    def stop_all_servers(self) -> None:
        """Stop every user's server (teardown: a failure to stop one is printed
        and the rest go on)."""
        for user in self.api("GET", "/users").json():
            if user.get("servers"):
                try:
                    self.stop_server(user["name"])
                except Exception as e:  # keep tearing down the rest
                    print(f"teardown: stopping {user['name']} failed: {e}")

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> None:
        """Stop the hub process (and its proxy); servers keep running."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    # -- REST API -------------------------------------------------------------
    def api(self, method: str, path: str, **kw) -> requests.Response:
        headers = {"Authorization": f"token {self.token}"}
        return requests.request(
            method,
            f"{self.url}/hub/api{path}",
            headers=headers,
            timeout=kw.pop("timeout", 30),
            **kw,
        )

    def create_user(self, name: str) -> None:
        r = self.api("POST", f"/users/{name}")
        assert r.status_code in (201, 409), r.text

    def spawn(self, name: str, options: dict | None = None, timeout: float = 240) -> dict:
        """Start ``name``'s server and wait; return the progress events.

        The last event says ``ready`` or ``failed``.
        """
        self.create_user(name)
        r = self.api("POST", f"/users/{name}/server", json=options or {})
        assert r.status_code in (201, 202), f"{r.status_code} {r.text}"
        return self.progress(name, timeout)

    def progress(self, name: str, timeout: float = 240) -> list[dict]:
        events = []
        with self.api("GET", f"/users/{name}/server/progress", stream=True, timeout=timeout) as r:
            for line in r.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    ev = json.loads(line[5:])
                    events.append(ev)
                    if ev.get("ready") or ev.get("failed"):
                        break
        return events

    def server_state(self, name: str) -> dict | None:
        user = self.api("GET", f"/users/{name}").json()
        return user.get("servers", {}).get("")

    def stop_server(self, name: str, timeout: float = 120) -> None:
        r = self.api("DELETE", f"/users/{name}/server")
        assert r.status_code in (202, 204), r.text
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.server_state(name):
                return
            time.sleep(0.5)
        raise TimeoutError(f"server of {name} did not stop in {timeout}s")

    # -- terminals ---------------------------------------------------------
    async def terminal(self, name: str) -> Terminal:
        r = requests.post(
            f"{self.url}/user/{name}/api/terminals",
            headers={"Authorization": f"token {self.token}"},
            timeout=30,
        )
        assert r.status_code == 200, f"{r.status_code} {r.text}"
        term = r.json()["name"]
        ws_url = f"ws://127.0.0.1:{self.port}/user/{name}/terminals/websocket/{term}"
        req = HTTPRequest(ws_url, headers={"Authorization": f"token {self.token}"})
        return Terminal(await websocket_connect(req))

    async def kernel(self, name: str) -> Kernel:
        """A new Python kernel on ``name``'s server, over the websocket JupyterLab uses."""
        auth = {"Authorization": f"token {self.token}"}
        r = requests.post(
            f"{self.url}/user/{name}/api/kernels",
            headers=auth,
            json={"name": "python3"},
            timeout=60,
        )
        assert r.status_code == 201, f"{r.status_code} {r.text}"
        kid = r.json()["id"]
        session = secrets.token_hex(8)
        ws_url = (
            f"ws://127.0.0.1:{self.port}/user/{name}/api/kernels/{kid}/channels"
            f"?session_id={session}"
        )
        ws = await websocket_connect(HTTPRequest(ws_url, headers=auth))
        return Kernel(
            ws,
            session,
            lambda: requests.delete(
                f"{self.url}/user/{name}/api/kernels/{kid}", headers=auth, timeout=30
            ),
        )


@dataclass
class Execution:
    """What one cell printed: stdout/stderr text, and the error it raised, if any."""

    stdout: str = ""
    stderr: str = ""
    error: str = ""  # "ename: evalue"


class Kernel:
    """A notebook kernel driven by Jupyter's messaging protocol (v5) over the
    server's kernel websocket, as a notebook cell is run from JupyterLab."""

    def __init__(self, ws, session: str, shutdown):
        self.ws, self.session, self._shutdown = ws, session, shutdown

    async def execute(self, code: str, timeout: float = 120) -> Execution:
        import asyncio
        import uuid

        msg_id = uuid.uuid4().hex
        await self.ws.write_message(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "session": self.session,
                        "username": "test",
                        "msg_type": "execute_request",
                        "version": "5.3",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "buffers": [],
                    "channel": "shell",
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": True,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": True,
                    },
                }
            )
        )
        out = Execution()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                raw = await asyncio.wait_for(self.ws.read_message(), deadline - time.monotonic())
            except TimeoutError:
                break
            if raw is None:
                raise ConnectionError("kernel websocket closed")
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                setattr(out, content["name"], getattr(out, content["name"]) + content["text"])
            elif kind == "error":
                out.error = f"{content['ename']}: {ANSI.sub('', content['evalue'])}"
            elif kind == "status" and content["execution_state"] == "idle":
                return out
        raise TimeoutError(f"cell did not finish in {timeout}s: {code[:80]!r}; so far {out}")

    def close(self) -> None:
        self.ws.close()
        self._shutdown()


class Terminal:
    """A JupyterLab terminal over its websocket (terminado's JSON protocol)."""

    def __init__(self, ws):
        self.ws = ws
        self.output = ""

    async def run(self, command: str, timeout: float = 60) -> str:
        """Type ``command``; return its output (up to a unique end marker)."""
        marker = f"__done_{secrets.token_hex(4)}__"
        # The marker is built at run time so the echoed command line does not match.
        await self.ws.write_message(
            json.dumps(["stdin", f"{command}; echo {marker[:6]}''{marker[6:]}:$?\r"])
        )
        deadline = time.monotonic() + timeout
        buf = ""
        pattern = re.compile(re.escape(marker) + r":(\d+)")
        import asyncio

        while time.monotonic() < deadline:
            try:
                msg = await asyncio.wait_for(self.ws.read_message(), deadline - time.monotonic())
            except TimeoutError:
                break
            if msg is None:
                raise ConnectionError("terminal websocket closed")
            kind, *rest = json.loads(msg)
            if kind == "stdout":
                buf += rest[0]
                clean = ANSI.sub("", buf)
                if m := pattern.search(clean):
                    self.output += clean
                    self.last_status = int(m.group(1))
                    return clean[: m.start()]
        raise TimeoutError(
            f"terminal command {command!r} did not finish; output:\n{ANSI.sub('', buf)}"
        )

    def close(self):
        self.ws.close()


@contextmanager
def running_hub(workdir: Path, extra_config: str = "") -> Iterator[Hub]:
    """A started Hub for a test module. Afterwards every user's server is
    stopped (a failure to stop one is printed and the rest go on), then the
    hub, and its runtime root is removed."""
    h = Hub(workdir, extra_config=extra_config)
    h.start()
    try:
        yield h
    finally:
        h.stop_all_servers()
        h.stop()
        shutil.rmtree(h.runtime_root, ignore_errors=True)

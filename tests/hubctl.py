"""Drive a real JupyterHub (and its users' terminals) from tests and benchmarks.

Starts ``jupyterhub`` as a subprocess with a generated config in a temporary
directory, talks to it over its REST API with a service token, and to
single-user servers through their terminal websocket, as a browser does.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

REPO = Path(__file__).resolve().parents[1]
CHP = REPO / ".venv/node/node_modules/.bin/configurable-http-proxy"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
            cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
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

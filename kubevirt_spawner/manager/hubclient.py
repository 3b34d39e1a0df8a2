"""The few JupyterHub REST API calls the lab manager makes, with its own token."""

from __future__ import annotations

import json
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .reaper import ServerInfo


class HubAPIError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"hub API {status}: {message}")
        self.status = status


class HubClient:
    def __init__(self, api_url: str, token: str, timeout: float = 30):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    async def request(self, method: str, path: str, body: dict | None = None) -> dict | list | None:
        req = HTTPRequest(
            self.api_url + path,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
            body=None if body is None and method in ("GET", "DELETE") else json.dumps(body or {}),
            allow_nonstandard_methods=True,
            request_timeout=self.timeout,
        )
        try:
            resp = await AsyncHTTPClient().fetch(req)
        except HTTPClientError as e:
            text = e.response.body.decode(errors="replace") if e.response else str(e)
            raise HubAPIError(e.code, text) from None
        return json.loads(resp.body) if resp.body else None

    async def users(self) -> list[dict]:
        """Every user, with their servers (and saved spawner state: admin:server_state)."""
        out, offset = [], 0
        while True:
            page = await self.request(
                "GET", f"/users?include_stopped_servers=0&offset={offset}&limit=200"
            )
            items = page["items"] if isinstance(page, dict) else page
            out.extend(items)
            if not isinstance(page, dict) or not page.get("_pagination", {}).get("next"):
                return out
            offset = page["_pagination"]["next"]["offset"]

    async def user(self, name: str) -> dict | None:
        try:
            return await self.request("GET", f"/users/{quote(name, safe='')}")
        except HubAPIError as e:
            if e.status == 404:
                return None
            raise

    async def stop_server(self, user: str, server: str = "") -> None:
        path = f"/users/{quote(user, safe='')}/server" + (
            f"s/{quote(server, safe='')}" if server else ""
        )
        await self.request("DELETE", path)

    async def start_server(self, user: str, server: str = "") -> None:
        path = f"/users/{quote(user, safe='')}/server" + (
            f"s/{quote(server, safe='')}" if server else ""
        )
        await self.request("POST", path, {})


def servers_of(users: list[dict]) -> list[ServerInfo]:
    """Every running or pending server in a /users listing."""
    out = []
    for u in users:
        for name, s in (u.get("servers") or {}).items():
            out.append(
                ServerInfo(
                    user=u["name"],
                    name=name,
                    pending=s.get("pending"),
                    ready=bool(s.get("ready")),
                    state=s.get("state") or {},
                )
            )
    return out

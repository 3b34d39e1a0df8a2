"""HTTP side of the lab manager: the instructors' dashboard and its JSON API,
the students' API (their own VM, their check results), and /metrics.

Who may do what:

- instructors (hub admins and members of the instructors group) log in
  through the hub (OAuth) and may see everything and act on any VM;
- a student authenticates with the token JupyterHub gave their server
  (``JUPYTERHUB_API_TOKEN``) and may only reset their own VM and report
  their own check results.

Every error is JSON ``{"status": N, "message": "..."}`` with a 4xx status
for bad requests, and a bad request changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from http import HTTPStatus
from pathlib import Path

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado import web

from .core import ActionError
from .hubclient import HubAPIError

STATIC = Path(__file__).parent / "static"
# Hub user and server names may be e-mail addresses and the like: refuse only
# what could change the hub API path we build from them.
NAME_RE = re.compile(r"(?!\.\.?$)[^/\\\x00-\x1f\x7f?#%]{1,255}")


class ManagerHubAuth(HubOAuth):
    """HubOAuth that, unless told otherwise, asks the hub about every token:
    the hub revokes a server's token when the server stops, and a cached
    answer (JupyterHub keeps them 300 s; a max age of 0 there means forever)
    would let that token act on the VM for minutes after."""

    def user_for_token(self, token, use_cache=True, session_id="", *, sync=True):
        fresh = self.cache_max_age <= 0
        return super().user_for_token(
            token, use_cache=use_cache and not fresh, session_id=session_id, sync=sync
        )


@web.stream_request_body
class BaseHandler(HubOAuthenticated, web.RequestHandler):
    """Bodies are streamed: at most max_body_bytes are kept, the rest of an
    oversized body is read and dropped, and the request is then refused with
    a clear 413 (answering early and closing would make the hub's proxy
    report a 502/503 instead)."""

    hub_auth_class = ManagerHubAuth

    def initialize(self, manager, app):
        self.manager = manager
        self.app = app
        self._body = bytearray()
        self._oversized = False

    def prepare(self):
        length = self.request.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.app.max_body_bytes:
            self._oversized = True

    def data_received(self, chunk: bytes) -> None:
        if self._oversized or len(self._body) + len(chunk) > self.app.max_body_bytes:
            self._oversized = True
            self._body.clear()
            return
        self._body += chunk

    def refuse_oversized(self) -> None:
        if self._oversized:
            raise web.HTTPError(413, f"request body larger than {self.app.max_body_bytes} bytes")

    @property
    def hub_scopes(self):
        # Access is decided in identify()/require_instructor(), not by a scope:
        # students must be identified too (for their own API).
        return None

    @property
    def allow_all(self):
        return True

    def get_current_user(self):  # tornado's sync hook: prepare() fills it in
        return getattr(self, "_user_model", None)

    async def identify(self) -> dict | None:
        model = await self.hub_auth.get_user(self, sync=False)
        if model and model.get("kind", "user") == "user":
            self._user_model = model
            return model
        return None

    async def require_user(self) -> dict:
        model = await self.identify()
        if model is None:
            raise web.HTTPError(
                401, "log in, or send your server's token (Authorization: token ...)"
            )
        return model

    async def is_instructor(self, name: str) -> bool:
        return await self.app.is_instructor(name)

    async def require_instructor(self) -> dict:
        model = await self.require_user()
        if not await self.is_instructor(model["name"]):
            raise web.HTTPError(403, f"{model['name']} is not an instructor")
        return model

    def json_body(self) -> dict:
        self.refuse_oversized()
        if not self._body:
            return {}
        try:
            body = json.loads(bytes(self._body))
        except (ValueError, UnicodeDecodeError):
            raise web.HTTPError(400, "body is not valid JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "body must be a JSON object")
        return body

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "log_message", None) or HTTPStatus(status_code).phrase
        if isinstance(exc, web.HTTPError) and exc.args[1:]:
            message = message % exc.args[1:]
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": message}))

    def write_json(self, obj, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(obj))


class DashboardHandler(BaseHandler):
    async def get(self):
        model = await self.identify()
        if model is None:
            # Through the hub's login (OAuth) and back here.
            self.redirect(self.get_login_url())
            return
        if not await self.is_instructor(model["name"]):
            raise web.HTTPError(403, f"{model['name']} is not an instructor")
        html = (STATIC / "dashboard.html").read_text()
        html = html.replace("{{xsrf}}", self.xsrf_token.decode()).replace(
            "{{user}}", web.escape.xhtml_escape(model["name"])
        )
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(html)


class VMsHandler(BaseHandler):
    async def get(self):
        await self.require_instructor()
        m = self.manager
        self.write_json(
            {
                "now": time.time(),
                "refreshed": m.refreshed,
                "rows": await m.rows(),
                "flags": m.store.flags(),
                "sample_interval": m.s.sample_interval,
            }
        )


class ActionHandler(BaseHandler):
    """POST users/NAME/ACTION[?server=NAME]: reset, restart, stop or resume one
    server; discard?state=NAME removes one of the student's saved VM states."""

    async def post(self, user: str, action: str):
        self.refuse_oversized()
        model = await self.require_user()
        instructor = await self.is_instructor(model["name"])
        if not instructor:
            if model["name"] != user:
                raise web.HTTPError(403, "you may act only on your own VM")
            if action != "reset":
                raise web.HTTPError(403, f"only instructors may {action} a server")
        if not NAME_RE.fullmatch(user):
            raise web.HTTPError(404, "no such user")
        server = self.get_argument("server", "")
        if server and not NAME_RE.fullmatch(server):
            raise web.HTTPError(400, "bad server name")
        wait = self.wait_seconds()
        try:
            if await self.manager.hub.user(user) is None:
                raise web.HTTPError(404, f"no user named {user}")
            fn = {
                "reset": self.manager.reset,
                "restart": self.manager.restart,
                "stop": self.manager.stop,
                "resume": self.manager.resume,
            }.get(action)
            if action == "discard":
                state = self.get_argument("state", "")
                if not STATE_RE.fullmatch(state):
                    raise web.HTTPError(400, "state must name a saved VM state (api/suspended)")
                result = await self.manager.discard(user, state)
            elif action == "reset":
                result = await fn(user, server, wait=wait)
            else:
                result = await fn(user, server)
        except ActionError as e:
            raise web.HTTPError(e.status, str(e)) from None
        except HubAPIError as e:
            raise web.HTTPError(502, f"the hub refused: {e}") from None
        self.write_json({"user": user, "server": server, "action": action, "result": result}, 202)

    def wait_seconds(self) -> float:
        """?wait=SECONDS: a reset answers when the VM is back, or after that long
        (at most the manager's reset_timeout); absent or 0: at once."""
        raw = self.get_argument("wait", "0").strip()
        try:
            seconds = float(raw)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds < float("inf"):
            raise web.HTTPError(400, f"wait must be a number of seconds, not {raw[:20]!r}")
        return seconds


STATE_RE = re.compile(r"(suspended|unrestorable)-[0-9a-f]{12}(-[0-9]{8}-[0-9]{6})?")


class SuspendedHandler(BaseHandler):
    async def get(self):
        await self.require_instructor()
        await self.manager.refresh()
        self.write_json({"states": await asyncio.to_thread(self.manager.suspended)})


class FlagHandler(BaseHandler):
    async def post(self, flag_id: str):
        self.refuse_oversized()
        await self.require_instructor()
        if not self.manager.store.clear_flag(int(flag_id)):
            raise web.HTTPError(404, f"no open flag {flag_id}")
        self.write_json({"cleared": int(flag_id)})


LAB_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
CHECK_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


def parse_result(body: dict, now: float) -> tuple[str, str, bool, float, str]:
    """Validate one check result; raise HTTPError(400) with what is wrong.

    ``{"lab": "lab1", "check": "wordcount", "passed": true, "time": EPOCH,
    "message": "..."}``; ``lab`` may be left out when the check id is
    ``LAB.CHECK`` (as kubevirt_spawner.checks names them); ``time`` defaults
    to now. A ``user`` field, if sent, must be the caller (checked by the
    handler)."""
    unknown = set(body) - {"lab", "check", "passed", "time", "message", "user"}
    if unknown:
        raise web.HTTPError(400, f"unknown fields: {', '.join(sorted(unknown))}")
    lab, check, passed = body.get("lab"), body.get("check"), body.get("passed")
    if not isinstance(check, str) or not CHECK_RE.fullmatch(check):
        raise web.HTTPError(400, "check must be a name of letters, digits, '_', '.', ':', '-'")
    if lab is None and "." in check:
        lab = check.split(".", 1)[0]
    if not isinstance(lab, str) or not LAB_RE.fullmatch(lab):
        raise web.HTTPError(400, "lab must be a name of letters, digits, '_', '.', '-' (<= 64)")
    if not isinstance(passed, bool):
        raise web.HTTPError(400, "passed must be true or false")
    when = body.get("time", now)
    if isinstance(when, bool) or not isinstance(when, (int, float)):
        raise web.HTTPError(400, "time must be seconds since the epoch")
    if not (now - 30 * 86400 <= when <= now + 3600):
        raise web.HTTPError(400, "time is not within the last 30 days")
    message = body.get("message", "")
    if not isinstance(message, str) or len(message) > 2000:
        raise web.HTTPError(400, "message must be a string of at most 2000 characters")
    return lab, check, passed, float(when), message


class ProgressHandler(BaseHandler):
    async def get(self):
        await self.require_instructor()
        lab = self.get_argument("lab", None)
        self.write_json({"results": self.manager.store.progress(lab)})

    async def post(self):
        body = self.json_body()
        model = await self.require_user()
        lab, check, passed, when, message = parse_result(body, time.time())
        if body.get("user", model["name"]) != model["name"]:
            raise web.HTTPError(403, "you may report only your own results")
        self.manager.store.add_result(model["name"], lab, check, passed, when, message)
        self.manager.metrics.check_results.labels("pass" if passed else "fail").inc()
        self.write_json({"user": model["name"], "lab": lab, "check": check, "passed": passed}, 201)


class MeHandler(BaseHandler):
    async def get(self):
        model = await self.require_user()
        await self.manager.refresh()
        s = self.manager.find(model["name"])
        if s is None:
            self.write_json({"user": model["name"], "server": None})
            return
        self.write_json(
            {"user": s.user, "server": {"state": await self.manager.vm_state(s), "ready": s.ready}}
        )


class MetricsHandler(BaseHandler):
    async def get(self):
        if self.app.metrics_require_auth:
            await self.require_instructor()
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(self.manager.metrics.registry))


class NotFoundHandler(web.RequestHandler):
    def prepare(self):
        raise web.HTTPError(404, "no such page or API endpoint")

    def write_error(self, status_code, **kwargs):
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": "no such page or API endpoint"}))


class HealthHandler(web.RequestHandler):
    def get(self):
        self.finish({"ok": True})


def make_handlers(prefix: str, manager, app) -> list:
    kw = {"manager": manager, "app": app}
    p = prefix.rstrip("/")
    return [
        (rf"{p}/?", DashboardHandler, kw),
        (rf"{p}/oauth_callback", HubOAuthCallbackHandler),
        (rf"{p}/api/vms", VMsHandler, kw),
        (rf"{p}/api/users/([^/]+)/(reset|restart|stop|resume|discard)", ActionHandler, kw),
        (rf"{p}/api/suspended", SuspendedHandler, kw),
        (rf"{p}/api/flags/(\d{{1,12}})/clear", FlagHandler, kw),
        (rf"{p}/api/progress", ProgressHandler, kw),
        (rf"{p}/api/me", MeHandler, kw),
        (rf"{p}/metrics", MetricsHandler, kw),
        (rf"{p}/health", HealthHandler),
        (rf"{p}/static/(.*)", web.StaticFileHandler, {"path": str(STATIC)}),
    ]

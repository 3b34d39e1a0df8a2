"""An HTTP proxy in front of the API server that misbehaves on purpose.

Clients (the hub, a test) talk plain HTTP to 127.0.0.1:PORT with a bearer
token; the proxy forwards to the real API server over TLS and, on a share of
requests, answers for it instead:

``500``   InternalError, request not forwarded
``429``   TooManyRequests with ``Retry-After: 1``, request not forwarded
``409``   a create is forwarded (it takes effect) and answered AlreadyExists,
          as when a retried create's first attempt had landed; anything else
          gets Conflict without being forwarded
``slow``  forwarded after ``slow_s`` seconds
``drop``  the connection is closed without an answer, half the time after the
          request was forwarded (the write landed, the client cannot know)

Responses stream through, so watches work. Runs its own event loop in a thread.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import threading
from collections import Counter
from collections.abc import Callable

import aiohttp
from aiohttp import web

FAULTS = ("500", "429", "409", "slow", "drop")
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length", "content-encoding",
}  # fmt: skip


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}  # fmt: skip
    headers = {"Retry-After": "1"} if code == 429 else {}
    return web.Response(
        status=code, text=json.dumps(body), content_type="application/json", headers=headers
    )


class FaultProxy:
    """``FaultProxy(upstream, ca).start()``; set ``rate``/``faults`` any time; ``stop()``.

    ``only`` (optional) picks which requests may get a fault:
    ``only(method, path) -> bool``.
    """

    def __init__(
        self,
        upstream: str,
        ca: str | None,
        *,
        rate: float = 0.0,
        faults: tuple[str, ...] = FAULTS,
        slow_s: float = 2.0,
        seed: int = 0,
        only: Callable[[str, str], bool] | None = None,
    ):
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
        self.upstream = upstream.rstrip("/")
        self.ca = ca
        self.rate, self.faults, self.slow_s, self.only = rate, faults, slow_s, only
        self.rng = random.Random(seed)
        self.stats: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="fault-proxy"
        )
        self.url = ""

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        ctx = (
            ssl.create_default_context(cafile=self.ca) if self.ca else ssl.create_default_context()
        )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=True,
        )
        self._server = web.Server(self._handle)
        # Open watches must not hold stop() up for aiohttp's default 60 s.
        self._runner = web.ServerRunner(self._server, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        async def _stop():
            await self._runner.cleanup()
            await self._session.close()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    # -- requests ---------------------------------------------------------------------------
    def _pick(self, method: str, path: str) -> str | None:
        if self.rate <= 0 or not self.faults:
            return None
        if self.only is not None and not self.only(method, path):
            return None
        if self.rng.random() >= self.rate:
            return None
        return self.rng.choice(self.faults)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        fault = self._pick(request.method, request.path)
        self.stats["requests"] += 1
        if fault:
            self.stats[fault] += 1
        if fault == "500":
            return _status(500, "InternalError", "fault proxy: injected internal error")
        if fault == "429":
            return _status(429, "TooManyRequests", "fault proxy: injected throttling")
        if fault == "409" and request.method != "POST":
            return _status(409, "Conflict", "fault proxy: injected conflict; please retry")
        if fault == "slow":
            await asyncio.sleep(self.slow_s)
        if fault == "drop" and self.rng.random() < 0.5:
            return self._drop(request)
        try:
            upstream = await self._session.request(
                request.method,
                self.upstream + request.path_qs,
                headers={k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP},
                data=body or None,
                # Pass a missing Content-Type on as missing (the kubernetes client
                # sends none); aiohttp would say octet-stream, which is a 415.
                skip_auto_headers=() if "Content-Type" in request.headers else ("Content-Type",),
            )
        except aiohttp.ClientError as e:
            return _status(502, "ServiceUnavailable", f"fault proxy: upstream: {e}")
        if fault == "drop":
            upstream.release()
            return self._drop(request)
        if fault == "409":  # the create went through; say it already existed
            upstream.release()
            return _status(409, "AlreadyExists", "fault proxy: object already exists (injected)")
        resp = web.StreamResponse(status=upstream.status)
        for k, v in upstream.headers.items():
            if k.lower() not in HOP_BY_HOP:
                resp.headers[k] = v
        try:
            await resp.prepare(request)
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
        except (ConnectionResetError, aiohttp.ClientError, asyncio.CancelledError):
            pass  # client went away (a watch was closed) or upstream ended
        finally:
            upstream.release()
        return resp

    @staticmethod
    def _drop(request: web.BaseRequest) -> web.StreamResponse:
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # nothing more is written on that connection

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
``hang``  forwarded after ``hang_s`` seconds, meant to be longer than the
          client's request timeout: the client gives up, the write may still
          land afterwards
``drop``  the connection is closed without an answer, half the time after the
          request was forwarded (the write landed, the client cannot know)
``reset`` forwarded, then the connection is reset (TCP RST) instead of
          answered: the write landed, the client sees ECONNRESET
``hold``  held until :meth:`release`, then closed without being forwarded
          (for killing a client at a known point: the request never lands)

Which requests get a fault: by default a share ``rate`` of them, drawn from
``faults`` by a generator seeded with ``seed`` (the draw follows the order in
which requests arrive). With ``plan(method, path, n)`` instead, the fault of
each request is a function of its method, its path and ``n``, the number of
earlier requests with that method and path, so a seeded plan gives every
request the same fault in every run, however concurrent requests interleave
(:func:`seeded_plan`). ``log`` records every request: method, path, fault,
and the API server's status when it was forwarded and answered.

Responses stream through, so watches work. Runs its own event loop in a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import socket
import ssl
import struct
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

FAULTS = ("500", "429", "409", "slow", "hang", "drop", "reset", "hold")
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-encoding",
}


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    headers = {"Retry-After": "1"} if code == 429 else {}
    return web.Response(
        status=code, text=json.dumps(body), content_type="application/json", headers=headers
    )


@dataclass
class Request:
    method: str
    path: str
    fault: str | None
    status: int | None = None  # the API server's answer, when forwarded and answered


def seeded_plan(
    seed: int, faults: tuple[str, ...], rate: float, *, first: bool = False, key=lambda p: p
) -> Callable[[str, str, int], str | None]:
    """A plan for :class:`FaultProxy`: request ``n`` of ``method path`` gets a
    fault with probability ``rate`` (always, for ``n == 0`` if ``first``),
    chosen from ``faults``, both decided by a hash of (seed, method,
    ``key(path)``, n). ``key`` maps a path to what must not change between
    runs (e.g. without a random namespace name)."""

    def plan(method: str, path: str, n: int) -> str | None:
        h = hashlib.sha256(f"{seed} {method} {key(path)} {n}".encode()).digest()
        draw = int.from_bytes(h[:8], "big") / 2**64
        if not (first and n == 0) and draw >= rate:
            return None
        return faults[h[8] % len(faults)]

    return plan


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
        hang_s: float = 15.0,
        seed: int = 0,
        only: Callable[[str, str], bool] | None = None,
        plan: Callable[[str, str, int], str | None] | None = None,
    ):
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
        self.upstream = upstream.rstrip("/")
        self.ca = ca
        self.rate, self.faults, self.slow_s, self.only = rate, faults, slow_s, only
        self.hang_s, self.plan = hang_s, plan
        self.rng = random.Random(seed)
        self.stats: Counter[str] = Counter()
        self.log: list[Request] = []
        self._seen: Counter[tuple[str, str]] = Counter()
        self.held = threading.Event()  # set while a request is held
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
        self._release = asyncio.Event()
        self._server = web.Server(self._handle)
        # Open watches must not hold stop() up for aiohttp's default 60 s.
        self._runner = web.ServerRunner(self._server, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def use_plan(self, plan: Callable[[str, str, int], str | None] | None) -> None:
        """Decide faults by ``plan`` from now on (None: by ``rate``); requests
        are counted afresh, and ``hold`` holds again."""
        done = threading.Event()

        def rearm():
            self._release.clear()
            done.set()

        self._loop.call_soon_threadsafe(rearm)
        done.wait(10)
        self.held.clear()
        self._seen.clear()
        self.plan = plan

    def release(self) -> None:
        """End every held request (closed, never forwarded); hold no more."""
        self.plan = None
        self._loop.call_soon_threadsafe(self._release.set)

    def stop(self) -> None:
        async def _stop():
            self._release.set()
            await self._runner.cleanup()
            await self._session.close()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    # -- requests ---------------------------------------------------------------------------
    def _pick(self, method: str, path: str) -> tuple[str | None, bool]:
        """The fault for this request, and for ``drop`` whether it comes
        before forwarding."""
        if self.only is not None and not self.only(method, path):
            return None, False
        if self.plan is not None:
            n = self._seen[method, path]
            self._seen[method, path] += 1
            return self.plan(method, path, n), n % 2 == 0
        if self.rate <= 0 or not self.faults or self.rng.random() >= self.rate:
            return None, False
        return self.rng.choice(self.faults), self.rng.random() < 0.5

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        fault, early = self._pick(request.method, request.path)
        record = Request(request.method, request.path, fault)
        self.log.append(record)
        self.stats["requests"] += 1
        if fault:
            self.stats[fault] += 1
        if fault == "hold":
            self.held.set()
            await self._release.wait()
            return self._drop(request)
        if fault == "500":
            return _status(500, "InternalError", "fault proxy: injected internal error")
        if fault == "429":
            return _status(429, "TooManyRequests", "fault proxy: injected throttling")
        if fault == "409" and request.method != "POST":
            return _status(409, "Conflict", "fault proxy: injected conflict; please retry")
        if fault == "slow":
            await asyncio.sleep(self.slow_s)
        if fault == "hang":
            await asyncio.sleep(self.hang_s)
        if fault == "drop" and early:
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
        record.status = upstream.status
        if fault == "drop":
            upstream.release()
            return self._drop(request)
        if fault == "reset":
            upstream.release()
            return self._drop(request, reset=True)
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
    def _drop(request: web.BaseRequest, reset: bool = False) -> web.StreamResponse:
        if request.transport is not None:
            sock = request.transport.get_extra_info("socket")
            if reset and sock is not None:
                # Linger 0: closing sends RST instead of FIN.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.transport.abort()
        raise asyncio.CancelledError  # nothing more is written on that connection

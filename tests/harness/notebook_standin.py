"""StandInNotebookServers: a TEST DOUBLE for the notebook container of a pod.

KWOK gives a notebook pod a phase and an IP but runs nothing in it, and the
hub only declares a spawn done once something answers HTTP at that IP. KWOK
here hands out pod IPs from 127.1.0.0/16 (loopback, so reachable on this
machine and nowhere else); this stand-in listens on each running notebook
pod's IP and port and answers every request with 200 and a small JSON body
naming the pod. It does not run Jupyter: what the notebook *would* get (its
``LAB_*`` environment, volumes) the tests read from the pod object.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import threading

import jupyterhub
from aiohttp import web
from kubernetes import client

log = logging.getLogger("stand-in-notebooks")
SELECTOR = "component=singleuser-server"
# The hub compares a single-user server's version with its own.
HEADERS = {"X-JupyterHub-Version": jupyterhub.__version__}


def notebook_port(pod: dict) -> int:
    for c in pod["spec"].get("containers") or []:
        for p in c.get("ports") or []:
            return int(p["containerPort"])
    return 8888


class StandInNotebookServers:
    """Serve every running notebook pod's IP:port until the pod goes away."""

    def __init__(self, api_client: client.ApiClient, interval: float = 0.3):
        self.core = client.CoreV1Api(api_client)
        self.interval = interval
        self.sites: dict[str, web.AppRunner] = {}  # pod uid -> runner
        self.served: dict[str, str] = {}  # pod uid -> "ip:port"
        self.errors: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="stand-in-notebooks")

    def start(self) -> StandInNotebookServers:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        while not self._stop.is_set():
            try:
                await self._round()
            except Exception as e:  # keep serving; a test that needs it will time out
                log.warning("round failed: %s", e)
            await asyncio.sleep(self.interval)
        for uid in list(self.sites):
            await self._close(uid)

    async def _round(self) -> None:
        r = await asyncio.to_thread(
            self.core.list_pod_for_all_namespaces, label_selector=SELECTOR, _preload_content=False
        )
        pods = {p["metadata"]["uid"]: p for p in json.loads(r.data)["items"]}
        for uid in list(self.sites):
            p = pods.get(uid)
            if p is None or p["metadata"].get("deletionTimestamp"):
                await self._close(uid)
        for uid, p in pods.items():
            st = p.get("status") or {}
            ip = st.get("podIP")
            if uid in self.sites or st.get("phase") != "Running" or not ip:
                continue
            if p["metadata"].get("deletionTimestamp") or not ipaddress.ip_address(ip).is_loopback:
                continue
            await self._serve(uid, p, ip)

    async def _serve(self, uid: str, pod: dict, ip: str) -> None:
        name = pod["metadata"]["name"]
        body = json.dumps({"stand-in": "notebook", "pod": name}).encode()

        async def answer(request: web.BaseRequest) -> web.Response:
            return web.Response(body=body, content_type="application/json", headers=HEADERS)

        runner = web.ServerRunner(web.Server(answer), handle_signals=False)
        await runner.setup()
        port = notebook_port(pod)
        try:
            await web.TCPSite(runner, ip, port).start()
        except OSError as e:
            self.errors.append(f"{name} {ip}:{port}: {e}")
            await runner.cleanup()
            return
        self.sites[uid] = runner
        self.served[uid] = f"{ip}:{port}"

    async def _close(self, uid: str) -> None:
        runner = self.sites.pop(uid)
        self.served.pop(uid, None)
        await runner.cleanup()

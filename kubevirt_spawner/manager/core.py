"""The lab manager's work: watch servers, sample VMs, apply abuse rules, reap,
and act on one VM. The HTTP side is in ``handlers``; settings in ``app``.

In memory only: CPU history for the plots (refilled by sampling) and which
VMs are being reset. Check results and flags are in the ``Store``; the
reaper derives everything from the hub's API and what exists each round.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass

import jupyterhub_idle_culler

from . import abuse, localvms, reaper
from .hubclient import HubAPIError, HubClient, servers_of
from .metrics import Metrics
from .reaper import ServerInfo
from .store import Store

log = logging.getLogger("kubevirt_spawner.manager")


class ActionError(Exception):
    """An action that cannot be done; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def backend_of(state: dict) -> str:
    if state.get("rundir"):
        return "local"
    if state.get("vm_name"):
        return "kubevirt"
    return "none"


@dataclass
class Settings:
    """What the manager needs from the app's traits (kept plain for tests)."""

    runtime_root: str
    sample_interval: float = 10
    history_seconds: float = 3600
    idle_timeout: float = 0
    max_age: float = 0
    orphan_grace: float = 120
    cpu_threshold: float = 0.8
    cpu_window: float = 600
    notebook_idle: float = 900
    inspect_interval: float = 60
    miner_names: tuple = abuse.DEFAULT_MINER_NAMES
    mining_ports: tuple = abuse.DEFAULT_MINING_PORTS
    abuse_action: str = "flag"
    reset_timeout: float = 120
    cluster: object = None  # a cluster.Cluster when the KubeVirt backend is in use


class LabManager:
    def __init__(self, hub: HubClient, store: Store, settings: Settings, metrics: Metrics):
        self.hub = hub
        self.store = store
        self.s = settings
        self.metrics = metrics
        self.users: list[dict] = []
        self.servers: list[ServerInfo] = []
        self.refreshed = 0.0
        self.history: dict[str, deque] = {}
        self._last_usage: dict[str, tuple[float, float, int]] = {}
        self.memory: dict[str, int] = {}
        self.resetting: dict[str, int] = {}  # server key -> console offset at reset
        self._inspected: dict[str, float] = {}
        self._seen_pending: dict[str, float] = {}
        self._spawn_recorded: set[tuple[str, str]] = set()
        self._started_at = time.time()

    # -- watching -----------------------------------------------------------
    async def refresh(self) -> None:
        self.users = await self.hub.users()
        servers = servers_of(self.users)
        now = time.time()
        for s in servers:
            if s.pending == "spawn":
                self._seen_pending.setdefault(s.key, now)
            elif s.ready and s.key in self._seen_pending:
                self._record_spawn(s, now)
                self._seen_pending.pop(s.key, None)
        for key in set(self._seen_pending) - {s.key for s in servers}:
            self._seen_pending.pop(key)
        self.servers = servers
        self.refreshed = now
        counts = {"running": 0, "pending": 0}
        vms = {"local": 0, "kubevirt": 0}
        for s in servers:
            counts["pending" if s.pending else "running"] += 1
            if (
                s.ready
                and not s.pending
                and s.state.get("vm_pid" if s.state.get("rundir") else "vm_started")
            ):
                vms[backend_of(s.state)] += 1
        for k, v in counts.items():
            self.metrics.servers.labels(k).set(v)
        for k, v in vms.items():
            self.metrics.running_vms.labels(k).set(v)

    def _record_spawn(self, s: ServerInfo, ready_at: float) -> None:
        """Spawn phases of a server we saw go from pending to ready (local backend):
        the VM phase ends when the notebook process starts (the spawner starts it
        right after the VM answered ssh and gdb)."""
        model = self.server_model(s.user, s.name) or {}
        started = model.get("started")
        nb_pid = s.state.get("pid")
        if backend_of(s.state) != "local" or not (started and nb_pid):
            return
        key = (s.key, started)
        if key in self._spawn_recorded:
            return
        usage = localvms.process_usage(int(nb_pid))
        if usage is None:
            return
        nb_start = localvms.start_epoch(usage[2])
        t0 = _epoch(started)
        self.metrics.spawn_duration.labels("local", "vm").observe(max(0.0, nb_start - t0))
        self.metrics.spawn_duration.labels("local", "notebook").observe(
            max(0.0, ready_at - nb_start)
        )
        self._spawn_recorded.add(key)
        log.info("Spawn of %s: VM %.1fs, notebook %.1fs", s.key, nb_start - t0, ready_at - nb_start)

    def server_model(self, user: str, name: str = "") -> dict | None:
        for u in self.users:
            if u["name"] == user:
                return (u.get("servers") or {}).get(name)
        return None

    def find(self, user: str, name: str = "") -> ServerInfo | None:
        for s in self.servers:
            if s.user == user and s.name == name:
                return s
        return None

    def sample(self, now: float | None = None) -> None:
        """Read CPU time and memory of every local VM; keep an hour of history."""
        now = time.time() if now is None else now
        live = set()
        for s in self.servers:
            if backend_of(s.state) != "local":
                continue
            ident = localvms.vm_of_state(s.state)
            usage = ident and localvms.process_usage(ident.pid)
            if not usage:
                continue
            live.add(s.key)
            cpu_s, rss, start = usage
            prev = self._last_usage.get(s.key)
            self._last_usage[s.key] = (now, cpu_s, start)
            self.memory[s.key] = rss
            self.metrics.vm_memory.labels(s.key).set(rss)
            if prev is None or prev[2] != start or now <= prev[0]:
                continue
            cores = (cpu_s - prev[1]) / (now - prev[0])
            hist = self.history.setdefault(s.key, deque())
            hist.append(abuse.Sample(now, round(cores, 3)))
            while hist and hist[0].time < now - self.s.history_seconds:
                hist.popleft()
            self.metrics.vm_cpu.labels(s.key).set(cores)
        known = {s.key for s in self.servers}
        for key in [k for k in self.history if k not in known and k not in self._last_usage]:
            self.history.pop(key)  # a cluster VM's server is gone
            self.memory.pop(key, None)
        for key in set(self._last_usage) - live:
            self._last_usage.pop(key, None)
            self.history.pop(key, None)
            self.memory.pop(key, None)
            for gauge in (self.metrics.vm_cpu, self.metrics.vm_memory):
                try:
                    gauge.remove(key)
                except KeyError:  # never sampled twice: no CPU value was set
                    pass

    async def sample_cluster(self, now: float | None = None) -> None:
        """CPU and memory of KubeVirt VMs, from metrics.k8s.io (its own averaging window)."""
        if self.s.cluster is None:
            return
        now = time.time() if now is None else now
        usage = await self.s.cluster.vm_usage()
        for s in self.servers:
            vm = s.state.get("vm_name")
            if backend_of(s.state) != "kubevirt" or vm not in usage:
                continue
            cores, mem = usage[vm]
            hist = self.history.setdefault(s.key, deque())
            hist.append(abuse.Sample(now, round(cores, 3)))
            while hist and hist[0].time < now - self.s.history_seconds:
                hist.popleft()
            self.memory[s.key] = mem
            self.metrics.vm_cpu.labels(s.key).set(cores)
            self.metrics.vm_memory.labels(s.key).set(mem)

    # -- abuse ----------------------------------------------------------------
    async def check_abuse(self, now: float | None = None) -> list[tuple[ServerInfo, abuse.Flag]]:
        """Apply the rules to every ready local VM; look inside the VMs that are
        due (several at a time, so a class of 100 does not hold up sampling)."""
        now = time.time() if now is None else now
        servers = [s for s in self.servers
                   if s.ready and not s.pending and backend_of(s.state) in ("local", "kubevirt")]  # fmt: skip
        found: dict[str, list[abuse.Flag]] = {s.key: [] for s in servers}
        for s in servers:
            model = self.server_model(s.user, s.name) or {}
            idle_for = now - _epoch(model["last_activity"]) if model.get("last_activity") else None
            f = abuse.sustained_cpu(
                list(self.history.get(s.key, ())), now, idle_for,
                threshold=self.s.cpu_threshold, window=self.s.cpu_window,
                notebook_idle_min=self.s.notebook_idle,
            )  # fmt: skip
            if f:
                found[s.key].append(f)
        # Looking inside needs the VM's ssh key: local VMs only, so far.
        due = [s for s in servers if backend_of(s.state) == "local"
               and now - self._inspected.get(s.key, 0) >= self.s.inspect_interval]  # fmt: skip
        limit = asyncio.Semaphore(8)

        async def inspect(s: ServerInfo) -> None:
            async with limit:
                self._inspected[s.key] = now
                rc, out = await localvms.ssh_run(s.state, abuse.INSPECT_SCRIPT)
            if rc != 0:
                log.warning("Inspecting the VM of %s failed (%d): %s", s.key, rc, out.strip())
                return
            names, conns = abuse.parse_inspect_output(out)
            for f in (abuse.miner_processes(names, self.s.miner_names),
                      abuse.mining_connections(conns, self.s.mining_ports)):  # fmt: skip
                if f:
                    found[s.key].append(f)

        await asyncio.gather(*(inspect(s) for s in due))
        raised = []
        for s in servers:
            for f in found[s.key]:
                if await self._raise(s, f):
                    raised.append((s, f))
        return raised

    async def _raise(self, s: ServerInfo, f: abuse.Flag) -> bool:
        action = self.s.abuse_action
        if self.store.raise_flag(s.user, s.name, f.rule, f.detail, action) is None:
            return False
        self.metrics.flags.labels(f.rule, action).inc()
        log.warning("Abuse flag on %s: %s: %s (action: %s)", s.key, f.rule, f.detail, action)
        if action == "stop":
            log.warning("Stopping server %s: reason abuse (%s)", s.key, f.rule)
            try:
                await self.hub.stop_server(s.user, s.name)
                self.metrics.reaped.labels("server", reaper.ABUSE).inc()
            except HubAPIError as e:
                log.error("Stopping %s after an abuse flag failed: %s", s.key, e)
        return True

    # -- reaping --------------------------------------------------------------
    async def cull(self) -> list[tuple[str, str]]:
        """Stop idle and over-age servers with jupyterhub-idle-culler; return (server url, reason)."""
        if not (self.s.idle_timeout or self.s.max_age):
            return []
        decided: list[tuple[str, str]] = []

        def arbiter(*, inactive, inactive_limit, server, **_):
            why = reaper.cull_reason(
                inactive, server, jupyterhub_idle_culler.utcnow(),
                self.s.idle_timeout, self.s.max_age,
            )  # fmt: skip
            if why:
                decided.append((server.get("url", "?"), why))
                log.warning("Stopping server %s: reason %s (inactive %s, started %s)",
                            server.get("url"), why, inactive, server.get("started"))  # fmt: skip
                self.metrics.reaped.labels("server", why).inc()
            return why is not None

        await jupyterhub_idle_culler.cull_idle(
            url=self.hub.api_url, api_token=self.hub.token,
            inactive_limit=int(self.s.idle_timeout or 10**9), logger=log,
            max_age=0, cull_arbiter=arbiter, concurrency=5,
        )  # fmt: skip
        return decided

    async def reap_orphans(self) -> list[reaper.Deletion]:
        """Delete what carries our marks but belongs to no server the hub knows."""
        await self.refresh()  # decide on a fresh view of the hub, never a stale one
        servers = list(self.servers)
        vms, procs, dirs = localvms.scan(self.s.runtime_root)
        deletions = reaper.local_orphans(
            servers, vms, procs, dirs, self.s.runtime_root, self.s.orphan_grace
        )
        done = []
        for d in deletions:
            try:
                await localvms.delete(d)
            except Exception as e:  # keep going: one failure must not stop the round
                self.metrics.reaper_errors.inc()
                log.error("Reaper: deleting %s failed: %s", d.log_line(), e)
                continue
            log.warning("Reaper deleted %s", d.log_line())
            self.metrics.reaped.labels(d.kind, d.reason).inc()
            done.append(d)
        if self.s.cluster is not None:
            done += await self.s.cluster.reap(servers, self.s.orphan_grace, self.metrics)
        return done

    async def reap(self) -> None:
        try:
            await self.cull()
            await self.reap_orphans()
        except Exception:
            self.metrics.reaper_errors.inc()
            log.exception("Reaper round failed; the next round starts afresh")

    # -- actions on one VM --------------------------------------------------
    def _server_for_action(self, user: str, name: str = "") -> ServerInfo:
        s = self.find(user, name)
        if s is None:
            raise ActionError(404, f"{user} has no running server")
        if s.pending:
            raise ActionError(409, f"{user}'s server is {s.pending}ing; try again when it is ready")
        return s

    async def reset(self, user: str, name: str = "", wait: bool = False) -> str:
        """Restart the VM afresh on the course kernel (fresh root filesystem)."""
        await self.refresh()
        s = self._server_for_action(user, name)
        backend = backend_of(s.state)
        if backend == "local":
            if localvms.vm_of_state(s.state) is None:
                raise ActionError(409, f"{user}'s VM is not running")
            offset = localvms.console_size(s.state["rundir"])
            try:
                await localvms.qmp(s.state["rundir"], "system_reset")
            except Exception as e:
                raise ActionError(502, f"QEMU's monitor did not take the reset: {e}") from None
            self.resetting[s.key] = offset
            log.info("Reset the VM of %s", s.key)
            if wait:
                ok = await localvms.wait_ssh_ready(s.state["rundir"], offset, self.s.reset_timeout)
                self.resetting.pop(s.key, None)
                if not ok:
                    raise ActionError(504, "the VM did not come back in time")
                return "ready"
            return "resetting"
        if backend == "kubevirt" and self.s.cluster is not None:
            return await self.s.cluster.reset(s, wait=wait, timeout=self.s.reset_timeout)
        raise ActionError(409, f"{user}'s server has no VM to reset")

    async def restart(self, user: str, name: str = "") -> str:
        """Stop the server and start it again (a new VM process and notebook)."""
        await self.refresh()
        self._server_for_action(user, name)
        log.info("Restarting server %s/%s", user, name)
        await self.hub.stop_server(user, name)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            await self.refresh()
            if self.find(user, name) is None:
                break
            await asyncio.sleep(1)
        else:
            raise ActionError(504, "the server did not stop in time")
        await self.hub.start_server(user, name)
        return "starting"

    async def stop(self, user: str, name: str = "") -> str:
        await self.refresh()
        self._server_for_action(user, name)
        log.info("Stopping server %s/%s (instructor action)", user, name)
        await self.hub.stop_server(user, name)
        return "stopping"

    # -- the dashboard's view -------------------------------------------------
    async def vm_state(self, s: ServerInfo) -> str:
        if s.pending:
            return s.pending + "ing"
        backend = backend_of(s.state)
        if backend == "local":
            if localvms.vm_of_state(s.state) is None:
                return "stopped"
            if s.key in self.resetting:
                rd = s.state["rundir"]
                if not await localvms.wait_ssh_ready(rd, self.resetting[s.key], 0.01):
                    return "resetting"
                self.resetting.pop(s.key, None)
            status = await localvms.vm_status(s.state["rundir"])
            return status
        if backend == "kubevirt" and self.s.cluster is not None:
            return await self.s.cluster.vm_state(s)
        return "no VM" if backend == "none" else "unknown"

    async def rows(self) -> list[dict]:
        now = time.time()
        flags: dict[str, list] = {}
        for f in self.store.flags():
            flags.setdefault(f["user"] + (f"/{f['server']}" if f["server"] else ""), []).append(f)
        out = []
        for u in self.users:
            for name, model in (u.get("servers") or {}).items():
                s = self.find(u["name"], name)
                if s is None:
                    continue
                started = model.get("started")
                hist = self.history.get(s.key, ())
                out.append({
                    "user": s.user, "server": s.name, "key": s.key,
                    "backend": backend_of(s.state), "state": await self.vm_state(s),
                    "ready": s.ready, "pending": s.pending,
                    "uptime": now - _epoch(started) if started else None,
                    "last_activity": model.get("last_activity"),
                    "cpu": hist[-1].cpu if hist else None,
                    "memory": self.memory.get(s.key),
                    "history": [[round(h.time), h.cpu] for h in hist],
                    "flags": flags.pop(s.key, []),
                })  # fmt: skip
        return out


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()

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

from . import abuse, reaper
from .backends import ActionError, ManagerBackend, Usage, registered
from .hubclient import HubAPIError, HubClient, servers_of
from .metrics import Metrics
from .reaper import ServerInfo
from .store import Store

log = logging.getLogger("kubevirt_spawner.manager")


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
    reset_timeout: float = 600
    cluster: object = None  # a cluster.Cluster when the KubeVirt backend is in use
    vm_state_dir_template: str = "{home}/.labvm"


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
        self.backends: list[ManagerBackend] = registered(settings)
        self._inspected: dict[str, float] = {}
        self._seen_pending: dict[str, float] = {}
        self._spawn_recorded: set[tuple[str, str]] = set()
        self._started_at = time.time()

    def backend_for(self, s: ServerInfo) -> ManagerBackend | None:
        """The backend whose saved state this server has (None: a server without a VM)."""
        return next((b for b in self.backends if b.owns(s.state)), None)

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
        vms = {b.name: 0 for b in self.backends}
        for s in servers:
            counts["pending" if s.pending else "running"] += 1
            b = self.backend_for(s)
            if b and s.ready and not s.pending and b.has_vm(s.state):
                vms[b.name] += 1
        for k, v in counts.items():
            self.metrics.servers.labels(k).set(v)
        for k, v in vms.items():
            self.metrics.running_vms.labels(k).set(v)

    def _record_spawn(self, s: ServerInfo, ready_at: float) -> None:
        """Spawn phases of a server we saw go from pending to ready, where its
        backend can tell them apart."""
        model = self.server_model(s.user, s.name) or {}
        started, b = model.get("started"), self.backend_for(s)
        key = (s.key, started)
        if not (started and b) or key in self._spawn_recorded:
            return
        phases = b.spawn_phases(s, _epoch(started), ready_at)
        if phases is None:
            return
        vm_s, nb_s = phases
        self.metrics.spawn_duration.labels(b.name, "vm").observe(vm_s)
        self.metrics.spawn_duration.labels(b.name, "notebook").observe(nb_s)
        self._spawn_recorded.add(key)
        log.info("Spawn of %s: VM %.1fs, notebook %.1fs", s.key, vm_s, nb_s)

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

    async def sample(self, now: float | None = None) -> None:
        """Measure every server's VM through its backend; keep an hour of CPU
        history per server. A VM not measured this round loses its series."""
        now = time.time() if now is None else now
        measured: dict[str, Usage] = {}
        for b in self.backends:
            mine = [s for s in self.servers if b.owns(s.state)]
            if mine:
                measured.update(await b.usage(mine))
        for key, u in measured.items():
            self.memory[key] = u.memory
            self.metrics.vm_memory.labels(key).set(u.memory)
            cores = u.cores
            if cores is None and u.cpu_seconds is not None:
                prev = self._last_usage.get(key)
                self._last_usage[key] = (now, u.cpu_seconds, u.start)
                if prev is None or prev[2] != u.start or now <= prev[0]:
                    continue
                cores = (u.cpu_seconds - prev[1]) / (now - prev[0])
            hist = self.history.setdefault(key, deque())
            hist.append(abuse.Sample(now, round(cores, 3)))
            while hist and hist[0].time < now - self.s.history_seconds:
                hist.popleft()
            self.metrics.vm_cpu.labels(key).set(cores)
        for key in (set(self.history) | set(self.memory) | set(self._last_usage)) - set(measured):
            self._last_usage.pop(key, None)
            self.history.pop(key, None)
            self.memory.pop(key, None)
            for gauge in (self.metrics.vm_cpu, self.metrics.vm_memory):
                try:
                    gauge.remove(key)
                except KeyError:  # never sampled twice: no CPU value was set
                    pass

    # -- abuse ----------------------------------------------------------------
    async def check_abuse(self, now: float | None = None) -> list[tuple[ServerInfo, abuse.Flag]]:
        """Apply the rules to every ready local VM; look inside the VMs that are
        due (several at a time, so a class of 100 does not hold up sampling)."""
        now = time.time() if now is None else now
        servers = [s for s in self.servers if s.ready and not s.pending and self.backend_for(s)]
        found: dict[str, list[abuse.Flag]] = {s.key: [] for s in servers}
        for s in servers:
            model = self.server_model(s.user, s.name) or {}
            idle_for = now - _epoch(model["last_activity"]) if model.get("last_activity") else None
            f = abuse.sustained_cpu(
                list(self.history.get(s.key, ())),
                now,
                idle_for,
                threshold=self.s.cpu_threshold,
                window=self.s.cpu_window,
                notebook_idle_min=self.s.notebook_idle,
            )
            if f:
                found[s.key].append(f)
        due = [s for s in servers if now - self._inspected.get(s.key, 0) >= self.s.inspect_interval]
        limit = asyncio.Semaphore(8)

        async def inspect(s: ServerInfo) -> None:
            async with limit:
                self._inspected[s.key] = now
                seen = await self.backend_for(s).inspect(s, abuse.INSPECT_SCRIPT)
            if seen is None:  # this backend cannot look inside its VMs
                return
            rc, out = seen
            if rc != 0:
                log.warning("Inspecting the VM of %s failed (%d): %s", s.key, rc, out.strip())
                return
            names, conns = abuse.parse_inspect_output(out)
            for f in (
                abuse.miner_processes(names, self.s.miner_names),
                abuse.mining_connections(conns, self.s.mining_ports),
            ):
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
                inactive,
                server,
                jupyterhub_idle_culler.utcnow(),
                self.s.idle_timeout,
                self.s.max_age,
            )
            if why == reaper.IDLE:
                self._mark_suspend(server)
            if why:
                decided.append((server.get("url", "?"), why))
                log.warning(
                    "Stopping server %s: reason %s (inactive %s, started %s)",
                    server.get("url"),
                    why,
                    inactive,
                    server.get("started"),
                )
                self.metrics.reaped.labels("server", why).inc()
            return why is not None

        await jupyterhub_idle_culler.cull_idle(
            url=self.hub.api_url,
            api_token=self.hub.token,
            inactive_limit=int(self.s.idle_timeout or 10**9),
            logger=log,
            max_age=0,
            cull_arbiter=arbiter,
            concurrency=5,
        )
        return decided

    def _mark_suspend(self, server: dict) -> None:
        """An idle local server is suspended, not discarded, by the stop that follows
        (LocalVMSpawner.suspend_on_stop decides; `never` discards anyway)."""
        for b in self.backends:
            b.request_suspend(server.get("state") or {})

    # -- suspended VMs (where a backend can suspend) ---------------------------
    def suspended(self) -> list[dict]:
        """Every student's saved VM states, with whether their server runs now."""
        running = {s.user for s in self.servers}
        out = []
        for u in self.users:
            for b in self.backends:
                for st in b.saved_states(u["name"]):
                    out.append({**st, "running": u["name"] in running})
        return out

    async def resume(self, user: str, name: str = "") -> str:
        """Start the student's server: the spawner resumes their suspended VM."""
        await self.refresh()
        saved = [st for b in self.backends for st in b.saved_states(user)]
        states = [s for s in saved if s["restorable"]]
        if not states:
            raise ActionError(404, f"{user} has no suspended VM to resume")
        if self.find(user, name) is not None:
            raise ActionError(409, f"{user}'s server is already running")
        log.info("Resuming the suspended VM of %s (instructor action)", user)
        await self.hub.start_server(user, name)
        return "starting"

    async def discard(self, user: str, state: str) -> str:
        """Delete one of the student's saved VM states (as the student)."""
        await self.refresh()
        owner = next(
            (b for b in self.backends if state in {st["name"] for st in b.saved_states(user)}),
            None,
        )
        if owner is None:
            raise ActionError(404, f"{user} has no saved VM state named {state!r}")
        freed = await owner.discard_state(user, state)
        log.info("Discarded the saved VM state %s of %s (%d bytes)", state, user, freed)
        return "discarded"

    async def reap_orphans(self) -> list[reaper.Deletion]:
        """Delete what carries our marks but belongs to no server the hub knows."""
        await self.refresh()  # decide on a fresh view of the hub, never a stale one
        done = []
        for b in self.backends:
            done += await b.reap(list(self.servers), self.s.orphan_grace, self.metrics)
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

    async def reset(self, user: str, name: str = "", wait: float = 0) -> str:
        """Restart the VM afresh on the course kernel (fresh root filesystem);
        with ``wait`` > 0, answer when it is back (at most that many seconds,
        and never longer than the reset_timeout setting)."""
        await self.refresh()
        s = self._server_for_action(user, name)
        b = self.backend_for(s)
        if b is None:
            raise ActionError(409, f"{user}'s server has no VM to reset")
        result = await b.reset(s, wait=wait > 0, timeout=min(wait, self.s.reset_timeout))
        log.info("Reset the VM of %s: %s", s.key, result)
        return result

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
        b = self.backend_for(s)
        return "no VM" if b is None else await b.vm_state(s)

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
                out.append(
                    {
                        "user": s.user,
                        "server": s.name,
                        "key": s.key,
                        "backend": getattr(self.backend_for(s), "name", "none"),
                        "state": await self.vm_state(s),
                        "ready": s.ready,
                        "pending": s.pending,
                        "uptime": now - _epoch(started) if started else None,
                        "last_activity": model.get("last_activity"),
                        "cpu": hist[-1].cpu if hist else None,
                        "memory": self.memory.get(s.key),
                        "history": [[round(h.time), h.cpu] for h in hist],
                        "flags": flags.pop(s.key, []),
                    }
                )
        return out


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()

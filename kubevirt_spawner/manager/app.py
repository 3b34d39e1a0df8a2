"""``python -m kubevirt_spawner.manager``: the lab manager, a JupyterHub service.

Declare it in the hub's config (kubevirt_spawner.hubconfig.add_lab_manager); the hub
starts it with JUPYTERHUB_API_TOKEN, JUPYTERHUB_API_URL,
JUPYTERHUB_SERVICE_PREFIX and JUPYTERHUB_SERVICE_URL in its environment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import time
from dataclasses import fields
from urllib.parse import urlparse

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.ioloop import PeriodicCallback
from traitlets import Bool, Enum, Float, Integer, List, Unicode, default
from traitlets.config import Application

from . import abuse
from .core import LabManager, Settings
from .handlers import ManagerHubAuth, NotFoundHandler, make_handlers
from .hubclient import HubClient
from .metrics import Metrics
from .store import Store


def _default_data_dir() -> str:
    if os.getuid() == 0:
        return "/var/lib/kubevirt-spawner"
    return os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "kubevirt-spawner"
    )


class LabManagerApp(Application):
    name = "kubevirt-spawner-manager"
    description = """The lab manager: instructors' dashboard, students' VM API,
    live lab progress, reaper of idle, over-age and orphaned lab servers, and
    abuse monitor. Runs as a JupyterHub service (it reads JUPYTERHUB_* from its
    environment)."""

    aliases = {
        "port": "LabManagerApp.port",
        "ip": "LabManagerApp.ip",
        "db": "LabManagerApp.db_path",
        "runtime-root": "LabManagerApp.runtime_root",
        "instructors-group": "LabManagerApp.instructors_group",
        "sample-interval": "LabManagerApp.sample_interval",
        "reap-every": "LabManagerApp.reap_every",
        "idle-timeout": "LabManagerApp.idle_timeout",
        "max-age": "LabManagerApp.max_age",
        "orphan-grace": "LabManagerApp.orphan_grace",
        "cpu-threshold": "LabManagerApp.cpu_threshold",
        "cpu-window": "LabManagerApp.cpu_window",
        "notebook-idle": "LabManagerApp.notebook_idle",
        "inspect-every": "LabManagerApp.inspect_interval",
        "abuse-action": "LabManagerApp.abuse_action",
        "backends": "LabManagerApp.backends",
        "namespace": "LabManagerApp.namespace",
        "config": "LabManagerApp.config_file",
        "log-level": "Application.log_level",
        "token-cache": "LabManagerApp.token_cache_seconds",
    }

    config_file = Unicode("", help="A traitlets config file to load (Python).").tag(config=True)
    ip = Unicode(
        "127.0.0.1", help="Address to listen on (default: from JUPYTERHUB_SERVICE_URL)."
    ).tag(config=True)
    port = Integer(0, help="Port to listen on. 0: from JUPYTERHUB_SERVICE_URL, else 10101.").tag(
        config=True
    )
    db_path = Unicode(
        help="""SQLite file for check results and abuse flags (created if missing).
        Default: /var/lib/kubevirt-spawner/lab-manager.sqlite as root, else under
        $XDG_DATA_HOME."""
    ).tag(config=True)

    @default("db_path")
    def _default_db(self):
        return os.path.join(_default_data_dir(), "lab-manager.sqlite")

    runtime_root = Unicode(
        help="""LocalVMSpawner.runtime_root of the hub: where the reaper looks
        for orphaned runtime directories and VMs. Default: as LocalVMSpawner's."""
    ).tag(config=True)

    @default("runtime_root")
    def _default_runtime_root(self):
        from ..local.settings import default_runtime_root

        return default_runtime_root()

    backends = List(
        Unicode(),
        ["local"],
        help="""Backends to manage: 'local' (LocalVMSpawner) and/or 'kubevirt'
        (KubeVirtSpawner: needs in-cluster credentials or KUBECONFIG).""",
    ).tag(config=True)
    namespace = Unicode(
        "", help="Kubernetes namespace of the lab objects (kubevirt backend). Default: the pod's."
    ).tag(config=True)
    instructors_group = Unicode(
        "instructors",
        help="Hub group whose members may use the dashboard (hub admins always may).",
    ).tag(config=True)
    metrics_require_auth = Bool(
        True,
        help="""Require an instructor's login or token for /metrics. Prometheus
        can scrape with a hub API token (bearer) of an admin or instructor.""",
    ).tag(config=True)
    max_body_bytes = Integer(
        64 * 1024, help="Largest request body accepted (bytes); larger gets 413."
    ).tag(config=True)
    token_cache_seconds = Integer(
        0,
        help="""How long the hub's answer about a token is trusted before asking
        again. 0 (default): every request asks the hub, so the token of a server
        that was stopped or deleted (the hub revokes it) is refused at once;
        JupyterHub's own default of 300 s would let it act on the VM for five
        more minutes. One hub API call per student request.""",
    ).tag(config=True)

    sample_interval = Float(
        10.0, help="Seconds between CPU/memory samples of each VM (and dashboard refreshes)."
    ).tag(config=True)
    reset_timeout = Float(
        600.0,
        help="""The longest a student's `labvm reset` (or a reset asked for with
        ?wait) waits here for the fresh VM to answer before it is told to check
        `labvm status` (seconds). Locally a reset takes seconds; on a cluster it
        is a new VirtualMachineInstance: tens of seconds with KVM, minutes under
        emulation on a busy node.""",
    ).tag(config=True)
    reap_every = Float(
        60.0, help="Seconds between reaper rounds (idle/max-age culling and orphan removal)."
    ).tag(config=True)
    vm_state_dir_template = Unicode(
        "{home}/.labvm",
        help="""LocalVMSpawner.vm_state_dir_template of the hub: where students'
        suspended VMs are listed from (and discarded, as the student). An idle
        server this manager culls is suspended there, not discarded, unless the
        spawner's suspend_on_stop is `never`.""",
    ).tag(config=True)
    idle_timeout = Integer(
        3600,
        help="""Stop servers idle (no activity the hub saw) for this many seconds,
        via jupyterhub-idle-culler. 0: never for idleness.""",
    ).tag(config=True)
    max_age = Integer(
        8 * 3600, help="Stop servers older than this many seconds, even if active. 0: no limit."
    ).tag(config=True)
    orphan_grace = Float(
        120.0,
        help="""Leave VMs, processes and directories younger than this many
        seconds alone even if no server claims them (a spawn may be under way).""",
    ).tag(config=True)

    cpu_threshold = Float(
        0.8,
        help="""Abuse: CPU (in cores; 1.0 = one core busy) a VM must use for the
        whole cpu_window while its notebook is idle to be flagged.""",
    ).tag(config=True)
    cpu_window = Float(600.0, help="Abuse: seconds the CPU must stay above the threshold.").tag(
        config=True
    )
    notebook_idle = Float(
        900.0,
        help="""Abuse: seconds without notebook activity (as the hub saw it)
        before sustained CPU counts; a student at work is never flagged for CPU.
        The hub hears of activity every JUPYTERHUB_ACTIVITY_INTERVAL seconds
        (300 by default, a Spawner.environment setting): keep this well above
        that, or a student busy in a terminal looks idle.""",
    ).tag(config=True)
    inspect_interval = Float(
        60.0,
        help="Abuse: seconds between looks inside each VM (process names, TCP connections; ssh).",
    ).tag(config=True)
    miner_names = List(
        Unicode(), list(abuse.DEFAULT_MINER_NAMES), help="Abuse: process names of known miners."
    ).tag(config=True)
    mining_ports = List(
        Integer(), list(abuse.DEFAULT_MINING_PORTS), help="Abuse: TCP ports of mining pools."
    ).tag(config=True)
    abuse_action = Enum(
        ["flag", "stop"],
        "flag",
        help="""What a flag does: 'flag' only shows it on the dashboard; 'stop'
        also stops the student's server (the flag stays on the dashboard).""",
    ).tag(config=True)

    _instructor_cache: dict

    def initialize(self, argv=None):
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)
        self._instructor_cache = {}
        prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/lab-manager/")
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", ""))
        if not self.port:
            self.port = url.port or 10101
        if url.hostname and "ip" not in self.config.get("LabManagerApp", {}):
            self.ip = url.hostname
        api_url = os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")
        token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        self.hub = HubClient(api_url, token)
        cluster = None
        if "kubevirt" in self.backends:
            from .backends.kubevirt import Cluster

            cluster = Cluster(self.namespace)
        # Every Settings field is one of this app's traits of the same name.
        traits = {f.name: getattr(self, f.name) for f in fields(Settings) if self.has_trait(f.name)}
        self.settings = Settings(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in traits.items()},
            cluster=cluster,
        )
        # The OAuth/token helper every handler shares (HubOAuthenticated).
        ManagerHubAuth.instance().cache_max_age = self.token_cache_seconds
        self.metrics = Metrics()
        self.store = Store(self.db_path)
        self.manager = LabManager(self.hub, self.store, self.settings, self.metrics)

    async def is_instructor(self, name: str) -> bool:
        """Hub admin or member of instructors_group (asked of the hub, cached 10 s)."""
        hit = self._instructor_cache.get(name)
        if hit and time.monotonic() - hit[1] < 10:
            return hit[0]
        user = await self.hub.user(name)
        ok = bool(user) and (user.get("admin") or self.instructors_group in user.get("groups", []))
        self._instructor_cache[name] = (ok, time.monotonic())
        return ok

    def make_app(self) -> web.Application:
        return web.Application(
            make_handlers(self.prefix, self.manager, self),
            cookie_secret=secrets.token_bytes(32),
            default_handler_class=NotFoundHandler,
            log_function=self._log_request,
        )

    def _log_request(self, handler):
        status = handler.get_status()
        level = logging.INFO if status < 400 else logging.WARNING
        if handler.request.path.endswith(("/api/vms", "/health")) and status < 400:
            level = logging.DEBUG
        self.log.log(
            level,
            "%d %s %s %.1fms",
            status,
            handler.request.method,
            handler.request.uri,
            1000 * handler.request.request_time(),
        )

    async def _tick(self) -> None:
        """Refresh from the hub, sample VMs, apply abuse rules."""
        try:
            await self.manager.refresh()
            await self.manager.sample()
            await self.manager.check_abuse()
        except Exception:
            self.log.exception("Monitoring round failed")

    async def run(self) -> None:
        logging.getLogger("kubevirt_spawner").setLevel(self.log_level)
        for h in self.log.handlers:
            logging.getLogger("kubevirt_spawner").addHandler(h)
        # Handlers stream bodies and refuse oversized ones with a 413 themselves;
        # past this hard cap tornado drops the connection (a 503 via the proxy).
        server = HTTPServer(self.make_app(), max_body_size=256 << 20)
        server.listen(self.port, self.ip)
        self.log.info(
            "Lab manager on http://%s:%d%s (backends: %s)",
            self.ip,
            self.port,
            self.prefix,
            ", ".join(self.backends),
        )
        await self._tick()
        PeriodicCallback(self._tick, 1000 * self.sample_interval).start()
        if self.reap_every > 0:
            asyncio.get_running_loop().call_later(
                1, lambda: asyncio.ensure_future(self.manager.reap())
            )
            PeriodicCallback(self.manager.reap, 1000 * self.reap_every).start()
        await asyncio.Event().wait()

    def start(self):
        # Started from a background job (`nohup`, `&` in a script) it would
        # inherit SIGINT ignored, and the hub stops services with SIGINT
        # (kubevirt_spawner.hubchild does the same for what it starts).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            asyncio.run(self.run())
        except KeyboardInterrupt:
            # The hub stops its services with SIGINT: an orderly end, not a traceback.
            self.log.info("Lab manager stopped (SIGINT)")


def main(argv=None) -> None:
    app = LabManagerApp()
    app.initialize(argv)
    app.start()

"""A real, throwaway Kubernetes control plane on loopback, for tests.

etcd, kube-apiserver (client certificates + ServiceAccount tokens, RBAC),
kube-controller-manager (garbage collector, namespace and ServiceAccount
controllers, ...), kube-scheduler and KWOK (which plays the kubelet: nodes
turn Ready, scheduled pods get a phase and an IP). Binaries come from
``scripts/build-cluster-bins.sh``; nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import ctypes
import os
import signal
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from harness.hubctl import free_port
from harness.pki import CertificateAuthority, CertPair, write_service_account_keys

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts/build-cluster-bins.sh"
SERVICE_CIDR = "10.96.0.0/16"
# Pod IPs on loopback: reachable from this machine only, so the hub can talk to
# StandInNotebookServers at a notebook pod's IP (see notebook_standin.py).
POD_CIDR = "127.1.0.0/16"
ISSUER = "https://kubernetes.default.svc.cluster.local"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"


class ControlPlaneError(RuntimeError):
    pass


def cluster_bins() -> Path:
    """Build (or find in the cache) the pinned binaries; fail loudly if that fails."""
    proc = subprocess.run(
        [str(BUILD_SCRIPT)], cwd=REPO, stdout=subprocess.PIPE, stderr=None, text=True
    )
    if proc.returncode != 0:
        raise ControlPlaneError(
            f"{BUILD_SCRIPT.name} exited {proc.returncode}: the cluster tests need "
            "etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok "
            "(see its stderr above)"
        )
    path = Path(proc.stdout.strip().splitlines()[-1])
    if not (path / ".complete").is_file():
        raise ControlPlaneError(f"{BUILD_SCRIPT.name} printed {path}, which is incomplete")
    return path


def die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the test process dies, even by SIGKILL,
    so no control plane outlives an interrupted run (Linux prctl PR_SET_PDEATHSIG)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def write_kubeconfig(
    path: Path,
    server: str,
    ca: Path | None,
    *,
    user: str,
    cert: CertPair | None = None,
    token: str | None = None,
) -> Path:
    """A one-context kubeconfig (JSON is valid YAML) for client cert or bearer token."""
    import json

    creds: dict = {}
    if cert:
        creds = {"client-certificate": str(cert.cert), "client-key": str(cert.key)}
    if token:
        creds["token"] = token
    cluster = {"server": server}
    if ca is not None:
        cluster["certificate-authority"] = str(ca)
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
        "current-context": "test",
    }
    path.write_text(json.dumps(doc, indent=1))
    path.chmod(0o600)
    return path


COMMON_FLAGS = ("--leader-elect=false", "--bind-address=127.0.0.1", "--profiling=false", "--v=1")


@dataclass
class LocalControlPlane:
    """Start with :meth:`start`, stop with :meth:`stop`; logs in ``workdir/logs``."""

    bins: Path
    workdir: Path
    nodes: int = 2
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self):
        self.pki = self.workdir / "pki"
        self.logs = self.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.etcd_port, self.etcd_peer = free_port(), free_port()
        self.api_port = free_port()
        self.server = f"https://127.0.0.1:{self.api_port}"

    # -- set-up -----------------------------------------------------------------
    def _certs(self) -> None:
        ca = CertificateAuthority(self.pki)
        self.ca = ca.cert_path
        self.serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            ip_addresses=("127.0.0.1", "10.96.0.1"),
            server=True,
        )
        self.sa_keys = write_service_account_keys(self.pki)
        # Client identities: the names RBAC's bootstrap policy binds roles to.
        self.admin_cert = ca.issue("admin", "kvs-admin", organization="system:masters", client=True)
        kcm = ca.issue("kcm", "system:kube-controller-manager", client=True)
        sched = ca.issue("scheduler", "system:kube-scheduler", client=True)
        # KWOK acts for every kubelet; the admin group keeps its RBAC out of the tests.
        kwok = ca.issue("kwok", "kwok-controller", organization="system:masters", client=True)
        self.ca_authority = ca
        kc = self.workdir / "kubeconfigs"
        kc.mkdir(exist_ok=True)
        self.admin_kubeconfig = write_kubeconfig(
            kc / "admin", self.server, self.ca, user="admin", cert=self.admin_cert
        )
        self._kcm_kubeconfig = write_kubeconfig(
            kc / "kcm", self.server, self.ca, user="kcm", cert=kcm
        )
        self._sched_kubeconfig = write_kubeconfig(
            kc / "scheduler", self.server, self.ca, user="scheduler", cert=sched
        )
        self._kwok_kubeconfig = write_kubeconfig(
            kc / "kwok", self.server, self.ca, user="kwok", cert=kwok
        )

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.logs / f"{name}.log", "ab")
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.workdir)}
        self.procs[name] = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.workdir,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        log.close()

    def log_tail(self, name: str, lines: int = 40) -> str:
        try:
            text = (self.logs / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return f"({name}: no log)"
        return f"--- {name}.log (last {lines} lines) ---\n" + "\n".join(text.splitlines()[-lines:])

    def _wait(self, name: str, probe, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise ControlPlaneError(f"{name} exited {proc.returncode}\n{self.log_tail(name)}")
            try:
                if probe():
                    return
            except Exception as e:  # the probe's error is only kept for the message
                last = e
            time.sleep(0.2)
        raise ControlPlaneError(f"{name} not ready in {timeout}s ({last})\n{self.log_tail(name)}")

    def _https_get(self, url: str) -> tuple[int, str]:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.load_cert_chain(str(self.admin_cert.cert), str(self.admin_cert.key))
        with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
            return r.status, r.read().decode()

    # -- lifecycle ----------------------------------------------------------------
    def start(self, timeout: float = 120) -> LocalControlPlane:
        t0 = time.monotonic()
        self._certs()
        b = self.bins
        # etcd's data is disposable: keep it in memory and skip fsync.
        data = Path("/dev/shm") if Path("/dev/shm").is_dir() else self.workdir
        for stale in data.glob("kvs-etcd-*-*"):  # left by a run that was killed
            if not Path(f"/proc/{stale.name.split('-')[2]}").exists():
                subprocess.run(["rm", "-rf", str(stale)], check=False)
        self.etcd_dir = Path(os.path.join(data, f"kvs-etcd-{os.getpid()}-{self.api_port}"))
        etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{self.etcd_peer}"
        self._spawn(
            "etcd",
            [
                str(b / "etcd"),
                "--name=test",
                f"--data-dir={self.etcd_dir}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=test={peer_url}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait(
            "etcd",
            lambda: urllib.request.urlopen(f"{etcd_url}/health", timeout=2).status == 200,
            30,
        )

        self._spawn(
            "kube-apiserver",
            [
                str(b / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                "--advertise-address=127.0.0.1",
                # The 'kubernetes' Service's endpoints would be 127.0.0.1, which
                # Endpoints validation rejects; nothing here needs them.
                "--endpoint-reconciler-type=none",
                f"--tls-cert-file={self.serving.cert}",
                f"--tls-private-key-file={self.serving.key}",
                f"--client-ca-file={self.ca}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={ISSUER}",
                f"--service-account-signing-key-file={self.sa_keys.key}",
                f"--service-account-key-file={self.sa_keys.cert}",
                f"--api-audiences={ISSUER}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--cert-dir={self.pki}",
                # 100 hubs' worth of spawns through one process on 2 cores.
                "--max-requests-inflight=800",
                "--max-mutating-requests-inflight=400",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._wait(
            "kube-apiserver", lambda: self._https_get(f"{self.server}/readyz")[0] == 200, timeout
        )

        self._start_controller_manager()
        self._spawn(
            "kube-scheduler",
            [
                str(b / "kube-scheduler"),
                f"--kubeconfig={self._sched_kubeconfig}",
                f"--secure-port={free_port()}",
                *COMMON_FLAGS,
            ],
        )
        self._spawn(
            "kwok",
            [
                str(b / "kwok"),
                f"--kubeconfig={self._kwok_kubeconfig}",
                f"--config={b / 'kwok-stages.yaml'}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                f"--cidr={POD_CIDR}",
                "--node-ip=10.0.0.1",
                f"--server-address=127.0.0.1:{free_port()}",
                "--node-lease-duration-seconds=0",
            ],
        )
        self.started_in = time.monotonic() - t0
        return self

    def _start_controller_manager(self, disabled: tuple[str, ...] = ()) -> None:
        self.kcm_port = free_port()
        # KWOK's nodes only send heartbeats KWOK fakes; and nodes this harness
        # keeps without any kubelet (see StandInKubeVirtController) must not be
        # tainted and their pods evicted mid-test.
        off = [
            "node-lifecycle-controller",
            "node-ipam-controller",
            "cloud-node-lifecycle-controller",
            *disabled,
        ]
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bins / "kube-controller-manager"),
                f"--kubeconfig={self._kcm_kubeconfig}",
                f"--secure-port={self.kcm_port}",
                *COMMON_FLAGS,
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={self.sa_keys.key}",
                f"--root-ca-file={self.ca}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--controllers=" + ",".join(["*", *(f"-{c}" for c in off)]),
                "--concurrent-gc-syncs=10",
                "--kube-api-qps=100",
                "--kube-api-burst=200",
            ],
        )
        self.kcm_disabled = tuple(disabled)

    def restart_controller_manager(self, disabled: tuple[str, ...] = ()) -> None:
        """Restart kube-controller-manager with the ``disabled`` controllers off
        too (e.g. ``garbage-collector-controller``); ``()`` restores the usual set.
        Returns once the new one answers /healthz."""
        old = self.procs.pop("kube-controller-manager")
        if old.poll() is None:
            os.killpg(old.pid, signal.SIGTERM)
            try:
                old.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(old.pid, signal.SIGKILL)
                old.wait()
        self._start_controller_manager(disabled)
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # its own self-signed cert
        url = f"https://127.0.0.1:{self.kcm_port}/healthz"
        self._wait(
            "kube-controller-manager",
            lambda: urllib.request.urlopen(url, context=ctx, timeout=2).status == 200,
            60,
        )

    def stop(self) -> None:
        """Stop every component, newest first; SIGTERM, then SIGKILL after 10 s."""
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if getattr(self, "etcd_dir", None) is not None:
            subprocess.run(["rm", "-rf", str(self.etcd_dir)], check=False)

    def dead_components(self) -> dict[str, int]:
        return {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}

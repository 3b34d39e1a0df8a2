"""A real JupyterHub with KubeVirtSpawner inside the real KubeVirt test cluster.

The hub process runs in the node's network namespace (``nsenter --net``), as
a hub inside a cluster runs in its pod network: it reaches notebook pods at
their pod IPs and the API server at the node address, and notebook pods
reach it at the node address (``hub_connect_url``). The test process talks
to it through a :class:`nodens.Forwarder` on the same 127.0.0.1 port.
The hub's only Kubernetes credentials are a ServiceAccount token bound to
hub-config/rbac.yaml's Role plus Zero to JupyterHub's hub Role.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from harness import kubehub
from harness.kubehub import KubeHub
from harness.kvnode import NODE_IP

REPO = Path(__file__).resolve().parents[2]
MANAGER_SERVICE = REPO / "hub-config" / "manager_service.py"
VMLINUX = "/opt/lab/kernels/debian-12/x86_64/vmlinux"
KDIR = "/opt/lab/kernels/debian-12/x86_64/build"


class NodeHub(KubeHub):
    """hubctl.Hub started inside the node's network namespace."""

    netns: str = ""
    dialer = None
    forwarder = None

    def start(self, timeout: float = 90) -> NodeHub:
        from harness import nodens

        cfg = self.write_config()
        if self.forwarder is None:
            self.forwarder = nodens.Forwarder(
                self.port, lambda: self.dialer.connect("127.0.0.1", self.port)
            )
        log = open(self.log_path, "ab")
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "KUBECONFIG": str(self.kubeconfig),
        }
        self.proc = subprocess.Popen(
            [
                "nsenter",
                f"--net={self.netns}",
                "--",
                sys.executable,
                "-m",
                "jupyterhub",
                "-f",
                str(cfg),
            ],
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/hub/api/", timeout=3).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"hub did not answer in {timeout}s:\n{self.log_tail()}")

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> None:
        super().stop(sig, timeout)

    def close(self) -> None:
        self.stop()
        if self.forwarder is not None:
            self.forwarder.stop()
            self.forwarder = None


def node_hub(
    workdir: Path,
    namespace: str,
    kubeconfig: Path,
    netns: str,
    dialer,
    *,
    notebook_image: str,
    vm_images: dict,
    start_timeout: int = 600,
    manager_kubeconfig: Path | None = None,
    extra: str = "",
) -> NodeHub:
    """A hub for KubeVirtSpawner in ``namespace`` of the real cluster (not started)."""
    hub = NodeHub(workdir)
    hub.kubeconfig = kubeconfig
    hub.netns = netns
    hub.dialer = dialer
    manager = ""
    if manager_kubeconfig is not None:
        mport = hub.api_port + 1 if hub.api_port < 65000 else hub.api_port - 1
        manager = f"""
lab_manager = __import__("runpy").run_path({str(MANAGER_SERVICE)!r})
lab_manager["add_lab_manager"](
    c, port={mport}, ip={NODE_IP!r}, public_host={NODE_IP!r},
    notebook_url="http://{NODE_IP}:{hub.port}/services/lab-manager/",
    args=["--backends=kubevirt", "--namespace={namespace}", "--db={workdir}/lab-manager.sqlite",
          "--reap-every=3600", "--sample-interval=3600", "--inspect-every=3600"],
    environment={{"KUBECONFIG": {str(manager_kubeconfig)!r}}},
)
"""
    hub.extra_config = f"""
c.JupyterHub.spawner_class = "kubevirt"
# In the node's network namespace: the proxy and the hub API listen where
# notebook pods reach them (the node address).
c.JupyterHub.ip = ""
c.JupyterHub.hub_ip = "0.0.0.0"
c.JupyterHub.hub_connect_url = "http://{NODE_IP}:{hub.hub_port}"
c.KubeSpawner.namespace = {namespace!r}
c.KubeSpawner.image = {notebook_image!r}
c.KubeSpawner.image_pull_policy = "IfNotPresent"
c.KubeSpawner.cmd = ["jupyterhub-singleuser"]
c.KubeSpawner.start_timeout = {start_timeout}
c.KubeSpawner.http_timeout = 300
c.KubeSpawner.delete_grace_period = 1
c.KubeSpawner.k8s_api_request_timeout = 10
c.KubeSpawner.k8s_api_request_retry_timeout = 60
c.KubeVirtSpawner.vm_delete_timeout = 180
c.KubeVirtSpawner.vm_cpus = 1
c.KubeVirtSpawner.vm_memory = "1Gi"
c.KubeVirtSpawner.vm_images = {vm_images!r}
c.KubeVirtSpawner.vm_image = "debian-12"
{manager}
{extra}
"""
    return hub


# The real tier's hubs and their credentials (tests and bench_kubevirt.py).
def vm_images(images: dict) -> dict:
    entry = {"vmlinux": VMLINUX, "kdir": KDIR}
    return {"debian-12": {"containerdisk": {"x86_64": images["vm-debian"]}, **entry}}


def node_kubeconfig(rc, ns, sa, path):
    """A kubeconfig with ``ns/sa``'s token that works inside the node's
    network (the node address)."""
    from harness.controlplane import write_kubeconfig
    from harness.kvnode import API_PORT, NODE_IP

    token = rc.kube.service_account_token(ns, sa, seconds=6 * 3600)
    return write_kubeconfig(
        path,
        f"https://{NODE_IP}:{API_PORT}",
        rc.node.state / "pki" / "ca.crt",
        user=sa,
        token=token,
    )


def hub_kubeconfig(rc, ns, path):
    """The hub's: hub-config/rbac.yaml's Role (with z2jh's hub Role)."""
    return node_kubeconfig(rc, ns, kubehub.apply_rbac(rc.kube, ns), path)


def manager_kubeconfig(rc, ns, path):
    """The lab manager's: exactly hub-config/manager-rbac.yaml's Role."""
    return node_kubeconfig(rc, ns, kubehub.apply_manager_rbac(rc.kube, ns), path)

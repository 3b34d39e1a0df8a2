"""A real JupyterHub with KubeVirtSpawner against the test cluster.

The hub authenticates as a ServiceAccount bound to hub-config/rbac.yaml's
Role (nothing more), optionally through the FaultProxy. Notebook pods get
their answer from StandInNotebookServers (see notebook_standin.py).
"""

from __future__ import annotations

import copy
import os
import signal
import time
from pathlib import Path

import yaml

from harness.hubctl import Hub
from harness.kube import KV, Cluster, get_or_none

REPO = Path(__file__).resolve().parents[2]
RBAC_YAML = Path(os.environ.get("KVS_HUB_RBAC", REPO / "hub-config/rbac.yaml"))
MANAGER_RBAC_YAML = REPO / "hub-config/manager-rbac.yaml"
MANAGED = "app.kubernetes.io/managed-by=kubevirt-spawner"


def rbac_documents(path: Path = RBAC_YAML) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: its Role is part of the cluster backend")
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# rbac.yaml is the Role KubeVirtSpawner needs *on top of* the hub Role that
# Zero to JupyterHub's chart gives the hub (templates/hub/rbac.yaml there):
# these two rules. The tests grant the hub both and nothing else.
Z2JH_HUB_RULES = [
    {
        "apiGroups": [""],
        "resources": ["pods", "persistentvolumeclaims", "secrets", "services"],
        "verbs": ["get", "watch", "list", "create", "delete"],
    },
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "watch", "list"]},
]


def apply_rbac(cluster: Cluster, namespace: str) -> str:
    """Grant the hub's ServiceAccount z2jh's hub Role plus rbac.yaml's Role in
    ``namespace``; return the ServiceAccount's name."""
    docs = rbac_documents()
    sa_name = next(
        (
            s["name"]
            for d in docs
            if d["kind"] == "RoleBinding"
            for s in d.get("subjects") or []
            if s.get("kind") == "ServiceAccount"
        ),
        "hub",
    )
    cluster.rbac.create_namespaced_role(
        namespace, {"metadata": {"name": "z2jh-hub"}, "rules": Z2JH_HUB_RULES}
    )
    cluster.rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "z2jh-hub"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "z2jh-hub",
            },
            "subjects": [{"kind": "ServiceAccount", "name": sa_name, "namespace": namespace}],
        },
    )
    return apply_role_documents(cluster, namespace, docs, RBAC_YAML.name)


def apply_manager_rbac(cluster: Cluster, namespace: str) -> str:
    """Apply hub-config/manager-rbac.yaml in ``namespace``; return its ServiceAccount."""
    docs = rbac_documents(MANAGER_RBAC_YAML)
    return apply_role_documents(cluster, namespace, docs, MANAGER_RBAC_YAML.name)


def apply_role_documents(cluster: Cluster, namespace: str, docs: list[dict], what: str) -> str:
    """Create a file's ServiceAccount, Role and RoleBinding in ``namespace``
    (nothing cluster-wide may be in it); return the ServiceAccount's name."""
    sa_name = None
    for doc in docs:
        doc = copy.deepcopy(doc)
        kind = doc["kind"]
        doc["metadata"]["namespace"] = namespace
        if kind == "ServiceAccount":
            sa_name = doc["metadata"]["name"]
            cluster.core.create_namespaced_service_account(namespace, doc)
        elif kind == "Role":
            cluster.rbac.create_namespaced_role(namespace, doc)
        elif kind == "RoleBinding":
            for s in doc.get("subjects") or []:
                if s.get("kind") == "ServiceAccount":
                    s["namespace"] = namespace
                    sa_name = sa_name or s["name"]
            cluster.rbac.create_namespaced_role_binding(namespace, doc)
        else:
            raise ValueError(f"{what} has a {kind}; only namespaced RBAC is expected there")
    if not sa_name:
        raise ValueError(f"{what} binds its Role to no ServiceAccount")
    if get_or_none(cluster.core.read_namespaced_service_account, sa_name, namespace) is None:
        cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": sa_name}})
    return sa_name


class KubeHub(Hub):
    """hubctl.Hub whose process gets ``KUBECONFIG`` (kubernetes_asyncio reads it at import)."""

    kubeconfig: Path | None = None

    def start(self, timeout: float = 60) -> KubeHub:
        old = os.environ.get("KUBECONFIG")
        os.environ["KUBECONFIG"] = str(self.kubeconfig)
        try:
            return super().start(timeout)
        finally:
            if old is None:
                del os.environ["KUBECONFIG"]
            else:
                os.environ["KUBECONFIG"] = old


def kube_hub(
    workdir: Path, namespace: str, kubeconfig: Path, *, start_timeout: int = 60, extra: str = ""
) -> KubeHub:
    """A hub configured for KubeVirtSpawner in ``namespace`` (not started); its
    only credentials are ``kubeconfig`` (a ServiceAccount token)."""
    hub = KubeHub(workdir)
    hub.kubeconfig = kubeconfig
    hub.extra_config = f"""
c.JupyterHub.spawner_class = "kubevirt"
c.JupyterHub.hub_connect_url = "http://127.0.0.1:{hub.hub_port}"
c.KubeSpawner.namespace = {namespace!r}
c.KubeSpawner.image = "quay.io/jupyter/minimal-notebook:2025-06-02"
c.KubeSpawner.start_timeout = {start_timeout}
c.KubeSpawner.http_timeout = 30
c.KubeSpawner.delete_grace_period = 1
c.KubeSpawner.k8s_api_request_timeout = 10
c.KubeSpawner.k8s_api_request_retry_timeout = 60
c.KubeVirtSpawner.vm_delete_timeout = 90
c.KubeVirtSpawner.vm_memory = "256Mi"
{extra}
"""
    return hub


def kill_hub(hub: Hub) -> None:
    """SIGKILL the hub and its proxy: no cleanup code runs."""
    if hub.proc and hub.proc.poll() is None:
        os.killpg(hub.proc.pid, signal.SIGKILL)
        hub.proc.wait()


def leftovers(cluster: Cluster, namespace: str) -> dict[str, list[str]]:
    """Everything the spawner (or KubeVirt for it) may have left in ``namespace``."""
    out = {
        "vms": [
            o["metadata"]["name"]
            for o in cluster.custom.list_namespaced_custom_object(
                *KV, namespace, "virtualmachines"
            )["items"]
        ],
        "vmis": [
            o["metadata"]["name"]
            for o in cluster.custom.list_namespaced_custom_object(
                *KV, namespace, "virtualmachineinstances"
            )["items"]
        ],
        "pods": [p.metadata.name for p in cluster.core.list_namespaced_pod(namespace).items],
        "services": [
            o.metadata.name for o in cluster.core.list_namespaced_service(namespace).items
        ],
        "networkpolicies": [
            o.metadata.name
            for o in cluster.networking.list_namespaced_network_policy(namespace).items
        ],
        "secrets": [
            o.metadata.name
            for o in cluster.core.list_namespaced_secret(namespace, label_selector=MANAGED).items
        ],
    }
    return {k: v for k, v in out.items() if v}


def wait_nothing_left(cluster: Cluster, namespace: str, timeout: float = 90) -> None:
    """Wait until :func:`leftovers` is empty; fail naming what is still there."""
    deadline = time.monotonic() + timeout
    while True:
        left = leftovers(cluster, namespace)
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"left behind after {timeout}s: {left}")
        time.sleep(0.5)

"""Small helpers the cluster tests share: clients, waits with deadlines, tokens."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.rest import ApiException

T = TypeVar("T")
KV = ("kubevirt.io", "v1")


def wait_for(what: str, fn: Callable[[], T], timeout: float = 30, interval: float = 0.2) -> T:
    """Call ``fn`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except ApiException as e:
            last = f"{e.status} {e.reason}"
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def wait_gone(what: str, fn: Callable[[], Any], timeout: float = 60) -> float:
    """Wait until ``fn()`` reads nothing (None or an empty list); return the seconds taken."""
    start = time.monotonic()
    wait_for(what + " gone", lambda: not fn(), timeout=timeout)
    return time.monotonic() - start


def get_or_none(fn: Callable[..., T], *args, **kw) -> T | None:
    try:
        return fn(*args, **kw)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def status_of(fn: Callable[..., Any], *args, **kw) -> int:
    """HTTP status a call ends with (200 when it succeeds)."""
    try:
        fn(*args, **kw)
        return 200
    except ApiException as e:
        return e.status


def selector_string(selector: dict) -> str:
    """A LabelSelector (matchLabels/matchExpressions) as the API's ``labelSelector`` query."""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for e in selector.get("matchExpressions") or []:
        op, key, vals = e["operator"], e["key"], e.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(vals)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(vals)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
        else:
            raise ValueError(f"unknown selector operator {op!r}")
    return ",".join(parts)


@dataclass
class Cluster:
    """Where the tests run: our local control plane, or the one ``KUBECONFIG`` names."""

    kubeconfig: Path
    server: str
    ca: str | None
    local: Any = None  # LocalControlPlane when we started it
    crds_path: Path | None = None
    _clients: dict = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return self.local is not None

    def api_client(self, kubeconfig: Path | None = None) -> client.ApiClient:
        return config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    def _get(self, cls):
        if cls not in self._clients:
            if "api" not in self._clients:
                self._clients["api"] = self.api_client()
            self._clients[cls] = cls(self._clients["api"])
        return self._clients[cls]

    @property
    def core(self) -> client.CoreV1Api:
        return self._get(client.CoreV1Api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return self._get(client.CustomObjectsApi)

    @property
    def rbac(self) -> client.RbacAuthorizationV1Api:
        return self._get(client.RbacAuthorizationV1Api)

    @property
    def networking(self) -> client.NetworkingV1Api:
        return self._get(client.NetworkingV1Api)

    @property
    def authz(self) -> client.AuthorizationV1Api:
        return self._get(client.AuthorizationV1Api)

    @property
    def apiext(self) -> client.ApiextensionsV1Api:
        return self._get(client.ApiextensionsV1Api)

    def service_account_token(self, namespace: str, name: str, seconds: int = 3600) -> str:
        """A bound token for ``namespace/name`` from the TokenRequest API (as a pod gets)."""
        tr = self.core.create_namespaced_service_account_token(
            name, namespace, {"spec": {"expirationSeconds": seconds}}
        )
        return tr.status.token

    def sa_can(
        self, sa_namespace: str, sa: str, verb: str, group: str, resource: str, namespace: str = ""
    ) -> bool:
        """Whether ServiceAccount ``sa_namespace/sa`` may ``verb`` ``resource``
        (``plural`` or ``plural/subresource``) of ``group`` in ``namespace``
        (default: its own), as the API server's authorizer answers
        (a SubjectAccessReview with the groups a ServiceAccount token carries)."""
        plural, _, sub = resource.partition("/")
        review = client.V1SubjectAccessReview(
            spec={
                "user": f"system:serviceaccount:{sa_namespace}:{sa}",
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{sa_namespace}",
                    "system:authenticated",
                ],
                "resourceAttributes": {
                    "namespace": namespace or sa_namespace,
                    "verb": verb,
                    "group": group,
                    "resource": plural,
                    "subresource": sub,
                },
            }
        )
        return self.authz.create_subject_access_review(review).status.allowed

    def token_kubeconfig(self, path: Path, token: str, server: str | None = None) -> Path:
        from harness.controlplane import write_kubeconfig

        server = server or self.server
        # The fault proxy speaks plain HTTP on loopback: no CA then.
        ca = Path(self.ca) if self.ca and server.startswith("https://") else None
        return write_kubeconfig(path, server, ca, user="sa", token=token)

    # KubeVirt objects, created the way the spawner should: strict field validation.
    def create_vm(self, namespace: str, body: dict) -> dict:
        return self.custom.create_namespaced_custom_object(
            *KV, namespace, "virtualmachines", body, field_validation="Strict"
        )

    def vm(self, namespace: str, name: str) -> dict | None:
        return get_or_none(
            self.custom.get_namespaced_custom_object, *KV, namespace, "virtualmachines", name
        )

    def vmi(self, namespace: str, name: str) -> dict | None:
        return get_or_none(
            self.custom.get_namespaced_custom_object,
            *KV,
            namespace,
            "virtualmachineinstances",
            name,
        )

    def launcher_pods(self, namespace: str, vmi_name: str) -> list[dict]:
        r = self.core.list_namespaced_pod(
            namespace,
            label_selector=f"kubevirt.io=virt-launcher,vm.kubevirt.io/name={vmi_name}",
            _preload_content=False,
        )
        return json.loads(r.data)["items"]

    def events(self, namespace: str) -> list[str]:
        out = []
        for e in self.core.list_namespaced_event(namespace).items:
            obj = e.involved_object
            out.append(f"{obj.kind}/{obj.name}: {e.type} {e.reason}: {e.message}")
        return out


def minimal_vm(
    name: str, *, labels: dict | None = None, run_strategy: str = "Always", **ann
) -> dict:
    """A VirtualMachine KubeVirt's schema accepts, with a containerDisk and pod networking."""
    labels = labels or {}
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "labels": dict(labels), "annotations": dict(ann)},
        "spec": {
            "runStrategy": run_strategy,
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "domain": {
                        "devices": {
                            "disks": [{"name": "root", "disk": {"bus": "virtio"}}],
                            "interfaces": [{"name": "default", "masquerade": {}}],
                        },
                        "resources": {"requests": {"memory": "128Mi"}},
                    },
                    "networks": [{"name": "default", "pod": {}}],
                    "volumes": [
                        {
                            "name": "root",
                            "containerDisk": {"image": "quay.io/containerdisks/debian:12"},
                        }
                    ],
                },
            },
        },
    }


def pods_matching(cluster: Cluster, namespace: str, selector: dict) -> set[str]:
    """Names of pods in ``namespace`` the API server itself matches against ``selector``."""
    r = cluster.core.list_namespaced_pod(
        namespace, label_selector=selector_string(selector), _preload_content=False
    )
    return {p["metadata"]["name"] for p in json.loads(r.data)["items"]}


def policy_reach(cluster: Cluster, namespace: str, policy: dict) -> tuple[set[str], set[str] | str]:
    """(target pods, source pods as "ns/name") of an Ingress NetworkPolicy.

    Sources are "any" if a rule admits every source. Matching is the API
    server's (label selectors in list calls), on the pods that exist now.
    """
    spec = policy["spec"]
    targets = pods_matching(cluster, namespace, spec.get("podSelector") or {})
    sources: set[str] = set()
    for rule in spec.get("ingress") or []:
        peers = rule.get("from")
        if not peers:
            return targets, "any"
        for peer in peers:
            if "ipBlock" in peer:
                return targets, "any"
            if "namespaceSelector" in peer:
                r = cluster.core.list_namespace(
                    label_selector=selector_string(peer["namespaceSelector"])
                )
                namespaces = [n.metadata.name for n in r.items]
            else:
                namespaces = [namespace]
            for ns in namespaces:
                sources |= {
                    f"{ns}/{p}" for p in pods_matching(cluster, ns, peer.get("podSelector") or {})
                }
    return targets, sources

"""The KubeVirt backend as the lab manager sees it: labelled objects, VM state,
reset, and orphan deletion. The decisions are ``reaper.cluster_orphans``;
this module lists what exists and carries deletions out (confirmed, with
``kubeapi.ensure_gone``).

Needs kubernetes_asyncio and in-cluster credentials or KUBECONFIG, with
exactly hub-config/manager-rbac.yaml's Role in the namespace. It never
touches Secrets (each holds a VM's private ssh key): a reaped VM's Secret is
owned by the VM and goes with it (garbage collection).
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import datetime, timezone

from ...contract import COMPONENT, MANAGED_SELECTOR, SERVER_LABEL, VM_COMPONENT, KubeVirtVMState
from .. import reaper
from ..reaper import ClusterObject, ServerInfo
from . import ActionError, Usage, delete_each

log = logging.getLogger("kubevirt_spawner.manager")

SERVER_SELECTOR = SERVER_LABEL  # label exists (notebook pods carry only this one)


def _age(meta: dict, now: datetime) -> float:
    created = meta.get("creationTimestamp") or meta.get("creation_timestamp")
    if not created:
        return 0.0
    if isinstance(created, str):
        created = datetime.fromisoformat(created.replace("Z", "+00:00"))
    return (now - created).total_seconds()


_CPU_UNITS = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0}
_MEM_UNITS = {
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
    "k": 1000,
    "M": 10**6,
    "G": 10**9,
    "": 1,
}


def parse_cpu(quantity: str) -> float:
    """Cores from a Kubernetes CPU quantity ("250m", "123456789n", "2")."""
    q = quantity.strip()
    unit = q[-1] if q and q[-1] in "num" else ""
    return float(q[: len(q) - len(unit)]) * _CPU_UNITS[unit]


def parse_memory(quantity: str) -> int:
    """Bytes from a Kubernetes memory quantity ("128Mi", "1G", "4096")."""
    q = quantity.strip()
    for unit in sorted(_MEM_UNITS, key=len, reverse=True):
        if unit and q.endswith(unit):
            return int(float(q[: -len(unit)]) * _MEM_UNITS[unit])
    return int(float(q))


def usage_by_server(pod_metrics: list[dict]) -> dict[str, tuple[float, int]]:
    """(cores, bytes) per ``kubevirt-spawner/server`` label, summed over each
    virt-launcher pod's containers, from metrics.k8s.io PodMetrics items."""
    out: dict[str, tuple[float, int]] = {}
    for item in pod_metrics:
        server = (item.get("metadata", {}).get("labels") or {}).get(SERVER_LABEL)
        if not server:
            continue
        cpu = sum(parse_cpu(c["usage"]["cpu"]) for c in item.get("containers", []))
        mem = sum(parse_memory(c["usage"]["memory"]) for c in item.get("containers", []))
        prev = out.get(server, (0.0, 0))
        out[server] = (prev[0] + cpu, prev[1] + mem)
    return out


def objects_from_lists(lists: dict[str, list[dict]], now: datetime) -> list[ClusterObject]:
    """ClusterObjects from API list results (dicts), one list per kind; an
    object listed under two selectors appears once."""
    seen, out = set(), []
    for kind, items in lists.items():
        for item in items:
            meta = item.get("metadata") or {}
            key = (kind, meta.get("namespace", ""), meta.get("name", ""))
            if key in seen:
                continue
            seen.add(key)
            out.append(
                ClusterObject(kind, key[1], key[2], dict(meta.get("labels") or {}), _age(meta, now))
            )
    return out


class Cluster:
    """The KubeVirt backend as the lab manager's core sees it (``ManagerBackend``)."""

    name = "kubevirt"

    def __init__(self, namespace: str = ""):
        self.namespace = namespace or _pod_namespace()
        self._apis = None

    async def _clients(self):
        if self._apis is None:
            from kubernetes_asyncio import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                # KUBECONFIG as it is now: kubernetes_asyncio reads the variable
                # once, at import, which may have been long before.
                await config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
            api = client.ApiClient()
            self._apis = (
                client.CoreV1Api(api),
                client.NetworkingV1Api(api),
                client.CustomObjectsApi(api),
            )
        return self._apis

    async def close(self) -> None:
        if self._apis is not None:
            await self._apis[0].api_client.close()
            self._apis = None

    async def list_objects(self) -> list[ClusterObject]:
        core, net, custom = await self._clients()
        ns = self.namespace
        api_client = core.api_client

        async def plain(call, selector):
            resp = await call(ns, label_selector=selector)
            return [api_client.sanitize_for_serialization(i) for i in resp.items]

        async def custom_list(plural):
            resp = await custom.list_namespaced_custom_object(
                "kubevirt.io", "v1", ns, plural, label_selector=MANAGED_SELECTOR
            )
            return resp.get("items", [])

        lists = {
            "virtualmachine": await custom_list("virtualmachines"),
            "service": await plain(core.list_namespaced_service, MANAGED_SELECTOR),
            "network_policy": await plain(net.list_namespaced_network_policy, MANAGED_SELECTOR),
            "pod": await plain(core.list_namespaced_pod, SERVER_SELECTOR),
        }
        return objects_from_lists(lists, datetime.now(timezone.utc))

    async def reap(self, servers: list[ServerInfo], grace: float, metrics) -> list[reaper.Deletion]:
        from ...kubevirt import kubeapi

        core, net, custom = await self._clients()
        kinds = kubeapi.kinds(core, net, custom)

        async def gone(d):
            ns, name = d.ident
            await kubeapi.ensure_gone(
                kinds[d.kind], ns, name, request_timeout=10, retry_timeout=120
            )

        orphans = reaper.cluster_orphans(servers, await self.list_objects(), grace)
        return await delete_each(orphans, gone, metrics)

    async def vm_usage(self) -> dict[str, tuple[float, int]]:
        """CPU and memory of every lab VM's virt-launcher pod (needs metrics-server;
        empty, with one warning, without it)."""
        from kubernetes_asyncio.client.rest import ApiException

        _, _, custom = await self._clients()
        try:
            resp = await custom.list_namespaced_custom_object(
                "metrics.k8s.io",
                "v1beta1",
                self.namespace,
                "pods",
                label_selector=f"{SERVER_LABEL},{COMPONENT}={VM_COMPONENT}",
            )
        except ApiException as e:
            if not getattr(self, "_warned_metrics", False):
                log.warning("No VM CPU on the cluster: metrics.k8s.io answered %s", e.status)
                self._warned_metrics = True
            return {}
        return usage_by_server(resp.get("items", []))

    def owns(self, state) -> bool:
        return bool(KubeVirtVMState.from_state(state).vm_name)

    def has_vm(self, state) -> bool:
        return KubeVirtVMState.from_state(state).started

    async def usage(self, servers) -> dict[str, Usage]:
        by_vm = await self.vm_usage()
        out = {}
        for s in servers:
            vm = KubeVirtVMState.from_state(s.state).vm_name
            if vm in by_vm:
                cores, memory = by_vm[vm]
                out[s.key] = Usage(memory=memory, cores=cores)
        return out

    async def inspect(self, s, script: str) -> None:
        return None  # no key into the VM here: only the CPU rule applies

    def spawn_phases(self, s, started: float, ready: float) -> None:
        return None

    # KubeVirt has no memory snapshots: nothing is suspended on the cluster.
    def request_suspend(self, state) -> None:
        return None

    def saved_states(self, user: str) -> list[dict]:
        return []

    async def discard_state(self, user: str, name: str) -> int:
        raise ActionError(409, "KubeVirt has no memory snapshots: nothing to discard")

    async def _vmi(self, name: str) -> dict | None:
        from kubernetes_asyncio.client.rest import ApiException

        _, _, custom = await self._clients()
        try:
            return await custom.get_namespaced_custom_object(
                "kubevirt.io", "v1", self.namespace, "virtualmachineinstances", name
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def vm_state(self, s: ServerInfo) -> str:
        from ...kubevirt.vmstatus import vm_ready, vmi_phase

        vmi = await self._vmi(s.state.get("vm_name", ""))
        if vmi is None:
            return "stopped"
        return "running" if vm_ready(vmi) else vmi_phase(vmi).lower() or "unknown"

    async def reset(self, s: ServerInfo, wait: bool, timeout: float) -> str:
        """Delete the VMI: its VirtualMachine (runStrategy Always) starts a fresh
        one from the containerDisk, i.e. a fresh root filesystem."""
        from kubernetes_asyncio.client.rest import ApiException

        from ...kubevirt.vmstatus import vm_ready

        name = s.state.get("vm_name")
        if not name:
            raise ActionError(409, f"{s.user}'s server has no VM")
        _, _, custom = await self._clients()
        old = await self._vmi(name)
        try:
            await custom.delete_namespaced_custom_object(
                "kubevirt.io", "v1", self.namespace, "virtualmachineinstances", name
            )
        except ApiException as e:
            if e.status != 404:
                raise ActionError(502, f"KubeVirt refused the reset: {e.reason}") from None
        if not wait:
            return "resetting"
        old_uid = (old or {}).get("metadata", {}).get("uid")
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            vmi = await self._vmi(name)
            if vmi and vmi["metadata"].get("uid") != old_uid and vm_ready(vmi):
                return "ready"
            await asyncio.sleep(2)
        raise ActionError(504, "the VM did not come back in time")


def _pod_namespace() -> str:
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    if os.path.exists(path):
        with open(path) as f:
            return f.read().strip()
    return os.environ.get("POD_NAMESPACE", "default")

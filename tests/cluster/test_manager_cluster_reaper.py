"""The lab manager's cluster side against a real kube-apiserver: labelled
objects of no running server are deleted (confirmed gone), those of a running
server and unlabelled ones are kept; a reset replaces the VMI."""

from __future__ import annotations

import asyncio

import pytest
from kube import KV, get_or_none, minimal_vm, wait_for

from kubevirt_spawner.manager.cluster import Cluster
from kubevirt_spawner.manager.metrics import Metrics
from kubevirt_spawner.manager.reaper import ServerInfo

MANAGED = {"app.kubernetes.io/managed-by": "kubevirt-spawner",
           "app.kubernetes.io/component": "lab-vm"}  # fmt: skip


def labels(server: str, user: str) -> dict:
    return {**MANAGED, "kubevirt-spawner/server": server, "hub.jupyter.org/username": user}


def make_server_objects(cluster, ns, server, user):
    lab = labels(server, user)
    cluster.create_vm(ns, minimal_vm(server, labels=lab))
    cluster.core.create_namespaced_service(ns, {
        "metadata": {"name": server, "labels": lab},
        "spec": {"selector": {"kubevirt-spawner/server": server}, "ports": [{"port": 22}]},
    })  # fmt: skip
    cluster.core.create_namespaced_secret(ns, {"metadata": {"name": server, "labels": lab},
                                               "stringData": {"id_ed25519": "x"}})  # fmt: skip
    cluster.networking.create_namespaced_network_policy(ns, {
        "metadata": {"name": server, "labels": lab},
        "spec": {"podSelector": {"matchLabels": {"kubevirt-spawner/server": server}},
                 "policyTypes": ["Ingress"]},
    })  # fmt: skip
    # The notebook pod carries only the server label (kubespawner's own labels besides).
    cluster.core.create_namespaced_pod(ns, {
        "metadata": {"name": f"jupyter-{user}", "labels": {
            "kubevirt-spawner/server": server, "component": "singleuser-server",
            "hub.jupyter.org/username": user}},
        "spec": {"containers": [{"name": "notebook", "image": "example/notebook"}]},
    })  # fmt: skip


def existing(cluster, ns, server, user) -> dict:
    return {
        "vm": cluster.vm(ns, server),
        "service": get_or_none(cluster.core.read_namespaced_service, server, ns),
        "secret": get_or_none(cluster.core.read_namespaced_secret, server, ns),
        "network_policy": get_or_none(
            cluster.networking.read_namespaced_network_policy, server, ns
        ),
        "pod": get_or_none(cluster.core.read_namespaced_pod, f"jupyter-{user}", ns),
    }


@pytest.fixture
def kubeconfig_env(cluster, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))


def run(namespace: str, method: str, *args, **kw):
    """Call one Cluster method with a fresh client, as a restarted service would."""

    async def go():
        c = Cluster(namespace)
        try:
            return await getattr(c, method)(*args, **kw)
        finally:
            await c.close()

    return asyncio.run(go())


def test_reaper_removes_orphans_and_keeps_running_servers(cluster, namespace, kubeconfig_env):
    make_server_objects(cluster, namespace, "labvm-alice", "alice")  # running
    make_server_objects(cluster, namespace, "labvm-bob", "bob")  # hub forgot it
    make_server_objects(cluster, namespace, "labvm-carol", "carol")  # spawn pending
    cluster.core.create_namespaced_service(namespace, {
        "metadata": {"name": "unrelated"}, "spec": {"ports": [{"port": 80}]}})  # fmt: skip
    servers = [
        ServerInfo("alice", ready=True, state={"vm_name": "labvm-alice"}),
        ServerInfo("carol", pending="spawn"),
    ]
    metrics = Metrics()
    done = run(namespace, "reap", servers, grace=0, metrics=metrics)
    assert sorted((d.kind, d.target, d.reason) for d in done) == [
        (kind, f"{namespace}/{name}", "orphan-no-server")
        for kind, name in sorted([
            ("network_policy", "labvm-bob"), ("pod", "jupyter-bob"), ("secret", "labvm-bob"),
            ("service", "labvm-bob"), ("virtualmachine", "labvm-bob"),
        ])
    ]  # fmt: skip
    # ensure_gone confirmed each deletion: nothing of bob's is left now.
    assert not any(existing(cluster, namespace, "labvm-bob", "bob").values())
    for server, user in (("labvm-alice", "alice"), ("labvm-carol", "carol")):
        assert all(existing(cluster, namespace, server, user).values()), server
    assert get_or_none(cluster.core.read_namespaced_service, "unrelated", namespace)
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    assert 'kvs_reaped_objects_total{kind="virtualmachine",reason="orphan-no-server"} 1.0' in text
    # A second round (a restarted reaper) finds nothing more to do.
    assert run(namespace, "reap", servers, grace=0, metrics=metrics) == []


def test_grace_protects_young_objects(cluster, namespace, kubeconfig_env):
    make_server_objects(cluster, namespace, "labvm-dave", "dave")
    done = run(namespace, "reap", [], grace=600, metrics=Metrics())
    assert done == []
    assert all(existing(cluster, namespace, "labvm-dave", "dave").values())


def test_reset_replaces_the_vmi(cluster, namespace, kubeconfig_env):
    cluster.create_vm(namespace, minimal_vm("labvm-erin", labels=labels("labvm-erin", "erin")))
    old = wait_for("erin's VMI", lambda: cluster.vmi(namespace, "labvm-erin"), 60)
    server = ServerInfo("erin", ready=True, state={"vm_name": "labvm-erin"})
    result = run(namespace, "reset", server, wait=True, timeout=90)
    assert result == "ready"
    new = cluster.vmi(namespace, "labvm-erin")
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    assert run(namespace, "vm_state", server) == "running"
    cluster.custom.delete_namespaced_custom_object(*KV, namespace, "virtualmachines", "labvm-erin")
    wait_for("erin's VM gone", lambda: cluster.vm(namespace, "labvm-erin") is None, 60)

"""The lab manager's cluster side against a real kube-apiserver, running with
exactly hub-config/manager-rbac.yaml's Role (a ServiceAccount token
kubeconfig, nothing more): labelled objects of no running server are deleted
(confirmed gone; the VM's Secret goes with the VM), those of a running server
and unlabelled ones are kept; a reset replaces the VMI; the VM state reads;
and the Role refuses what the manager does not need."""

from __future__ import annotations

import asyncio

import pytest
from harness.kube import KV, get_or_none, minimal_vm, status_of, wait_for
from harness.kubehub import apply_manager_rbac
from kubernetes import client

from kubevirt_spawner.manager.backends.kubevirt import Cluster
from kubevirt_spawner.manager.metrics import Metrics
from kubevirt_spawner.manager.reaper import ServerInfo

MANAGED = {
    "app.kubernetes.io/managed-by": "kubevirt-spawner",
    "app.kubernetes.io/component": "lab-vm",
}


def labels(server: str, user: str) -> dict:
    return {**MANAGED, "kubevirt-spawner/server": server, "hub.jupyter.org/username": user}


def make_server_objects(cluster, ns, server, user):
    """A server's objects as KubeVirtSpawner makes them: Secret, Service and
    NetworkPolicy owned by the VM."""
    lab = labels(server, user)
    vm = cluster.create_vm(ns, minimal_vm(server, labels=lab))
    owner = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "name": server}
    owner.update(uid=vm["metadata"]["uid"], controller=True, blockOwnerDeletion=True)
    meta = {"labels": lab, "ownerReferences": [owner]}
    cluster.core.create_namespaced_service(
        ns,
        {
            "metadata": {"name": server, **meta},
            "spec": {"selector": {"kubevirt-spawner/server": server}, "ports": [{"port": 22}]},
        },
    )
    cluster.core.create_namespaced_secret(
        ns, {"metadata": {"name": server, **meta}, "stringData": {"id_ed25519": "x"}}
    )
    cluster.networking.create_namespaced_network_policy(
        ns,
        {
            "metadata": {"name": server, **meta},
            "spec": {
                "podSelector": {"matchLabels": {"kubevirt-spawner/server": server}},
                "policyTypes": ["Ingress"],
            },
        },
    )
    # The notebook pod carries only the server label (kubespawner's own labels besides).
    cluster.core.create_namespaced_pod(
        ns,
        {
            "metadata": {
                "name": f"jupyter-{user}",
                "labels": {
                    "kubevirt-spawner/server": server,
                    "component": "singleuser-server",
                    "hub.jupyter.org/username": user,
                },
            },
            "spec": {"containers": [{"name": "notebook", "image": "example/notebook"}]},
        },
    )


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
def manager_sa(cluster, namespace) -> str:
    return apply_manager_rbac(cluster, namespace)


@pytest.fixture
def kubeconfig_env(cluster, namespace, manager_sa, monkeypatch, tmp_path):
    """The manager's credentials: its ServiceAccount's token, nothing else."""
    token = cluster.service_account_token(namespace, manager_sa)
    kc = cluster.token_kubeconfig(tmp_path / "manager-kubeconfig", token)
    monkeypatch.setenv("KUBECONFIG", str(kc))
    return kc


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
    cluster.core.create_namespaced_service(
        namespace, {"metadata": {"name": "unrelated"}, "spec": {"ports": [{"port": 80}]}}
    )
    servers = [
        ServerInfo("alice", ready=True, state={"vm_name": "labvm-alice"}),
        ServerInfo("carol", pending="spawn"),
    ]
    # KubeVirt's launcher pod carries the VM's labels too: wait for it, so
    # that what the reaper finds does not depend on timing.
    (launcher,) = wait_for(
        "bob's launcher pod", lambda: cluster.launcher_pods(namespace, "labvm-bob"), 60
    )
    metrics = Metrics()
    done = run(namespace, "reap", servers, grace=0, metrics=metrics)
    assert sorted((d.kind, d.target, d.reason) for d in done) == [
        (kind, f"{namespace}/{name}", "orphan-no-server")
        for kind, name in sorted(
            [
                ("network_policy", "labvm-bob"),
                ("pod", "jupyter-bob"),
                ("pod", launcher["metadata"]["name"]),
                ("service", "labvm-bob"),
                ("virtualmachine", "labvm-bob"),
            ]
        )
    ]
    # ensure_gone confirmed each deletion; the Secret, owned by the VM, goes
    # with it (the manager may not even read it).
    left = existing(cluster, namespace, "labvm-bob", "bob")
    assert [k for k, v in left.items() if v] in ([], ["secret"]), left
    wait_for(
        "bob's Secret collected with his VM",
        lambda: not get_or_none(cluster.core.read_namespaced_secret, "labvm-bob", namespace),
        120,  # the garbage collector syncs its monitors first after a start
    )
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


# What manager-rbac.yaml grants, and nothing more.
MANAGER_MAY = [
    *[(v, "kubevirt.io", "virtualmachines") for v in ("list", "get", "delete")],
    *[(v, "kubevirt.io", "virtualmachineinstances") for v in ("get", "delete")],
    *[(v, "", res) for res in ("pods", "services") for v in ("list", "get", "delete")],
    *[(v, "networking.k8s.io", "networkpolicies") for v in ("list", "get", "delete")],
    ("list", "metrics.k8s.io", "pods"),
]
MANAGER_MAY_NOT = [
    *[(v, "", "secrets") for v in ("get", "list", "watch", "create", "delete")],
    *[(v, "", "pods/exec") for v in ("get", "create")],
    *[(v, "", res) for res in ("pods", "services") for v in ("create", "patch", "update")],
    *[(v, "kubevirt.io", "virtualmachines") for v in ("create", "patch", "update")],
    ("create", "kubevirt.io", "virtualmachineinstances"),
    *[
        ("get", "subresources.kubevirt.io", f"virtualmachineinstances/{sub}")
        for sub in ("console", "vnc", "portforward")
    ],
    ("update", "subresources.kubevirt.io", "virtualmachineinstances/pause"),
    ("create", "rbac.authorization.k8s.io", "rolebindings"),
    ("get", "", "configmaps"),
]


def test_manager_role_allows_its_paths_and_refuses_the_rest(
    cluster, namespace, manager_sa, kubeconfig_env
):
    sa = manager_sa
    missing = [n for n in MANAGER_MAY if not cluster.sa_can(namespace, sa, *n)]
    assert not missing, f"manager-rbac.yaml lacks {missing}"
    extra = [n for n in MANAGER_MAY_NOT if cluster.sa_can(namespace, sa, *n)]
    assert not extra, f"manager-rbac.yaml grants {extra}"
    elsewhere = [n for n in MANAGER_MAY if cluster.sa_can(namespace, sa, *n, namespace="default")]
    assert not elsewhere, f"the manager reaches beyond its namespace: {elsewhere}"

    # For real, with its token: a server's Secret and its pod stay out of reach.
    make_server_objects(cluster, namespace, "labvm-frank", "frank")
    core = client.CoreV1Api(cluster.api_client(kubeconfig_env))
    custom = client.CustomObjectsApi(cluster.api_client(kubeconfig_env))
    exec_args = {"command": ["true"], "stdout": True}
    vms = (*KV, namespace, "virtualmachines")
    halt = {"spec": {"runStrategy": "Halted"}}
    codes = {
        "get secret": status_of(core.read_namespaced_secret, "labvm-frank", namespace),
        "list secrets": status_of(core.list_namespaced_secret, namespace),
        "delete secret": status_of(core.delete_namespaced_secret, "labvm-frank", namespace),
        "exec": status_of(
            core.connect_post_namespaced_pod_exec, "jupyter-frank", namespace, **exec_args
        ),
        "create VM": status_of(custom.create_namespaced_custom_object, *vms, minimal_vm("evil")),
        "patch VM": status_of(custom.patch_namespaced_custom_object, *vms, "labvm-frank", halt),
        "list VMs elsewhere": status_of(
            custom.list_namespaced_custom_object, *KV, "default", "virtualmachines"
        ),
    }
    assert set(codes.values()) == {403}, codes
    assert get_or_none(cluster.core.read_namespaced_secret, "labvm-frank", namespace)
    # What it may do, it can: the VM state reads (the "inspect" path).
    server = ServerInfo("frank", ready=True, state={"vm_name": "labvm-frank"})
    wait_for("frank's VM running", lambda: run(namespace, "vm_state", server) == "running", 60)

"""Fixtures for tests against a real kube-apiserver.

Without ``KUBECONFIG``: build (or take from the cache) the pinned binaries,
start etcd + kube-apiserver + kube-controller-manager + kube-scheduler + KWOK
on loopback, install KubeVirt's CRDs from KubeVirt's own code, add KWOK nodes,
and start the StandInKubeVirtController; all of it once per session.

With ``KUBECONFIG`` set: use that cluster (it must run real KubeVirt), start
nothing, and skip only what needs the stand-in's failure modes.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from controlplane import KWOK_NODE_ANNOTATION, LocalControlPlane, cluster_bins  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402
from kube import Cluster, wait_for  # noqa: E402

KWOK_NODES = 3


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cluster: needs a real kube-apiserver (ours or KUBECONFIG's)"
    )


def pytest_collection_modifyitems(items):
    for item in items:
        if str(HERE) in str(item.fspath):
            item.add_marker(pytest.mark.cluster)


def install_crds(c: Cluster, path: Path) -> list[str]:
    names = []
    for crd in json.loads(path.read_text())["items"]:
        crd.pop("status", None)
        try:
            c.apiext.create_custom_resource_definition(crd)
        except ApiException as e:
            if e.status != 409:
                raise
        names.append(crd["metadata"]["name"])
    for name in names:
        wait_for(
            f"CRD {name} Established",
            lambda n=name: any(
                cond.type == "Established" and cond.status == "True"
                for cond in c.apiext.read_custom_resource_definition(n).status.conditions or []
            ),
            timeout=60,
        )
    # Established can precede the resource being served; list until it is.
    wait_for("VirtualMachines served", lambda: c.custom.list_cluster_custom_object(
        "kubevirt.io", "v1", "virtualmachines") is not None, timeout=30)  # fmt: skip
    return names


def make_kwok_nodes(c: Cluster, count: int) -> None:
    for i in range(count):
        name = f"kvs-kwok-{i}"
        body = {
            "metadata": {
                "name": name,
                "annotations": {KWOK_NODE_ANNOTATION: "fake"},
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    # virt-handler labels nodes that can run VMs; KubeVirt pins launchers to them.
                    "kubevirt.io/schedulable": "true",
                },
            },
            "status": {
                "capacity": {"cpu": "64", "memory": "256Gi", "pods": "250"},
                "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "250"},
            },
        }
        try:
            c.core.create_node(body)
        except ApiException as e:
            if e.status != 409:
                raise
        # The API server taints every new node not-ready (TaintNodesByCondition);
        # the node-lifecycle controller that would lift it is off (see
        # controlplane.py), so lift it here once KWOK reports the node Ready.

    def ready() -> bool:
        nodes = c.core.list_node(label_selector="type=kwok").items
        return len(nodes) == count and all(
            any(x.type == "Ready" and x.status == "True" for x in n.status.conditions or [])
            for n in nodes
        )

    wait_for("KWOK nodes Ready", ready, timeout=60)
    for i in range(count):
        c.core.patch_node(f"kvs-kwok-{i}", {"spec": {"taints": []}})


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    kubeconfig = os.environ.get("KUBECONFIG")
    if kubeconfig:
        cfg = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        c = Cluster(Path(kubeconfig), cfg.host, cfg.ssl_ca_cert)
        wait_for("KubeVirt's VirtualMachine CRD on the KUBECONFIG cluster", lambda: c.apiext.read_custom_resource_definition("virtualmachines.kubevirt.io"), timeout=10)  # fmt: skip
        yield c
        return

    bins = cluster_bins()
    work = tmp_path_factory.mktemp("controlplane")
    cp = LocalControlPlane(bins, work)
    standin = None
    try:
        cp.start()
        c = Cluster(
            cp.admin_kubeconfig,
            cp.server,
            str(cp.ca),
            local=cp,
            crds_path=bins / "kubevirt-crds.json",
        )
        install_crds(c, c.crds_path)
        make_kwok_nodes(c, KWOK_NODES)
        wait_for("ServiceAccount default/default", lambda: c.core.read_namespaced_service_account("default", "default"), timeout=60)  # fmt: skip
        log = open(cp.logs / "stand-in-kubevirt.log", "ab")
        standin = subprocess.Popen(
            [sys.executable, str(HERE / "fake_kubevirt_controller.py"), f"--kubeconfig={cp.admin_kubeconfig}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        cp.procs["stand-in-kubevirt"] = standin
        sys.stderr.write(
            f"\ncluster: control plane up in {cp.started_in:.1f}s, logs in {cp.logs}\n"
        )
        yield c
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def is_local(cluster) -> bool:
    return cluster.is_local


@pytest.fixture
def standin_only(cluster):
    if not cluster.is_local:
        pytest.skip(
            "failure modes come from the stand-in controller; KUBECONFIG runs real KubeVirt"
        )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
def namespace(cluster, request) -> Iterator[str]:
    """A fresh namespace with its default ServiceAccount; on failure, print its events."""
    name = f"kvs-t-{secrets.token_hex(3)}"
    cluster.core.create_namespace({"metadata": {"name": name, "labels": {"kvs-test": "true"}}})
    wait_for(f"ServiceAccount {name}/default", lambda: cluster.core.read_namespaced_service_account("default", name))  # fmt: skip
    yield name
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"\n--- events in {name} ---")
        for line in cluster.events(name):
            print(line)
        if cluster.local:
            dead = cluster.local.dead_components()
            if dead:
                print(f"--- components that exited: {dead}")
            for comp in ("stand-in-kubevirt", "kube-controller-manager"):
                print(cluster.local.log_tail(comp, 20))
    try:
        cluster.core.delete_namespace(name)
    except ApiException:
        pass


@pytest.fixture
def admin_sa_token(cluster, namespace) -> str:
    """A token of a ServiceAccount bound to cluster-admin (clients through the fault proxy)."""
    cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": "tester"}})
    cluster.rbac.create_cluster_role_binding({
        "metadata": {"name": f"{namespace}-tester", "labels": {"kvs-test": "true"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "tester", "namespace": namespace}],
    })  # fmt: skip
    yield cluster.service_account_token(namespace, "tester")
    try:
        cluster.rbac.delete_cluster_role_binding(f"{namespace}-tester")
    except ApiException:
        pass


@pytest.fixture
def fault_proxy(cluster) -> Iterator[FaultProxy]:
    """A FaultProxy in front of the API server, injecting nothing until told (``rate``)."""
    proxy = FaultProxy(cluster.server, cluster.ca).start()
    yield proxy
    proxy.stop()


def wait_gone(what: str, fn, timeout: float = 60) -> float:
    """Wait until ``fn()`` reads nothing (None or an empty list)."""
    start = time.monotonic()
    wait_for(what + " gone", lambda: not fn(), timeout=timeout)
    return time.monotonic() - start

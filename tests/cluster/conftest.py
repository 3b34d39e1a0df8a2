"""Fixtures for tests against a real kube-apiserver, and against real KubeVirt.

Two clusters, each started once per session and only if a test asks for it:

``cluster`` (the API-server tier): build (or take from the cache) the pinned
binaries, start etcd + kube-apiserver + kube-controller-manager +
kube-scheduler + KWOK on loopback, install KubeVirt's CRDs from KubeVirt's own
code, add KWOK nodes, and start the StandInKubeVirtController. With
``KUBECONFIG`` set: use that cluster (it must run real KubeVirt), start
nothing, and skip only what needs the stand-in's failure modes.

``kubevirt_cluster`` (the real tier): scripts/kubevirt-cluster.sh's cluster
(tests/harness/kvcluster.py): a real kubelet, containerd, CNI, kube-proxy,
kube-router, CoreDNS and KubeVirt in the node's own namespaces. With
``KVS_KUBEVIRT_CLUSTER=NAME``: use that already running cluster
(``scripts/kubevirt-cluster.sh up --name NAME``) and leave it running.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

HERE = Path(__file__).resolve().parent

from harness.apitier import local_cluster  # noqa: E402
from harness.faultproxy import FaultProxy  # noqa: E402
from harness.kube import Cluster, wait_for  # noqa: E402
from harness.realcluster import RealCluster, real_cluster  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cluster: needs a real kube-apiserver (ours or KUBECONFIG's)"
    )


def pytest_collection_modifyitems(items):
    for item in items:
        if str(HERE) in str(item.fspath):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    kubeconfig = os.environ.get("KUBECONFIG")
    if kubeconfig:
        cfg = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        c = Cluster(Path(kubeconfig), cfg.host, cfg.ssl_ca_cert)
        wait_for(
            "KubeVirt's VirtualMachine CRD on the KUBECONFIG cluster",
            lambda: c.apiext.read_custom_resource_definition("virtualmachines.kubevirt.io"),
            timeout=10,
        )
        yield c
        return

    with local_cluster(tmp_path_factory.mktemp("controlplane")) as c:
        cp = c.local
        sys.stderr.write(
            f"\ncluster: control plane up in {cp.started_in:.1f}s, logs in {cp.logs}\n"
        )
        yield c


@pytest.fixture(scope="session")
def kubevirt_cluster() -> Iterator[RealCluster]:
    """The real KubeVirt cluster, up for the whole session (minutes to start)."""
    with real_cluster() as rc:
        yield rc


@pytest.fixture
def kv_namespace(kubevirt_cluster, request) -> Iterator[str]:
    """A fresh namespace on the real cluster; on failure, print what the cluster said."""
    with kubevirt_cluster.namespace(request) as ns:
        yield ns


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
    wait_for(
        f"ServiceAccount {name}/default",
        lambda: cluster.core.read_namespaced_service_account("default", name),
    )
    yield name
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"\n--- events in {name} ---")
        for line in cluster.events(name):
            # Pod IPs are loopback addresses here (see controlplane.POD_CIDR),
            # which EndpointSlices refuse: expected noise, not the failure.
            if "FailedToUpdateEndpointSlices" not in line:
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
    cluster.rbac.create_cluster_role_binding(
        {
            "metadata": {"name": f"{namespace}-tester", "labels": {"kvs-test": "true"}},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "tester", "namespace": namespace}],
        }
    )
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

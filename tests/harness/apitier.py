"""Bring up the whole local test cluster (used by conftest.py and the benchmark).

``local_cluster(workdir)`` yields a :class:`kube.Cluster` whose control plane
has KubeVirt's CRDs, KWOK nodes and the StandInKubeVirtController running,
and stops all of it on exit.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kubernetes.client.rest import ApiException

from harness import module_command
from harness.controlplane import (
    KWOK_NODE_ANNOTATION,
    LocalControlPlane,
    cluster_bins,
    die_with_parent,
)
from harness.kube import Cluster, wait_for

HERE = Path(__file__).resolve().parent
KWOK_NODES = 3


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
    wait_for(
        "VirtualMachines served",
        lambda: (
            c.custom.list_cluster_custom_object("kubevirt.io", "v1", "virtualmachines") is not None
        ),
        timeout=30,
    )
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


@contextmanager
def local_cluster(workdir: Path, nodes: int = KWOK_NODES) -> Iterator[Cluster]:
    bins = cluster_bins()
    cp = LocalControlPlane(bins, workdir)
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
        make_kwok_nodes(c, nodes)
        wait_for(
            "ServiceAccount default/default",
            lambda: c.core.read_namespaced_service_account("default", "default"),
            timeout=60,
        )
        log = open(cp.logs / "stand-in-kubevirt.log", "ab")
        cp.procs["stand-in-kubevirt"] = subprocess.Popen(
            module_command("fake_kubevirt_controller", f"--kubeconfig={cp.admin_kubeconfig}"),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        log.close()
        yield c
    finally:
        cp.stop()

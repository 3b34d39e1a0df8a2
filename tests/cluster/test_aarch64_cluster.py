"""aarch64 VMs on the cluster backend, against a real API server with
KubeVirt's CRDs: the arm64 VirtualMachine passes strict validation and keeps
every field (nothing pruned), and a spawn with the aarch64 profile lands the
VM's launcher pod on an arm64 node with the notebook's cross toolchain set.
"""

from __future__ import annotations

import pytest
from harness.controlplane import KWOK_NODE_ANNOTATION
from harness.kube import KV, wait_for
from harness.kubehub import apply_rbac, kube_hub, wait_nothing_left
from harness.notebook_standin import StandInNotebookServers
from kubernetes.client.rest import ApiException

from kubevirt_spawner.kubevirt import manifests as m

ARM_NODE = "kvs-kwok-arm64"

PROFILES = """
c.KubeVirtSpawner.profile_list = [
    {"display_name": "Debian 12, x86_64", "slug": "debian-x86", "default": True,
     "kubespawner_override": {"vm_image": "debian-12", "vm_arch": "x86_64"}},
    {"display_name": "Debian 12, aarch64", "slug": "debian-arm",
     "kubespawner_override": {"vm_image": "debian-12", "vm_arch": "aarch64"}},
]
"""


def test_arm64_vm_is_accepted_strictly_and_kept_whole(cluster, namespace):
    vm = m.make_vm(
        "labvm-arm",
        namespace,
        image="quay.io/containerdisks/debian:12",
        arch="aarch64",
        cpus=2,
        memory="2Gi",
        labels={"kvs-test": "arm"},
        secret_name="labvm-arm",
    )
    cluster.custom.create_namespaced_custom_object(
        *KV, namespace, "virtualmachines", vm, field_validation="Strict"
    )
    stored = cluster.vm(namespace, "labvm-arm")
    spec = stored["spec"]["template"]["spec"]
    # A field KubeVirt's schema did not know would have been pruned silently.
    assert spec == vm["spec"]["template"]["spec"]
    assert spec["architecture"] == "arm64"
    assert spec["domain"]["machine"] == {"type": "virt"}
    assert spec["domain"]["firmware"] == {"bootloader": {"efi": {"secureBoot": False}}}
    assert spec["nodeSelector"] == {"kubernetes.io/arch": "arm64"}


def test_misspelt_firmware_field_is_rejected(cluster, namespace):
    vm = m.make_vm(
        "labvm-typo",
        namespace,
        image="i",
        arch="aarch64",
        cpus=1,
        memory="1Gi",
        labels={},
        secret_name="labvm-typo",
    )
    vm["spec"]["template"]["spec"]["domain"]["firmware"]["bootloader"] = {"uefi": {}}
    with pytest.raises(ApiException) as e:
        cluster.custom.create_namespaced_custom_object(
            *KV, namespace, "virtualmachines", vm, field_validation="Strict"
        )
    assert e.value.status == 400 and "bootloader.uefi" in e.value.body, e.value.body


@pytest.fixture
def arm_node(cluster):
    if not cluster.is_local:
        yield None  # a real cluster brings its own arm64 nodes
        return
    body = {
        "metadata": {
            "name": ARM_NODE,
            "annotations": {KWOK_NODE_ANNOTATION: "fake"},
            "labels": {
                "kubernetes.io/hostname": ARM_NODE,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "arm64",
                "type": "kwok-arm64",
                "kubevirt.io/schedulable": "true",
            },
        },
        "status": {
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "250"},
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "250"},
        },
    }
    cluster.core.create_node(body)

    def ready():
        n = cluster.core.read_node(ARM_NODE)
        return any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])

    wait_for("KWOK arm64 node Ready", ready, timeout=60)
    cluster.core.patch_node(ARM_NODE, {"spec": {"taints": []}})
    yield ARM_NODE
    cluster.core.delete_node(ARM_NODE)


@pytest.fixture
def arm_hub(cluster, namespace, tmp_path, arm_node):
    servers = StandInNotebookServers(cluster.api_client()).start() if cluster.is_local else None
    sa = apply_rbac(cluster, namespace)
    kubeconfig = cluster.token_kubeconfig(
        tmp_path / "hub-kubeconfig", cluster.service_account_token(namespace, sa)
    )
    hub = kube_hub(tmp_path, namespace, kubeconfig, extra=PROFILES).start()
    yield hub
    hub.stop()
    if servers:
        servers.stop()


def test_aarch64_profile_runs_on_an_arm64_node(cluster, namespace, arm_hub, arm_node):
    events = arm_hub.spawn("armstudent", {"profile": "debian-arm"}, timeout=120)
    assert events[-1].get("ready"), f"{events[-1]}\n{arm_hub.log_tail(40)}"
    vm = cluster.vm(namespace, "labvm-armstudent")
    assert vm["spec"]["template"]["spec"]["architecture"] == "arm64"
    (launcher,) = cluster.launcher_pods(namespace, "labvm-armstudent")
    if arm_node:
        assert launcher["spec"]["nodeName"] == arm_node
    pod = cluster.core.read_namespaced_pod("jupyter-armstudent", namespace)
    env = {e.name: e.value for e in pod.spec.containers[0].env or []}
    assert env["LAB_ARCH"] == "aarch64"
    assert env["LAB_VMLINUX"] == "/opt/lab/kernels/debian-12/aarch64/vmlinux"
    assert (env.get("ARCH"), env.get("CROSS_COMPILE")) == ("arm64", "aarch64-linux-gnu-")
    arm_hub.stop_server("armstudent", timeout=120)
    wait_nothing_left(cluster, namespace, 90)

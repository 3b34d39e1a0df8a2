"""The VM -> VMI -> virt-launcher pod chain, on the stand-in or on real KubeVirt.

The lifecycle test runs against either; the failure modes are the stand-in's
(``standin_only``), because real KubeVirt is not told to fail by annotation.
"""

import pytest
from harness.fake_kubevirt_controller import FAILURE_ANNOTATION, FAILURE_CONFIGMAP, vmi_id_label
from harness.kube import KV, minimal_vm, wait_for, wait_gone

LABELS = {"app.kubernetes.io/component": "lab-vm", "hub.jupyter.org/username": "alice"}


def running_vmi(cluster, ns, name):
    vmi = cluster.vmi(ns, name)
    if vmi and vmi.get("status", {}).get("phase") == "Running":
        ifaces = vmi["status"].get("interfaces") or []
        return vmi if ifaces and ifaces[0].get("ipAddress") else None
    return None


def printable(cluster, ns, name):
    return ((cluster.vm(ns, name) or {}).get("status") or {}).get("printableStatus")


def test_vm_to_running_vmi_and_launcher_pod(cluster, namespace):
    cluster.create_vm(namespace, minimal_vm("alice-vm", labels=LABELS))
    vmi = wait_for(
        "VMI Running with an IP", lambda: running_vmi(cluster, namespace, "alice-vm"), 60
    )
    vm = cluster.vm(namespace, "alice-vm")

    assert vmi["metadata"]["ownerReferences"][0]["uid"] == vm["metadata"]["uid"]
    assert vmi["metadata"]["ownerReferences"][0]["controller"] is True
    for k, v in LABELS.items():
        assert vmi["metadata"]["labels"][k] == v

    (pod,) = cluster.launcher_pods(namespace, "alice-vm")
    labels = pod["metadata"]["labels"]
    assert labels["kubevirt.io"] == "virt-launcher"
    assert labels["vm.kubevirt.io/name"] == "alice-vm"
    assert labels["vmi.kubevirt.io/id"] == "alice-vm"
    assert labels["kubevirt.io/created-by"] == vmi["metadata"]["uid"]
    for k, v in LABELS.items():
        assert labels[k] == v, "template labels reach the launcher pod"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == vmi["metadata"]["uid"]
    assert pod["status"]["phase"] == "Running"
    assert vmi["status"]["interfaces"][0]["ipAddress"] == pod["status"]["podIP"]
    assert vmi["status"]["nodeName"] == pod["spec"]["nodeName"]

    wait_for(
        "VM Running and ready",
        lambda: (cluster.vm(namespace, "alice-vm").get("status") or {}).get("ready"),
        30,
    )
    assert printable(cluster, namespace, "alice-vm") == "Running"

    # Stop: runStrategy Halted removes the VMI and its pod, the VM stays.
    cluster.custom.patch_namespaced_custom_object(
        *KV, namespace, "virtualmachines", "alice-vm", {"spec": {"runStrategy": "Halted"}}
    )
    wait_gone("VMI", lambda: cluster.vmi(namespace, "alice-vm"))
    wait_gone("launcher pod", lambda: cluster.launcher_pods(namespace, "alice-vm"))
    wait_for("VM Stopped", lambda: printable(cluster, namespace, "alice-vm") == "Stopped", 30)

    cluster.custom.delete_namespaced_custom_object(*KV, namespace, "virtualmachines", "alice-vm")
    wait_gone("VM", lambda: cluster.vm(namespace, "alice-vm"))


def test_vmi_id_label_is_hashed_past_63_chars():
    long = "a" * 70
    assert len(vmi_id_label(long)) == 63
    assert vmi_id_label(long) != vmi_id_label(long[:-1] + "b")
    assert vmi_id_label("short") == "short"


def _check_image_pull(cluster, ns, name):
    assert printable(cluster, ns, name) in ("ErrImagePull", "ImagePullBackOff")
    (pod,) = cluster.launcher_pods(ns, name)
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] in ("ErrImagePull", "ImagePullBackOff")
    assert cluster.vmi(ns, name)["status"]["phase"] == "Scheduling"


def _check_unschedulable(cluster, ns, name):
    assert printable(cluster, ns, name) == "ErrorUnschedulable"
    conds = {c["type"]: c for c in cluster.vmi(ns, name)["status"]["conditions"]}
    assert conds["PodScheduled"]["reason"] == "Unschedulable"
    assert "Insufficient memory" in conds["PodScheduled"]["message"]  # the real scheduler's words


def _check_guest_crash(cluster, ns, name):
    assert printable(cluster, ns, name) == "CrashLoopBackOff"


def _check_never_ready(cluster, ns, name):
    vmi = cluster.vmi(ns, name)
    assert vmi["status"]["phase"] == "Running"
    assert vmi["status"]["interfaces"][0]["ipAddress"]
    ready = {c["type"]: c for c in vmi["status"]["conditions"]}["Ready"]
    assert ready["status"] == "False"
    assert cluster.vm(ns, name)["status"]["ready"] is False


FAILURES = {
    "image-pull": ("ImagePull", _check_image_pull),
    "unschedulable": ("ErrorUnschedulable", _check_unschedulable),
    "guest-crash": ("CrashLoopBackOff", _check_guest_crash),
    "never-ready": ("Running", _check_never_ready),
}


@pytest.mark.parametrize("via", ["annotation", "configmap"])
@pytest.mark.parametrize("mode", list(FAILURES))
def test_failure_modes(cluster, namespace, standin_only, mode, via):
    name = f"vm-{mode}"
    expect, check = FAILURES[mode]
    if via == "annotation":
        vm = minimal_vm(name, labels=LABELS, **{FAILURE_ANNOTATION: mode})
    else:
        cluster.core.create_namespaced_config_map(
            namespace, {"metadata": {"name": FAILURE_CONFIGMAP}, "data": {name: mode}}
        )
        vm = minimal_vm(name, labels=LABELS)
    cluster.create_vm(namespace, vm)
    wait_for(
        f"printableStatus ~ {expect}",
        lambda: expect in (printable(cluster, namespace, name) or ""),
        60,
    )
    if mode == "never-ready":
        wait_for("VMI Running", lambda: running_vmi(cluster, namespace, name), 30)
    check(cluster, namespace, name)

    # Whatever state it failed in, deleting the VM leaves nothing behind.
    cluster.custom.delete_namespaced_custom_object(*KV, namespace, "virtualmachines", name)
    wait_gone("VM", lambda: cluster.vm(namespace, name))
    wait_gone("VMI", lambda: cluster.vmi(namespace, name))
    wait_gone("launcher pods", lambda: cluster.launcher_pods(namespace, name))

"""ownerReferences and the real garbage collector (kube-controller-manager)."""

from harness.kube import KV, get_or_none, minimal_vm, wait_for, wait_gone
from kubernetes.client.rest import ApiException


def owned_by(vm: dict) -> list[dict]:
    return [
        {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "name": vm["metadata"]["name"],
            "uid": vm["metadata"]["uid"],
            "blockOwnerDeletion": True,
        }
    ]


def make_dependents(cluster, ns, vm) -> None:
    refs = owned_by(vm)
    cluster.core.create_namespaced_service(
        ns,
        {
            "metadata": {"name": "vm-ssh", "ownerReferences": refs},
            "spec": {
                "selector": {"vm.kubevirt.io/name": vm["metadata"]["name"]},
                "ports": [{"name": "ssh", "port": 22}],
            },
        },
    )
    cluster.networking.create_namespaced_network_policy(
        ns,
        {
            "metadata": {"name": "vm-only-owner", "ownerReferences": refs},
            "spec": {
                "podSelector": {"matchLabels": {"vm.kubevirt.io/name": vm["metadata"]["name"]}},
                "policyTypes": ["Ingress"],
            },
        },
    )
    cluster.core.create_namespaced_secret(
        ns,
        {
            "metadata": {"name": "vm-ssh-key", "ownerReferences": refs},
            "stringData": {"key": "not a real key"},
        },
    )


def dependents(cluster, ns) -> dict:
    return {
        "service": get_or_none(cluster.core.read_namespaced_service, "vm-ssh", ns),
        "networkpolicy": get_or_none(
            cluster.networking.read_namespaced_network_policy, "vm-only-owner", ns
        ),
        "secret": get_or_none(cluster.core.read_namespaced_secret, "vm-ssh-key", ns),
    }


def test_deleting_the_vm_collects_everything_it_owns(cluster, namespace):
    vm = cluster.create_vm(namespace, minimal_vm("gc"))
    make_dependents(cluster, namespace, vm)
    wait_for("launcher pod", lambda: cluster.launcher_pods(namespace, "gc"), 60)

    cluster.custom.delete_namespaced_custom_object(
        *KV, namespace, "virtualmachines", "gc", propagation_policy="Background"
    )
    wait_gone("VM", lambda: cluster.vm(namespace, "gc"))
    wait_gone("dependents", lambda: any(dependents(cluster, namespace).values()), 60)
    wait_gone("VMI", lambda: cluster.vmi(namespace, "gc"))
    wait_gone("launcher pod", lambda: cluster.launcher_pods(namespace, "gc"))


def test_foreground_deletion_waits_for_dependents(cluster, namespace):
    vm = cluster.create_vm(namespace, minimal_vm("fg", run_strategy="Halted"))
    make_dependents(cluster, namespace, vm)
    cluster.custom.delete_namespaced_custom_object(
        *KV, namespace, "virtualmachines", "fg", propagation_policy="Foreground"
    )
    # The GC removes dependents first, then the owner's foregroundDeletion finalizer.
    wait_gone("VM (after its dependents)", lambda: cluster.vm(namespace, "fg"), 60)
    assert not any(dependents(cluster, namespace).values())


def test_orphan_policy_keeps_dependents(cluster, namespace):
    vm = cluster.create_vm(namespace, minimal_vm("orph", run_strategy="Halted"))
    make_dependents(cluster, namespace, vm)
    cluster.custom.delete_namespaced_custom_object(
        *KV, namespace, "virtualmachines", "orph", propagation_policy="Orphan"
    )
    wait_gone("VM", lambda: cluster.vm(namespace, "orph"))

    def refs_stripped():
        deps = dependents(cluster, namespace)
        assert all(deps.values()), f"orphaned dependents were deleted: {deps}"
        return not (deps["service"].metadata.owner_references or [])

    wait_for("ownerReferences stripped", refs_stripped, 30)
    assert all(dependents(cluster, namespace).values()), "orphaned dependents stay"


def test_dependent_of_a_missing_owner_is_collected(cluster, namespace):
    """A dependent whose owner never existed (a hub that died between creates) is collected."""
    ghost = {"metadata": {"name": "ghost", "uid": "00000000-0000-4000-8000-000000000000"}}
    make_dependents(cluster, namespace, ghost)
    wait_gone(
        "dependents of a missing owner", lambda: any(dependents(cluster, namespace).values()), 60
    )


def test_namespace_deletion_removes_vms(cluster):
    ns = "kvs-t-nsdel"
    cluster.core.create_namespace({"metadata": {"name": ns}})
    try:
        cluster.create_vm(ns, minimal_vm("nsdel"))
        wait_for("launcher pod", lambda: cluster.launcher_pods(ns, "nsdel"), 60)
    finally:
        cluster.core.delete_namespace(ns)

    def ns_gone():
        try:
            cluster.core.read_namespace(ns)
            return False
        except ApiException as e:
            return e.status == 404

    wait_for("namespace deleted (namespace controller, VM finalizers honoured)", ns_gone, 120)

"""Pure manifest builders (kubevirt_spawner.kubevirt.manifests): whole objects compared
with expected dicts, core kinds validated against Kubernetes' own schemas
(kubernetes-validate, offline, strict) and the VirtualMachine against
KubeVirt's published OpenAPI definitions (tests/unit/kubevirt/data)."""

import copy
import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest

from kubevirt_spawner.kubevirt import manifests as m
from kubevirt_spawner.kubevirt.cloudinit import CloudInit

K8S_VERSION = "1.33"
LABELS = {
    "app.kubernetes.io/managed-by": "kubevirt-spawner",
    "app.kubernetes.io/component": "lab-vm",
    "kubevirt-spawner/server": "labvm-alice",
    "hub.jupyter.org/username": "alice",
}
ANN = {"hub.jupyter.org/username": "Alice"}
OWNER = m.make_owner_reference("VirtualMachine", "kubevirt.io/v1", "labvm-alice", "uid-1")


def k8s_valid(obj: dict) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def strict(schema):
    """Forbid unknown fields everywhere, so a misspelt field fails."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out:
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


KUBEVIRT = json.loads((Path(__file__).parent / "data" / "kubevirt-vm-schema.json").read_text())
VM_SCHEMA = {
    "$ref": "#/definitions/v1.VirtualMachine",
    "definitions": strict(KUBEVIRT["definitions"]),
}


def kubevirt_valid(obj: dict) -> None:
    jsonschema.Draft4Validator(VM_SCHEMA).validate(obj)


def test_owner_reference():
    assert OWNER == {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "name": "labvm-alice",
        "uid": "uid-1",
        "blockOwnerDeletion": True,
        "controller": False,
    }


def vm_args(**kw):
    args = dict(
        image="quay.io/containerdisks/debian:12",
        arch="x86_64",
        cpus=2,
        memory="2Gi",
        labels=LABELS,
        secret_name="labvm-alice",
        annotations=ANN,
    )
    args.update(kw)
    return args


def test_vm_x86_64_whole():
    hook = m.make_hook_sidecar_annotation("kubevirt-spawner-debug-hook")
    vm = m.make_vm(
        "labvm-alice", "lab", template_annotations={m.HOOK_SIDECARS_ANNOTATION: hook}, **vm_args()
    )
    assert vm == {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {
            "name": "labvm-alice",
            "namespace": "lab",
            "labels": LABELS,
            "annotations": ANN,
        },
        "spec": {
            "runStrategy": "Always",
            "template": {
                "metadata": {
                    "labels": LABELS,
                    "annotations": {
                        "hooks.kubevirt.io/hookSidecars": '[{"args":["--version","v1alpha2"],'
                        '"configMap":{"name":"kubevirt-spawner-debug-hook","key":"onDefineDomain.py",'
                        '"hookPath":"/usr/bin/onDefineDomain"}}]'
                    },
                },
                "spec": {
                    "architecture": "amd64",
                    "domain": {
                        "cpu": {"cores": 2, "sockets": 1, "threads": 1},
                        "memory": {"guest": "2Gi"},
                        "machine": {"type": "q35"},
                        "devices": {
                            "disks": [
                                {"name": "containerdisk", "disk": {"bus": "virtio"}},
                                {"name": "cloudinitdisk", "disk": {"bus": "virtio"}},
                            ],
                            "interfaces": [
                                {
                                    "name": "default",
                                    "masquerade": {},
                                    "ports": [{"name": "ssh", "port": 22, "protocol": "TCP"}],
                                }
                            ],
                            "rng": {},
                        },
                    },
                    "networks": [{"name": "default", "pod": {}}],
                    "nodeSelector": {"kubernetes.io/arch": "amd64"},
                    "terminationGracePeriodSeconds": 0,
                    "readinessProbe": {
                        "tcpSocket": {"port": 22},
                        "initialDelaySeconds": 5,
                        "periodSeconds": 3,
                        "failureThreshold": 3,
                    },
                    "volumes": [
                        {
                            "name": "containerdisk",
                            "containerDisk": {"image": "quay.io/containerdisks/debian:12"},
                        },
                        {
                            "name": "cloudinitdisk",
                            "cloudInitNoCloud": {
                                "secretRef": {"name": "labvm-alice"},
                                "networkDataSecretRef": {"name": "labvm-alice"},
                            },
                        },
                    ],
                },
            },
        },
    }
    kubevirt_valid(vm)
    # The hook annotation is the JSON array KubeVirt parses.
    assert json.loads(hook)[0]["configMap"]["hookPath"] == "/usr/bin/onDefineDomain"


def test_vm_started_paused_for_the_sidecar_hook():
    # KubeVirt leaves a VMI it started paused alone when gdb stops it; the
    # annotation has the hook's sidecar let it run (kubevirt-build/hook).
    hook = m.make_hook_sidecar_annotation("kubevirt-spawner-debug-hook")
    vm = m.make_vm(
        "v",
        "ns",
        **vm_args(),
        start_paused=True,
        template_annotations={m.HOOK_SIDECARS_ANNOTATION: hook},
    )
    template = vm["spec"]["template"]
    assert template["spec"]["startStrategy"] == "Paused"
    assert template["metadata"]["annotations"] == {
        m.HOOK_SIDECARS_ANNOTATION: hook,
        "kubevirt-spawner/resume-after-start": "true",
    }
    kubevirt_valid(vm)
    plain = m.make_vm("v", "ns", **vm_args())
    assert "startStrategy" not in plain["spec"]["template"]["spec"]


def test_vm_gdb_port_is_not_forwarded_to_the_guest():
    # With masquerade, declared ports are the only ones DNATed to the guest;
    # 1234 must stay with QEMU in the pod (docs/cluster-apiserver.md).
    vm = m.make_vm("v", "ns", **vm_args())
    (iface,) = vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]
    assert "masquerade" in iface and [p["port"] for p in iface["ports"]] == [22]


def test_vm_aarch64_uses_virt_machine_and_efi():
    vm = m.make_vm("v", "ns", **vm_args(arch="aarch64"), node_selector={"lab": "arm"})
    spec = vm["spec"]["template"]["spec"]
    assert spec["architecture"] == "arm64"
    assert spec["domain"]["machine"] == {"type": "virt"}
    assert spec["domain"]["firmware"] == {"bootloader": {"efi": {"secureBoot": False}}}
    assert spec["nodeSelector"] == {"kubernetes.io/arch": "arm64", "lab": "arm"}
    assert "annotations" not in vm["spec"]["template"]["metadata"]
    kubevirt_valid(vm)


def test_vm_with_owner_and_without_probe():
    vm = m.make_vm("v", "ns", **vm_args(), owner_references=[OWNER], ssh_ready_probe=False)
    assert vm["metadata"]["ownerReferences"] == [OWNER]
    assert "readinessProbe" not in vm["spec"]["template"]["spec"]
    kubevirt_valid(vm)


def test_vm_schema_check_catches_a_misspelt_field():
    vm = m.make_vm("v", "ns", **vm_args())
    vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0]["portz"] = []
    with pytest.raises(jsonschema.ValidationError, match="portz"):
        kubevirt_valid(vm)


def test_vm_bad_arch():
    with pytest.raises(ValueError, match="arch"):
        m.make_vm("v", "ns", **vm_args(arch="riscv64"))


CLOUD = CloudInit(user_data="#cloud-config\n{}\n", network_data="version: 2\n", meta_data="")


def test_secret_whole_and_valid():
    secret = m.make_secret(
        "labvm-alice",
        "lab",
        labels=LABELS,
        annotations=ANN,
        ssh_private_key="PRIV",
        ssh_public_key="ssh-ed25519 PUB",
        known_hosts="host ssh-ed25519 HOST\n",
        cloud_init=CLOUD,
        owner_references=[OWNER],
    )
    assert secret == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "labvm-alice",
            "namespace": "lab",
            "labels": LABELS,
            "annotations": ANN,
            "ownerReferences": [OWNER],
        },
        "type": "Opaque",
        "stringData": {
            "id_ed25519": "PRIV",
            "id_ed25519.pub": "ssh-ed25519 PUB",
            "known_hosts": "host ssh-ed25519 HOST\n",
            "userdata": "#cloud-config\n{}\n",
            "networkdata": "version: 2\n",
        },
    }
    k8s_valid(secret)


def test_service_whole_and_valid():
    svc = m.make_service("labvm-alice", "lab", labels=LABELS, server="labvm-alice")
    assert svc == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "labvm-alice", "namespace": "lab", "labels": LABELS},
        "spec": {
            "clusterIP": "None",
            "selector": {
                "kubevirt-spawner/server": "labvm-alice",
                "app.kubernetes.io/component": "lab-vm",
            },
            "publishNotReadyAddresses": True,
            "ports": [
                {"name": "ssh", "port": 22, "targetPort": 22, "protocol": "TCP"},
                {"name": "gdb", "port": 1234, "targetPort": 1234, "protocol": "TCP"},
            ],
        },
    }
    k8s_valid(svc)


def test_network_policy_whole_and_valid():
    np = m.make_network_policy(
        "labvm-alice", "lab", labels=LABELS, server="labvm-alice", owner_references=[OWNER]
    )
    assert np == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": "labvm-alice",
            "namespace": "lab",
            "labels": LABELS,
            "ownerReferences": [OWNER],
        },
        "spec": {
            "podSelector": {
                "matchLabels": {
                    "kubevirt-spawner/server": "labvm-alice",
                    "app.kubernetes.io/component": "lab-vm",
                }
            },
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {
                            "podSelector": {
                                "matchLabels": {
                                    "kubevirt-spawner/server": "labvm-alice",
                                    "component": "singleuser-server",
                                }
                            }
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": 22}, {"protocol": "TCP", "port": 1234}],
                }
            ],
        },
    }
    k8s_valid(np)


def test_vm_pod_and_notebook_pod_selectors_are_disjoint():
    # The VM's launcher pod must never match the notebook selector (and so be
    # reachable from itself as "the notebook"), nor kubespawner's pod
    # reflector (component=singleuser-server).
    vm_pod_labels = {**LABELS, "component": m.VM_COMPONENT}
    nb = m.notebook_selector("labvm-alice")
    assert not nb.items() <= vm_pod_labels.items()
    assert m.vm_selector("labvm-alice").items() <= vm_pod_labels.items()


def test_ssh_volume_in_a_valid_pod():
    volume, mount = m.make_ssh_volume("labvm-alice")
    assert volume == {
        "name": "lab-vm-ssh",
        "secret": {
            "secretName": "labvm-alice",
            "defaultMode": 0o440,
            "items": [
                {"key": "id_ed25519", "path": "id_ed25519"},
                {"key": "known_hosts", "path": "known_hosts"},
            ],
        },
    }
    assert mount == {
        "name": "lab-vm-ssh",
        "mountPath": "/etc/kubevirt-spawner/ssh",
        "readOnly": True,
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "jupyter-alice"},
        "spec": {
            "containers": [{"name": "notebook", "image": "x", "volumeMounts": [mount]}],
            "volumes": [volume],
        },
    }
    k8s_valid(pod)


def test_builders_do_not_mutate_inputs():
    labels, ann, owners = copy.deepcopy(LABELS), copy.deepcopy(ANN), [copy.deepcopy(OWNER)]
    vm = m.make_vm("v", "ns", **vm_args(labels=labels, annotations=ann), owner_references=owners)
    svc = m.make_service("v", "ns", labels=labels, server="v", owner_references=owners)
    vm["metadata"]["labels"]["x"] = "y"
    vm["metadata"]["ownerReferences"][0]["uid"] = "changed"
    svc["metadata"]["labels"]["z"] = "1"
    assert labels == LABELS and ann == ANN and owners == [OWNER]
    # VM and template labels are separate dicts, too.
    assert "x" not in vm["spec"]["template"]["metadata"]["labels"]


def test_schema_validation_is_real():
    bad = m.make_service("v", "ns", labels=LABELS, server="v")
    bad["spec"]["ports"][0]["port"] = "twenty-two"
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_valid(bad)

"""Pure builders for the Kubernetes objects behind one student's lab VM.

Each ``make_*`` returns a new plain dict (the JSON the API server takes) and
never modifies its arguments, so tests compare whole objects with expected
dicts. The async code in ``kubevirt.py`` only sends what these return.

Per server there are: a KubeVirt ``VirtualMachine``, a ``Secret`` (ssh keys
and cloud-init), a headless ``Service`` (the VM's DNS name) and a
``NetworkPolicy`` (only the owner's notebook pod may reach the VM, on ssh and
gdb). The launcher pod KubeVirt creates carries the VM template's labels,
which is what the Service and the NetworkPolicy select.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping

from ..arch import ARCHES
from ..contract import (  # noqa: F401 (the label keys, re-exported for callers)
    COMPONENT,
    MANAGED_BY,
    MANAGED_BY_VALUE,
    SERVER_LABEL,
    VM_COMPONENT,
)
from .cloudinit import CloudInit

SSH_PORT = 22
GDB_PORT = 1234

# Label keys. kubespawner's common labels (hub.jupyter.org/username, app,
# heritage, ...) come on top of these; see KubeVirtSpawner._vm_labels.
# (MANAGED_BY, COMPONENT, SERVER_LABEL, ...: contract.py, imported above.)

DEBUG_HOOK_LABEL = "kubevirt-spawner/debug-hook"

# The notebook pod's component label, as kubespawner sets it (component_label).
NOTEBOOK_COMPONENT = "singleuser-server"

HOOK_SIDECARS_ANNOTATION = "hooks.kubevirt.io/hookSidecars"
# Tells the debug hook's sidecar to let a VM started paused run (see make_vm).
RESUME_ANNOTATION = "kubevirt-spawner/resume-after-start"

# Keys in the per-server Secret.
SECRET_SSH_KEY = "id_ed25519"
SECRET_SSH_PUB = "id_ed25519.pub"
SECRET_KNOWN_HOSTS = "known_hosts"
SECRET_USERDATA = "userdata"  # names KubeVirt's cloudInitNoCloud secretRef reads
SECRET_NETWORKDATA = "networkdata"

SSH_MOUNT_PATH = "/etc/kubevirt-spawner/ssh"

# KubeVirt's spelling of the architectures (VMI spec.architecture, node label).
KUBE_ARCH = {name: a.kube_arch for name, a in ARCHES.items()}  # from the one arch table


def make_owner_reference(kind: str, api_version: str, name: str, uid: str) -> dict:
    """An ownerReference; garbage collection deletes the dependent with its owner.

    Valid only between objects of one namespace (or a cluster-scoped owner).
    """
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid,
        "blockOwnerDeletion": True,
        "controller": False,
    }


def _metadata(
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str] | None,
    owner_references: list[dict] | None,
) -> dict:
    meta = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if annotations:
        meta["annotations"] = dict(annotations)
    if owner_references:
        meta["ownerReferences"] = copy.deepcopy(owner_references)
    return meta


def vm_selector(server: str) -> dict[str, str]:
    """Labels that select exactly this server's virt-launcher pod."""
    return {SERVER_LABEL: server, COMPONENT: VM_COMPONENT}


def notebook_selector(server: str) -> dict[str, str]:
    """Labels that select exactly this server's notebook pod."""
    return {SERVER_LABEL: server, "component": NOTEBOOK_COMPONENT}


def make_hook_sidecar_annotation(configmap: str, key: str = "onDefineDomain.py") -> str:
    """The ``hooks.kubevirt.io/hookSidecars`` value running the debug hook from a
    ConfigMap in KubeVirt's sidecar-shim image (needs the ``Sidecar`` feature gate).

    ref: https://github.com/kubevirt/kubevirt/blob/main/cmd/sidecars/README.md
    """
    return json.dumps(
        [
            {
                "args": ["--version", "v1alpha2"],
                "configMap": {"name": configmap, "key": key, "hookPath": "/usr/bin/onDefineDomain"},
            }
        ],
        separators=(",", ":"),
    )


def make_vm(
    name: str,
    namespace: str,
    *,
    image: str,
    arch: str,
    cpus: int,
    memory: str,
    labels: Mapping[str, str],
    secret_name: str,
    annotations: Mapping[str, str] | None = None,
    template_annotations: Mapping[str, str] | None = None,
    node_selector: Mapping[str, str] | None = None,
    owner_references: list[dict] | None = None,
    ssh_ready_probe: bool = True,
    start_paused: bool = False,
) -> dict:
    """A ``kubevirt.io/v1`` VirtualMachine booting ``image`` (a containerDisk).

    ``labels`` go on the VM and on its template, so the virt-launcher pod gets
    them too (KubeVirt copies VMI labels to the pod). The interface declares
    port 22 only: with masquerade binding, KubeVirt then DNATs just that port
    to the guest, and the launcher pod's own port 1234 (QEMU's gdbstub, added
    by the debug hook) stays reachable on the pod IP. Without a ports list
    every port would be forwarded to the guest. See docs/cluster-apiserver.md,
    "Why port 1234 reaches QEMU".

    ``start_paused`` (with the sidecar debug hook): the VMI starts with
    ``startStrategy: Paused`` and the annotation that has the hook's sidecar
    let it run once QEMU is up. KubeVirt's virt-launcher resumes any paused
    domain it did not pause itself, which would undo every gdb stop; a VMI
    started paused counts as paused by KubeVirt for its whole life, so gdb's
    stops hold (kubevirt-build/hook/debug_hook.py, docs/cluster.md).
    """
    if arch not in KUBE_ARCH:
        raise ValueError(f"arch must be one of {sorted(KUBE_ARCH)}, not {arch!r}")
    domain: dict = {
        "cpu": {"cores": cpus, "sockets": 1, "threads": 1},
        "memory": {"guest": memory},
        "devices": {
            "disks": [
                {"name": "containerdisk", "disk": {"bus": "virtio"}},
                {"name": "cloudinitdisk", "disk": {"bus": "virtio"}},
            ],
            "interfaces": [
                {
                    "name": "default",
                    "masquerade": {},
                    "ports": [{"name": "ssh", "port": SSH_PORT, "protocol": "TCP"}],
                }
            ],
            "rng": {},
        },
    }
    if arch == "x86_64":
        domain["machine"] = {"type": "q35"}
    else:
        # arm64 guests boot through UEFI on QEMU's `virt` machine.
        domain["machine"] = {"type": "virt"}
        domain["firmware"] = {"bootloader": {"efi": {"secureBoot": False}}}
        # Headless (students use ssh and the serial console): no virtio-gpu,
        # which some arm64 virt-launcher builds lacked, failing every VM
        # (kubevirt/kubevirt#8708, #8900).
        domain["devices"]["autoattachGraphicsDevice"] = False

    template_spec: dict = {
        "architecture": KUBE_ARCH[arch],
        "domain": domain,
        "networks": [{"name": "default", "pod": {}}],
        "nodeSelector": {"kubernetes.io/arch": KUBE_ARCH[arch], **dict(node_selector or {})},
        # The VM is disposable (student work lives in the notebook's home):
        # no graceful shutdown wait when the server stops.
        "terminationGracePeriodSeconds": 0,
        "volumes": [
            {"name": "containerdisk", "containerDisk": {"image": image}},
            {
                "name": "cloudinitdisk",
                "cloudInitNoCloud": {
                    "secretRef": {"name": secret_name},
                    "networkDataSecretRef": {"name": secret_name},
                },
            },
        ],
    }
    if ssh_ready_probe:
        # VMI condition Ready=True once the guest's sshd accepts connections.
        template_spec["readinessProbe"] = {
            "tcpSocket": {"port": SSH_PORT},
            "initialDelaySeconds": 5,
            "periodSeconds": 3,
            "failureThreshold": 3,
        }
    if start_paused:
        template_spec["startStrategy"] = "Paused"
        template_annotations = {**dict(template_annotations or {}), RESUME_ANNOTATION: "true"}
    template_meta: dict = {"labels": dict(labels)}
    if template_annotations:
        template_meta["annotations"] = dict(template_annotations)
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": _metadata(name, namespace, labels, annotations, owner_references),
        "spec": {
            "runStrategy": "Always",
            "template": {"metadata": template_meta, "spec": template_spec},
        },
    }


def make_secret(
    name: str,
    namespace: str,
    *,
    labels: Mapping[str, str],
    ssh_private_key: str,
    ssh_public_key: str,
    known_hosts: str,
    cloud_init: CloudInit,
    annotations: Mapping[str, str] | None = None,
    owner_references: list[dict] | None = None,
) -> dict:
    """The per-server Secret: the notebook's ssh key and known_hosts (mounted
    into the notebook pod) and the VM's cloud-init (read by KubeVirt)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(name, namespace, labels, annotations, owner_references),
        "type": "Opaque",
        "stringData": {
            SECRET_SSH_KEY: ssh_private_key,
            SECRET_SSH_PUB: ssh_public_key,
            SECRET_KNOWN_HOSTS: known_hosts,
            SECRET_USERDATA: cloud_init.user_data,
            SECRET_NETWORKDATA: cloud_init.network_data,
        },
    }


def make_service(
    name: str,
    namespace: str,
    *,
    labels: Mapping[str, str],
    server: str,
    annotations: Mapping[str, str] | None = None,
    owner_references: list[dict] | None = None,
) -> dict:
    """A headless Service: ``<name>.<namespace>.svc`` resolves to the VM's pod IP."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace, labels, annotations, owner_references),
        "spec": {
            "clusterIP": "None",
            "selector": vm_selector(server),
            # gdb may attach while the guest still boots, before the pod is Ready.
            "publishNotReadyAddresses": True,
            "ports": [
                {"name": "ssh", "port": SSH_PORT, "targetPort": SSH_PORT, "protocol": "TCP"},
                {"name": "gdb", "port": GDB_PORT, "targetPort": GDB_PORT, "protocol": "TCP"},
            ],
        },
    }


def make_network_policy(
    name: str,
    namespace: str,
    *,
    labels: Mapping[str, str],
    server: str,
    annotations: Mapping[str, str] | None = None,
    owner_references: list[dict] | None = None,
) -> dict:
    """Ingress to this server's VM pod only from this server's notebook pod,
    only on ssh and gdb. Selecting the pod with an Ingress policy denies every
    other source, other students' pods included."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(name, namespace, labels, annotations, owner_references),
        "spec": {
            "podSelector": {"matchLabels": vm_selector(server)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": notebook_selector(server)}}],
                    "ports": [
                        {"protocol": "TCP", "port": SSH_PORT},
                        {"protocol": "TCP", "port": GDB_PORT},
                    ],
                }
            ],
        },
    }


def make_ssh_volume(secret_name: str, volume_name: str = "lab-vm-ssh") -> tuple[dict, dict]:
    """The notebook pod's read-only volume with the ssh key and known_hosts.

    Mode 0440: readable through the pod's fsGroup, and ssh accepts a group-
    readable key because the file is owned by root, not by the user.
    Returns (volume, volumeMount).
    """
    volume = {
        "name": volume_name,
        "secret": {
            "secretName": secret_name,
            "defaultMode": 0o440,
            "items": [
                {"key": SECRET_SSH_KEY, "path": SECRET_SSH_KEY},
                {"key": SECRET_KNOWN_HOSTS, "path": SECRET_KNOWN_HOSTS},
            ],
        },
    }
    mount = {"name": volume_name, "mountPath": SSH_MOUNT_PATH, "readOnly": True}
    return volume, mount

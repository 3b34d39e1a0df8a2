"""JupyterHub running inside a Kubernetes cluster with KubeVirt: every student
gets a KubeVirtSpawner server (debug-mode VM + notebook pod).

Used two ways: as the hub's whole config (`jupyterhub -f kubernetes_config.py`
in the hub image), or loaded by Zero to JupyterHub through
hub.extraConfig in values.yaml. Settings an operator changes per site are
read from the environment so the file itself stays untouched.
"""

import sys

from kubevirt_spawner import envsettings
from kubevirt_spawner.kubevirt.vmimages import DEFAULT_VM_IMAGES

c = get_config()  # noqa: F821 (provided by JupyterHub)

DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
DNS_NAME = rf"{DNS_LABEL}(\.{DNS_LABEL})*"
# Everything the environment may change, checked before anything is made
# (a wrong value stops the hub with one line naming the variable).
try:
    ns = envsettings.text("KVS_NAMESPACE", "", DNS_LABEL, "a namespace name (a DNS label)")
    ns = ns or envsettings.text("POD_NAMESPACE", "jupyterhub", DNS_LABEL, "a namespace name")
    notebook_image = envsettings.text(
        "KVS_NOTEBOOK_IMAGE",
        "registry.example.edu/lab/kubevirt-spawner-notebook:0.1",
        r"[a-z0-9][a-z0-9._/:-]*[a-z0-9](:[A-Za-z0-9_][A-Za-z0-9_.-]*)?(@sha256:[0-9a-f]{64})?",
        "a container image (registry/name:tag)",
    )
    cluster_domain = envsettings.text(
        "KVS_CLUSTER_DOMAIN", "cluster.local", DNS_NAME, "a DNS domain"
    )
    # sidecar (KubeVirt `Sidecar` gate), plugin (KubeVirt >= 1.9 `Plugins` gate)
    # or patched: see docs/cluster-apiserver.md, "The debug hook".
    debug_hook = envsettings.choice(
        "KVS_DEBUG_HOOK", "sidecar", ("sidecar", "plugin", "patched", "none")
    )
    # Under TCG (useEmulation) a cloud image needs a few minutes to boot.
    start_timeout = envsettings.integer("KVS_START_TIMEOUT", 600, minimum=30)
    IMAGES = envsettings.text(
        "KVS_VM_REGISTRY",
        "registry.example.edu/lab",
        r"[a-z0-9][a-z0-9._/:-]*[a-z0-9]",
        "a registry prefix (host[:port]/path)",
    )
except envsettings.EnvError as e:
    sys.exit(f"kubernetes_config.py: {e}")

c.JupyterHub.spawner_class = "kubevirt"  # kubevirt_spawner:KubeVirtSpawner (entry point)
c.KubeVirtSpawner.namespace = ns
c.KubeVirtSpawner.image = notebook_image
c.KubeVirtSpawner.cluster_domain = cluster_domain
c.KubeVirtSpawner.vm_debug_hook = debug_hook
c.KubeVirtSpawner.start_timeout = start_timeout
c.KubeVirtSpawner.vm_cpus = 2
c.KubeVirtSpawner.vm_memory = "2Gi"
c.KubeVirtSpawner.vm_images = {
    **DEFAULT_VM_IMAGES,  # debian-12
    "openeuler-22.03": {
        # Built by images/ (not published upstream as a containerDisk).
        "containerdisk": {
            "x86_64": f"{IMAGES}/openeuler-containerdisk:22.03-lts-sp4",
            "aarch64": f"{IMAGES}/openeuler-containerdisk:22.03-lts-sp4",
        },
        "vmlinux": "/opt/lab/kernels/openeuler-22.03/{arch}/vmlinux",
        "kdir": "/opt/lab/kernels/openeuler-22.03/{arch}/build",
    },
}

c.KubeVirtSpawner.profile_list = [
    {
        "display_name": "openEuler 22.03, x86_64",
        "slug": "openeuler-x86",
        "description": "Kernel labs on the course's industrial kernel; QEMU's edu device for the driver lab.",
        "default": True,
        "kubespawner_override": {"vm_image": "openeuler-22.03", "vm_arch": "x86_64"},
    },
    {
        "display_name": "openEuler 22.03, aarch64",
        "slug": "openeuler-arm",
        "description": "The same labs on Kunpeng-style arm64 (no edu device).",
        "kubespawner_override": {"vm_image": "openeuler-22.03", "vm_arch": "aarch64"},
    },
    {
        "display_name": "Debian 12, x86_64",
        "slug": "debian-x86",
        "kubespawner_override": {"vm_image": "debian-12", "vm_arch": "x86_64"},
    },
    {
        "display_name": "Debian 12, aarch64",
        "slug": "debian-arm",
        "kubespawner_override": {"vm_image": "debian-12", "vm_arch": "aarch64"},
    },
    {
        "display_name": "Shell and syscall labs (no VM)",
        "slug": "no-vm",
        "description": "Application-level labs in the notebook environment only.",
        "kubespawner_override": {"with_vm": False},
    },
]

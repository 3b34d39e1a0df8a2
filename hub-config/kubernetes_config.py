"""JupyterHub running inside a Kubernetes cluster with KubeVirt: every student
gets a KubeVirtSpawner server (debug-mode VM + notebook pod).

Used two ways: as the hub's whole config (`jupyterhub -f kubernetes_config.py`
in the hub image), or loaded by Zero to JupyterHub through
hub.extraConfig in values.yaml. Settings an operator changes per site are
read from the environment so the file itself stays untouched.
"""

import os

c = get_config()  # noqa: F821 (provided by JupyterHub)

c.JupyterHub.spawner_class = "kubevirt"  # kubevirt_spawner:KubeVirtSpawner (entry point)

ns = os.environ.get("KVS_NAMESPACE") or os.environ.get("POD_NAMESPACE", "jupyterhub")
c.KubeVirtSpawner.namespace = ns
c.KubeVirtSpawner.image = os.environ.get(
    "KVS_NOTEBOOK_IMAGE", "registry.example.edu/lab/kubevirt-spawner-notebook:0.1"
)
c.KubeVirtSpawner.cluster_domain = os.environ.get("KVS_CLUSTER_DOMAIN", "cluster.local")
# sidecar (KubeVirt `Sidecar` gate), plugin (KubeVirt >= 1.9 `Plugins` gate) or
# patched: see kubevirt-build/README.md.
c.KubeVirtSpawner.vm_debug_hook = os.environ.get("KVS_DEBUG_HOOK", "sidecar")
# Under TCG (useEmulation) a cloud image needs a few minutes to boot.
c.KubeVirtSpawner.start_timeout = int(os.environ.get("KVS_START_TIMEOUT", "600"))
c.KubeVirtSpawner.vm_cpus = 2
c.KubeVirtSpawner.vm_memory = "2Gi"

IMAGES = os.environ.get("KVS_VM_REGISTRY", "registry.example.edu/lab")
c.KubeVirtSpawner.vm_images = {
    "debian-12": {
        "containerdisk": {
            "x86_64": "quay.io/containerdisks/debian:12",
            "aarch64": "quay.io/containerdisks/debian:12",
        },
        "vmlinux": "/opt/lab/kernels/debian-12/{arch}/vmlinux",
        "kdir": "/opt/lab/kernels/debian-12/{arch}/build",
    },
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

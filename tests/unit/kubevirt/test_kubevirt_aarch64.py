"""The cluster backend's aarch64 VM: the whole VirtualMachine (UEFI, `virt`,
arm64 nodes, no edu), checked against KubeVirt's schema, and the notebook's
cross toolchain environment. No cluster."""

import pytest
from harness.kubefakes import HUB, FakeKube, User, fake_kubeconfig, orm_spawner  # noqa: F401
from test_manifests import ANN, LABELS, kubevirt_valid
from traitlets import TraitError

from kubevirt_spawner import KubeVirtSpawner
from kubevirt_spawner.kubevirt import manifests as m
from kubevirt_spawner.sshkeys import make_ssh_keypair

PROFILES = [
    {
        "display_name": "Debian 12, x86_64",
        "slug": "debian-x86",
        "default": True,
        "kubespawner_override": {"vm_image": "debian-12", "vm_arch": "x86_64"},
    },
    {
        "display_name": "Debian 12, aarch64",
        "slug": "debian-arm",
        "kubespawner_override": {"vm_image": "debian-12", "vm_arch": "aarch64"},
    },
    {
        "display_name": "Bad arch",
        "slug": "bad-arch",
        "kubespawner_override": {"vm_image": "debian-12", "vm_arch": "arm64"},
    },
]
IMAGES = {
    "debian-12": {
        "containerdisk": {"x86_64": "reg/debian:12", "aarch64": "reg/debian:12"},
        "vmlinux": "/opt/k/debian/{arch}/vmlinux",
        "kdir": "/opt/k/debian/{arch}/build",
    },
}


def test_vm_aarch64_whole():
    vm = m.make_vm(
        "labvm-alice",
        "lab",
        image="reg/debian:12",
        arch="aarch64",
        cpus=2,
        memory="2Gi",
        labels=LABELS,
        secret_name="labvm-alice",
        annotations=ANN,
        ssh_ready_probe=False,
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
                "metadata": {"labels": LABELS},
                "spec": {
                    "architecture": "arm64",
                    "domain": {
                        "cpu": {"cores": 2, "sockets": 1, "threads": 1},
                        "memory": {"guest": "2Gi"},
                        "machine": {"type": "virt"},
                        "firmware": {"bootloader": {"efi": {"secureBoot": False}}},
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
                            "autoattachGraphicsDevice": False,
                        },
                    },
                    "networks": [{"name": "default", "pod": {}}],
                    "nodeSelector": {"kubernetes.io/arch": "arm64"},
                    "terminationGracePeriodSeconds": 0,
                    "volumes": [
                        {"name": "containerdisk", "containerDisk": {"image": "reg/debian:12"}},
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


def test_vm_unknown_arch_is_refused():
    with pytest.raises(ValueError, match="arch must be one of"):
        m.make_vm(
            "v", "lab", image="i", arch="arm64", cpus=1, memory="1Gi", labels={}, secret_name="v"
        )


def make_spawner(**config):
    s = KubeVirtSpawner(
        user=User("alice"),
        hub=HUB,
        orm_spawner=orm_spawner(""),
        namespace="lab",
        vm_images=IMAGES,
        profile_list=PROFILES,
        **config,
    )
    s.api = s.networking_api = s.custom_api = FakeKube()
    s.api_token = "token"
    return s


async def test_aarch64_profile_gives_arm64_vm_and_cross_toolchain_env():
    s = make_spawner()
    s.user_options = {"profile": "debian-arm"}
    await s.load_user_options()
    spec = s.vm_manifests(make_ssh_keypair(), make_ssh_keypair())["virtualmachine"]["spec"]
    tspec = spec["template"]["spec"]
    assert tspec["nodeSelector"]["kubernetes.io/arch"] == "arm64"
    assert tspec["domain"]["firmware"] == {"bootloader": {"efi": {"secureBoot": False}}}
    env = s.get_env()
    assert (env["LAB_ARCH"], env["ARCH"], env["CROSS_COMPILE"]) == (
        "aarch64",
        "arm64",
        "aarch64-linux-gnu-",
    )
    assert env["LAB_VMLINUX"] == "/opt/k/debian/aarch64/vmlinux"
    assert env["LAB_KDIR"] == "/opt/k/debian/aarch64/build"


async def test_x86_profile_has_no_cross_env():
    s = make_spawner()
    s.user_options = {"profile": "debian-x86"}
    await s.load_user_options()
    env = s.get_env()
    assert env["LAB_ARCH"] == "x86_64" and "ARCH" not in env and "CROSS_COMPILE" not in env


async def test_arm64_notebooks_build_natively_for_arm64_vms():
    s = make_spawner(notebook_arch="aarch64")
    s.user_options = {"profile": "debian-arm"}
    await s.load_user_options()
    assert "CROSS_COMPILE" not in s.get_env()


async def test_profile_with_kube_spelling_of_arch_is_a_400():
    s = make_spawner()
    s.user_options = {"profile": "bad-arch"}
    with pytest.raises(Exception) as e:
        await s.load_user_options()
    assert getattr(e.value, "status_code", None) == 400
    assert "Unknown VM architecture 'arm64'" in str(getattr(e.value, "jupyterhub_message", e.value))


def test_bad_notebook_arch_is_one_line():
    with pytest.raises(TraitError) as e:
        make_spawner(notebook_arch="amd64")
    assert str(e.value) == (
        "KubeVirtSpawner.notebook_arch: unsupported arch 'amd64'; choose one of: aarch64, x86_64"
    )

"""KubeVirtSpawner without a cluster: names, labels, LAB_* environment, the
notebook pod's additions, and bad input refused with a 400 before any API
call. Lifecycle (start/stop/poll/progress) is in test_kubevirt_lifecycle.py."""

import itertools
import re

import pytest
from harness.kubefakes import HUB, FakeKube, User, orm_spawner, serialize
from kubespawner.slugs import is_valid_label

from kubevirt_spawner import KubeVirtSpawner
from kubevirt_spawner.kubevirt import manifests
from kubevirt_spawner.lab import LabEnv
from kubevirt_spawner.sshkeys import make_ssh_keypair

DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS_1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

PROFILES = [
    {"display_name": "Debian x86", "slug": "debian", "default": True},
    {
        "display_name": "openEuler arm",
        "slug": "openeuler-arm",
        "kubespawner_override": {"vm_image": "openeuler-22.03", "vm_arch": "aarch64"},
    },
    {
        "display_name": "Broken image",
        "slug": "broken",
        "kubespawner_override": {"vm_image": "no-such-image"},
    },
    {"display_name": "Shell only", "slug": "shell", "kubespawner_override": {"with_vm": False}},
]
IMAGES = {
    "debian-12": {
        "containerdisk": {"x86_64": "reg/debian:12", "aarch64": "reg/debian:12"},
        "vmlinux": "/opt/k/debian/{arch}/vmlinux",
        "kdir": "/opt/k/debian/{arch}/build",
    },
    "openeuler-22.03": {
        "containerdisk": {"aarch64": "reg/openeuler:22.03"},
        "vmlinux": "/opt/k/oe/{arch}/vmlinux",
        "kdir": "/opt/k/oe/{arch}/build",
    },
}


def make_spawner(username="alice", server="", **config):
    s = KubeVirtSpawner(
        user=User(username),
        hub=HUB,
        orm_spawner=orm_spawner(server),
        namespace="lab",
        vm_images=IMAGES,
        profile_list=PROFILES,
        **config,
    )
    kube = FakeKube()
    s.api = s.networking_api = s.custom_api = kube
    s.api_token = "token"
    return s, kube


USERNAMES = [
    pytest.param("alice", id="plain"),
    pytest.param("Alice", id="capital"),
    pytest.param("alice.smith", id="dot"),
    pytest.param("Alice.Smith@uni.edu", id="email"),
    pytest.param("ålice-çé", id="unicode"),
    pytest.param("学生一号", id="cjk"),
    pytest.param("a" * 60, id="60-chars"),
    pytest.param("a" * 61 + "b", id="62-chars"),
    pytest.param("x" * 200, id="200-chars"),
    pytest.param("alice--x", id="double-dash"),
    pytest.param("-alice-", id="edge-dashes"),
    pytest.param("1234", id="digits"),
]


@pytest.mark.parametrize("username", USERNAMES)
@pytest.mark.parametrize("server", ["", "Gpu.1", "s" * 70])
async def test_every_object_name_is_dns_1035(username, server):
    s, _ = make_spawner(username, server)
    await s.load_user_options()
    objs = s.vm_manifests(make_ssh_keypair(), make_ssh_keypair())
    names = {o["metadata"]["name"] for o in objs.values()} | {s.pod_name}
    for name in names:
        assert len(name) <= 63 and DNS_1035.fullmatch(name), name
    for obj in objs.values():
        for key, value in obj["metadata"]["labels"].items():
            assert is_valid_label(value), (key, value)
    host = s._lab_env().vm_host
    assert len(host) <= 253 and DNS_1123_SUBDOMAIN.fullmatch(host), host
    # The launcher pod name KubeVirt generates from the VM name stays valid.
    assert len(f"virt-launcher-{s.vm_name}-"[:58] + "abcde") <= 63


async def test_names_are_unique_across_similar_users_and_servers():
    users = ["alice", "Alice", "ALICE", "alice.", "alice-", "ålice", "alice--", "a" * 70, "a" * 71]
    servers = ["", "x", "X", "x.1", "x-1"]
    seen = {}
    for user, server in itertools.product(users, servers):
        s, _ = make_spawner(user, server)
        assert s.vm_name not in seen, (user, server, seen.get(s.vm_name))
        seen[s.vm_name] = (user, server)
    assert len(seen) == len(users) * len(servers)


async def test_labels_let_a_reaper_find_everything():
    s, _ = make_spawner("Alice.Smith", "gpu")
    await s.load_user_options()
    objs = s.vm_manifests(make_ssh_keypair(), make_ssh_keypair())
    for obj in objs.values():
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "kubevirt-spawner"
        assert labels["app.kubernetes.io/component"] == "lab-vm"
        assert labels["kubevirt-spawner/server"] == s.vm_name
        # A valid label value already: kubespawner keeps it as is.
        assert labels["hub.jupyter.org/username"] == "Alice.Smith"
        assert labels["app.kubernetes.io/name"] == "jupyterhub"
        # kubespawner's annotations keep the unescaped names.
        assert obj["metadata"]["annotations"]["hub.jupyter.org/username"] == "Alice.Smith"
        assert obj["metadata"]["annotations"]["hub.jupyter.org/servername"] == "gpu"
    template = objs["virtualmachine"]["spec"]["template"]["metadata"]
    assert template["labels"]["kubevirt-spawner/debug-hook"] == "true"
    # Never the notebook's component: kubespawner's pod reflector and z2jh's
    # singleuser NetworkPolicy select component=singleuser-server.
    assert template["labels"]["component"] == "lab-vm"


async def test_lab_env_and_known_hosts():
    s, _ = make_spawner()
    await s.load_user_options()
    env = s.get_env()
    host = f"{s.vm_name}.lab.svc.cluster.local"
    assert {k: v for k, v in env.items() if k.startswith("LAB_")} == {
        "LAB_VM_HOST": host,
        "LAB_VM_SSH_PORT": "22",
        "LAB_GDB_REMOTE": f"| python3 -m kubevirt_spawner.gdbrelay tcp:{host}:1234",
        "LAB_VMLINUX": "/opt/k/debian/x86_64/vmlinux",
        "LAB_KDIR": "/opt/k/debian/x86_64/build",
        "LAB_ARCH": "x86_64",
        "LAB_SSH_KEY": "/etc/kubevirt-spawner/ssh/id_ed25519",
        "LAB_SSH_KNOWN_HOSTS": "/etc/kubevirt-spawner/ssh/known_hosts",
        "LAB_BACKEND": "kubevirt",
    }
    # What labvm reads back is the same contract.
    assert LabEnv.from_environ(env).gdb_remote == env["LAB_GDB_REMOTE"]
    host_key = make_ssh_keypair()
    secret = s.vm_manifests(make_ssh_keypair(), host_key)["secret"]
    assert secret["stringData"]["known_hosts"] == f"{host} {host_key.public_key}\n"


async def test_notebook_pod_mounts_the_key_and_is_selected_by_the_policy():
    s, _ = make_spawner()
    await s.load_user_options()
    pod = await s.get_pod_manifest()
    pod = serialize(pod)
    volume, mount = manifests.make_ssh_volume(s.vm_name)
    assert pod["spec"]["volumes"][-1] == volume
    assert pod["spec"]["containers"][0]["volumeMounts"][-1] == mount
    assert pod["spec"]["securityContext"]["fsGroup"] == 100
    labels = pod["metadata"]["labels"]
    policy = s.vm_manifests(make_ssh_keypair(), make_ssh_keypair())["network_policy"]
    allowed = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert allowed.items() <= labels.items()


async def test_profile_picks_image_and_arch():
    s, _ = make_spawner()
    s.user_options = {"profile": "openeuler-arm"}
    await s.load_user_options()
    vm = s.vm_manifests(make_ssh_keypair(), make_ssh_keypair())["virtualmachine"]
    spec = vm["spec"]["template"]["spec"]
    assert spec["volumes"][0]["containerDisk"]["image"] == "reg/openeuler:22.03"
    assert spec["architecture"] == "arm64" and spec["domain"]["machine"] == {"type": "virt"}
    assert s.get_env()["LAB_VMLINUX"] == "/opt/k/oe/aarch64/vmlinux"


@pytest.mark.parametrize(
    "route, paused",
    [
        pytest.param("sidecar", True, id="sidecar"),
        pytest.param("plugin", False, id="plugin"),
        pytest.param("patched", False, id="patched"),
        pytest.param("none", False, id="none"),
    ],
)
async def test_only_the_sidecar_route_starts_vms_paused(route, paused):
    s, _ = make_spawner(vm_debug_hook=route)
    await s.load_user_options()
    vm = s.vm_manifests(make_ssh_keypair(), make_ssh_keypair())["virtualmachine"]
    template = vm["spec"]["template"]
    assert (template["spec"].get("startStrategy") == "Paused") is paused
    annotations = template["metadata"].get("annotations") or {}
    assert (annotations.get(manifests.RESUME_ANNOTATION) == "true") is paused


async def test_profile_without_vm_has_no_lab_env_or_volume():
    s, _ = make_spawner()
    s.user_options = {"profile": "shell"}
    await s.load_user_options()
    assert not [k for k in s.get_env() if k.startswith("LAB_")]
    pod = serialize(await s.get_pod_manifest())
    assert all(v["name"] != "lab-vm-ssh" for v in pod["spec"].get("volumes", []))
    assert manifests.SERVER_LABEL not in pod["metadata"]["labels"]


@pytest.mark.parametrize(
    "options, match",
    [
        pytest.param({"profile": "nope"}, "No such profile: nope", id="unknown-profile"),
        pytest.param({"profile": "broken"}, "Unknown VM image 'no-such-image'", id="unknown-image"),
        pytest.param(
            {"vm_arch": "riscv64"}, "Unknown VM architecture 'riscv64'", id="unknown-arch"
        ),
        pytest.param(
            {"vm_image": "openeuler-22.03"}, "not available for x86_64", id="image-not-for-arch"
        ),
    ],
)
async def test_bad_choice_is_a_400_before_anything_is_created(options, match):
    s, kube = make_spawner()
    s.user_options = options
    with pytest.raises(Exception) as info:
        await s.start()
    err = info.value
    assert getattr(err, "status_code", None) == 400, repr(err)
    assert re.search(match, str(err)), str(err)
    assert kube.calls == [] and kube.objects == {}


async def test_state_round_trip():
    s, _ = make_spawner("bob")
    s.vm_started = True
    state = s.get_state()
    assert state["vm_name"] == s.vm_name and state["vm_started"] is True
    t, _ = make_spawner("bob", vm_name_template="other-{user_server}")
    t.load_state(state)
    assert t.vm_name == s.vm_name and t.vm_started
    t.clear_state()
    assert t.vm_name == "other-bob" and not t.vm_started


def test_config_help_strings_are_actionable():
    for name in (
        "vm_images",
        "vm_image",
        "vm_arch",
        "vm_cpus",
        "vm_memory",
        "with_vm",
        "vm_name_template",
        "vm_debug_hook",
        "vm_delete_timeout",
    ):
        trait = KubeVirtSpawner.class_traits()[name]
        assert trait.metadata.get("config") and len(trait.help) > 30, name


def test_bad_catalogue_is_refused_at_config_time():
    with pytest.raises(Exception, match="unknown arch 'sparc'"):
        KubeVirtSpawner.class_traits()["vm_images"]  # the trait exists
        from kubevirt_spawner.kubevirt.vmimages import check_catalogue

        check_catalogue({"x": {"containerdisk": {"sparc": "img"}}})


async def test_gdb_goes_through_the_relay_with_the_configured_python():
    s, _ = make_spawner(gdb_relay_python="/opt/lab/venv/bin/python")
    await s.load_user_options()
    assert s.get_env()["LAB_GDB_REMOTE"] == (
        f"| /opt/lab/venv/bin/python -m kubevirt_spawner.gdbrelay "
        f"tcp:{s.vm_name}.lab.svc.cluster.local:1234"
    )

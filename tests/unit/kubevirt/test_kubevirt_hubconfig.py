"""hub-config for the cluster backend: every profile resolves to an offered
VM image, the standalone config and the z2jh values agree, and the RBAC Role
grants every API call a start + stop makes (and is schema-valid)."""

import asyncio
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from harness.kubefakes import fake_kubeconfig  # noqa: F401 (fixture)
from test_kubevirt_lifecycle import READY_VMI, RUNNING_POD, cluster  # noqa: F401 (fixture)

from kubevirt_spawner.kubevirt.vmimages import check_catalogue, choose_vm_image

HUB_CONFIG = Path(__file__).resolve().parents[3] / "hub-config"
VALUES = yaml.safe_load((HUB_CONFIG / "values.yaml").read_text())


class Config(dict):
    def __getattr__(self, name):
        return self.setdefault(name, Config())

    def __setattr__(self, name, value):
        self[name] = value


def standalone_config() -> Config:
    c = Config()
    code = (HUB_CONFIG / "kubernetes_config.py").read_text()
    exec(compile(code, "kubernetes_config.py", "exec"), {"get_config": lambda: c})
    return c


def test_standalone_config_profiles_resolve():
    c = standalone_config()
    assert c.JupyterHub.spawner_class == "kubevirt"
    spawner = c.KubeVirtSpawner
    check_catalogue(spawner.vm_images)
    for profile in spawner.profile_list:
        override = profile.get("kubespawner_override", {})
        if override.get("with_vm") is False:
            continue
        choose_vm_image(spawner.vm_images, override["vm_image"], override["vm_arch"])


def test_values_profiles_resolve_and_match_the_standalone_config():
    hub = VALUES["hub"]["config"]
    assert hub["JupyterHub"]["spawner_class"] == "kubevirt"
    images = hub["KubeVirtSpawner"]["vm_images"]
    check_catalogue(images)
    profiles = VALUES["singleuser"]["profileList"]
    assert sum(bool(p.get("default")) for p in profiles) == 1
    for profile in profiles:
        override = profile["kubespawner_override"]
        if override.get("with_vm") is False:
            continue
        choose_vm_image(images, override["vm_image"], override["vm_arch"])
    assert images == standalone_config().KubeVirtSpawner.vm_images
    assert [p["slug"] for p in profiles] == [
        p["slug"] for p in standalone_config().KubeVirtSpawner.profile_list
    ]


def test_values_let_notebooks_reach_lab_vms_and_cull():
    egress = VALUES["singleuser"]["networkPolicy"]["egress"]
    (rule,) = egress
    assert rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "lab-vm"
    assert sorted(p["port"] for p in rule["ports"]) == [22, 1234]
    assert VALUES["singleuser"]["fsGid"] == 100
    assert VALUES["cull"]["enabled"] is True


# z2jh's hub Role (its chart's templates/hub/rbac.yaml), which rbac.yaml adds to.
Z2JH = {
    ("", r): {"get", "watch", "list", "create", "delete"}
    for r in ("pods", "persistentvolumeclaims", "secrets", "services")
}
Z2JH[("", "events")] = {"get", "watch", "list"}
RESOURCE = {
    "pod": ("", "pods"),
    "secret": ("", "secrets"),
    "service": ("", "services"),
    "network_policy": ("networking.k8s.io", "networkpolicies"),
    "virtualmachines": ("kubevirt.io", "virtualmachines"),
}


def granted() -> dict:
    role, binding = yaml.safe_load_all((HUB_CONFIG / "rbac.yaml").read_text())
    kubernetes_validate.validate(role, "1.33", strict=True)
    kubernetes_validate.validate(binding, "1.33", strict=True)
    allowed = {k: set(v) for k, v in Z2JH.items()}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                allowed.setdefault((group, res), set()).update(rule["verbs"])
    return allowed


async def test_rbac_grants_every_call_of_a_start_and_stop(cluster):  # noqa: F811
    s = cluster.spawner()
    cluster.pods.status[s.pod_name] = RUNNING_POD
    cluster.vmis.status[s.vm_name] = READY_VMI
    await asyncio.wait_for(s.start(), 30)
    await asyncio.wait_for(s.stop(), 30)
    allowed = granted()
    used = {
        (RESOURCE[kind], {"read": "get"}.get(verb, verb)) for verb, kind, _ in cluster.kube.calls
    }
    # The reflectors list and watch these (faked here, real in a cluster).
    used |= {(("kubevirt.io", "virtualmachines"), v) for v in ("list", "watch")}
    used |= {(("kubevirt.io", "virtualmachineinstances"), v) for v in ("list", "watch")}
    used |= {(("", "events"), v) for v in ("list", "watch")}
    missing = sorted((res, verb) for res, verb in used if verb not in allowed.get(res, set()))
    assert not missing, f"rbac.yaml lacks {missing}"
    assert (("kubevirt.io", "virtualmachines"), "patch") in used


def test_rbac_is_least_privilege():
    allowed = granted()
    # Nothing cluster-wide, nothing that writes VMIs, no escalate/bind/*.
    assert "*" not in set().union(*allowed.values())
    assert not allowed[("kubevirt.io", "virtualmachineinstances")] - {"list", "watch"}
    assert not allowed[("networking.k8s.io", "networkpolicies")] - {"create", "get", "delete"}
    assert allowed[("", "pods/log")] == {"get"}  # read a launcher's guest console, nothing more


@pytest.mark.parametrize("name", ["values.yaml", "rbac.yaml", "manager-rbac.yaml"])
def test_yaml_parses(name):
    assert list(yaml.safe_load_all((HUB_CONFIG / name).read_text()))


def test_manager_rbac_is_namespaced_valid_and_grants_no_secrets():
    """What it grants is tested against the real authorizer in
    tests/cluster/test_manager_cluster_reaper.py; here: schema-valid, nothing
    cluster-wide, no Secrets, no wildcard, no write but delete."""
    docs = list(yaml.safe_load_all((HUB_CONFIG / "manager-rbac.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["ServiceAccount", "Role", "RoleBinding"]
    for d in docs:
        kubernetes_validate.validate(d, "1.33", strict=True)
    rules = docs[1]["rules"]
    resources = {r for rule in rules for r in rule["resources"]}
    verbs = {v for rule in rules for v in rule["verbs"]}
    assert "secrets" not in resources and "*" not in resources | verbs
    assert verbs <= {"get", "list", "delete"}
    assert not any("/" in r for r in resources), "no subresources (exec, console, ...)"
    assert docs[2]["subjects"] == [{"kind": "ServiceAccount", "name": "lab-manager"}]


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        pytest.param(
            "KVS_START_TIMEOUT",
            "ten",
            "KVS_START_TIMEOUT must be a whole number (30 or more), not 'ten'",
            id="timeout-word",
        ),
        pytest.param(
            "KVS_START_TIMEOUT", "5", "KVS_START_TIMEOUT must be a whole number", id="timeout-small"
        ),
        pytest.param(
            "KVS_DEBUG_HOOK",
            "gdb",
            "KVS_DEBUG_HOOK must be one of sidecar, plugin, patched, none, not 'gdb'",
            id="hook",
        ),
        pytest.param(
            "KVS_NAMESPACE", "Lab_NS", "KVS_NAMESPACE must be a namespace name", id="namespace"
        ),
        pytest.param(
            "KVS_NOTEBOOK_IMAGE",
            "my image",
            "KVS_NOTEBOOK_IMAGE must be a container image",
            id="image",
        ),
        pytest.param(
            "KVS_CLUSTER_DOMAIN",
            "cluster..local",
            "KVS_CLUSTER_DOMAIN must be a DNS domain",
            id="domain",
        ),
        pytest.param(
            "KVS_VM_REGISTRY",
            "reg/ lab",
            "KVS_VM_REGISTRY must be a registry prefix",
            id="registry",
        ),
    ],
)
def test_a_wrong_environment_stops_the_cluster_config_in_one_line(monkeypatch, var, value, message):
    monkeypatch.setenv(var, value)
    with pytest.raises(SystemExit) as e:
        standalone_config()
    assert str(e.value).startswith(f"kubernetes_config.py: {message}")
    assert "\n" not in str(e.value)


def test_the_cluster_hub_refuses_a_wrong_environment_before_making_anything(tmp_path):
    """The hub itself, started on kubernetes_config.py in an empty directory
    with a wrong KVS_START_TIMEOUT: it exits with that one line and leaves the
    directory empty (no database, no cookie secret)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("KVS_")}
    env["KVS_START_TIMEOUT"] = "ten"
    cwd = tmp_path / "hub"
    cwd.mkdir()
    jupyterhub = Path(sys.executable).parent / "jupyterhub"
    r = subprocess.run(
        [str(jupyterhub), "-f", str(HUB_CONFIG / "kubernetes_config.py")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert r.stderr.strip().splitlines()[-1] == (
        "kubernetes_config.py: KVS_START_TIMEOUT must be a whole number (30 or more), not 'ten'"
    ), r.stderr[-2000:]
    assert list(cwd.iterdir()) == [], "the hub made files before refusing"

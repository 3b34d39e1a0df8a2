"""hub-config/rbac.yaml against the real RBAC authorizer.

The hub's ServiceAccount, bound to that Role (plus the hub Role Zero to
JupyterHub grants, which rbac.yaml says it builds on), can do what the spawner
does and little else; a notebook pod's ServiceAccount can neither read nor
touch any VM.
(The end-to-end spawn with that same Role is in test_kubevirt_spawner_e2e.py.)
"""

from __future__ import annotations

import pytest
import yaml
from harness.kube import KV, minimal_vm, status_of
from harness.kubehub import RBAC_YAML, apply_rbac
from kubernetes import client

# (verb, API group, resource): what KubeVirtSpawner and KubeSpawner do in the namespace.
HUB_NEEDS = [
    *[
        (v, "kubevirt.io", "virtualmachines")
        for v in ("create", "get", "list", "watch", "patch", "delete")
    ],
    *[(v, "kubevirt.io", "virtualmachineinstances") for v in ("list", "watch")],
    *[(v, "", "pods") for v in ("create", "get", "list", "watch", "delete")],
    *[(v, "", "services") for v in ("create", "get", "delete")],
    *[(v, "", "secrets") for v in ("create", "get", "delete")],
    *[(v, "networking.k8s.io", "networkpolicies") for v in ("create", "get", "delete")],
    *[(v, "", "events") for v in ("list", "watch")],
]
# Reading or touching a VM in any way.
VM_RESOURCES = ["virtualmachines", "virtualmachineinstances", "virtualmachines/status"]
ALL_VERBS = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]


def _exists(cluster, namespace, sa) -> bool:
    return status_of(cluster.core.read_namespaced_service_account, sa, namespace) == 200


def can(cluster, namespace, sa, verb, group, resource) -> bool:
    return cluster.sa_can(namespace, sa, verb, group, resource)


def test_hub_role_allows_what_the_spawner_does(cluster, namespace, tmp_path):
    sa = apply_rbac(cluster, namespace)
    missing = [n for n in HUB_NEEDS if not can(cluster, namespace, sa, *n)]
    assert not missing, f"{RBAC_YAML.name}'s Role lacks {missing}"

    # And for real, with the ServiceAccount's own token.
    kc = cluster.token_kubeconfig(tmp_path / "hub", cluster.service_account_token(namespace, sa))
    custom = client.CustomObjectsApi(cluster.api_client(kc))
    custom.create_namespaced_custom_object(
        *KV,
        namespace,
        "virtualmachines",
        minimal_vm("hub-made", run_strategy="Halted"),
        field_validation="Strict",
    )
    assert custom.list_namespaced_custom_object(*KV, namespace, "virtualmachines")["items"]
    custom.delete_namespaced_custom_object(*KV, namespace, "virtualmachines", "hub-made")


def test_hub_role_is_least_privilege(cluster, namespace, tmp_path):
    sa = apply_rbac(cluster, namespace)
    for verb, group, resource, ns in [
        ("list", "", "secrets", "kube-system"),
        ("create", "kubevirt.io", "virtualmachines", "default"),
        ("create", "rbac.authorization.k8s.io", "rolebindings", namespace),
        ("escalate", "rbac.authorization.k8s.io", "roles", namespace),
        ("update", "kubevirt.io", "kubevirts", namespace),
    ]:
        review = client.V1SubjectAccessReview(
            spec={
                "user": f"system:serviceaccount:{namespace}:{sa}",
                "resourceAttributes": {
                    "namespace": ns,
                    "verb": verb,
                    "group": group,
                    "resource": resource,
                },
            }
        )
        assert not cluster.authz.create_subject_access_review(review).status.allowed, (
            verb,
            resource,
            ns,
        )
    kc = cluster.token_kubeconfig(tmp_path / "hub", cluster.service_account_token(namespace, sa))
    core = client.CoreV1Api(cluster.api_client(kc))
    assert status_of(core.list_namespaced_secret, "kube-system") == 403
    assert status_of(core.list_node) == 403


def notebook_service_accounts() -> list[str]:
    """``default`` (what a notebook pod runs as unless told) plus any notebook SA in rbac.yaml."""
    names = ["default"]
    if RBAC_YAML.is_file():
        for d in yaml.safe_load_all(RBAC_YAML.read_text()):
            if d and d.get("kind") == "ServiceAccount" and "notebook" in d["metadata"]["name"]:
                names.append(d["metadata"]["name"])
    return names


@pytest.mark.parametrize("sa", notebook_service_accounts())
def test_notebook_service_account_cannot_touch_vms(cluster, namespace, tmp_path, sa):
    if RBAC_YAML.is_file():
        apply_rbac(cluster, namespace)  # the hub's Role exists beside it, as deployed
    if not _exists(cluster, namespace, sa):
        cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": sa}})
    allowed = [
        (verb, res)
        for res in VM_RESOURCES
        for verb in ALL_VERBS
        if can(cluster, namespace, sa, verb, "kubevirt.io", res)
    ]
    assert not allowed, f"notebook ServiceAccount {sa} may {allowed}"

    victim = cluster.create_vm(namespace, minimal_vm("victim", run_strategy="Halted"))
    kc = cluster.token_kubeconfig(tmp_path / "nb", cluster.service_account_token(namespace, sa))
    custom = client.CustomObjectsApi(cluster.api_client(kc))
    name = victim["metadata"]["name"]
    attempts = {
        "get": lambda: custom.get_namespaced_custom_object(*KV, namespace, "virtualmachines", name),
        "list": lambda: custom.list_namespaced_custom_object(*KV, namespace, "virtualmachines"),
        "list-vmis": lambda: custom.list_namespaced_custom_object(
            *KV, namespace, "virtualmachineinstances"
        ),
        "patch": lambda: custom.patch_namespaced_custom_object(
            *KV, namespace, "virtualmachines", name, {"spec": {"runStrategy": "Always"}}
        ),
        "delete": lambda: custom.delete_namespaced_custom_object(
            *KV, namespace, "virtualmachines", name
        ),
        "create": lambda: custom.create_namespaced_custom_object(
            *KV, namespace, "virtualmachines", minimal_vm("evil")
        ),
    }
    codes = {what: status_of(fn) for what, fn in attempts.items()}
    assert set(codes.values()) == {403}, codes
    assert cluster.vm(namespace, name)["spec"]["runStrategy"] == "Halted"


# What would let a student read another student's (or their own) VM key,
# or get into a VM or a pod past the NetworkPolicy: Secrets; exec, attach
# and port-forward into pods; KubeVirt's subresource API (console, VNC,
# port-forward; served by virt-api, authorized by the API server's RBAC).
SECRET_VERBS = [(v, "", "secrets") for v in ("get", "list", "watch")]
POD_ENTRY = [
    (v, "", f"pods/{sub}") for sub in ("exec", "attach", "portforward") for v in ("get", "create")
]
KUBEVIRT_SUBRESOURCES = [
    (v, "subresources.kubevirt.io", res)
    for res in (
        "virtualmachineinstances/console",
        "virtualmachineinstances/vnc",
        "virtualmachineinstances/portforward",
        "virtualmachines/portforward",
    )
    for v in ("get", "create", "update")
]


@pytest.mark.parametrize("sa", notebook_service_accounts())
def test_notebook_service_account_cannot_read_secrets_or_get_into_pods_and_vms(
    cluster, namespace, tmp_path, sa
):
    """In its own namespace (its own server's Secret and pods: itself
    included) and in any other."""
    apply_rbac(cluster, namespace)
    if not _exists(cluster, namespace, sa):
        cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": sa}})
    allowed = [
        (verb, group, res, ns)
        for ns in (namespace, "default")
        for verb, group, res in SECRET_VERBS + POD_ENTRY + KUBEVIRT_SUBRESOURCES
        if cluster.sa_can(namespace, sa, verb, group, res, namespace=ns)
    ]
    assert not allowed, f"notebook ServiceAccount {sa} may {allowed}"

    # For real, with its token: a server's Secret, and a pod running as it.
    cluster.core.create_namespaced_secret(
        namespace, {"metadata": {"name": "labvm-alice"}, "stringData": {"id_ed25519": "key"}}
    )
    pod = {
        "metadata": {"name": "jupyter-alice"},
        "spec": {
            "serviceAccountName": sa,
            "containers": [{"name": "notebook", "image": "example/notebook"}],
        },
    }
    cluster.core.create_namespaced_pod(namespace, pod)
    token = cluster.service_account_token(namespace, sa)
    core = client.CoreV1Api(cluster.api_client(cluster.token_kubeconfig(tmp_path / "nb", token)))
    exec_args = {"command": ["cat", "/etc/kubevirt-spawner/ssh/id_ed25519"], "stdout": True}
    codes = {
        "get secret": status_of(core.read_namespaced_secret, "labvm-alice", namespace),
        "list secrets": status_of(core.list_namespaced_secret, namespace),
        "watch secrets": status_of(
            core.list_namespaced_secret, namespace, watch=True, timeout_seconds=1
        ),
        "list secrets elsewhere": status_of(core.list_namespaced_secret, "default"),
        "exec (GET)": status_of(
            core.connect_get_namespaced_pod_exec, "jupyter-alice", namespace, **exec_args
        ),
        "exec (POST)": status_of(
            core.connect_post_namespaced_pod_exec, "jupyter-alice", namespace, **exec_args
        ),
    }
    assert set(codes.values()) == {403}, codes

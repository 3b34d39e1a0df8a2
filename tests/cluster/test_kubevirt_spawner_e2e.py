"""KubeVirtSpawner end to end: JupyterHub's REST API -> a real API server.

The hub runs as a subprocess with KubeVirtSpawner, authenticated only as a
ServiceAccount bound to hub-config/rbac.yaml's Role. VMs are run by the
stand-in KubeVirt controller (or real KubeVirt with KUBECONFIG), pods by
KWOK, and notebook pods answer through StandInNotebookServers.
"""

from __future__ import annotations

import pytest
from fake_kubevirt_controller import FAILURE_CONFIGMAP
from kube import KV, get_or_none, policy_reach, wait_for
from kubehub import apply_rbac, kill_hub, kube_hub, leftovers, wait_nothing_left
from notebook_standin import StandInNotebookServers

LAB_VARS = (
    "LAB_VM_HOST",
    "LAB_VM_SSH_PORT",
    "LAB_GDB_REMOTE",
    "LAB_VMLINUX",
    "LAB_KDIR",
    "LAB_ARCH",
)


@pytest.fixture(scope="module")
def notebooks(cluster):
    if not cluster.is_local:
        yield None  # a real cluster runs the notebook pods itself
        return
    servers = StandInNotebookServers(cluster.api_client()).start()
    yield servers
    servers.stop()


@pytest.fixture
def hub_sa(cluster, namespace):
    sa = apply_rbac(cluster, namespace)
    return sa


@pytest.fixture
def hub_kubeconfig(cluster, namespace, hub_sa, tmp_path):
    token = cluster.service_account_token(namespace, hub_sa)
    return cluster.token_kubeconfig(tmp_path / "hub-kubeconfig", token)


@pytest.fixture
def hub(cluster, namespace, hub_kubeconfig, notebooks, tmp_path, request):
    h = kube_hub(tmp_path, namespace, hub_kubeconfig).start()
    yield h
    h.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"--- hub.log ---\n{h.log_tail(80)}")


def objects_of(cluster, ns, user):
    vm = f"labvm-{user}"
    return {
        "pod": get_or_none(cluster.core.read_namespaced_pod, f"jupyter-{user}", ns),
        "vm": cluster.vm(ns, vm),
        "vmi": cluster.vmi(ns, vm),
        "launcher": cluster.launcher_pods(ns, vm) or None,
        "service": get_or_none(cluster.core.read_namespaced_service, vm, ns),
        "networkpolicy": get_or_none(cluster.networking.read_namespaced_network_policy, vm, ns),
        "secret": get_or_none(cluster.core.read_namespaced_secret, vm, ns),
    }


def assert_ready(events, hub):
    assert events, "no progress events"
    assert events[-1].get("ready"), f"spawn did not succeed: {events[-1]}\n{hub.log_tail(40)}"


def test_spawn_objects_env_policy_and_stop(cluster, namespace, hub):
    events = hub.spawn("alice", timeout=120)
    assert_ready(events, hub)
    messages = " | ".join(e.get("message", "") for e in events)
    assert "labvm-alice" in messages, messages  # the VM's progress reached the hub

    objs = objects_of(cluster, namespace, "alice")
    assert all(objs.values()), {k: v is not None for k, v in objs.items()}
    vm = objs["vm"]
    labels = vm["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "kubevirt-spawner"
    assert labels["hub.jupyter.org/username"] == "alice"
    assert labels["kubevirt-spawner/server"] == "labvm-alice"
    tmpl = vm["spec"]["template"]
    assert tmpl["metadata"]["labels"]["kubevirt-spawner/server"] == "labvm-alice"
    assert vm["spec"]["runStrategy"] == "Always"
    assert tmpl["spec"]["domain"]["memory"]["guest"] == "256Mi"  # c.KubeVirtSpawner.vm_memory

    # Secret, Service and NetworkPolicy are owned by the VM; the VM by the notebook pod.
    uid = vm["metadata"]["uid"]
    for kind in ("service", "networkpolicy", "secret"):
        refs = objs[kind].metadata.owner_references or []
        assert any(r.uid == uid for r in refs), f"{kind} is not owned by the VM"
    pod = objs["pod"]
    assert any(r["uid"] == pod.metadata.uid for r in vm["metadata"].get("ownerReferences") or [])

    # The launcher pod carries the template labels, as KubeVirt copies them.
    (launcher,) = objs["launcher"]
    assert launcher["metadata"]["labels"]["kubevirt-spawner/server"] == "labvm-alice"
    assert objs["vmi"]["status"]["interfaces"][0]["ipAddress"] == launcher["status"]["podIP"]

    env = {e.name: e.value for e in pod.spec.containers[0].env or []}
    missing = [v for v in LAB_VARS if not env.get(v)]
    assert not missing, f"notebook pod lacks {missing}"
    assert env["LAB_VM_HOST"] == f"labvm-alice.{namespace}.svc.cluster.local"
    assert env["LAB_VM_SSH_PORT"] == "22"
    assert env["LAB_GDB_REMOTE"] == f"labvm-alice.{namespace}.svc.cluster.local:1234"
    assert env["LAB_ARCH"] == "x86_64"

    # NetworkPolicy: exactly alice's launcher pod, reachable only from alice's notebook.
    assert_ready(hub.spawn("bob", timeout=120), hub)
    policy = cluster.networking.read_namespaced_network_policy("labvm-alice", namespace)
    policy_dict = cluster.api_client().sanitize_for_serialization(policy)
    targets, sources = policy_reach(cluster, namespace, policy_dict)
    assert targets == {launcher["metadata"]["name"]}
    assert sources == {f"{namespace}/jupyter-alice"}

    # Stop through the REST API: every object reads 404 (the GC included).
    hub.stop_server("alice", timeout=120)
    wait_for(
        "every object of alice gone",
        lambda: not any(objects_of(cluster, namespace, "alice").values()),
        90,
    )
    assert all(objects_of(cluster, namespace, "bob").values()), "bob's server is untouched"
    hub.stop_server("bob", timeout=120)
    wait_nothing_left(cluster, namespace, 90)


@pytest.mark.parametrize(
    "mode, words",
    [
        ("image-pull", ("image", "ImagePull")),
        ("unschedulable", ("no node can run", "Insufficient memory")),
        ("guest-crash", ("crash", "Failed")),
    ],
)
def test_failure_modes_surface_in_progress(cluster, namespace, standin_only, hub, mode, words):
    user = f"f-{mode}"
    cluster.core.create_namespaced_config_map(
        namespace, {"metadata": {"name": FAILURE_CONFIGMAP}, "data": {f"labvm-{user}": mode}}
    )
    events = hub.spawn(user, timeout=150)
    last = events[-1]
    assert last.get("failed"), f"spawn should fail for {mode}: {last}"
    text = " | ".join(e.get("message", "") for e in events)
    for w in words:
        assert w.lower() in text.lower(), f"{w!r} not in progress: {text}"
    wait_nothing_left(cluster, namespace, 90)


def test_never_ready_times_out_and_cleans_up(
    cluster, namespace, standin_only, hub_kubeconfig, notebooks, tmp_path
):
    h = kube_hub(tmp_path, namespace, hub_kubeconfig, start_timeout=20).start()
    try:
        cluster.core.create_namespaced_config_map(
            namespace,
            {"metadata": {"name": FAILURE_CONFIGMAP}, "data": {"labvm-nr": "never-ready"}},
        )
        events = h.spawn("nr", timeout=120)
        assert events[-1].get("failed"), events[-1]
        wait_nothing_left(cluster, namespace, 90)
        text = " | ".join(e.get("message", "") for e in events)
        # The spawner's own deadline ends before the hub's start_timeout, so
        # the student reads why, not the hub's bare "Spawn failed: ".
        assert "not ready" in text.lower(), events[-1]
    finally:
        h.stop()


def test_hub_killed_mid_spawn_then_restarted(
    cluster, namespace, hub_kubeconfig, notebooks, tmp_path
):
    h = kube_hub(tmp_path, namespace, hub_kubeconfig).start()
    # never-ready holds the spawn open long enough to kill the hub inside it.
    cluster.core.create_namespaced_config_map(
        namespace, {"metadata": {"name": FAILURE_CONFIGMAP}, "data": {"labvm-carol": "never-ready"}}
    )
    h.create_user("carol")
    r = h.api("POST", "/users/carol/server")
    assert r.status_code in (201, 202), r.text
    wait_for("carol's VM created", lambda: cluster.vm(namespace, "labvm-carol"), 60)
    wait_for("carol's notebook pod", lambda: get_or_none(cluster.core.read_namespaced_pod, "jupyter-carol", namespace), 60)  # fmt: skip
    kill_hub(h)
    assert leftovers(cluster, namespace), "the kill left objects behind (the point of the test)"

    # Heal the VM, restart the hub on the same database and spawn carol again:
    # the restarted spawner clears the orphans and starts clean.
    cluster.core.delete_namespaced_config_map(FAILURE_CONFIGMAP, namespace)
    h.start()
    try:
        if h.server_state("carol"):
            h.stop_server("carol", timeout=120)
        assert_ready(h.spawn("carol", timeout=120), h)
        vms = cluster.custom.list_namespaced_custom_object(*KV, namespace, "virtualmachines")[
            "items"
        ]
        assert [v["metadata"]["name"] for v in vms] == ["labvm-carol"]
        assert len(cluster.launcher_pods(namespace, "labvm-carol")) == 1
        h.stop_server("carol", timeout=120)
        wait_nothing_left(cluster, namespace, 90)
    finally:
        h.stop()


@pytest.mark.parametrize("seed", [1, 2])
def test_faults_between_hub_and_api_server(
    cluster, namespace, hub_sa, notebooks, fault_proxy, tmp_path, seed
):
    """500/429/409/slow/dropped on 25 % of the hub's requests: spawns succeed or
    fail cleanly, and after stop() nothing is left."""
    token = cluster.service_account_token(namespace, hub_sa)
    kc = cluster.token_kubeconfig(tmp_path / "via-proxy", token, fault_proxy.url)
    h = kube_hub(tmp_path, namespace, kc, start_timeout=90).start()
    fault_proxy.rng.seed(seed)
    fault_proxy.slow_s = 1.0
    fault_proxy.rate = 0.25
    users = [f"u{seed}{i}" for i in range(3)]
    outcomes = {}
    try:
        for u in users:
            h.create_user(u)
            assert h.api("POST", f"/users/{u}/server").status_code in (201, 202)
        for u in users:
            events = h.progress(u, timeout=180)  # empty: it failed before we asked (400)
            outcomes[u] = "ready" if events and events[-1].get("ready") else "failed"
        for u in users:
            if h.server_state(u):
                h.stop_server(u, timeout=180)
        fault_proxy.rate = 0
        wait_nothing_left(cluster, namespace, 120)
    finally:
        fault_proxy.rate = 0
        h.stop()
    injected = {k: v for k, v in fault_proxy.stats.items() if k != "requests"}
    print(
        f"seed {seed}: outcomes {outcomes}, faults injected {injected} of {fault_proxy.stats['requests']}"
    )
    assert sum(injected.values()) >= 1, "the proxy injected nothing"

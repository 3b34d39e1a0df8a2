"""KubeVirtSpawner end to end: JupyterHub's REST API -> a real API server.

The hub runs as a subprocess with KubeVirtSpawner, authenticated only as a
ServiceAccount bound to hub-config/rbac.yaml's Role. VMs are run by the
stand-in KubeVirt controller (or real KubeVirt with KUBECONFIG), pods by
KWOK, and notebook pods answer through StandInNotebookServers.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
from harness.fake_kubevirt_controller import FAILURE_CONFIGMAP
from harness.faultproxy import seeded_plan
from harness.kube import get_or_none, policy_reach, wait_for
from harness.kubehub import apply_rbac, kill_hub, kube_hub, wait_nothing_left
from harness.notebook_standin import StandInNotebookServers

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
    assert env["LAB_GDB_REMOTE"] == (
        f"| python3 -m kubevirt_spawner.gdbrelay tcp:labvm-alice.{namespace}.svc.cluster.local:1234"
    )
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


# A missing image, an unschedulable VM and a guest that never gets ready are
# real failures on the real KubeVirt (test_kubevirt_real_failures.py); a guest
# that crashes again and again on demand is what only the stand-in gives.
@pytest.mark.parametrize("mode, words", [("guest-crash", ("crash", "Failed"))])
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


def user_leftovers(cluster, ns, user) -> dict:
    return {k: v for k, v in objects_of(cluster, ns, user).items() if v}


def test_hub_killed_mid_spawn_then_restarted(
    cluster, namespace, hub_sa, notebooks, fault_proxy, tmp_path
):
    """SIGKILL the hub while four spawns stand at four points, restart it: the
    restarted hub's first look at its servers (poll() on each one it restores)
    deletes everything of the three unfinished starts, without a next spawn,
    and keeps the finished one running.

    The points, held by the FaultProxy (a held request never reaches the API
    server): ``held-secret`` has its VM and its Secret's create in flight;
    ``held-pod`` has VM, Secret, Service and NetworkPolicy, its notebook pod's
    create in flight; ``not-ready`` has everything, its VM never ready; ``done``
    finished its start."""
    token = cluster.service_account_token(namespace, hub_sa)
    kc = cluster.token_kubeconfig(tmp_path / "via-proxy", token, fault_proxy.url)
    # Held requests must stay held until the kill, not time out and retry.
    extra = "c.KubeSpawner.k8s_api_request_timeout = 120"
    h = kube_hub(tmp_path, namespace, kc, extra=extra).start()
    try:
        assert_ready(h.spawn("done", timeout=120), h)
        failures = {"labvm-not-ready": "never-ready"}
        cluster.core.create_namespaced_config_map(
            namespace, {"metadata": {"name": FAILURE_CONFIGMAP}, "data": failures}
        )

        # The first Secret create and the first pod create are held.
        def plan(method, path, n):
            held = method == "POST" and n == 0 and path.endswith(("/secrets", "/pods"))
            return "hold" if held else None

        fault_proxy.use_plan(plan)

        def holds() -> int:
            return sum(1 for r in fault_proxy.log if r.fault == "hold")

        def running_unready():  # its notebook pod made, its VMI running but never ready
            pod = get_or_none(cluster.core.read_namespaced_pod, "jupyter-not-ready", namespace)
            return pod and cluster.vmi(namespace, "labvm-not-ready")

        for user, reached in (
            ("held-secret", lambda: holds() == 1),
            ("held-pod", lambda: holds() == 2),
            ("not-ready", running_unready),
        ):
            h.create_user(user)
            r = h.api("POST", f"/users/{user}/server")
            assert r.status_code in (201, 202), r.text
            wait_for(f"{user}'s spawn at its point", reached, 90)
        before = {u: set(user_leftovers(cluster, namespace, u)) for u in UNFINISHED}
        kill_hub(h)
    finally:
        fault_proxy.release()
    assert before["held-secret"] >= {"vm"} and "secret" not in before["held-secret"], before
    assert before["held-pod"] >= {"vm", "secret", "service", "networkpolicy"}, before
    assert "pod" not in before["held-pod"], before
    assert before["not-ready"] >= {"vm", "vmi", "pod", "secret"}, before

    h.start()
    try:
        # No spawn, no stop: the restarted hub's own reconcile clears them.
        for user in UNFINISHED:
            wait_for(
                f"{user}'s objects gone after the restart",
                lambda u=user: not user_leftovers(cluster, namespace, u),
                90,
            )
            assert not h.server_state(user), f"the hub still lists {user}'s server"
        state = h.server_state("done")
        assert state and state.get("ready"), state
        assert all(objects_of(cluster, namespace, "done").values()), (
            "the finished server lost objects"
        )
        h.stop_server("done", timeout=120)
        wait_nothing_left(cluster, namespace, 90)
    finally:
        h.stop()


UNFINISHED = ("held-secret", "held-pod", "not-ready")


def settled(hub, user) -> dict | None:
    """The hub's view of ``user``'s server once no spawn is pending:
    the server model, or {} when there is none."""
    state = hub.server_state(user)
    if state and state.get("pending"):
        return None
    return state or {"ready": False, "gone": True}


def without_namespace(path: str) -> str:
    return re.sub(r"/namespaces/[^/]+", "/namespaces/NS", path)


@pytest.mark.parametrize("seed", [1, 2])
def test_faults_between_hub_and_api_server(
    cluster, namespace, hub_sa, notebooks, fault_proxy, tmp_path, seed
):
    """500, 429, 409, a hang past the request timeout, dropped and reset
    connections on 25 % of every request the hub makes (watches included),
    by a seeded plan (the same request gets the same fault in every run):
    every spawn the hub calls a success really is one (VM ready, notebook
    running, every object there), every failed one leaves nothing, and after
    stop() nothing is left."""
    token = cluster.service_account_token(namespace, hub_sa)
    kc = cluster.token_kubeconfig(tmp_path / "via-proxy", token, fault_proxy.url)
    extra = "c.KubeSpawner.k8s_api_request_timeout = 3"
    h = kube_hub(tmp_path, namespace, kc, start_timeout=90, extra=extra).start()
    fault_proxy.hang_s = 4.0
    faults = ("500", "429", "409", "hang", "drop", "reset")
    fault_proxy.use_plan(seeded_plan(seed, faults, 0.25, key=without_namespace))
    users = [f"u{seed}{i}" for i in range(3)]
    outcomes = {}
    try:
        for u in users:
            h.create_user(u)
            assert h.api("POST", f"/users/{u}/server").status_code in (201, 202)
        said = {}
        for u in users:
            events = h.progress(u, timeout=180)  # empty: it failed before we asked (400)
            said[u] = "ready" if events and events[-1].get("ready") else "failed"
            if events:  # the stream ends with a verdict, not a broken connection
                assert events[-1].get("ready") or events[-1].get("failed"), (u, events[-1])
        spawn_faults = Counter(r.fault for r in fault_proxy.log if r.fault)
        fault_proxy.use_plan(None)
        for u in users:
            # The hub's verdict, once it has one, is the truth a student sees.
            state = wait_for(f"{u}'s spawn settled", lambda u=u: settled(h, u), 120)
            outcomes[u] = "ready" if state.get("ready") else "failed"
            assert said[u] == outcomes[u], (u, said[u], state, h.log_tail(40))
            if outcomes[u] == "ready":
                objs = objects_of(cluster, namespace, u)
                assert all(objs.values()), (u, {k: v is not None for k, v in objs.items()})
                conditions = objs["vmi"]["status"].get("conditions") or []
                ready = [c["status"] for c in conditions if c["type"] == "Ready"]
                assert ready == ["True"], (u, conditions)
                assert objs["pod"].status.phase == "Running", u
            else:
                wait_for(
                    f"{u}'s failed spawn cleaned up",
                    lambda u=u: not user_leftovers(cluster, namespace, u),
                    120,
                )
        # Stops under faults too.
        fault_proxy.use_plan(seeded_plan(seed + 100, faults, 0.25, key=without_namespace))
        for u in users:
            if h.server_state(u):
                h.stop_server(u, timeout=180)
        fault_proxy.use_plan(None)
        wait_nothing_left(cluster, namespace, 120)
    finally:
        fault_proxy.use_plan(None)
        h.stop()
    injected = Counter(r.fault for r in fault_proxy.log if r.fault)
    print(
        f"seed {seed}: outcomes {outcomes}, faults injected {dict(injected)} "
        f"(while spawning {dict(spawn_faults)}) of {fault_proxy.stats['requests']} requests"
    )
    assert sum(spawn_faults.values()) >= 1, "the proxy injected nothing during the spawns"

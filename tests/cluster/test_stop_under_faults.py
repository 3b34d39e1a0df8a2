"""Delete until gone, proved under real faults: 100 KubeVirtSpawner.stop()
calls, each facing faults aimed at what stop() does, with garbage collection
out of the picture.

The control plane's kube-controller-manager is restarted with its
garbage-collector controller off for this test, so nothing but stop() (and
KubeVirt's own controllers, here the stand-in, which delete a VM's VMI and
launcher pod as KubeVirt does) removes an object. The spawner's own code
creates 100 servers' objects (tests/harness/stopper.py: VM, Secret, Service,
NetworkPolicy, notebook pod, owners set as start() sets them), then stops
them, 50 at a time, through the FaultProxy: every DELETE and every read of
one named object gets, by a seeded plan, 500, 429 (Retry-After), 409, a
hang past the 2 s request timeout, or a reset connection; the first DELETE
and the first read of every object always get one. Direct stop() calls, not
a hub per stop: the same code path (the hub's stop calls exactly this) at a
fraction of the time.

For every stop: it returned without error; the API server's last answer to
stop()'s requests for each object was a 404; every fault was followed by a
retry; and an admin read of each object (and of the VMI and launcher pods)
returns 404.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from harness.faultproxy import seeded_plan
from harness.kube import get_or_none, wait_for
from harness.kubehub import apply_rbac, leftovers

TESTS = Path(__file__).resolve().parents[1]
SERVERS = 100
BATCH = 50  # stops at once
SEED = int(os.environ.get("KVS_FAULT_SEED", "15"))
STOP_FAULTS = ("500", "429", "409", "hang", "reset")
KINDS = ("virtualmachines", "secrets", "services", "networkpolicies")
# The named-object paths stop() reads and deletes (the namespace is group 1).
OBJECT_PATH = re.compile(
    r"^/(?:api/v1|apis/networking\.k8s\.io/v1|apis/kubevirt\.io/v1)/namespaces/([^/]+)/"
    r"(pods|secrets|services|networkpolicies|virtualmachines)/([^/]+)$"
)


def stop_request(method: str, path: str) -> bool:
    return method in ("DELETE", "GET") and OBJECT_PATH.match(path) is not None


def without_namespace(path: str) -> str:
    return OBJECT_PATH.sub(r"\2/\3", path)


def run_stopper(action: str, namespace: str, kubeconfig: Path, timeout: float) -> list[dict]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(TESTS)}
    argv = [sys.executable, "-m", "harness.stopper", action, f"--namespace={namespace}"]
    argv += [f"--servers={SERVERS}", f"--batch={BATCH}"]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"stopper {action} failed:\n{r.stderr[-4000:]}"
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


@pytest.fixture
def gc_off(cluster, standin_only):
    cp = cluster.local
    cp.restart_controller_manager(disabled=("garbage-collector-controller",))
    try:
        yield
    finally:
        cp.restart_controller_manager()


def test_100_stops_under_faults_leave_nothing(cluster, namespace, gc_off, fault_proxy, tmp_path):
    sa = apply_rbac(cluster, namespace)  # the hub's own Role, nothing more
    token = cluster.service_account_token(namespace, sa)
    direct = cluster.token_kubeconfig(tmp_path / "direct", token)
    via_proxy = cluster.token_kubeconfig(tmp_path / "via-proxy", token, fault_proxy.url)

    # Proof that the garbage collector is off: a dependent whose owner is
    # deleted now is still there after all the stops.
    owner = cluster.core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    dependent = {"metadata": {"name": "dependent", "ownerReferences": [ref]}}
    cluster.core.create_namespaced_config_map(namespace, dependent)
    cluster.core.delete_namespaced_config_map("owner", namespace)

    t0 = time.monotonic()
    run_stopper("create", namespace, direct, timeout=600)

    def vmis() -> int:
        listed = cluster.custom.list_namespaced_custom_object(
            "kubevirt.io", "v1", namespace, "virtualmachineinstances"
        )
        return len(listed["items"])

    wait_for(f"{SERVERS} VMIs", lambda: vmis() == SERVERS, 300)
    made = time.monotonic() - t0

    fault_proxy.hang_s = 3.0  # past the stopper's 2 s request timeout
    fault_proxy.only = stop_request
    fault_proxy.use_plan(seeded_plan(SEED, STOP_FAULTS, 0.3, first=True, key=without_namespace))
    t0 = time.monotonic()
    results = run_stopper("stop", namespace, via_proxy, timeout=900)
    stopped = time.monotonic() - t0
    fault_proxy.use_plan(None)

    assert len(results) == SERVERS
    failed = [r for r in results if not r["ok"]]
    assert not failed, f"{len(failed)} stops failed, e.g. {failed[:3]}"

    # Per object: what the proxy saw of stop()'s requests.
    by_object: dict[str, list] = defaultdict(list)
    for req in fault_proxy.log:
        if stop_request(req.method, req.path):
            by_object[without_namespace(req.path)].append(req)
    faults = Counter(req.fault for reqs in by_object.values() for req in reqs if req.fault)
    expected = set()
    for u in (f"s{i:03d}" for i in range(SERVERS)):
        expected.add(f"pods/jupyter-{u}")
        expected |= {f"{kind}/labvm-{u}" for kind in KINDS}
    assert set(by_object) == expected
    unconfirmed, unretried = [], []
    for obj, reqs in by_object.items():
        answered = [r for r in reqs if r.status is not None and r.fault is None]
        if not answered or answered[-1].status != 404:
            unconfirmed.append((obj, [(r.method, r.fault, r.status) for r in reqs]))
        if reqs[-1].fault is not None:
            unretried.append(obj)  # a fault was the last word: nobody retried it
    assert not unconfirmed, f"not confirmed gone by a 404: {unconfirmed[:3]}"
    assert not unretried, f"faults not retried: {unretried[:5]}"
    requests = sum(len(r) for r in by_object.values())

    # What an admin reads now: nothing of any server, the VMIs and launcher pods included.
    left = leftovers(cluster, namespace)
    assert not left, f"left behind: {left}"
    assert get_or_none(cluster.core.read_namespaced_config_map, "dependent", namespace), (
        "the garbage collector ran: this run did not prove stop() alone"
    )
    seconds = sorted(r["seconds"] for r in results)
    print(
        f"\nseed {SEED}: {SERVERS} stops, {len(by_object)} objects, {requests} requests to them, "
        f"{sum(faults.values())} faults, each retried ({dict(sorted(faults.items()))}), "
        f"leftovers 0; made in {made:.0f} s, stopped {BATCH} at a time in {stopped:.0f} s; "
        f"one stop took {seconds[0]:.1f}-{seconds[-1]:.1f} s (median {seconds[len(seconds) // 2]:.1f} s)"
    )
    assert set(faults) == set(STOP_FAULTS), faults

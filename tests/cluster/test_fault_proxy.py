"""The fault-injecting proxy itself: each fault does what the spawner tests rely on."""

import threading
import time

import pytest
import urllib3
from harness.kube import KV, get_or_none, minimal_vm, status_of
from kubernetes import client, watch
from kubernetes.client.rest import ApiException


@pytest.fixture
def via_proxy(cluster, namespace, admin_sa_token, fault_proxy, tmp_path):
    kc = cluster.token_kubeconfig(tmp_path / "proxy-kubeconfig", admin_sa_token, fault_proxy.url)
    api = cluster.api_client(kc)
    api.configuration.retries = False
    return api


def test_passes_requests_and_watches_through(cluster, namespace, via_proxy, fault_proxy):
    core = client.CoreV1Api(via_proxy)
    events = []

    def watch_cms():
        w = watch.Watch()
        for ev in w.stream(core.list_namespaced_config_map, namespace, timeout_seconds=20):
            if ev["object"].metadata.name == "through-proxy":
                events.append(ev["type"])
                w.stop()

    t = threading.Thread(target=watch_cms)
    t.start()
    time.sleep(0.5)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "through-proxy"}})
    t.join(25)
    assert events == ["ADDED"], "a watch streams through the proxy"
    assert fault_proxy.stats["requests"] >= 2


@pytest.mark.parametrize("fault, code", [("500", 500), ("429", 429), ("409", 409)])
def test_error_faults(cluster, namespace, via_proxy, fault_proxy, fault, code):
    custom = client.CustomObjectsApi(via_proxy)
    fault_proxy.faults, fault_proxy.rate = (fault,), 1.0
    with pytest.raises(ApiException) as e:
        custom.create_namespaced_custom_object(
            *KV, namespace, "virtualmachines", minimal_vm("f"), field_validation="Strict"
        )
    assert e.value.status == code
    landed = get_or_none(
        cluster.custom.get_namespaced_custom_object, *KV, namespace, "virtualmachines", "f"
    )
    # A 409 on create means "a previous attempt landed": the object is really there.
    assert (landed is not None) == (fault == "409")
    if fault == "429":
        assert e.value.headers.get("Retry-After") == "1"
    fault_proxy.rate = 0
    assert fault_proxy.stats[fault] == 1


def test_slow_fault(cluster, namespace, via_proxy, fault_proxy):
    core = client.CoreV1Api(via_proxy)
    fault_proxy.faults, fault_proxy.rate, fault_proxy.slow_s = ("slow",), 1.0, 1.5
    t0 = time.monotonic()
    core.read_namespace(namespace)
    assert time.monotonic() - t0 >= 1.5


def test_dropped_connections(cluster, namespace, via_proxy, fault_proxy):
    core = client.CoreV1Api(via_proxy)
    fault_proxy.faults, fault_proxy.rate = ("drop",), 1.0
    outcomes = []
    for i in range(6):
        try:
            core.create_namespaced_config_map(namespace, {"metadata": {"name": f"drop-{i}"}})
            outcomes.append("answered")
        except urllib3.exceptions.HTTPError:
            outcomes.append("dropped")
    assert outcomes == ["dropped"] * 6
    fault_proxy.rate = 0
    landed = [
        get_or_none(cluster.core.read_namespaced_config_map, f"drop-{i}", namespace)
        for i in range(6)
    ]
    # Some writes landed before the connection died, some never reached the server.
    assert 0 < sum(x is not None for x in landed) < 6


def test_share_of_faults(cluster, namespace, via_proxy, fault_proxy):
    core = client.CoreV1Api(via_proxy)
    fault_proxy.faults, fault_proxy.rate = ("500", "429"), 0.3
    failures = 0
    for _ in range(40):
        try:
            core.read_namespace(namespace)
        except ApiException:
            failures += 1
    assert 4 <= failures <= 24  # seeded: deterministic, roughly 30 %


def test_hang_outlasts_the_client_timeout(cluster, namespace, via_proxy, fault_proxy):
    core = client.CoreV1Api(via_proxy)
    fault_proxy.faults, fault_proxy.rate, fault_proxy.hang_s = ("hang",), 1.0, 1.5
    # (urllib3 itself retries the read timeout a few times, each hung again.)
    with pytest.raises(urllib3.exceptions.HTTPError) as e:
        core.read_namespace(namespace, _request_timeout=0.5)
    fault_proxy.rate = 0
    assert "Read timed out" in str(e.value), e.value
    assert fault_proxy.stats["hang"] >= 1


def test_reset_lands_the_write_and_resets_the_connection(
    cluster, namespace, via_proxy, fault_proxy
):
    core = client.CoreV1Api(via_proxy)
    fault_proxy.faults, fault_proxy.rate = ("reset",), 1.0
    with pytest.raises(urllib3.exceptions.ProtocolError) as e:
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "reset"}})
    fault_proxy.rate = 0
    assert "reset" in str(e.value).lower(), e.value
    assert get_or_none(cluster.core.read_namespaced_config_map, "reset", namespace)


def test_hold_keeps_a_request_until_released_and_never_forwards_it(
    cluster, namespace, via_proxy, fault_proxy
):
    core = client.CoreV1Api(via_proxy)
    fault_proxy.use_plan(lambda method, path, n: "hold" if method == "POST" else None)
    outcome = []

    def create():
        try:
            core.create_namespaced_config_map(namespace, {"metadata": {"name": "held"}})
            outcome.append("answered")
        except urllib3.exceptions.HTTPError:
            outcome.append("closed")

    t = threading.Thread(target=create)
    t.start()
    assert fault_proxy.held.wait(30)
    assert not outcome, "a held request was answered"
    fault_proxy.release()
    t.join(30)
    assert outcome == ["closed"]
    assert get_or_none(cluster.core.read_namespaced_config_map, "held", namespace) is None


def test_a_seeded_plan_gives_each_request_its_fault_in_any_order(
    cluster, namespace, via_proxy, fault_proxy
):
    """What makes a fault run reproducible: the fault of a request depends on
    the seed, its method, its path and how many requests to that path came
    before it, not on how requests to different paths interleave."""
    from harness.faultproxy import seeded_plan

    core = client.CoreV1Api(via_proxy)
    names = [f"cm-{i}" for i in range(4)]
    for name in names:
        cluster.core.create_namespaced_config_map(namespace, {"metadata": {"name": name}})

    def run(order) -> dict:
        fault_proxy.log.clear()
        fault_proxy.use_plan(seeded_plan(7, ("500", "409"), 0.5))
        for name in order:
            status_of(core.read_namespaced_config_map, name, namespace)
        fault_proxy.use_plan(None)
        seen: dict = {}
        for r in fault_proxy.log:
            seen.setdefault(r.path, []).append(r.fault)
        return seen

    order = [n for n in names for _ in range(5)]  # each path 5 times
    first = run(order)
    again = run(list(reversed(order)))
    assert first == again
    assert 0 < sum(f is not None for faults in first.values() for f in faults) < len(order)

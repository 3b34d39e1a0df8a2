"""The fault-injecting proxy itself: each fault does what the spawner tests rely on."""

import threading
import time

import pytest
import urllib3
from kube import KV, get_or_none, minimal_vm
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

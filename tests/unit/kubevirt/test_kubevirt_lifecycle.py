"""KubeVirtSpawner's start/stop/poll/progress against an in-memory API
(kubefakes.FakeKube) and stand-in reflectors: fast, specific failures with
everything created deleted again; deletes retried through 409/429/5xx,
timeouts and dropped connections until reads return 404; a stopped VM
reported by poll(). The real-apiserver versions live in tests/cluster."""

import asyncio
import time

import pytest
from harness.kubefakes import HUB, FakeKube, FakeReflector, User, orm_spawner
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner

from kubevirt_spawner import KubeVirtSpawner

IMAGES = {"debian-12": {"containerdisk": {"x86_64": "reg/debian:12"}, "vmlinux": "", "kdir": ""}}
RUNNING_POD = {
    "phase": "Running",
    "podIP": "10.0.0.5",
    "containerStatuses": [{"name": "notebook", "ready": True, "state": {"running": {}}}],
}
READY_VMI = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
ALL_KINDS = {"pod", "virtualmachines", "secret", "service", "network_policy"}


class Cluster:
    def __init__(self):
        self.kube = FakeKube()
        self.pods = FakeReflector(self.kube, "pod")
        self.vms = FakeReflector(self.kube, "virtualmachines")
        self.vmis = FakeReflector(self.kube, "virtualmachines")  # a VMI shares its VM's name
        self.pod_events = FakeReflector(None, events=[])
        self.vm_events = FakeReflector(None, events=[])
        KubeSpawner.reflectors.update(
            {
                ("pods", "lab"): self.pods,
                ("events", "lab"): self.pod_events,
                ("kubevirt-vms", "lab"): self.vms,
                ("kubevirt-vmis", "lab"): self.vmis,
                ("kubevirt-events", "lab"): self.vm_events,
            }
        )

    def spawner(self, user="alice", **config) -> KubeVirtSpawner:
        config = {"start_timeout": 20, "vm_delete_timeout": 20, **config}
        s = KubeVirtSpawner(
            user=User(user),
            hub=HUB,
            orm_spawner=orm_spawner(),
            namespace="lab",
            vm_images=IMAGES,
            **config,
        )
        s.api = s.networking_api = s.custom_api = self.kube
        s.api_token = "token"
        return s

    def kinds(self) -> set[str]:
        return {kind for kind, _ in self.kube.names()}


@pytest.fixture
async def cluster():
    c = Cluster()
    yield c
    KubeSpawner.reflectors.clear()


async def test_start_creates_owned_objects_and_returns_the_pod_url(cluster):
    s = cluster.spawner()
    cluster.pods.status[s.pod_name] = RUNNING_POD
    cluster.vmis.status[s.vm_name] = READY_VMI
    url = await asyncio.wait_for(s.start(), 30)
    assert url == "http://10.0.0.5:8888"
    assert cluster.kinds() == ALL_KINDS
    vm = cluster.kube.get("virtualmachines", s.vm_name)
    pod = cluster.kube.get("pod", s.pod_name)
    for kind in ("secret", "service", "network_policy"):
        (owner,) = cluster.kube.get(kind, s.vm_name)["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"]) == ("VirtualMachine", vm["metadata"]["uid"])
    (owner,) = vm["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "Pod",
        s.pod_name,
        pod["metadata"]["uid"],
    )
    assert s.vm_started and s.get_state()["vm_started"]
    # The pod got the key volume and LAB_* env.
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["LAB_GDB_REMOTE"] == (
        f"| python3 -m kubevirt_spawner.gdbrelay tcp:{s.vm_name}.lab.svc.cluster.local:1234"
    )


async def test_leftovers_of_an_earlier_run_are_cleared_first(cluster):
    s = cluster.spawner()
    stale = {"metadata": {"name": s.vm_name, "labels": {"stale": "yes"}}}
    await cluster.kube.create_namespaced_secret("lab", stale)
    cluster.pods.status[s.pod_name] = RUNNING_POD
    cluster.vmis.status[s.vm_name] = READY_VMI
    await asyncio.wait_for(s.start(), 30)
    assert "stale" not in cluster.kube.get("secret", s.vm_name)["metadata"]["labels"]


def launcher_event(vm_name, message):
    return {
        "metadata": {"uid": "ev-1"},
        "involvedObject": {"kind": "Pod", "name": f"virt-launcher-{vm_name}-x7k2q"},
        "type": "Warning",
        "message": message,
        "lastTimestamp": "2026-01-01T00:00:00Z",
    }


async def test_image_pull_error_fails_fast_with_the_reason_and_cleans_up(cluster):
    s = cluster.spawner()
    cluster.vms.status[s.vm_name] = {"printableStatus": "ErrImagePull"}
    cluster.pod_events.events.append(
        launcher_event(s.vm_name, 'Failed to pull image "reg/debian:12": not found')
    )
    t0 = time.monotonic()
    with pytest.raises(Exception) as info:
        await asyncio.wait_for(s.start(), 30)
    assert time.monotonic() - t0 < 10, "not fast"
    msg = str(info.value)
    assert "could not be pulled (ErrImagePull)" in msg and 'image "reg/debian:12": not found' in msg
    assert getattr(info.value, "reason", "") == "vm-failed"
    assert cluster.kube.objects == {}, "a failed start left objects behind"


async def test_unschedulable_fails_with_the_schedulers_message(cluster):
    s = cluster.spawner()
    cluster.vmis.status[s.vm_name] = {
        "phase": "Scheduling",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient memory.",
            }
        ],
    }
    with pytest.raises(Exception, match="Unschedulable: 0/3 nodes are available"):
        await asyncio.wait_for(s.start(), 30)
    assert cluster.kube.objects == {}


async def test_vm_never_ready_fails_before_start_timeout(cluster):
    """The VM's deadline ends before the hub's start_timeout (half of it, at
    most 60 s earlier), so the spawner's reason is what the student reads."""
    s = cluster.spawner(start_timeout=2)
    cluster.pods.status[s.pod_name] = RUNNING_POD
    cluster.vms.status[s.vm_name] = {"printableStatus": "Starting"}
    cluster.vmis.status[s.vm_name] = {"phase": "Scheduled"}
    with pytest.raises(Exception) as info:
        await asyncio.wait_for(s.start(), 30)
    assert "not ready within 1s (VM Starting, instance Scheduled)" in str(info.value)
    assert cluster.kube.objects == {}


async def test_transient_create_errors_are_retried(cluster):
    s = cluster.spawner()
    cluster.kube.fail[("create", "secret")] = [ApiException(status=500), ApiException(status=429)]
    cluster.kube.fail[("create", "virtualmachines")] = [ApiException(status=503)]
    cluster.pods.status[s.pod_name] = RUNNING_POD
    cluster.vmis.status[s.vm_name] = READY_VMI
    await asyncio.wait_for(s.start(), 30)
    assert cluster.kinds() == ALL_KINDS
    creates = [c for c in cluster.kube.calls if c[:2] == ("create", "secret")]
    assert len(creates) == 3


async def test_forbidden_create_fails_and_cleans_up(cluster):
    s = cluster.spawner()
    cluster.kube.fail[("create", "network_policy")] = [ApiException(status=403, reason="Forbidden")]
    with pytest.raises(ApiException) as info:
        await asyncio.wait_for(s.start(), 30)
    assert info.value.status == 403
    assert cluster.kube.objects == {}


async def started(cluster, **config) -> KubeVirtSpawner:
    s = cluster.spawner(**config)
    cluster.pods.status[s.pod_name] = RUNNING_POD
    cluster.vmis.status[s.vm_name] = READY_VMI
    await asyncio.wait_for(s.start(), 30)
    return s


async def test_stop_retries_every_transient_error_until_all_reads_404(cluster):
    s = await started(cluster, k8s_api_request_timeout=1)
    kube = cluster.kube
    kube.calls.clear()
    kube.fail.update(
        {
            ("delete", "virtualmachines"): [ApiException(status=500), ApiException(status=409)],
            ("read", "secret"): [asyncio.TimeoutError()],
            ("delete", "service"): [ApiException(status=429)],
            ("read", "network_policy"): [ConnectionResetError()],
            ("delete", "pod"): [ApiException(status=502)],
        }
    )
    kube.linger.update({"pod": 2, "virtualmachines": 3})  # graceful deletion, finalizers
    await asyncio.wait_for(s.stop(), 60)
    assert kube.objects == {}
    assert not s.vm_started
    deletes = {
        kind: sum(1 for v, k, _ in kube.calls if (v, k) == ("delete", kind)) for kind in ALL_KINDS
    }
    assert deletes["virtualmachines"] >= 3 and deletes["service"] >= 2 and deletes["pod"] >= 2
    # Every object was finally confirmed by a read that returned 404.
    for kind in ALL_KINDS:
        assert any(v == "read" and k == kind for v, k, _ in kube.calls), kind


async def test_stop_survives_a_hanging_request(cluster):
    s = await started(cluster, k8s_api_request_timeout=1)
    real = cluster.kube._op

    async def hang_once(verb, kind, *a, **kw):
        if (verb, kind) == ("delete", "secret") and not getattr(hang_once, "done", False):
            hang_once.done = True
            await asyncio.sleep(30)
        return await real(verb, kind, *a, **kw)

    cluster.kube._op = hang_once
    t0 = time.monotonic()
    await asyncio.wait_for(s.stop(), 20)
    assert cluster.kube.objects == {} and time.monotonic() - t0 < 10


async def test_stop_raises_on_forbidden_but_deletes_the_rest(cluster):
    s = await started(cluster)
    cluster.kube.fail[("delete", "service")] = [ApiException(status=403, reason="Forbidden")]
    with pytest.raises(ApiException):
        await asyncio.wait_for(s.stop(), 30)
    assert cluster.kube.names() == {("service", s.vm_name)}


async def test_stop_of_nothing_is_quick(cluster):
    s = cluster.spawner()
    await asyncio.wait_for(s.stop(now=True), 5)
    assert len(cluster.kube.calls) == 5  # one delete per kind, each 404


@pytest.mark.parametrize(
    "vm_status, vmi_status, expected",
    [
        pytest.param({"printableStatus": "Running"}, READY_VMI, None, id="running"),
        # runStrategy Always: KubeVirt starts a new instance; "Stopped" is the
        # VM between the two (a reset, a poweroff), as real KubeVirt shows it.
        pytest.param({"printableStatus": "Stopped"}, {}, None, id="stopped-between-instances"),
        pytest.param(
            {"printableStatus": "CrashLoopBackOff"}, {"phase": "Failed"}, 1, id="crashloop"
        ),
        pytest.param(
            {"printableStatus": "Running"},
            {"phase": "Failed"},
            None,
            id="instance-failed-is-replaced",
        ),
        pytest.param({"printableStatus": "ErrorUnschedulable"}, {}, 1, id="unschedulable"),
        pytest.param(
            {"printableStatus": "Starting"},
            {"phase": "Scheduling"},
            None,
            id="restarting-after-reset",
        ),
    ],
)
async def test_poll_reports_the_vm(cluster, vm_status, vmi_status, expected):
    s = await started(cluster)
    cluster.vms.status[s.vm_name] = vm_status
    cluster.vmis.status[s.vm_name] = vmi_status
    assert await s.poll() == expected


async def test_poll_reports_a_halted_vm_and_deletes_the_rest(cluster):
    """The hub calls stop() only for servers poll() calls running: a server
    reported stopped must already be cleaned up."""
    s = await started(cluster)
    vm = cluster.kube.get("virtualmachines", s.vm_name)
    vm["spec"]["runStrategy"] = "Halted"
    assert await s.poll() == 1
    assert cluster.kube.names() == set(), "poll() left objects of a stopped server"


async def test_poll_reports_a_deleted_vm(cluster):
    s = await started(cluster)
    del cluster.kube.objects[("virtualmachines", "lab", s.vm_name)]
    assert await s.poll() == 1
    assert cluster.kube.names() == set()


async def test_a_restored_server_whose_start_finished_runs_on(cluster):
    s = await started(cluster)
    state = s.get_state()
    assert state["start_done"] is True
    restored = cluster.spawner()  # the restarted hub's spawner, from its database
    restored.load_state(state)
    assert await restored.poll() is None
    assert cluster.kinds() == ALL_KINDS


@pytest.mark.parametrize(
    "saved",
    [
        pytest.param({}, id="first-start"),
        pytest.param("cleared", id="after-an-earlier-stop"),
    ],
)
async def test_a_restored_server_whose_start_never_finished_is_cleared(cluster, saved):
    """The hub died during a start: what it saved is the state from before
    that start. The restarted hub polls it; poll() deletes everything that
    start made (the hub will not call stop() for a server it is told has
    stopped) and reports it stopped."""
    dying = await started(cluster)  # what a start makes, as far as it got
    if saved == "cleared":
        dying.clear_state()
        saved = dying.get_state()
        assert saved["start_done"] is False
    restored = cluster.spawner()
    restored.load_state(saved)
    assert await restored.poll() == 1
    assert cluster.kube.names() == set()


async def test_poll_does_not_take_a_cache_miss_for_a_deleted_vm(cluster):
    """After a failed watch the reflector re-lists and may briefly lack the
    VM; only a read returning 404 proves it gone."""
    s = await started(cluster)
    s._reflector("kubevirt-vms").missing.add(s.vm_name)
    assert await s.poll() is None
    assert ("virtualmachines", s.vm_name) in cluster.kube.names()


async def test_poll_without_vm_is_kubespawners(cluster):
    s = cluster.spawner()
    s.user_options = {}
    s.with_vm = False
    s.start_done = True  # as restored after a finished start
    assert await s.poll() == 1  # no pod at all
    await cluster.kube.create_namespaced_pod("lab", {"metadata": {"name": s.pod_name}})
    cluster.pods.status[s.pod_name] = RUNNING_POD
    assert await s.poll() is None


async def test_progress_merges_vm_state_and_events(cluster):
    s = cluster.spawner()
    cluster.pods.status[s.pod_name] = RUNNING_POD
    cluster.vm_events.events.append(
        {
            "metadata": {"uid": "e1"},
            "type": "Normal",
            "message": "Created virtual machine pod",
            "involvedObject": {"kind": "VirtualMachineInstance", "name": s.vm_name},
        }
    )
    cluster.pod_events.events.append(
        {
            "metadata": {"uid": "e2"},
            "type": "Normal",
            "message": "Pulling image reg/debian:12",
            "involvedObject": {"kind": "Pod", "name": f"virt-launcher-{s.vm_name}-abcde"},
        }
    )

    async def boot():
        for vm, vmi in (
            ("Starting", {"phase": "Scheduling"}),
            ("Starting", {"phase": "Scheduled"}),
            ("Running", READY_VMI),
        ):
            cluster.vms.status[s.vm_name] = {"printableStatus": vm}
            cluster.vmis.status[s.vm_name] = vmi
            await asyncio.sleep(1.2)

    booting = asyncio.ensure_future(boot())
    s.start()
    messages = [e["message"] async for e in s.progress()]
    await s._start_future
    await booting
    text = "\n".join(messages)
    assert "VM Starting, instance Scheduling" in text
    assert "VM Running, instance Running, guest ssh ready" in text
    assert "VirtualMachineInstance: Created virtual machine pod" in text
    assert "Pod: Pulling image reg/debian:12" in text


def _throttled(retry_after: str | None) -> ApiException:
    e = ApiException(status=429, reason="TooManyRequests")
    e.headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return e


@pytest.mark.parametrize(
    ("exc", "seconds"),
    [
        pytest.param(_throttled("2"), 2.0, id="seconds"),
        pytest.param(_throttled("600"), 10.0, id="capped"),
        pytest.param(_throttled("Wed, 21 Oct 2026 07:28:00 GMT"), 0.0, id="a-date"),
        pytest.param(_throttled(None), 0.0, id="no-header"),
        pytest.param(ApiException(status=500), 0.0, id="not-429"),
    ],
)
def test_retry_after(exc, seconds):
    from kubevirt_spawner.kubevirt.kubeapi import retry_after

    assert retry_after(exc) == seconds


async def test_a_throttled_delete_waits_its_retry_after(cluster):
    s = await started(cluster)
    cluster.kube.fail[("delete", "service")] = [_throttled("1")]
    t0 = time.monotonic()
    await asyncio.wait_for(s.stop(), 60)
    assert time.monotonic() - t0 >= 1.0, "retried before Retry-After"
    assert cluster.kube.names() == set()


class FlakyReflector:
    """A reflector whose first list fails with ``fail`` as often as told."""

    fail: list = []
    started = 0

    def __init__(self, parent, namespace, on_failure=None, **kwargs):
        self.first_load_future = asyncio.get_running_loop().create_future()

    async def start(self):
        FlakyReflector.started += 1
        if FlakyReflector.fail:
            e = FlakyReflector.fail.pop(0)
            self.first_load_future.set_exception(e)
            self.first_load_future.exception()  # retrieved: no warning at exit
            raise e
        self.first_load_future.set_result(None)

    async def stop(self):
        pass


async def test_a_reflector_whose_first_list_failed_is_started_again(cluster):
    """kubespawner would keep it and hand it out, never watching."""
    s = cluster.spawner(k8s_api_request_retry_timeout=30)
    FlakyReflector.fail, FlakyReflector.started = [ApiException(status=429)], 0
    r = await s._start_reflector("flaky", FlakyReflector)
    assert FlakyReflector.started == 2 and r.first_load_future.result() is None
    # One left behind broken (as kubespawner leaves it) is replaced, not reused.
    key = s._get_reflector_key("flaky")
    FlakyReflector.fail = [ApiException(status=500)]
    broken = FlakyReflector(s, "lab")
    with pytest.raises(ApiException):
        await broken.start()
    KubeSpawner.reflectors[key] = broken
    r = await s._start_reflector("flaky", FlakyReflector)
    assert r is not broken and KubeSpawner.reflectors[key] is r
    assert r.first_load_future.result() is None


async def test_a_refused_reflector_still_fails(cluster):
    s = cluster.spawner()
    FlakyReflector.fail, FlakyReflector.started = [ApiException(status=403)], 0
    with pytest.raises(ApiException) as e:
        await s._start_reflector("refused", FlakyReflector)
    assert e.value.status == 403 and FlakyReflector.started == 1


async def test_a_delete_meant_for_an_old_object_never_removes_a_newer_one(cluster):
    """What a delete that lands late would do (its request timed out, the
    next start made a new object of the same name): the uid precondition
    refuses it, and the old object counts as gone."""
    from kubevirt_spawner.kubevirt import kubeapi

    kube = cluster.kube
    await kube.create_namespaced_secret("lab", {"metadata": {"name": "labvm-a"}})
    newer = kube.get("secret", "labvm-a")["metadata"]["uid"]
    kind = kubeapi.kinds(kube, kube, kube)["secret"]
    await kubeapi.ensure_gone(
        kind, "lab", "labvm-a", request_timeout=5, retry_timeout=10, uid="uid-of-the-old-one"
    )
    assert kube.get("secret", "labvm-a")["metadata"]["uid"] == newer
    # Without a uid it reads first and deletes exactly what it read.
    await kubeapi.ensure_gone(kind, "lab", "labvm-a", request_timeout=5, retry_timeout=10)
    assert ("secret", "labvm-a") not in kube.names()
    assert [v for v, k, _ in kube.calls if k == "secret"][-3:] == ["read", "delete", "read"]

"""Spawns that cannot succeed, on real KubeVirt: each fails within
``start_timeout`` with the reason KubeVirt and Kubernetes gave, and leaves
nothing behind.

The failures are real, chosen with profiles the way an instructor's
misconfiguration would cause them: a containerDisk image that is not on the
node (the kubelet's pull fails), a VM larger than the node (the scheduler
refuses), a disk with nothing to boot (the guest never answers ssh).
"""

from __future__ import annotations

import pytest
from harness.kubehub import wait_nothing_left
from harness.nodehub import hub_kubeconfig, node_hub, vm_images

START_TIMEOUT = 120  # the spawner's own deadline is start_timeout - 60 s

PROFILES = [
    {
        "display_name": "image missing",
        "slug": "missing-image",
        "kubespawner_override": {"vm_image": "missing"},
    },
    {"display_name": "too big", "slug": "too-big", "kubespawner_override": {"vm_memory": "64Gi"}},
    {
        "display_name": "never boots",
        "slug": "never-ready",
        "kubespawner_override": {"vm_image": "blank"},
    },
]


@pytest.fixture(scope="module")
def failing_hub(kubevirt_cluster, tmp_path_factory):
    rc = kubevirt_cluster
    with rc.namespace() as ns:
        work = tmp_path_factory.mktemp("failhub")
        images = vm_images(rc.images)
        base = images["debian-12"]
        images["missing"] = {**base, "containerdisk": {"x86_64": rc.images["missing"]}}
        images["blank"] = {**base, "containerdisk": {"x86_64": rc.images["blank-disk"]}}
        hub = node_hub(
            work,
            ns,
            hub_kubeconfig(rc, ns, work / "kc"),
            rc.netns,
            rc.dialer,
            notebook_image=rc.images["notebook"],
            vm_images=images,
            start_timeout=START_TIMEOUT,
            extra=f"c.KubeVirtSpawner.profile_list = {PROFILES!r}",
        ).start()
        try:
            yield rc, ns, hub
        finally:
            hub.close()


@pytest.mark.parametrize(
    "profile, words",
    [
        pytest.param("missing-image", ("could not be pulled", "ImagePull"), id="image-missing"),
        pytest.param(
            "too-big", ("no node can run the VM", "Insufficient memory"), id="unschedulable"
        ),
        pytest.param("never-ready", ("not ready within", "instance Running"), id="never-ready"),
    ],
)
def test_spawn_fails_with_the_reason_and_leaves_nothing(failing_hub, profile, words):
    rc, ns, hub = failing_hub
    user = f"f-{profile}"
    events = hub.spawn(user, {"profile": profile}, timeout=START_TIMEOUT + 120)
    text = " | ".join(e.get("message", "") for e in events)
    try:
        assert events and events[-1].get("failed"), f"the spawn did not fail: {events[-1:]}"
        for w in words:
            assert w.lower() in text.lower(), f"{w!r} not in the progress: {text}"
        wait_nothing_left(rc.kube, ns, 180)
        assert not [c for _, c in rc.qemu_processes() if f"{ns}_labvm-{user}" in c]
    except AssertionError:
        print(
            f"--- progress ---\n{text}\n--- hub.log ---\n{hub.log_tail(80)}\n{rc.diagnostics(ns)}"
        )
        raise

"""scripts/kubevirt-cluster.sh itself: --help, bad input, and a small cluster
(Kubernetes only, the pause image) brought up, used through the script,
SIGKILLed the way a killed run ends, and brought up again over its remains.

Separate from the session's KubeVirt cluster (own name, state, cgroups and
image store), which keeps running meanwhile.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time

import pytest
from harness import kvcluster
from harness.kube import wait_for
from kubernetes import client

SCRIPT = kvcluster.REPO / "scripts" / "kubevirt-cluster.sh"
NAME = "kvs-life"
CLUSTER_NETS = [ipaddress.ip_network(n) for n in ("10.0.0.0/24", "10.244.0.0/16", "10.96.0.0/16")]


def script(*args, **kw):
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120, **kw)


def test_help_and_bad_input_create_nothing(tmp_path):
    r = script("--help")
    assert r.returncode == 0 and "kube-router" in r.stdout and "down" in r.stdout, r
    state = tmp_path / "never"
    for argv in (
        ["frobnicate"],
        ["up", "--frob"],
        ["up", "--name", "no/slash"],
        ["exec", "--name", "x"],
    ):
        r = script(*argv, "--state-dir", str(state)) if argv[0] != "exec" else script(*argv)
        assert r.returncode == 2, (argv, r)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kubevirt-cluster: "), (argv, r.stderr)
    assert not state.exists()
    r = script("status", "--state-dir", str(state))
    assert r.returncode == 1 and "no cluster" in r.stderr and not state.exists()


def host_addresses() -> list[ipaddress.IPv4Interface]:
    out = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout
    return [
        ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}")
        for link in json.loads(out)
        for a in link.get("addr_info", [])
        if a["family"] == "inet"
    ]


def host_routes() -> list[str]:
    return subprocess.run(
        ["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True, check=True
    ).stdout.splitlines()


def run_pod(node, core, name="probe"):
    pause = node.cfg["pause_image"]
    core.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": name},
            "spec": {
                "containers": [{"name": "c", "image": pause, "imagePullPolicy": "IfNotPresent"}],
                "terminationGracePeriodSeconds": 0,
            },
        },
    )
    return wait_for(
        f"pod {name} Running with an IP",
        lambda: (
            (p := core.read_namespaced_pod(name, "default")).status.phase == "Running"
            and p.status.pod_ip
        ),
        180,
    )


@pytest.fixture
def small(tmp_path):
    state = tmp_path / NAME
    yield state
    if (state / "node.json").exists():
        left = kvcluster.down(state=state)
        assert not left, f"left behind: {left}"


def test_small_cluster_killed_then_brought_up_again(small):
    state = small
    before_routes = host_routes()
    r = subprocess.run(
        [str(SCRIPT), "up", "--state-dir", str(state), "--no-kubevirt"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    kubeconfig = r.stdout.strip().splitlines()[-1]
    node = kvcluster.Node(state)
    try:
        assert script("kubeconfig", "--state-dir", str(state)).stdout.strip() == kubeconfig
        st = json.loads(script("status", "--state-dir", str(state)).stdout)
        assert st["phase"] == "ready" and st["alive"], st
        r = script("kubectl", "--state-dir", str(state), "get", "nodes", "-o", "name")
        assert r.returncode == 0 and r.stdout.strip() == "node/kvs-node", r
        # The cluster's addresses exist in the node's network namespace only.
        r = script("exec", "--state-dir", str(state), "--", "ip", "-4", "-br", "addr")
        assert "10.0.0.2/24" in r.stdout, r
        for a in host_addresses():
            assert not any(a.ip in n for n in CLUSTER_NETS), f"the machine has {a}"
        assert host_routes() == before_routes

        core = client.CoreV1Api(node.api_client())
        ip = run_pod(node, core)
        assert any(ipaddress.ip_address(ip) in n for n in CLUSTER_NETS)
        # The pod's address is routed to the pod bridge inside the node only.
        r = script("exec", "--state-dir", str(state), "--", "ip", "-4", "route", "get", ip)
        assert r.returncode == 0 and "dev cni0" in r.stdout, r
        r = subprocess.run(["ip", "-4", "route", "get", ip], capture_output=True, text=True)
        assert "cni0" not in r.stdout, r
        root = node.cfg["cgroup_root"]
        assert kvcluster.nodens.cgroup_tasks(root), "the pod runs in the node's cgroups"

        # A killed run: monitor and PID 1 of the node SIGKILLed at once, no
        # cleanup code runs. The kernel ends every process of the node's PID
        # namespace; mounts and network namespace go with them.
        st = node.status
        init, monitor = st["init_pid"], st["monitor_pid"]
        os.kill(monitor, signal.SIGKILL)
        os.kill(init, signal.SIGKILL)
        wait_for(
            "every process of the node gone",
            lambda: (
                not kvcluster.leftovers(state).get("processes")
                and not kvcluster.nodens.cgroup_tasks(root)
            ),
            60,
        )
        left = kvcluster.leftovers(state)
        assert set(left) <= {"cgroups"}, left  # only empty cgroups: nobody was left to remove them
    except BaseException:
        print(node.log_tail("init", 40), node.log_tail("kubelet", 40))
        raise

    # Second bring-up over the remains (the same state directory and name).
    t0 = time.monotonic()
    node = kvcluster.up(NAME, state, kubevirt=False, attached=True)
    print(f"second bring-up in {time.monotonic() - t0:.0f}s")
    core = client.CoreV1Api(node.api_client())
    assert run_pod(node, core, "probe2")
    assert kvcluster.nodens.cgroup_tasks(node.cfg["cgroup_root"])
    left = kvcluster.down(state=state)
    assert left == {}, left
    assert host_routes() == before_routes

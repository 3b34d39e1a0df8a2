"""A student's day on real KubeVirt, through JupyterHub's REST API.

The hub runs KubeVirtSpawner inside the real cluster's network (nodehub.py);
virt-operator deployed KubeVirt; the debug hook runs from the ConfigMap an
instructor applies (kubevirt-build/sidecar/configmap.yaml, ``Sidecar`` gate).
What a student does is done from inside their notebook pod (pod exec), with
the tools and the ``LAB_*`` environment their terminal has.

alice and bob spawn at once (module fixture); the tests then use their
servers in file order and stop them last.
"""

from __future__ import annotations

import base64
import re
import threading

import pytest
from harness.kube import KV, get_or_none, wait_for
from harness.kubehub import wait_nothing_left
from harness.nodehub import hub_kubeconfig, manager_kubeconfig, node_hub, vm_images
from harness.podexec import pod_exec

STUDENTS = ("alice", "bob")
LAB_VARS = (
    "LAB_VM_HOST",
    "LAB_VM_SSH_PORT",
    "LAB_GDB_REMOTE",
    "LAB_VMLINUX",
    "LAB_KDIR",
    "LAB_ARCH",
    "LAB_SSH_KEY",
    "LAB_SSH_KNOWN_HOSTS",
)


@pytest.fixture(scope="module")
def lab(kubevirt_cluster, tmp_path_factory, request):
    rc = kubevirt_cluster
    with rc.namespace() as ns:
        work = tmp_path_factory.mktemp("realhub")
        kc = hub_kubeconfig(rc, ns, work / "hub-kubeconfig")
        mkc = manager_kubeconfig(rc, ns, work / "manager-kubeconfig")
        hub = node_hub(
            work,
            ns,
            kc,
            rc.netns,
            rc.dialer,
            notebook_image=rc.images["notebook"],
            vm_images=vm_images(rc.images),
            manager_kubeconfig=mkc,
        ).start()
        try:
            yield rc, ns, hub
        finally:
            hub.close()


@pytest.fixture(autouse=True)
def explain_failure(request, lab):
    """On a failure, print what the hub and the cluster said."""
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        rc, ns, hub = lab
        print(f"--- hub.log ---\n{hub.log_tail(120)}")
        print(rc.diagnostics(ns))


@pytest.fixture(scope="module")
def spawned(lab):
    """alice and bob, spawned at once; their progress events."""
    rc, ns, hub = lab
    events: dict[str, list] = {}
    errors: dict[str, BaseException] = {}

    def spawn(user):
        try:
            events[user] = hub.spawn(user, timeout=900)
        except BaseException as e:  # reported below
            errors[user] = e

    threads = [threading.Thread(target=spawn, args=(u,)) for u in STUDENTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for user in STUDENTS:
        if user in errors:
            raise errors[user]
        last = events[user][-1] if events[user] else {}
        if not last.get("ready"):
            pytest.fail(
                f"{user}'s spawn did not succeed: {last}\n{hub.log_tail(60)}\n{rc.diagnostics(ns)}"
            )
    return events


def sh(rc, ns, user, command, timeout=180):
    """``command`` in ``user``'s notebook pod, as their terminal runs it."""
    return pod_exec(rc.core, ns, f"jupyter-{user}", command, container="notebook", timeout=timeout)


def test_spawn_runs_a_real_vm_beside_a_real_notebook(lab, spawned):
    rc, ns, hub = lab
    for user in STUDENTS:
        messages = " | ".join(e.get("message", "") for e in spawned[user])
        # The VM's own status strings and events, as KubeVirt reports them,
        # reached the hub's progress stream (the hub stops reading it when the
        # spawn is done, so the last state may not be among them).
        assert f"labvm-{user}: VM Starting" in messages, messages
        assert "[Normal] VirtualMachine: Started the virtual machine" in messages, messages
        vm = rc.kube.vm(ns, f"labvm-{user}")
        vmi = rc.kube.vmi(ns, f"labvm-{user}")
        assert vm["status"]["printableStatus"] == "Running", vm["status"]
        assert vmi["status"]["phase"] == "Running"
        ready = [c for c in vmi["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", vmi["status"]["conditions"]
        # KubeVirt (not a stand-in) propagated the template labels to the
        # launcher pod, whose IP is the VMI's.
        (launcher,) = rc.kube.launcher_pods(ns, f"labvm-{user}")
        labels = launcher["metadata"]["labels"]
        assert labels["kubevirt-spawner/server"] == f"labvm-{user}"
        assert labels["app.kubernetes.io/component"] == "lab-vm"
        assert vmi["status"]["interfaces"][0]["ipAddress"] == launcher["status"]["podIP"]
        # The instructor's hook ConfigMap runs in KubeVirt's sidecar-shim.
        sidecars = [
            c["name"]
            for c in launcher["spec"]["containers"]
            if c["name"].startswith("hook-sidecar")
        ]
        assert sidecars, [c["name"] for c in launcher["spec"]["containers"]]

        pod = rc.core.read_namespaced_pod(f"jupyter-{user}", ns)
        assert pod.status.phase == "Running"
        env = {e.name: e.value for e in pod.spec.containers[0].env or []}
        missing = [v for v in LAB_VARS if not env.get(v)]
        assert not missing, f"notebook pod lacks {missing}"
        assert env["LAB_VM_HOST"] == f"labvm-{user}.{ns}.svc.cluster.local"
        assert env["LAB_GDB_REMOTE"] == (
            f"| python3 -m kubevirt_spawner.gdbrelay tcp:labvm-{user}.{ns}.svc.cluster.local:1234"
        )

    # QEMU on the node runs under TCG with the hook's arguments.
    cmdlines = [c for _, c in rc.qemu_processes()]
    assert len(cmdlines) == 2, cmdlines
    for cmd in cmdlines:
        assert "-gdb tcp::1234" in cmd, cmd
        assert re.search(r"-device edu,bus=pcie\.0,addr=0x[0-9a-f]+", cmd), cmd
        assert "tcg" in cmd, cmd


def test_notebook_pod_holds_no_api_credentials(lab, spawned):
    """Nothing in a student's pod talks to the API server as anyone: no
    ServiceAccount token is mounted (kubespawner's default without a
    service_account), so the RBAC denials tested in test_rbac.py are a second
    line, not the first."""
    rc, ns, _ = lab
    pod = rc.core.read_namespaced_pod("jupyter-alice", ns)
    assert pod.spec.automount_service_account_token is False, pod.spec
    r = sh(rc, ns, "alice", "ls /var/run/secrets/kubernetes.io/serviceaccount 2>&1; echo rc=$?")
    assert "No such file or directory" in r.out, r


def test_ssh_from_the_notebook_runs_the_lab_kernel(lab, spawned):
    rc, ns, _ = lab
    r = sh(
        rc,
        ns,
        "alice",
        'ssh -i "$LAB_SSH_KEY" -p "$LAB_VM_SSH_PORT" -o BatchMode=yes '
        '-o StrictHostKeyChecking=yes -o UserKnownHostsFile="$LAB_SSH_KNOWN_HOSTS" '
        'root@"$LAB_VM_HOST" uname -r',
    )
    assert r.rc == 0, r
    assert r.out.strip() == rc.images["kernel_release"], r
    # labvm, the student's command, takes the same path.
    r = sh(rc, ns, "alice", "labvm ssh hostname")
    assert r.rc == 0 and r.out.strip() == "labvm-alice", r


def test_edu_device_is_on_the_guest_pci_bus(lab, spawned):
    rc, ns, _ = lab
    r = sh(
        rc,
        ns,
        "alice",
        "labvm ssh 'for d in /sys/bus/pci/devices/*; do "
        "echo $(cat $d/vendor):$(cat $d/device); done'",
    )
    assert r.rc == 0, r
    assert "0x1234:0x11e8" in r.out.split(), r


def test_gdb_attaches_to_qemu_and_hits_a_syscall_breakpoint(lab, spawned):
    rc, ns, _ = lab
    # uname in the VM calls newuname(2): keep calling it until gdb, attached
    # through the pod network to QEMU's port 1234, catches one.
    script = (
        "(for i in $(seq 120); do labvm ssh uname -n >/dev/null 2>&1; sleep 1; done) & "
        'timeout 240 gdb -q -nx -batch -iex "set style enabled off" -iex "set auto-load safe-path /" '
        '-ex "set pagination off" -ex "set remotetimeout 60" -ex "file $LAB_VMLINUX" '
        '-ex "target remote $LAB_GDB_REMOTE" -ex "hbreak __x64_sys_newuname" -ex continue '
        '-ex bt -ex "delete" -ex detach; rc=$?; kill %1 2>/dev/null; exit $rc'
    )
    r = sh(rc, ns, "alice", script, timeout=300)
    assert re.search(r"Breakpoint 1, (0x[0-9a-f]+ in )?__x64_sys_newuname", r.out), r
    frames = [ln for ln in r.out.splitlines() if re.match(r"#\d+ ", ln)]
    assert len(frames) >= 2 and "__x64_sys_newuname" in frames[0], r
    assert "do_syscall_64" in r.out, r


def test_no_gdb_command_ends_the_vm(lab, spawned):
    """gdb's `kill`, a second `target remote` in one session (gdb kills the
    first inferior) and a raw kill packet typed by hand, each from alice's
    notebook pod through LAB_GDB_REMOTE (the relay): the same QEMU and VMI
    keep running, and gdb attaches again."""
    rc, ns, _ = lab
    vmi = rc.kube.vmi(ns, "labvm-alice")
    qemus = sorted(pid for pid, _ in rc.qemu_processes())
    gdb = (
        'timeout 240 gdb -q -nx -batch -iex "set style enabled off" -ex "set confirm off" '
        '-ex "set remotetimeout 60" -ex "file $LAB_VMLINUX" -ex "target remote $LAB_GDB_REMOTE" '
    )
    r = sh(rc, ns, "alice", gdb + "-ex kill 2>&1", timeout=300)
    assert "detached instead" in r.out, r
    again = '-ex "target remote $LAB_GDB_REMOTE" -ex "print init_task.comm" -ex detach 2>&1'
    r = sh(rc, ns, "alice", gdb + again, timeout=300)
    assert "detached instead" in r.out and '"swapper' in r.out, r
    r = sh(rc, ns, "alice", 'printf "+\\$k#6b" | ${LAB_GDB_REMOTE#| } 2>&1', timeout=120)
    assert "detached instead" in r.out, r

    now = rc.kube.vmi(ns, "labvm-alice")
    assert now["metadata"]["uid"] == vmi["metadata"]["uid"], "the VMI was replaced"
    assert now["status"]["phase"] == "Running", now["status"]
    assert sorted(pid for pid, _ in rc.qemu_processes()) == qemus, "a QEMU ended"
    # The guest runs on (the relay detached; QEMU stops the VM while gdb is
    # attached) and gdb attaches again.
    r = sh(rc, ns, "alice", "labvm ssh uname -n")
    assert r.rc == 0 and r.out.strip() == "labvm-alice", r
    r = sh(rc, ns, "alice", gdb + '-ex "print init_task.comm" -ex detach 2>&1', timeout=300)
    assert '"swapper' in r.out, r


# Talks to the service as its client would: sshd's banner on 22; on 1234 a
# gdb remote-protocol exchange with QEMU's gdbstub that ends in a detach (a
# connection alone stops the VM, and KubeVirt leaves a VM stopped by gdb
# stopped: see manifests.make_vm's start_paused).
PROBE = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    s = socket.create_connection((host, port), timeout=5)
except OSError as e:
    sys.exit(f"no connection: {e}")
s.settimeout(10)
if port == 22:
    print(s.recv(64).decode(errors="replace").strip())
else:
    s.sendall(b"$?#3f")
    print(s.recv(64).decode(errors="replace"))
    s.sendall(b"+$D;1#b0")  # detach process 1, as the debug hook's resumer does
    print(s.recv(64).decode(errors="replace"))
"""


def reach(rc, ns, pod, host, port):
    """(answered, transcript): whether ``pod`` reaches host:port and gets the
    service's own answer."""
    code = base64.b64encode(PROBE.encode()).decode()
    r = pod_exec(
        rc.core, ns, pod, f'python3 -c "$(echo {code} | base64 -d)" {host} {port}', timeout=60
    )
    answer = "SSH-2.0-" if port == 22 else "$T05"
    return r.rc == 0 and answer in r.out, f"{r.out.strip()} {r.err.strip()}"


def test_network_policy_is_enforced(lab, spawned):
    rc, ns, _ = lab
    (launcher,) = rc.kube.launcher_pods(ns, "labvm-alice")
    alice_ip = launcher["status"]["podIP"]
    # The name resolves (cluster DNS) to alice's launcher pod for everyone;
    # what differs is what the NetworkPolicy admits.
    r = sh(rc, ns, "bob", f"getent hosts labvm-alice.{ns}.svc.cluster.local")
    assert r.out.split()[:1] == [alice_ip], r
    for port in (22, 1234):
        ok, out = reach(rc, ns, "jupyter-alice", alice_ip, port)
        assert ok, f"alice cannot reach her own VM on {port}: {out}"
        ok, out = reach(rc, ns, "jupyter-bob", alice_ip, port)
        assert not ok, f"bob reached alice's VM on {port}: {out}"
    # bob's own VM is open to bob: the policy, not the network, stops him.
    (bob_launcher,) = rc.kube.launcher_pods(ns, "labvm-bob")
    assert reach(rc, ns, "jupyter-bob", bob_launcher["status"]["podIP"], 22)[0]

    # Nothing else in the namespace gets in either: a pod without a
    # notebook's labels, same image.
    rc.core.create_namespaced_pod(
        ns,
        {
            "metadata": {"name": "intruder", "labels": {"app": "intruder"}},
            "spec": {
                "containers": [
                    {
                        "name": "notebook",
                        "image": rc.images["notebook"],
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["sleep", "3600"],
                    }
                ],
                "terminationGracePeriodSeconds": 0,
            },
        },
    )
    wait_for(
        "intruder pod Running",
        lambda: rc.core.read_namespaced_pod("intruder", ns).status.phase == "Running",
        180,
    )
    for port in (22, 1234):
        ok, out = reach(rc, ns, "intruder", alice_ip, port)
        assert not ok, f"a pod without a notebook's labels reached alice's VM on {port}: {out}"
    rc.core.delete_namespaced_pod("intruder", ns, grace_period_seconds=0)


def test_labvm_reset_gives_a_fresh_root_filesystem(lab, spawned):
    rc, ns, _ = lab
    r = sh(
        rc,
        ns,
        "alice",
        "labvm ssh 'echo before-reset > /root/kvs-marker && sync && cat /root/kvs-marker'",
    )
    assert r.rc == 0 and "before-reset" in r.out, r
    old = rc.kube.vmi(ns, "labvm-alice")["metadata"]["uid"]
    r = sh(rc, ns, "alice", "labvm reset", timeout=900)
    assert r.rc == 0, r
    new = rc.kube.vmi(ns, "labvm-alice")
    assert new["metadata"]["uid"] != old, "the VMI was not replaced"
    r = sh(
        rc,
        ns,
        "alice",
        "labvm ssh 'test -e /root/kvs-marker && echo still-there || echo gone; uname -r'",
    )
    assert r.rc == 0, r
    assert r.out.split() == ["gone", rc.images["kernel_release"]], r


def test_stop_removes_every_object_and_qemu(lab, spawned):
    rc, ns, hub = lab
    for user in STUDENTS:
        hub.stop_server(user, timeout=300)
    for user in STUDENTS:
        vm = f"labvm-{user}"
        reads = {
            "vm": lambda vm=vm: rc.kube.vm(ns, vm),
            "vmi": lambda vm=vm: rc.kube.vmi(ns, vm),
            "launcher": lambda vm=vm: rc.kube.launcher_pods(ns, vm),
            "service": lambda vm=vm: get_or_none(rc.core.read_namespaced_service, vm, ns),
            "networkpolicy": lambda vm=vm: get_or_none(
                rc.kube.networking.read_namespaced_network_policy, vm, ns
            ),
            "secret": lambda vm=vm: get_or_none(rc.core.read_namespaced_secret, vm, ns),
            "notebook": lambda user=user: get_or_none(
                rc.core.read_namespaced_pod, f"jupyter-{user}", ns
            ),
        }
        for what, read in reads.items():
            wait_for(f"{user}'s {what} gone (404)", lambda read=read: not read(), 180)
    wait_nothing_left(rc.kube, ns, 120)
    vms = rc.kube.custom.list_namespaced_custom_object(*KV, ns, "virtualmachines")["items"]
    assert vms == []
    wait_for("no QEMU left on the node", lambda: not rc.qemu_processes(), 120)

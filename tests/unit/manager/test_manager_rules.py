"""Pure decisions of the lab manager: reaper (orphans, cull reasons) and abuse rules."""

from datetime import datetime, timedelta, timezone

import pytest

from kubevirt_spawner import contract
from kubevirt_spawner.local.spawner import runtime_dir_name as spawner_dir_name
from kubevirt_spawner.manager import abuse, reaper
from kubevirt_spawner.manager.abuse import Sample
from kubevirt_spawner.manager.reaper import (
    ClusterObject,
    Deletion,
    LocalProcess,
    LocalVM,
    RunDirInfo,
    ServerInfo,
)

ROOT = "/run/kvs"


def test_the_reaper_names_runtime_directories_as_the_spawner_does():
    s = ServerInfo("Alice Smith", "lab 2")
    assert reaper.server_rundir_name(s) == spawner_dir_name("Alice Smith", "lab 2")


def ready(user, name="", **state):
    return ServerInfo(user, name, pending=None, ready=True, state=state)


def test_local_orphans_every_rule():
    servers = [
        ready("alice", rundir=f"{ROOT}/alice", vm_pid=100, vm_start_time=5000),
        ServerInfo("carol", pending="spawn"),  # no state yet: her directory is protected
        ready("erin", "lab2", rundir=f"{ROOT}/erin~lab2", vm_pid=300, vm_start_time=1),
    ]
    vms = [
        LocalVM(100, 5000, f"{ROOT}/alice", 900),  # alice's own VM
        LocalVM(101, 5100, f"{ROOT}/alice", 800),  # a second QEMU in alice's dir
        LocalVM(200, 6000, f"{ROOT}/bob", 900),  # bob has no server
        LocalVM(201, 6100, f"{ROOT}/dave", 5),  # too young to judge
        LocalVM(202, 6200, f"{ROOT}/carol", 900),  # pending spawn
        LocalVM(203, 6300, "/elsewhere/frank", 900),  # not under our root
        LocalVM(300, 1, f"{ROOT}/erin~lab2", 900),  # erin's named server lab2
    ]
    procs = [
        LocalProcess(400, 7000, f"{ROOT}/bob", 900),
        LocalProcess(401, 7100, f"{ROOT}/alice", 900),
    ]
    dirs = [
        RunDirInfo(f"{ROOT}/alice", 900),
        RunDirInfo(f"{ROOT}/bob", 900),  # has a live (orphan) VM: the VM goes first
        RunDirInfo(f"{ROOT}/gone", 900),
        RunDirInfo(f"{ROOT}/fresh", 3),
    ]
    got = reaper.local_orphans(servers, vms, procs, dirs, ROOT + "/", grace=60)
    assert [(d.kind, d.target, d.reason, d.ident) for d in got] == [
        ("qemu", "101", reaper.ORPHAN_STALE_VM, (101, 5100)),
        ("qemu", "200", reaper.ORPHAN_NO_SERVER, (200, 6000)),
        ("process", "400", reaper.ORPHAN_NO_SERVER, (400, 7000)),
        ("rundir", f"{ROOT}/gone", reaper.ORPHAN_EMPTY_RUNDIR, ()),
    ]
    assert all(d.detail for d in got)


def test_local_orphans_pending_server_keeps_stale_vm():
    # While the spawner restarts a VM the saved pid is old: never judge a pending server's VM.
    servers = [ServerInfo("alice", pending="spawn", state={"vm_pid": 1, "vm_start_time": 1})]
    vms = [LocalVM(100, 5000, f"{ROOT}/alice", 900)]
    assert reaper.local_orphans(servers, vms, [], [], ROOT, grace=60) == []


def test_local_orphans_is_pure():
    servers = [ready("alice")]
    vms = [LocalVM(200, 6000, f"{ROOT}/bob", 900)]
    before = (list(servers), list(vms))
    reaper.local_orphans(servers, vms, [], [], ROOT, grace=0)
    assert (servers, vms) == before


def obj(kind, name, server=None, age=1000, user="bob"):
    labels = {contract.MANAGED_BY: contract.MANAGED_BY_VALUE, contract.USERNAME_LABEL: user}
    if server:
        labels[contract.SERVER_LABEL] = server
    return ClusterObject(kind, "labs", name, labels, age)


def test_cluster_orphans():
    servers = [
        ready("alice", vm_name="labvm-alice"),
        ServerInfo("carol", pending="spawn"),
    ]
    objects = [
        obj("virtualmachine", "labvm-alice", "labvm-alice", user="alice"),
        obj("virtualmachine", "labvm-bob", "labvm-bob"),
        obj("service", "labvm-bob", "labvm-bob"),
        obj("network_policy", "labvm-bob", "labvm-bob", age=10),  # young
        obj("secret", "labvm-carol", "labvm-carol", user="carol"),  # pending spawn
        obj("pod", "jupyter-unlabelled", None),  # no server label: not ours to judge
    ]
    got = reaper.cluster_orphans(servers, objects, grace=60)
    assert got == [
        Deletion(
            "service",
            "labs/labvm-bob",
            reaper.ORPHAN_NO_SERVER,
            "server label 'labvm-bob' matches no running server",
            ("labs", "labvm-bob"),
        ),
        Deletion(
            "virtualmachine",
            "labs/labvm-bob",
            reaper.ORPHAN_NO_SERVER,
            "server label 'labvm-bob' matches no running server",
            ("labs", "labvm-bob"),
        ),
    ]
    assert got[0].log_line() == (
        "service labs/labvm-bob: orphan-no-server "
        "(server label 'labvm-bob' matches no running server)"
    )


NOW = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "inactive_min, started_min_ago, idle_timeout, max_age, expected",
    [
        pytest.param(61, 70, 3600, 0, reaper.IDLE, id="idle"),
        pytest.param(59, 70, 3600, 0, None, id="not-idle-yet"),
        pytest.param(5, 470, 3600, 8 * 3600, None, id="young-enough"),
        pytest.param(5, 481, 3600, 8 * 3600, reaper.MAX_AGE, id="over-age-while-active"),
        pytest.param(61, 481, 3600, 8 * 3600, reaper.IDLE, id="idle-wins"),
        pytest.param(600, 600, 0, 0, None, id="both-off"),
        pytest.param(None, 600, 3600, 0, None, id="no-activity-known"),
    ],
)
def test_cull_reason(inactive_min, started_min_ago, idle_timeout, max_age, expected):
    server = {"started": (NOW - timedelta(minutes=started_min_ago)).isoformat()}
    inactive = None if inactive_min is None else timedelta(minutes=inactive_min)
    assert reaper.cull_reason(inactive, server, NOW, idle_timeout, max_age) == expected


def burn(start, end, step, cpu):
    return [Sample(t, cpu) for t in range(start, end + 1, step)]


RULE = dict(threshold=0.8, window=60, notebook_idle_min=120)


@pytest.mark.parametrize(
    "samples, idle_for, flagged",
    [
        pytest.param(burn(0, 100, 5, 0.97), 600, True, id="burner-idle-notebook"),
        pytest.param(burn(0, 100, 5, 0.97), 30, False, id="student-at-work"),
        pytest.param(burn(0, 100, 5, 0.97), None, False, id="activity-unknown"),
        pytest.param(
            burn(0, 100, 5, 0.97)[:-3] + [Sample(90, 0.2)] + burn(95, 100, 5, 0.97),
            600,
            False,
            id="dip-in-window",
        ),
        pytest.param(burn(70, 100, 5, 0.97), 600, False, id="window-not-covered-yet"),
        pytest.param(burn(0, 40, 5, 0.97) + burn(75, 100, 5, 0.97), 600, False, id="gap"),
        pytest.param(burn(0, 60, 5, 0.97), 600, False, id="stale-samples"),
        pytest.param(burn(0, 100, 5, 0.3), 600, False, id="module-build-low-vm-cpu"),
        pytest.param([], 600, False, id="no-samples"),
    ],
)
def test_sustained_cpu(samples, idle_for, flagged):
    before = list(samples)
    f = abuse.sustained_cpu(samples, 100, idle_for, **RULE)
    assert (f is not None) == flagged
    assert samples == before
    if f:
        assert f.rule == abuse.SUSTAINED_CPU and "0.97 cores for 60s" in f.detail


def test_miner_processes():
    names = ["init", "sh", "dropbear", "xmrig", "XMRig", "kworker/0:1"]
    f = abuse.miner_processes(names, abuse.DEFAULT_MINER_NAMES)
    assert f == abuse.Flag(abuse.MINER_PROCESS, "known miner process running: XMRig, xmrig")
    assert abuse.miner_processes(["init", "sh", "make", "cc1"], abuse.DEFAULT_MINER_NAMES) is None


PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0F02000A:0016 0202000A:A3C2 01 00000000:00000000 02:000A7B3A 00000000     0        0 2 1
   2: 0F02000A:B2A4 0101A8C0:0D05 02 00000001:00000000 01:00000133 00000002     0        0 3 2
"""
PROC_NET_TCP6 = """\
  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A
   1: 0000000000000000FFFF00000F02000A:C000 0000000000000000FFFF00000101A8C0:115C 01
"""


def test_parse_proc_net_tcp():
    assert abuse.parse_proc_net_tcp(PROC_NET_TCP + PROC_NET_TCP6) == [
        ("10.0.2.2", 41922, "ESTABLISHED"),
        ("192.168.1.1", 3333, "SYN_SENT"),
        ("0:0:0:0:0:ffff:c0a8:101", 4444, "ESTABLISHED"),
    ]


def test_mining_connections():
    conns = abuse.parse_proc_net_tcp(PROC_NET_TCP)
    f = abuse.mining_connections(conns, abuse.DEFAULT_MINING_PORTS)
    assert f == abuse.Flag(
        abuse.MINING_PORT, "connection to a mining-pool port: 192.168.1.1:3333 (SYN_SENT)"
    )
    assert abuse.mining_connections([("10.0.2.2", 41922, "ESTABLISHED")], [3333]) is None
    # A student's own server on a "pool" port, reached from inside the VM, is no pool.
    local = [("127.0.0.1", 3333, "ESTABLISHED"), ("0:0:0:0:0:ffff:7f00:1", 3333, "ESTABLISHED")]
    assert abuse.mining_connections(local, [3333]) is None


def test_parse_inspect_output():
    names, conns = abuse.parse_inspect_output("init\nsh\nxmrig\n---\n" + PROC_NET_TCP)
    assert names == ["init", "sh", "xmrig"]
    assert ("192.168.1.1", 3333, "SYN_SENT") in conns

"""The lab manager without a hub: its store, input validation, student client,
and the sample -> rule -> flag -> action pipeline on a real (tiny) process."""

import os
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from tornado.web import HTTPError

from kubevirt_spawner import managerclient as client
from kubevirt_spawner.local.vmprocess import proc_start_time
from kubevirt_spawner.manager.backends.kubevirt import Cluster
from kubevirt_spawner.manager.core import LabManager, Settings
from kubevirt_spawner.manager.handlers import parse_result
from kubevirt_spawner.manager.metrics import Metrics
from kubevirt_spawner.manager.reaper import ServerInfo
from kubevirt_spawner.manager.store import Store

NOW = 1_750_000_000.0


def test_store_progress_latest_result_wins_and_persists(tmp_path):
    db = tmp_path / "m.sqlite"
    s = Store(db)
    s.add_result("alice", "lab1", "wc", False, NOW, "expected 3, saw 2")
    s.add_result("alice", "lab1", "wc", True, NOW + 60)
    s.add_result("bob", "lab1", "wc", True, NOW + 10)
    s.add_result("bob", "lab1", "wc", False, NOW + 70, "broke it again")
    s.add_result("bob", "lab2", "strace", True, NOW)
    s.close()
    s = Store(db)  # a restarted service sees the same grid
    assert s.progress("lab1") == [
        {
            "user": "alice",
            "lab": "lab1",
            "check": "wc",
            "attempts": 2,
            "last_time": NOW + 60,
            "passed": True,
            "message": "",
            "first_pass": NOW + 60,
        },
        {
            "user": "bob",
            "lab": "lab1",
            "check": "wc",
            "attempts": 2,
            "last_time": NOW + 70,
            "passed": False,
            "message": "broke it again",
            "first_pass": NOW + 10,
        },
    ]
    assert len(s.progress()) == 3 and s.count_results() == 5


def test_store_flags_raised_once_until_cleared(tmp_path):
    s = Store(tmp_path / "m.sqlite")
    first = s.raise_flag("alice", "", "sustained-cpu", "1.0 cores", "flag")
    assert first is not None
    assert s.raise_flag("alice", "", "sustained-cpu", "again", "flag") is None
    assert [f["detail"] for f in s.flags()] == ["1.0 cores"]
    assert s.clear_flag(first) and not s.clear_flag(first)
    assert s.flags() == [] and len(s.flags(include_cleared=True)) == 1
    assert s.raise_flag("alice", "", "sustained-cpu", "back", "flag") is not None


OK = {"lab": "lab1", "check": "wc", "passed": True}


@pytest.mark.parametrize(
    "body, expected",
    [
        pytest.param(OK, ("lab1", "wc", True, NOW, ""), id="minimal"),
        pytest.param(
            {"check": "lab3.kthread", "passed": False, "message": "no output"},
            ("lab3", "lab3.kthread", False, NOW, "no output"),
            id="checks.py-format",
        ),
        pytest.param({**OK, "time": NOW - 5}, ("lab1", "wc", True, NOW - 5, ""), id="time"),
        pytest.param({**OK, "user": "alice"}, ("lab1", "wc", True, NOW, ""), id="user-field"),
    ],
)
def test_parse_result_accepts(body, expected):
    assert parse_result(body, NOW) == expected


@pytest.mark.parametrize(
    "body, message",
    [
        pytest.param({**OK, "extra": 1}, "unknown fields: extra", id="unknown-field"),
        pytest.param({"lab": "lab1", "passed": True}, "check must be", id="no-check"),
        pytest.param({"check": "nodot", "passed": True}, "lab must be", id="no-lab"),
        pytest.param({**OK, "lab": "a/b"}, "lab must be", id="slash"),
        pytest.param({**OK, "lab": "x" * 65}, "lab must be", id="long-lab"),
        pytest.param({**OK, "check": ""}, "check must be", id="empty-check"),
        pytest.param({**OK, "passed": 1}, "passed must be", id="int-passed"),
        pytest.param({**OK, "time": True}, "time must be", id="bool-time"),
        pytest.param({**OK, "time": "yesterday"}, "time must be", id="str-time"),
        pytest.param({**OK, "time": NOW + 7200}, "time is not", id="future"),
        pytest.param({**OK, "message": "x" * 2001}, "message must be", id="long-message"),
        pytest.param({**OK, "message": 5}, "message must be", id="int-message"),
    ],
)
def test_parse_result_refuses(body, message):
    with pytest.raises(HTTPError) as e:
        parse_result(body, NOW)
    assert e.value.status_code == 400 and message in e.value.log_message


def test_client_needs_its_environment_and_a_reachable_manager():
    with pytest.raises(client.ManagerError, match="LAB_MANAGER_URL"):
        client.report_check("lab1", "wc", True, environ={})
    env = {
        "LAB_MANAGER_URL": "http://127.0.0.1:9/services/lab-manager/",
        "JUPYTERHUB_API_TOKEN": "t",
        "JUPYTERHUB_USER": "alice",
    }
    with pytest.raises(client.ManagerError, match="Cannot reach the lab manager"):
        client.reset_vm(timeout=5, environ=env)


def test_reset_asks_the_manager_to_wait_and_says_what_to_do_when_it_does_not_answer(
    monkeypatch,
):
    """A manager that takes the request and never answers (a reset still under
    way on a busy cluster): the student is told the reset may still be going on."""
    asked = []
    with socket.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(10)

        def swallow():
            conn, _ = srv.accept()
            asked.append(conn.recv(4096).decode(errors="replace").split("\r\n")[0])
            time.sleep(3)
            conn.close()

        t = threading.Thread(target=swallow)
        t.start()
        env = {
            "LAB_MANAGER_URL": f"http://127.0.0.1:{srv.getsockname()[1]}/services/lab-manager/",
            "JUPYTERHUB_API_TOKEN": "t",
            "JUPYTERHUB_USER": "alice",
        }
        monkeypatch.setattr(client, "ANSWER_MARGIN", 0.5)
        with pytest.raises(client.ManagerError) as e:
            client.reset_vm(timeout=2, environ=env)
        t.join()
    assert asked == ["POST /services/lab-manager/api/users/alice/reset?wait=2 HTTP/1.1"]
    assert "did not answer within 2.5s" in str(e.value) and "labvm status" in str(e.value)


class FakeHub:
    api_url, token = "http://hub.invalid/hub/api", "x"

    def __init__(self):
        self.stopped = []

    async def stop_server(self, user, server=""):
        self.stopped.append((user, server))


@pytest.fixture
def burner(tmp_path):
    """A busy process whose command line names a runtime directory, like QEMU's."""
    rundir = tmp_path / "alice"
    rundir.mkdir()
    p = subprocess.Popen([sys.executable, "-c", "while True: pass", str(rundir / "qmp.sock")])
    time.sleep(0.2)
    yield p, rundir
    p.kill()
    p.wait()


@pytest.mark.parametrize("action", ["flag", "stop"])
async def test_sampled_burner_is_flagged_and_acted_on(burner, tmp_path, action):
    proc, rundir = burner
    hub = FakeHub()
    m = LabManager(
        hub,
        Store(tmp_path / "f.sqlite"),
        Settings(
            runtime_root=str(tmp_path),
            cpu_threshold=0.05,
            cpu_window=2.0,
            notebook_idle=60,
            inspect_interval=float("inf"),
            abuse_action=action,
        ),
        Metrics(),
    )
    state = {"rundir": str(rundir), "vm_pid": proc.pid, "vm_start_time": proc_start_time(proc.pid)}
    m.servers = [ServerInfo("alice", ready=True, state=state)]
    idle_since = (datetime.now(timezone.utc) - timedelta(minutes=5)).isoformat()
    m.users = [{"name": "alice", "servers": {"": {"last_activity": idle_since}}}]
    t0 = time.time()
    while time.time() - t0 < 3.2:
        await m.sample()
        await m.check_abuse()
        time.sleep(0.3)
    hist = list(m.history["alice"])
    # (a low bar: on a loaded 2-core machine the busy loop may get a fraction of a core)
    assert len(hist) >= 5 and min(h.cpu for h in hist) > 0.05, hist
    assert m.memory["alice"] > 1 << 20
    flags = m.store.flags()
    assert [(f["user"], f["rule"], f["action"]) for f in flags] == [
        ("alice", "sustained-cpu", action)
    ]
    assert hub.stopped == ([("alice", "")] if action == "stop" else [])
    text = generate_latest(m.metrics.registry).decode()
    assert f'kvs_abuse_flags_total{{action="{action}",rule="sustained-cpu"}} 1.0' in text
    # The VM goes away: its series and history go with it.
    m.servers = []
    await m.sample()
    assert "alice" not in m.history
    assert 'kvs_vm_cpu_cores{user="alice"}' not in generate_latest(m.metrics.registry).decode()


async def test_active_notebook_is_not_flagged(burner, tmp_path):
    proc, rundir = burner
    m = LabManager(
        FakeHub(),
        Store(":memory:"),
        Settings(
            runtime_root=str(tmp_path),
            cpu_threshold=0.05,
            cpu_window=2.0,
            notebook_idle=60,
            inspect_interval=float("inf"),
        ),
        Metrics(),
    )
    state = {"rundir": str(rundir), "vm_pid": proc.pid, "vm_start_time": proc_start_time(proc.pid)}
    m.servers = [ServerInfo("alice", ready=True, state=state)]
    m.users = [
        {
            "name": "alice",
            "servers": {"": {"last_activity": datetime.now(timezone.utc).isoformat()}},
        }
    ]
    t0 = time.time()
    while time.time() - t0 < 3.2:
        await m.sample()
        await m.check_abuse()
        time.sleep(0.3)
    assert m.store.flags() == []


@pytest.mark.parametrize(
    "quantity, cores",
    [("250m", 0.25), ("123456789n", 0.123456789), ("2", 2.0), ("1500u", 0.0015), ("0", 0.0)],
)
def test_parse_cpu(quantity, cores):
    from kubevirt_spawner.manager.backends.kubevirt import parse_cpu

    assert parse_cpu(quantity) == pytest.approx(cores)


def test_usage_by_server_sums_containers():
    from kubevirt_spawner.manager.backends.kubevirt import parse_memory, usage_by_server

    assert parse_memory("128Mi") == 128 << 20 and parse_memory("1G") == 10**9
    items = [
        {
            "metadata": {"labels": {"kubevirt-spawner/server": "labvm-alice"}},
            "containers": [
                {"usage": {"cpu": "950m", "memory": "300Mi"}},
                {"usage": {"cpu": "10m", "memory": "20Mi"}},
            ],
        },
        {"metadata": {"labels": {}}, "containers": [{"usage": {"cpu": "1", "memory": "1Gi"}}]},
    ]
    (cores, mem), *rest = usage_by_server(items).values()
    assert rest == [] and cores == pytest.approx(0.96) and mem == 320 << 20


class FakeCluster(Cluster):
    """The real manager backend for KubeVirt with a TEST DOUBLE for its one API
    read: metrics.k8s.io's pod usage, as ``Cluster.vm_usage`` maps it."""

    def __init__(self, by_vm):
        super().__init__(namespace="lab")
        self.by_vm = by_vm

    async def vm_usage(self):
        return self.by_vm


async def test_cluster_vm_is_sampled_and_flagged(tmp_path):
    m = LabManager(
        FakeHub(),
        Store(":memory:"),
        Settings(
            runtime_root=str(tmp_path),
            cpu_threshold=0.8,
            cpu_window=60,
            notebook_idle=60,
            inspect_interval=0,
            cluster=FakeCluster({"labvm-bob": (0.97, 700 << 20)}),
        ),
        Metrics(),
    )
    m.servers = [ServerInfo("bob", ready=True, state={"vm_name": "labvm-bob"})]
    idle_since = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    m.users = [{"name": "bob", "servers": {"": {"last_activity": idle_since}}}]
    now = time.time()
    for t in range(0, 75, 10):
        await m.sample(now=now - 70 + t)
    assert len(m.history["bob"]) == 8 and m.memory["bob"] == 700 << 20
    raised = await m.check_abuse(now=now)  # no ssh into cluster VMs: only the CPU rule
    assert [(s.user, f.rule) for s, f in raised] == [("bob", "sustained-cpu")]
    m.servers = []
    await m.sample()
    assert "bob" not in m.history


@pytest.mark.parametrize(
    "name, ok",
    [
        ("alice", True),
        ("a.b@uni.edu", True),
        ("Élodie Dupont", True),
        ("..", False),
        (".", False),
        ("a/b", False),
        ("a%2fb", False),
        ("a?b", False),
        ("x" * 256, False),
    ],
)
def test_user_names_the_api_accepts(name, ok):
    from kubevirt_spawner.manager.handlers import NAME_RE

    assert bool(NAME_RE.fullmatch(name)) == ok


def test_sigint_ends_the_service_quietly(tmp_path):
    """The hub stops its services with SIGINT: the manager exits 0 without a
    KeyboardInterrupt traceback in the hub's log (its own rounds may fail
    here: no hub answers)."""
    import signal
    import socket

    from harness.hubctl import free_port

    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "XDG_DATA_HOME": str(tmp_path),
        "JUPYTERHUB_API_URL": f"http://127.0.0.1:{free_port()}/hub/api",
        "JUPYTERHUB_API_TOKEN": "t",
    }
    p = subprocess.Popen(
        # -X faulthandler: a manager still running 30 s after SIGINT is sent
        # SIGABRT below, which makes it print every thread's stack.
        [sys.executable, "-X", "faulthandler", "-m", "kubevirt_spawner.manager", f"--port={port}"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert p.poll() is None, p.stderr.read()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the manager never listened"
                time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        try:
            _, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            masks = [
                f"{who} {line}"
                for who, pid in (("manager", p.pid), ("pytest", os.getpid()))
                for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith(("SigBlk", "SigIgn", "SigCgt"))
            ]
            p.send_signal(signal.SIGABRT)
            _, err = p.communicate(timeout=30)
            raise AssertionError(
                f"still running 30 s after SIGINT ({masks}, pytest's SIGINT handler "
                f"{signal.getsignal(signal.SIGINT)}); its stacks:\n{err}"
            ) from None
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert "KeyboardInterrupt" not in err, err

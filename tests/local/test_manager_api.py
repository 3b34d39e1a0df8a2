"""The lab manager's API against a real hub and real VMs: students act only on
their own VM with their server's token, check results reach the dashboard,
and every endpoint answers bad input with a clear 4xx and no side effects."""

import json
import subprocess
import sys
import time

import pytest
import requests
from harness.manager_hub import (
    INSTRUCTOR,
    call,
    cleanup,
    console_log,
    qemu_pid,
    server_token,
    service_url,
    start_hub,
    user_token,
    wait_for,
)

from kubevirt_spawner.local.qemu import MARK_SSH_READY

pytestmark = pytest.mark.local

ALICE, BOB = "kvsm-alice", "kvsm-bob"


@pytest.fixture(scope="module")
def hub(tmp_path_factory, guest):
    h = start_hub(
        tmp_path_factory.mktemp("mgr-api"),
        ["--sample-interval=2", "--reap-every=0", "--inspect-every=3600"],
    )
    try:
        for name in (ALICE, BOB):
            events = h.spawn(name)
            assert events[-1].get("ready"), f"{name}: {events[-1]}\n{h.log_tail()}"
        h.tokens = {
            ALICE: server_token(h, ALICE),
            BOB: server_token(h, BOB),
            INSTRUCTOR: user_token(h, INSTRUCTOR),
        }
        yield h
    finally:
        cleanup(h)


def boots(hub, name) -> int:
    return console_log(hub, name).count(MARK_SSH_READY)


def test_help_and_bad_command_line():
    out = subprocess.run(
        [sys.executable, "-m", "kubevirt_spawner.manager", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "--idle-timeout" in out.stdout and "--abuse-action" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "kubevirt_spawner.manager", "--abuse-action=explode"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "abuse_action" in bad.stderr


async def test_labvm_reset_without_qmp_goes_through_the_manager(hub):
    """Without LAB_VM_QMP (as on the cluster) `labvm reset` asks the lab manager,
    with the server's own token; the same QEMU process boots afresh."""
    pid, before = qemu_pid(hub, ALICE), boots(hub, ALICE)
    term = await hub.terminal(ALICE)
    try:
        await term.run("cd /tmp && labvm ssh 'echo scribble > /root/mark'")
        t0 = time.monotonic()
        out = await term.run("env -u LAB_VM_QMP labvm reset", timeout=240)
        took = time.monotonic() - t0
        assert term.last_status == 0, out
        assert "VM reset" in out
        out = await term.run("labvm ssh 'cat /root/mark 2>&1; echo rc=$?'")
        assert "No such file" in out, "the root filesystem was not fresh after the reset"
    finally:
        term.close()
    assert boots(hub, ALICE) == before + 1
    assert qemu_pid(hub, ALICE) == pid
    print(f"reset through the lab manager: {took:.1f}s")


async def test_another_users_token_is_refused(hub):
    before = boots(hub, ALICE)
    # From bob's own terminal, with bob's own server token, at alice's VM:
    term = await hub.terminal(BOB)
    try:
        out = await term.run(
            'python3 -c "from kubevirt_spawner.managerclient import call; '
            "call('POST', 'api/users/kvsm-alice/reset', {})\" 2>&1 | tail -1"
        )
    finally:
        term.close()
    assert "refused (403)" in out and "own VM" in out, out
    r = call(hub, "POST", f"api/users/{ALICE}/reset", hub.tokens[BOB])
    assert r.status_code == 403 and r.json()["message"] == "you may act only on your own VM"
    # and a student may not stop or restart even their own server
    for action in ("stop", "restart"):
        r = call(hub, "POST", f"api/users/{BOB}/{action}", hub.tokens[BOB])
        assert r.status_code == 403, r.text
    time.sleep(3)
    assert boots(hub, ALICE) == before
    assert hub.server_state(BOB)["ready"]


async def test_check_results_reach_the_grid(hub):
    term = await hub.terminal(ALICE)
    try:
        out = await term.run(
            'python3 -c "from kubevirt_spawner.managerclient import report_check as r; '
            "r('lab1', 'wordcount', False, 'expected 3, saw 2'); r('lab1', 'wordcount', True); "
            "print('reported')\""
        )
    finally:
        term.close()
    assert "reported" in out, out
    r = call(hub, "GET", "api/progress?lab=lab1", hub.tokens[INSTRUCTOR])
    assert r.status_code == 200
    (row,) = [x for x in r.json()["results"] if x["user"] == ALICE]
    assert (row["check"], row["passed"], row["attempts"]) == ("wordcount", True, 2)
    # The format kubevirt_spawner.checks sends (lab taken from the check id):
    r = call(
        hub,
        "POST",
        "api/progress",
        hub.tokens[BOB],
        json={"user": BOB, "check": "lab2.strace", "passed": False, "message": "no"},
    )
    assert r.status_code == 201, r.text
    assert r.json() == {"user": BOB, "lab": "lab2", "check": "lab2.strace", "passed": False}
    # Students cannot read the grid.
    assert call(hub, "GET", "api/progress", hub.tokens[BOB]).status_code == 403


HUGE = b'{"lab": "lab1", "check": "big", "passed": true, "message": "' + b"x" * (3 << 20) + b'"}'


def bad_requests(t):
    """(what, method, path, token, body, expected status)."""
    alice, bob, teach = t[ALICE], t[BOB], t[INSTRUCTOR]
    j = json.dumps
    return [
        ("no token", "GET", "api/vms", None, None, 401),
        ("student reads VMs", "GET", "api/vms", alice, None, 403),
        ("student opens the dashboard", "GET", "", alice, None, 403),
        ("forged token", "GET", "api/vms", "not-a-token", None, 401),
        (
            "forged token on progress",
            "POST",
            "api/progress",
            "0" * 32,
            j({"lab": "l", "check": "c", "passed": True}),
            401,
        ),
        ("malformed JSON", "POST", "api/progress", alice, "{lab: 1", 400),
        ("JSON not an object", "POST", "api/progress", alice, "[1, 2]", 400),
        ("binary body", "POST", "api/progress", alice, b"\xff\xfe\x00", 400),
        (
            "passed not a bool",
            "POST",
            "api/progress",
            alice,
            j({"lab": "l", "check": "c", "passed": "yes"}),
            400,
        ),
        (
            "bad lab name",
            "POST",
            "api/progress",
            alice,
            j({"lab": "../etc", "check": "c", "passed": True}),
            400,
        ),
        (
            "unknown field",
            "POST",
            "api/progress",
            alice,
            j({"lab": "l", "check": "c", "passed": True, "grade": 100}),
            400,
        ),
        (
            "time far away",
            "POST",
            "api/progress",
            alice,
            j({"lab": "l", "check": "c", "passed": True, "time": 1e12}),
            400,
        ),
        (
            "reporting as someone else",
            "POST",
            "api/progress",
            alice,
            j({"user": BOB, "lab": "l", "check": "c", "passed": True}),
            403,
        ),
        ("huge body", "POST", "api/progress", alice, HUGE, 413),
        ("huge body on an action", "POST", f"api/users/{ALICE}/reset", alice, HUGE, 413),
        ("unknown user", "POST", "api/users/nobody-here/reset", teach, None, 404),
        ("unknown user, odd name", "POST", "api/users/%2e%2e/reset", teach, None, 404),
        ("unknown e-mail user", "POST", "api/users/nobody%40uni.edu/reset", teach, None, 404),
        ("user without a server", "POST", f"api/users/{INSTRUCTOR}/reset", teach, None, 404),
        ("other user's VM", "POST", f"api/users/{ALICE}/reset", bob, None, 403),
        ("unknown action", "POST", f"api/users/{ALICE}/format", teach, None, 404),
        ("bad server name", "POST", f"api/users/{ALICE}/reset?server=../x", teach, None, 400),
        ("wait that is no number", "POST", f"api/users/{ALICE}/reset?wait=soon", alice, None, 400),
        ("negative wait", "POST", f"api/users/{ALICE}/reset?wait=-3", alice, None, 400),
        ("endless wait", "POST", f"api/users/{ALICE}/reset?wait=inf", alice, None, 400),
        ("unknown flag", "POST", "api/flags/999999/clear", teach, None, 404),
        ("student clears a flag", "POST", "api/flags/1/clear", alice, None, 403),
        ("student reads metrics", "GET", "metrics", alice, None, 403),
        ("wrong method on progress", "DELETE", "api/progress", teach, None, 405),
        ("wrong method on an action", "GET", f"api/users/{ALICE}/reset", teach, None, 405),
        ("wrong method on the VM list", "POST", "api/vms", teach, "{}", 405),
    ]


def test_bad_input_everywhere_is_a_clear_4xx_without_side_effects(hub):
    before = {
        "boots": {n: boots(hub, n) for n in (ALICE, BOB)},
        "pids": {n: qemu_pid(hub, n) for n in (ALICE, BOB)},
        "progress": call(hub, "GET", "api/progress", hub.tokens[INSTRUCTOR]).json(),
        "flags": call(hub, "GET", "api/vms", hub.tokens[INSTRUCTOR]).json()["flags"],
    }
    failures = []
    for what, method, path, token, body, status in bad_requests(hub.tokens):
        r = call(hub, method, path, token, data=body)
        ok = r.status_code == status
        try:
            msg = r.json().get("message", "")
        except ValueError:
            msg = ""
        if not ok or not msg:
            failures.append(f"{what}: {method} {path} -> {r.status_code} {r.text[:200]!r}")
    assert not failures, "\n".join(failures)
    time.sleep(3)
    assert {n: boots(hub, n) for n in (ALICE, BOB)} == before["boots"]
    assert {n: qemu_pid(hub, n) for n in (ALICE, BOB)} == before["pids"]
    assert call(hub, "GET", "api/progress", hub.tokens[INSTRUCTOR]).json() == before["progress"]
    assert call(hub, "GET", "api/vms", hub.tokens[INSTRUCTOR]).json()["flags"] == before["flags"]
    for n in (ALICE, BOB):
        assert hub.server_state(n)["ready"]


def test_instructor_sees_both_vms_and_metrics(hub):
    teach = hub.tokens[INSTRUCTOR]
    wait_for(
        lambda: all(
            r["cpu"] is not None and len(r["history"]) >= 2
            for r in call(hub, "GET", "api/vms", teach).json()["rows"]
        ),
        30,
        "CPU samples of both VMs",
        hub,
    )
    rows = {r["user"]: r for r in call(hub, "GET", "api/vms", teach).json()["rows"]}
    assert set(rows) == {ALICE, BOB}
    for r in rows.values():
        assert (r["backend"], r["state"]) == ("local", "running"), r
        assert 50 << 20 < r["memory"] < 1 << 30, r
        assert r["uptime"] > 0 and r["last_activity"]
    text = call(hub, "GET", "metrics", teach).text
    assert 'kvs_running_vms{backend="local"} 2.0' in text
    assert 'kvs_check_results_total{outcome="pass"}' in text
    for line in text.splitlines():
        if line.startswith("kvs_spawn_duration_seconds_sum"):
            print(line)
    # The manager watched both spawns go from pending to ready.
    assert 'kvs_spawn_duration_seconds_count{backend="local",phase="vm"} 2.0' in text
    assert 'kvs_spawn_duration_seconds_count{backend="local",phase="notebook"} 2.0' in text


def test_instructor_restarts_and_stops_servers(hub):
    """Last in this module: it changes the servers the other tests use."""
    teach = hub.tokens[INSTRUCTOR]
    old_vm = qemu_pid(hub, BOB)
    r = call(hub, "POST", f"api/users/{BOB}/restart", teach, timeout=180)
    assert r.status_code == 202 and r.json()["result"] == "starting", r.text
    wait_for(lambda: (hub.server_state(BOB) or {}).get("ready"), 240, "bob's server back", hub)
    assert qemu_pid(hub, BOB) != old_vm, "restart kept the old VM"
    r = call(hub, "POST", f"api/users/{ALICE}/stop", teach)
    assert r.status_code == 202 and r.json()["result"] == "stopping"
    wait_for(lambda: hub.server_state(ALICE) is None, 120, "alice's server to stop", hub)
    r = call(hub, "POST", f"api/users/{ALICE}/reset", teach)
    assert r.status_code == 404 and "no running server" in r.json()["message"]


def test_a_cookie_authenticated_post_needs_the_xsrf_token(hub):
    """An instructor logged in through the hub (OAuth cookie, as the dashboard
    page is): a POST without the XSRF header is refused, so another site
    cannot make the instructor's browser reset or stop VMs."""
    s = requests.Session()
    s.get(f"{hub.url}/hub/login", timeout=30)
    s.post(
        f"{hub.url}/hub/login",
        data={"username": INSTRUCTOR, "password": "x", "_xsrf": s.cookies.get("_xsrf")},
        timeout=30,
    )
    page = s.get(service_url(hub), timeout=60)  # through the OAuth redirects
    assert page.status_code == 200 and "Lab manager" in page.text, page.text[:300]
    path = service_url(hub, "api/flags/999999/clear")
    refused = s.post(path, timeout=30)
    # (HubOAuth does not count a cookie that comes without its XSRF token)
    assert refused.status_code in (401, 403), refused.text
    xsrf = s.cookies.get("_xsrf", path="/services/lab-manager/") or s.cookies.get("_xsrf")
    allowed = s.post(path, headers={"X-XSRFToken": xsrf}, timeout=30)
    assert allowed.status_code == 404 and "no open flag" in allowed.json()["message"], allowed.text

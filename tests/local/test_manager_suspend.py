"""Suspended VMs in the lab manager, through the real manager and hub: its
idle cull suspends a student's VM instead of discarding it (the spawner's
default policy), the instructor sees the suspended VM and its size, resumes
it from the dashboard (the student's VM comes back with its /tmp), and
discards it; bad
requests get a clear 4xx and change nothing."""

import pwd
import shutil
import time
from pathlib import Path

import pytest
from harness.browser import chromium
from harness.manager_hub import (
    INSTRUCTOR,
    call,
    cleanup,
    login,
    start_hub,
    user_token,
    vm_of,
    wait_for,
)
from playwright.async_api import expect

pytestmark = pytest.mark.local

ALICE = "kvsms-alice"
IDLE = 12


@pytest.fixture(scope="module")
def hub(tmp_path_factory, guest):
    h = start_hub(
        tmp_path_factory.mktemp("mgr-suspend"),
        [f"--idle-timeout={IDLE}", "--reap-every=2", "--max-age=0", "--inspect-every=3600"],
    )
    try:
        shutil.rmtree(Path(pwd.getpwnam(ALICE).pw_dir, ".labvm"), ignore_errors=True)
    except KeyError:  # a first run: the account does not exist yet
        pass
    try:
        h.teach = user_token(h, INSTRUCTOR)
        yield h
    finally:
        cleanup(h)


def states(hub) -> list[dict]:
    r = call(hub, "GET", "api/suspended", hub.teach)
    assert r.status_code == 200, r.text
    return [s for s in r.json()["states"] if s["user"] == ALICE]


def resumed_count(hub) -> int:
    return hub.log_path.read_text(errors="replace").count(f"Spawn {ALICE}: VM resumed")


async def test_idle_cull_suspends_and_the_instructor_resumes_and_discards(hub):
    events = hub.spawn(ALICE)
    assert events[-1].get("ready"), f"{events[-1]}\n{hub.log_tail()}"
    vm_of(hub, ALICE).run("echo from-before-the-cull > /tmp/note")
    # The manager's idle cull stops the server; the stop saves the VM.
    wait_for(lambda: hub.server_state(ALICE) is None, 120, "the idle cull", hub)
    wait_for(lambda: states(hub), 30, "the suspended VM in api/suspended", hub)
    (st,) = states(hub)
    assert st["restorable"] and not st["running"] and 1e6 < st["bytes"] < 100e6, st
    assert time.time() - 120 < st["saved_at"] <= time.time()
    home = Path(pwd.getpwnam(ALICE).pw_dir)
    assert (home / ".labvm" / st["name"] / "vm.state.gz").stat().st_uid == pwd.getpwnam(
        ALICE
    ).pw_uid

    # Bad requests change nothing.
    student = user_token(hub, ALICE)
    for method, path, token, status in [
        ("POST", f"api/users/{ALICE}/resume", student, 403),
        ("POST", f"api/users/{ALICE}/discard?state={st['name']}", student, 403),
        ("GET", "api/suspended", student, 403),
        ("POST", f"api/users/{ALICE}/discard?state=../../etc", hub.teach, 400),
        ("POST", f"api/users/{ALICE}/discard?state=suspended-000000000000", hub.teach, 404),
        ("POST", f"api/users/{INSTRUCTOR}/resume", hub.teach, 404),
    ]:
        r = call(hub, method, path, token)
        assert r.status_code == status and r.json().get("message"), f"{path}: {r.text}"
    assert states(hub) == [st]

    # The dashboard shows it; the instructor resumes it there.
    before = resumed_count(hub)
    async with chromium() as browser:
        page, status = await login(browser, hub, INSTRUCTOR)
        assert status == 200
        row = page.locator(f"#saved tbody tr[data-user='{ALICE}']")
        await expect(row).to_contain_text("suspended", timeout=30000)
        await expect(row).to_contain_text(f"{st['bytes'] / 1e6:.1f} MB")
        page.on("dialog", lambda d: d.accept())
        await row.locator("button[data-action=resume]").click()
        await expect(page.locator("#status")).to_have_text(f"resume: {ALICE} — done", timeout=60000)
    wait_for(lambda: resumed_count(hub) > before, 120, "the VM to resume", hub)
    wait_for(lambda: (hub.server_state(ALICE) or {}).get("ready"), 120, "the server", hub)
    r = call(hub, "POST", f"api/users/{ALICE}/resume", hub.teach)
    assert r.status_code in (404, 409), r.text  # running now, its state used up
    assert "from-before-the-cull" in vm_of(hub, ALICE).run("cat /tmp/note").stdout

    # Idle again: culled again, suspended again; the instructor discards it.
    wait_for(lambda: hub.server_state(ALICE) is None, 120, "the second idle cull", hub)
    wait_for(lambda: states(hub), 30, "the second suspended VM", hub)
    (st,) = states(hub)
    r = call(hub, "POST", f"api/users/{ALICE}/discard?state={st['name']}", hub.teach)
    assert r.status_code == 202 and r.json()["result"] == "discarded", r.text
    assert states(hub) == []
    assert not (home / ".labvm" / st["name"]).exists()
    events = hub.spawn(ALICE)
    said = "\n".join(e.get("message", "") for e in events)
    assert events[-1].get("ready") and "VM booting" in said and "Resuming" not in said, said

"""Check cells reach the instructor's grid: a check run in a student's real
notebook kernel (the websocket JupyterLab uses) is recorded by the real lab
manager, sent with the server's own token; with the manager down or hung the
check still passes or fails as it should, within checks.REPORT_TIMEOUT, and
the notebook server's log says, once, why its result was not recorded."""

import os
import signal
import socket
import time
from pathlib import Path

import pytest
from harness.manager_hub import (
    INSTRUCTOR,
    call,
    cleanup,
    server_token,
    start_hub,
    user_token,
    wait_for,
)

pytestmark = pytest.mark.local

STUDENT = "kvsr-rita"
PASSING = (
    "from kubevirt_spawner.checks import check, expect\n"
    'with check("{id}"):\n    expect(1 + 1 == 2, "arithmetic")\n'
)
FAILING = (
    "from kubevirt_spawner.checks import check, expect\n"
    'with check("{id}"):\n    expect(1 + 1 == 3, "1 + 1 should be 3 here")\n'
)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    # No VM: what is tested is the path from a check cell to the grid.
    h = start_hub(
        tmp_path_factory.mktemp("reports"),
        ["--reap-every=0", "--inspect-every=3600"],
        extra="c.LocalVMSpawner.with_vm = False\n",
    )
    try:
        assert h.spawn(STUDENT)[-1].get("ready"), h.log_tail()
        h.instructor = user_token(h, INSTRUCTOR)
        yield h
    finally:
        cleanup(h)


def progress(hub, lab: str) -> dict:
    r = call(hub, "GET", f"api/progress?lab={lab}", hub.instructor)
    assert r.status_code == 200, r.text
    return {row["check"]: row for row in r.json()["results"]}


def log_lines(hub, text: str) -> list[str]:
    return [ln for ln in hub.log_path.read_text(errors="replace").splitlines() if text in ln]


async def test_check_cells_in_a_real_kernel_reach_the_grid(hub):
    kernel = await hub.kernel(STUDENT)
    try:
        ok = await kernel.execute(PASSING.format(id="lab0.report_pass"))
        assert ok.error == "" and "✔ lab0.report_pass passed" in ok.stdout, ok
        bad = await kernel.execute(FAILING.format(id="lab0.report_fail"))
        assert bad.error == "CheckFailed: 1 + 1 should be 3 here", bad
    finally:
        kernel.close()
    rows = progress(hub, "lab0")
    assert rows["report_pass"]["user"] == STUDENT and rows["report_pass"]["passed"] is True
    assert rows["report_fail"]["passed"] is False
    assert rows["report_fail"]["message"] == "1 + 1 should be 3 here"
    assert abs(rows["report_fail"]["last_time"] - time.time()) < 600
    assert log_lines(hub, "not reported") == [], "a result was lost on the way"


async def test_a_hung_manager_holds_a_check_up_for_two_seconds_at_most(hub):
    """A manager that accepts connections and never answers (what a stuck
    service looks like to the client)."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        url = f"http://127.0.0.1:{hung.getsockname()[1]}/services/lab-manager/"
        kernel = await hub.kernel(STUDENT)
        try:
            await kernel.execute(f"import os; os.environ['LAB_MANAGER_URL'] = {url!r}")
            t0 = time.monotonic()
            ok = await kernel.execute(PASSING.format(id="lab0.report_hung"))
            took = time.monotonic() - t0
        finally:
            kernel.close()
    assert ok.error == "" and "passed" in ok.stdout, ok
    # The cell waited the client's own limit (2 s), not the 15 s of a plain request.
    wait_for(lambda: log_lines(hub, "lab0.report_hung"), 10, "the server log line")
    (line,) = log_lines(hub, "lab0.report_hung")
    assert "not reported: no answer from the lab manager in 2 s" in line, line
    assert took < 10, f"the check took {took:.1f}s"
    print(f"\ncheck cell with a hung lab manager: {took:.2f}s")


def test_a_stopped_servers_token_is_refused_at_once(hub):
    """The hub revokes a server's token when it stops; the manager asks the
    hub about every token (token_cache_seconds 0), so the old token is
    refused at the next request, not five minutes later."""
    token = server_token(hub, STUDENT)
    body = {"lab": "lab0", "check": "token_alive", "passed": True}
    assert call(hub, "POST", "api/progress", token, json=body).status_code == 201
    hub.stop_server(STUDENT)
    r = call(hub, "POST", "api/progress", token, json=body)
    assert r.status_code in (401, 403), r.text
    assert hub.spawn(STUDENT)[-1].get("ready"), hub.log_tail()  # for the tests below


async def test_with_the_manager_down_checks_still_work_and_the_log_says_why(hub):
    marker = f"--db={hub.db}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
    kernel = await hub.kernel(STUDENT)
    try:
        bad = await kernel.execute(FAILING.format(id="lab0.report_down"))
    finally:
        kernel.close()
    assert bad.error == "CheckFailed: 1 + 1 should be 3 here", bad
    wait_for(lambda: log_lines(hub, "lab0.report_down"), 10, "the server log line")
    (line,) = log_lines(hub, "lab0.report_down")
    assert "Cannot reach the lab manager" in line, line

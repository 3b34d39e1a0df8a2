"""The dashboard in headless Chromium (Debian's, driven by Playwright): an
instructor logs in through the hub, sees two students' VMs live, resets one
and sees it come back; a student cannot open the dashboard."""

import re
import time

import pytest
from harness.browser import chromium
from harness.manager_hub import (
    INSTRUCTOR,
    call,
    cleanup,
    console_log,
    login,
    server_token,
    start_hub,
)
from playwright.async_api import expect

from kubevirt_spawner.local.qemu import MARK_SSH_READY

pytestmark = pytest.mark.local

ALICE, BOB = "kvsm-balice", "kvsm-bbob"


@pytest.fixture(scope="module")
def hub(tmp_path_factory, guest):
    h = start_hub(
        tmp_path_factory.mktemp("mgr-browser"),
        ["--sample-interval=2", "--reap-every=0", "--inspect-every=3600"],
    )
    try:
        for name in (ALICE, BOB):
            assert h.spawn(name)[-1].get("ready"), h.log_tail()
        yield h
    finally:
        cleanup(h)


@pytest.fixture
async def browser():
    async with chromium() as b:
        yield b


def boots(hub, name):
    return console_log(hub, name).count(MARK_SSH_READY)


async def test_instructor_sees_vms_resets_one_and_it_comes_back(hub, browser):
    # A check result for the grid, sent with alice's own server token.
    r = call(
        hub,
        "POST",
        "api/progress",
        server_token(hub, ALICE),
        json={"lab": "lab1", "check": "wordcount", "passed": True},
    )
    assert r.status_code == 201
    page, status = await login(browser, hub, INSTRUCTOR)
    assert status == 200 and page.url.rstrip("/").endswith("/services/lab-manager")
    await expect(page.locator("h1")).to_have_text("Lab manager")
    rows = page.locator("#vms tbody tr")
    for name in (ALICE, BOB):
        row = page.locator(f'#vms tbody tr[data-user="{name}"]')
        await expect(row.locator("td.state")).to_have_text("running", timeout=30_000)
        await expect(row.locator("td").nth(1)).to_have_text("local")
        # CPU and memory are live, and the plot has points (at least two samples).
        await expect(row.locator("td").nth(5)).to_have_text(re.compile(r"^\d+%$"), timeout=30_000)
        await expect(row.locator("td").nth(6)).to_have_text(re.compile(r"^\d+ MiB$"))
        await expect(row.locator("svg.spark polyline")).to_have_attribute(
            "points", re.compile(r"\S+ \S+"), timeout=30_000
        )
    assert await rows.count() == 2
    await expect(page.locator("#summary")).to_have_text("2 servers, 2 VMs running")
    # Sorting by user, both ways.
    await page.click('#vms th[data-key="user"]')
    assert await rows.first.get_attribute("data-user") == BOB
    await page.click('#vms th[data-key="user"]')
    assert await rows.first.get_attribute("data-user") == ALICE

    # Reset alice's VM from the page.
    before = boots(hub, ALICE)
    t0 = time.monotonic()
    page.once("dialog", lambda d: d.accept())
    alice = page.locator(f'#vms tbody tr[data-user="{ALICE}"]')
    await alice.locator('button[data-action="reset"]').click()
    await expect(alice.locator("td.state")).to_have_text("resetting", timeout=10_000)
    await expect(alice.locator("td.state")).to_have_text("running", timeout=120_000)
    took = time.monotonic() - t0
    assert boots(hub, ALICE) == before + 1, "the VM did not boot again"
    # The outcome stays where the instructor looks, through the refreshes since.
    await expect(page.locator("#status")).to_have_text(f"Reset: {ALICE} — requested")
    await expect(page.locator("#updated")).to_contain_text("updated")
    bob = page.locator(f'#vms tbody tr[data-user="{BOB}"]')
    await expect(bob.locator("td.state")).to_have_text("running")
    print(f"\nreset from the dashboard until it showed running again: {took:.1f}s")

    # The progress grid shows alice's passed check.
    await page.click('nav .tab[data-tab="progress"]')
    cell = page.locator(f'#grid tbody tr[data-user="{ALICE}"] td[data-check="lab1:wordcount"]')
    await expect(cell).to_have_text(re.compile(r"^✓\s*\d\d:\d\d"))
    await expect(cell).to_have_class("pass")
    await expect(page.locator(f'#grid tbody tr[data-user="{BOB}"] td.none')).to_have_count(1)


async def test_student_cannot_open_the_dashboard(hub, browser):
    page, status = await login(browser, hub, ALICE)
    # The hub refuses the OAuth step: students lack access:services!service=lab-manager
    # (the service itself refuses them too: test_manager_api).
    assert status == 403, (status, page.url)
    assert "do not have permission to access JupyterHub service lab-manager" in (
        await page.inner_text("body")
    )
    assert await page.locator("#vms").count() == 0
    body = await page.content()
    assert "Lab manager" not in body

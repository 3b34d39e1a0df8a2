"""A student's first hour and an instructor's first class on the demo
(hub-config/local_config.py), in headless Chromium driven by Playwright:

the student logs in, starts a server and watches the progress page, finds the
ten labs in nbgrader's Assignment List, fetches lab 0, runs it top to bottom
through JupyterLab's menus against their own VM and submits it; meanwhile
the instructor watches the dashboard's Lab progress grid fill in (passed and
failed checks) without reloading, then collects and autogrades the
submission in formgrader. A screenshot of every step goes to
$KVS_TEST_OUTPUT/first-hour (default build/test-output/first-hour) for a
person to look at."""

import os
import re
import shutil
from pathlib import Path

import pytest
from harness.browser import chromium
from harness.demo_hub import Demo, new_student
from harness.hubctl import REPO
from playwright.async_api import expect

pytestmark = pytest.mark.local

STUDENT = "kvsf-fiona"
LABS = [f"lab{i}" for i in range(10)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = Demo(tmp_path_factory.mktemp("first-hour"))
    new_student(STUDENT)
    try:
        d.start()
        yield d
    finally:
        d.close()


@pytest.fixture(scope="module")
def shots() -> Path:
    out = Path(os.environ.get("KVS_TEST_OUTPUT", REPO / "build" / "test-output")) / "first-hour"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return out


@pytest.fixture
async def browser():
    async with chromium() as b:
        yield b


async def hub_login(browser, demo, name: str):
    ctx = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await ctx.new_page()
    await page.goto(f"{demo.url}/hub/login")
    await page.fill("input[name=username]", name)
    await page.fill(
        "input[name=password]", demo.passwords["instructor" if name == "instructor" else "student"]
    )
    await page.click("#login_submit")
    return page


def assignment_row(page, listing, name: str):
    """The row of assignment ``name`` in one of the Assignment List's lists."""
    label = page.locator(".item_name", has_text=re.compile(f"^{name}$"))
    return listing.locator(".list_item", has=label).first


async def menu(page, top: str, item: str) -> None:
    """Open JupyterLab's menu ``top`` and click ``item``, as a person would."""
    await page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{top}$")).click()
    await page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{item}$")).first.click()


async def test_a_students_first_hour_and_the_instructors_first_class(demo, browser, shots):
    # -- the student: log in, start, watch the progress page -----------------
    page = await hub_login(browser, demo, STUDENT)
    await page.wait_for_url(re.compile(r"/hub/spawn"))
    await page.screenshot(path=shots / "1-spawn-options.png")
    await page.get_by_role("button", name="Start").click()
    await page.wait_for_url(re.compile(r"/spawn-pending/"), timeout=30_000)
    await expect(page.locator("#progress-message")).to_contain_text(
        re.compile("VM booting|Kernel up|ssh ready|Starting JupyterLab"), timeout=120_000
    )
    await page.screenshot(path=shots / "2-progress.png")
    await page.wait_for_url(re.compile(rf"/user/{STUDENT}/lab"), timeout=240_000)
    await expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=120_000)
    await page.wait_for_timeout(5000)  # the news prompt, if any, comes a moment after load
    await page.screenshot(path=shots / "3-jupyterlab.png")

    # -- student tools only ----------------------------------------------------
    body = await page.inner_text("body")
    assert "official Jupyter news" not in body, "JupyterLab's news pop-up is shown"
    assert await page.locator("#nbgrader-create_assignemnt").count() == 0
    await page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Nbgrader$")).click()
    items = await page.locator(".lm-Menu-content .lm-Menu-itemLabel").all_inner_texts()
    assert "Assignment List" in items, items
    assert not {"Formgrader", "Course List", "Create Assignment"} & set(items), items
    await page.keyboard.press("Escape")

    # -- the instructor opens the grid before the student starts --------------
    teach = await hub_login(browser, demo, "instructor")
    await teach.wait_for_url(re.compile(r"/hub/"))
    await teach.goto(f"{demo.url}/services/lab-manager/")
    await teach.click('nav .tab[data-tab="progress"]')
    await expect(teach.locator("#tab-progress")).to_be_visible()

    # -- the Assignment List: ten labs released, fetch lab 0 ------------------
    await menu(page, "Nbgrader", "Assignment List")
    released = page.locator("#released_assignments_list")
    for lab in LABS:
        await expect(released).to_contain_text(lab, timeout=120_000)
    await page.screenshot(path=shots / "4-assignment-list.png")
    await assignment_row(page, released, "lab0").get_by_role("button", name="Fetch").click()
    fetched = page.locator("#fetched_assignments_list")
    await expect(fetched).to_contain_text("lab0", timeout=60_000)

    # -- open lab 0 from the file browser and run it top to bottom -------------
    await page.locator(".jp-DirListing-itemText", has_text=re.compile(r"^lab0$")).dblclick()
    await page.locator(".jp-DirListing-itemText", has_text=re.compile(r"^lab0\.ipynb$")).dblclick()
    notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    await expect(notebook.locator(".jp-Cell").first).to_be_visible(timeout=60_000)
    await expect(page.locator(".jp-Notebook-ExecutionIndicator")).to_have_attribute(
        "data-status", "idle", timeout=120_000
    )
    # Shift-Enter through every cell, as the notebook asks: a failing check
    # stops "Run All", so a student runs on past it cell by cell.
    await expect(page.locator(".jp-StatusBar-Item", has_text="| Idle")).to_be_visible(
        timeout=120_000
    )
    position = page.locator(".jp-StatusBar-Item", has_text=re.compile(r"^Cell \d+/\d+$"))
    total = int(re.search(r"/(\d+)", await position.inner_text()).group(1))
    await notebook.locator(".jp-Cell").first.click()
    for _ in range(total):
        cell = await notebook.locator(".jp-Cell.jp-mod-active").element_handle()
        await page.keyboard.press("Shift+Enter")
        if "jp-CodeCell" in (await cell.get_attribute("class") or ""):
            await page.wait_for_function(
                "c => /\\[\\d+\\]/.test(c.querySelector('.jp-InputPrompt').textContent)",
                arg=cell,
                timeout=300_000,
            )
    await page.keyboard.press("Control+s")
    await page.screenshot(path=shots / "5-lab0-run.png")
    # The free check passed; the untouched TODOs failed theirs, in one line each.
    failed = notebook.locator(".jp-OutputArea-output", has_text=re.compile(r"^CheckFailed: "))
    assert await failed.count() >= 2, await notebook.inner_text()
    assert "lab0.vm_reachable passed" in await notebook.inner_text()

    # -- the instructor sees passed and failed checks appear, without reloading
    grid_row = teach.locator(f'#grid tbody tr[data-user="{STUDENT}"]')
    await expect(grid_row.locator('td.pass[data-check="lab0:vm_reachable"]')).to_be_visible(
        timeout=60_000
    )
    await expect(grid_row.locator("td.fail").first).to_be_visible()
    # all four of lab 0's checks, each as the student's run left it
    await expect(grid_row.locator("td[data-check^='lab0:']")).to_have_count(4, timeout=30_000)
    await expect(grid_row.locator('td[data-check="lab0:vm_reachable"] small.when')).to_have_text(
        re.compile(r"\d\d:\d\d")
    )
    await teach.screenshot(path=shots / "6-dashboard-progress.png", full_page=True)

    # -- the student submits ---------------------------------------------------
    await page.locator(".lm-TabBar-tab", has_text="Assignments").click()
    await assignment_row(page, fetched, "lab0").get_by_role("button", name="Submit").click()
    await expect(page.locator("#submitted_assignments_list")).to_contain_text(
        "lab0", timeout=60_000
    )
    await page.screenshot(path=shots / "7-submitted.png")

    # -- formgrader: collect and autograde -------------------------------------
    await teach.goto(f"{demo.url}/services/os-lab/formgrader")
    lab0 = teach.locator("#main-table tr", has=teach.locator('td.name[data-order="lab0"]'))
    await expect(lab0.locator("td.status")).to_have_text("released", timeout=60_000)
    await lab0.locator("td.collect a").click()
    await expect(teach.locator("#success-modal")).to_contain_text("Successfully collected")
    await teach.locator("#success-modal").get_by_role("button", name="OK").click()
    await expect(lab0.locator("td.num-submissions")).to_have_text("1", timeout=60_000)
    await teach.screenshot(path=shots / "8-formgrader-collected.png")
    await lab0.locator("td.num-submissions a").click()
    sub = teach.locator("tr", has=teach.locator("td.student-id", has_text=STUDENT))
    await sub.locator("td.autograde a").click()
    # Against the course's grading VM, the untouched notebook earns lab 0's two
    # free points (its VM answers, gdb attaches) and none of the TODOs'.
    await expect(teach.locator("#success-modal")).to_contain_text(
        "Successfully autograded", timeout=600_000
    )
    await teach.locator("#success-modal").get_by_role("button", name="OK").click()
    await expect(sub.locator("td.score")).to_have_text("2 / 4", timeout=60_000)
    await teach.screenshot(path=shots / "9-formgrader-autograded.png")
    print(f"\nscreenshots: {shots}")


async def test_the_course_service_keeps_the_grader_tools(demo, browser, shots):
    """Graders' JupyterLab (the course service): formgrader and Create
    Assignment, no Assignment List, and no news pop-up either."""
    teach = await hub_login(browser, demo, "instructor")
    await teach.wait_for_url(re.compile(r"/hub/"))
    await teach.goto(f"{demo.url}/services/os-lab/lab")
    await expect(teach.locator("#jp-main-dock-panel")).to_be_visible(timeout=120_000)
    await teach.wait_for_timeout(5000)  # as above: the news prompt would come by now
    assert "official Jupyter news" not in await teach.inner_text("body")
    assert await teach.locator("#nbgrader-create_assignemnt").count() == 1
    await teach.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Nbgrader$")).click()
    items = await teach.locator(".lm-Menu-content .lm-Menu-itemLabel").all_inner_texts()
    assert "Formgrader" in items and "Assignment List" not in items, items
    await teach.screenshot(path=shots / "10-course-service.png")

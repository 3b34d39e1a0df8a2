"""A hub without the nbgrader course delivers the labs with
LocalVMSpawner.copy_labs_from: the student notebooks land in ~/labs at every
start, owned by the student, and never over a file the student changed."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from harness.hubctl import Hub

pytestmark = pytest.mark.local

STUDENT = "kvsl-lena"


@pytest.fixture(scope="module")
def release() -> Path:
    d = Path(tempfile.mkdtemp(prefix="kvs-release-", dir="/tmp"))
    d.chmod(0o755)
    for lab in ("lab0", "lab1"):
        (d / lab).mkdir()
        (d / lab / f"{lab}.ipynb").write_text(f'{{"course": "{lab} v1"}}')
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def hub(tmp_path_factory, release):
    extra = f"""
c.LocalVMSpawner.with_vm = False
c.LocalVMSpawner.profile_list = [
    {{"display_name": "Labs", "slug": "labs", "default": True}},
    {{"display_name": "Typo", "slug": "typo",
      "spawner_override": {{"copy_labs_from": "/nonexistent/release"}}}},
]
c.LocalVMSpawner.copy_labs_from = {str(release)!r}
"""
    h = Hub(tmp_path_factory.mktemp("labs-hub"), extra_config=extra).start()
    yield h
    for name in (STUDENT,):
        if h.server_state(name):
            h.stop_server(name)
    h.stop()
    shutil.rmtree(h.runtime_root, ignore_errors=True)


async def test_labs_arrive_and_the_students_own_work_is_kept(hub, release):
    os.system(f"userdel --remove {STUDENT} >/dev/null 2>&1")
    assert hub.spawn(STUDENT)[-1].get("ready"), hub.log_tail()
    labs = Path(f"/home/{STUDENT}/labs")
    assert sorted(p.name for p in labs.iterdir()) == ["lab0", "lab1"]
    assert (labs / "lab0/lab0.ipynb").read_text() == '{"course": "lab0 v1"}'
    assert (labs / "lab0/lab0.ipynb").stat().st_uid == (labs.parent).stat().st_uid != 0

    term = await hub.terminal(STUDENT)
    await term.run("echo '{\"mine\": 1}' > ~/labs/lab0/lab0.ipynb")
    term.close()
    hub.stop_server(STUDENT)

    # The instructor updates lab 0 and adds lab 2; the next start brings lab 2 only.
    (release / "lab0/lab0.ipynb").write_text('{"course": "lab0 v2"}')
    (release / "lab2").mkdir()
    (release / "lab2/lab2.ipynb").write_text('{"course": "lab2 v1"}')
    assert hub.spawn(STUDENT)[-1].get("ready"), hub.log_tail()
    assert (labs / "lab0/lab0.ipynb").read_text().strip() == '{"mine": 1}'
    assert (labs / "lab2/lab2.ipynb").read_text() == '{"course": "lab2 v1"}'
    assert "Labs for kvsl-lena: labcopy: 1 new file(s)" in hub.log_path.read_text()
    hub.stop_server(STUDENT)


def test_a_missing_labs_folder_is_said_and_the_server_still_starts(hub):
    events = hub.spawn(STUDENT, {"profile": "typo"})
    assert events[-1].get("ready"), events
    said = [e["message"] for e in events if "Labs not copied" in e.get("message", "")]
    assert said == [
        "Labs not copied into ~/labs (labcopy: /nonexistent/release is not a directory); "
        "tell your instructor"
    ], events
    hub.stop_server(STUDENT)

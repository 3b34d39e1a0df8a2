"""kubevirt_spawner.hubconfig.course: the course's hub settings, as plain data."""

import json
import os
import pwd
from pathlib import Path

import pytest
from traitlets.config import Config

from kubevirt_spawner.hubconfig import course

NOTEBOOKS = Path(__file__).resolve().parents[3] / "notebooks"


def test_defaults_follow_nbgraders_group_names():
    s = course.course_settings({})
    assert (s["course_id"], s["student_group"], s["grader_group"]) == (
        "os-lab",
        "nbgrader-os-lab",
        "formgrade-os-lab",
    )
    assert s["graders"] == ["instructor"]
    assert s["exchange"] == "/srv/nbgrader/exchange"
    assert (s["root"], s["account"]) == ("/srv/nbgrader/os-lab", "grader-os-lab")


def test_configure_course_adds_to_existing_config(tmp_path):
    c = Config()
    c.JupyterHub.services = [{"name": "lab-manager", "url": "http://127.0.0.1:1"}]
    c.JupyterHub.load_roles.append(
        {"name": "lab-manager-role"}
    )  # lazy, as manager_service leaves it
    c.Spawner.environment = {"A": "1"}
    env = {
        "KVS_COURSE_ID": "os2027",
        "KVS_COURSE_GRADERS": "ta1,ta2",
        "KVS_NBGRADER_EXCHANGE": str(tmp_path / "exchange"),
        "KVS_COURSE_ROOT": str(tmp_path / "course"),
        # an account that exists (as root, a missing one would be created)
        "KVS_COURSE_ACCOUNT": pwd.getpwuid(os.getuid()).pw_name,
    }
    s = course.configure_course(c, NOTEBOOKS, env)
    # The course root is made from the repository's notebooks (once).
    assert (tmp_path / "course/nbgrader_config.py").is_file()
    assert (tmp_path / "course/source/lab4/lab4.ipynb").is_file()
    assert [sv["name"] for sv in c.JupyterHub.services] == ["lab-manager", "os2027"]
    # what JupyterHub resolves the (lazy) values to, over its empty defaults
    assert c.JupyterHub.load_groups.get_value({}) == {
        "formgrade-os2027": {"users": ["ta1", "ta2"]},
        "nbgrader-os2027": {"users": []},
    }
    _, role = c.JupyterHub.load_roles.get_value([])
    assert "access:services!service=os2027" in role["scopes"]
    assert role["groups"] == ["formgrade-os2027"]
    assert c.Spawner.environment["A"] == "1"
    assert c.Spawner.environment["KVS_COURSE_ID"] == "os2027"
    assert (tmp_path / "exchange").stat().st_mode & 0o7777 == 0o1777
    assert s["exchange"] == str(tmp_path / "exchange")


def test_the_service_runs_as_the_course_account_only_under_a_root_hub():
    s = course.course_settings({"KVS_COURSE_ACCOUNT": "ta-os"})
    (svc,) = course.hub_settings(s, as_root=True)["services"]
    assert svc["user"] == "ta-os" and svc["cwd"] == s["root"]
    (svc,) = course.hub_settings(s, as_root=False)["services"]
    assert "user" not in svc


def test_the_service_releases_the_labs_then_serves_with_grader_tools_and_ends_with_the_hub():
    s = course.course_settings({"KVS_COURSE_ROOT": "/srv/c"})
    (svc,) = course.hub_settings(s, as_root=True, hub_pid=4242)["services"]
    cmd = svc["command"]
    assert cmd[1:4] == ["-m", "kubevirt_spawner.hubchild", "--parent-pid=4242"]
    serve = cmd[cmd.index("kubevirt_spawner.course") :]
    assert serve[:4] == ["kubevirt_spawner.course", "serve", "--root=/srv/c", "--grading-vm"]
    assert serve[4:7] == ["--", cmd[0], "-m"] and "jupyterhub.singleuser" in serve
    page = json.loads(
        Path(svc["environment"]["JUPYTER_CONFIG_PATH"], "labconfig", "page_config.json").read_text()
    )["disabledExtensions"]
    assert page["@jupyterlab/apputils-extension:announcements"] is True
    assert page["@jupyter/nbgrader:assignment-list"] is True
    assert "@jupyter/nbgrader:formgrader" not in page


@pytest.mark.parametrize(("value", "auto"), [("1", True), ("0", False), ("no", False)])
def test_auto_release_and_grading_vm_can_be_turned_off(value, auto):
    s = course.course_settings({"KVS_COURSE_AUTO_RELEASE": value, "KVS_COURSE_GRADING_VM": value})
    (svc,) = course.hub_settings(s)["services"]
    assert ("--no-auto-release" not in svc["command"]) is auto
    assert ("--grading-vm" in svc["command"]) is auto


def test_students_get_the_assignment_list_only():
    from kubevirt_spawner.jupyter_config import config_dir

    d = Path(config_dir("student"))
    page = json.loads((d / "labconfig/page_config.json").read_text())["disabledExtensions"]
    assert {k for k, v in page.items() if v} == {
        "@jupyter/nbgrader:create-assignment",
        "@jupyter/nbgrader:formgrader",
        "@jupyter/nbgrader:course-list",
        "@jupyterlab/apputils-extension:announcements",
    }
    server = json.loads((d / "jupyter_server_config.json").read_text())
    assert server["ServerApp"]["jpserver_extensions"] == {
        "nbgrader.server_extensions.formgrader": False,
        "nbgrader.server_extensions.course_list": False,
    }
    with pytest.raises(ValueError, match="no Jupyter config for 'admin'"):
        config_dir("admin")


def test_student_config_reads_the_environment(monkeypatch):
    from kubevirt_spawner.jupyter_config import config_dir

    monkeypatch.setenv("KVS_COURSE_ID", "os2027")
    monkeypatch.setenv("KVS_NBGRADER_EXCHANGE", "/x/exchange")
    c = Config()
    code = Path(config_dir("student"), "nbgrader_config.py").read_text()
    exec(code, {"get_config": lambda: c})
    assert c.CourseDirectory.course_id == "os2027"
    assert c.Exchange.root == "/x/exchange"


def test_student_config_is_one_every_account_can_read(tmp_path, monkeypatch):
    """Imported from a clone other accounts cannot enter (tmp_path lies under
    pytest's 0700 directory), the answer is the environment's installed copy;
    imported from a readable place, that place."""
    import shutil
    import sysconfig
    import tempfile

    from kubevirt_spawner.jupyter_config import config_dir, readable_by_all

    real = Path(config_dir("student")).parent
    private = tmp_path / "clone" / "kubevirt_spawner" / "jupyter_config"
    shutil.copytree(real, private)
    assert not readable_by_all(private / "student")
    public = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        public.chmod(0o755)
        purelib = public / "site-packages"
        shutil.copytree(real, purelib / "kubevirt_spawner" / "jupyter_config")
        monkeypatch.setattr(sysconfig, "get_paths", lambda: {"purelib": str(purelib)})
        installed = purelib / "kubevirt_spawner" / "jupyter_config" / "student"
        assert config_dir("student", package_dir=private) == str(installed)
        assert config_dir("student", package_dir=installed.parent) == str(installed)
        # No readable copy anywhere: the package's own (the spawner cannot do better).
        shutil.rmtree(purelib)
        assert config_dir("student", package_dir=private) == str(private / "student")
    finally:
        shutil.rmtree(public)

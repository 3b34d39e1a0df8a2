"""hub-config/nbgrader_course.py: the course's hub settings, as plain data."""

import importlib.util
import os
import pwd
from pathlib import Path

from traitlets.config import Config

HERE = Path(__file__).resolve().parents[2] / "hub-config"
spec = importlib.util.spec_from_file_location("nbgrader_course", HERE / "nbgrader_course.py")
course = importlib.util.module_from_spec(spec)
spec.loader.exec_module(course)


def test_defaults_follow_nbgraders_group_names():
    s = course.course_settings({})
    assert (s["course_id"], s["student_group"], s["grader_group"]) == (
        "os-lab", "nbgrader-os-lab", "formgrade-os-lab")  # fmt: skip
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
    env = {"KVS_COURSE_ID": "os2027", "KVS_COURSE_GRADERS": "ta1,ta2",
           "KVS_NBGRADER_EXCHANGE": str(tmp_path / "exchange"),
           "KVS_COURSE_ROOT": str(tmp_path / "course"),
           # an account that exists (as root, a missing one would be created)
           "KVS_COURSE_ACCOUNT": pwd.getpwuid(os.getuid()).pw_name}  # fmt: skip
    s = course.configure_course(c, env)
    # The course root is made from the repository's notebooks (once).
    assert (tmp_path / "course/nbgrader_config.py").is_file()
    assert (tmp_path / "course/source/lab4/lab4.ipynb").is_file()
    assert [sv["name"] for sv in c.JupyterHub.services] == ["lab-manager", "os2027"]
    # what JupyterHub resolves the (lazy) values to, over its empty defaults
    assert c.JupyterHub.load_groups.get_value({}) == {
        "formgrade-os2027": {"users": ["ta1", "ta2"]}, "nbgrader-os2027": {"users": []}}  # fmt: skip
    _, role = c.JupyterHub.load_roles.get_value([])
    assert "access:services!service=os2027" in role["scopes"]
    assert role["groups"] == ["formgrade-os2027"]
    assert c.Spawner.environment["A"] == "1"
    assert c.Spawner.environment["KVS_COURSE_ID"] == "os2027"
    assert Path(c.Spawner.environment["JUPYTER_CONFIG_PATH"], "nbgrader_config.py").is_file()
    assert (tmp_path / "exchange").stat().st_mode & 0o7777 == 0o1777
    assert s["exchange"] == str(tmp_path / "exchange")


def test_the_service_runs_as_the_course_account_only_under_a_root_hub():
    s = course.course_settings({"KVS_COURSE_ACCOUNT": "ta-os"})
    (svc,) = course.hub_settings(s, as_root=True)["services"]
    assert svc["user"] == "ta-os" and svc["cwd"] == s["root"]
    (svc,) = course.hub_settings(s, as_root=False)["services"]
    assert "user" not in svc


def test_student_config_reads_the_environment(monkeypatch):
    monkeypatch.setenv("KVS_COURSE_ID", "os2027")
    monkeypatch.setenv("KVS_NBGRADER_EXCHANGE", "/x/exchange")
    c = Config()
    code = (HERE / "nbgrader-student" / "nbgrader_config.py").read_text()
    exec(code, {"get_config": lambda: c})
    assert c.CourseDirectory.course_id == "os2027"
    assert c.Exchange.root == "/x/exchange"

"""The lab texts (notebooks/labs/*.lab), their nbgrader notebooks, and the check helpers."""

import http.server
import importlib.util
import json
import threading
import time
from pathlib import Path

import pytest

from kubevirt_spawner import checks
from kubevirt_spawner.manager.handlers import parse_result

NOTEBOOKS = Path(__file__).resolve().parents[3] / "notebooks"
spec = importlib.util.spec_from_file_location("build_sources", NOTEBOOKS / "build_sources.py")
build_sources = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_sources)


def test_committed_notebooks_match_the_lab_texts():
    assert build_sources.build(check=True) == [], "run: python notebooks/build_sources.py"


def test_every_lab_has_goals_time_free_point_and_checks():
    for lab in sorted(NOTEBOOKS.glob("labs/*.lab")):
        cells = build_sources.parse_lab(lab.read_text(), lab.name)
        text = "\n".join(c["source"] for c in cells)
        assert "**Goals.**" in text and "**Estimated time:**" in text, lab.name
        tests = [c for c in cells if c["kind"] == "test"]
        assert any(c["source"].lower().startswith("# free point") for c in tests), lab.name
        assert len(tests) >= 3, lab.name
        assert all(f'check("{lab.stem}.' in c["source"] for c in tests), lab.name
        points = sum(int(c["attrs"]["points"]) for c in tests)
        assert f"**Points:** {points}" in text, (
            f"{lab.name}: header says other points than {points}"
        )


def test_notebook_metadata_is_nbgrader_schema_3():
    nb = build_sources.to_notebook(
        build_sources.parse_lab(
            "%%% markdown locked=1\n# T\n%%% solution id=s\nx = 1\n%%% test id=t points=2\nassert x\n"
        ),
        "labx",
    )
    md, sol, test = nb["cells"]
    assert md["metadata"]["nbgrader"] == {
        "grade": False,
        "grade_id": "labx-00",
        "locked": True,
        "schema_version": 3,
        "solution": False,
        "task": False,
    }
    assert sol["metadata"]["nbgrader"] == {
        "grade": False,
        "grade_id": "s",
        "locked": False,
        "schema_version": 3,
        "solution": True,
        "task": False,
    }
    assert test["metadata"]["nbgrader"] == {
        "grade": True,
        "grade_id": "t",
        "locked": True,
        "points": 2,
        "schema_version": 3,
        "solution": False,
        "task": False,
    }
    assert [c["id"] for c in nb["cells"]] == ["labx-00", "s", "t"]


@pytest.mark.parametrize(
    "text, error",
    [
        pytest.param("x\n%%% code\n", "before the first cell", id="text-first"),
        pytest.param("%%% cde\n", "unknown cell kind", id="bad-kind"),
        pytest.param("%%% solution\nx\n", "needs id=", id="solution-without-id"),
        pytest.param("%%% test id=t\nx\n", "needs points=", id="test-without-points"),
        pytest.param("%%% test id=t points=1\n%%% solution id=t\n", "duplicate", id="dup-id"),
        pytest.param("%%%code\n", "bad cell header", id="no-space"),
    ],
)
def test_bad_lab_text(text, error):
    with pytest.raises(build_sources.LabSyntaxError, match=error):
        build_sources.parse_lab(text)


def test_build_sources_cli(capsys):
    assert build_sources.main(["--check"]) == 0
    with pytest.raises(SystemExit):
        build_sources.main(["--help"])
    with pytest.raises(SystemExit):
        build_sources.main(["--bogus"])


def test_check_turns_errors_into_one_sentence(capsys):
    with pytest.raises(checks.CheckFailed) as e:
        with checks.check("x.y"):
            checks.expect_equal("4 the\n", "4 the\n3 cat\n", "topwords.sh words.txt")
    assert str(e.value) == "topwords.sh words.txt: expected 4 the 3 cat, but saw 4 the."
    assert e.value.__suppress_context__
    with pytest.raises(checks.CheckFailed, match=r"^`release` is not defined yet: do the TODO"):
        with checks.check("x.y"):
            release  # noqa: B018, F821
    with pytest.raises(checks.CheckFailed, match="Cannot reach"):
        with checks.check("x.y"):
            raise checks.LabError("Cannot reach your VM over ssh.")
    with pytest.raises(checks.CheckFailed, match="^Not done yet: .*NotImplementedError"):
        with checks.check("x.y"):
            raise NotImplementedError()
    with pytest.raises(checks.CheckFailed, match="expected 3, but saw nothing.$"):
        checks.expect_equal("", "3", "out")
    with checks.check("x.z"):
        checks.expect_in("a", "abc", "abc")
    assert "x.z passed" in capsys.readouterr().out


def test_ipython_shows_only_the_message():
    e = checks.CheckFailed("expected 3, but saw 0.")
    assert e._render_traceback_() == ["\x1b[0;31mCheckFailed\x1b[0m: expected 3, but saw 0."]


def test_short_and_no_vm(monkeypatch):
    assert checks.short("a\n  b\n") == "a b"
    assert len(checks.short("x" * 500)) == 160
    monkeypatch.delenv("LAB_VM_HOST", raising=False)
    with pytest.raises(checks.CheckFailed, match="has no VM"):
        checks.vm()


def test_report_hook_is_silent_without_lab_manager(monkeypatch):
    monkeypatch.delenv("LAB_MANAGER_URL", raising=False)
    called = []
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: called.append(a))
    checks.report("lab1.x", True)
    assert called == []


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Records requests; answers as the lab manager's ProgressHandler would
    (validating the body with the manager's own parser), or never (hang)."""

    seen: list = []
    hang = False

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Recorder.seen.append((self.path, self.headers["Authorization"], body))
        if _Recorder.hang:
            time.sleep(6)
            return
        lab, check, passed, _, _ = parse_result(body, time.time())
        reply = json.dumps({"user": "alice", "lab": lab, "check": check, "passed": passed})
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(reply.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def manager_stand_in(monkeypatch):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    _Recorder.seen, _Recorder.hang = [], False
    monkeypatch.setenv(
        "LAB_MANAGER_URL", f"http://127.0.0.1:{srv.server_port}/services/lab-manager/"
    )
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "server-token")
    monkeypatch.setenv("JUPYTERHUB_USER", "alice")
    yield _Recorder
    srv.shutdown()
    srv.server_close()


def test_report_posts_to_the_managers_progress_endpoint_with_the_server_token(
    manager_stand_in, capfd
):
    checks.report("lab1.wordcount", False, "expected 3")
    ((path, auth, body),) = manager_stand_in.seen
    assert path == "/services/lab-manager/api/progress"
    assert auth == "token server-token"
    assert (body["lab"], body["check"], body["passed"], body["message"]) == (
        "lab1",
        "wordcount",
        False,
        "expected 3",
    )
    assert capfd.readouterr().err == ""


def test_report_never_raises_and_logs_one_line(manager_stand_in, capfd, monkeypatch):
    manager_stand_in.hang = True
    checks.report("lab1.wordcount", True)
    err = capfd.readouterr().err
    assert err.splitlines() == [
        "kubevirt_spawner.checks: result of lab1.wordcount not reported: "
        "no answer from the lab manager in 2 s"
    ]
    monkeypatch.setenv("LAB_MANAGER_URL", "http://127.0.0.1:9/services/lab-manager/")
    checks.report("lab1.wordcount", True)  # nothing listens on port 9
    (line,) = capfd.readouterr().err.splitlines()
    assert "not reported: Cannot reach the lab manager at http://127.0.0.1:9/" in line, line


def test_compile_program_reports_first_error(tmp_path):
    src = tmp_path / "bad.c"
    src.write_text("int main(void) { return x; }\n")
    with pytest.raises(checks.CheckFailed, match=r"bad.c does not compile: .*.x. undeclared"):
        checks.compile_program(src)
    with pytest.raises(checks.CheckFailed, match="does not exist yet"):
        checks.compile_program(tmp_path / "missing.c")

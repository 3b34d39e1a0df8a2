"""The KVS_* environment: wrong values stop with one line naming the
variable (kubevirt_spawner.envsettings, kubevirt_spawner.hubconfig.course)."""

import pytest

from kubevirt_spawner import envsettings
from kubevirt_spawner.envsettings import EnvError
from kubevirt_spawner.hubconfig import course


@pytest.mark.parametrize(
    ("fn", "value", "result"),
    [
        pytest.param(envsettings.port, "8000", 8000, id="port"),
        pytest.param(envsettings.port, "", 1, id="port-default"),
        pytest.param(envsettings.flag, "No", False, id="flag-no"),
        pytest.param(envsettings.flag, "true", True, id="flag-true"),
        pytest.param(envsettings.absolute_path, "/srv/x", "/srv/x", id="path"),
        pytest.param(envsettings.integer, "600", 600, id="integer"),
        pytest.param(envsettings.integer, "", 7, id="integer-default"),
        pytest.param(envsettings.choice, "plugin", "plugin", id="choice"),
    ],
)
def test_good_values(fn, value, result):
    defaults = {
        envsettings.port: (1, {}),
        envsettings.flag: (None, {}),
        envsettings.absolute_path: ("/d", {}),
        envsettings.integer: (7, {"minimum": 1}),
        envsettings.choice: ("sidecar", {"choices": ("sidecar", "plugin")}),
    }
    default, extra = defaults[fn]
    assert fn("KVS_X", default, environ={"KVS_X": value}, **extra) == result


@pytest.mark.parametrize(
    ("fn", "value", "message"),
    [
        pytest.param(
            envsettings.port,
            "eighty",
            "KVS_X must be a TCP port number (1-65535), not 'eighty'",
            id="port-word",
        ),
        pytest.param(envsettings.port, "70000", "not '70000'", id="port-too-big"),
        pytest.param(envsettings.port, "-1", "not '-1'", id="port-negative"),
        pytest.param(
            envsettings.flag,
            "maybe",
            "KVS_X must be 1 or 0 (yes/no, true/false), not 'maybe'",
            id="flag",
        ),
        pytest.param(
            envsettings.absolute_path,
            "srv/x",
            "KVS_X must be an absolute path, not 'srv/x'",
            id="relative-path",
        ),
        pytest.param(
            envsettings.integer,
            "ten",
            "KVS_X must be a whole number (30 or more), not 'ten'",
            id="integer-word",
        ),
        pytest.param(envsettings.integer, "5", "not '5'", id="integer-too-small"),
        pytest.param(
            envsettings.choice,
            "gdb",
            "KVS_X must be one of sidecar, plugin, not 'gdb'",
            id="choice",
        ),
    ],
)
def test_bad_values_are_one_line(fn, value, message):
    extra = {
        envsettings.integer: {"minimum": 30},
        envsettings.choice: {"choices": ("sidecar", "plugin")},
    }.get(fn, {})
    with pytest.raises(EnvError) as e:
        fn("KVS_X", None, environ={"KVS_X": value}, **extra)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param(
            {"KVS_COURSE_SERVICE_PORT": "x"},
            "KVS_COURSE_SERVICE_PORT must be a TCP port",
            id="port",
        ),
        pytest.param(
            {"KVS_COURSE_ID": "OS Lab!"}, "KVS_COURSE_ID must be a course id", id="course-id"
        ),
        pytest.param(
            {"KVS_COURSE_ROOT": "course"}, "KVS_COURSE_ROOT must be an absolute path", id="root"
        ),
        pytest.param(
            {"KVS_COURSE_AUTO_RELEASE": "sometimes"},
            "KVS_COURSE_AUTO_RELEASE must be 1 or 0",
            id="flag",
        ),
        pytest.param(
            {"KVS_COURSE_ACCOUNT": "Grader OS"},
            "KVS_COURSE_ACCOUNT must be a system account",
            id="account",
        ),
    ],
)
def test_course_settings_refuse_bad_environment(env, message):
    with pytest.raises(EnvError, match=message):
        course.course_settings(env)

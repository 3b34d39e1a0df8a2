import re

import pytest

from kubevirt_spawner.localvm import runtime_dir_name
from kubevirt_spawner.profiles import ProfileError, check_profiles, choose_profile

PROFILES = [
    {"display_name": "Kernel labs", "slug": "kernel"},
    {"display_name": "Shell labs (no VM)", "default": True, "spawner_override": {"with_vm": False}},
]


def test_default_profile_chosen_without_options():
    assert choose_profile(PROFILES, {})["display_name"] == "Shell labs (no VM)"


def test_slug_derived_from_display_name():
    assert choose_profile(PROFILES, {"profile": "shell-labs-no-vm"}) is PROFILES[1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            {"profile": "gpu"},
            "Unknown profile 'gpu'; choose one of: kernel, shell-labs-no-vm",
            id="unknown",
        ),
        pytest.param({"profile": ["kernel"]}, "must be a name", id="list"),
    ],
)
def test_bad_choice(options, message):
    with pytest.raises(ProfileError, match=re.escape(message)):
        choose_profile(PROFILES, options)


def test_no_profiles_configured():
    assert choose_profile([], {}) is None
    with pytest.raises(ProfileError, match="offers no profiles"):
        choose_profile([], {"profile": "kernel"})


@pytest.mark.parametrize(
    ("profiles", "message"),
    [
        pytest.param([{"slug": "x"}], "needs a display_name", id="no-name"),
        pytest.param([{"display_name": "A", "slug": "Bad Slug"}], "not lower-case", id="slug"),
        pytest.param(
            [{"display_name": "A"}, {"display_name": "a"}], "two profiles with slug 'a'", id="dup"
        ),
        pytest.param(
            [{"display_name": "A", "default": 1}, {"display_name": "B", "default": 1}],
            "more than one",
            id="defaults",
        ),
        pytest.param(
            [{"display_name": "A", "spawner_override": []}], "must be a dict", id="override"
        ),
    ],
)
def test_malformed_profile_list(profiles, message):
    with pytest.raises(ValueError, match=message):
        check_profiles(profiles, "spawner_override")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("alice", id="plain"),
        pytest.param("Alice", id="capitals"),
        pytest.param("zoë.müller", id="unicode-dots"),
        pytest.param("a" * 70, id="long"),
        pytest.param("..", id="dotdot"),
        pytest.param("a/b", id="slash"),
    ],
)
def test_runtime_dir_name_is_safe(name):
    d = runtime_dir_name(name)
    assert re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,31}", d) and d not in (".", "..")


def test_runtime_dir_names_are_unique():
    names = ["Alice", "alice", "ALICE", "a" * 70, "a" * 71, "zoë", "zoe"]
    assert len({runtime_dir_name(n) for n in names}) == len(names)

import re

import pytest

from kubevirt_spawner.local.spawner import runtime_dir_name
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
        pytest.param("~=x", id="the-separators-themselves"),
    ],
)
def test_runtime_dir_name_is_safe(name):
    for d in (runtime_dir_name(name), runtime_dir_name("u", name)):
        assert re.fullmatch(r"[a-z0-9][a-z0-9_=~-]{0,66}", d), d
        assert d not in (".", "..") and "/" not in d and len(d) <= 67


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # the collisions the old naming had (issue 15), and their neighbours
        pytest.param(("Alice Smith", ""), ("alice-smith-8ae10dfc9a", ""), id="hashed-vs-plain"),
        pytest.param(("bob.x", ""), ("bob", "x"), id="user-with-dot-vs-named-server"),
        pytest.param(("bob", "x.y"), ("bob.x", "y"), id="dot-in-server-vs-user"),
        pytest.param(("alice", ""), ("Alice", ""), id="case"),
        pytest.param(("a" * 70, ""), ("a" * 71, ""), id="long-prefixes-equal"),
        pytest.param(("zoë", ""), ("zoe", ""), id="unicode"),
        pytest.param(("x~y", ""), ("x", "y"), id="separator-in-user"),
    ],
)
def test_runtime_dir_names_are_injective(a, b):
    assert runtime_dir_name(*a) != runtime_dir_name(*b)


def test_runtime_dir_name_of_a_hashed_name_is_stable_and_readable():
    d = runtime_dir_name("Alice Smith", "Lab 2")
    assert d == runtime_dir_name("Alice Smith", "Lab 2")
    assert d.startswith("alice-smith=") and "~lab-2=" in d
    with pytest.raises(ValueError, match="needs a user name"):
        runtime_dir_name("")

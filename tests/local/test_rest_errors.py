"""A spawn refused for the request's own sake answers the REST caller with a
4xx and the reason, not a bare 500, and creates nothing (a hub that waits
for fast failures, as JupyterHub does by default: slow_spawn_timeout 10 s)."""

import pwd
from pathlib import Path

import pytest
from harness.hubctl import Hub

pytestmark = pytest.mark.local

CONFIG = """
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 10}
c.LocalVMSpawner.with_vm = False
c.LocalVMSpawner.profile_list = [
    {"display_name": "Labs", "slug": "labs", "default": True},
    {"display_name": "Other", "slug": "other"},
]
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    h = Hub(tmp_path_factory.mktemp("rest-errors"), extra_config=CONFIG).start()
    yield h
    h.stop()


@pytest.mark.parametrize(
    ("user", "options", "status", "message"),
    [
        pytest.param(
            "kvs.bad+name",
            {},
            400,
            "Cannot create a system account for 'kvs.bad+name': account names must be",
            id="not-an-account-name",
        ),
        pytest.param(
            "kvsr-ok", {"profile": "nosuch"}, 400, "Unknown profile 'nosuch'", id="unknown-profile"
        ),
        pytest.param(
            "kvsr-ok",
            {"profile": ["labs"]},
            400,
            "profile must be a name",
            id="profile-not-a-string",
        ),
    ],
)
def test_refused_spawns_are_4xx_with_the_reason(hub, user, options, status, message):
    hub.create_user(user)
    r = hub.api("POST", f"/users/{user}/server", json=options)
    assert r.status_code == status, r.text
    assert message in r.json()["message"], r.json()
    if user == "kvs.bad+name":
        with pytest.raises(KeyError):
            pwd.getpwnam(user)
    assert not Path(hub.runtime_root, user).exists()
    assert hub.server_state(user) is None

"""Fixtures for tests that run real QEMU VMs, gdb and JupyterHub (TCG here)."""

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest
from hubctl import Hub

from kubevirt_spawner.guest import Guest, default_guest_dir

# Ports used by profiles in the test hub's config.
CLASH_PORT = 47922


@pytest.fixture(scope="session")
def guest() -> Guest:
    # `make test` builds the guest first; a missing one is a set-up error,
    # reported with the command that fixes it rather than skipped.
    return Guest.find(os.environ.get("KVS_GUEST_DIR", default_guest_dir()))


PROFILES = f"""
c.LocalVMSpawner.profile_list = [
    {{"display_name": "Kernel labs", "slug": "kernel", "default": True}},
    {{"display_name": "No VM", "slug": "novm", "spawner_override": {{"with_vm": False}}}},
    {{"display_name": "QEMU missing", "slug": "noqemu",
      "spawner_override": {{"qemu_binary": "/nonexistent/qemu-system-x86_64"}}}},
    {{"display_name": "Guest not built", "slug": "noguest",
      "spawner_override": {{"guest_dir": "/nonexistent/guest"}}}},
    {{"display_name": "Kernel panics", "slug": "panic",
      "spawner_override": {{"vm_kernel_args": ["rdinit=/bin/false"]}}}},
    {{"display_name": "Kernel never ready", "slug": "hang",
      "spawner_override": {{"vm_kernel_args": ["rdinit=/bin/sh"], "vm_boot_timeout": 15}}}},
    {{"display_name": "Port clash", "slug": "clash",
      "spawner_override": {{"ssh_port": {CLASH_PORT}}}}},
]
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory, guest):
    h = Hub(tmp_path_factory.mktemp("hub"), extra_config=PROFILES)
    h.start()
    yield h
    for user in h.api("GET", "/users").json():
        if user.get("servers"):
            try:
                h.stop_server(user["name"])
            except Exception as e:  # keep tearing down the rest
                print(f"teardown: stopping {user['name']} failed: {e}")
    h.stop()
    shutil.rmtree(h.runtime_root, ignore_errors=True)


def user_processes(name: str) -> list[str]:
    """ps lines of every live process of system account ``name`` (zombies,
    which have exited and wait only for their parent to collect the status,
    do not count)."""
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return []
    out = subprocess.run(
        ["ps", "-ww", "-o", "stat=,pid=,args=", "-u", str(uid)], capture_output=True, text=True
    ).stdout
    return [line for line in out.splitlines() if line.strip() and not line.startswith("Z")]


def qemu_for(runtime_root: str) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "qemu-system" in line and runtime_root in line]


def assert_nothing_left(hub: Hub, name: str) -> None:
    assert user_processes(name) == [], f"processes of {name} left behind"
    assert not Path(hub.runtime_root, name).exists(), f"runtime dir of {name} left behind"
    assert qemu_for(str(Path(hub.runtime_root, name))) == []

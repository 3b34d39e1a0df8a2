"""Fixtures for tests that run real QEMU VMs, gdb and JupyterHub (TCG here)."""

import os

import pytest
from harness.hubctl import running_hub
from harness.localhelpers import CLASH_PORT

from kubevirt_spawner.local.guest import Guest, default_guest_dir
from kubevirt_spawner.local.standalone import boot_lab_vm


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
    with running_hub(tmp_path_factory.mktemp("hub"), PROFILES) as h:
        yield h


@pytest.fixture(scope="module")
def lab_vm(guest, tmp_path_factory):
    """One lab VM (no hub: kubevirt_spawner.local.standalone) for a whole test module."""
    vm = boot_lab_vm(guest.root, rundir=tmp_path_factory.mktemp("vm"))
    yield vm
    vm.stop()

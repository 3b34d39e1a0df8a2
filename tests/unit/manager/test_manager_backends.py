"""Every backend the lab manager registers fulfils the one protocol
(kubevirt_spawner.manager.backends.ManagerBackend), and owns exactly the saved
state its spawner writes (contract.py's records)."""

from __future__ import annotations

import inspect

import pytest

from kubevirt_spawner.contract import KubeVirtVMState, LocalVMState, backend_of_state
from kubevirt_spawner.manager.backends import ManagerBackend, registered
from kubevirt_spawner.manager.backends.kubevirt import Cluster
from kubevirt_spawner.manager.core import Settings

PROTOCOL = {
    name: inspect.signature(fn)
    for name, fn in vars(ManagerBackend).items()
    if callable(fn) and not name.startswith("_")
}


def all_backends(tmp_path):
    return registered(Settings(runtime_root=str(tmp_path), cluster=Cluster(namespace="lab")))


def test_the_protocol_has_the_five_duties_and_more():
    assert {"usage", "inspect", "reset", "vm_state", "reap"} <= set(PROTOCOL)


def test_each_registered_backend_fulfils_the_protocol(tmp_path):
    backends = all_backends(tmp_path)
    assert [b.name for b in backends] == ["local", "kubevirt"]
    for b in backends:
        assert isinstance(b, ManagerBackend), b
        for name, sig in PROTOCOL.items():
            impl = getattr(type(b), name)
            assert inspect.iscoroutinefunction(impl) == inspect.iscoroutinefunction(
                getattr(ManagerBackend, name)
            ), f"{b.name}.{name}: async where the protocol is not, or the other way"
            got = list(inspect.signature(impl).parameters)
            assert got == list(sig.parameters), (
                f"{b.name}.{name}{got} != protocol {list(sig.parameters)}"
            )


@pytest.mark.parametrize(
    "state, owner",
    [
        (LocalVMState("/run/kvs/alice", pid=42, start_time=7, ssh_port=2222).to_state(), "local"),
        (KubeVirtVMState("labvm-alice", started=True).to_state(), "kubevirt"),
        ({}, None),
        ({"pid": 12}, None),  # a server without a VM (the no-VM profile)
    ],
)
def test_each_saved_state_has_exactly_its_owner(tmp_path, state, owner):
    owners = [b.name for b in all_backends(tmp_path) if b.owns(state)]
    assert owners == ([owner] if owner else [])
    assert backend_of_state(state) == (owner or "none")


def test_saved_state_round_trips():
    local = LocalVMState("/run/kvs/a", pid=1, start_time=2, ssh_port=3)
    assert LocalVMState.from_state(local.to_state()) == local
    kv = KubeVirtVMState("labvm-a", started=True)
    assert KubeVirtVMState.from_state(kv.to_state()) == kv

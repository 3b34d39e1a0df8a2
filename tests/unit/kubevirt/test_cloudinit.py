"""cloud-init NoCloud documents (kubevirt_spawner.kubevirt.cloudinit)."""

import copy

import pytest
import yaml

from kubevirt_spawner.kubevirt.cloudinit import CloudInit, make_cloud_init
from kubevirt_spawner.sshkeys import KeyPair

HOST = KeyPair(
    private_openssh="-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\nBBBB\n-----END OPENSSH PRIVATE KEY-----\n",
    public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHOST",
    dropbear_private=b"",
)
USER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUSER labvm-alice@jupyterhub"


def test_whole_documents():
    ci = make_cloud_init(authorized_key=USER_KEY, host_key=HOST, hostname="labvm-alice")
    assert isinstance(ci, CloudInit)
    assert ci.user_data.startswith("#cloud-config\n")
    assert yaml.safe_load(ci.user_data) == {
        "hostname": "labvm-alice",
        "preserve_hostname": False,
        "disable_root": False,
        "write_files": [
            {
                "path": "/etc/ssh/sshd_config.d/50-kubevirt-spawner.conf",
                "permissions": "0644",
                "content": "PasswordAuthentication no\nKbdInteractiveAuthentication no\n",
            }
        ],
        "users": [{"name": "root", "lock_passwd": False, "ssh_authorized_keys": [USER_KEY]}],
        "ssh_deletekeys": True,
        "ssh_genkeytypes": ["ed25519"],
        "ssh_keys": {
            "ed25519_private": HOST.private_openssh,
            "ed25519_public": HOST.public_key,
        },
    }
    assert yaml.safe_load(ci.network_data) == {
        "version": 2,
        "ethernets": {"nic0": {"match": {"name": "e*"}, "dhcp4": True, "dhcp6": False}},
    }
    assert yaml.safe_load(ci.meta_data) == {
        "instance-id": "labvm-alice",
        "local-hostname": "labvm-alice",
    }


def test_private_key_survives_as_a_block_literal():
    ci = make_cloud_init(authorized_key=USER_KEY, host_key=HOST, hostname="vm")
    # A PEM key must reach sshd byte for byte, newlines included.
    assert yaml.safe_load(ci.user_data)["ssh_keys"]["ed25519_private"] == HOST.private_openssh
    assert "ed25519_private: |" in ci.user_data


def test_marker_instance_id_and_extra():
    extra = {"packages": ["gdb"], "hostname": "override"}
    kept = copy.deepcopy(extra)
    ci = make_cloud_init(
        authorized_key=USER_KEY,
        host_key=HOST,
        hostname="vm",
        instance_id="i-1",
        ready_marker="labvm: ssh ready",
        extra_user_data=extra,
    )
    doc = yaml.safe_load(ci.user_data)
    assert doc["final_message"] == "labvm: ssh ready"
    assert doc["packages"] == ["gdb"] and doc["hostname"] == "override"
    assert yaml.safe_load(ci.meta_data)["instance-id"] == "i-1"
    assert extra == kept


def test_real_keys_from_sshkeys():
    from kubevirt_spawner.sshkeys import make_ssh_keypair

    host, user = make_ssh_keypair(), make_ssh_keypair(comment="u@hub")
    ci = make_cloud_init(authorized_key=user.public_line, host_key=host, hostname="vm")
    doc = yaml.safe_load(ci.user_data)
    assert doc["ssh_keys"]["ed25519_public"] == host.public_key
    assert doc["users"][0]["ssh_authorized_keys"] == [user.public_line]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param({"hostname": "Labvm_Alice"}, "RFC 1123", id="bad-hostname"),
        pytest.param({"hostname": "a" * 64}, "RFC 1123", id="long-hostname"),
        pytest.param({"authorized_key": "not a key"}, "ssh public key", id="bad-user-key"),
        pytest.param({"host_key": KeyPair("x", "ssh-rsa AAAA", b"")}, "Ed25519", id="rsa-host-key"),
    ],
)
def test_bad_input(kwargs, match):
    args = {"authorized_key": USER_KEY, "host_key": HOST, "hostname": "vm", **kwargs}
    with pytest.raises(ValueError, match=match):
        make_cloud_init(**args)

import struct

import pytest
from cryptography.hazmat.primitives import serialization as ser

from kubevirt_spawner.sshkeys import known_hosts_line, make_ssh_keypair


def test_keypair_formats_agree():
    kp = make_ssh_keypair("alice@labvm")
    key = ser.load_ssh_private_key(kp.private_openssh.encode(), None)
    pub = key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
    assert kp.public_key == pub and kp.public_line == f"{pub} alice@labvm"
    # dropbear: string "ssh-ed25519", string(seed || public)
    blob = kp.dropbear_private
    assert blob[:15] == struct.pack(">I", 11) + b"ssh-ed25519"
    assert blob[15:19] == struct.pack(">I", 64) and len(blob) == 19 + 64
    seed = key.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
    raw_pub = key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    assert blob[19:] == seed + raw_pub


def test_keys_are_fresh():
    assert make_ssh_keypair().public_key != make_ssh_keypair().public_key


def test_comment_without_whitespace():
    with pytest.raises(ValueError, match="whitespace"):
        make_ssh_keypair("a b")


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("vm.ns.svc", 22, "vm.ns.svc ssh-ed25519 K\n"),
        ("127.0.0.1", 40022, "[127.0.0.1]:40022 ssh-ed25519 K\n"),
    ],
)
def test_known_hosts_line(host, port, expected):
    assert known_hosts_line(host, port, "ssh-ed25519 K") == expected

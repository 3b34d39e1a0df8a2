"""Per-server ssh key pairs, made in-process (no ssh-keygen needed).

One Ed25519 key pair logs the student into their VM; another is the VM's
host key, so the student's ssh can pin it instead of trusting on first use.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass(frozen=True)
class KeyPair:
    private_openssh: str
    """The private key in OpenSSH format (what ``ssh -i`` and sshd read)."""
    public_key: str
    """``ssh-ed25519 AAAA…`` without a comment."""
    dropbear_private: bytes
    """The same private key in dropbear's own format (dropbear cannot read OpenSSH's)."""
    comment: str = ""

    @property
    def public_line(self) -> str:
        """One authorized_keys line: the public key and the comment."""
        return f"{self.public_key} {self.comment}".rstrip()


def _dropbear_ed25519(seed: bytes, public: bytes) -> bytes:
    # dropbear's ed25519 key blob: string "ssh-ed25519", string (seed || public).
    name = b"ssh-ed25519"
    return struct.pack(">I", len(name)) + name + struct.pack(">I", 64) + seed + public


def make_ssh_keypair(comment: str = "") -> KeyPair:
    """Generate a fresh Ed25519 key pair; ``comment`` ends its public line."""
    if any(c.isspace() for c in comment):
        raise ValueError(f"ssh key comment must not contain whitespace: {comment!r}")
    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    seed = key.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
    return KeyPair(
        private_openssh=key.private_bytes(
            ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()
        ).decode(),
        public_key=pub.public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode(),
        dropbear_private=_dropbear_ed25519(
            seed, pub.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
        ),
        comment=comment,
    )


def known_hosts_line(host: str, port: int, public_key: str) -> str:
    """A known_hosts line pinning ``public_key`` for ``host:port``."""
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {public_key}\n"

"""The console lines that give a VM restored from the booted snapshot its identity."""

import base64

from kubevirt_spawner.local.bootsnap import MARK_IDENTITY, MARK_QUIET, identity_line, quiet_line
from kubevirt_spawner.sshkeys import make_ssh_keypair


def test_identity_line_carries_this_servers_keys_seed_and_clock():
    user, host = make_ssh_keypair("alice@labvm"), make_ssh_keypair("labvm-host")
    line = identity_line(user, host, b"\x01" * 64, 1796191829)
    assert line.endswith("\n") and line.count("\n") == 1
    assert f"echo '{user.public_line}' > /root/.ssh/authorized_keys" in line
    assert base64.b64encode(host.dropbear_private).decode() in line
    assert base64.b64encode(b"\x01" * 64).decode() in line and "date -s @1796191829" in line
    # dropbear starts only after the keys are written, and the marker the
    # spawner waits for is not in the typed text (the console echoes it).
    assert line.index("dropbear -r") > line.index("authorized_keys")
    assert MARK_IDENTITY not in line and MARK_QUIET not in quiet_line()
    other = make_ssh_keypair("bob@labvm")
    assert other.public_key not in line

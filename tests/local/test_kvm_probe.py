"""The KVM probe with real QEMU: probed once, then read back by the next
process (a restarted hub), without booting QEMU again."""

import asyncio
import json
import os
import subprocess
import sys

import pytest

from kubevirt_spawner.local import kvmprobe

pytestmark = pytest.mark.local

QEMU = "qemu-system-x86_64"


def test_verdict_is_probed_once_and_kept(guest, tmp_path):
    path = tmp_path / "kvm-verdicts.json"
    usable, why = asyncio.run(kvmprobe.verdict(guest.kernel, QEMU, 5.0, path))
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        # Nothing to probe, nothing kept: the answer costs no boot.
        assert (usable, why) == (False, "/dev/kvm is missing or not accessible")
        assert not path.exists()
        return
    kept = json.loads(path.read_text())
    (key,) = kept
    assert kept[key]["kvm"] is usable and kept[key]["why"] == why
    assert os.uname().release in key and QEMU in key
    code = (
        "import asyncio, sys; from kubevirt_spawner.local import kvmprobe; "
        "print(asyncio.run(kvmprobe.verdict(sys.argv[1], sys.argv[2], 5.0, sys.argv[3])))"
    )
    argv = [sys.executable, "-c", code, str(guest.kernel), QEMU, str(path)]
    again = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == repr((usable, f"{why}; probed before for this kernel and QEMU"))

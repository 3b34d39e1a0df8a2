"""A port grab cannot pose as a student's VM: after the VM stops, another
account starts its own ssh server on the VM's old loopback port, and the
student's `labvm ssh` refuses it (the VM's host key is pinned per server),
instead of handing it a login or a typed password."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from kubevirt_spawner.local.standalone import boot_lab_vm

pytestmark = pytest.mark.local


def labvm(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from kubevirt_spawner.labvm import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def banner(port: int) -> bytes:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            return s.recv(64)
    except OSError:
        return b""


def test_labvm_ssh_refuses_a_server_on_the_vms_old_port(guest, tmp_path):
    vm = boot_lab_vm(guest.root, rundir=tmp_path / "vm")
    env = vm.env.to_environ()
    try:
        ok = labvm(env, "ssh", "true")
        assert ok.returncode == 0, ok.stderr
    finally:
        vm.stop()
    # Another account (nobody) takes the port with its own host key.
    # (outside pytest's 0700 tmp: nobody must read its key)
    grab = Path(tempfile.mkdtemp(prefix="kvs-grab-", dir="/tmp"))
    subprocess.run(
        ["dropbearkey", "-t", "ed25519", "-f", grab / "key"], check=True, capture_output=True
    )
    os.chown(grab / "key", 65534, 65534)
    grab.chmod(0o755)
    impostor = subprocess.Popen(
        [
            "runuser",
            "-u",
            "nobody",
            "--",
            "dropbear",
            "-F",
            "-E",
            "-s",
            "-r",
            str(grab / "key"),
            "-p",
            f"127.0.0.1:{vm.env.ssh_port}",
        ],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not banner(vm.env.ssh_port).startswith(b"SSH-2.0-dropbear"):
            if time.monotonic() > deadline or impostor.poll() is not None:
                impostor.kill()
                pytest.fail(f"the impostor's ssh server did not come up: {impostor.stderr.read()}")
            time.sleep(0.3)
        r = labvm(env, "ssh", "true")
        assert r.returncode != 0
        assert (
            "Host key verification failed" in r.stderr or "IDENTIFICATION HAS CHANGED" in r.stderr
        ), r.stderr
    finally:
        impostor.kill()
        impostor.wait()
        shutil.rmtree(grab, ignore_errors=True)

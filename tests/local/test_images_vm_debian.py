"""The Debian VM containerDisk built by images/build.sh, booted the way
KubeVirt boots it: QEMU (TCG) from the qcow2 under /disk/ through its own
BIOS bootloader, with a NoCloud seed disk made from the Secret that
KubeVirtSpawner creates (its per-user ssh key and pinned host key). Then
ssh in, `uname -r`, load a module, and break in the kernel with gdb."""

import asyncio
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from harness.hubctl import free_port
from harness.images_helpers import (
    Buildah,
    index,
    kubevirt_seed_files,
    make_seed_iso,
    write_hello_module,
)
from harness.kubefakes import HUB, User, orm_spawner

from kubevirt_spawner.lab import LabEnv, LabVM
from kubevirt_spawner.local.qemu import MARK_SSH_READY, gdb_remote_for_socket
from kubevirt_spawner.sshkeys import known_hosts_line, make_ssh_keypair

pytestmark = pytest.mark.local

BOOT_TIMEOUT = 600  # systemd + cloud-init under TCG on a loaded 2-core machine


def spawner_objects(tmp: Path) -> tuple[dict, object]:
    """VirtualMachine + Secret exactly as KubeVirtSpawner makes them."""
    from kubernetes_asyncio.config import kube_config
    from kubespawner.clients import load_config

    from kubevirt_spawner import KubeVirtSpawner

    cfg = tmp / "kubeconfig.yaml"
    cfg.write_text(
        "apiVersion: v1\nkind: Config\n"
        'clusters: [{name: c, cluster: {server: "https://127.0.0.1:9"}}]\n'
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: t, context: {cluster: c, user: u, namespace: lab}}]\n"
        "current-context: t\n"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KUBECONFIG", str(cfg))
        mp.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(cfg))
        mp.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        load_config.cache_clear()
        images = {
            "debian-12": {
                "containerdisk": {"x86_64": "localhost/vm-debian"},
                "vmlinux": "/v",
                "kdir": "/k",
            }
        }

        async def build():
            # KubeSpawner makes its API clients for the running loop.
            s = KubeVirtSpawner(
                user=User("student"),
                hub=HUB,
                orm_spawner=orm_spawner(""),
                namespace="lab",
                vm_images=images,
            )
            await s.load_user_options()
            return s.vm_manifests(client_key, host_key)

        client_key, host_key = make_ssh_keypair("student@jupyterhub"), make_ssh_keypair()
        objs = asyncio.run(build())
        load_config.cache_clear()
    return objs, host_key


@pytest.fixture(scope="module")
def built():
    return index()


@pytest.fixture(scope="module")
def disk(built, tmp_path_factory) -> Path:
    bh = Buildah(built)
    dest = tmp_path_factory.mktemp("vmdisk") / "disk.qcow2"
    with bh.container(built["vm-debian"]) as c, c.mounted() as root:
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        assert files == ["disk", "disk/disk.qcow2"], files
        st = (root / "disk" / "disk.qcow2").stat()
        assert (st.st_uid, st.st_gid) == (107, 107)
        shutil.copy(root / "disk" / "disk.qcow2", dest)
    return dest


def test_containerdisk_is_a_qcow2_under_disk(disk):
    info = subprocess.run(["qemu-img", "info", str(disk)], capture_output=True, text=True)
    assert "file format: qcow2" in info.stdout, info.stdout


@pytest.fixture(scope="module")
def vm(built, disk, tmp_path_factory):
    d = tmp_path_factory.mktemp("vm")
    objs, host_key = spawner_objects(d)
    secret, vmobj = objs["secret"], objs["virtualmachine"]
    seed = make_seed_iso(kubevirt_seed_files(secret, vmobj), d / "cidata.iso")
    overlay = d / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(disk), "-F", "qcow2", str(overlay)],
        check=True,
    )
    key = d / "id_ed25519"
    key.write_text(secret["stringData"]["id_ed25519"])
    key.chmod(0o600)
    port = free_port()
    known = d / "known_hosts"
    known.write_text(known_hosts_line("127.0.0.1", port, host_key.public_key))
    gdb_sock, console = d / "gdb.sock", d / "console.log"
    # The devices KubeVirt gives it (make_vm): q35, both disks on virtio,
    # virtio-net, virtio-rng; the gdbstub the debug hook adds.
    argv = [
        "qemu-system-x86_64",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-machine",
        "q35",
        "-accel",
        "tcg,tb-size=128",
        "-m",
        "1024",
        "-smp",
        "1",
        "-drive",
        f"file={overlay},if=virtio,format=qcow2",
        "-drive",
        f"file={seed},if=virtio,format=raw,readonly=on",
        "-netdev",
        f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device",
        "virtio-net-pci,netdev=n0",
        "-device",
        "virtio-rng-pci",
        "-serial",
        f"file:{console}",
        "-gdb",
        f"unix:{gdb_sock},server=on,wait=off",
    ]
    t0 = time.monotonic()
    qemu = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    env = LabEnv(
        vm_host="127.0.0.1",
        ssh_port=port,
        gdb_remote=gdb_remote_for_socket(gdb_sock),
        vmlinux=f"{built['vm_kernel']['dir']}/vmlinux",
        kdir=built["vm_kernel"]["dir"],
        arch="x86_64",
        ssh_key=str(key),
        known_hosts=str(known),
        backend="kubevirt",
    )
    lab = LabVM(env)

    def console_text() -> str:
        return console.read_text(errors="replace") if console.exists() else ""

    try:
        deadline = t0 + BOOT_TIMEOUT
        # hostfwd accepts before sshd listens: wait for the console marker.
        while MARK_SSH_READY not in console_text():
            if qemu.poll() is not None:
                pytest.fail(
                    f"QEMU exited {qemu.returncode}: {qemu.stderr.read().decode()}\n"
                    f"console:\n{console_text()[-4000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no '{MARK_SSH_READY}' within {BOOT_TIMEOUT}s; console:\n"
                    f"{console_text()[-6000:]}"
                )
            time.sleep(1)
        lab.wait_ready(timeout=max(30, deadline - time.monotonic()))
        print(f"VM booted to ssh in {time.monotonic() - t0:.0f}s", file=sys.stderr)
        yield lab, vmobj, console_text
    finally:
        os.killpg(qemu.pid, 9)
        qemu.wait()


def test_ssh_with_the_spawners_key_runs_the_lab_kernel(built, vm):
    lab, vmobj, _ = vm
    # StrictHostKeyChecking=yes against the pinned host key: cloud-init
    # installed the spawner's host key, and root took the spawner's user key.
    assert lab.run("uname -r").stdout.strip() == built["vm_kernel"]["release"]
    assert lab.run("hostname").stdout.strip() == vmobj["metadata"]["name"]
    # Only the pinned key: the image shipped none and cloud-init made no others.
    assert lab.run("cd /etc/ssh && ls ssh_host_*").stdout.split() == [
        "ssh_host_ed25519_key",
        "ssh_host_ed25519_key.pub",
    ]
    status = lab.run("cloud-init status --long", check=False).stdout
    assert "status: done" in status, status
    # The user-data passes this cloud-init's own schema check.
    schema = lab.run("cloud-init schema --system", check=False)
    assert schema.returncode == 0, schema.stdout + schema.stderr
    for tool in ("strace -V", "kexec --version", "modprobe --version"):
        lab.run(tool)


def test_module_built_against_the_vm_kernel_loads(built, vm, tmp_path):
    lab, _, _ = vm
    src = write_hello_module(tmp_path / "hello")
    subprocess.run(
        ["make", "-s", "-C", built["vm_kernel"]["dir"], f"M={src}", "modules"],
        check=True,
        capture_output=True,
    )
    assert "hello-image: loaded" in lab.insmod(src / "hello.ko")
    assert "hello" in lab.run("lsmod").stdout
    assert "hello-image: bye" in lab.rmmod("hello")


def test_gdb_attaches_to_the_gdbstub_and_hits_a_breakpoint(vm):
    lab, _, _ = vm
    # uname(1) in the VM calls newuname(2): keep calling it over ssh until gdb,
    # attached and waiting at the breakpoint, catches one.
    stop = threading.Event()

    def poke():
        while not stop.is_set():
            lab.run("uname -n", check=False, timeout=120)
            time.sleep(1)

    t = threading.Thread(target=poke, daemon=True)
    t.start()
    try:
        out = lab.gdb_batch(["break __x64_sys_newuname", "continue", "bt", "detach"], timeout=180)
    finally:
        stop.set()
        t.join(timeout=150)
    assert re.search(r"Breakpoint 1, __x64_sys_newuname", out), out
    assert re.search(r"#\d+ .*do_syscall_64", out), out
    assert "detached" in out.lower(), out
    # The VM runs on after gdb detaches.
    assert lab.run("true").returncode == 0

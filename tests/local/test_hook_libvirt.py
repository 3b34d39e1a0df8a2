"""The debug-mode domain hook, for real: its output is validated with libvirt's
schema, defined and started by Debian's libvirtd + QEMU (TCG), and gdb
attaches to the gdbstub it added and hits a kernel breakpoint.

The domain is shaped like KubeVirt's (q35, placeholder pcie-root-ports,
virtio-non-transitional devices, VGA, unix-socket serial console, the
kubevirt metadata namespace) but boots the lab kernel directly, since there
is no containerDisk here. Needs root (libvirt's system instance); starts
libvirtd/virtlogd with an idle timeout if they are not running.
"""

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from harness.hubctl import free_port

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location(
    "debug_hook", ROOT / "kubevirt-build" / "hook" / "debug_hook.py"
)
hook = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hook)

URI = "qemu:///system"
Q = "{http://libvirt.org/schemas/domain/qemu/1.0}"


def run(*argv, check=True, timeout=60):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@pytest.fixture(scope="module")
def libvirtd():
    if os.geteuid() != 0:
        pytest.fail("this test drives libvirt's system instance and must run as root")
    for daemon, sock in (("virtlogd", "virtlogd-sock"), ("libvirtd", "libvirt-sock")):
        if not Path("/run/libvirt", sock).exists():
            if not shutil.which(daemon):
                pytest.fail(f"{daemon} is missing: run scripts/install-deps.sh")
            # -t: the daemon exits on its own once idle, leaving nothing behind.
            run(daemon, "-d", "-t", "120")
    deadline = time.monotonic() + 20
    while run("virsh", "-c", URI, "version", check=False).returncode != 0:
        assert time.monotonic() < deadline, "libvirtd did not answer within 20s"
        time.sleep(0.5)
    return URI


def kubevirt_shaped_domain(name: str, work: Path, kernel: Path, initrd: Path) -> str:
    ports = "\n".join(
        f'    <controller type="pci" index="{i}" model="pcie-root-port"></controller>'
        for i in range(1, 11)
    )
    return f"""<domain type="qemu">
  <name>{name}</name>
  <memory unit="b">268435456</memory>
  <os>
    <type arch="x86_64" machine="q35">hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 nokaslr panic=-1</cmdline>
  </os>
  <devices>
    <controller type="usb" index="0" model="none"></controller>
    <controller type="virtio-serial" index="0" model="virtio-non-transitional"></controller>
{ports}
    <video>
      <model type="vga" heads="1" vram="16384"></model>
    </video>
    <memballoon model="virtio-non-transitional"></memballoon>
    <serial type="unix">
      <target port="0"></target>
      <source mode="bind" path="{work}/virt-serial0"></source>
    </serial>
    <console type="unix">
      <target type="serial" port="0"></target>
      <source mode="bind" path="{work}/virt-serial0"></source>
    </console>
    <rng model="virtio-non-transitional">
      <backend model="random">/dev/urandom</backend>
    </rng>
  </devices>
  <clock offset="utc"></clock>
  <metadata>
    <kubevirt xmlns="http://kubevirt.io">
      <uid>hook-test</uid>
    </kubevirt>
  </metadata>
  <features>
    <acpi></acpi>
  </features>
  <vcpu placement="static">1</vcpu>
</domain>
"""


@pytest.fixture
def domain_files(guest):
    # QEMU runs as libvirt-qemu: kernel, initrd and the socket directory must
    # be reachable by that user, and pytest's tmp_path is 0700 root.
    work = Path(tempfile.mkdtemp(prefix="kvs-hook-", dir="/tmp"))
    work.chmod(0o777)
    kernel = work / "bzImage"
    initrd = work / "initramfs.cpio.gz"
    shutil.copyfile(guest.kernel, kernel)
    shutil.copyfile(guest.initramfs, initrd)
    for f in (kernel, initrd):
        f.chmod(0o644)
    yield work, kernel, initrd
    shutil.rmtree(work, ignore_errors=True)


def test_hook_output_validates_starts_and_gdb_hits_a_breakpoint(libvirtd, domain_files, guest):
    work, kernel, initrd = domain_files
    name = f"kvs-hook-test-{os.getpid()}"
    port = free_port()
    source = kubevirt_shaped_domain(name, work, kernel, initrd)
    out = hook.add_debug_args(source, gdb=f"tcp::{port}")
    assert hook.add_debug_args(out, gdb=f"tcp::{port}") == out, "hook is not idempotent"
    xml_path = work / "domain.xml"
    xml_path.write_text(out)

    # 1. libvirt's own schema accepts the hook's output.
    proc = run("virt-xml-validate", str(xml_path), "domain", check=False)
    assert proc.returncode == 0, f"virt-xml-validate: {proc.stdout}{proc.stderr}"

    # 2. libvirt + QEMU start it (a bare -device edu would fail here on q35).
    t0 = time.monotonic()
    run("virsh", "-c", libvirtd, "create", str(xml_path), timeout=120)
    try:
        started = time.monotonic() - t0
        live = run("virsh", "-c", libvirtd, "dumpxml", name).stdout
        args = [a.get("value") for a in ET.fromstring(live).iter(f"{Q}arg")]
        assert args[:2] == ["-gdb", f"tcp::{port}"]
        edu = args[3]
        assert edu.startswith("edu,bus=pcie.0,addr=")
        slot = int(edu.rsplit("=", 1)[1], 16)
        live_slots = {
            int(a.get("slot"), 16)
            for a in ET.fromstring(live).iter("address")
            if a.get("type") == "pci" and int(a.get("bus"), 16) == 0
        }
        assert slot not in live_slots, f"libvirt put a device on edu's slot {slot:#x}"

        # 3. gdb attaches to the hook's gdbstub and hits a breakpoint that a
        #    console command triggers (uname -> newuname syscall).
        console = socket.socket(socket.AF_UNIX)
        console.connect(str(work / "virt-serial0"))
        console.settimeout(0.5)
        gdb = subprocess.Popen(
            [
                "gdb",
                "-q",
                "-nx",
                "-batch",
                "-ex",
                f"file {guest.vmlinux}",
                "-ex",
                f"target remote 127.0.0.1:{port}",
                "-ex",
                "hbreak __x64_sys_newuname",
                "-ex",
                "continue",
                "-ex",
                "bt 1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        t1 = time.monotonic()
        deadline = t1 + 90
        console_log = b""
        while gdb.poll() is None and time.monotonic() < deadline:
            try:
                console.sendall(b"uname -r\n")
                console_log += console.recv(65536)
            except TimeoutError:
                pass
            time.sleep(1)
        if gdb.poll() is None:
            gdb.kill()
        transcript = gdb.communicate()[0]
        console.close()
        assert re.search(r"Breakpoint 1, .*__x64_sys_newuname", transcript), (
            f"gdb did not hit the breakpoint.\ngdb said:\n{transcript}\n"
            f"console said:\n{console_log.decode(errors='replace')[-2000:]}"
        )
        print(
            f"\nlibvirt start {started:.1f}s; gdb attach + breakpoint {time.monotonic() - t1:.1f}s"
        )
    finally:
        run("virsh", "-c", libvirtd, "destroy", name, check=False)


def test_bare_edu_on_q35_is_what_the_explicit_slot_avoids(libvirtd, domain_files):
    """The failure the hook's slot choice exists for, reproduced: libvirt's
    first pcie-root-port wants slot 1, where a bare `-device edu` sits."""
    work, kernel, initrd = domain_files
    name = f"kvs-hook-bare-{os.getpid()}"
    source = kubevirt_shaped_domain(name, work, kernel, initrd).replace(
        '<domain type="qemu">',
        '<domain type="qemu" xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0">',
    )
    source = source.replace(
        "</domain>",
        "  <qemu:commandline><qemu:arg value='-device'/><qemu:arg value='edu'/>"
        "</qemu:commandline>\n</domain>",
    )
    # Without VGA, libvirt's first root port takes slot 1 on q35.
    source = re.sub(r"    <video>.*?</video>\n", "", source, flags=re.S)
    xml_path = work / "bare.xml"
    xml_path.write_text(source)
    proc = run("virsh", "-c", libvirtd, "create", str(xml_path), check=False, timeout=120)
    if proc.returncode == 0:
        run("virsh", "-c", libvirtd, "destroy", name, check=False)
    assert proc.returncode != 0
    assert "in use by edu" in proc.stderr, proc.stderr

"""The debug-mode domain hook (kubevirt-build/hook/debug_hook.py) as a pure
function. tests/local/test_hook_libvirt.py boots its output under libvirt."""

import ast
import importlib.util
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DATA = Path(__file__).parent / "data"
HOOK_PATH = ROOT / "kubevirt-build" / "hook" / "debug_hook.py"

spec = importlib.util.spec_from_file_location("debug_hook", HOOK_PATH)
hook = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hook)

Q = "{http://libvirt.org/schemas/domain/qemu/1.0}"
X86 = (DATA / "kubevirt-domain-x86_64.xml").read_text()
ARM = (DATA / "kubevirt-domain-aarch64.xml").read_text()


def qemu_args(xml: str) -> list[str]:
    root = ET.fromstring(xml)
    return [a.get("value") for c in root.findall(f"{Q}commandline") for a in c.findall(f"{Q}arg")]


def without_ns_decl(xml: str) -> str:
    return xml.replace(' xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0"', "", 1)


def test_x86_64_gets_gdb_and_edu_on_a_free_root_slot():
    out = hook.add_debug_args(X86)
    assert qemu_args(out) == ["-gdb", "tcp::1234", "-device", "edu,bus=pcie.0,addr=0x10"]
    assert len(ET.fromstring(out).findall(f"{Q}commandline")) == 1


def test_rest_of_the_domain_is_untouched():
    out = hook.add_debug_args(X86)
    block = re.search(r"  <qemu:commandline>.*?</qemu:commandline>\n", out, re.S)
    assert block is not None
    assert out[: block.start()] + out[block.end() :] == X86
    # The kubevirt metadata keeps its default namespace, byte for byte.
    assert '<kubevirt xmlns="http://kubevirt.io">' in out


def test_namespace_declared_when_missing():
    bare = without_ns_decl(X86)
    assert "xmlns:qemu" not in bare
    out = hook.add_debug_args(bare)
    assert out.startswith('<domain xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0" type=')
    assert qemu_args(out)[:2] == ["-gdb", "tcp::1234"]


@pytest.mark.parametrize(
    "xml",
    [
        pytest.param(X86, id="x86_64"),
        pytest.param(ARM, id="aarch64"),
        pytest.param(without_ns_decl(X86), id="no-ns-decl"),
    ],
)
def test_idempotent(xml):
    once = hook.add_debug_args(xml)
    assert hook.add_debug_args(once) == once
    assert hook.debug_args(once) == []


def test_aarch64_gets_gdb_only():
    assert qemu_args(hook.add_debug_args(ARM)) == ["-gdb", "tcp::1234"]


def test_edu_can_be_forced_off_and_gdb_endpoint_chosen():
    out = hook.add_debug_args(X86, gdb="tcp:127.0.0.1:5555", edu=False)
    assert qemu_args(out) == ["-gdb", "tcp:127.0.0.1:5555"]


def with_devices(xml: str, snippet: str) -> str:
    return xml.replace("  </devices>", snippet + "\n  </devices>", 1)


@pytest.mark.parametrize(
    "snippet, slot",
    [
        pytest.param("", "0x10", id="nothing-addressed"),
        pytest.param(
            "<controller type='pci' index='4' model='pcie-root-port'>"
            "<address type='pci' domain='0x0000' bus='0x00' slot='0x10' function='0x0'/></controller>"
            "<controller type='pci' index='5' model='pcie-root-port'>"
            "<address type='pci' domain='0x0000' bus='0x00' slot='0x11' function='0x0'/></controller>",
            "0x12",
            id="0x10-0x11-taken",
        ),
        pytest.param(
            "<hostdev mode='subsystem' type='pci'><source/>"
            "<address type='pci' domain='0x0000' bus='0x03' slot='0x10' function='0x0'/></hostdev>",
            "0x10",
            id="same-slot-other-bus-is-free",
        ),
        pytest.param(
            "<disk type='file' device='cdrom'><target dev='sda' bus='sata'/>"
            "<address type='drive' controller='0' bus='0' target='0' unit='16'/></disk>",
            "0x10",
            id="non-pci-address-ignored",
        ),
    ],
)
def test_edu_slot_avoids_addresses_in_the_domain(snippet, slot):
    out = hook.add_debug_args(with_devices(X86, snippet))
    assert qemu_args(out)[-1] == f"edu,bus=pcie.0,addr={slot}"


def test_all_slots_taken_is_an_error():
    ctrls = "".join(
        f"<controller type='pci' index='{i + 10}' model='pcie-root-port'>"
        f"<address type='pci' domain='0x0000' bus='0x00' slot='{s:#04x}' function='0x0'/></controller>"
        for i, s in enumerate(hook.SLOT_PREFERENCE)
    )
    with pytest.raises(hook.HookError, match="no free slot"):
        hook.add_debug_args(with_devices(X86, ctrls))


def test_existing_commandline_is_extended_in_place():
    ignition = (
        "  <qemu:commandline>\n    <qemu:arg value='-fw_cfg'/>\n"
        "    <qemu:arg value='name=opt/com.coreos/config,file=/x'/>\n"
        "    <qemu:arg value='-device'/>\n    <qemu:arg value='virtio-rng-pci,bus=pcie.0,addr=0x10'/>\n"
        "  </qemu:commandline>\n"
    )
    xml = X86.replace("</domain>", ignition + "</domain>")
    out = hook.add_debug_args(xml)
    assert len(ET.fromstring(out).findall(f"{Q}commandline")) == 1
    assert qemu_args(out) == [
        "-fw_cfg",
        "name=opt/com.coreos/config,file=/x",
        "-device",
        "virtio-rng-pci,bus=pcie.0,addr=0x10",
        "-gdb",
        "tcp::1234",
        "-device",
        "edu,bus=pcie.0,addr=0x11",
    ]


def test_present_gdb_or_edu_is_not_added_twice():
    xml = X86.replace(
        "</domain>",
        "<qemu:commandline><qemu:arg value='-s'/><qemu:arg value='-device'/>"
        "<qemu:arg value='edu,addr=0x1c'/></qemu:commandline></domain>",
    )
    assert hook.add_debug_args(xml) == xml


def test_other_prefix_for_the_qemu_namespace_is_used():
    xml = X86.replace("xmlns:qemu=", "xmlns:q=", 1)
    out = hook.add_debug_args(xml)
    assert '<q:arg value="-gdb"/>' in out and "xmlns:qemu" not in out
    assert qemu_args(out)[:2] == ["-gdb", "tcp::1234"]


def test_i440fx_uses_pci_0():
    xml = X86.replace("pc-q35-rhel9.6.0", "pc-i440fx-7.2")
    assert qemu_args(hook.add_debug_args(xml))[-1] == "edu,bus=pci.0,addr=0x10"


@pytest.mark.parametrize(
    "bad, match",
    [
        pytest.param("<domain><os>", "does not parse", id="malformed"),
        pytest.param("<network/>", "expected a <domain>", id="not-a-domain"),
        pytest.param(
            X86.replace("pc-q35-rhel9.6.0", "microvm"), "root PCI bus", id="unknown-machine"
        ),
    ],
)
def test_bad_input_is_a_hook_error(bad, match):
    with pytest.raises(hook.HookError, match=match):
        hook.add_debug_args(bad)


def test_inputs_not_mutated_and_runs_on_python_3_9_grammar():
    before = str(X86)
    hook.add_debug_args(X86)
    assert X86 == before
    # KubeVirt's sidecar-shim image (CentOS Stream 9) has python3.9.
    ast.parse(HOOK_PATH.read_text(), feature_version=(3, 9))
    assert HOOK_PATH.read_text().startswith("#!/usr/bin/env python3\n")


def test_cli_is_the_sidecar_shim_contract():
    # sidecar-shim runs: onDefineDomain --vmi JSON --domain XML; XML on stdout.
    proc = subprocess.run(
        [
            sys.executable,
            str(HOOK_PATH),
            "--vmi",
            '{"kind":"VirtualMachineInstance"}',
            "--domain",
            X86,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout == hook.add_debug_args(X86)


def test_cli_bad_input_and_help():
    proc = subprocess.run(
        [sys.executable, str(HOOK_PATH), "--vmi", "{}", "--domain", "<x"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "onDefineDomain: domain XML does not parse" in proc.stderr
    proc = subprocess.run(
        [sys.executable, str(HOOK_PATH), "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "--domain" in proc.stdout


# -- VMs started paused (sidecar route): the resumer and the boot menu --------
BOOT_MENU_DOMAIN = X86.replace("<os>", "<os>\n    <bootmenu enable='yes' timeout='10000'/>", 1)


def test_boot_menu_goes_and_nothing_else_changes():
    assert "<bootmenu" in BOOT_MENU_DOMAIN
    assert hook.without_boot_menu(BOOT_MENU_DOMAIN) == X86
    assert hook.without_boot_menu(X86) == X86


@pytest.mark.parametrize(
    "endpoint, port",
    [
        pytest.param("tcp::1234", 1234, id="any-address"),
        pytest.param("tcp:127.0.0.1:4321", 4321, id="one-address"),
        pytest.param("tcp::1234,ipv4=on", 1234, id="with-options"),
        pytest.param("unix:/run/gdb.sock,server=on", None, id="unix-socket"),
    ],
)
def test_gdb_port(endpoint, port):
    assert hook.gdb_port(endpoint) == port


class FakeGdbStub:
    """A TCP server that answers gdb's detach as QEMU's gdbstub does (tests only:
    the real gdbstub is exercised by tests/cluster/test_kubevirt_real.py)."""

    def __init__(self):
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        conn, _ = self.sock.accept()
        with conn:
            while b"#" not in self.received:
                data = conn.recv(64)
                if not data:
                    break
                self.received += data
            conn.sendall(b"+$OK#9a")
        self.done.set()


def test_resume_waits_for_the_stub_then_detaches_once():
    stub = FakeGdbStub()
    assert hook.resume_when_listening(stub.port, grace=0.1, timeout=10)
    assert stub.done.wait(5)
    assert stub.received == b"$D;1#b0"


def test_resume_gives_up_when_nothing_listens():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    assert hook.resume_when_listening(port, grace=0.1, timeout=1.5) is False


def test_cli_resumes_a_vmi_started_paused_once(tmp_path):
    import json
    import time

    stub = FakeGdbStub()
    vmi = json.dumps({"metadata": {"annotations": {hook.RESUME_ANNOTATION: "true"}}})
    env = {"PATH": "/usr/bin:/bin", "KVS_HOOK_STATE_DIR": str(tmp_path)}
    argv = [
        sys.executable,
        str(HOOK_PATH),
        "--vmi",
        vmi,
        "--domain",
        BOOT_MENU_DOMAIN,
        "--gdb",
        f"tcp::{stub.port}",
    ]
    first = subprocess.run(argv, capture_output=True, text=True, check=True, env=env, timeout=30)
    assert "<bootmenu" not in first.stdout and "-gdb" in first.stdout
    assert stub.done.wait(20), "the resumer never detached"
    assert stub.received == b"$D;1#b0"
    marker = tmp_path / "kvs-resume-after-start"
    deadline = time.monotonic() + 10
    while marker.read_text() != "resumed\n" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.read_text() == "resumed\n"
    # KubeVirt defines the domain again: same XML, no second resumer.
    second = subprocess.run(argv, capture_output=True, text=True, check=True, env=env, timeout=30)
    assert second.stdout == first.stdout
    assert marker.read_text() == "resumed\n"


def test_cli_leaves_other_vmis_alone(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "KVS_HOOK_STATE_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(HOOK_PATH), "--vmi", "{}", "--domain", BOOT_MENU_DOMAIN],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert "<bootmenu" in proc.stdout
    assert not (tmp_path / "kvs-resume-after-start").exists()

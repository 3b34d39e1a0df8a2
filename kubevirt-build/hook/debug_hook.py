#!/usr/bin/env python3
"""Debug-mode domain hook: give a KubeVirt VM's QEMU a gdbstub and, on
x86_64, the ``edu`` PCI device, through libvirt's ``<qemu:commandline>``.

One pure function, ``add_debug_args(domain_xml) -> domain_xml``, used three
ways (see docs/cluster-apiserver.md, "The debug hook"): as the ``onDefineDomain`` script of a
KubeVirt hook sidecar (``--vmi JSON --domain XML`` in, new XML on stdout),
inside the gRPC server of the KubeVirt >= 1.9 Plugin route, and in tests.

Only Python's standard library, and Python 3.9 syntax: it runs in KubeVirt's
sidecar-shim image (CentOS Stream 9, python3.9).

The result is the input text with two insertions: an ``xmlns:qemu``
declaration on ``<domain>`` if missing, and the arguments (inside the
existing ``<qemu:commandline>`` or in a new one before ``</domain>``).
Nothing else is rewritten, and applying it again changes nothing.

q35 (KubeVirt's x86_64 machine): a bare ``-device edu`` takes slot 1 of
pcie.0, where libvirt puts its first pcie-root-port, and QEMU refuses to
start ("slot 1 function 0 not available for pcie-root-port, in use by edu").
So edu gets an explicit slot on the root bus, chosen among those no device
in the domain uses.

Keeping gdb's stops (sidecar route). Stock virt-launcher resumes a domain
that is paused unless KubeVirt itself paused it (``SyncVMI``: "Domain
unpaused.", KubeVirt v1.8.4 and v1.9.0), so a breakpoint would not hold.
A VMI started with ``startStrategy: Paused`` counts as paused by KubeVirt for
the life of its virt-launcher, whatever QEMU does later. KubeVirtSpawner
starts its VMs so, with the annotation ``kubevirt-spawner/resume-after-start``;
for those the sidecar (``main``) also starts ``resume_when_listening`` in the
background, which lets the guest run once QEMU's gdbstub listens (a gdb
detach), and takes out the 10 s BIOS boot menu KubeVirt adds to VMs started
paused (``without_boot_menu``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
import xml.etree.ElementTree as ET
from xml.sax.saxutils import quoteattr

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
DEFAULT_GDB = "tcp::1234"
RESUME_ANNOTATION = "kubevirt-spawner/resume-after-start"
# gdb remote protocol: detach process 1, which lets the guest run. With a
# pid, as QEMU's gdbstub wants it once any client chose its multiprocess
# mode (which outlives that client: a plain "D" then gets E22 and the guest
# stays stopped); without that mode the pid is ignored.
GDB_DETACH = b"$D;1#b0"

# Root-bus slots edu may take, in order of preference. libvirt fills pcie.0
# from slot 1 upwards (root ports, 8 per slot) and q35 itself uses 0x00 (host
# bridge) and 0x1f (ICH9 LPC/SATA/SMBus); libvirt puts ICH9 USB at 0x1d and
# 0x1a, HDA sound at 0x1b and a dmi-to-pci-bridge at 0x1e. Starting in the
# middle keeps clear of both ends.
SLOT_PREFERENCE = tuple(range(0x10, 0x1A)) + tuple(range(0x0F, 0x01, -1))

_ROOT_BUS = {"q35": "pcie.0", "pc": "pci.0", "i440fx": "pci.0"}


class HookError(Exception):
    """The domain cannot be given the debug arguments (message says why)."""


def _machine_family(machine: str) -> str:
    # "pc-q35-rhel9.6.0", "q35", "pc-i440fx-7.2", "pc"
    if "q35" in machine:
        return "q35"
    if machine.startswith("pc") or "i440fx" in machine:
        return "pc"
    return machine


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text, 0)
    except ValueError:
        return None


def used_root_slots(domain: ET.Element, args: list[str]) -> set[int]:
    """Slots of PCI bus 0 that devices in the domain (or -device args) take."""
    used = {0x00}
    for addr in domain.iter("address"):
        if addr.get("type") != "pci":
            continue
        if (_int(addr.get("domain")) or 0) != 0 or (_int(addr.get("bus")) or 0) != 0:
            continue
        slot = _int(addr.get("slot"))
        if slot is not None:
            used.add(slot)
    for i, arg in enumerate(args[:-1]):
        if arg != "-device":
            continue
        props = dict(p.split("=", 1) for p in args[i + 1].split(",")[1:] if "=" in p)
        if props.get("bus") in ("pcie.0", "pci.0") and "addr" in props:
            slot = _int(props["addr"].split(".")[0])
            if slot is not None:
                used.add(slot)
    return used


def choose_edu_slot(domain: ET.Element, args: list[str]) -> int:
    used = used_root_slots(domain, args)
    for slot in SLOT_PREFERENCE:
        if slot not in used:
            return slot
    raise HookError("no free slot on the root PCI bus for the edu device")


def _commandline_args(domain: ET.Element) -> list[str]:
    return [
        arg.get("value", "")
        for cmdline in domain.findall(f"{{{QEMU_NS}}}commandline")
        for arg in cmdline.findall(f"{{{QEMU_NS}}}arg")
    ]


def _has_device(args: list[str], driver: str) -> bool:
    return any(
        a == "-device" and args[i + 1].split(",")[0] == driver for i, a in enumerate(args[:-1])
    )


def debug_args(domain_xml: str, gdb: str = DEFAULT_GDB, edu: bool | None = None) -> list[str]:
    """The QEMU arguments ``add_debug_args`` would add (empty if present).

    ``edu``: None adds it on x86_64 only; True/False force it.
    """
    try:
        domain = ET.fromstring(domain_xml)
    except ET.ParseError as e:
        raise HookError(f"domain XML does not parse: {e}") from None
    if domain.tag != "domain":
        raise HookError(f"expected a <domain>, got <{domain.tag}>")
    ostype = domain.find("os/type")
    arch = ostype.get("arch", "") if ostype is not None else ""
    machine = ostype.get("machine", "") if ostype is not None else ""
    args = _commandline_args(domain)
    new: list[str] = []
    if "-gdb" not in args and "-s" not in args:
        new += ["-gdb", gdb]
    want_edu = arch == "x86_64" if edu is None else edu
    if want_edu and not _has_device(args, "edu"):
        family = _machine_family(machine)
        if family not in _ROOT_BUS:
            raise HookError(f"do not know the root PCI bus of machine type {machine!r}")
        slot = choose_edu_slot(domain, args)
        new += ["-device", f"edu,bus={_ROOT_BUS[family]},addr={slot:#04x}"]
    return new


_ROOT_START = re.compile(r"<domain\b[^>]*>", re.S)


def add_debug_args(domain_xml: str, gdb: str = DEFAULT_GDB, edu: bool | None = None) -> str:
    """``domain_xml`` with ``-gdb GDB`` (and ``-device edu,...``) added as
    libvirt QEMU command-line passthrough. Idempotent; inputs untouched."""
    new = debug_args(domain_xml, gdb=gdb, edu=edu)
    if not new:
        return domain_xml
    start = _ROOT_START.search(domain_xml)
    if start is None:  # parsed as <domain> above, so only odd spacing gets here
        raise HookError("cannot find the <domain> start tag")
    root_tag = start.group(0)
    m = re.search(
        r"\sxmlns:([A-Za-z_][\w.-]*)\s*=\s*([\"'])" + re.escape(QEMU_NS) + r"\2", root_tag
    )
    if m:
        prefix = m.group(1)
        text = domain_xml
    else:
        prefix = "qemu"
        if re.search(r"\sxmlns:qemu\s*=", root_tag):
            raise HookError("the prefix 'qemu' is bound to another namespace")
        insert_at = start.start() + len("<domain")
        text = domain_xml[:insert_at] + f" xmlns:qemu={quoteattr(QEMU_NS)}" + domain_xml[insert_at:]
    arg_lines = "".join(f"    <{prefix}:arg value={quoteattr(a)}/>\n" for a in new)

    # Extend an existing (root-declared prefix) commandline element in place.
    close = f"</{prefix}:commandline>"
    empty = re.search(rf"<{re.escape(prefix)}:commandline\s*/>", text)
    if close in text:
        at = text.index(close)
        return text[:at] + "".join(f"<{prefix}:arg value={quoteattr(a)}/>" for a in new) + text[at:]
    if empty:
        block = f"<{prefix}:commandline>\n{arg_lines}  </{prefix}:commandline>"
        return text[: empty.start()] + block + text[empty.end() :]
    at = text.rindex("</domain>")
    block = f"  <{prefix}:commandline>\n{arg_lines}  </{prefix}:commandline>\n"
    return text[:at] + block + text[at:]


_BOOT_MENU = re.compile(r"\s*<bootmenu\b[^>]*/>")


def without_boot_menu(domain_xml: str) -> str:
    """``domain_xml`` without its ``<bootmenu .../>`` (KubeVirt adds one with a
    10 s timeout to VMIs started paused, for a console user to reach the BIOS)."""
    return _BOOT_MENU.sub("", domain_xml, count=1)


def gdb_port(gdb: str) -> int | None:
    """The TCP port of a ``-gdb`` endpoint like ``tcp::1234`` (None if not TCP)."""
    m = re.fullmatch(r"tcp:[^:]*:(\d+)(,.*)?", gdb)
    return int(m.group(1)) if m else None


def resume_when_listening(port: int, grace: float = 2.0, timeout: float = 600.0) -> bool:
    """Wait until QEMU's gdbstub listens on 127.0.0.1:``port`` (the sidecar
    shares the virt-launcher pod's network namespace), give libvirt ``grace``
    seconds to finish starting the paused domain, then attach and detach once:
    QEMU resumes the guest. True if it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                # Connected: QEMU runs (paused). Let libvirt finish its start first.
                time.sleep(grace)
                s.sendall(GDB_DETACH)
                s.recv(64)  # "+$OK#9a" once QEMU let the guest run
            return True
        except OSError:
            time.sleep(0.5)
    return False


def _state_dir() -> str:
    # The sidecar's socket directory is a writable emptyDir; /tmp otherwise.
    for d in (os.environ.get("KVS_HOOK_STATE_DIR", ""), "/var/run/kubevirt-hooks", "/tmp"):
        if d and os.path.isdir(d) and os.access(d, os.W_OK):
            return d
    return "/tmp"


def start_resumer(port: int) -> None:
    """Run ``resume_when_listening`` once per pod, detached from the hook's
    caller (sidecar-shim waits for this process and reads its stdout)."""
    import fcntl

    marker = os.path.join(_state_dir(), "kvs-resume-after-start")
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return  # a re-define of the same domain: already under way or done
    if os.fork() > 0:
        os.close(fd)
        return
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(null, std)
    fcntl.flock(fd, fcntl.LOCK_EX)
    ok = resume_when_listening(port)
    os.write(fd, b"resumed\n" if ok else b"gave up\n")
    os._exit(0)


def _annotations(vmi_json: str) -> dict:
    try:
        vmi = json.loads(vmi_json or "{}")
    except ValueError:
        return {}
    return (vmi.get("metadata") or {}).get("annotations") or {}


def main(argv: list[str] | None = None) -> int:
    """``onDefineDomain --vmi JSON --domain XML``: the new domain XML on stdout."""
    parser = argparse.ArgumentParser(
        prog="onDefineDomain",
        description="Add -gdb (and -device edu on x86_64) to a libvirt domain for KubeVirt.",
    )
    parser.add_argument("--vmi", default="", help="the VMI as JSON (its annotations)")
    parser.add_argument("--domain", required=True, help="the domain XML")
    parser.add_argument(
        "--gdb", default=DEFAULT_GDB, help="QEMU -gdb endpoint (default %(default)s)"
    )
    opts, _ = parser.parse_known_args(argv)
    resume = _annotations(opts.vmi).get(RESUME_ANNOTATION) == "true"
    try:
        xml = add_debug_args(opts.domain, gdb=opts.gdb)
    except HookError as e:
        print(f"onDefineDomain: {e}", file=sys.stderr)
        return 1
    if resume:
        xml = without_boot_menu(xml)
    sys.stdout.write(xml)
    sys.stdout.flush()
    port = gdb_port(opts.gdb)
    if resume and port:
        start_resumer(port)
    return 0


if __name__ == "__main__":
    sys.exit(main())

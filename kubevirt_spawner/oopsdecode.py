"""From an oops's frames to lines of source: ``vmlinux``, the student's ``.ko``, addr2line.

Each frame's ``func+offset`` becomes an address in ``vmlinux``
(``LAB_VMLINUX``) or in the copy of the student's ``.ko`` that ``labvm
insmod`` kept (``modrecords``), and ``addr2line`` turns the address into
file:line: for a module, relative to the section the function is in, so no
load address is needed; bare addresses use the section addresses captured
at load time. Return addresses are looked up one byte back, so a caller's
line is that of its call, not of the instruction after it.

``plan`` and ``parse_addr2line`` are pure; ``decode`` runs addr2line around them.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import modrecords
from .arch import ARCHES
from .elfsyms import ELFError, ELFSymbols, read_symbols
from .lab import LabError
from .modrecords import ModuleRecord
from .oopsparse import Frame, Report


@dataclass(frozen=True)
class Lookup:
    """One address for addr2line: in ``objfile``, relative to ``section`` if given."""

    objfile: str
    section: str | None
    address: int


@dataclass(frozen=True)
class Place:
    function: str
    file: str
    line: int | None


@dataclass(frozen=True)
class DecodedFrame:
    frame: Frame
    places: tuple[Place, ...] = ()  # innermost first (inlined code, then where it sits)
    note: str = ""  # why it could not be decoded


@dataclass(frozen=True)
class Decoded:
    report: Report
    pc: DecodedFrame | None
    trace: tuple[DecodedFrame, ...]
    notes: tuple[str, ...]  # one line each: what limits the decoding
    panic_from: tuple[str, ...] = ()  # modules whose .ko holds the panic message


@dataclass(frozen=True)
class LoadedModule:
    record: ModuleRecord
    symbols: ELFSymbols


# -- pure: from a frame to an address ---------------------------------------


def _pick(candidates, offset: int):
    """Of same-named symbols, the one the offset fits in (the kernel's sizes
    are distances to the next symbol, so they only bound the choice)."""
    fitting = [s for s in candidates if s.size == 0 or offset < s.size]
    return (fitting or list(candidates))[0] if candidates else None


def plan(
    frame: Frame, is_pc: bool, kernel: ELFSymbols, modules: dict[str, LoadedModule]
) -> Lookup | str:
    """Where ``frame`` is for addr2line, or a short reason why it cannot be found.

    ``is_pc``: the faulting instruction itself; every other frame is a
    return address, looked up one byte back (the call instruction)."""
    back = 0 if is_pc else 1
    if frame.symbol is None:
        return _plan_address(frame.address or 0, back, kernel, modules)
    if frame.module:
        loaded = modules.get(frame.module)
        if loaded is None:
            return f"module {frame.module} was not loaded with `labvm insmod`"
        sym = _pick(loaded.symbols.functions.get(frame.symbol, ()), frame.offset)
        if sym is None:
            return f"{frame.symbol} is not in {Path(loaded.record.copy).name}"
        return Lookup(loaded.record.copy, sym.section, sym.value + frame.offset - back)
    sym = _pick(kernel.functions.get(frame.symbol, ()), frame.offset)
    if sym is None:
        return f"{frame.symbol} is not in vmlinux (the VM ran another kernel?)"
    return Lookup("", None, sym.value + frame.offset - back)


def _plan_address(addr: int, back: int, kernel: ELFSymbols, modules) -> Lookup | str:
    if any(lo <= addr < hi for lo, hi in kernel.text_ranges()):
        return Lookup("", None, addr - back)
    for loaded in modules.values():
        for sec in loaded.symbols.sections:
            base = loaded.record.sections.get(sec.name)
            if sec.executable and base is not None and base <= addr < base + sec.size:
                return Lookup(loaded.record.copy, sec.name, addr - base - back)
    if addr < 0x10000:
        return f"address {addr:#x}: a call through a NULL function pointer?"
    return f"address {addr:#x} is in no code labvm knows"


def parse_addr2line(output: str) -> dict[int, tuple[Place, ...]]:
    """``addr2line -a -f -i`` output as {address: places, innermost first}."""
    result: dict[int, list[Place]] = {}
    current: list[Place] | None = None
    lines = output.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if re.fullmatch(r"0x[0-9a-f]+", line):
            current = result.setdefault(int(line, 16), [])
            i += 1
            continue
        if current is not None and i + 1 < len(lines):
            loc = re.sub(r" \(discriminator \d+\)$", "", lines[i + 1].strip())
            file, _, num = loc.rpartition(":")
            if file not in ("", "??"):
                place = Place(line, os.path.normpath(file), int(num) if num.isdigit() else None)
                current.append(place)
        i += 2
    return {a: tuple(p) for a, p in result.items()}


# -- the thin part: files and addr2line ------------------------------------


def addr2line_binary(arch: str) -> str:
    a = ARCHES.get(arch)
    if a is None or a.name == platform.machine():
        return "addr2line"
    return f"{a.cross_prefix}addr2line"


def _addr2line(binary: str, objfile: str, section: str | None, addrs: list[int]):
    argv = [binary, "-a", "-f", "-i", "-e", objfile] + (["-j", section] if section else [])
    argv += [f"{a:#x}" for a in addrs]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        said = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise LabError(f"addr2line could not read {objfile}: {said}")
    return parse_addr2line(proc.stdout)


def _load_modules(report: Report, directory: Path | None) -> tuple[dict, list[str]]:
    names = {f.module for f in (report.pc, *report.trace) if f is not None and f.module}
    names |= set(report.modules)
    modules, notes = {}, []
    for name in sorted(names):
        rec = modrecords.load(name, directory)
        if rec is None:
            if name in {f.module for f in (report.pc, *report.trace) if f is not None}:
                notes.append(
                    f"module {name} was not loaded with `labvm insmod`, so its frames stay "
                    f"undecoded; load it with `labvm insmod {name}.ko` next time."
                )
            continue
        try:
            modules[name] = LoadedModule(rec, read_symbols(rec.copy))
        except ELFError as e:
            notes.append(f"module {name}: {e}")
            continue
        if _changed_since(rec):
            notes.append(
                f"{Path(rec.source).name} was rebuilt after it was loaded; the lines "
                "shown are those of the module that ran."
            )
    return modules, notes


def decode(report: Report, vmlinux: str, arch: str, directory: Path | None = None) -> Decoded:
    """Decode ``report`` against ``vmlinux`` and the modules labvm loaded."""
    if not vmlinux or not os.path.isfile(vmlinux):
        raise LabError(
            f"The course vmlinux ({vmlinux or 'LAB_VMLINUX is not set'}) is missing, so the "
            "oops cannot be decoded; `labvm console` shows it raw."
        )
    binary = addr2line_binary(arch)
    if not shutil.which(binary):
        raise LabError(f"{binary} (binutils) is not installed here, so the oops cannot be decoded.")
    try:
        kernel = read_symbols(vmlinux)
    except ELFError as e:
        raise LabError(f"The course vmlinux cannot be read: {e}") from None
    modules, notes = _load_modules(report, directory)
    vmlinux = os.path.realpath(vmlinux)
    frames = ([(report.pc, True)] if report.pc else []) + [(f, False) for f in report.trace]
    plans = [plan(f, is_pc, kernel, modules) for f, is_pc in frames]
    wanted: dict[tuple[str, str | None], set[int]] = {}
    for p in plans:
        if isinstance(p, Lookup):
            wanted.setdefault((p.objfile or vmlinux, p.section), set()).add(p.address)
    found = {
        key: _addr2line(binary, key[0], key[1], sorted(addrs)) for key, addrs in wanted.items()
    }
    decoded = []
    for (f, _is_pc), p in zip(frames, plans, strict=True):
        if isinstance(p, str):
            decoded.append(DecodedFrame(f, (), p))
            continue
        places = found[(p.objfile or vmlinux, p.section)].get(p.address, ())
        decoded.append(DecodedFrame(f, places, "" if places else "no line information"))
    pc = decoded[0] if report.pc else None
    trace = tuple(decoded[1:] if report.pc else decoded)
    return Decoded(report, pc, trace, tuple(notes), _panic_from(report, directory))


def _panic_from(report: Report, directory: Path | None) -> tuple[str, ...]:
    """The recorded modules whose .ko contains the text of a panic without a trace
    (up to its first digit, in case the module printed a number into it)."""
    if report.panic is None or report.trace or report.pc:
        return ()
    msg = report.panic.strip()
    needle = re.split(r"\d", msg)[0].rstrip()
    if len(needle) < 8:
        return ()
    found = []
    for name in report.modules or _recorded(directory):
        rec = modrecords.load(name, directory)
        try:
            if rec and needle.encode() in Path(rec.copy).read_bytes():
                found.append(name)
        except OSError:
            continue
    return tuple(found)


def _recorded(directory: Path | None) -> list[str]:
    d = directory or modrecords.state_dir()
    return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []


def _changed_since(rec: ModuleRecord) -> bool:
    try:
        return hashlib.sha256(Path(rec.source).read_bytes()).hexdigest() != rec.sha256
    except OSError:
        return False

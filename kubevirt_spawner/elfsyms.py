"""Sections and function symbols of an ELF file (vmlinux, a module's .ko).

Just enough of the format to turn an oops's ``symbol+offset`` into an
address: 64-bit little-endian ELF (x86_64 and arm64 kernels), section
headers, ``.symtab`` and its string table.
ref: https://refspecs.linuxfoundation.org/elf/gabi4+/ch4.eheader.html
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

SHF_EXECINSTR = 0x4
SHT_SYMTAB = 2
STT_FUNC = 2
STT_NOTYPE = 0


class ELFError(Exception):
    """The file is not an ELF file this reader understands (message in plain words)."""


@dataclass(frozen=True)
class Section:
    name: str
    addr: int
    size: int
    executable: bool


@dataclass(frozen=True)
class Symbol:
    name: str
    value: int  # an address in vmlinux; an offset in its section in a .ko
    size: int
    section: str


@dataclass(frozen=True)
class ELFSymbols:
    sections: tuple[Section, ...]
    functions: dict[str, tuple[Symbol, ...]]  # name -> every code symbol of that name

    def text_ranges(self) -> list[tuple[int, int]]:
        """[start, end) of each executable section that has an address."""
        return [(s.addr, s.addr + s.size) for s in self.sections if s.executable and s.addr]


def _cstr(table: bytes | mmap.mmap, offset: int) -> str:
    end = table.find(b"\0", offset)
    return bytes(table[offset:end]).decode(errors="replace")


def read_symbols(path: str | os.PathLike) -> ELFSymbols:
    """The sections and the code symbols (functions, and untyped symbols in
    executable sections, as assembly leaves them) of the ELF file ``path``."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return _parse(m, str(path))
    except (OSError, ValueError) as e:
        raise ELFError(f"cannot read {path}: {e}") from None


def _parse(m: mmap.mmap, path: str) -> ELFSymbols:
    if m[:4] != b"\x7fELF":
        raise ELFError(f"{path} is not an ELF file")
    if m[4] != 2 or m[5] != 1:
        raise ELFError(f"{path} is not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", m, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", m, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", m, shoff + i * shentsize) for i in range(shnum)]
    # (name, type, flags, addr, offset, size, link, info, addralign, entsize)
    names_hdr = headers[shstrndx]
    shstr = m[names_hdr[4] : names_hdr[4] + names_hdr[5]]
    sections = tuple(
        Section(_cstr(shstr, h[0]), h[3], h[5], bool(h[2] & SHF_EXECINSTR)) for h in headers
    )
    functions: dict[str, list[Symbol]] = {}
    for h in headers:
        if h[1] != SHT_SYMTAB:
            continue
        strhdr = headers[h[6]]
        strtab = m[strhdr[4] : strhdr[4] + strhdr[5]]
        for off in range(h[4], h[4] + h[5], h[9] or 24):
            st_name, st_info, _other, shndx, value, size = struct.unpack_from("<IBBHQQ", m, off)
            kind = st_info & 0xF
            if not st_name or shndx == 0 or shndx >= len(sections):
                continue
            section = sections[shndx]
            if kind == STT_FUNC or (kind == STT_NOTYPE and section.executable):
                name = _cstr(strtab, st_name)
                functions.setdefault(name, []).append(Symbol(name, value, size, section.name))
    return ELFSymbols(sections, {k: tuple(v) for k, v in functions.items()})

"""What ``labvm insmod`` remembers of each module it loads, to decode an oops later.

An oops names ``func+0x1f/0x30 [mod]``; turning that into a line of the
student's file needs the very ``.ko`` that was loaded (the student may have
rebuilt it since) and, for bare addresses, where the kernel put each of its
sections (``/sys/module/<mod>/sections/*``). After a panic the VM cannot be
asked any more, so both are kept at load time: a copy of the ``.ko`` before
``insmod`` runs (its init may take the VM down), the section addresses
right after. They live in the student's state directory,
``$XDG_STATE_HOME/labvm/modules`` (default ``~/.local/state/labvm/modules``),
one record per module name: the last load wins, as in the kernel.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

_SECTION_LINE = re.compile(r"^(\S+):(0x[0-9a-f]+)$")


@dataclass(frozen=True)
class ModuleRecord:
    name: str
    source: str  # the .ko the student loaded
    copy: str  # labvm's copy of it, as loaded
    sha256: str
    loaded_at: float  # seconds since the epoch
    sections: dict[str, int] = field(default_factory=dict)  # empty if never captured


def state_dir(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "labvm" / "modules"


def module_name(ko: str | os.PathLike) -> str:
    """The kernel's name for the module in ``ko`` (kbuild: the file name, '-' as '_')."""
    return Path(ko).name.removesuffix(".ko").replace("-", "_")


def sections_command(name: str) -> str:
    """A shell command for the VM printing ``SECTION:0xADDRESS`` per section of
    ``name`` (one grep: every process costs under TCG)."""
    d = shlex.quote(f"/sys/module/{name}/sections")
    return f"cd {d} 2>/dev/null && grep -H . .[!.]* * 2>/dev/null; true"


def parse_sections(text: str) -> dict[str, int]:
    """``sections_command``'s output as {section: address} (other lines ignored)."""
    out = {}
    for line in text.splitlines():
        m = _SECTION_LINE.match(line.strip())
        if m:
            out[m.group(1)] = int(m.group(2), 16)
    return out


def remember(ko: str | os.PathLike, directory: Path | None = None) -> ModuleRecord:
    """Copy ``ko`` aside before it loads; the record takes effect with
    ``commit`` (it loaded, or crashed the kernel trying) and goes with
    ``discard`` (the kernel refused it: the record of a module of that name
    still loaded stays true)."""
    d = directory or state_dir()
    d.mkdir(parents=True, exist_ok=True)
    ko = Path(ko).absolute()
    name = module_name(ko)
    copy = d / f"{name}.ko"
    pending = _pending(copy)
    shutil.copyfile(ko, pending)
    digest = hashlib.sha256(pending.read_bytes()).hexdigest()
    return ModuleRecord(name, str(ko), str(copy), digest, time.time())


def _pending(copy: Path) -> Path:
    return copy.with_name(f".{copy.name}.pending")


def commit(record: ModuleRecord, sections: dict[str, int] | None = None) -> ModuleRecord:
    """Make ``record`` (with ``sections``, if known) the one ``load`` returns."""
    copy = Path(record.copy)
    if _pending(copy).exists():
        os.replace(_pending(copy), copy)
    new = ModuleRecord(**{**asdict(record), "sections": dict(sections or record.sections)})
    _write(copy.parent, new)
    return new


def discard(record: ModuleRecord) -> None:
    """Forget a load the kernel refused."""
    _pending(Path(record.copy)).unlink(missing_ok=True)


def load(name: str, directory: Path | None = None) -> ModuleRecord | None:
    """The record of module ``name``, or None if labvm never loaded it."""
    path = (directory or state_dir()) / f"{name}.json"
    try:
        data = json.loads(path.read_text())
        return ModuleRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def _write(d: Path, record: ModuleRecord) -> None:
    tmp = d / f".{record.name}.json.tmp"
    tmp.write_text(json.dumps(asdict(record), indent=1) + "\n")
    os.replace(tmp, d / f"{record.name}.json")

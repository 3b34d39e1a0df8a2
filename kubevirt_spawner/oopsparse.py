"""Finding and reading a kernel oops in the VM's console log (pure).

The kernel reports a crash as a block of lines: a headline (``BUG: kernel
NULL pointer dereference, ...``, ``invalid opcode: 0000 [#1] SMP``,
``Internal error: Oops: ...``, ``Kernel panic - not syncing: ...``), who ran
(``CPU: 0 PID: 58 Comm: insmod``), where (x86 ``RIP: 0010:func+0x5/0x20
[mod]``, arm64 ``pc : func+0x5/0x20 [mod]``), a ``Call Trace:`` of
``func+off/size [mod]`` frames, ``Modules linked in:``, and ``---[ end trace
... ]---``. After the end marker x86 repeats the *first* oops's registers
("executive summary", arch/x86/kernel/dumpstack.c), which are not this
report's. An oops that panics (``panic_on_oops``, or one in an interrupt)
ends with ``Kernel panic - not syncing: Fatal exception`` (arm64: ``Oops:
Fatal exception``), which belongs to it. arm64's call trace starts with the
faulting frame itself, which the Report keeps as ``pc`` only, and misses
the caller of a leaf function, which only ``lr :`` names: it is put back. Everything here is text in, values out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_STAMP = re.compile(r"\[\s*(\d+\.\d+)\] ?")
_BOOT = "Linux version "
_HEADLINE = re.compile(
    r"^(BUG: |Oops: |Oops - |Internal error: |Unable to handle kernel |kernel BUG at "
    r"|general protection fault|invalid opcode: |divide error: |stack segment: "
    r"|double fault: |Kernel panic - not syncing: )"
)
_PANIC = "Kernel panic - not syncing: "
# oops_end() (x86: "Fatal exception") or die() (arm64: "Oops: Fatal exception")
# panicking on an oops: part of that oops.
_FATAL = re.compile(r"^(?:\w+: )?Fatal exception(?: in interrupt)?$")
_END = ("---[ end trace", "---[ end Kernel panic")
_WHO = re.compile(r"CPU: \d+ (?:UID: \d+ )?PID: (\d+) Comm: (.*?)(?: Tainted:| Not tainted|$)")
_PC = re.compile(r"^(?:RIP: [0-9a-f]{4}:|pc : )(.*?)\s*$")
_LR = re.compile(r"^lr : (.*?)\s*$")
_FRAME = re.compile(
    r"^(\? )?(?:([\w.$]+)\+0x([0-9a-f]+)/0x([0-9a-f]+)(?: \[(\w+)(?: [0-9a-f]+)?\])?"
    r"|0x([0-9a-f]{1,16})|([0-9a-f]{16}))$"
)
_TRACE_START = ("Call Trace:", "Call trace:")
_TRACE_MARK = re.compile(r"^</?(TASK|IRQ|SOFTIRQ|NMI|#[A-Z]+)>$")
# Lines of a register dump (also printed inside a trace at an exception frame).
_REGISTERS = re.compile(
    r"^(RIP|RSP|RAX|RDX|RBP|R10|R13|FS|CS|CR2|Code|DR0|DR3|PKRU|pc|lr|sp|x\d+)\s*:"
)
_MODULES = "Modules linked in:"


@dataclass(frozen=True)
class Frame:
    """One ``func+0xoff/0xsize [module]`` (or a bare address) from a report."""

    symbol: str | None
    offset: int = 0
    size: int = 0
    module: str | None = None
    address: int | None = None  # a bare address, when the kernel had no symbol
    guessed: bool = False  # printed with '?': the unwinder is not sure

    def __str__(self) -> str:
        mark = "? " if self.guessed else ""
        if self.symbol is None:
            return f"{mark}{self.address:#x}"
        mod = f" [{self.module}]" if self.module else ""
        return f"{mark}{self.symbol}+{self.offset:#x}/{self.size:#x}{mod}"


@dataclass(frozen=True)
class Report:
    """The last crash report of a console log, as the kernel printed it."""

    headline: str
    lines: tuple[str, ...]  # the report without timestamps
    time: float | None  # the kernel's timestamp (seconds since that boot)
    boot: int  # which boot in the log (1 = the first)
    rebooted: bool  # the VM booted again after it
    pid: int | None
    comm: str | None
    pc: Frame | None
    trace: tuple[Frame, ...]
    modules: tuple[str, ...]  # "Modules linked in"
    panic: str | None  # the panic message, if it panicked

    @property
    def kind(self) -> str:
        """'panic' (the VM went down), else 'oops' (the task died, the VM lives on)."""
        return "panic" if self.panic is not None else "oops"


def parse_frame(text: str) -> Frame | None:
    """``? func+0x1f/0x30 [mod]`` (or ``0xffffffffa0001234``) as a Frame; None if it is none."""
    m = _FRAME.match(text.strip())
    if not m:
        return None
    guessed, sym, off, size, mod, addr, bare = m.groups()
    if sym is None:
        return Frame(None, address=int(addr or bare, 16), guessed=bool(guessed))
    return Frame(sym, int(off, 16), int(size, 16), mod, guessed=bool(guessed))


def _split(text: str) -> list[tuple[float | None, str]]:
    out = []
    for raw in text.replace("\r", "").split("\n"):
        m = _STAMP.search(raw)
        if m:
            out.append((float(m.group(1)), raw[m.end() :].rstrip()))
        else:
            out.append((None, raw.rstrip()))
    return out


def last_report(text: str) -> Report | None:
    """The last Oops/BUG/panic in ``text`` (a console log), or None if there is none."""
    lines = _split(text)
    boot = 0
    blocks: list[dict] = []  # start, end (exclusive), boot, panic
    current: dict | None = None
    for i, (_t, msg) in enumerate(lines):
        if msg.startswith(_BOOT):
            boot += 1
            if current:
                current["end"] = i
                current = None
            continue
        if current is not None:
            if msg.startswith(_END):
                current["end"] = i + 1
                current = None
            elif msg.startswith(_PANIC) and current["panic"] is None:
                current["panic"] = msg[len(_PANIC) :]
            continue
        if not _HEADLINE.match(msg):
            continue
        fatal = msg.startswith(_PANIC) and _FATAL.match(msg[len(_PANIC) :])
        if fatal and blocks and blocks[-1]["boot"] == boot:
            blocks[-1]["panic"] = msg[len(_PANIC) :]  # the oops before it panicked
            continue
        current = {"start": i, "end": len(lines), "boot": boot, "panic": None}
        if msg.startswith(_PANIC):
            current["panic"] = msg[len(_PANIC) :]
        blocks.append(current)
    if not blocks:
        return None
    b = blocks[-1]
    part = lines[b["start"] : b["end"]]
    return _read_block(part, max(b["boot"], 1), b["boot"] < boot, b["panic"])


def _read_block(part, boot: int, rebooted: bool, panic: str | None) -> Report:
    msgs = [m for _t, m in part]
    pid = comm = pc = lr = None
    trace: list[Frame] = []
    modules: tuple[str, ...] = ()
    in_trace = False
    for msg in msgs:
        text = msg.strip()
        if in_trace:
            frame = parse_frame(text)
            if frame is not None:
                trace.append(frame)
                continue
            if _TRACE_MARK.match(text) or _REGISTERS.match(text) or not text:
                continue
            in_trace = False
        if text in _TRACE_START:
            in_trace = True
        elif pid is None and (m := _WHO.search(text)):
            pid, comm = int(m.group(1)), m.group(2).strip()
        elif pc is None and (m := _PC.match(text)):
            pc = parse_frame(m.group(1))
        elif lr is None and (m := _LR.match(text)):
            lr = parse_frame(m.group(1))
        elif text.startswith(_MODULES):
            names = text[len(_MODULES) :].split("[last unloaded")[0].split()
            modules = tuple(re.sub(r"\(.*\)$", "", w) for w in names)
        if text.startswith(_END):
            break
    if pc is not None and trace and trace[0] == pc:
        trace.pop(0)  # arm64's trace starts with the faulting frame itself
    if lr is not None and pc is not None and lr.symbol != pc.symbol and trace[:1] != [lr]:
        # arm64: a leaf function saves no frame record, so its caller is only in lr.
        trace.insert(0, lr)
    return Report(
        headline=msgs[0],
        lines=tuple(msgs),
        time=part[0][0],
        boot=boot,
        rebooted=rebooted,
        pid=pid,
        comm=comm,
        pc=pc,
        trace=tuple(trace),
        modules=modules,
        panic=panic,
    )

"""``labvm oops``: the VM's last Oops/BUG/panic, decoded to lines of source.

The report comes from the VM's console log (``LAB_VM_CONSOLE_LOG``: QEMU
writes it on the host, so it survives a panic), or, where a backend keeps
none, from the kernel log over ssh while the VM still runs (``oopsparse``
finds it, ``oopsdecode`` turns its frames into lines). This module says it
in the student's terms: ``render`` for ``labvm oops``, ``summary`` for one
sentence in a check's message or an insmod error (both pure), and the thin
entry points ``labvm``, ``LabVM.insmod`` and ``checks`` call.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from .lab import LabEnv, LabError, LabVM
from .oopsdecode import Decoded, DecodedFrame, Place, decode
from .oopsparse import Report, last_report

CONSOLE_READ_LIMIT = 16 << 20  # bytes of the console log's end that are searched


# -- pure: from decoded frames to what the student reads --------------------


def _under(path: str, root: str) -> bool:
    return bool(root) and (path == root or path.startswith(root.rstrip("/") + "/"))


def show_path(path: str, kernel_roots: tuple[str, ...], cwd: str, home: str) -> str:
    """A file name as short as it can be and still be found."""
    for root in kernel_roots:
        if _under(path, root):
            return os.path.relpath(path, root)
    if _under(path, cwd):
        return os.path.relpath(path, cwd)
    if _under(path, home):
        return "~/" + os.path.relpath(path, home)
    return path


def own_place(d: DecodedFrame, kernel_roots: tuple[str, ...]) -> Place | None:
    """The frame's place in the student's own code (not the kernel's, e.g.
    not a list.h helper inlined into it), else its innermost place."""
    for p in d.places:
        if p.line and not any(_under(p.file, r) for r in kernel_roots):
            return p
    return d.places[0] if d.places else None


_GCC_CLONE = re.compile(r"\.(constprop|isra|part|cold|lto_priv)(\.\d+)?")


def function_name(d: DecodedFrame, kernel_roots: tuple[str, ...] = ()) -> str:
    """The frame's function as its source names it: gcc's clones
    (``poke.constprop.0``) by their C name."""
    p = own_place(d, kernel_roots)
    if p is not None and p.function != "??":
        return p.function
    if d.frame.symbol is None:
        return f"{d.frame.address:#x}"
    return _GCC_CLONE.sub("", d.frame.symbol)


def _who(r: Report) -> str:
    parts = [f"In {r.comm} (pid {r.pid})"] if r.comm else []
    if r.time is not None:
        parts.append(f"{r.time:.2f} s after boot {r.boot} of the VM")
    text = ", ".join(parts)
    return text[:1].upper() + text[1:] + "." if text else ""


def render(
    d: Decoded,
    read_line: Callable[[str, int], str | None],
    kernel_roots: tuple[str, ...],
    cwd: str,
    home: str,
) -> str:
    """The whole explanation ``labvm oops`` prints."""
    r = d.report

    def where(p: Place | None) -> str:
        if p is None:
            return "?"
        return show_path(p.file, kernel_roots, cwd, home) + (f":{p.line}" if p.line else "")

    out = [r.headline] + ([f"  {_who(r)}"] if _who(r) else [])
    if r.panic is not None:
        after = ", and has restarted since" if r.rebooted else ""
        went = f"went down{after}: load your modules again."
        if r.headline.startswith("Kernel panic"):
            out.append(f"  The VM {went}")
        else:
            out.append(f"  Then the kernel panicked ({r.panic}): the VM {went}")
    elif r.rebooted:
        out.append("  The VM has restarted since.")
    top = d.pc
    if top is not None and top.frame.symbol is None and d.trace:
        # RIP 0x0 and the like: the caller is where the student's bug is.
        out.append(f"  The CPU was at {top.frame} ({top.note or 'no function'}).")
        top = d.trace[0]
    if top is not None:
        mod = f" in module {top.frame.module}" if top.frame.module else " (kernel code)"
        out += ["", f"Faulting function: {function_name(top, kernel_roots)}(){mod}"]
        p = own_place(top, kernel_roots)
        if p is None:
            out.append(f"  not decoded: {top.note}")
        else:
            inner = top.places[0]
            if inner is not p:
                out.append(
                    f"  in {inner.function}() at {where(inner)}, inlined into {p.function}()"
                )
            out.append(f"  at {where(p)}")
            text = read_line(p.file, p.line) if p.line else None
            if text is not None:
                out.append(f"  {p.line:>5} | {text.strip()}")
        if not top.frame.module:
            mine = next((f for f in d.trace if f.frame.module and f.places), None)
            if mine is not None:
                q = own_place(mine, kernel_roots)
                name = function_name(mine, kernel_roots)
                called = f"{name}() at {where(q)} [{mine.frame.module}]"
                out.append(f"  called from your {called}")
    elif not d.trace and r.panic is not None:
        out += [
            "",
            "The kernel printed no call trace with this panic (the course kernel shows "
            "none for a direct panic() call): its message is the clue.",
        ]
    rows = ([d.pc] if d.pc is not None else []) + list(d.trace)
    if rows:
        guessed = any(f.frame.guessed for f in rows)
        legend = "; ? = a frame the unwinder only guessed from the stack" if guessed else ""
        out += ["", f"Call chain (innermost first{legend}):"]
        names = [function_name(f, kernel_roots) for f in rows]
        width = max(len(n) for n in names)
        for f, name in zip(rows, names, strict=True):
            loc = where(own_place(f, kernel_roots)) if f.places else f"({f.note})"
            mod = f"  [{f.frame.module}]" if f.frame.module else ""
            out.append(f"  {'?' if f.frame.guessed else ' '} {name:<{width}}  {loc}{mod}")
    for name in d.panic_from:
        out.append(f"  The message is in your module {name}: look for its panic() call.")
    if d.notes:
        out += [""] + [f"Note: {n}" for n in d.notes]
    return "\n".join(out) + "\n"


def summary(d: Decoded, read_line, kernel_roots: tuple[str, ...], cwd: str, home: str) -> str:
    """One sentence for a check's failure message: what, where, called from where."""
    r = d.report
    top = d.pc
    if top is not None and top.frame.symbol is None and d.trace:
        top = d.trace[0]
    text = r.headline
    if top is not None:
        p = own_place(top, kernel_roots)
        text += f" in {function_name(top, kernel_roots)}()"
        if p is not None and p.line:
            text += f" at {show_path(p.file, kernel_roots, cwd, home)}:{p.line}"
            src = read_line(p.file, p.line)
            if src and src.strip():
                text += f" (`{src.strip()[:80]}`)"
    callers = [function_name(f, kernel_roots) for f in d.trace if f.frame.symbol and f is not top]
    callers = callers[:3]
    if callers:
        text += ", called from " + " ← ".join(callers)
    if r.panic is not None:
        text += "; the kernel panicked and the VM restarted"
    return text + ". `labvm oops` in a terminal shows the whole trace."


# -- the thin part: what labvm, insmod and the checks call ------------------


def read_source_line(path: str, line: int) -> str | None:
    try:
        with open(path, errors="replace") as f:
            for i, text in enumerate(f, 1):
                if i == line:
                    return text.rstrip("\n")
    except OSError:
        return None
    return None


def kernel_roots(env: LabEnv) -> tuple[str, ...]:
    roots = [os.path.realpath(env.kdir)] if env.kdir else []
    if env.vmlinux:
        roots.append(os.path.dirname(os.path.realpath(env.vmlinux)))
    return tuple(dict.fromkeys(roots))


def console_text(path: str, since: int = 0) -> str:
    """The console log from byte ``since`` (at most its last CONSOLE_READ_LIMIT bytes)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(since, size - CONSOLE_READ_LIMIT))
        return f.read().decode(errors="replace")


def find_report(env: LabEnv) -> Report:
    """The last report the VM printed; LabError (one line) when there is none to show."""
    if not env.console_log:
        vm = LabVM(env)
        if not vm.is_up():
            raise LabError(
                "This backend keeps no console log labvm can read, and the VM does not answer "
                "(after a panic its kernel log is gone); once it is back, `labvm oops` reads "
                "an oops that did not panic from its kernel log."
            )
        text = vm.dmesg()
        where = "the VM's kernel log (this backend keeps no console log for labvm)"
    else:
        if not os.path.exists(env.console_log) or os.path.getsize(env.console_log) == 0:
            raise LabError(
                f"The VM has not started yet (its console log {env.console_log} is "
                f"{'empty' if os.path.exists(env.console_log) else 'not there'}); "
                "`labvm status` says whether it is up."
            )
        text = console_text(env.console_log)
        where = "the VM's console log since this server started"
    report = last_report(text)
    if report is None:
        raise LabError(f"No Oops, BUG or panic in {where}: the kernel has not crashed.")
    return report


def explain(env: LabEnv, cwd: str | None = None) -> str:
    """What ``labvm oops`` prints."""
    report = find_report(env)
    d = decode(report, env.vmlinux, env.arch)
    home = os.path.expanduser("~")
    return render(d, read_source_line, kernel_roots(env), cwd or os.getcwd(), home)


def console_offset(env: LabEnv) -> int | None:
    """Where the console log ends now (None without one): ``oops_since`` looks after it."""
    if not env.console_log:
        return None
    try:
        return os.path.getsize(env.console_log)
    except OSError:
        return 0


def report_since(env: LabEnv, offset: int | None) -> Report | None:
    """The last report the VM printed on its console after ``offset`` (None if
    none, or without a console log)."""
    if offset is None or not env.console_log:
        return None
    try:
        return last_report(console_text(env.console_log, offset))
    except OSError:
        return None


def describe(env: LabEnv, report: Report) -> str:
    """One sentence on ``report``. Never raises: a report that cannot be
    decoded is given as the kernel said it."""
    try:
        d = decode(report, env.vmlinux, env.arch)
    except LabError:
        where = f" at {report.pc}" if report.pc else ""
        return f"{report.headline}{where}. `labvm oops` in a terminal shows the whole trace."
    return summary(d, read_source_line, kernel_roots(env), os.getcwd(), os.path.expanduser("~"))


def oops_since(env: LabEnv, offset: int | None) -> str | None:
    """One sentence on an oops the VM printed on its console after ``offset``
    (None if none, or without a console log). Never raises."""
    report = report_since(env, offset)
    return describe(env, report) if report is not None else None

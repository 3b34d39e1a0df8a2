"""Check helpers for the lab notebooks: failures a student can read.

A check cell looks like::

    with checks.check("lab1.wordcount"):
        out = checks.vm().run("sh /root/wordcount.sh /root/words.txt", check=False)
        checks.expect_equal(out.stdout.strip(), "3", "wordcount.sh's output on words.txt")

Whatever goes wrong inside ``check`` (a wrong answer, a module that does
not build, an unreachable VM) ends as one ``CheckFailed`` whose message
says what was expected and what was seen, in one or two sentences. The
library frames are hidden from IPython's traceback (``__tracebackhide__``),
so a student sees the cell line and the message, not our internals.
nbgrader counts a grade cell as failed when it raises, so this is also
what autograding sees.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from . import oops
from .arch import c_compiler
from .lab import LabEnv, LabError, LabVM

_SHOW = 160  # characters of a seen value shown in a message


class CheckFailed(AssertionError):
    """A check that did not pass; ``str()`` is the whole explanation."""

    def _render_traceback_(self):  # IPython shows exactly this instead of a traceback
        return [f"\x1b[0;31mCheckFailed\x1b[0m: {self}"]


def short(value, limit: int = _SHOW) -> str:
    """``value`` as one line of at most ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split()) if "\n" in text else text
    return text if len(text) <= limit else text[: limit - 1] + "…"


REPORT_TIMEOUT = 2.0  # seconds a check may wait for the lab manager, at most


def report(check_id: str, passed: bool, message: str = "") -> None:
    """Record how a check went on the lab manager (the instructors' *Lab
    progress* grid), as this student: ``lab0.vm_reachable`` is check
    ``vm_reachable`` of ``lab0``. Nothing without ``LAB_MANAGER_URL``.

    It never raises and never holds a check up for more than
    ``REPORT_TIMEOUT``: a result that could not be sent is one line on the
    notebook server's log (the kernel's own stderr, not the cell's output),
    where an instructor looking for a missing result finds why."""
    if not os.environ.get("LAB_MANAGER_URL"):
        return
    from .managerclient import ManagerError, report_check

    lab, _, name = check_id.partition(".")
    outcome: list[str] = []

    def send() -> None:
        try:
            # The request's own timeout is longer than the wait below, so a
            # hung manager is always told apart from one that refused.
            report_check(
                lab if name else "other",
                name or check_id,
                passed,
                short(message, 500),
                timeout=REPORT_TIMEOUT + 1,
            )
            outcome.append("")
        except ManagerError as e:
            outcome.append(str(e))

    # A thread, so that connecting and reading together stay within the limit.
    sender = threading.Thread(target=send, name="lab-manager-report", daemon=True)
    sender.start()
    sender.join(REPORT_TIMEOUT)
    why = outcome[0] if outcome else f"no answer from the lab manager in {REPORT_TIMEOUT:g} s"
    if why:
        print(
            f"kubevirt_spawner.checks: result of {check_id} not reported: {why}",
            file=sys.__stderr__,
            flush=True,
        )


def _console_watch() -> tuple[LabEnv, int | None] | None:
    """This server's VM and where its console log ends now, to find an oops later."""
    try:
        env = LabEnv.from_environ()
    except LabError:
        return None
    return env, oops.console_offset(env)


def with_oops(message: str, watch: tuple[LabEnv, int | None] | None) -> str:
    """``message``, led by the decoded oops if the VM's kernel crashed since ``watch``."""
    if watch is None or "crashed the kernel" in message:
        return message  # no VM, or insmod has said it already
    crash = oops.oops_since(*watch)
    if crash is None:
        return message
    return f"Your VM's kernel crashed during this check: {crash} (The check saw: {message})"


@contextmanager
def check(check_id: str, passed_message: str = ""):
    """Run a check; turn any failure into one ``CheckFailed`` and report the result.

    When the VM's kernel oopsed or panicked while the check ran, the message
    starts with the decoded oops: what, the function and line, its callers."""
    __tracebackhide__ = True
    watch = _console_watch()
    try:
        yield
    except (CheckFailed, LabError) as e:
        msg = str(e)
    except NotImplementedError:
        msg = (
            "Not done yet: your code still raises NotImplementedError; replace that line "
            "with your solution and run its cell again."
        )
    except NameError as e:
        name = getattr(e, "name", None) or str(e)
        msg = (
            f"`{name}` is not defined yet: do the TODO (or pass the check) that sets it, "
            "then run the cells above this one, top to bottom."
        )
    except (AttributeError, TypeError, ValueError, KeyError, OSError) as e:
        # Usually: the student has not run (or finished) an earlier cell.
        msg = f"{type(e).__name__}: {e}. Run the cells above this one (top to bottom) first."
    else:
        report(check_id, True, passed_message)
        print(f"✔ {check_id} passed" + (f": {passed_message}" if passed_message else ""))
        return
    msg = with_oops(msg, watch)
    report(check_id, False, msg)
    raise CheckFailed(msg) from None


def fail(message: str):
    __tracebackhide__ = True
    raise CheckFailed(message)


def expect(condition: bool, message: str) -> None:
    __tracebackhide__ = True
    if not condition:
        raise CheckFailed(message)


def expect_equal(seen, expected, what: str) -> None:
    """``seen == expected``, else: "<what>: expected X, but saw Y." """
    __tracebackhide__ = True
    if seen != expected:
        said = "nothing" if seen in ("", None) else short(seen)
        raise CheckFailed(f"{what}: expected {short(expected)!s}, but saw {said}.")


def expect_in(needle: str, haystack: str, what: str) -> None:
    __tracebackhide__ = True
    if needle not in haystack:
        seen = short(haystack) if haystack.strip() else "nothing"
        raise CheckFailed(f"{what}: expected to find {needle!r}, but saw {seen}.")


def expect_match(pattern: str, text: str, what: str) -> re.Match:
    __tracebackhide__ = True
    m = re.search(pattern, text, re.M)
    if not m:
        seen = short(text) if text.strip() else "nothing"
        raise CheckFailed(f"{what}: expected a line matching {pattern!r}, but saw {seen}.")
    return m


# -- the student's VM and toolchain --------------------------------------


def vm() -> LabVM:
    """The student's VM (``CheckFailed`` if this server has none or it is down)."""
    __tracebackhide__ = True
    try:
        machine = LabVM(LabEnv.from_environ())
    except LabError as e:
        raise CheckFailed(str(e)) from None
    return machine


def _first_error(output: str) -> str:
    for line in output.splitlines():
        if re.search(r"\berror\b|undefined|No such file|\*\*\*", line):
            return line.strip()
    lines = [ln for ln in output.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "no output"


def compile_program(
    source: str | os.PathLike, output: str | os.PathLike | None = None, flags: tuple[str, ...] = ()
) -> Path:
    """Compile a C program for the VM (static, so it needs nothing there); return the binary.

    For a VM of another arch than the notebook's (``LAB_ARCH=aarch64`` on an
    x86_64 host) it cross-compiles with aarch64-linux-gnu-gcc.
    """
    __tracebackhide__ = True
    src = Path(source)
    if not src.is_file():
        raise CheckFailed(f"{src} does not exist yet: run the cell that writes it first.")
    out = Path(output) if output else src.with_suffix("")
    try:
        cc = c_compiler(os.environ.get("LAB_ARCH") or platform.machine(), platform.machine())
    except ValueError as e:
        raise CheckFailed(f"LAB_ARCH names no VM this notebook can compile for: {e}.") from None
    try:
        proc = subprocess.run(
            [cc, "-static", "-O1", "-Wall", "-o", str(out), str(src), *flags],
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        raise CheckFailed(
            f"The compiler {cc} is not installed in this notebook environment."
        ) from None
    if proc.returncode != 0:
        raise CheckFailed(f"{src.name} does not compile: {_first_error(proc.stderr)}")
    return out


def build_module(directory: str | os.PathLike = ".", kdir: str | None = None) -> Path:
    """``make -C $LAB_KDIR M=directory modules``; return the one .ko built."""
    __tracebackhide__ = True
    d = Path(directory).resolve()
    kdir = kdir or os.environ.get("LAB_KDIR")
    if not kdir:
        raise CheckFailed("LAB_KDIR is not set: this server has no kernel build tree.")
    proc = subprocess.run(
        ["make", "-s", "-C", kdir, f"M={d}", "modules"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise CheckFailed(
            f"The module in {d.name}/ does not build: {_first_error(proc.stderr + proc.stdout)}"
        )
    kos = sorted(d.glob("*.ko"), key=lambda p: p.stat().st_mtime)
    if not kos:
        raise CheckFailed(
            f"make succeeded but built no .ko in {d.name}/ (is obj-m set in Kbuild?)."
        )
    return kos[-1]


def module_loaded(machine: LabVM, name: str) -> bool:
    out = machine.run("cat /proc/modules", check=False).stdout
    return any(line.split(" ", 1)[0] == name for line in out.splitlines())


def unload_if_loaded(machine: LabVM, name: str) -> None:
    """rmmod ``name`` if a previous run left it loaded (so a check can re-run)."""
    if module_loaded(machine, name):
        machine.run(f"rmmod {shlex.quote(name)}", check=False, timeout=60)


def fresh_insmod(machine: LabVM, ko: Path, *params: str) -> str:
    """Unload an old copy, load ``ko``; return the kernel log lines it added."""
    __tracebackhide__ = True
    unload_if_loaded(machine, ko.stem.replace("-", "_"))
    return machine.insmod(ko, *params)


def make_kernel(tree: str | os.PathLike, *targets: str) -> float:
    """``make -jN TARGETS`` in a kernel tree (lab 4); return the seconds it took."""
    __tracebackhide__ = True
    import time

    t0 = time.monotonic()
    proc = subprocess.run(
        ["make", "-s", f"-j{os.cpu_count() or 1}", *targets],
        cwd=tree,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise CheckFailed(f"The kernel does not build: {_first_error(proc.stderr + proc.stdout)}")
    return time.monotonic() - t0

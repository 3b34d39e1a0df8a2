"""Finding the last oops in a console log, on logs captured from the course VM.

data/oops/x86_64-null-bugon-kthread-panic.log: one boot of the x86_64
course guest (6.1.192-lab, TCG) in which three modules were loaded: a NULL
write in a function called by module_init (oops #1, in insmod), a BUG_ON
(oops #2: `invalid opcode`, the course kernel has no CONFIG_BUG), and a NULL
read in a kthread with panic_on_oops=1 (oops #3, then "Kernel panic - not
syncing: Fatal exception" and the next boot). data/oops/x86_64-fptr-strlen-panic.log:
a call through a NULL function pointer (RIP 0x0), strlen(NULL) from a
module (the fault is in the kernel's strlen), and panic() called in a
kthread (no call trace), then the next boot.
"""

from pathlib import Path

import pytest

from kubevirt_spawner.oopsparse import Frame, last_report, parse_frame

DATA = Path(__file__).parent / "data" / "oops"
LOG1 = (DATA / "x86_64-null-bugon-kthread-panic.log").read_text(errors="replace")
LOG2 = (DATA / "x86_64-fptr-strlen-panic.log").read_text(errors="replace")
ARM = (DATA / "aarch64-null-bugon-strlen-kthread-panic.log").read_text(errors="replace")


def upto(log: str, marker: str) -> str:
    """The log before the line holding ``marker`` (a console as it was then)."""
    return log[: log.rindex("\n", 0, log.index(marker)) + 1]


@pytest.mark.parametrize(
    "text, headline, pc, first_frames, comm, panic, rebooted",
    [
        pytest.param(
            upto(LOG1, "invalid opcode"),
            "BUG: kernel NULL pointer dereference, address: 0000000000000000",
            "poke.constprop.0+0x0/0x1000 [nullmod]",
            ["? do_one_initcall+0x73/0x13e", "? do_init_module+0x3f/0x1a1"],
            "insmod",
            None,
            False,
            id="null-write-in-insmod",
        ),
        pytest.param(
            upto(LOG1, "[    5.588315] BUG:"),
            "invalid opcode: 0000 [#2] SMP",
            # not the first oops's RIP, which x86 repeats after "end trace"
            "check_count+0x5/0x1000 [bugmod]",
            ["? bugmod_init+0xb/0x1000 [bugmod]", "? do_one_initcall+0x73/0x13e"],
            "insmod",
            None,
            False,
            id="bug-on-second-oops",
        ),
        pytest.param(
            LOG1,
            "BUG: kernel NULL pointer dereference, address: 0000000000000000",
            "consume_one+0xf/0x23 [ktpanic]",
            ["? consumer_fn+0xe/0x1d [ktpanic]", "? kthread+0xa6/0xae"],
            "tl_consumer",
            "Fatal exception",
            True,
            id="kthread-oops-panics-and-reboots",
        ),
        pytest.param(
            upto(LOG2, "[    4.274882] BUG:"),
            "BUG: kernel NULL pointer dereference, address: 0000000000000000",
            "0x0",
            ["? fptr_init+0x14/0x1000 [fptr]", "? do_one_initcall+0x73/0x13e"],
            "insmod",
            None,
            False,
            id="null-function-pointer",
        ),
        pytest.param(
            upto(LOG2, "panicmod: the list"),
            "BUG: kernel NULL pointer dereference, address: 0000000000000000",
            "strlen+0x3/0x11",
            ["? strmod_init+0xc/0x1000 [strmod]", "? do_one_initcall+0x73/0x13e"],
            "insmod",
            None,
            False,
            id="fault-in-kernel-called-by-module",
        ),
        pytest.param(
            upto(ARM, "[    7.771325]"),
            "Unable to handle kernel NULL pointer dereference at virtual address 0000000000000000",
            "poke.constprop.0+0x8/0x1000 [nullmod]",
            # the trace's own first line is the pc; the leaf's caller comes from lr
            ["nullmod_init+0x18/0x1000 [nullmod]", "do_one_initcall+0x6c/0x150"],
            "insmod",
            None,
            False,
            id="arm64-null-write",
        ),
        pytest.param(
            upto(ARM, "[   10.270071]"),
            "Internal error: Oops - BUG: 00000000f2000800 [#2] SMP",
            "check_count+0x8/0x1000 [bugmod]",
            ["bugmod_init+0x14/0x1000 [bugmod]", "do_one_initcall+0x6c/0x150"],
            "insmod",
            None,
            False,
            id="arm64-bug-on",
        ),
        pytest.param(
            ARM,
            "Unable to handle kernel NULL pointer dereference at virtual address 0000000000000000",
            "consume_one+0x20/0x3c [ktpanic]",
            ["consumer_fn+0x24/0x30 [ktpanic]", "kthread+0xb8/0xc8"],
            "tl_consumer",
            "Oops: Fatal exception",
            True,
            id="arm64-kthread-oops-panics",
        ),
        pytest.param(
            LOG2,
            "Kernel panic - not syncing: panicmod: the list is corrupted",
            None,
            [],
            None,
            "panicmod: the list is corrupted",
            True,
            id="direct-panic-no-trace",
        ),
    ],
)
def test_last_report(text, headline, pc, first_frames, comm, panic, rebooted):
    r = last_report(text)
    assert r.headline == headline
    assert (str(r.pc) if r.pc else None) == pc
    assert [str(f) for f in r.trace[: len(first_frames)]] == first_frames
    assert r.comm == comm
    assert r.panic == panic
    assert r.rebooted is rebooted
    assert r.kind == ("panic" if panic else "oops")
    assert r.boot == 1


def test_report_details():
    r = last_report(LOG1)
    assert r.pid == 94 and r.time == pytest.approx(5.588315)
    assert r.modules == ("ktpanic", "bugmod", "nullmod")
    assert [str(f) for f in r.trace][-1] == "? ret_from_fork+0x1f/0x30"
    assert r.lines[0] == r.headline and r.lines[-1].startswith("---[ end trace")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param(upto(LOG1, "nullmod: loading"), id="clean-boot"),
        pytest.param("nullmod: BUG: my own message\n", id="module-text-is-no-headline"),
    ],
)
def test_no_report(text):
    assert last_report(text) is None


@pytest.mark.parametrize(
    "text, frame",
    [
        pytest.param(
            "? consumer_fn+0xe/0x1d [ktpanic]",
            Frame("consumer_fn", 0xE, 0x1D, "ktpanic", guessed=True),
            id="module",
        ),
        pytest.param("kthread+0xa6/0xae", Frame("kthread", 0xA6, 0xAE), id="kernel"),
        pytest.param(
            "poke.constprop.0+0x0/0x1000 [nullmod]",
            Frame("poke.constprop.0", 0, 0x1000, "nullmod"),
            id="gcc-clone-name",
        ),
        pytest.param("f+0x1/0x2 [m 0123abcd]", Frame("f", 1, 2, "m"), id="build-id"),
        pytest.param("0x0", Frame(None, address=0), id="null"),
        pytest.param(
            "? ffffffffa0005000",
            Frame(None, address=0xFFFFFFFFA0005000, guessed=True),
            id="bare-address",
        ),
        pytest.param("Modules linked in: x", None, id="not-a-frame"),
        pytest.param("</TASK>", None, id="marker"),
    ],
)
def test_parse_frame(text, frame):
    assert parse_frame(text) == frame

"""Turning oops frames into file:line (pure parts), the records `labvm insmod`
keeps, the ELF reader, and `labvm oops`'s one-line errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubevirt_spawner import modrecords
from kubevirt_spawner.elfsyms import ELFError, ELFSymbols, Section, Symbol, read_symbols
from kubevirt_spawner.modrecords import ModuleRecord
from kubevirt_spawner.oops import render, show_path, summary
from kubevirt_spawner.oopsdecode import (
    Decoded,
    DecodedFrame,
    LoadedModule,
    Lookup,
    Place,
    parse_addr2line,
    plan,
)
from kubevirt_spawner.oopsparse import Frame, last_report

DATA = Path(__file__).parent / "data" / "oops"
LOG1 = DATA / "x86_64-null-bugon-kthread-panic.log"

KERNEL = ELFSymbols(
    sections=(Section(".text", 0xFFFFFFFF81000000, 0x600000, True),),
    functions={
        "kthread": (Symbol("kthread", 0xFFFFFFFF8104E4B5, 0xAE, ".text"),),
        # two static functions of one name: the offset picks the one it fits in
        "helper": (
            Symbol("helper", 0xFFFFFFFF81001000, 0x10, ".text"),
            Symbol("helper", 0xFFFFFFFF81002000, 0x80, ".text"),
        ),
    },
)
MOD = LoadedModule(
    ModuleRecord(
        "ktpanic",
        "/home/s/lab5/ktpanic.ko",
        "/state/ktpanic.ko",
        "0" * 64,
        0.0,
        {".text": 0xFFFFFFFFA0010000, ".init.text": 0xFFFFFFFFA0014000},
    ),
    ELFSymbols(
        sections=(Section(".text", 0, 0x40, True), Section(".init.text", 0, 0x37, True)),
        functions={
            "consume_one": (Symbol("consume_one", 0, 0x23, ".text"),),
            "consumer_fn": (Symbol("consumer_fn", 0x23, 0x1D, ".text"),),
            "ktpanic_init": (Symbol("ktpanic_init", 0, 0x37, ".init.text"),),
        },
    ),
)


@pytest.mark.parametrize(
    "frame, is_pc, expected",
    [
        pytest.param(
            Frame("consume_one", 0xF, 0x23, "ktpanic"),
            True,
            Lookup("/state/ktpanic.ko", ".text", 0xF),
            id="module-pc-exact",
        ),
        pytest.param(
            Frame("consumer_fn", 0xE, 0x1D, "ktpanic", guessed=True),
            False,
            Lookup("/state/ktpanic.ko", ".text", 0x23 + 0xE - 1),
            id="module-return-address-one-back",
        ),
        pytest.param(
            Frame("ktpanic_init", 0x10, 0x1000, "ktpanic"),
            False,
            Lookup("/state/ktpanic.ko", ".init.text", 0xF),
            id="init-section",
        ),
        pytest.param(
            Frame("kthread", 0xA6, 0xAE),
            False,
            Lookup("", None, 0xFFFFFFFF8104E4B5 + 0xA5),
            id="kernel",
        ),
        pytest.param(
            Frame("helper", 0x40, 0x80),
            True,
            Lookup("", None, 0xFFFFFFFF81002040),
            id="same-name-by-offset",
        ),
        pytest.param(
            Frame(None, address=0xFFFFFFFFA0014005),
            True,
            Lookup("/state/ktpanic.ko", ".init.text", 5),
            id="bare-in-module",
        ),
        pytest.param(
            Frame(None, address=0xFFFFFFFF81000010),
            True,
            Lookup("", None, 0xFFFFFFFF81000010),
            id="bare-in-kernel",
        ),
        pytest.param(
            Frame(None, address=0), True, "a call through a NULL function pointer", id="null-pc"
        ),
        pytest.param(
            Frame(None, address=0xFFFF888000000000),
            True,
            "in no code labvm knows",
            id="bare-elsewhere",
        ),
        pytest.param(
            Frame("f", 1, 2, "other"),
            False,
            "was not loaded with `labvm insmod`",
            id="module-not-recorded",
        ),
        pytest.param(
            Frame("gone", 1, 2, "ktpanic"),
            False,
            "gone is not in ktpanic.ko",
            id="symbol-not-in-module",
        ),
        pytest.param(Frame("nosuch", 1, 2), False, "not in vmlinux", id="symbol-not-in-kernel"),
    ],
)
def test_plan(frame, is_pc, expected):
    got = plan(frame, is_pc, KERNEL, {"ktpanic": MOD})
    if isinstance(expected, str):
        assert isinstance(got, str) and expected in got
    else:
        assert got == expected


# addr2line -a -f -i -j .text -e ktpanic.ko 0x0 0xf, and one address without lines
ADDR2LINE_OUT = """0x0000000000000000
list_empty
/k/./include/linux/list.h:299
consume_one
/tmp/oopslab/ktpanic/ktpanic.c:16
0x000000000000000f
consume_one
/tmp/oopslab/ktpanic/ktpanic.c:17 (discriminator 1)
0x0000000000000010
__per_cpu_start
??:?
"""


def test_parse_addr2line_inline_chain_and_unknowns():
    assert parse_addr2line(ADDR2LINE_OUT) == {
        0: (
            Place("list_empty", "/k/include/linux/list.h", 299),
            Place("consume_one", "/tmp/oopslab/ktpanic/ktpanic.c", 16),
        ),
        0xF: (Place("consume_one", "/tmp/oopslab/ktpanic/ktpanic.c", 17),),
        0x10: (),
    }


@pytest.mark.parametrize(
    "path, shown",
    [
        pytest.param("/k/kernel/kthread.c", "kernel/kthread.c", id="kernel-tree"),
        pytest.param("/home/s/lab5/x/m.c", "x/m.c", id="below-cwd"),
        pytest.param("/home/s/other/m.c", "~/other/m.c", id="home"),
        pytest.param("/tmp/m.c", "/tmp/m.c", id="elsewhere"),
    ],
)
def test_show_path(path, shown):
    assert show_path(path, ("/k",), "/home/s/lab5", "/home/s") == shown


SOURCE = {("/home/s/lab5/ktpanic.c", 16): "\tif (list_empty(&entries))  "}


def _decoded(report=None, pc_places=None, notes=()):
    report = report or last_report(LOG1.read_text(errors="replace"))
    pc = DecodedFrame(report.pc, pc_places or (), "" if pc_places else "no line information")
    trace = (
        DecodedFrame(report.trace[0], (Place("consumer_fn", "/home/s/lab5/ktpanic.c", 23),)),
        DecodedFrame(report.trace[1], (Place("kthread", "/k/kernel/kthread.c", 376),)),
    ) + tuple(DecodedFrame(f, (), "no line information") for f in report.trace[2:])
    return Decoded(report, pc, trace, notes)


INLINED = (
    Place("list_empty", "/k/include/linux/list.h", 299),
    Place("consume_one", "/home/s/lab5/ktpanic.c", 16),
)


def test_render_names_the_students_line_even_when_inlined():
    text = render(
        _decoded(pc_places=INLINED, notes=("x was rebuilt",)),
        lambda f, n: SOURCE.get((f, n)),
        ("/k",),
        "/home/s/lab5",
        "/home/s",
    )
    lines = text.splitlines()
    assert lines[0] == "BUG: kernel NULL pointer dereference, address: 0000000000000000"
    assert "In tl_consumer (pid 94), 5.59 s after boot 1 of the VM." in lines[1]
    assert "Then the kernel panicked (Fatal exception)" in lines[2] and "restarted" in lines[2]
    assert "Faulting function: consume_one() in module ktpanic" in lines
    assert "  in list_empty() at include/linux/list.h:299, inlined into consume_one()" in lines
    assert "  at ktpanic.c:16" in lines
    assert "     16 | if (list_empty(&entries))" in lines
    chain = lines[lines.index(next(ln for ln in lines if ln.startswith("Call chain"))) + 1 :]
    assert chain[0].split() == ["consume_one", "ktpanic.c:16", "[ktpanic]"]
    assert chain[1].split() == ["?", "consumer_fn", "ktpanic.c:23", "[ktpanic]"]
    assert chain[2].split() == ["?", "kthread", "kernel/kthread.c:376"]
    assert "Note: x was rebuilt" in lines


def test_summary_is_one_sentence_with_line_and_callers():
    s = summary(
        _decoded(pc_places=INLINED),
        lambda f, n: SOURCE.get((f, n)),
        ("/k",),
        "/home/s/lab5",
        "/home/s",
    )
    assert "\n" not in s
    assert s.startswith("BUG: kernel NULL pointer dereference, address: 0000000000000000 in ")
    assert "consume_one() at ktpanic.c:16 (`if (list_empty(&entries))`)" in s
    assert "called from consumer_fn ← kthread ← kthread_complete_and_exit" in s
    assert "the kernel panicked and the VM restarted" in s
    assert s.endswith("`labvm oops` in a terminal shows the whole trace.")


# -- what labvm insmod keeps ------------------------------------------------


def test_sections_are_parsed_from_sysfs_listing():
    out = (
        ".init.text:0xffffffffa0005000\n.text.unlikely:0xffffffffa0000000\n"
        "grep: .: Is a directory\n.note.Linux:0xffffffffa0001024\n"
    )
    assert modrecords.parse_sections(out) == {
        ".init.text": 0xFFFFFFFFA0005000,
        ".text.unlikely": 0xFFFFFFFFA0000000,
        ".note.Linux": 0xFFFFFFFFA0001024,
    }


@pytest.mark.parametrize(
    "ko, name",
    [
        pytest.param("/x/hello_mod.ko", "hello_mod", id="plain"),
        pytest.param("my-mod.ko", "my_mod", id="dash"),
    ],
)
def test_module_name(ko, name):
    assert modrecords.module_name(ko) == name


def test_remember_keeps_a_copy_and_sections(tmp_path):
    ko = tmp_path / "src" / "my-mod.ko"
    ko.parent.mkdir()
    ko.write_bytes(b"first build")
    state = tmp_path / "state"
    rec = modrecords.remember(ko, state)
    assert modrecords.load("my_mod", state) is None  # not loaded yet
    modrecords.commit(rec, {".text": 0xFFFFFFFFA0000000})
    ko.write_bytes(b"rebuilt")  # the student rebuilds after loading
    kept = modrecords.load("my_mod", state)
    assert Path(kept.copy).read_bytes() == b"first build"
    assert kept.name == "my_mod" and kept.source == str(ko)
    assert kept.sections == {".text": 0xFFFFFFFFA0000000} and kept.sha256 == rec.sha256
    assert modrecords.load("never_loaded", state) is None


def test_a_refused_load_leaves_the_loaded_modules_record(tmp_path):
    ko = tmp_path / "m.ko"
    state = tmp_path / "state"
    ko.write_bytes(b"the one that loaded")
    modrecords.commit(modrecords.remember(ko, state), {".text": 1})
    ko.write_bytes(b"refused: File exists")
    modrecords.discard(modrecords.remember(ko, state))
    kept = modrecords.load("m", state)
    assert Path(kept.copy).read_bytes() == b"the one that loaded" and kept.sections == {".text": 1}
    assert sorted(p.name for p in state.iterdir()) == ["m.json", "m.ko"]


def test_state_dir_follows_xdg():
    assert modrecords.state_dir({"XDG_STATE_HOME": "/s"}) == Path("/s/labvm/modules")


# -- the ELF reader -----------------------------------------------------------


def test_read_symbols_of_an_object(tmp_path):
    src = tmp_path / "m.c"
    src.write_text(
        "static int __attribute__((noinline)) twice(int x) { return 2 * x; }\n"
        '__attribute__((section(".init.text"))) int start(int x) { return twice(x) + 1; }\n'
    )
    subprocess.run(["gcc", "-O1", "-c", "-o", tmp_path / "m.o", src], check=True)
    syms = read_symbols(tmp_path / "m.o")
    assert syms.functions["twice"][0].section == ".text"
    assert syms.functions["start"][0].section == ".init.text"
    assert syms.functions["start"][0].value == 0 and syms.functions["start"][0].size > 0
    assert {s.name for s in syms.sections if s.executable} >= {".text", ".init.text"}


@pytest.mark.parametrize(
    "data, message",
    [
        pytest.param(b"not an elf file", "is not an ELF file", id="text"),
        pytest.param(b"\x7fELF\x01\x01" + bytes(60), "not a 64-bit little-endian", id="elf32"),
        pytest.param(b"", "cannot read", id="empty"),
    ],
)
def test_read_symbols_bad_input(tmp_path, data, message):
    f = tmp_path / "x.ko"
    f.write_bytes(data)
    with pytest.raises(ELFError, match=message):
        read_symbols(f)


# -- labvm oops: one line for each way there is nothing to decode ------------

VM_ENV = {
    "LAB_VM_HOST": "127.0.0.1",
    "LAB_VM_SSH_PORT": "1",  # nothing listens on port 1
    "LAB_GDB_REMOTE": "| true",
    "LAB_ARCH": "x86_64",
    "LAB_SSH_KEY": "/nonexistent/key",
    "LAB_SSH_KNOWN_HOSTS": "/dev/null",
}


def labvm_oops(env, tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    base["XDG_STATE_HOME"] = str(tmp_path / "state")
    return subprocess.run(
        [sys.executable, "-m", "kubevirt_spawner.labvm", "oops"],
        env={**base, **VM_ENV, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line_error(r, *words):
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("labvm: "), r.stderr
    for w in words:
        assert w in lines[0]


def test_oops_vm_never_started(tmp_path):
    r = labvm_oops({"LAB_VM_CONSOLE_LOG": str(tmp_path / "console.log")}, tmp_path)
    one_line_error(r, "The VM has not started yet", "not there")
    (tmp_path / "console.log").write_bytes(b"")
    r = labvm_oops({"LAB_VM_CONSOLE_LOG": str(tmp_path / "console.log")}, tmp_path)
    one_line_error(r, "The VM has not started yet", "empty")


def test_oops_no_oops_in_log(tmp_path):
    log = tmp_path / "console.log"
    text = LOG1.read_text(errors="replace")
    log.write_text(text[: text.index("nullmod: loading")])
    r = labvm_oops({"LAB_VM_CONSOLE_LOG": str(log)}, tmp_path)
    one_line_error(r, "No Oops, BUG or panic in the VM's console log")


def test_oops_missing_vmlinux(tmp_path):
    r = labvm_oops(
        {"LAB_VM_CONSOLE_LOG": str(LOG1), "LAB_VMLINUX": str(tmp_path / "vmlinux")}, tmp_path
    )
    one_line_error(r, "The course vmlinux", "is missing")


def test_oops_without_console_log_and_vm_down(tmp_path):
    r = labvm_oops({"LAB_BACKEND": "kubevirt"}, tmp_path)
    one_line_error(r, "keeps no console log", "does not answer")


def test_oops_no_vm(tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    r = subprocess.run(
        [sys.executable, "-m", "kubevirt_spawner.labvm", "oops"],
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
    )
    one_line_error(r, "This server has no VM")


def test_oops_help():
    r = subprocess.run(
        [sys.executable, "-m", "kubevirt_spawner.labvm", "oops", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "--raw" in r.stdout and "labvm insmod" in r.stdout

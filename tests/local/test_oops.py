"""`labvm oops` on a real VM: a student's module crashes the course kernel and
`labvm oops` (run as the student runs it, with the server's LAB_* environment)
names the function, the line of the student's file and that line.

The modules are built as a notebook builds them (`make -C $LAB_KDIR M=DIR
modules`) and loaded with `labvm insmod`; the line each test expects is the
one marked in its source. The x86_64 tests share one VM; the kthread panic,
which reboots it, runs last of them; the arm64 one has its own VM.
"""

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubevirt_spawner import checks, oops
from kubevirt_spawner.arch import toolchain_env
from kubevirt_spawner.lab import LabEnv, LabVM
from kubevirt_spawner.local.guest import Guest, default_guest_dir
from kubevirt_spawner.local.standalone import boot_lab_vm

pytestmark = pytest.mark.local

NULL_DEREF = """#include <linux/module.h>
MODULE_LICENSE("GPL");

struct counter { int value; };

static noinline int reset_counter(struct counter *c)
{
	c->value = 0; /* HERE */
	return 0;
}

static int __init nullderef_init(void)
{
	pr_info("nullderef: resetting\\n");
	return reset_counter(NULL);
}
module_init(nullderef_init);
"""

BUG_ON = """#include <linux/module.h>
MODULE_LICENSE("GPL");

static int slots = 3;
module_param(slots, int, 0444);

static noinline void check_slots(int n)
{
	BUG_ON(n > 2); /* HERE */
	pr_info("bugon: %d slots\\n", n);
}

static int __init bugon_init(void)
{
	check_slots(slots); /* CALL */
	return 0;
}
module_init(bugon_init);
"""

# Lab 5's shape: a consumer kthread taking entries off a list.
KTHREAD = """#include <linux/delay.h>
#include <linux/kthread.h>
#include <linux/list.h>
#include <linux/module.h>
MODULE_LICENSE("GPL");

struct task_entry { pid_t pid; struct list_head node; };
static LIST_HEAD(entries);
static struct task_struct *consumer;

static noinline void consume_one(void)
{
	struct task_entry *e = NULL;

	if (list_empty(&entries))
		pr_info("%s: pid=%d\\n", KBUILD_MODNAME, e->pid); /* HERE */
}

static int consumer_fn(void *unused)
{
	msleep(200);
	while (!kthread_should_stop()) {
		consume_one(); /* CALL */
		msleep(20);
	}
	return 0;
}

static int __init tl_init(void)
{
	consumer = kthread_run(consumer_fn, NULL, "tl_consumer");
	return PTR_ERR_OR_ZERO(consumer);
}

static void __exit tl_exit(void)
{
	kthread_stop(consumer);
}
module_init(tl_init);
module_exit(tl_exit);
"""


def marked_line(source: str, mark: str = "HERE") -> int:
    return next(i for i, line in enumerate(source.splitlines(), 1) if f"/* {mark} */" in line)


@pytest.fixture(scope="module")
def student(lab_vm, tmp_path_factory):
    """The student's environment: the server's LAB_* variables, labvm on PATH,
    their own state directory."""
    home = tmp_path_factory.mktemp("student")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    env.update(lab_vm.env.to_environ())
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["XDG_STATE_HOME"] = str(home / "state")
    return env, home


def build(env: dict, home: Path, name: str, source: str) -> Path:
    """The student's module directory, built as the lab notebooks build it."""
    d = home / name
    d.mkdir()
    (d / f"{name}.c").write_text(source)
    (d / "Kbuild").write_text(f"obj-m := {name}.o\n")
    argv = ["make", "-s", "-C", env["LAB_KDIR"], f"M={d}", "modules"]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return d


def labvm(env: dict, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    argv = ["labvm", *args]
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def timed_oops(env: dict, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    r = labvm(env, cwd, "oops")
    took = time.monotonic() - t0
    print(f"labvm oops took {took:.2f} s (load {os.getloadavg()[0]:.1f})")
    assert r.returncode == 0, r.stderr
    return r, took


GOOD = """#include <linux/module.h>
MODULE_LICENSE("GPL");
static int __init good_init(void) { pr_info("goodmod: loaded\\n"); return 0; }
static void __exit good_exit(void) { }
module_init(good_init);
module_exit(good_exit);
"""


def test_insmod_keeps_the_module_and_its_sections(student):
    env, home = student
    d = build(env, home, "goodmod", GOOD)
    load = labvm(env, d, "insmod", "goodmod.ko")
    assert load.returncode == 0 and "goodmod: loaded" in load.stdout, load.stderr
    state = home / "state/labvm/modules"
    record = json.loads((state / "goodmod.json").read_text())
    sysfs = "/sys/module/goodmod/sections/.gnu.linkonce.this_module"
    where = labvm(env, d, "ssh", f"cat {sysfs}").stdout.strip()
    assert record["sections"][".gnu.linkonce.this_module"] == int(where, 16)
    assert ".exit.text" in record["sections"]
    assert (state / "goodmod.ko").read_bytes() == (d / "goodmod.ko").read_bytes()
    again = labvm(env, d, "insmod", "goodmod.ko")  # refused: it is loaded
    assert again.returncode == 1 and "File exists" in again.stderr
    assert json.loads((state / "goodmod.json").read_text()) == record
    assert labvm(env, d, "ssh", "rmmod goodmod").returncode == 0


def test_null_dereference_names_function_and_line(student, lab_vm):
    env, home = student
    d = build(env, home, "nullderef", NULL_DEREF)
    line = marked_line(NULL_DEREF)
    load = labvm(env, d, "insmod", "nullderef.ko")
    assert load.returncode == 1
    said = "labvm: Loading nullderef.ko crashed the kernel: BUG: kernel NULL pointer dereference"
    assert load.stderr.startswith(said), load.stderr
    assert f"reset_counter() at nullderef.c:{line} (`c->value = 0; /* HERE */`)" in load.stderr
    r, _ = timed_oops(env, d)
    out = r.stdout.splitlines()
    assert out[0] == "BUG: kernel NULL pointer dereference, address: 0000000000000000"
    assert "In insmod (pid" in out[1]
    assert "Faulting function: reset_counter() in module nullderef" in out
    assert f"  at nullderef.c:{line}" in out
    assert f"  {line:>5} | c->value = 0; /* HERE */" in out
    assert any(x.split()[:2] == ["?", "do_one_initcall"] and "init/main.c:" in x for x in out)
    # The VM lived through it, and labvm kept where the module's sections were.
    record = json.loads((home / "state/labvm/modules/nullderef.json").read_text())
    assert ".init.text" in record["sections"] and record["source"] == str(d / "nullderef.ko")


def test_bug_on_names_function_and_line(student):
    env, home = student
    d = build(env, home, "bugon", BUG_ON)
    line = marked_line(BUG_ON)
    load = labvm(env, d, "insmod", "bugon.ko", "slots=5")
    assert load.returncode == 1 and "crashed the kernel: invalid opcode" in load.stderr
    r, _ = timed_oops(env, d)
    out = r.stdout.splitlines()
    # The course kernel has no CONFIG_BUG: BUG_ON is a bare ud2 instruction.
    assert out[0].startswith("invalid opcode: 0000 [#")
    assert "Faulting function: check_slots() in module bugon" in out
    assert f"  at bugon.c:{line}" in out
    assert f"  {line:>5} | BUG_ON(n > 2); /* HERE */" in out
    chain = out[out.index(next(x for x in out if x.startswith("Call chain"))) + 1 :]
    assert chain[1].split()[:3] == ["?", "bugon_init", f"bugon.c:{marked_line(BUG_ON, 'CALL')}"]
    raw = labvm(env, d, "oops", "--raw").stdout.splitlines()
    assert raw[0] == out[0] and "Call Trace:" in raw and raw[-len(out) :] == out


def test_module_not_loaded_by_labvm_says_so(student, lab_vm):
    env, home = student
    d = build(env, home, "plainload", NULL_DEREF.replace("nullderef", "plainload"))
    assert labvm(env, d, "push", "plainload.ko").returncode == 0
    labvm(env, d, "ssh", "insmod /root/plainload.ko")  # not `labvm insmod`: no record
    r, _ = timed_oops(env, d)
    assert "Faulting function: reset_counter() in module plainload" in r.stdout
    assert "  not decoded: module plainload was not loaded with `labvm insmod`" in r.stdout
    assert (
        "Note: module plainload was not loaded with `labvm insmod`, so its frames stay "
        "undecoded; load it with `labvm insmod plainload.ko` next time." in r.stdout
    )
    assert "init/main.c:" in r.stdout  # the kernel's frames are decoded all the same


def test_check_that_fails_after_an_oops_shows_it(student, lab_vm, monkeypatch):
    """A lab-5 style check: the module loads, its kthread oopses a moment
    later, the check's expectation fails; its one message leads with the oops."""
    env, home = student
    source = KTHREAD.replace("tl_init", "oc_init").replace("tl_exit", "oc_exit")
    d = build(env, home, "oopscheck", source)
    for k in [k for k in os.environ if k.startswith("LAB_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        if k.startswith("LAB_") or k == "XDG_STATE_HOME":
            monkeypatch.setenv(k, v)
    monkeypatch.chdir(d)
    vm = checks.vm()
    with pytest.raises(checks.CheckFailed) as failed:
        with checks.check("lab5.tasklist_output"):
            start = oops.console_offset(vm.env)
            vm.insmod(checks.build_module(d))
            _wait_for_oops(vm.env, start)
            checks.expect_in("oopscheck: pid=1 ", vm.dmesg(), "the consumer's lines")
    msg = str(failed.value)
    print(msg)
    line = marked_line(KTHREAD)
    assert msg.startswith(
        "Your VM's kernel crashed during this check: BUG: kernel NULL pointer dereference, "
        f"address: 0000000000000000 in consume_one() at oopscheck.c:{line} (`pr_info("
    ), msg
    assert "called from consumer_fn ← kthread" in msg
    assert "(The check saw: the consumer's lines: expected to find 'oopscheck: pid=1 '" in msg
    assert "\n" not in msg


def _wait_for_oops(env: LabEnv, offset: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "---[ end trace" in oops.console_text(env.console_log, offset):
            return
        time.sleep(0.2)
    raise AssertionError(f"no oops on the console within {timeout:.0f}s")


def test_kthread_panic_is_decoded_after_the_vm_restarts(student, lab_vm):
    """Lab 5's shape with panic_on_oops: the oops in the kthread panics the
    kernel, the VM reboots (panic=-1), and `labvm oops` still decodes it from
    the console log and the module kept at load time."""
    env, home = student
    d = build(env, home, "tlpanic", KTHREAD)
    line = marked_line(KTHREAD)
    labvm(env, d, "ssh", "echo 1 > /proc/sys/kernel/panic_on_oops")
    start = oops.console_offset(lab_vm.env)
    load = labvm(env, d, "insmod", "tlpanic.ko")
    assert load.returncode == 0 or "crashed the kernel" in load.stderr, load.stderr
    LabVM(lab_vm.env).wait_ready(timeout=300, console_offset=start)
    r, _ = timed_oops(env, d)
    out = r.stdout.splitlines()
    assert out[0] == "BUG: kernel NULL pointer dereference, address: 0000000000000000"
    assert "In tl_consumer (pid" in out[1]
    assert out[2] == (
        "  Then the kernel panicked (Fatal exception): the VM went down, and has "
        "restarted since: load your modules again."
    )
    assert "Faulting function: consume_one() in module tlpanic" in out
    assert f"  at tlpanic.c:{line}" in out
    call = marked_line(KTHREAD, "CALL")
    assert any(x.split()[:3] == ["?", "consumer_fn", f"tlpanic.c:{call}"] for x in out)
    assert any(x.split()[:3] == ["?", "kthread", "kernel/kthread.c:376"] for x in out)


@pytest.fixture(scope="module")
def arm_student(tmp_path_factory):
    """An arm64 VM and its student, who cross-builds (ARCH, CROSS_COMPILE)."""
    guest = Guest.find(
        os.environ.get("KVS_GUEST_DIR_AARCH64", default_guest_dir("aarch64")), "aarch64"
    )
    vm = boot_lab_vm(guest.root, rundir=tmp_path_factory.mktemp("armvm"), timeout=180)
    home = tmp_path_factory.mktemp("armstudent")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    env.update(vm.env.to_environ())
    env.update(toolchain_env("aarch64", platform.machine()))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["XDG_STATE_HOME"] = str(home / "state")
    yield env, home
    vm.stop()


def test_arm64_null_dereference_names_function_and_line(arm_student):
    """arm64 prints `pc :`/`lr :` and a trace without the leaf's caller; the
    caller comes back from lr, and lines come from aarch64-linux-gnu-addr2line."""
    env, home = arm_student
    good = build(env, home, "goodmod", GOOD)
    load = labvm(env, good, "insmod", "goodmod.ko")
    assert load.returncode == 0 and "goodmod: loaded" in load.stdout, load.stderr
    record = json.loads((home / "state/labvm/modules/goodmod.json").read_text())
    assert ".gnu.linkonce.this_module" in record["sections"]
    d = build(env, home, "nullderef", NULL_DEREF)
    load = labvm(env, d, "insmod", "nullderef.ko")
    assert (
        load.returncode == 1 and "crashed the kernel: Unable to handle kernel NULL" in load.stderr
    )
    r, _ = timed_oops(env, d)
    out = r.stdout.splitlines()
    line = marked_line(NULL_DEREF)
    assert "Faulting function: reset_counter() in module nullderef" in out
    assert f"  {line:>5} | c->value = 0; /* HERE */" in out
    call = next(i for i, x in enumerate(NULL_DEREF.splitlines(), 1) if "return reset_counter" in x)
    assert any(x.split()[:2] == ["nullderef_init", f"nullderef.c:{call}"] for x in out), r.stdout

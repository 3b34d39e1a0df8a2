"""The lab-5 module loop and the lab-4 kernel loop, alone and with several
students at once: a table.

Module loop (lab 5) = edit the module source -> `make -C $LAB_KDIR M=…` ->
push + insmod -> read the kernel log -> rmmod.
Kernel loop (lab 4) = edit kernel/lab_whoami.c in the student's kernel tree
(`labvm kernel-tree`, made once beforehand, not timed) -> `make bzImage` ->
boot the VM on it (kexec) -> call syscall 451 and check its answer.

Each "student" has their own VM (booted without a hub,
kubevirt_spawner.local.standalone) and build directory; all students run their
loops at the same moment.

usage: python tests/bench/lab_bench.py [--students 1,2,4] [--loops 3] [--lab 5,4]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from kubevirt_spawner import checks, kerneltree
from kubevirt_spawner.local.standalone import boot_lab_vm

MODULE = r"""#include <linux/module.h>
MODULE_LICENSE("GPL");
static int __init b_init(void) { pr_info("benchmod: loop %d\n", LOOP); return 0; }
static void __exit b_exit(void) { }
module_init(b_init);
module_exit(b_exit);
"""


def one_loop(vm, kdir: str, work: Path, i: int) -> float:
    t0 = time.monotonic()
    (work / "benchmod.c").write_text(MODULE.replace("LOOP", str(i)))
    ko = checks.build_module(work, kdir)
    log = vm.insmod(ko)
    if f"benchmod: loop {i}" not in log:
        raise RuntimeError(f"loop {i}: module did not print its line: {log!r}")
    vm.rmmod("benchmod")
    return time.monotonic() - t0


SYSCALL = r"""#include <linux/sched.h>
#include <linux/syscalls.h>
#include <linux/uaccess.h>
SYSCALL_DEFINE2(lab_whoami, char __user *, buf, size_t, len)
{
	char text[64];
	int n = scnprintf(text, sizeof(text), "loop=LOOP pid=%d", task_pid_nr(current));
	if (len < (size_t)n + 1)
		return -EINVAL;
	return copy_to_user(buf, text, n + 1) ? -EFAULT : n;
}
"""

CALLER = r"""#include <stdio.h>
#include <unistd.h>
int main(void) { char b[64]; long r = syscall(451, b, sizeof(b)); printf("%ld %s\n", r, r < 0 ? "" : b); return 0; }
"""


def prepare_kernel_loop(kdir: str, work: Path) -> Path:
    tree = work / "linux"
    kerneltree.create(kdir, tree)
    mk = kerneltree.own(tree, "kernel/Makefile")
    mk.write_text(mk.read_text() + "obj-y += lab_whoami.o\n")
    (work / "caller.c").write_text(CALLER)
    checks.compile_program(work / "caller.c")
    return tree


def kernel_loop(vm, kdir: str, work: Path, i: int) -> float:
    tree = work / "linux"
    t0 = time.monotonic()
    (tree / "kernel/lab_whoami.c").write_text(SYSCALL.replace("LOOP", str(i)))
    checks.make_kernel(tree, "bzImage")
    vm.boot_kernel(tree / "arch/x86/boot/bzImage")
    vm.push(work / "caller", dest="/root")
    out = vm.run("/root/caller").stdout
    if f"loop={i} " not in out:
        raise RuntimeError(f"loop {i}: syscall 451 answered {out!r}")
    return time.monotonic() - t0


LOOPS = {"5": (None, one_loop), "4": (prepare_kernel_loop, kernel_loop)}


def run(students: int, loops: int, lab: str = "5") -> list[float]:
    prepare, loop = LOOPS[lab]
    vms = [boot_lab_vm() for _ in range(students)]
    times: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    works: list[Path] = []
    try:
        for _ in vms:
            w = Path(tempfile.mkdtemp(prefix="labbench-"))
            (w / "Kbuild").write_text("obj-m := benchmod.o\n")
            if prepare:
                prepare(str(vms[0].guest.kdir), w)
            works.append(w)

        def student(k: int) -> None:
            try:
                for i in range(loops):
                    t = loop(vms[k].vm, str(vms[k].guest.kdir), works[k], i)
                    with lock:
                        times.append(t)
            except BaseException as e:  # reported after the threads finish
                errors.append(e)

        threads = [threading.Thread(target=student, args=(k,)) for k in range(students)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for v in vms:
            v.stop()
        for w in works:
            shutil.rmtree(w, ignore_errors=True)
    if errors:
        raise errors[0]
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--students", default="1,2,4", help="comma-separated counts (default 1,2,4)")
    ap.add_argument("--loops", type=int, default=3, help="loops per student (default 3)")
    ap.add_argument("--lab", default="5,4", help="which loops: 5 (module), 4 (kernel); default 5,4")
    args = ap.parse_args()
    try:
        counts = [int(n) for n in args.students.split(",")]
    except ValueError:
        ap.error(f"--students must be numbers: {args.students!r}")
    labs = args.lab.split(",")
    if not set(labs) <= set(LOOPS):
        ap.error(f"--lab takes 5 and/or 4: {args.lab!r}")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, TCG; commit {commit}")
    print(f"{'loop':>12} | {'students':>8} | {'loops':>5} | {'median s':>8} | {'max s':>6} | load")
    for lab in labs:
        for n in counts:
            times = run(n, args.loops, lab)
            name = {"5": "lab-5 module", "4": "lab-4 kernel"}[lab]
            print(
                f"{name:>12} | {n:>8} | {len(times):>5} | {statistics.median(times):>8.2f} | "
                f"{max(times):>6.2f} | {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

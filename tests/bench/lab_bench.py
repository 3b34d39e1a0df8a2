"""The lab-5 module loop, alone and with several students at once: a table.

One loop = edit the module source -> `make -C $LAB_KDIR M=…` -> push + insmod
-> read the kernel log -> rmmod, as a student does it from a notebook. Each
"student" has their own VM (booted without a hub, kubevirt_spawner.standalone)
and build directory; all students run their loops at the same moment.

The lab-4 loop (kernel rebuild + boot) is not measured yet: lab 4 is not written.

usage: python tests/bench/lab_bench.py [--students 1,2,4] [--loops 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kubevirt_spawner import checks
from kubevirt_spawner.standalone import boot_lab_vm

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


def run(students: int, loops: int) -> list[float]:
    vms = [boot_lab_vm() for _ in range(students)]
    times: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    try:
        works = []
        for _ in vms:
            w = Path(tempfile.mkdtemp(prefix="labbench-"))
            (w / "Kbuild").write_text("obj-m := benchmod.o\n")
            works.append(w)

        def student(k: int) -> None:
            try:
                for i in range(loops):
                    t = one_loop(vms[k].vm, str(vms[k].guest.kdir), works[k], i)
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
    if errors:
        raise errors[0]
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--students", default="1,2,4", help="comma-separated counts (default 1,2,4)")
    ap.add_argument("--loops", type=int, default=3, help="loops per student (default 3)")
    args = ap.parse_args()
    try:
        counts = [int(n) for n in args.students.split(",")]
    except ValueError:
        ap.error(f"--students must be numbers: {args.students!r}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, TCG; commit {commit}")
    print(f"{'students':>8} | {'loops':>5} | {'median s':>8} | {'max s':>6}")
    for n in counts:
        times = run(n, args.loops)
        print(f"{n:>8} | {len(times):>5} | {statistics.median(times):>8.2f} | {max(times):>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

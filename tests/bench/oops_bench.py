"""What `labvm oops` and the records behind it cost: a table.

One VM (no hub, kubevirt_spawner.local.standalone). Rows:
- `LabVM.insmod` (what `labvm insmod` and the checks run) of a module that
  loads fine, which also keeps a copy of the .ko and reads its section
  addresses in the same ssh as insmod, against the same steps without the
  record (push, dmesg, insmod, dmesg);
- `labvm oops` as the student types it, after a NULL dereference in a
  module's init (python start, console log, vmlinux symbols, addr2line);
- the decoding alone (kubevirt_spawner.oops.explain in one process).

usage: python tests/bench/oops_bench.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kubevirt_spawner import oops
from kubevirt_spawner.lab import LabVM
from kubevirt_spawner.local.standalone import boot_lab_vm

GOOD = r"""#include <linux/module.h>
MODULE_LICENSE("GPL");
static int __init g_init(void) { pr_info("NAME: loaded\n"); return 0; }
static void __exit g_exit(void) { }
module_init(g_init);
module_exit(g_exit);
"""

BAD = r"""#include <linux/module.h>
MODULE_LICENSE("GPL");
struct counter { int value; };
static noinline int reset_counter(struct counter *c) { c->value = 0; return 0; }
static int __init b_init(void) { return reset_counter(NULL); }
module_init(b_init);
"""


def build(env: dict, d: Path, name: str, source: str) -> None:
    d.mkdir(parents=True)
    (d / f"{name}.c").write_text(source.replace("NAME", name))
    (d / "Kbuild").write_text(f"obj-m := {name}.o\n")
    argv = ["make", "-s", "-C", env["LAB_KDIR"], f"M={d}", "modules"]
    subprocess.run(argv, env=env, check=True, capture_output=True)


def timed(env: dict, cwd: Path, *argv: str) -> float:
    t0 = time.monotonic()
    r = subprocess.run(["labvm", *argv], env=env, cwd=cwd, capture_output=True, text=True)
    took = time.monotonic() - t0
    if r.returncode != 0 and argv[0] != "insmod":
        raise RuntimeError(f"labvm {' '.join(argv)}: {r.stderr.strip()}")
    return took


def row(what: str, times: list[float]) -> None:
    each = ", ".join(f"{t:.2f}" for t in times)
    print(f"{what:<52} | {statistics.median(times):>8.2f} | {each}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per row (default 5)")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="oops-bench-"))
    vm = boot_lab_vm()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
        env.update(vm.env.to_environ())
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["XDG_STATE_HOME"] = str(work / "state")
        load_before = os.getloadavg()[0]
        os.environ["XDG_STATE_HOME"] = env["XDG_STATE_HOME"]
        lab = LabVM(vm.env)
        with_record, plain = [], []
        for i in range(args.runs):
            d = work / f"good{i}"
            build(env, d, f"good{i}", GOOD)
            t0 = time.monotonic()
            lab.insmod(d / f"good{i}.ko")
            with_record.append(time.monotonic() - t0)
            p = work / f"plain{i}"
            build(env, p, f"plain{i}", GOOD)
            t0 = time.monotonic()  # what LabVM.insmod did before it kept records
            lab.push(p / f"plain{i}.ko")
            lab.dmesg()
            lab.run(f"insmod /root/plain{i}.ko")
            lab.dmesg()
            plain.append(time.monotonic() - t0)
        d = work / "bad"
        build(env, d, "bad", BAD)
        timed(env, d, "insmod", "bad.ko")
        cli = [timed(env, d, "oops") for _ in range(args.runs)]
        inproc = []
        for _ in range(args.runs):
            t0 = time.monotonic()
            oops.explain(vm.env, cwd=str(d))
            inproc.append(time.monotonic() - t0)
        print(f"{'measure':<52} | {'median s':>8} | runs")
        row("LabVM.insmod (keeps the .ko and section addresses)", with_record)
        row("the same steps without the record", plain)
        row("labvm oops after a NULL dereference", cli)
        row("decoding alone (oops.explain, in process)", inproc)
        print(f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    finally:
        vm.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

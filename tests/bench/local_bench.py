"""`make bench`: how fast and how big the embedded default is, on this machine.

Drives a real JupyterHub with LocalVMSpawner and prints a table:
spawn-to-ready, gdb attach + breakpoint round trip, the module
edit->build->insmod->dmesg cycle, memory per student, and concurrent spawns.
Numbers, not assertions: targets and the latest table are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from harness.hubctl import Hub
from harness.localhelpers import lab_env_of, pss_mb

from kubevirt_spawner.arch import ARCHES, toolchain_env
from kubevirt_spawner.lab import LabEnv, LabVM, ssh_argv
from kubevirt_spawner.local.guest import Guest, GuestNotBuilt, default_guest_dir
from kubevirt_spawner.local.vmprocess import descendants

# The aarch64 rows spawn with this profile (LocalVMSpawner.vm_arch).
PROFILES = """
c.LocalVMSpawner.profile_list = [
    {"display_name": "x86_64", "slug": "x86-64", "default": True},
    {"display_name": "aarch64", "slug": "aarch64", "spawner_override": {"vm_arch": "aarch64"}},
]
"""

HELLO_C = r"""
#include <linux/module.h>
#include <linux/init.h>
MODULE_LICENSE("GPL");
static int __init hello_init(void) { pr_info("bench hello %d\n", NUM); return 0; }
static void __exit hello_exit(void) { pr_info("bench bye\n"); }
module_init(hello_init);
module_exit(hello_exit);
"""


def server_pid(user: str) -> int:
    out = subprocess.run(
        ["pgrep", "-u", user, "-f", "jupyterhub.singleuser"], capture_output=True, text=True
    ).stdout.split()
    return int(out[0])


def qemu_pid(env: LabEnv) -> int:
    rundir = str(Path(env.ssh_key).parent)
    out = subprocess.run(["pgrep", "-f", f"qemu-system.*{rundir}/"], capture_output=True, text=True)
    return int(out.stdout.split()[0])


def timed(fn):
    t = time.monotonic()
    fn()
    return time.monotonic() - t


def gdb_round_trip(vm: LabVM) -> tuple[float, float]:
    """(attach seconds, break->trigger->hit->detach seconds)."""
    t0 = time.monotonic()
    s = vm.gdb_session(timeout=60)
    attach = time.monotonic() - t0
    t1 = time.monotonic()
    s.sendline(f"break {ARCHES[vm.env.arch].syscall_prefix}newuname")
    s.expect_exact("(gdb) ")
    s.sendline("continue")
    s.expect("Continuing")
    trigger = subprocess.Popen(ssh_argv(vm.env, "uname -n"), stdout=subprocess.DEVNULL)
    s.expect(r"Breakpoint 1, ")
    s.expect_exact("(gdb) ")
    s.sendline("delete")
    s.expect_exact("(gdb) ")
    s.sendline("detach")
    s.expect_exact("(gdb) ")
    hit = time.monotonic() - t1
    s.sendline("quit")
    s.close()
    trigger.wait(30)
    return attach, hit


def module_cycle(vm: LabVM, workdir: Path, n: int) -> float:
    (workdir / "Makefile").write_text("obj-m += benchhello.o\n")
    (workdir / "benchhello.c").write_text(HELLO_C.replace("NUM", str(n)))
    t = time.monotonic()
    env = {**os.environ, **toolchain_env(vm.env.arch, platform.machine())}
    subprocess.run(
        ["make", "-s", "-C", vm.env.kdir, f"M={workdir}", "modules"],
        check=True,
        capture_output=True,
        env=env,
    )
    log = vm.insmod(workdir / "benchhello.ko")
    assert f"bench hello {n}" in log, log
    vm.rmmod("benchhello")
    return time.monotonic() - t


def aarch64_rows(hub: Hub, rounds: int, work: Path) -> list[tuple[str, str, str, str]]:
    """Spawn-to-ready, gdb round trip and module cycle of the aarch64 profile (TCG)."""
    try:
        Guest.find(default_guest_dir("aarch64"), "aarch64")
    except GuestNotBuilt as e:
        return [("aarch64 spawn-to-ready", "-", "", f"not measured: {e}")]
    times = []
    for i in range(rounds):
        user = f"kvsa-{i}"
        hub.create_user(user)
        t = time.monotonic()
        events = hub.spawn(user, {"profile": "aarch64"}, timeout=300)
        times.append(time.monotonic() - t)
        assert events[-1].get("ready"), events
    vm = LabVM(lab_env_of(server_pid("kvsa-0")))
    hits = [gdb_round_trip(vm)[1] for _ in range(3)]
    mdir = work / "module-aarch64"
    mdir.mkdir()
    cycles = [module_cycle(vm, mdir, n) for n in range(3)]
    for i in range(rounds):
        hub.stop_server(f"kvsa-{i}")
    return [
        (
            "aarch64 spawn-to-ready (virt, -cpu max, TCG)",
            f"{statistics.median(times):.1f} s",
            "",
            f"median of {rounds}; all: " + ", ".join(f"{x:.1f}" for x in times),
        ),
        (
            "aarch64 gdb break -> trigger in VM -> hit -> detach",
            f"{statistics.median(hits):.2f} s",
            "",
            "median of 3, gdb-multiarch",
        ),
        (
            "aarch64 module edit -> cross-build -> insmod -> dmesg -> rmmod",
            f"{statistics.median(cycles):.2f} s",
            "",
            "median of 3",
        ),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3, help="sequential spawns to time")
    ap.add_argument("--concurrent", type=int, default=4, help="students spawned at once")
    ap.add_argument(
        "--arch",
        choices=["all", *ARCHES],
        default="all",
        help="which VM architectures to measure (aarch64 needs `make guest-aarch64`)",
    )
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="kvs-bench-"))
    hub = Hub(work, extra_config=PROFILES).start()
    rows = []
    try:
        if args.arch in ("all", "aarch64"):
            rows += aarch64_rows(hub, args.rounds, work)
        if args.arch == "aarch64":
            return
        spawn_times = []
        for i in range(args.rounds):
            user = f"kvsb-{i}"
            hub.create_user(user)
            t = time.monotonic()
            events = hub.spawn(user)
            spawn_times.append(time.monotonic() - t)
            assert events[-1].get("ready"), events
        rows.append(
            (
                "spawn-to-ready (REST -> notebook up, VM answers ssh+gdb)",
                f"{statistics.median(spawn_times):.1f} s",
                "<= 15 s",
                f"median of {args.rounds}; all: " + ", ".join(f"{x:.1f}" for x in spawn_times),
            )
        )

        pid = server_pid("kvsb-0")
        vm = LabVM(lab_env_of(pid))
        attach, hits = [], []
        for _ in range(3):
            a, h = gdb_round_trip(vm)
            attach.append(a)
            hits.append(h)
        rows.append(
            (
                "gdb attach (vmlinux symbols loaded)",
                f"{statistics.median(attach):.2f} s",
                "",
                "median of 3",
            )
        )
        rows.append(
            (
                "gdb break -> trigger in VM -> hit -> detach",
                f"{statistics.median(hits):.2f} s",
                "<= 1 s",
                "median of 3",
            )
        )
        # The same round trip with gdb straight on QEMU's socket, without the
        # relay that turns gdb's kill into a detach (kubevirt_spawner.gdbrelay).
        sock = vm.env.gdb_remote.rsplit("unix:", 1)[1]
        direct = LabVM(dataclasses.replace(vm.env, gdb_remote=f"| socat - UNIX-CONNECT:{sock}"))
        direct_hits = [gdb_round_trip(direct)[1] for _ in range(3)]
        ratio = statistics.median(hits) / statistics.median(direct_hits)
        rows.append(
            (
                "gdb round trip through the relay / direct",
                f"{ratio:.2f}",
                "<= 1.20",
                f"direct median {statistics.median(direct_hits):.2f} s, same VM, same run",
            )
        )

        mdir = work / "module"
        mdir.mkdir()
        cycles = [module_cycle(vm, mdir, n) for n in range(3)]
        rows.append(
            (
                "module edit -> build -> insmod -> dmesg -> rmmod",
                f"{statistics.median(cycles):.2f} s",
                "<= 5 s",
                "median of 3",
            )
        )

        per_student = []
        for i in range(args.rounds):
            user = f"kvsb-{i}"
            sp = server_pid(user)
            env = lab_env_of(sp)
            pids = [sp, *descendants(sp), qemu_pid(env)]
            per_student.append(pss_mb(pids))
        rows.append(
            (
                "memory per student (PSS: VM + notebook)",
                f"{statistics.median(per_student):.0f} MB",
                "<= 400 MB",
                "QEMU -m 256, tb-size 64",
            )
        )

        for i in range(args.rounds):
            hub.stop_server(f"kvsb-{i}")

        users = [f"kvsc-{i}" for i in range(args.concurrent)]
        for u in users:
            hub.create_user(u)
        done = {}

        def one(u):
            t = time.monotonic()
            ev = hub.spawn(u)
            done[u] = (time.monotonic() - t, bool(ev[-1].get("ready")))

        t = time.monotonic()
        threads = [threading.Thread(target=one, args=(u,)) for u in users]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.monotonic() - t
        ok = sum(r for _, r in done.values())
        rows.append(
            (
                f"{args.concurrent} students spawning at once",
                f"{wall:.1f} s",
                "",
                f"{ok}/{args.concurrent} ready; slowest {max(d for d, _ in done.values()):.1f} s",
            )
        )
        for u in users:
            hub.stop_server(u)
    finally:
        hub.stop()
        shutil.rmtree(hub.runtime_root, ignore_errors=True)
        if rows:
            print_table(rows, hub, load_before)


def print_table(rows, hub: Hub, load_before: float) -> None:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    accels = dict.fromkeys(
        line.split("Accelerator: ", 1)[1]
        for line in hub.log_path.read_text().splitlines()
        if "Accelerator: " in line
    )
    accel = "; ".join(accels) or "unknown"
    print(
        f"\nmachine: {os.cpu_count()} cores, {cpu}; 1-min load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after; accelerator: {accel}"
    )
    w = max(len(r[0]) for r in rows)
    print(f"{'measure':{w}}  {'result':>9}  {'target':>9}  notes")
    print(f"{'-' * w}  {'-' * 9}  {'-' * 9}  -----")
    for name, value, target, note in rows:
        print(f"{name:{w}}  {value:>9}  {target:>9}  {note}")


if __name__ == "__main__":
    main()

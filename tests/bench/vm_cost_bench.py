"""`make bench`, part 3: what the VM costs, and how many idle students fit.

On one real hub (LocalVMSpawner, TCG here), side by side in one run:

- the VM's share of a spawn: spawn-to-ready with a cold-booted VM, with a
  resumed VM (a suspended one, `suspend_on_stop`), and without a VM (the
  no-VM profile), interleaved round by round so that all three see the
  same load; the ratios to the no-VM spawn;
- suspend and resume as the student sees them: the stop that saves the VM,
  the start that resumes it; `labvm snapshot` save/restore times and sizes;
- students per machine: idle students spawned one after another until a
  spawn takes more than twice the first, memory runs short, or the bounds
  (--max-students, --budget seconds) are reached; the spawn time at 10, 20,
  40 students, each idle VM's CPU share, memory per student (PSS) idle and
  with a terminal, gdb and a module build in use.

Numbers, not assertions: docs/benchmarks.md keeps the tables and targets.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import pwd
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from harness.hubctl import Hub, running_hub
from harness.localhelpers import lab_env_of, pss_mb

from kubevirt_spawner.checkpoints import Checkpoints
from kubevirt_spawner.local.vmprocess import descendants
from kubevirt_spawner.vmstate import human

PROFILES = """
c.LocalVMSpawner.profile_list = [
    {"display_name": "VM, suspended on stop", "slug": "vm", "default": True,
     "spawner_override": {"suspend_on_stop": "always"}},
    {"display_name": "VM, discarded on stop", "slug": "vm-plain"},
    {"display_name": "VM from the booted snapshot", "slug": "vm-snap",
     "spawner_override": {"boot_from_snapshot": True}},
    {"display_name": "No VM", "slug": "novm", "spawner_override": {"with_vm": False}},
]
"""

MODULE = r"""
#include <linux/module.h>
#include <linux/init.h>
MODULE_LICENSE("GPL");
static int __init density_init(void) { pr_info("density: in\n"); return 0; }
static void __exit density_exit(void) { }
module_init(density_init);
module_exit(density_exit);
"""


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def all_of(xs: list[float], fmt: str = "{:.1f}") -> str:
    return ", ".join(fmt.format(x) for x in xs)


def spawn(hub: Hub, user: str, profile: str) -> float:
    t = time.monotonic()
    events = hub.spawn(user, {"profile": profile}, timeout=400)
    took = time.monotonic() - t
    if not events[-1].get("ready"):
        raise RuntimeError(f"{user} ({profile}) failed: {events[-1]}\n{hub.log_tail()}")
    return took


def stop(hub: Hub, user: str) -> float:
    t = time.monotonic()
    hub.stop_server(user, timeout=300)
    return time.monotonic() - t


def forget_states(user: str) -> None:
    try:
        shutil.rmtree(Path(pwd.getpwnam(user).pw_dir, ".labvm"), ignore_errors=True)
    except KeyError:
        pass


def server_pid(hub: Hub, user: str) -> int:
    return int(hub.api("GET", f"/users/{user}").json()["servers"][""]["state"]["pid"])


def qemu_pid(hub: Hub, user: str) -> int:
    return int(hub.api("GET", f"/users/{user}").json()["servers"][""]["state"]["vm_pid"])


def student_pss(hub: Hub, user: str) -> float:
    sp = server_pid(hub, user)
    return pss_mb([sp, *descendants(sp), qemu_pid(hub, user)])


def cpu_seconds(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- the VM's share of a spawn; suspend and resume ------------------------------
def share_rows(hub: Hub, rounds: int) -> list[tuple]:
    cold, resumed, novm, suspend_stop, plain_stop = [], [], [], [], []
    # The first VM spawn after a hub start pays the KVM probe: not a round.
    first = spawn(hub, "kvsv-warm", "vm-plain")
    stop(hub, "kvsv-warm")
    # ... and the first snapshot start makes the booted snapshot (cold boot).
    spawn(hub, "kvsv-warm", "vm-snap")
    stop(hub, "kvsv-warm")
    wait_for_snapshot(hub)
    snap = []
    for i in range(rounds):
        user = f"kvsv-{i}"
        forget_states(user)
        # A new account's first JupyterLab start also makes its home's
        # config and caches: not a measurement.
        spawn(hub, user, "novm")
        stop(hub, user)
        novm.append(spawn(hub, user, "novm"))
        stop(hub, user)
        cold.append(spawn(hub, user, "vm-plain"))
        plain_stop.append(stop(hub, user))
        snap.append(spawn(hub, user, "vm-snap"))
        stop(hub, user)
        spawn(hub, user, "vm")
        suspend_stop.append(stop(hub, user))  # saves the VM
        resumed.append(spawn(hub, user, "vm"))
        stop(hub, user)
        forget_states(user)
    saves = [
        (float(m[1]), float(m[2]))
        for m in re.finditer(
            r"Suspended the VM of kvsv-\d+: ([\d.]+) MB in ([\d.]+)s", hub.log_path.read_text()
        )
    ]
    resumes = [
        float(m[1])
        for m in re.finditer(
            r"Spawn kvsv-\d+: VM resumed where you left off \(([\d.]+)s\)", hub.log_path.read_text()
        )
    ]
    base = med(novm)
    return [
        ("first VM spawn after the hub started (pays the KVM probe)", f"{first:.1f} s", "", ""),
        (
            "spawn-to-ready, no VM (no-VM profile)",
            f"{base:.1f} s",
            "",
            f"median of {rounds}: {all_of(novm)}",
        ),
        (
            "spawn-to-ready, VM cold boot",
            f"{med(cold):.1f} s",
            "",
            f"median of {rounds}: {all_of(cold)}",
        ),
        (
            "spawn-to-ready, VM from the booted snapshot",
            f"{med(snap):.1f} s",
            "",
            f"median of {rounds}: {all_of(snap)}",
        ),
        (
            "VM's share: booted snapshot / no VM",
            f"{med(snap) / base:.2f}",
            "<= 1.15",
            "same hub, interleaved",
        ),
        (
            "spawn-to-ready, VM resumed (suspended on the last stop)",
            f"{med(resumed):.1f} s",
            "",
            f"median of {rounds}: {all_of(resumed)}",
        ),
        ("VM's share: cold boot / no VM", f"{med(cold) / base:.2f}", "", "same hub, interleaved"),
        (
            "VM's share: resumed / no VM",
            f"{med(resumed) / base:.2f}",
            "",
            "same hub, interleaved",
        ),
        (
            "stop that suspends (REST DELETE -> server gone)",
            f"{med(suspend_stop):.1f} s",
            "",
            f"plain stop {med(plain_stop):.1f} s; saving itself "
            f"{med([s for _, s in saves]):.2f} s, {med([m for m, _ in saves]):.1f} MB (gzip -1)",
        ),
        (
            "snapshot start inside the spawn (-incoming, identity over the console, ssh+gdb)",
            f"{med(snapshot_start_times(hub)):.2f} s",
            "",
            f"median of {len(snapshot_start_times(hub))}",
        ),
        (
            "resume inside the spawn (QEMU -incoming -> ssh and gdb answer)",
            f"{med(resumes):.2f} s",
            "",
            f"median of {len(resumes)}",
        ),
    ]


def wait_for_snapshot(hub: Hub, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    # Made now ("Booted snapshot ... made"), or already there from an earlier run.
    while not re.search(
        r"Booted snapshot .* made|VM started from the booted", hub.log_path.read_text()
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no booted snapshot made\n{hub.log_tail()}")
        time.sleep(1)


def snapshot_start_times(hub: Hub) -> list[float]:
    text = hub.log_path.read_text()
    return [
        float(m[1]) for m in re.finditer(r"VM started from the booted snapshot \(([\d.]+)s\)", text)
    ]


def checkpoint_rows(hub: Hub, rounds: int) -> list[tuple]:
    user = "kvsv-cp"
    forget_states(user)
    spawn(hub, user, "vm-plain")
    env = lab_env_of(server_pid(hub, user))
    cps = Checkpoints(env)
    saves, loads, rms, sizes = [], [], [], []
    for i in range(rounds):
        t = time.monotonic()
        entry, _ = cps.save(f"bench{i}")
        saves.append(time.monotonic() - t)
        sizes.append(entry["vm-state-size"])
        t = time.monotonic()
        cps.restore(f"bench{i}")
        loads.append(time.monotonic() - t)
    from kubevirt_spawner.vmstate import usage

    disk = usage(Path(env.state_dir))
    for i in range(rounds):
        t = time.monotonic()
        cps.remove(f"bench{i}")
        rms.append(time.monotonic() - t)
    stop(hub, user)
    forget_states(user)
    return [
        (
            "labvm snapshot save (QMP snapshot-save, running VM)",
            f"{med(saves):.2f} s",
            "",
            f"median of {rounds}; {human(med(sizes))} of RAM state each (uncompressed)",
        ),
        (
            "labvm snapshot restore (snapshot-load, same QEMU)",
            f"{med(loads):.2f} s",
            "",
            f"median of {rounds}",
        ),
        (
            "labvm snapshot rm",
            f"{med(rms):.2f} s",
            "",
            f"{rounds} checkpoints used {human(disk)} on disk in all",
        ),
    ]


# -- students per machine --------------------------------------------------------
async def busy_student_pss(hub: Hub, user: str, work: Path) -> float:
    """PSS of one student with a terminal, an attached gdb (VM running) and a
    freshly built and loaded module."""
    pw = pwd.getpwnam(user)
    src = Path(pw.pw_dir, "density")
    src.mkdir(exist_ok=True)
    (src / "density.c").write_text(MODULE)
    (src / "Makefile").write_text("obj-m += density.o\n")
    for p in (src, src / "density.c", src / "Makefile"):
        os.chown(p, pw.pw_uid, pw.pw_gid)
    term = await hub.terminal(user)
    await term.run(
        "cd ~/density && make -s -C $LAB_KDIR M=$PWD modules && labvm insmod density.ko",
        timeout=300,
    )
    gdb_term = await hub.terminal(user)
    await gdb_term.ws.write_message('["stdin", "labvm gdb\\r"]')
    await asyncio.sleep(8)
    await gdb_term.ws.write_message('["stdin", "continue\\r"]')
    await asyncio.sleep(2)
    pss = student_pss(hub, user)
    await gdb_term.ws.write_message('["stdin", "\\u0003"]')
    await asyncio.sleep(1)
    await gdb_term.ws.write_message('["stdin", "detach\\rquit\\r"]')
    await asyncio.sleep(1)
    term.close()
    gdb_term.close()
    return pss


def density_rows(hub: Hub, max_students: int, budget: float, work: Path) -> list[tuple]:
    started = time.monotonic()
    times: list[float] = []
    why = f"reached --max-students={max_students}"
    users = []
    while len(times) < max_students:
        if time.monotonic() - started > budget:
            why = f"reached --budget={budget:.0f} s"
            break
        if times and mem_available_mb() < 1024 + 2 * 300:
            why = f"memory short ({mem_available_mb():.0f} MB available)"
            break
        user = f"kvsd-{len(times)}"
        forget_states(user)
        users.append(user)
        times.append(spawn(hub, user, "vm-plain"))
        print(
            f"  student {len(times)}: spawn {times[-1]:.1f} s, "
            f"{mem_available_mb():.0f} MB available, load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        # "The first" is the median of the first three (one spawn on a shared
        # machine is noise), and it takes two slow spawns in a row to stop.
        first = med(times[:3])
        if len(times) > 3 and min(times[-2:]) > 2 * first:
            why = f"spawns {len(times) - 1} and {len(times)} took over twice the first ({first:.1f} s)"
            break
    # Idle: every VM's CPU over 30 s, after the last spawn settled.
    time.sleep(10)
    pids = [qemu_pid(hub, u) for u in users]
    before = {p: cpu_seconds(p) for p in pids}
    t0 = time.monotonic()
    time.sleep(30)
    window = time.monotonic() - t0
    shares = [100 * (cpu_seconds(p) - before[p]) / window for p in pids]
    idle_pss = [student_pss(hub, u) for u in users]
    busy = asyncio.run(busy_student_pss(hub, users[0], work))
    at = {n: times[n - 1] for n in (10, 20, 40) if len(times) >= n}
    rows = [
        (
            "idle students the machine held",
            f"{len(times)}",
            "",
            f"stopped: {why}; first spawn {times[0]:.1f} s, last {times[-1]:.1f} s",
        ),
        (
            "spawn time of the next student at 10 / 20 / 40 idle",
            " / ".join(f"{at[n]:.1f}" if n in at else "-" for n in (10, 20, 40)),
            "",
            "seconds; '-': not reached; all: " + all_of(times),
        ),
        (
            "idle VM's CPU share (QEMU, 30 s window)",
            f"{med(shares):.2f} %",
            "<= 1 %",
            f"median over {len(shares)} VMs; max {max(shares):.2f} %; mean {statistics.mean(shares):.2f} %",
        ),
        (
            "memory per idle student (PSS: QEMU + JupyterLab tree)",
            f"{med(idle_pss):.0f} MB",
            "",
            f"median over {len(idle_pss)}",
        ),
        (
            "memory per busy student (terminal, gdb attached, module built+loaded)",
            f"{busy:.0f} MB",
            "",
            "one student, while the others idle",
        ),
    ]
    for u in users:
        stop(hub, u)
    return rows


def print_table(rows, load_before: float, commit: str) -> None:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = Path("/proc/meminfo").read_text().split()[1]
    print(
        f"\nmachine: {os.cpu_count()} cores, {cpu}, {int(mem) / 2**20:.0f} GiB; commit {commit}; "
        f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    print("\n| measure | result | target | notes |\n|---|---|---|---|")
    for name, value, target, note in rows:
        print(f"| {name} | {value} | {target} | {note} |")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--max-students", type=int, default=40, help="density: at most this many")
    ap.add_argument(
        "--budget", type=float, default=900, help="density: stop after this many seconds"
    )
    ap.add_argument(
        "--only",
        choices=["share", "checkpoints", "density"],
        action="append",
        help="run only these parts (repeatable)",
    )
    args = ap.parse_args()
    parts = args.only or ["share", "checkpoints", "density"]
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        or "?"
    )
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="kvs-vmcost-"))
    rows: list[tuple] = []
    try:
        with running_hub(work, PROFILES) as hub:
            if "share" in parts:
                rows += share_rows(hub, args.rounds)
            if "checkpoints" in parts:
                rows += checkpoint_rows(hub, args.rounds)
            if "density" in parts:
                rows += density_rows(hub, args.max_students, args.budget, work)
    finally:
        if rows:
            print_table(rows, load_before, commit)


if __name__ == "__main__":
    main()

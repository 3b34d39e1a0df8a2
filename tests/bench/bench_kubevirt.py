"""Benchmark (not a test): students spawning on the real KubeVirt cluster.

Brings up scripts/kubevirt-cluster.sh's cluster (or uses the running one
named by ``KVS_KUBEVIRT_CLUSTER``), starts a hub with KubeVirtSpawner inside
it, and for each group size asks for that many students' servers at the same
moment through JupyterHub's REST API. Per student it records, from the REST
request: the VMI reaching phase Running, the guest's ssh readiness probe
passing (VMI Ready), and the hub's "ready" (the notebook answering); then,
from inside the notebook pod, how long gdb takes to attach to QEMU's gdbstub
through the pod network and read a register. Prints a table.

Run: ``make bench-cluster`` or ``PYTHONPATH=tests .venv/bin/python tests/bench/bench_kubevirt.py --groups 1,4``.
Anchor: KubeVirt's own CI measures VMI creation to Running at a p50 of
15-23 s on real nodes with KVM.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

GDB_ATTACH = (
    's=$(date +%s.%N); gdb -q -nx -batch -iex "set style enabled off" -ex "file $LAB_VMLINUX" '
    '-ex "target remote $LAB_GDB_REMOTE" -ex "info registers rip" -ex detach >/tmp/gdb.out 2>&1; '
    'rc=$?; e=$(date +%s.%N); grep -q "^rip" /tmp/gdb.out || rc=1; echo "$rc $(echo "$e - $s" | bc)"'
)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--groups", default="1,4", help="students spawning at once, per round (default 1,4)"
    )
    p.add_argument(
        "--timeout", type=float, default=900, help="seconds a spawn may take (default 900)"
    )
    a = p.parse_args(argv)
    try:
        a.groups = [int(x) for x in a.groups.split(",")]
    except ValueError:
        p.error(f"--groups must be comma-separated numbers, not {a.groups!r}")
    if not a.groups or min(a.groups) < 1:
        p.error("--groups: each group needs at least 1 student")
    return a


class Watch(threading.Thread):
    """First time each VMI is seen Running, and Ready."""

    def __init__(self, kube, ns: str):
        super().__init__(daemon=True)
        self.kube, self.ns = kube, ns
        self.running: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                items = self.kube.custom.list_namespaced_custom_object(
                    "kubevirt.io", "v1", self.ns, "virtualmachineinstances"
                )["items"]
            except Exception:  # a failed list is retried on the next round
                items = []
            now = time.monotonic()
            for vmi in items:
                name, st = vmi["metadata"]["name"], vmi.get("status") or {}
                if st.get("phase") == "Running":
                    self.running.setdefault(name, now)
                    if any(
                        c["type"] == "Ready" and c["status"] == "True"
                        for c in st.get("conditions") or []
                    ):
                        self.ready.setdefault(name, now)
            self.stop.wait(0.5)


def round_(rc, hub, ns: str, n: int, timeout: float, rnd: int) -> list[dict]:
    from harness.podexec import pod_exec

    users = [f"b{rnd}s{i}" for i in range(n)]
    for u in users:
        hub.create_user(u)
    watch = Watch(rc.kube, ns)
    watch.start()
    t0: dict[str, float] = {}
    done: dict[str, float] = {}
    ok: dict[str, bool] = {}

    def spawn(u):
        t0[u] = time.monotonic()
        r = hub.api("POST", f"/users/{u}/server")
        assert r.status_code in (201, 202), r.text
        events = hub.progress(u, timeout)
        done[u] = time.monotonic()
        ok[u] = bool(events and events[-1].get("ready"))

    threads = [threading.Thread(target=spawn, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    watch.stop.set()
    rows = []
    for u in users:
        row = {"user": u, "ok": ok.get(u, False)}
        vm = f"labvm-{u}"
        if vm in watch.running:
            row["vmi_running"] = watch.running[vm] - t0[u]
        if vm in watch.ready:
            row["ssh_ready"] = watch.ready[vm] - t0[u]
        if ok.get(u):
            row["notebook_ready"] = done[u] - t0[u]
            r = pod_exec(rc.core, ns, f"jupyter-{u}", GDB_ATTACH, container="notebook", timeout=120)
            parts = r.out.split()
            if len(parts) == 2 and parts[0] == "0":
                row["gdb_attach"] = float(parts[1])
        rows.append(row)
    for u in users:
        hub.stop_server(u, timeout=300)
    return rows


def fmt(values: list[float]) -> tuple[str, str]:
    if not values:
        return "-", "-"
    return f"{statistics.median(values):.1f} s", f"{max(values):.1f} s"


def main(argv: list[str]) -> int:
    args = parse(argv)
    from harness.kubehub import wait_nothing_left
    from harness.nodehub import hub_kubeconfig, node_hub, vm_images
    from harness.realcluster import real_cluster

    results = []
    with real_cluster() as rc, rc.namespace() as ns, tempfile.TemporaryDirectory() as work:
        work = Path(work)
        hub = node_hub(
            work,
            ns,
            hub_kubeconfig(rc, ns, work / "kc"),
            rc.netns,
            rc.dialer,
            notebook_image=rc.images["notebook"],
            vm_images=vm_images(rc.images),
            start_timeout=int(args.timeout),
        ).start()
        try:
            for i, n in enumerate(args.groups):
                load = os.getloadavg()[0]
                rows = round_(rc, hub, ns, n, args.timeout, i)
                wait_nothing_left(rc.kube, ns, 300)
                results.append((n, load, os.getloadavg()[0], rows))
        finally:
            hub.close()
        up = rc.timings
    print(f"\nKubeVirt {rc.images['kubevirt_version']} on one node (TCG), cluster bring-up: {up}")
    print("| students at once | measure | median | max | ok | load before/after |")
    print("|---|---|---|---|---|---|")
    for n, l0, l1, rows in results:
        good = sum(r["ok"] for r in rows)
        for key, label in (
            ("vmi_running", "REST request → VMI Running"),
            ("ssh_ready", "REST request → guest ssh-ready (VMI Ready)"),
            ("notebook_ready", "REST request → notebook ready"),
            ("gdb_attach", "gdb attach + read rip through the pod network"),
        ):
            med, mx = fmt([r[key] for r in rows if key in r])
            print(f"| {n} | {label} | {med} | {mx} | {good}/{n} | {l0:.1f}/{l1:.1f} |")
    return 0 if all(r["ok"] for _, _, _, rows in results for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Benchmark (not a test): N users spawned at once through JupyterHub's REST API.

Starts the local control plane (KWOK pods, stand-in KubeVirt), a hub with
KubeVirtSpawner authenticated as the rbac.yaml ServiceAccount, asks for every
user's server at the same moment, waits until all are ready, stops them all,
and checks that nothing is left. Reports the wall times and the hub process's
peak resident memory. Run: ``make bench-cluster`` or
``PYTHONPATH=tests .venv/bin/python tests/bench/bench_spawn_100.py --users 100``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent

from harness.apitier import local_cluster  # noqa: E402
from harness.kubehub import apply_rbac, kube_hub, leftovers  # noqa: E402
from harness.notebook_standin import StandInNotebookServers  # noqa: E402


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class PeakRSS(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            self.done.wait(self.interval)


def servers(hub) -> dict[str, dict]:
    users = hub.api("GET", "/users", params={"limit": 1000}, timeout=60).json()
    users = users["items"] if isinstance(users, dict) else users
    return {u["name"]: (u.get("servers") or {}).get("") for u in users}


def wait_until(what: str, fn, timeout: float, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = fn()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached in {timeout}s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=100, help="users spawned at once (default 100)")
    ap.add_argument(
        "--timeout", type=float, default=900, help="seconds for all to be ready / stopped"
    )
    ap.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = ap.parse_args(argv)
    if args.users < 1:
        ap.error("--users must be at least 1")

    work = Path(tempfile.mkdtemp(prefix="kvs-bench-"))
    result: dict = {
        "users": args.users,
        "machine": f"{os.cpu_count()} cores, {platform.platform()}",
    }
    with local_cluster(work / "cp", nodes=4) as cluster:
        ns = "bench"
        cluster.core.create_namespace({"metadata": {"name": ns}})
        time.sleep(1)  # the namespace's default ServiceAccount
        sa = apply_rbac(cluster, ns)
        kc = cluster.token_kubeconfig(
            work / "hub-kubeconfig", cluster.service_account_token(ns, sa)
        )
        notebooks = StandInNotebookServers(cluster.api_client()).start()
        (work / "hub").mkdir()
        hub = kube_hub(
            work / "hub",
            ns,
            kc,
            start_timeout=int(args.timeout),
            extra="c.JupyterHub.concurrent_spawn_limit = 0\nc.JupyterHub.active_server_limit = 0\n",
        ).start()
        names = [f"bench{i:03d}" for i in range(args.users)]
        try:
            r = hub.api("POST", "/users", json={"usernames": names}, timeout=120)
            assert r.status_code in (201, 409), r.text
            peak = PeakRSS(hub.proc.pid)
            peak.start()
            result["hub_rss_before_mib"] = round(rss_kib(hub.proc.pid) / 1024, 1)

            t0 = time.monotonic()
            with ThreadPoolExecutor(32) as pool:
                codes = list(
                    pool.map(
                        lambda n: hub.api("POST", f"/users/{n}/server", timeout=300).status_code,
                        names,
                    )
                )
            result["post_codes"] = {str(c): codes.count(c) for c in set(codes)}

            def all_ready():
                s = servers(hub)
                gone = [n for n in names if not s.get(n)]
                if gone:
                    raise RuntimeError(
                        f"{len(gone)} spawns failed, e.g. {gone[:5]}:\n{hub.log_tail(30)}"
                    )
                return all(s[n].get("ready") for n in names)

            wait_until("all servers ready", all_ready, args.timeout)
            result["spawn_all_s"] = round(time.monotonic() - t0, 1)
            result["vms"] = len(
                cluster.custom.list_namespaced_custom_object(
                    "kubevirt.io", "v1", ns, "virtualmachines"
                )["items"]
            )

            t1 = time.monotonic()
            with ThreadPoolExecutor(32) as pool:
                list(
                    pool.map(lambda n: hub.api("DELETE", f"/users/{n}/server", timeout=300), names)
                )
            wait_until(
                "all servers stopped",
                lambda: not any(servers(hub).get(n) for n in names),
                args.timeout,
            )
            result["stop_all_s"] = round(time.monotonic() - t1, 1)
            wait_until("nothing left in the namespace", lambda: not leftovers(cluster, ns), 300)
            result["nothing_left_s"] = round(time.monotonic() - t1, 1)
            peak.done.set()
            result["hub_peak_rss_mib"] = round(
                max(peak.peak, rss_kib(hub.proc.pid, "VmHWM")) / 1024, 1
            )
        finally:
            hub.stop()
            notebooks.stop()
    result["commit"] = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True
    ).stdout.strip()
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

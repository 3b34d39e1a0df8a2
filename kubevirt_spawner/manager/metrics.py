"""Prometheus metrics of the lab manager, served on its /metrics.

A registry of its own (not the process-global default), so that tests can
build several managers in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SPAWN_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.spawn_duration = Histogram(
            "kvs_spawn_duration_seconds",
            "Time to start a lab server, by phase: vm (spawn request until the VM "
            "answered ssh and gdb, i.e. the notebook process started) and notebook "
            "(notebook process start until the hub saw the server ready)",
            ["backend", "phase"],
            buckets=SPAWN_BUCKETS,
            registry=r,
        )
        self.running_vms = Gauge(
            "kvs_running_vms", "Lab VMs running now, by backend", ["backend"], registry=r
        )
        self.servers = Gauge(
            "kvs_servers", "Lab servers the hub knows, by state", ["state"], registry=r
        )
        self.reaped = Counter(
            "kvs_reaped_objects_total",
            "Objects the reaper deleted or stopped, by kind and reason",
            ["kind", "reason"],
            registry=r,
        )
        self.flags = Counter(
            "kvs_abuse_flags_total",
            "Abuse flags raised, by rule and action",
            ["rule", "action"],
            registry=r,
        )
        self.vm_cpu = Gauge(
            "kvs_vm_cpu_cores",
            "CPU cores a lab VM used over the last sample",
            ["user"],
            registry=r,
        )
        self.vm_memory = Gauge(
            "kvs_vm_memory_bytes", "Resident memory of a lab VM's QEMU", ["user"], registry=r
        )
        self.check_results = Counter(
            "kvs_check_results_total",
            "Lab check results received, by outcome",
            ["outcome"],
            registry=r,
        )
        self.reaper_errors = Counter(
            "kvs_reaper_errors_total", "Reaper rounds or deletions that failed", registry=r
        )

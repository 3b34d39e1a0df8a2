"""kubevirt_spawner.local.cgroups: the layout read from mountinfo and the limit
files, as tables (the kernel enforcing them: tests/local/test_limits.py)."""

from pathlib import Path

import pytest

from kubevirt_spawner.local.cgroups import (
    Layout,
    Limits,
    ServerCgroup,
    group_dirs,
    limit_files,
    parse_layout,
)

# What these development machines have (v1 mounts, an empty v2 one), and
# what a systemd host with the unified hierarchy has.
V1 = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2 = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


@pytest.mark.parametrize(
    ("mountinfo", "v2_controllers", "expected"),
    [
        pytest.param(
            V1,
            "",
            Layout(
                1,
                {
                    "cpu": "/sys/fs/cgroup/cpu,cpuacct",
                    "memory": "/sys/fs/cgroup/memory",
                    "pids": "/sys/fs/cgroup/pids",
                },
            ),
            id="v1-with-empty-v2",
        ),
        pytest.param(
            V2,
            "cpuset cpu io memory pids",
            Layout(2, {c: "/sys/fs/cgroup" for c in ("cpu", "memory", "pids")}),
            id="v2",
        ),
        pytest.param(V2, "cpu io", None, id="v2-without-memory-and-pids"),
        pytest.param(V2, None, None, id="v2-unreadable"),
        pytest.param("", None, None, id="no-cgroups"),
    ],
)
def test_layout(mountinfo, v2_controllers, expected):
    assert parse_layout(mountinfo, v2_controllers) == expected


V1L = Layout(1, {"cpu": "/c", "memory": "/m", "pids": "/p"})
V2L = Layout(2, {"cpu": "/u", "memory": "/u", "pids": "/u"})


@pytest.mark.parametrize(
    ("layout", "limits", "expected"),
    [
        pytest.param(
            V1L,
            Limits(cpu=1.5, memory=2 << 30, pids=512),
            [
                ("cpu", "cpu.cfs_period_us", "100000"),
                ("cpu", "cpu.cfs_quota_us", "150000"),
                ("memory", "memory.limit_in_bytes", str(2 << 30)),
                ("pids", "pids.max", "512"),
            ],
            id="v1-all",
        ),
        pytest.param(
            V2L,
            Limits(cpu=0.5, memory=1 << 30),
            [
                ("cpu", "cpu.max", "50000 100000"),
                ("memory", "memory.max", str(1 << 30)),
                ("memory", "memory.swap.max", "0"),
            ],
            id="v2-cpu-memory",
        ),
        pytest.param(
            V2L, Limits(cpu=0.001), [("cpu", "cpu.max", "1000 100000")], id="cpu-quota-has-a-floor"
        ),
        pytest.param(V1L, Limits(), [], id="nothing"),
    ],
)
def test_limit_files(layout, limits, expected):
    assert limit_files(layout, limits) == expected


def test_one_group_per_server_under_the_parent():
    assert group_dirs(V1L, "kubevirt-spawner", "alice") == {
        "cpu": Path("/c/kubevirt-spawner/alice"),
        "memory": Path("/m/kubevirt-spawner/alice"),
        "pids": Path("/p/kubevirt-spawner/alice"),
    }


def test_create_writes_the_limits(tmp_path):
    layout = Layout(1, {c: str(tmp_path / c) for c in ("cpu", "memory", "pids")})
    g = ServerCgroup(layout, "kvs", "bob").create(Limits(cpu=1, pids=64))
    assert (tmp_path / "cpu/kvs/bob/cpu.cfs_quota_us").read_text() == "100000"
    assert (tmp_path / "pids/kvs/bob/pids.max").read_text() == "64"
    assert g.pids() == set()

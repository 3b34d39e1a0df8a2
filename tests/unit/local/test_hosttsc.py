"""The guest is told the host's TSC rate (x86_64 under TCG only), measured
with one RDTSC instruction against CLOCK_MONOTONIC."""

import platform
import time
from pathlib import Path

import pytest

from kubevirt_spawner.local import hosttsc
from kubevirt_spawner.local.qemu import RunDir, VMSpec, qemu_argv


def cmdline(tmp_path, **kw) -> str:
    spec = VMSpec(
        rundir=RunDir(tmp_path), kernel=Path("/k"), initrd=Path("/i"), ssh_port=2222, **kw
    )
    argv = qemu_argv(spec)
    return argv[argv.index("-append") + 1]


@pytest.mark.parametrize(
    ("kw", "told"),
    [
        pytest.param({"tsc_khz": 2595363}, True, id="x86-tcg"),
        pytest.param({"tsc_khz": 0}, False, id="unknown-rate"),
        pytest.param({"tsc_khz": 2595363, "accel": "kvm"}, False, id="kvm-calibrates-itself"),
        pytest.param({"tsc_khz": 2595363, "arch": "aarch64"}, False, id="arm-has-its-timer"),
    ],
)
def test_tsc_rate_on_the_kernel_command_line(tmp_path, kw, told):
    line = cmdline(tmp_path, **kw)
    assert ("tsc_early_khz=2595363 tsc=reliable" in line) is told, line


def test_measure_khz_from_a_counter():
    # A counter at exactly 1 GHz of CLOCK_MONOTONIC reads as 1,000,000 kHz.
    # (within 200 ppm: a window starts and ends a few microseconds off)
    assert abs(hosttsc.measure_khz(time.monotonic_ns, samples=3, window=0.01) - 1_000_000) <= 200


@pytest.mark.skipif(platform.machine() != "x86_64", reason="RDTSC is x86_64's")
def test_host_rate_is_plausible_and_stable():
    hosttsc.host_tsc_khz.cache_clear()
    first = hosttsc.host_tsc_khz()
    if not {"constant_tsc", "nonstop_tsc"} <= hosttsc._cpu_flags():
        assert first == 0
        return
    hosttsc.host_tsc_khz.cache_clear()
    again = hosttsc.host_tsc_khz()
    assert 500_000 < first < 6_000_000
    assert abs(first - again) / first < 0.001

"""The host's TSC frequency, which an x86_64 guest under TCG sees as its own.

Why: the lab kernel has no ACPI, so it finds no HPET or PM timer to
calibrate its TSC against, and under TCG its PIT calibration fails too
("tsc: Marking TSC unstable due to could not calculate TSC khz"). It then
keeps the jiffies clocksource, which cannot drive a tickless idle: the
guest takes 250 timer interrupts a second while idle, and each costs QEMU a
wake-up (measured: 4.3 % of a core per idle VM). Told the frequency
(`tsc_early_khz=`), it uses the TSC and idles without ticks (0.15 %).

Under TCG on an x86_64 host the guest's RDTSC is the host's RDTSC plus an
offset (QEMU's cpu_get_host_ticks), so the rate to tell it is the host's,
measured here against CLOCK_MONOTONIC with one RDTSC instruction.
ref: https://www.kernel.org/doc/html/latest/admin-guide/kernel-parameters.html (tsc_early_khz)
"""

from __future__ import annotations

import ctypes
import platform
import statistics
import time
from functools import cache

# rdtsc; shl rdx, 32; or rax, rdx; ret  (x86_64 System V: the result in rax)
_RDTSC = bytes.fromhex("0f3148c1e2204809d0c3")
_PROT_READ, _PROT_WRITE, _PROT_EXEC = 1, 2, 4
_MAP_PRIVATE, _MAP_ANONYMOUS = 0x02, 0x20


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _rdtsc_function():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = libc.mmap(None, 4096, _PROT_READ | _PROT_WRITE, _MAP_PRIVATE | _MAP_ANONYMOUS, -1, 0)
    if page in (None, ctypes.c_void_p(-1).value):
        return None
    ctypes.memmove(page, _RDTSC, len(_RDTSC))
    # Never writable and executable at once.
    if libc.mprotect(page, 4096, _PROT_READ | _PROT_EXEC) != 0:
        return None
    return ctypes.CFUNCTYPE(ctypes.c_uint64)(page)


def measure_khz(rdtsc, samples: int = 5, window: float = 0.03) -> int:
    """The TSC's rate in kHz: the median of ``samples`` windows of ``window`` seconds."""

    def read() -> tuple[float, int]:
        # The counter read between two clock reads, dated at their midpoint.
        before = time.monotonic_ns()
        count = rdtsc()
        return (before + time.monotonic_ns()) / 2, count

    rates = []
    for _ in range(samples):
        t0, c0 = read()
        time.sleep(window)
        t1, c1 = read()
        rates.append((c1 - c0) * 1_000_000 / (t1 - t0))
    return round(statistics.median(rates))


@cache
def host_tsc_khz() -> int:
    """The host's constant TSC rate in kHz, or 0 where it cannot be known
    (not x86_64, a TSC that changes with the CPU's frequency or stops in
    sleep states, or a host that forbids executable memory)."""
    if platform.machine() != "x86_64":
        return 0
    if not {"constant_tsc", "nonstop_tsc"} <= _cpu_flags():
        return 0
    try:
        rdtsc = _rdtsc_function()
    except (OSError, AttributeError):
        return 0
    return measure_khz(rdtsc) if rdtsc is not None else 0

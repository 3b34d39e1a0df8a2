"""Whether KVM works on this host: probed once, remembered, never on a student's time.

``qemu.probe_kvm`` boots the guest kernel under KVM and waits for its banner:
up to ``kvm_probe_timeout`` (10 s) where /dev/kvm exists but KVM does not
work, as on the machines here (docs/local.md). That verdict only changes
with the host kernel or QEMU, so it is kept in ``cache_dir()/kvm-verdicts.json``
keyed by both (the kernel's release and build string, the QEMU binary and
its ``--version``), and a probe runs at most once per process and key:
``start`` begins it in the background (LocalVMSpawner calls it when the hub
creates a spawner: at hub start for the servers that run, when a student
logs in for the others), ``verdict`` awaits the same probe or reads the file.
Delete the file to probe again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

from .guest import cache_dir
from .qemu import probe_kvm

VERDICTS_FILE = "kvm-verdicts.json"

_probes: dict[tuple[str, str], asyncio.Task] = {}


def verdict_key(kernel_release: str, kernel_build: str, qemu: str, qemu_version: str) -> str:
    """The key a verdict is kept under: it changes when the host kernel or QEMU does."""
    return f"linux {kernel_release} ({kernel_build}) | {qemu} | {qemu_version}"


def lookup(verdicts: dict, key: str) -> tuple[bool, str] | None:
    """The kept verdict for ``key`` as (usable, reason), None if there is none."""
    entry = verdicts.get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("kvm"), bool):
        return None
    return entry["kvm"], str(entry.get("why", ""))


def record(verdicts: dict, key: str, usable: bool, why: str, now: float) -> dict:
    """``verdicts`` with this one added (a new dict)."""
    return {**verdicts, key: {"kvm": usable, "why": why, "probed_at": round(now)}}


def read_verdicts(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_verdicts(path: Path, verdicts: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(verdicts, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass  # not kept: the next hub start probes again


async def qemu_version(binary: str) -> str | None:
    """The first line of ``binary --version``, or None if it does not run."""
    try:
        proc = await asyncio.create_subprocess_exec(
            binary,
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    except (OSError, TimeoutError):
        return None
    lines = out.decode(errors="replace").strip().splitlines()
    return lines[0] if proc.returncode == 0 and lines else None


async def _decide(
    kernel: Path, binary: str, timeout: float, path: Path, log: logging.Logger | None
) -> tuple[bool, str]:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    version = await qemu_version(binary)
    if version is None:
        return False, f"cannot run {binary} --version"
    u = os.uname()
    key = verdict_key(u.release, u.version, binary, version)
    kept = lookup(read_verdicts(path), key)
    if kept is not None:
        return kept[0], f"{kept[1]}; probed before for this kernel and QEMU"
    usable, why = await probe_kvm(kernel, binary, timeout)
    _write_verdicts(path, record(read_verdicts(path), key, usable, why, time.time()))
    if log is not None:
        log.info("KVM probe of %s: %s (%s); kept in %s", binary, usable, why, path)
    return usable, why


def start(
    kernel: str | os.PathLike,
    binary: str,
    timeout: float,
    path: str | os.PathLike | None = None,
    log: logging.Logger | None = None,
) -> asyncio.Task:
    """Begin deciding (once per process for this QEMU and kernel) in the
    running event loop; return the task. ``log`` hears of a probe boot."""
    k = (binary, str(kernel))
    task = _probes.get(k)
    loop = asyncio.get_running_loop()
    if task is None or task.cancelled() or (not task.done() and task.get_loop() is not loop):
        where = Path(path) if path else cache_dir() / VERDICTS_FILE
        task = loop.create_task(_decide(Path(kernel), binary, timeout, where, log))
        _probes[k] = task
    return task


async def verdict(
    kernel: str | os.PathLike,
    binary: str,
    timeout: float,
    path: str | os.PathLike | None = None,
    log: logging.Logger | None = None,
) -> tuple[bool, str]:
    """(KVM usable, why): the background probe's answer, or the kept one."""
    return await asyncio.shield(start(kernel, binary, timeout, path, log))

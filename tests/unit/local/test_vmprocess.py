"""Process handling, with real tiny processes standing in for QEMU."""

import asyncio
import subprocess
from pathlib import Path

import pytest

from kubevirt_spawner.local import vmprocess
from kubevirt_spawner.local.qemu import RunDir


def spawn(script: str) -> subprocess.Popen:
    return subprocess.Popen(["sh", "-c", script], start_new_session=True)


async def test_identity_and_group_stop():
    proc = spawn("sleep 300 & sleep 300 & wait")
    for _ in range(100):  # the shell starts its two children when the machine lets it
        kids = vmprocess.descendants(proc.pid)
        if len(kids) == 2:
            break
        await asyncio.sleep(0.1)
    ident = vmprocess.identify(proc.pid)
    assert len(kids) == 2
    assert vmprocess.is_same_process(ident, marker="sleep 300")
    assert not vmprocess.is_same_process(ident, marker="qemu-system")
    await vmprocess.stop_process_group(ident)
    proc.wait(5)
    # The leader is gone; its children were signalled with it and exit when
    # the machine lets them (seen in CI: one still alive a moment later).
    for _ in range(100):
        alive = [k for k in kids if vmprocess.proc_start_time(k) is not None]
        if not alive:
            break
        await asyncio.sleep(0.1)
    assert alive == [], f"the group's children outlived the stop: {alive}"


async def test_recycled_pid_is_not_trusted():
    proc = spawn("sleep 300")
    ident = vmprocess.identify(proc.pid)
    forged = vmprocess.ProcessId(ident.pid, ident.start_time - 1)
    assert not vmprocess.is_same_process(forged)
    await vmprocess.stop_process_group(forged)  # must not touch the real process
    assert proc.poll() is None
    await vmprocess.stop_process_group(ident)
    proc.wait(5)


def fake_console(tmp_path: Path, script: str):
    rd = RunDir(tmp_path)
    proc = spawn(f"cd {tmp_path} && {script}")
    return rd, proc


async def collect(rd, proc, timeout=5):
    return [s async for s in vmprocess.watch_boot(proc, rd, timeout)]


async def test_watch_boot_sees_markers(tmp_path):
    rd, proc = fake_console(
        tmp_path,
        "echo 'labvm: init started (6.1)' >> console.log; sleep 0.3; "
        "echo 'labvm: ssh ready' >> console.log; sleep 30",
    )
    try:
        assert await collect(rd, proc) == ["init", "ssh"]
    finally:
        proc.kill()


@pytest.mark.parametrize(
    ("script", "message"),
    [
        pytest.param(
            "echo 'Kernel panic - not syncing: VFS' >> console.log; sleep 30",
            "kernel panicked",
            id="panic",
        ),
        pytest.param(
            "echo 'could not load kernel' >> qemu.log; exit 1",
            "QEMU exited with status 1",
            id="qemu-exits",
        ),
        pytest.param(
            "echo booting >> console.log; sleep 30",
            "did not finish booting within 1s",
            id="timeout",
        ),
        pytest.param(
            "echo 'labvm: error: no ssh keys' >> console.log; sleep 30",
            "start-up failed",
            id="guest-error",
        ),
    ],
)
async def test_watch_boot_failures(tmp_path, script, message):
    rd, proc = fake_console(tmp_path, script)
    try:
        with pytest.raises(vmprocess.VMStartError, match=message):
            await collect(rd, proc, timeout=1)
    finally:
        proc.kill()
        proc.wait()


def test_missing_qemu_binary(tmp_path):
    with pytest.raises(vmprocess.VMStartError, match="QEMU is not installed"):
        vmprocess.start_qemu(["/nonexistent/qemu"], RunDir(tmp_path), None, None)


def test_tail(tmp_path):
    f = tmp_path / "log"
    f.write_text("".join(f"line {i}\n" for i in range(30)))
    assert vmprocess.tail(f, 2) == "line 28\nline 29"
    assert vmprocess.tail(tmp_path / "none") == ""


async def test_gdbstub_probe_false_without_stub(tmp_path):
    assert not await vmprocess.gdbstub_answers(tmp_path / "none.sock", timeout=1)

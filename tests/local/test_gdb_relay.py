"""No gdb command kills the VM: through LAB_GDB_REMOTE (the relay,
kubevirt_spawner.gdbrelay), gdb's `kill`, a second `target remote` in one
session, and a raw `$k#6b` typed by hand each leave a real QEMU running and
attachable, while a normal session (breakpoint, step, lx-dmesg) works. The
last test shows the danger is real: the same packet sent to QEMU's socket
directly ends QEMU. Plain gdb, without labvm's own gdb script, which refuses
`kill` by itself."""

import os
import shlex
import subprocess

import pytest

from kubevirt_spawner.lab import LabVM, ssh_argv
from kubevirt_spawner.local.standalone import boot_lab_vm

pytestmark = pytest.mark.local


def plain_gdb(vm, *commands: str, timeout: float = 90) -> str:
    env = vm.env
    argv = [
        "gdb",
        "-q",
        "-nx",
        "-batch",
        "-iex",
        f"add-auto-load-safe-path {os.path.realpath(env.kdir)}",
        "-ex",
        "set confirm off",
        "-ex",
        f"file {os.path.realpath(env.vmlinux)}",
        "-ex",
        f"target remote {env.gdb_remote}",
    ]
    for c in commands:
        argv += ["-ex", c]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    return p.stdout + p.stderr


def still_up(lab_vm) -> None:
    assert lab_vm.alive(), "QEMU exited:\n" + lab_vm.console_tail()
    assert LabVM(lab_vm.env).is_up(), "the VM no longer answers ssh"
    out = plain_gdb(lab_vm, "print init_task.comm")
    assert "swapper" in out, out


def test_kill_is_a_detach(lab_vm):
    out = plain_gdb(lab_vm, "kill")
    assert "detached instead" in out, out
    still_up(lab_vm)


def test_a_second_target_remote_does_not_kill_the_first(lab_vm):
    out = plain_gdb(lab_vm, f"target remote {lab_vm.env.gdb_remote}", "print init_task.comm")
    assert "detached instead" in out and "swapper" in out, out
    still_up(lab_vm)


def test_a_raw_kill_packet_by_hand(lab_vm):
    relay = lab_vm.env.gdb_remote.lstrip("| ")
    p = subprocess.run(relay, shell=True, input=b"+$k#6b", capture_output=True, timeout=60)
    assert b"detached instead" in p.stderr, p.stderr
    still_up(lab_vm)


def test_a_normal_session_works_through_the_relay(lab_vm):
    # a system call in the VM a moment after gdb has set its breakpoint
    ssh = shlex.join(ssh_argv(lab_vm.env, "uname -r"))
    trigger = subprocess.Popen(["sh", "-c", f"sleep 3; exec {ssh}"], stdout=subprocess.DEVNULL)
    try:
        out = plain_gdb(
            lab_vm,
            "break __x64_sys_newuname",
            "continue",
            "bt 3",
            "next",
            "lx-dmesg",
            "delete",
            "detach",
        )
    finally:
        trigger.wait(60)
    assert "Breakpoint 1, __x64_sys_newuname" in out, out
    assert "#1" in out and "do_syscall_64" in out, out
    assert "Linux version" in out, "lx-dmesg printed no kernel log:\n" + out
    still_up(lab_vm)


def test_without_the_relay_the_same_packet_ends_qemu(guest, tmp_path):
    vm = boot_lab_vm(guest.root, rundir=tmp_path / "vm")
    try:
        p = subprocess.run(
            ["socat", "-", f"UNIX-CONNECT:{vm.rundir.gdb_socket}"],
            input=b"+$k#6b",
            capture_output=True,
            timeout=60,
        )
        assert p.returncode == 0, p.stderr
        vm.proc.wait(30)
        assert not vm.alive(), "QEMU survived a kill packet: the relay would be pointless"
    finally:
        vm.stop()

"""labvm as a student meets it: --help, wrong commands, no VM, wrong files."""

import os
import subprocess
import sys

import pytest

LABVM = [sys.executable, "-m", "kubevirt_spawner.labvm"]
VM_ENV = {
    "LAB_VM_HOST": "127.0.0.1",
    "LAB_VM_SSH_PORT": "1",  # nothing listens on port 1
    "LAB_GDB_REMOTE": "| true",
    "LAB_ARCH": "x86_64",
    "LAB_SSH_KEY": "/nonexistent/key",
    "LAB_SSH_KNOWN_HOSTS": "/dev/null",
}


def labvm(*args, env=None, cwd=None):
    base = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    return subprocess.run(
        [*LABVM, *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_help_lists_every_command():
    r = labvm("--help")
    assert r.returncode == 0
    for cmd in (
        "status",
        "ssh",
        "console",
        "gdb",
        "push",
        "insmod",
        "dmesg",
        "oops",
        "boot-kernel",
        "reset",
        "kernel-tree",
    ):
        assert cmd in r.stdout


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="no-command"),
        pytest.param(["explode"], id="unknown"),
        pytest.param(["push"], id="push-no-file"),
        pytest.param(["boot-kernel"], id="no-image"),
        pytest.param(["reset", "--timeout", "soon"], id="reset-timeout-word"),
        pytest.param(["reset", "--timeout", "-5"], id="reset-timeout-negative"),
        pytest.param(["reset", "--timeout", "nan"], id="reset-timeout-nan"),
    ],
)
def test_usage_errors_exit_2(args):
    r = labvm(*args)
    assert r.returncode == 2 and "usage: labvm" in r.stderr


def test_no_vm_is_one_line():
    r = labvm("status")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "labvm: This server has no VM (its profile runs labs in the notebook environment only)."
    ]


def test_unreachable_vm_is_one_line():
    r = labvm("dmesg", env=VM_ENV)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("labvm: Cannot reach your VM over ssh"), r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["push", "missing.c"], "No such file to push: missing.c", id="push"),
        pytest.param(["insmod", "notes.txt"], "is not a kernel module", id="insmod-not-ko"),
        pytest.param(["boot-kernel", "missing"], "No such kernel image", id="boot-kernel"),
    ],
)
def test_bad_files(args, message, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    r = labvm(*args, env=VM_ENV, cwd=tmp_path)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_console_without_socket():
    r = labvm("console", env={**VM_ENV, "LAB_VM_CONSOLE": "/nonexistent/console.sock"})
    assert r.returncode == 1 and "console is not there" in r.stderr


def test_gdb_and_ssh_arguments_pass_through():
    from kubevirt_spawner.labvm import parse_args

    ns = parse_args(["gdb", "-batch", "-ex", "break do_sys_open", "-ex", "bt"])
    assert ns.command == "gdb" and ns.gdb_args == [
        "-batch",
        "-ex",
        "break do_sys_open",
        "-ex",
        "bt",
    ]
    ns = parse_args(["ssh", "ls", "-la", "/root"])
    assert ns.command == "ssh" and ns.cmd == ["ls", "-la", "/root"]
    assert parse_args(["insmod", "a.ko", "n=3"]).params == ["n=3"]

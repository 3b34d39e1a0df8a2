"""Suspend and checkpoints without a VM: the stop policy, the state names a
start decides by, meta validation, the QEMU arguments, and `labvm snapshot` /
`labvm suspend` failing in one line where there is nothing to act on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubevirt_spawner import vmstate
from kubevirt_spawner.checkpoints import format_list
from kubevirt_spawner.local.qemu import STATE_NODE, RunDir, VMSpec, qemu_argv
from kubevirt_spawner.local.suspend import should_suspend

LABVM = [sys.executable, "-m", "kubevirt_spawner.labvm"]
KEY = "0123456789ab"


@pytest.mark.parametrize(
    ("policy", "requested", "idle_for", "expected"),
    [
        pytest.param("never", True, 9999, False, id="never-even-if-asked"),
        pytest.param("requested", True, None, True, id="requested-asked"),
        pytest.param("requested", False, 9999, False, id="requested-idle-not-asked"),
        pytest.param("idle", False, 601, True, id="idle-long-enough"),
        pytest.param("idle", False, 599, False, id="idle-too-recent"),
        pytest.param("idle", False, None, False, id="idle-no-activity-known"),
        pytest.param("idle", True, 0, True, id="idle-asked"),
        pytest.param("always", False, 0, True, id="always"),
    ],
)
def test_stop_policy(policy, requested, idle_for, expected):
    assert should_suspend(policy, requested, idle_for, 600) is expected


def test_listing_decides_from_names():
    names = [
        f"checkpoints-{KEY}.qcow2",
        f"suspended-{KEY}",
        "suspended-ffffffffffff",
        "suspended-notakey",
        ".suspending-x",
        "unrestorable-abc",
    ]
    assert vmstate.read_listing(names, KEY) == vmstate.Listing(
        has_image=True, suspended=True, stale=("suspended-ffffffffffff",)
    )
    assert vmstate.read_listing([], KEY) == vmstate.Listing(False, False, ())


def test_state_key_changes_with_what_a_restore_depends_on():
    base = {"guest": "guest-aaa", "qemu": "7.2", "memory_mb": 256}
    assert vmstate.state_key(base) == vmstate.state_key(dict(reversed(base.items())))
    assert vmstate.state_key(base) != vmstate.state_key({**base, "guest": "guest-bbb"})
    assert vmstate.state_key(base) != vmstate.state_key({**base, "memory_mb": 320})
    assert vmstate.KEY_RE.fullmatch(vmstate.state_key(base))


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        pytest.param([], "not an object", id="not-object"),
        pytest.param({"saved_at": 1}, "host key", id="no-host-key"),
        pytest.param(
            {"host_key": "ssh-ed25519 AAAA; rm -rf /", "saved_at": 1},
            "host key",
            id="host-key-injection",
        ),
        pytest.param(
            {"host_key": "ssh-ed25519 AAAA", "saved_at": True}, "save time", id="bool-time"
        ),
    ],
)
def test_meta_is_validated(meta, message):
    with pytest.raises(vmstate.StateError, match=message):
        vmstate.check_meta(meta)


def test_qemu_argv_attaches_the_checkpoint_image_and_resumes(tmp_path):
    rd = RunDir(tmp_path)
    spec = VMSpec(
        rundir=rd,
        kernel=Path("/k"),
        initrd=Path("/i"),
        ssh_port=2222,
        state_image=Path("/home/a,b/.labvm/c.qcow2"),
        incoming=Path("/home/it's/.labvm/s/vm.state.gz"),
    )
    argv = qemu_argv(spec)
    node = argv[argv.index("-blockdev") + 1]
    assert node == (
        f"driver=qcow2,node-name={STATE_NODE},discard=unmap,file.driver=file,"
        "file.filename=/home/a,,b/.labvm/c.qcow2,file.discard=unmap"
    )
    assert argv[argv.index("-incoming") + 1] == (
        "exec:gzip -dc '/home/it'\"'\"'s/.labvm/s/vm.state.gz'"
    )
    snap = VMSpec(
        rundir=rd,
        kernel=Path("/k"),
        initrd=Path("/i"),
        ssh_port=2222,
        incoming=Path("/cache/guest-x/booted-0123456789ab.state"),
    )
    argv = qemu_argv(snap)
    assert argv[argv.index("-incoming") + 1] == "exec:cat /cache/guest-x/booted-0123456789ab.state"
    plain = qemu_argv(VMSpec(rundir=rd, kernel=Path("/k"), initrd=Path("/i"), ssh_port=2222))
    assert "-blockdev" not in plain and "-incoming" not in plain


def test_discard_refuses_what_is_not_a_saved_state(tmp_path):
    (tmp_path / "precious").mkdir()
    for name in ("precious", "../x", "suspended-../../etc", f"suspended-{KEY}"):
        with pytest.raises(vmstate.StateError):
            vmstate.discard(tmp_path, name)
    assert (tmp_path / "precious").is_dir()


def test_helper_answers_in_json_and_exits_1_on_errors(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "kubevirt_spawner.vmstate", "discard"],
        input=json.dumps({"state_dir": str(tmp_path), "name": "x"}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "not a saved VM state" in json.loads(r.stdout)["error"]
    r = subprocess.run(
        [sys.executable, "-m", "kubevirt_spawner.vmstate", "explode"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "usage" in r.stderr


def test_list_table():
    out = format_list(
        [{"name": "before-insmod", "vm-state-size": 43_087_408, "date-sec": 0, "vm-clock-sec": 6}],
        45_000_000,
        1_000_000_000,
    )
    assert "before-insmod" in out and "43.1 MB" in out and "6 s" in out
    assert out.splitlines()[-1] == "storage used 45.0 MB of 1.0 GB"
    assert "no checkpoints" in format_list([], 0, 0)


def labvm(*args, env):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LAB_", "JUPYTERHUB_"))}
    return subprocess.run(
        [*LABVM, *args], env={**base, **env}, capture_output=True, text=True, timeout=60
    )


VM_ENV = {
    "LAB_VM_HOST": "127.0.0.1",
    "LAB_VM_SSH_PORT": "1",
    "LAB_ARCH": "x86_64",
    "LAB_SSH_KEY": "/nonexistent",
    "LAB_SSH_KNOWN_HOSTS": "/dev/null",
}


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        pytest.param(
            ["snapshot", "list"],
            {"LAB_BACKEND": "kubevirt"},
            "KubeVirt has no memory",
            id="cluster-snapshot",
        ),
        pytest.param(
            ["suspend"], {"LAB_BACKEND": "kubevirt"}, "KubeVirt has no memory", id="cluster-suspend"
        ),
        pytest.param(
            ["snapshot", "save", "x"],
            {"LAB_VM_QMP": "/nonexistent/qmp.sock", "LAB_VM_STATE_DIR": "/nonexistent"},
            "Your VM is not running",
            id="vm-down",
        ),
        pytest.param(
            ["snapshot", "list"],
            {"LAB_VM_QMP": "/nonexistent/qmp.sock"},
            "no checkpoint storage",
            id="no-state-dir",
        ),
        pytest.param(
            ["snapshot", "save", "a b"],
            {"LAB_VM_QMP": "/x", "LAB_VM_STATE_DIR": "/x"},
            "Bad checkpoint name",
            id="bad-name",
        ),
        pytest.param(
            ["suspend"],
            {"LAB_VM_QMP": "/nonexistent/qmp.sock"},
            "not a hub-started server",
            id="suspend-no-hub",
        ),
        pytest.param(
            ["suspend"],
            {"LAB_VM_QMP": "/x", "LAB_VM_SUSPEND": "never"},
            "turned off",
            id="suspend-off",
        ),
    ],
)
def test_labvm_snapshot_and_suspend_fail_in_one_line(args, env, says):
    r = labvm(*args, env={**VM_ENV, **env})
    errors = [line for line in r.stderr.splitlines() if line.startswith("labvm:")]
    assert r.returncode == 1 and len(errors) == 1 and says in errors[0], r.stderr


@pytest.mark.parametrize("args", [["snapshot"], ["snapshot", "save"], ["snapshot", "undo"]])
def test_snapshot_usage_errors_exit_2(args):
    r = labvm(*args, env=VM_ENV)
    assert r.returncode == 2 and "usage: labvm" in r.stderr


def test_key_follows_the_guest_build_and_a_rebuild_in_place(tmp_path):
    from kubevirt_spawner.local.guest import Guest
    from kubevirt_spawner.local.suspend import key_parts

    def guest(name: str) -> Guest:
        root = tmp_path / name
        root.mkdir(exist_ok=True)
        for f in ("bzImage", "initramfs.cpio.gz"):
            if not (root / f).exists():
                (root / f).write_bytes(b"x" * 10)
        return Guest(root)

    shape = {"arch": "x86_64", "memory_mb": 256}
    one = vmstate.state_key(key_parts(guest("guest-a"), "/bin/true", shape))
    assert one == vmstate.state_key(key_parts(guest("guest-a"), "/bin/true", shape))
    assert one != vmstate.state_key(key_parts(guest("guest-b"), "/bin/true", shape))
    (tmp_path / "guest-a" / "bzImage").write_bytes(b"y" * 11)  # rebuilt where it was
    assert one != vmstate.state_key(key_parts(guest("guest-a"), "/bin/true", shape))

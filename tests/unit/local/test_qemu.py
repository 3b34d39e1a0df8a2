from pathlib import Path

import pytest

from kubevirt_spawner.local.qemu import (
    RunDir,
    VMSpec,
    gdb_remote_for_socket,
    kernel_cmdline,
    qemu_argv,
)

RD = RunDir(Path("/run/kvs/alice"))


def spec(**kw):
    base = dict(rundir=RD, kernel=Path("/g/bzImage"), initrd=RD.initrd, ssh_port=40022)
    return VMSpec(**{**base, **kw})


def test_argv_x86_64_tcg_whole():
    assert qemu_argv(spec()) == [
        "qemu-system-x86_64",
        "-name",
        "labvm,process=labvm",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-machine",
        "q35",
        "-accel",
        "tcg,tb-size=64",
        "-m",
        "256",
        "-smp",
        "1",
        "-kernel",
        "/g/bzImage",
        "-initrd",
        "/run/kvs/alice/initrd.img",
        "-append",
        "console=ttyS0 nokaslr panic=-1 printk.devkmsg=on",
        "-chardev",
        "socket,id=console,path=/run/kvs/alice/console.sock,server=on,wait=off,"
        "logfile=/run/kvs/alice/console.log,logappend=on",
        "-serial",
        "chardev:console",
        "-qmp",
        "unix:/run/kvs/alice/qmp.sock,server=on,wait=off",
        "-gdb",
        "unix:/run/kvs/alice/gdb.sock,server=on,wait=off",
        "-netdev",
        "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22,restrict=on",
        "-device",
        "virtio-net-pci,netdev=net0",
        "-device",
        "virtio-rng-pci",
        "-pidfile",
        "/run/kvs/alice/qemu.pid",
        "-device",
        "edu,bus=pcie.0,addr=0x10",
    ]


def test_kvm_uses_host_cpu():
    argv = qemu_argv(spec(accel="kvm"))
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert argv[argv.index("-cpu") + 1] == "host"


def test_options_map_to_argv():
    argv = qemu_argv(
        spec(
            memory_mb=512,
            cpus=2,
            edu=False,
            network_restrict=False,
            kernel_args=("loglevel=7",),
            extra_args=("-snapshot",),
        ),
        binary="/opt/qemu",
    )
    assert argv[0] == "/opt/qemu"
    assert argv[argv.index("-m") + 1] == "512" and argv[argv.index("-smp") + 1] == "2"
    assert not any(a.startswith("edu") for a in argv)
    assert "restrict=on" not in argv[argv.index("-netdev") + 1]
    assert argv[argv.index("-append") + 1].endswith(" loglevel=7")
    assert argv[-1] == "-snapshot"


def test_aarch64_has_no_edu_and_uses_virt():
    argv = qemu_argv(spec(arch="aarch64"))
    assert argv[0] == "qemu-system-aarch64"
    assert argv[argv.index("-machine") + 1].startswith("virt")
    assert not any(a.startswith("edu") for a in argv)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        pytest.param({"arch": "riscv64"}, "unsupported arch", id="arch"),
        pytest.param({"accel": "hvf"}, "accel must be", id="accel"),
        pytest.param({"ssh_port": 0}, "ssh port out of range", id="port-zero"),
        pytest.param({"ssh_port": 70000}, "ssh port out of range", id="port-high"),
        pytest.param({"memory_mb": 16}, "at least 64 MiB", id="memory"),
        pytest.param({"cpus": 0}, "at least one CPU", id="cpus"),
    ],
)
def test_bad_spec_is_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        qemu_argv(spec(**kw))


def test_rundir_too_long_for_sockets():
    with pytest.raises(ValueError, match="too long for unix sockets"):
        RunDir(Path("/tmp/" + "x" * 100))


def test_gdb_remote_goes_through_the_relay_and_quotes_the_path():
    assert (
        gdb_remote_for_socket(Path("/run/a b/gdb.sock"), python="/opt/venv/bin/python")
        == "| /opt/venv/bin/python -m kubevirt_spawner.gdbrelay unix:'/run/a b/gdb.sock'"
    )


def test_kernel_cmdline_keeps_symbols_stable():
    line = kernel_cmdline(("quiet",))
    assert "nokaslr" in line.split() and line.endswith("quiet")

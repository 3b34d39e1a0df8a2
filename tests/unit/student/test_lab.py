import pytest

from kubevirt_spawner.lab import LabEnv, LabError, LabVM, NoVMError, gdb_argv, ssh_argv

ENV = {
    "LAB_VM_HOST": "127.0.0.1",
    "LAB_VM_SSH_PORT": "40022",
    "LAB_GDB_REMOTE": "| socat - UNIX-CONNECT:/run/kvs/a/gdb.sock",
    "LAB_VMLINUX": "/g/vmlinux",
    "LAB_KDIR": "/g/kdir",
    "LAB_ARCH": "x86_64",
    "LAB_SSH_KEY": "/run/kvs/a/id_ed25519",
    "LAB_SSH_KNOWN_HOSTS": "/run/kvs/a/known_hosts",
    "LAB_BACKEND": "local",
}


def test_environ_round_trip():
    env = LabEnv.from_environ(ENV)
    assert env.ssh_port == 40022
    assert env.to_environ() == ENV


def test_no_vm():
    with pytest.raises(NoVMError, match="has no VM"):
        LabEnv.from_environ({"LAB_ARCH": "x86_64"})


def test_bad_port():
    with pytest.raises(LabError, match="not a port number"):
        LabEnv.from_environ({**ENV, "LAB_VM_SSH_PORT": "twenty-two"})


def test_ssh_argv_pins_host_key_and_uses_own_key():
    argv = ssh_argv(LabEnv.from_environ(ENV), "uname -r")
    assert argv[0] == "ssh" and argv[-2:] == ["root@127.0.0.1", "uname -r"]
    assert ["-i", "/run/kvs/a/id_ed25519"] == argv[1:3]
    assert "StrictHostKeyChecking=yes" in argv
    assert "UserKnownHostsFile=/run/kvs/a/known_hosts" in argv
    assert "BatchMode=yes" in argv


def test_gdb_argv_attaches_with_symbols():
    argv = gdb_argv(LabEnv.from_environ(ENV), ["bt"])
    assert "-batch" in argv
    assert argv[argv.index("target remote | socat - UNIX-CONNECT:/run/kvs/a/gdb.sock") - 1] == "-ex"
    assert "file /g/vmlinux" in argv and argv[-1] == "bt"


@pytest.fixture
def vm():
    return LabVM(LabEnv.from_environ(ENV))


def test_push_missing_file(vm, tmp_path):
    with pytest.raises(LabError, match="No such file to push"):
        vm.push(tmp_path / "nope.c")


def test_insmod_needs_a_ko(vm, tmp_path):
    f = tmp_path / "hello.c"
    f.write_text("int x;")
    with pytest.raises(LabError, match="not a kernel module"):
        vm.insmod(f)


def test_boot_kernel_refuses_non_kernel(vm, tmp_path):
    f = tmp_path / "bzImage"
    f.write_bytes(b"\0" * 4096)
    with pytest.raises(LabError, match="not a bootable x86 kernel"):
        vm.boot_kernel(f)
    with pytest.raises(LabError, match="No such kernel image"):
        vm.boot_kernel(tmp_path / "missing")

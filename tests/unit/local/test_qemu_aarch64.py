"""aarch64 guests: QEMU argv, the arch table, the guest directory, the
toolchain environment and the spawner's arch setting. Pure, no QEMU."""

import platform
from pathlib import Path

import pytest
from traitlets import TraitError

from kubevirt_spawner.arch import ARCHES, UnknownArch, c_compiler, get_arch, toolchain_env
from kubevirt_spawner.lab import LabEnv, gdb_argv
from kubevirt_spawner.local.guest import Guest, GuestNotBuilt, default_guest_dir
from kubevirt_spawner.local.qemu import RunDir, VMSpec, kernel_cmdline, qemu_argv
from kubevirt_spawner.local.settings import LocalVMSettings

RD = RunDir(Path("/run/kvs/bob"))


def spec(**kw):
    base = dict(
        rundir=RD, kernel=Path("/g/Image"), initrd=RD.initrd, ssh_port=40023, arch="aarch64"
    )
    return VMSpec(**{**base, **kw})


def test_argv_aarch64_tcg_whole():
    assert qemu_argv(spec()) == [
        "qemu-system-aarch64",
        "-name",
        "labvm,process=labvm",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-machine",
        "virt,gic-version=3,its=off,dtb-randomness=off",
        "-accel",
        "tcg,tb-size=64",
        "-cpu",
        "max,pauth-impdef=on",
        "-m",
        "256",
        "-smp",
        "1",
        "-kernel",
        "/g/Image",
        "-initrd",
        "/run/kvs/bob/initrd.img",
        "-append",
        "console=ttyAMA0 nokaslr panic=-1 printk.devkmsg=on",
        "-chardev",
        "socket,id=console,path=/run/kvs/bob/console.sock,server=on,wait=off,"
        "logfile=/run/kvs/bob/console.log,logappend=on",
        "-serial",
        "chardev:console",
        "-qmp",
        "unix:/run/kvs/bob/qmp.sock,server=on,wait=off",
        "-gdb",
        "unix:/run/kvs/bob/gdb.sock,server=on,wait=off",
        "-netdev",
        "user,id=net0,hostfwd=tcp:127.0.0.1:40023-:22,restrict=on",
        "-device",
        "virtio-net-pci,netdev=net0",
        "-device",
        "virtio-rng-pci",
        "-pidfile",
        "/run/kvs/bob/qemu.pid",
    ]


def test_argv_aarch64_kvm_uses_host_cpu_and_no_edu_even_if_asked():
    argv = qemu_argv(spec(accel="kvm", edu=True, cpus=2, kernel_args=("loglevel=7",)))
    assert argv[argv.index("-cpu") + 1] == "host"
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert argv[argv.index("-append") + 1] == (
        "console=ttyAMA0 nokaslr panic=-1 printk.devkmsg=on loglevel=7"
    )
    assert not any("edu" in a for a in argv)


@pytest.mark.parametrize(
    "arch",
    [
        pytest.param("arm64", id="kbuild-name-not-uname"),
        pytest.param("riscv64", id="unknown"),
        pytest.param("", id="empty"),
        pytest.param("AARCH64", id="case"),
    ],
)
def test_unknown_arch_is_one_clear_line(arch):
    with pytest.raises(ValueError) as e:
        qemu_argv(spec(arch=arch))
    assert str(e.value) == f"unsupported arch {arch!r}; choose one of: aarch64, x86_64"
    assert isinstance(e.value, UnknownArch)


def test_kernel_cmdline_console_per_arch():
    assert kernel_cmdline((), ARCHES["aarch64"].console).startswith("console=ttyAMA0 nokaslr")
    assert kernel_cmdline().startswith("console=ttyS0 nokaslr")


@pytest.mark.parametrize(
    ("arch", "host", "env", "cc"),
    [
        pytest.param(
            "aarch64",
            "x86_64",
            {"ARCH": "arm64", "CROSS_COMPILE": "aarch64-linux-gnu-"},
            "aarch64-linux-gnu-gcc",
            id="cross-to-arm64",
        ),
        pytest.param("x86_64", "x86_64", {}, "gcc", id="native-x86"),
        pytest.param("aarch64", "aarch64", {}, "gcc", id="native-arm64"),
        pytest.param(
            "x86_64",
            "aarch64",
            {"ARCH": "x86", "CROSS_COMPILE": "x86_64-linux-gnu-"},
            "x86_64-linux-gnu-gcc",
            id="cross-to-x86",
        ),
    ],
)
def test_toolchain_env_and_compiler(arch, host, env, cc):
    assert toolchain_env(arch, host) == env
    assert c_compiler(arch, host) == cc


def test_toolchain_env_refuses_unknown_arch():
    with pytest.raises(UnknownArch, match="unsupported arch 'mips'"):
        toolchain_env("mips", "x86_64")


def test_arch_table_names_match_uname():
    assert get_arch("aarch64").kbuild_arch == "arm64"
    assert get_arch("aarch64").kube_arch == "arm64"
    assert get_arch("aarch64").syscall_prefix == "__arm64_sys_"
    assert not get_arch("aarch64").has_edu and get_arch("x86_64").has_edu


def make_guest(root: Path, arch: str | None, kernel: str) -> Path:
    root.mkdir()
    for name in (kernel, "vmlinux", "initramfs.cpio.gz"):
        (root / name).write_text("x")
    if arch is not None:
        (root / "arch").write_text(arch + "\n")
    return root


def test_guest_aarch64_kernel_is_Image(tmp_path):
    g = Guest.find(make_guest(tmp_path / "g", "aarch64", "Image"), "aarch64")
    assert g.arch == "aarch64" and g.kernel == tmp_path / "g" / "Image"


def test_guest_without_arch_file_is_x86(tmp_path):
    g = Guest.find(make_guest(tmp_path / "g", None, "bzImage"))
    assert g.arch == "x86_64" and g.kernel.name == "bzImage"


def test_guest_of_other_arch_names_the_build_command(tmp_path):
    root = make_guest(tmp_path / "g", "x86_64", "bzImage")
    with pytest.raises(GuestNotBuilt, match=r"built for x86_64, not aarch64.*make guest-aarch64"):
        Guest.find(root, "aarch64")


def test_missing_aarch64_guest_names_its_build_command(tmp_path):
    with pytest.raises(GuestNotBuilt, match=r"Image, vmlinux.*`make guest-aarch64`"):
        Guest.find(tmp_path / "nothing", "aarch64")


def test_guest_with_unknown_arch_file(tmp_path):
    root = make_guest(tmp_path / "g", "sparc64", "Image")
    with pytest.raises(GuestNotBuilt, match="unsupported arch 'sparc64'"):
        Guest.find(root)


def test_default_guest_dirs(monkeypatch, tmp_path):
    monkeypatch.setenv("KVS_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("KVS_GUEST_DIR", raising=False)  # (the test suite pins it)
    monkeypatch.delenv("KVS_GUEST_DIR_AARCH64", raising=False)
    assert default_guest_dir() == tmp_path / "guest" / "current"
    assert default_guest_dir("aarch64") == tmp_path / "guest" / "current-aarch64"
    monkeypatch.setenv("KVS_GUEST_DIR_AARCH64", "/srv/guests/arm")
    assert default_guest_dir("aarch64") == Path("/srv/guests/arm")
    with pytest.raises(UnknownArch):
        default_guest_dir("ppc64le")


def test_vm_arch_setting_refuses_unknown_arch_in_one_line():
    s = LocalVMSettings()
    s.vm_arch = "aarch64"
    with pytest.raises(TraitError) as e:
        s.vm_arch = "arm"
    assert str(e.value) == (
        "LocalVMSpawner.vm_arch: unsupported arch 'arm'; choose one of: aarch64, x86_64"
    )


def test_gdb_for_aarch64_sets_its_architecture():
    env = LabEnv(
        vm_host="127.0.0.1",
        ssh_port=2222,
        gdb_remote="| socat - UNIX-CONNECT:/g",
        vmlinux="/g/vmlinux",
        kdir="",
        arch="aarch64",
        ssh_key="k",
        known_hosts="h",
    )
    argv = gdb_argv(env, ["bt"])
    if platform.machine() != "aarch64":
        i = argv.index("set architecture aarch64")
        assert argv[i - 1] == "-ex"
        assert i < argv.index("file /g/vmlinux")
    else:
        assert "set architecture aarch64" not in argv


LOCAL_PROFILES = [
    {"display_name": "x86", "slug": "x86", "default": True},
    {
        "display_name": "arm",
        "slug": "arm",
        "spawner_override": {"vm_arch": "aarch64", "vm_memory_mb": 512},
    },
    {"display_name": "bad", "slug": "bad", "spawner_override": {"vm_arch": "mips"}},
]


def test_profile_picks_arch_and_the_next_profile_does_not_inherit_it(monkeypatch, tmp_path):
    from kubevirt_spawner.local.spawner import LocalVMSpawner

    monkeypatch.setenv("KVS_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("KVS_GUEST_DIR", raising=False)  # (the test suite pins them)
    monkeypatch.delenv("KVS_GUEST_DIR_AARCH64", raising=False)
    s = LocalVMSpawner(profile_list=LOCAL_PROFILES)
    s.user_options = {"profile": "arm"}
    assert s._apply_profile() == "arm"
    assert (s.vm_arch, s.vm_memory_mb) == ("aarch64", 512)
    assert s._guest_dir() == tmp_path / "guest" / "current-aarch64"
    s.user_options = {"profile": "x86"}
    assert s._apply_profile() == "x86"
    assert (s.vm_arch, s.vm_memory_mb) == ("", 256)
    assert s._guest_dir() == tmp_path / "guest" / "current"


def test_profile_with_unknown_arch_is_a_one_line_spawn_error():
    from kubevirt_spawner.local.spawner import LocalVMSpawner
    from kubevirt_spawner.spawnerror import SpawnError

    s = LocalVMSpawner(profile_list=LOCAL_PROFILES)
    s.user_options = {"profile": "bad"}
    with pytest.raises(SpawnError) as e:
        s._apply_profile()
    assert str(e.value) == (
        "profile 'bad': LocalVMSpawner.vm_arch: unsupported arch 'mips'; "
        "choose one of: aarch64, x86_64"
    )


def test_compile_program_refuses_an_unknown_lab_arch(monkeypatch, tmp_path):
    from kubevirt_spawner.checks import CheckFailed, compile_program

    src = tmp_path / "hi.c"
    src.write_text("int main(void) { return 0; }\n")
    monkeypatch.setenv("LAB_ARCH", "mips")
    with pytest.raises(CheckFailed) as e:
        compile_program(src)
    assert str(e.value) == (
        "LAB_ARCH names no VM this notebook can compile for: "
        "unsupported arch 'mips'; choose one of: aarch64, x86_64."
    )

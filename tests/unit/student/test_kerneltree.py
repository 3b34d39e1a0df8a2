"""The student's kernel tree (lab 4) on a small built-looking tree: what is
linked, copied, skipped; editing, restoring and diffing; wrong input.

The real course tree is exercised by tests/local/test_notebooks.py (lab 4
rebuilds and boots a kernel from such a tree)."""

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubevirt_spawner import kerneltree
from kubevirt_spawner.kerneltree import KernelTreeError, classify

NOW = int(time.time())
T_SOURCE, T_FIXDEP, T_BUILT = NOW - 3 * 86400, NOW - 86400, NOW - 86400 + 100

SOURCES = {
    "Makefile": "all:\n",
    "kernel/sys.c": "int sys;\n",
    "kernel/Makefile": "obj-y += sys.o\n",
    "include/linux/a.h": "#define A 1\n",
    "Documentation/x.txt": "docs\n",
    "arch/x86/entry/t.tbl": "1 common one sys_one\n",
    "scripts/basic/fixdep.c": "int main;\n",
}


def put(root: Path, rel: str, text: str, mtime: float) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    os.utime(p, (mtime, mtime))
    return p


@pytest.fixture
def kdir(tmp_path) -> Path:
    """A tree shaped like the course build: sources older than fixdep, outputs newer."""
    k = tmp_path / "course"
    for rel, text in SOURCES.items():
        put(k, rel, text, T_SOURCE)
    os.symlink("x86", k / "arch/x86_64")  # a relative link that came with the source
    put(k, "scripts/basic/fixdep", "ELF", T_FIXDEP)
    put(k, "kernel/sys.o", "object", T_BUILT)
    put(k, "kernel/.sys.o.cmd", "cmd_kernel/sys.o := gcc -c kernel/sys.c\n", T_BUILT)
    put(k, "include/generated/g.h", "#define G 1\n", T_BUILT)
    put(k, "tools/objtool/.check.o.cmd", f"cmd := gcc {k}/tools/objtool/check.c\n", T_BUILT)
    put(k, "vmlinux", "ELF vmlinux", T_BUILT)
    put(k, ".tmp_vmlinux.kallsyms1.S", "scratch", T_BUILT)
    put(k, ".config", "CONFIG_X=y\n", T_BUILT)
    return k


@pytest.mark.parametrize(
    "rel,mtime,want",
    [
        pytest.param("kernel/sys.c", T_SOURCE, "link", id="source"),
        pytest.param("kernel/sys.o", T_BUILT, "link", id="object-unlinked-by-as"),
        pytest.param("kernel/built-in.a", T_BUILT, "link", id="archive-rm-f-first"),
        pytest.param("vmlinux", T_BUILT, "link", id="vmlinux-by-ld"),
        pytest.param("kernel/.sys.o.cmd", T_BUILT, "copy", id="cmd-by-redirection"),
        pytest.param("include/generated/g.h", T_BUILT, "copy", id="generated-header"),
        pytest.param(".tmp_vmlinux.kallsyms1.S", T_BUILT, "skip", id="link-scratch"),
        pytest.param("scripts/basic/fixdep", T_FIXDEP, "copy", id="fixdep-itself-is-built"),
    ],
)
def test_classify(rel, mtime, want):
    assert classify(rel, mtime, T_FIXDEP) == want


def test_create_links_sources_copies_outputs(kdir, tmp_path):
    dest = tmp_path / "linux"
    done = kerneltree.create(kdir, dest)
    assert done.dest == dest
    assert os.readlink(dest / "kernel/sys.c") == str(kdir / "kernel/sys.c")
    assert os.readlink(dest / "kernel/sys.o") == str(kdir / "kernel/sys.o")
    # Directories with nothing built below are linked whole.
    assert os.readlink(dest / "Documentation") == str(kdir / "Documentation")
    assert os.readlink(dest / "include/linux") == str(kdir / "include/linux")
    assert not (dest / "include").is_symlink() and not (dest / "kernel").is_symlink()
    assert os.readlink(dest / "arch/x86_64") == "x86"
    copy = dest / "include/generated/g.h"
    assert not copy.is_symlink() and copy.read_text() == "#define G 1\n"
    assert copy.stat().st_mtime == T_BUILT
    # Host tools' dependency files name the tree they were built in: now ours.
    cmd = dest / "tools/objtool/.check.o.cmd"
    assert cmd.read_text() == f"cmd := gcc {dest}/tools/objtool/check.c\n"
    assert cmd.stat().st_mtime == T_BUILT
    assert not (dest / ".tmp_vmlinux.kallsyms1.S").exists()
    assert kerneltree.course_tree(dest) == kdir.resolve()
    assert not (tmp_path / "linux.partial").exists()
    assert done.copied == 5 and done.copied_bytes > 0


def test_create_refuses_a_non_empty_directory_and_a_tree_never_built(kdir, tmp_path):
    dest = tmp_path / "linux"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(KernelTreeError, match="already exists and is not empty"):
        kerneltree.create(kdir, dest)
    assert (dest / "notes.txt").read_text() == "mine"
    (kdir / "scripts/basic/fixdep").unlink()
    with pytest.raises(KernelTreeError, match="is not a built kernel tree"):
        kerneltree.create(kdir, tmp_path / "other")


def test_edit_restore_and_diff(kdir, tmp_path):
    dest = tmp_path / "linux"
    kerneltree.create(kdir, dest)
    assert kerneltree.changed(dest) == [] and kerneltree.diff(dest) == ""

    mk = kerneltree.own(dest, "kernel/Makefile")
    assert not mk.is_symlink() and mk.stat().st_mode & stat.S_IWUSR
    assert mk.stat().st_mtime > T_BUILT  # newer than every output: make rebuilds its users
    mk.write_text(mk.read_text() + "obj-y += lab.o\n")
    # A file in a directory that was linked whole: the directory is opened up.
    h = kerneltree.own(dest, dest / "include/linux/a.h")
    assert not (dest / "include/linux").is_symlink()
    h.write_text("#define A 2\n")
    (dest / "kernel/lab.c").write_text("int lab;\n")  # a new source file
    (dest / "kernel/lab.o").write_text("object")  # and its build output
    owned_unchanged = kerneltree.own(dest, "kernel/sys.c")

    assert kerneltree.changed(dest) == ["include/linux/a.h", "kernel/Makefile", "kernel/lab.c"]
    patch = kerneltree.diff(dest)
    assert "+obj-y += lab.o\n" in patch and "+#define A 2\n" in patch
    assert "+++ b/kernel/lab.c\n" in patch and "+int lab;\n" in patch
    # The course tree never changes.
    assert (kdir / "kernel/Makefile").read_text() == SOURCES["kernel/Makefile"]
    assert (kdir / "include/linux/a.h").read_text() == SOURCES["include/linux/a.h"]

    kerneltree.restore(dest, "include/linux/a.h")
    kerneltree.restore(dest, "kernel/lab.c")
    kerneltree.restore(dest, owned_unchanged)
    assert os.readlink(dest / "include/linux/a.h") == str(kdir.resolve() / "include/linux/a.h")
    assert not (dest / "kernel/lab.c").exists()
    assert kerneltree.changed(dest) == ["kernel/Makefile"]


def test_wrong_paths_say_what_is_wrong(kdir, tmp_path):
    dest = tmp_path / "linux"
    kerneltree.create(kdir, dest)
    with pytest.raises(KernelTreeError, match="is not inside the kernel tree"):
        kerneltree.own(dest, tmp_path / "elsewhere.c")
    with pytest.raises(KernelTreeError, match="No directory nosuchdir"):
        kerneltree.own(dest, "nosuchdir/x.c")
    with pytest.raises(KernelTreeError, match="not in the course kernel tree"):
        kerneltree.restore(dest, "kernel/never.c")
    with pytest.raises(KernelTreeError, match="not a kernel tree made by"):
        kerneltree.own(tmp_path, "x.c")


LABVM = [sys.executable, "-m", "kubevirt_spawner.labvm"]


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


def test_labvm_kernel_tree_round_trip(kdir, tmp_path):
    env = {"LAB_KDIR": str(kdir), "HOME": str(tmp_path)}
    r = labvm("kernel-tree", "init", env=env)
    assert r.returncode == 0, r.stderr
    assert "links" in r.stdout and (tmp_path / "linux/.labvm-kernel-tree").exists()
    # From inside the tree, paths are relative to where the student is.
    r = labvm("kernel-tree", "edit", "Makefile", env=env, cwd=tmp_path / "linux/kernel")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "linux/kernel/Makefile")
    (tmp_path / "linux/kernel/Makefile").write_text("obj-y += other.o\n")
    r = labvm("kernel-tree", "diff", env=env)
    assert r.returncode == 0 and "+obj-y += other.o" in r.stdout


@pytest.mark.parametrize(
    "args,env,message",
    [
        pytest.param(["kernel-tree", "init"], {}, "LAB_KDIR is not set", id="no-kdir"),
        pytest.param(["kernel-tree", "edit", "x.c"], {}, "not a kernel tree made by", id="no-tree"),
    ],
)
def test_labvm_kernel_tree_errors_are_one_line(args, env, message, tmp_path):
    r = labvm(*args, env={"HOME": str(tmp_path), **env}, cwd=tmp_path)
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("labvm: ") and message in line


@pytest.mark.parametrize("args", [["kernel-tree"], ["kernel-tree", "edit"], ["kernel-tree", "x"]])
def test_labvm_kernel_tree_usage_errors_exit_2(args):
    r = labvm(*args)
    assert r.returncode == 2 and "usage: labvm" in r.stderr

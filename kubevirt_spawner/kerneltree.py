"""A student's own kernel tree, made cheaply from the course's built one.

The course kernel (``LAB_KDIR``) is a finished in-tree build: about 80,000
source files and 600 MB of build output, read-only and shared by every
student. Lab 4 needs a tree the student can edit and rebuild *incrementally*
(a full build is minutes; the lab's loop must be one). A copy would cost 2 GB
per student, so the tree is a farm:

* every **source file** is a symlink into ``LAB_KDIR``; the student "takes"
  a file (``own``) before editing it, which swaps the link for a private copy.
  Editors that write through symlinks therefore hit a read-only file and say
  so, instead of changing the course tree;
* **object files and archives** (``*.o``, ``*.a``) are symlinks too: gcc's
  assembler, ld and kbuild's ``ar`` step unlink their output before writing
  (bfd's ``unlink_if_ordinary``; kbuild's ``rm -f $@``), so a rebuilt object
  replaces the link with the student's own file;
* **every other build output** (``.cmd`` dependency files, generated headers,
  ``.config``, host tools, final images) is copied with its timestamp, because
  kbuild rewrites many of them with a shell redirection, which would follow a
  link.

Timestamps are what make the next ``make`` incremental: links report the
target's time, copies keep theirs, so only what depends on an owned file
rebuilds. A build output is told from a source by time: kbuild's first act is
to compile ``scripts/basic/fixdep``, so anything older than fixdep came with
the source (checked against Debian's linux-source tarball: exactly its
78,579 files).
"""

from __future__ import annotations

import difflib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

FIRST_BUILT = "scripts/basic/fixdep"
MARKER = ".labvm-kernel-tree"  # in the tree: the path of the course tree it came from
LINKED_OUTPUTS = (".o", ".a")


class KernelTreeError(Exception):
    """A student-facing problem with a kernel tree (message in plain words)."""


@dataclass(frozen=True)
class TreeSummary:
    dest: Path
    linked: int
    copied: int
    copied_bytes: int


def _build_started(kdir: Path) -> float:
    try:
        return (kdir / FIRST_BUILT).stat().st_mtime
    except FileNotFoundError:
        raise KernelTreeError(
            f"{kdir} is not a built kernel tree (no {FIRST_BUILT}); LAB_KDIR must point at one."
        ) from None


def classify(rel: str, mtime: float, build_started: float) -> str:
    """How the farm holds one regular file of the course tree (pure; see the
    module docstring for why): ``link``, ``copy``, or ``skip`` (link-time
    scratch files that every relink writes afresh)."""
    name = os.path.basename(rel)
    if mtime < build_started or name.endswith(LINKED_OUTPUTS) or name == "vmlinux":
        return "link"
    if name.startswith(".tmp_vmlinux"):
        return "skip"
    return "copy"


def _built_dirs(kdir: Path, started: float) -> set[str]:
    """Directories (relative, "." the top) holding a build output somewhere
    below them; every other directory is linked whole."""
    built = {"."}
    for root, _dirs, files in os.walk(kdir):
        rel_root = os.path.relpath(root, kdir)
        for name in files:
            src = os.path.join(root, name)
            if os.lstat(src).st_mtime >= started:
                d = rel_root
                while d not in built:
                    built.add(d)
                    d = os.path.dirname(d) or "."
                break
    return built


# Dependency files of the host tools (objtool, fixdep) name absolute paths;
# left pointing at the course tree, kbuild would rebuild objtool and, since
# every object depends on it, the whole kernel.
_PATH_BEARING = (".cmd", ".d")


def _copy_output(src: str, dst: Path, kdir: str, dest: str, st: os.stat_result) -> None:
    if src.endswith(_PATH_BEARING):
        data = Path(src).read_bytes()
        dst.write_bytes(data.replace(os.fsencode(kdir + "/"), os.fsencode(dest + "/")))
        os.chmod(dst, st.st_mode & 0o777)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        shutil.copy2(src, dst)


def create(kdir: str | os.PathLike, dest: str | os.PathLike) -> TreeSummary:
    """Make ``dest`` a farm of the built kernel tree ``kdir``. ``dest`` must not
    exist or be empty (nothing of the student's is ever overwritten)."""
    kdir, dest = Path(kdir).resolve(), Path(dest).absolute()
    started = _build_started(kdir)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise KernelTreeError(
            f"{dest} already exists and is not empty; choose another directory or remove it."
        )
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)  # an interrupted earlier attempt: ours, never the student's edits
    built = _built_dirs(kdir, started)
    linked = copied = nbytes = 0
    for root, dirs, files in os.walk(kdir):
        rel_root = os.path.relpath(root, kdir)
        out_root = tmp / rel_root if rel_root != "." else tmp
        out_root.mkdir(parents=True, exist_ok=True)
        keep = []
        for name in dirs:
            src = os.path.join(root, name)
            rel = os.path.normpath(os.path.join(rel_root, name))
            if os.path.islink(src):  # os.walk lists links to directories as dirs
                os.symlink(os.readlink(src), out_root / name)
            elif rel not in built:
                os.symlink(src, out_root / name)  # nothing built below: link it whole
                linked += 1
            else:
                keep.append(name)
        dirs[:] = keep
        for name in files:
            src = os.path.join(root, name)
            st = os.lstat(src)
            if os.path.islink(src):
                os.symlink(os.readlink(src), out_root / name)
                continue
            how = classify(os.path.join(rel_root, name), st.st_mtime, started)
            if how == "link":
                os.symlink(src, out_root / name)
                linked += 1
            elif how == "copy":
                _copy_output(src, out_root / name, str(kdir), str(dest), st)
                copied += 1
                nbytes += st.st_size
    (tmp / MARKER).write_text(f"{kdir}\n")
    if dest.exists():
        dest.rmdir()
    tmp.rename(dest)
    return TreeSummary(dest, linked, copied, nbytes)


def course_tree(dest: str | os.PathLike) -> Path:
    """The course tree ``dest`` was made from."""
    marker = Path(dest) / MARKER
    try:
        return Path(marker.read_text().strip())
    except FileNotFoundError:
        raise KernelTreeError(
            f"{dest} is not a kernel tree made by `labvm kernel-tree` (no {MARKER})."
        ) from None


def _inside(dest: Path, path: str | os.PathLike) -> tuple[Path, str]:
    """``path`` (absolute, or relative to ``dest``) as (file in dest, relative name)."""
    p = Path(path)
    full = (p if p.is_absolute() else dest / p).absolute()
    rel = os.path.relpath(full, dest.absolute())
    if rel.startswith(".."):
        raise KernelTreeError(f"{path} is not inside the kernel tree {dest}.")
    return full, rel


def own(dest: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Make ``path`` in the tree the student's own editable file: a linked
    source becomes a private copy (with a fresh time, so make rebuilds what
    uses it); a file already owned is left alone; a new file may be created
    by the caller afterwards. Returns the file's path."""
    dest = Path(dest)
    course_tree(dest)
    full, rel = _inside(dest, path)
    _expand_parents(dest, rel)
    if full.is_symlink():
        target = Path(os.readlink(full))
        if not target.is_absolute():
            raise KernelTreeError(
                f"{rel} is a link that is part of the kernel source; edit its target."
            )
        data = target.read_bytes()
        mode = target.stat().st_mode & 0o777
        full.unlink()
        full.write_bytes(data)
        os.chmod(full, mode | 0o200)
    elif not full.exists() and not full.parent.is_dir():
        raise KernelTreeError(f"No directory {os.path.dirname(rel)} in the kernel tree.")
    return full


def _expand_parents(dest: Path, rel: str) -> None:
    """Turn each directory on the way to ``rel`` that is a link into the course
    tree into a real directory of links, so one file in it can be owned."""
    here = dest
    for part in Path(rel).parts[:-1]:
        here = here / part
        if here.is_symlink():
            target = os.readlink(here)
            if not os.path.isabs(target):
                raise KernelTreeError(f"{here} is a link that is part of the kernel source.")
            here.unlink()
            here.mkdir()
            for entry in os.scandir(target):
                os.symlink(os.path.join(target, entry.name), here / entry.name)


def restore(dest: str | os.PathLike, path: str | os.PathLike) -> None:
    """Undo ``own``: the file goes back to being the course's version."""
    dest = Path(dest)
    kdir = course_tree(dest)
    full, rel = _inside(dest, path)
    original = kdir / rel
    if not original.exists():
        if full.exists() and not full.is_symlink():
            full.unlink()  # a file the student added
            return
        raise KernelTreeError(f"{rel} is not in the course kernel tree.")
    _expand_parents(dest, rel)
    if full.is_symlink() and os.readlink(full) == str(original):
        return
    if full.exists() or full.is_symlink():
        full.unlink()
    os.symlink(original, full)


def changed(dest: str | os.PathLike) -> list[str]:
    """Source files the student changed or added (relative names, sorted):
    owned copies that differ from the course source, and new files that are
    not build outputs."""
    dest = Path(dest)
    kdir = course_tree(dest)
    started = _build_started(kdir)
    found = []
    for root, _dirs, files in os.walk(dest):
        for name in files:
            full = Path(root, name)
            rel = os.path.relpath(full, dest)
            if full.is_symlink() or rel == MARKER:
                continue
            original = kdir / rel
            if original.exists():
                if (
                    original.stat().st_mtime < started
                    and not original.is_symlink()
                    and original.read_bytes() != full.read_bytes()
                ):
                    found.append(rel)
            elif _looks_like_source(rel):
                found.append(rel)
    return sorted(found)


# What a student adds to the tree as source (build outputs the course tree
# lacks are recognised by their names: objects, dependency files, images).
_SOURCE_SUFFIXES = (".c", ".h", ".S", ".tbl", "Makefile", "Kconfig", "Kbuild")


def _looks_like_source(rel: str) -> bool:
    name = os.path.basename(rel)
    return not name.startswith(".") and name.endswith(_SOURCE_SUFFIXES)


def diff(dest: str | os.PathLike) -> str:
    """A unified diff of the student's changes against the course source:
    what an instructor grades and what the student submits."""
    dest = Path(dest)
    kdir = course_tree(dest)
    out: list[str] = []
    for rel in changed(dest):
        original = kdir / rel
        old = original.read_text(errors="replace").splitlines(True) if original.exists() else []
        new = (dest / rel).read_text(errors="replace").splitlines(True)
        out.extend(difflib.unified_diff(old, new, f"a/{rel}", f"b/{rel}"))
    return "".join(out)

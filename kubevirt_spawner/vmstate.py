"""A student's saved VM states: the suspended VM and the checkpoint image.

Layout of the state directory (``LocalVMSpawner.vm_state_dir_template``, in
the student's own storage), where KEY names the guest build and VM shape the
state belongs to (``state_key``)::

    checkpoints-KEY.qcow2     `labvm snapshot` checkpoints (QEMU internal snapshots)
    suspended-KEY/            a suspended VM: vm.state.gz (QEMU's migration
                              stream, gzipped), meta.json, and the VM's own
                              key material (id_ed25519, initrd.img)

A state whose KEY is not the current one (the course kernel was rebuilt, the
VM size changed) is kept as it is and never restored.

Everything that touches these files runs as the student: the spawner runs
``python -m kubevirt_spawner.vmstate OP`` under the student's account (JSON
in on stdin, JSON out on stdout), so the hub's root never opens a path the
student controls. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .qmp import QMP, QMPError

STATE_FILE = "vm.state.gz"
META_FILE = "meta.json"
KEY_RE = re.compile(r"[0-9a-f]{12}")
HOST_KEY_RE = re.compile(r"ssh-ed25519 [A-Za-z0-9+/]+={0,2}")
# The VM's key material kept with a suspended state: the student's login key
# and the per-VM initramfs (the host key a `labvm reset` boots with again).
KEPT_FILES = ("id_ed25519", "initrd.img")


class StateError(Exception):
    """A state operation that failed; ``str()`` is one sentence for the student."""


def state_key(parts: dict) -> str:
    """A short name for what a saved state depends on (guest build, QEMU
    version, VM size and devices): equal keys restore, different ones do not."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def checkpoint_image(state_dir: Path, key: str) -> Path:
    return state_dir / f"checkpoints-{key}.qcow2"


def suspended_dir(state_dir: Path, key: str) -> Path:
    return state_dir / f"suspended-{key}"


@dataclass(frozen=True)
class Listing:
    """What a state directory holds, as far as a start needs to know."""

    has_image: bool
    suspended: bool
    stale: tuple[str, ...]  # suspended states of other keys, kept


def read_listing(names: list[str], key: str) -> Listing:
    """Decide from the names in a state directory (pure)."""
    mine = f"suspended-{key}"
    stale = sorted(
        n
        for n in names
        if n.startswith("suspended-") and n != mine and KEY_RE.fullmatch(n[len("suspended-") :])
    )
    return Listing(f"checkpoints-{key}.qcow2" in names, mine in names, tuple(stale))


def usage(path: Path) -> int:
    """Bytes the files under ``path`` occupy on disk (sparse files count as allocated)."""
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def check_meta(meta: object) -> dict:
    """A suspended state's meta.json, validated (a student can edit it: only
    their own VM's restore depends on it)."""
    if not isinstance(meta, dict):
        raise StateError("the suspended VM's meta.json is not an object")
    host_key = meta.get("host_key")
    if not isinstance(host_key, str) or not HOST_KEY_RE.fullmatch(host_key):
        raise StateError("the suspended VM's meta.json has no valid host key")
    saved = meta.get("saved_at")
    if not isinstance(saved, (int, float)) or isinstance(saved, bool):
        raise StateError("the suspended VM's meta.json has no save time")
    return {"host_key": host_key, "saved_at": float(saved), "key": meta.get("key", "")}


# -- operations, run as the student --------------------------------------
def prepare(state_dir: Path, key: str, rundir: Path, resume: bool) -> dict:
    """Make the state directory and this key's checkpoint image if missing; for
    ``resume``, put the suspended VM's key material into ``rundir`` and return
    its meta."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    image = checkpoint_image(state_dir, key)
    if not image.exists():
        # The image's virtual size does not matter: snapshots' RAM is stored
        # beyond it and no guest device reads it.
        made = subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", f"{image}.part", "1M"],
            capture_output=True,
            text=True,
        )
        if made.returncode != 0:
            raise StateError(f"cannot make the checkpoint image: {made.stderr.strip()}")
        os.rename(f"{image}.part", image)
    out: dict = {"image": str(image)}
    if resume:
        src = suspended_dir(state_dir, key)
        meta = check_meta(json.loads((src / META_FILE).read_text()))
        for name in KEPT_FILES:
            dest = rundir / name
            dest.unlink(missing_ok=True)
            shutil.copyfile(src / name, dest)
            dest.chmod(0o600)
        out.update(meta=meta, state=str(src / STATE_FILE), bytes=(src / STATE_FILE).stat().st_size)
    return out


def suspend(state_dir: Path, key: str, rundir: Path, meta: dict, quota: int) -> dict:
    """Save the running VM (QMP migrate to a gzip file) with its key material.

    The VM is left paused (QEMU's `postmigrate`); the caller stops QEMU.
    Refuses, and keeps nothing, when the student's states would exceed ``quota``.
    """
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    final = suspended_dir(state_dir, key)
    part = state_dir / f".suspending-{key}"
    shutil.rmtree(part, ignore_errors=True)
    used = usage(state_dir) - (usage(final) if final.exists() else 0)
    if quota and used >= quota:
        raise StateError(f"your saved VM states use {human(used)} of {human(quota)}")
    part.mkdir(mode=0o700)
    try:
        for name in KEPT_FILES:
            shutil.copyfile(rundir / name, part / name)
        started = time.monotonic()
        target = shlex.quote(str(part / STATE_FILE))
        with QMP(str(rundir / "qmp.sock"), timeout=60) as q:
            q.migrate_and_wait(f"exec:gzip -1 > {target}")
        took = time.monotonic() - started
        size = (part / STATE_FILE).stat().st_size
        if quota and used + usage(part) > quota:
            raise StateError(
                f"the VM's state ({human(size)}) does not fit in your quota "
                f"({human(used)} of {human(quota)} used)"
            )
        (part / META_FILE).write_text(json.dumps({**meta, "key": key, "bytes": size}))
        shutil.rmtree(final, ignore_errors=True)
        os.rename(part, final)
    except (OSError, QMPError) as e:
        raise StateError(f"saving the VM failed: {e}") from None
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return {"bytes": size, "seconds": round(took, 3), "path": str(final)}


def consume(state_dir: Path, key: str) -> dict:
    """The suspended VM was resumed: remove its saved state."""
    shutil.rmtree(suspended_dir(state_dir, key), ignore_errors=True)
    return {}


def shelve(state_dir: Path, key: str) -> dict:
    """A suspended state QEMU could not restore: keep it, under a name no start restores."""
    src = suspended_dir(state_dir, key)
    dest = state_dir / f"unrestorable-{key}-{time.strftime('%Y%m%d-%H%M%S')}"
    if src.exists():
        os.rename(src, dest)
    return {"kept": str(dest)}


def discard(state_dir: Path, name: str) -> dict:
    """Remove one saved state (``suspended-KEY`` or ``unrestorable-...``) by name."""
    if "/" in name or not name.startswith(("suspended-", "unrestorable-")):
        raise StateError(f"not a saved VM state: {name!r}")
    path = state_dir / name
    if not path.is_dir() or path.is_symlink():
        raise StateError(f"no saved VM state {name!r}")
    size = usage(path)
    shutil.rmtree(path)
    return {"freed": size}


OPS = {
    "prepare": lambda a: prepare(Path(a["state_dir"]), a["key"], Path(a["rundir"]), a["resume"]),
    "suspend": lambda a: suspend(
        Path(a["state_dir"]), a["key"], Path(a["rundir"]), a["meta"], int(a["quota"])
    ),
    "consume": lambda a: consume(Path(a["state_dir"]), a["key"]),
    "shelve": lambda a: shelve(Path(a["state_dir"]), a["key"]),
    "discard": lambda a: discard(Path(a["state_dir"]), a["name"]),
}


def main(argv: list[str] | None = None) -> int:
    """``python -m kubevirt_spawner.vmstate OP`` with the arguments as JSON on
    stdin; prints {"ok": true, ...} or {"error": "..."} (exit 0 or 1)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in OPS:
        print(
            f"usage: python -m kubevirt_spawner.vmstate {{{','.join(OPS)}}} < ARGS.json",
            file=sys.stderr,
        )
        return 2
    try:
        result = OPS[argv[0]](json.loads(sys.stdin.read() or "{}"))
    except (StateError, OSError, ValueError, KeyError) as e:
        print(json.dumps({"error": str(e) or type(e).__name__}))
        return 1
    print(json.dumps({"ok": True, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

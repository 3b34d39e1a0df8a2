"""Copy the course's student notebooks into a student's home, never over
their own files (LocalVMSpawner.copy_labs_from, for hubs without nbgrader).

    python -m kubevirt_spawner.local.labcopy SRC DEST

The spawner runs this as the student (their uid, in their home), so it can
neither write where the student could not nor be led elsewhere by a link
the student made. Prints one line: how many files were copied.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def copy_missing(src: Path, dest: Path) -> list[Path]:
    """Copy every regular file under ``src`` to the same place under ``dest``
    unless something (file, folder or link) of that name is there already;
    return the files copied, relative to ``dest``. Links in ``src`` are not
    followed."""
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a directory")
    copied = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part.startswith(".") for part in rel.parts) or path.is_symlink():
            continue  # checkpoints, nbgrader's hidden files, links
        target = dest / rel
        if path.is_dir():
            if not target.exists() and not target.is_symlink():
                target.mkdir(parents=True)
            continue
        if target.exists() or target.is_symlink() or not path.is_file():
            continue
        if not target.parent.is_dir():
            continue  # the student replaced a folder of ours with a file
        shutil.copyfile(path, target)
        copied.append(rel)
    return copied


def main(args: list[str] | None = None) -> int:
    argv = sys.argv[1:] if args is None else args
    if len(argv) != 2 or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[3].strip(), file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    src, dest = Path(argv[0]), Path(argv[1])
    try:
        dest.mkdir(parents=True, exist_ok=True)
        copied = copy_missing(src, dest)
    except OSError as e:
        print(f"labcopy: {e}", file=sys.stderr)
        return 1
    print(f"labcopy: {len(copied)} new file(s) from {src} in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

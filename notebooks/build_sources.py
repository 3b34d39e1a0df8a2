"""Turn the lab texts (notebooks/labs/*.lab) into nbgrader instructor notebooks.

A ``.lab`` file is a notebook written as plain text, so that reviews and
diffs read like prose and code. Cells start with a line ``%%% KIND [key=value…]``
(three percent signs: never valid IPython, so no clash with ``%%writefile``):

=============  ===============================================================
KIND           cell
=============  ===============================================================
``markdown``   text; locked by nbgrader if ``locked=1``
``code``       given code (setup, helpers, demonstrations)
``solution``   the student's work: code with ``BEGIN SOLUTION``/``END
               SOLUTION`` regions (C: ``/* BEGIN SOLUTION */``); needs ``id=``
``test``       an autograded check: ``id=`` and ``points=``; may hold a
               ``### BEGIN HIDDEN TESTS`` … ``### END HIDDEN TESTS`` region
=============  ===============================================================

The first cell's ``%%% meta`` line may carry ``title=`` (ignored) — only the
cells matter. Output: ``notebooks/source/<lab>/<lab>.ipynb`` (nbgrader's
course layout). ``--check`` exits 1 if any committed notebook is stale.

usage: python notebooks/build_sources.py [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LABS = HERE / "labs"
SOURCE = HERE / "source"

_HEADER = re.compile(r"^%%% (\w+)((?: [\w-]+=\S+)*)\s*$")
KINDS = {"markdown", "code", "solution", "test"}

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


class LabSyntaxError(ValueError):
    pass


def parse_lab(text: str, name: str = "<lab>") -> list[dict]:
    """The cells of a ``.lab`` text as (kind, attrs, source) dicts."""
    cells: list[dict] = []
    current = None
    for lineno, line in enumerate(text.split("\n"), 1):
        m = _HEADER.match(line)
        if m:
            kind = m.group(1)
            if kind not in KINDS:
                raise LabSyntaxError(f"{name}:{lineno}: unknown cell kind {kind!r}")
            attrs = dict(a.split("=", 1) for a in m.group(2).split())
            current = {"kind": kind, "attrs": attrs, "lines": [], "line": lineno}
            cells.append(current)
        elif line.startswith("%%%"):
            raise LabSyntaxError(f"{name}:{lineno}: bad cell header {line!r}")
        elif current is None:
            if line.strip():
                raise LabSyntaxError(f"{name}:{lineno}: text before the first cell header")
        else:
            current["lines"].append(line)
    for c in cells:
        c["source"] = "\n".join(c.pop("lines")).strip("\n")
        if c["kind"] in ("solution", "test") and "id" not in c["attrs"]:
            raise LabSyntaxError(f"{name}:{c['line']}: a {c['kind']} cell needs id=")
        if c["kind"] == "test" and "points" not in c["attrs"]:
            raise LabSyntaxError(f"{name}:{c['line']}: a test cell needs points=")
    ids = [c["attrs"]["id"] for c in cells if "id" in c["attrs"]]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise LabSyntaxError(f"{name}: duplicate cell ids {sorted(dupes)}")
    return cells


def to_notebook(cells: list[dict], lab: str) -> dict:
    """An nbformat 4.5 notebook with nbgrader (schema 3) metadata."""
    out = []
    for i, c in enumerate(cells):
        kind, attrs, source = c["kind"], c["attrs"], c["source"]
        cell_id = attrs.get("id", f"{lab}-{i:02d}")
        meta: dict = {}
        if kind in ("solution", "test") or attrs.get("locked") == "1":
            meta["nbgrader"] = {
                "grade": kind == "test",
                "grade_id": cell_id,
                "locked": kind == "test" or attrs.get("locked") == "1",
                "schema_version": 3,
                "solution": kind == "solution",
                "task": False,
            }
            if kind == "test":
                meta["nbgrader"]["points"] = int(attrs["points"])
            if kind == "markdown":
                meta["nbgrader"]["grade"] = False
        if kind == "markdown":
            cell = {"cell_type": "markdown", "id": cell_id, "metadata": meta, "source": source}
        else:
            cell = {
                "cell_type": "code",
                "execution_count": None,
                "id": cell_id,
                "metadata": meta,
                "outputs": [],
                "source": source,
            }
        out.append(cell)
    return {
        "cells": out,
        "metadata": {
            "kernelspec": KERNELSPEC,
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def render(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def build(check: bool = False) -> list[str]:
    """Write (or with ``check`` only compare) every notebook; return the stale ones."""
    stale = []
    for lab_file in sorted(LABS.glob("*.lab")):
        lab = lab_file.stem
        target = SOURCE / lab / f"{lab}.ipynb"
        text = render(to_notebook(parse_lab(lab_file.read_text(), lab_file.name), lab))
        if target.exists() and target.read_text() == text:
            continue
        stale.append(str(target.relative_to(HERE)))
        if not check:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    return stale


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="only report stale notebooks")
    args = ap.parse_args(argv)
    try:
        stale = build(check=args.check)
    except LabSyntaxError as e:
        print(f"build_sources: {e}", file=sys.stderr)
        return 2
    for s in stale:
        print(("stale: " if args.check else "wrote: ") + s)
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())

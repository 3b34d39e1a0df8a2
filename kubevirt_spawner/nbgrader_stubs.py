"""nbgrader stubs that stay valid in the language a cell really holds.

The lab notebooks run a Python kernel, but many of their solution cells are
C, shell or Makefiles written out with ``%%writefile hello.c`` (or run with
``%%bash``). Stock nbgrader picks the stub by the *kernel's* language, so
such a cell would get ``raise NotImplementedError()`` in the middle of C,
and the student's file would fail to compile on nbgrader's text rather than
on their task. ``CellLanguageClearSolutions`` picks the stub by the cell:

* ``%%writefile NAME`` -> by NAME: ``.c``/``.h`` C, ``.sh`` or a ``#!`` line
  shell, ``Makefile``/``Kbuild`` make, ``.py`` Python, anything else text;
* ``%%bash``, ``%%sh``, ``%%script bash|sh`` -> shell;
* other cells -> the kernel's language, as nbgrader does.

A solution cell without BEGIN/END SOLUTION markers is replaced whole by
nbgrader; here its cell magic line is kept, so the file is still written.

The comment forms of the markers (``/* BEGIN SOLUTION */``, ``# BEGIN
SOLUTION``) are what the lab sources use; nbgrader matches the delimiter
anywhere in a line, so both work without changing its settings.

ref: nbgrader/preprocessors/clearsolutions.py (0.9.x), ``_replace_solution_region``.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from nbgrader.preprocessors import ClearSolutions
from traitlets import Dict

_MAGIC = re.compile(r"^%%(\w+)[ \t]*(.*)$")

# What each stub does when left in place: C and shell keep compiling and
# running and say so, so the check that follows fails on its own message.
DEFAULT_CELL_STUBS = {
    "c": "/* YOUR CODE HERE */",
    "sh": '# YOUR CODE HERE\necho "not done yet: $0" >&2',
    "make": "# YOUR CODE HERE",
    "text": "YOUR ANSWER HERE",
}


def cell_language(source: str, kernel_language: str = "python") -> str:
    """The language of a code cell's content, judged by its first line (a cell magic)."""
    lines = source.lstrip("\n").split("\n")
    m = _MAGIC.match(lines[0]) if lines else None
    if not m:
        return kernel_language
    magic, args = m.group(1), m.group(2).split()
    if magic in ("bash", "sh") or (magic == "script" and args and args[0] in ("bash", "sh")):
        return "sh"
    if magic != "writefile":
        return kernel_language
    names = [a for a in args if not a.startswith("-")]
    if not names:
        return kernel_language
    path = PurePosixPath(names[0])
    suffix = path.suffix.lower()
    if suffix in (".c", ".h"):
        return "c"
    if suffix == ".sh" or (len(lines) > 1 and lines[1].startswith("#!")):
        return "sh"
    if path.name in ("Makefile", "Kbuild", "GNUmakefile") or suffix == ".mk":
        return "make"
    if suffix == ".py":
        return kernel_language
    return "text"


class CellLanguageClearSolutions(ClearSolutions):
    """``ClearSolutions`` whose code stub follows the cell's own language."""

    cell_code_stub = Dict(
        DEFAULT_CELL_STUBS,
        help="Stubs for cells whose content is not in the kernel's language, keyed by "
        "'c', 'sh', 'make' and 'text' (see kubevirt_spawner.nbgrader_stubs.cell_language). "
        "Cells in the kernel's language use ClearSolutions.code_stub as usual.",
    ).tag(config=True)

    def _stub_for(self, cell, language: str) -> str:
        lang = cell_language(cell.source, language)
        if lang == language:
            return self.code_stub[language]
        return self.cell_code_stub.get(lang, DEFAULT_CELL_STUBS.get(lang, "YOUR CODE HERE"))

    def _replace_solution_region(self, cell, language: str) -> bool:
        if cell.cell_type != "code":
            return super()._replace_solution_region(cell, language)
        # The parent reads the stub from code_stub[language]; hand it this
        # cell's stub for the duration of the call.
        saved = self.code_stub
        self.code_stub = {**saved, language: self._stub_for(cell, language)}
        try:
            return super()._replace_solution_region(cell, language)
        finally:
            self.code_stub = saved

    def preprocess_cell(self, cell, resources, cell_index):
        magic = ""
        if cell.cell_type == "code":
            first = cell.source.lstrip("\n").split("\n", 1)[0]
            magic = first if _MAGIC.match(first) else ""
            stub = self._stub_for(cell, resources["language"])
        cell, resources = super().preprocess_cell(cell, resources, cell_index)
        if magic and cell.source == self.code_stub[resources["language"]]:
            # nbgrader replaced the whole cell: keep the magic, use our stub.
            cell.source = f"{magic}\n{stub}"
        return cell, resources


def configure(c) -> None:
    """Put ``CellLanguageClearSolutions`` in place of ``ClearSolutions`` in ``c``
    (an nbgrader config), keeping the rest of GenerateAssignment's pipeline."""
    from nbgrader.converters import GenerateAssignment

    pipeline = list(GenerateAssignment.class_traits()["preprocessors"].make_dynamic_default())
    c.GenerateAssignment.preprocessors = [
        CellLanguageClearSolutions if p is ClearSolutions else p for p in pipeline
    ]

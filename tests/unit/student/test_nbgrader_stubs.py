"""The per-cell nbgrader stubs: real nbgrader ClearSolutions on real cells, and
the student's stubbed C and shell must still compile / parse."""

import shutil
import subprocess

import nbformat
import pytest
from nbgrader.preprocessors import ClearSolutions
from traitlets.config import Config

from kubevirt_spawner.nbgrader_stubs import (
    CellLanguageClearSolutions,
    cell_language,
    configure,
)


@pytest.mark.parametrize(
    "source, lang",
    [
        pytest.param("%%writefile hello.c\nint main(void) {}", "c", id="c-file"),
        pytest.param("%%writefile mod/edu.h\n#define X 1", "c", id="header-in-dir"),
        pytest.param("%%writefile run.sh\necho hi", "sh", id="sh-suffix"),
        pytest.param("%%writefile run\n#!/bin/sh\necho hi", "sh", id="shebang"),
        pytest.param("%%writefile -a Makefile\nall:", "make", id="makefile-append"),
        pytest.param("%%writefile mod/Kbuild\nobj-m := m.o", "make", id="kbuild"),
        pytest.param("%%writefile notes.txt\nhello", "text", id="text"),
        pytest.param("%%writefile helper.py\nx = 1", "python", id="python-file"),
        pytest.param("%%bash\nls", "sh", id="bash-magic"),
        pytest.param("%%script sh\nls", "sh", id="script-sh"),
        pytest.param("%%time\nx = 1", "python", id="other-magic"),
        pytest.param("x = 1", "python", id="plain"),
        pytest.param("", "python", id="empty"),
    ],
)
def test_cell_language(source, lang):
    assert cell_language(source) == lang


def _nb(*cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "P"}
    for i, src in enumerate(cells):
        cell = nbformat.v4.new_code_cell(src)
        cell.metadata["nbgrader"] = {
            "solution": True,
            "grade": False,
            "locked": False,
            "grade_id": f"c{i}",
            "schema_version": 3,
        }
        nb.cells.append(cell)
    return nb


C_CELL = """%%writefile fact.c
#include <stdio.h>

static unsigned fact(unsigned n)
{
	unsigned r = 1;
	/* TODO 1: compute n! into r */
	/* BEGIN SOLUTION */
	for (unsigned i = 2; i <= n; i++)
		r *= i;
	/* END SOLUTION */
	return r;
}

int main(void) { printf("%u\\n", fact(5)); return 0; }"""

SH_CELL = """%%writefile count.sh
#!/bin/sh
n=0
# BEGIN SOLUTION
n=$(wc -l < "$1")
# END SOLUTION
echo "$n\""""

PY_CELL = """def f():
    ### BEGIN SOLUTION
    return 1
    ### END SOLUTION"""

WHOLE_C_CELL = "%%writefile whole.c\nint main(void) { return 0; }"


def _generate(nb):
    pp = CellLanguageClearSolutions()
    out, _ = pp.preprocess(nb, {})
    return [c.source for c in out.cells]


def test_stock_nbgrader_puts_python_into_c():
    """The problem this module exists for (FIELD-NOTES): stock stubs break C."""
    out, _ = ClearSolutions().preprocess(_nb(C_CELL), {})
    assert "raise NotImplementedError()" in out.cells[0].source


def test_each_cell_gets_its_own_languages_stub():
    c, sh, py, whole = _generate(_nb(C_CELL, SH_CELL, PY_CELL, WHOLE_C_CELL))
    assert "/* YOUR CODE HERE */" in c and "NotImplementedError" not in c
    assert "for (unsigned" not in c and c.startswith("%%writefile fact.c\n")
    assert "\t/* YOUR CODE HERE */" in c  # indented like the marker
    assert "# YOUR CODE HERE" in sh and "wc -l" not in sh and "NotImplementedError" not in sh
    assert "    raise NotImplementedError()" in py
    assert whole == "%%writefile whole.c\n/* YOUR CODE HERE */"


# gcc is installed by `make test` (build-essential); its absence is a set-up error, not a skip.
def test_stubbed_c_still_compiles_and_runs(tmp_path):
    (c,) = _generate(_nb(C_CELL))
    src = tmp_path / "fact.c"
    src.write_text(c.split("\n", 1)[1])
    subprocess.run(["gcc", "-Wall", "-Werror", "-o", tmp_path / "fact", src], check=True)
    # The stub leaves the skeleton's behaviour (1), so a check fails on the answer.
    out = subprocess.run([tmp_path / "fact"], capture_output=True, text=True, check=True)
    assert out.stdout == "1\n"


def test_stubbed_shell_still_parses_and_says_so(tmp_path):
    (sh,) = _generate(_nb(SH_CELL))
    script = tmp_path / "count.sh"
    script.write_text(sh.split("\n", 1)[1] + "\n")
    subprocess.run(["sh", "-n", script], check=True)
    res = subprocess.run(["sh", script, "/etc/hostname"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout == "0\n"
    assert "not done yet" in res.stderr


def test_configure_swaps_only_clearsolutions():
    from nbgrader.converters import GenerateAssignment

    c = Config()
    configure(c)
    stock = GenerateAssignment.class_traits()["preprocessors"].make_dynamic_default()
    mine = c.GenerateAssignment.preprocessors
    assert len(mine) == len(stock)
    assert [p for p in mine if p is not CellLanguageClearSolutions] == [
        p for p in stock if p is not ClearSolutions
    ]
    assert CellLanguageClearSolutions in mine and ClearSolutions not in mine


def _course_generate(tmp_path):
    import os
    import sys
    from pathlib import Path

    notebooks = Path(__file__).resolve().parents[3] / "notebooks"
    root = tmp_path / "course"
    shutil.copytree(notebooks / "source", root / "source")
    shutil.copy(notebooks / "nbgrader_config.py", root)
    env = {
        **os.environ,
        "KVS_COURSE_ROOT": str(root),
        "KVS_NBGRADER_EXCHANGE": str(tmp_path / "exchange"),
        # nbgrader runs `alembic` from PATH
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    nbgrader = Path(sys.executable).with_name("nbgrader")
    for lab in sorted(p.name for p in (root / "source").iterdir()):
        proc = subprocess.run(
            [nbgrader, "generate_assignment", lab, "--force"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    return sorted((root / "release").glob("*/*.ipynb"))


def test_course_sources_generate_with_real_nbgrader(tmp_path):
    """Every lab: nbgrader's full generate pipeline, then no Python stub in C/shell cells,
    every user-space C file of the student version compiles, every shell script parses."""
    released = _course_generate(tmp_path)
    assert released, "no labs generated"
    for nb_path in released:
        nb = nbformat.read(nb_path, 4)
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            lang = cell_language(cell.source)
            if lang in ("c", "sh", "make", "text"):
                assert "NotImplementedError" not in cell.source, (nb_path.name, cell.id)
            if lang == "sh":
                body = cell.source.split("\n", 1)[1]
                (tmp_path / "x.sh").write_text(body + "\n")
                subprocess.run(["sh", "-n", tmp_path / "x.sh"], check=True)
            # Kernel code (modules, lab 4's system call) is built against the
            # course kernel by the notebook tests in tests/local; here only user C.
            if lang == "c" and "#include <linux/" not in cell.source and shutil.which("gcc"):
                body = cell.source.split("\n", 1)[1]
                (tmp_path / "x.c").write_text(body + "\n")
                subprocess.run(["gcc", "-fsyntax-only", tmp_path / "x.c"], check=True)

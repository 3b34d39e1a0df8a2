"""Every name the lab notebooks import from this package exists (the
package's restructuring once moved ``cpio`` out from under lab 8; only the
slowest notebook test noticed)."""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[3] / "notebooks" / "source"


def package_imports(nb_path: Path) -> list[tuple[str, str | None]]:
    """(module, name) for each ``from kubevirt_spawner... import name`` and
    (module, None) for each ``import kubevirt_spawner...`` in the code cells."""
    found = []
    for cell in json.loads(nb_path.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        if source.lstrip().startswith("%%"):
            continue  # a cell magic (%%writefile, %%bash): not Python
        # IPython's ! and % lines are not Python.
        lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("!", "%"))]
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "kubevirt_spawner"
            ):
                found += [(node.module, a.name) for a in node.names]
            elif isinstance(node, ast.Import):
                found += [
                    (a.name, None) for a in node.names if a.name.startswith("kubevirt_spawner")
                ]
    return found


@pytest.mark.parametrize("nb", sorted(NOTEBOOKS.glob("*/*.ipynb")), ids=lambda p: p.parent.name)
def test_every_package_import_of_a_lab_resolves(nb):
    imports = package_imports(nb)
    assert imports, f"{nb.name} imports nothing of the package: is this test still reading it?"
    missing = []
    for module, name in imports:
        mod = importlib.import_module(module)
        if name is not None and not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                missing.append(f"from {module} import {name}")
    assert missing == [], f"{nb.parent.name}: {missing}"

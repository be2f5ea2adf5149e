"""Every front door offers the options of ``usdespeckle.options``, so a new one cannot be forgotten.

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

from usdespeckle import filters, inference, options
from usdespeckle.cli import build_parser

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


def test_a_method_added_to_the_options_without_its_filter_stops_the_import(monkeypatch):
    monkeypatch.setattr(filters, "CLASSICAL_METHODS", (*options.CLASSICAL_METHODS, "wiener"))
    with pytest.raises(ImportError, match="despeckle_wiener"):
        filters._registry()


def test_library_reexports_the_options():
    assert inference.METHODS is options.METHODS
    assert inference.CLASSICAL_METHODS is options.CLASSICAL_METHODS
    assert inference.PASSES is options.PASSES
    assert inference.MIRRORINGS is options.MIRRORINGS
    assert inference.MODEL_FILES is options.MODEL_FILES
    assert inference.PERCENTILES is options.PERCENTILES
    assert set(options.MODEL_FILES) == set(options.MODEL_BACKENDS) == set(options.BACKEND_NAMES)
    assert tuple(2**k for k in range(len(options.PASSES))) == options.PASSES
    assert options.PASSES[-1] == len(options.MIRRORINGS)
    assert options.DEFAULT_PASSES in options.PASSES
    assert inspect.signature(inference.load_denoiser).parameters["passes"].default == options.DEFAULT_PASSES


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
    assert Path(out[0]) == REPO / "usdespeckle" / "options.py"
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
    (package / "options.py").write_text('METHODS = ("denoiser", "wiener")\n')
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
        REPO / "usdespeckle" / "client.py",
        REPO / "usdespeckle" / "inference.py",
        REPO / "usdespeckle" / "filters.py",
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
        if isinstance(node, ast.ImportFrom) and node.module == "usdespeckle.options"
        for alias in node.names
    }
    assert {"METHODS", "MODEL_BACKENDS", "PASSES", "DEFAULT_PASSES"} <= imported
    assert _module_value(task, "SERVER_BACKEND") in options.MODEL_BACKENDS


def test_every_method_has_a_one_line_description_and_a_reference() -> None:
    """The Slicer panel shows these beside the method choice; a new method needs both."""
    from usdespeckle import options

    assert set(options.METHOD_DESCRIPTIONS) == set(options.METHODS)
    assert set(options.METHOD_REFERENCES) == set(options.METHODS)
    for method in options.METHODS:
        description, reference = options.METHOD_DESCRIPTIONS[method], options.METHOD_REFERENCES[method]
        assert "\n" not in description
        assert 20 < len(description) <= 100, (method, description)
        assert re.search(r"\(\d{4}\)", reference), (method, reference)  # a year: a citation
    for method in options.METHOD_EXTRAS:  # the panel warns before the user picks it
        assert "non-commercial" in options.METHOD_DESCRIPTIONS[method]

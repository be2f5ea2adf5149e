"""The panel's .ui file loads offscreen and has every widget and parameter the module code uses."""

from __future__ import annotations

import ast
import os
import re
import sys
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "SlicerDespeckle"
UI_PATH = MODULE_DIR / "Resources" / "UI" / "SlicerDespeckle.ui"
MODULE_PATH = MODULE_DIR / "SlicerDespeckle.py"


@pytest.fixture(scope="module")
def panel():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QFile
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    ui_file = QFile(str(UI_PATH))
    assert ui_file.open(QFile.ReadOnly)
    # Slicer's own classes (qMRMLNodeComboBox, ctkSliderWidget, ...) are unknown to plain Qt:
    # the loader builds the base class each <customwidget> names, keeping names and properties.
    widget = QUiLoader().load(ui_file)
    ui_file.close()
    assert widget is not None, "QUiLoader could not load the .ui file"
    yield widget
    widget.deleteLater()
    app.processEvents()


PANEL_PATH = MODULE_DIR / "SlicerDespeckleLib" / "panel.py"
SETTINGS_PANEL_PATH = MODULE_DIR / "SlicerDespeckleLib" / "settings_panel.py"


def _ui_names_used_by_module() -> set[str]:
    """Widgets the module file and the panel's run state (SlicerDespeckleLib/panel.py) use."""
    names = {
        name
        for path in (MODULE_PATH, PANEL_PATH, SETTINGS_PANEL_PATH)
        for name in re.findall(r"(?:self\.)?ui\.(\w+)", path.read_text())
    }
    from SlicerDespeckleLib import settings_panel

    return names | set(settings_panel.CONTROLS) | set(settings_panel.LABELS.values())


def _parameter_names() -> set[str]:
    tree = ast.parse(MODULE_PATH.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "SlicerDespeckleParameterNode":
            return {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError("SlicerDespeckleParameterNode not found in SlicerDespeckle.py")


def test_every_widget_the_module_uses_exists(panel):
    from PySide6.QtWidgets import QWidget

    used = _ui_names_used_by_module()
    assert {"applyButton", "cancelButton", "previewButton", "progressBar", "statusLabel"} <= used
    present = {w.objectName() for w in panel.findChildren(QWidget)}
    missing = sorted(used - present)
    assert not missing, f"widgets used in SlicerDespeckle.py but absent from the .ui: {missing}"


def test_every_parameter_has_a_bound_widget(panel):
    from PySide6.QtWidgets import QWidget

    bound = {
        w.property("SlicerParameterName"): w.objectName()
        for w in panel.findChildren(QWidget)
        if w.property("SlicerParameterName")
    }
    parameters = _parameter_names()
    assert parameters == {
        "inputVolume",
        "outputVolume",
        "allFrames",
        "method",
        "axis",
        "strength",
        "device",
        "backend",
        "passes",
        "serverUrl",
        "uncertainty",
        "eightBitOutput",
    }
    assert set(bound) == parameters, f"parameters {parameters} vs widgets bound in the .ui {bound}"
    assert bound["serverUrl"] == "serverUrlLineEdit"


def test_panel_widgets_have_the_expected_kinds(panel):
    from PySide6.QtWidgets import QCheckBox, QComboBox, QLabel, QLineEdit, QProgressBar, QPushButton

    def kind(name, cls):
        widget = panel.findChild(cls, name)
        assert widget is not None, f"{name} is not a {cls.__name__}"
        return widget

    for name in ("methodComboBox", "axisComboBox", "deviceComboBox", "backendComboBox", "passesComboBox"):
        kind(name, QComboBox)
    assert kind("previewButton", QPushButton).text() == "Preview current slice"
    assert not kind("cancelButton", QPushButton).isEnabled()  # nothing runs yet
    server = kind("serverUrlLineEdit", QLineEdit)
    assert server.text() == ""  # empty by default: despeckle on this computer
    assert server.placeholderText() == "http://127.0.0.1:8000 (empty: run on this computer)"
    assert "MONAI Label" in server.toolTip()
    assert "empty" in server.toolTip()
    kind("progressBar", QProgressBar)
    kind("statusLabel", QLabel)
    with open(UI_PATH) as f:
        text = f.read()
    # Slicer's classes the module relies on, declared so Slicer's loader builds the real widgets
    for cls in ("qMRMLNodeComboBox", "ctkSliderWidget", "qMRMLWidget"):
        assert f"<class>{cls}</class>" in text
    assert text.count("setMRMLScene(vtkMRMLScene*)") == 2  # both node selectors get the scene
    # the input takes volumes (colour ones too: vector volumes are scalar volumes' children) and
    # sequences, but not label maps
    selector = text[text.index('name="inputSelector"') : text.index('name="allFramesCheckBox"')]
    assert "<string>vtkMRMLSequenceNode</string>" in selector
    assert "<string>vtkMRMLLabelMapVolumeNode</string>" in selector.split('name="hideChildNodeTypes"')[1]
    assert kind("allFramesCheckBox", QCheckBox).isChecked()


def test_panel_renders_offscreen(panel, tmp_path):
    panel.resize(400, 480)
    image = panel.grab().toImage()
    # (the loader's registered widget classes are process-wide: after the screenshot test the
    # stand-ins for Slicer's widgets are built, whose minimum width may exceed a narrow size)
    assert (image.width(), image.height()) == (panel.width(), panel.height())
    assert panel.width() >= 320
    assert panel.height() >= 480
    assert image.save(str(tmp_path / "panel.png"))


def test_names_the_module_imports_from_its_library_exist():
    """SlicerDespeckle.py itself needs the application; what it takes from SlicerDespeckleLib is checked here."""
    import importlib
    import importlib.util

    for node in ast.walk(ast.parse(MODULE_PATH.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("SlicerDespeckleLib"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                found = hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}")
                assert found, f"SlicerDespeckle.py imports {alias.name} from {node.module}, which has none"


def test_advanced_section_is_collapsed_and_holds_device_backend_passes_server(panel):
    from PySide6.QtWidgets import QWidget

    advanced = panel.findChild(QWidget, "advancedCollapsibleButton")
    assert advanced is not None
    assert advanced.property("collapsed") is True
    inside = {w.objectName() for w in advanced.findChildren(QWidget)}
    assert {
        "deviceComboBox",
        "backendComboBox",
        "passesComboBox",
        "serverUrlLineEdit",
        "packageInfoLabel",
        "updateButton",
    } <= inside
    settings = panel.findChild(QWidget, "settingsCollapsibleButton")
    main = {w.objectName() for w in settings.findChildren(QWidget)}
    assert {"methodComboBox", "methodDescriptionLabel", "uncertaintyCheckBox", "eightBitCheckBox"} <= main
    assert not main & {"deviceComboBox", "backendComboBox", "passesComboBox", "serverUrlLineEdit"}


def test_log_is_a_read_only_scrolling_text(panel):
    from PySide6.QtWidgets import QPlainTextEdit

    log = panel.findChild(QPlainTextEdit, "logTextEdit")
    assert log is not None
    assert log.isReadOnly()
    assert log.maximumBlockCount() > 100  # bounded, scrolls

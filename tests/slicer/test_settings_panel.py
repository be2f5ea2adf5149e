"""The settings explain themselves (SlicerDespeckleLib/settings_panel.py) on the real .ui, offscreen.

Method descriptions and references, controls disabled when they do nothing for the chosen method
(saying why), the scrolling log, and the install question asked before any wait cursor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from SlicerDespeckleLib import settings_panel
from SlicerDespeckleLib.gpu import GpuStatus
from SlicerDespeckleLib.logic import METHODS
from SlicerDespeckleLib.panel import RunPanel

UI_PATH = Path(__file__).resolve().parents[2] / "SlicerDespeckle" / "Resources" / "UI" / "SlicerDespeckle.ui"
NAMES = (
    *settings_panel.CONTROLS,
    *settings_panel.LABELS.values(),
    "methodDescriptionLabel",
    "logTextEdit",
    "applyButton",
    "previewButton",
    "cancelButton",
    "progressBar",
    "statusLabel",
)
NO_GPU = GpuStatus("onnx", False, "ONNX Runtime here has no CUDA execution provider")
GPU = GpuStatus("onnx", True)


@pytest.fixture(scope="module")
def app():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    return QApplication.instance() or QApplication(sys.argv[:1])


@pytest.fixture
def ui(app):
    from PySide6.QtCore import QFile
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QWidget

    ui_file = QFile(str(UI_PATH))
    assert ui_file.open(QFile.ReadOnly)
    widget = QUiLoader().load(ui_file)
    ui_file.close()
    found = {name: widget.findChild(QWidget, name) for name in NAMES}
    assert all(found.values()), [n for n, w in found.items() if w is None]
    yield SimpleNamespace(**found)
    widget.deleteLater()
    app.processEvents()


def _tooltips(ui) -> dict[str, str]:
    return {name: getattr(ui, name).toolTip() for name in settings_panel.CONTROLS}


@pytest.mark.parametrize("method", METHODS)
def test_each_method_has_its_line_and_reference(ui, method):
    settings_panel.show_method(ui, method)
    text, tip = ui.methodDescriptionLabel.text(), ui.methodDescriptionLabel.toolTip()
    assert text
    assert "\n" not in text
    assert tip.startswith("Reference: ")
    assert any(ch.isdigit() for ch in tip)  # a year, pages or a DOI
    others = {settings_panel.method_texts(m)[0] for m in METHODS if m != method}
    assert text not in others  # each method says something of its own


@pytest.mark.parametrize("method", [m for m in METHODS if m != "denoiser"])
def test_network_controls_are_disabled_for_a_filter_and_say_why(ui, method):
    own = _tooltips(ui)
    states = settings_panel.control_states(method, server=False, eight_bit_input=False, gpu=None)
    settings_panel.show_states(ui, states, own)
    for name in ("deviceComboBox", "backendComboBox", "passesComboBox", "uncertaintyCheckBox"):
        widget = getattr(ui, name)
        assert not widget.isEnabled(), name
        assert "Only the denoiser" in widget.toolTip()
        assert own[name] in widget.toolTip()  # its own explanation is kept below the reason
    assert not ui.deviceLabel.isEnabled()
    assert not ui.eightBitCheckBox.isEnabled()
    assert "not 8-bit" in ui.eightBitCheckBox.toolTip()


def test_denoiser_controls_and_the_gpu(ui):
    own = _tooltips(ui)
    settings_panel.show_states(
        ui, settings_panel.control_states("denoiser", server=False, eight_bit_input=True, gpu=GPU), own
    )
    for name in settings_panel.CONTROLS:
        assert getattr(ui, name).isEnabled(), name
        assert getattr(ui, name).toolTip() == own[name]
    settings_panel.show_states(
        ui, settings_panel.control_states("denoiser", server=False, eight_bit_input=True, gpu=NO_GPU), own
    )
    assert not ui.deviceComboBox.isEnabled()  # only the CPU: nothing to choose
    assert "No GPU usable here" in ui.deviceComboBox.toolTip()
    assert ui.backendComboBox.isEnabled()
    assert ui.passesComboBox.isEnabled()
    # on a server, the device names the server's: this computer's GPU does not matter
    settings_panel.show_states(
        ui, settings_panel.control_states("denoiser", server=True, eight_bit_input=False, gpu=NO_GPU), own
    )
    assert ui.deviceComboBox.isEnabled()


def test_log_handler_fills_the_scrolling_log(ui):
    handler = settings_panel.PanelLogHandler(ui.logTextEdit.appendPlainText)
    logger = logging.getLogger("Despeckle")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        for i in range(ui.logTextEdit.maximumBlockCount() + 50):
            logger.info("usdespeckle: line %d", i)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = ui.logTextEdit.toPlainText().splitlines()
    assert len(lines) == ui.logTextEdit.maximumBlockCount()  # the oldest lines scrolled away
    assert lines[-1].endswith(f"usdespeckle: line {ui.logTextEdit.maximumBlockCount() + 49}")


class BusyCursor:
    """A stand-in for tryWithErrorDisplay(waitCursor=True): records when the cursor is busy."""

    def __init__(self) -> None:
        self.busy = False

    def __call__(self, message: str):
        @contextlib.contextmanager
        def manager():
            self.busy = True
            try:
                yield
            finally:
                self.busy = False

        return manager()


def test_the_install_question_is_asked_before_the_wait_cursor(ui):
    cursor = BusyCursor()
    panel = RunPanel(ui, show_error=cursor)
    panel.set_ready(True)
    asked, started = [], []

    def ask() -> bool:
        asked.append(cursor.busy)
        return False  # declined

    assert not panel.begin(lambda: started.append(cursor.busy), "Despeckling 'x'", ask=ask)
    assert asked == [False]  # the question was not under the busy cursor
    assert started == []  # declined: nothing started, nothing installed
    assert ui.statusLabel.text() == "Nothing was run."
    assert ui.applyButton.isEnabled()

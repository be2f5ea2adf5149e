"""The extension's screenshot (docs/screenshot.png): the panel, offscreen, after a real run on a real cine.

The panel is the module's own ``.ui`` file loaded with PySide6: the picture is drawn, not taken in
Slicer. Slicer's widget classes are not available outside Slicer, so the loader builds plain Qt
widgets of the same kind for them (a combo box for ``qMRMLNodeComboBox``, a group box for
``ctkCollapsibleButton``, whose contents are hidden when it is collapsed, a spin box for
``ctkSliderWidget``), filled as ``connectGui`` fills them. The run is real: the shipped denoiser
(ONNX Runtime) on frames of pydicom-data's cardiac cine from its test block (never seen in
training), through the module's Logic, its panel state (``RunPanel``) and its log; the images
beside the panel are an input frame and its despeckled frame. ``SLICERDESPECKLE_UPDATE_SCREENSHOT=1`` writes the picture to ``docs/screenshot.png``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import slicer
import slicer.util
from SlicerDespeckleLib import dependencies, settings_panel
from SlicerDespeckleLib.logic import AXIS_LABELS, BACKENDS, DEVICES, METHODS, DespeckleLogic
from SlicerDespeckleLib.panel import RunPanel
from SlicerDespeckleLib.process import runtime_folder

REPO = Path(__file__).resolve().parents[2]
UI_PATH = REPO / "SlicerDespeckle" / "Resources" / "UI" / "SlicerDespeckle.ui"
SCREENSHOT = REPO / "docs" / "screenshot.png"
FRAME = 2  # the frame shown, of the held-out frames


@pytest.fixture(scope="module")
def app():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    return QApplication.instance() or QApplication(sys.argv[:1])


def _stand_ins():
    """Plain Qt widgets named as the Slicer classes the .ui declares."""
    from PySide6.QtCore import Property
    from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QGroupBox, QWidget

    class qMRMLNodeComboBox(QComboBox):
        pass

    class ctkCollapsibleButton(QGroupBox):
        def _text(self) -> str:
            return self.title()

        def _set_text(self, text: str) -> None:
            self.setTitle(f"▾ {text}")

        text = Property(str, _text, _set_text)

    class ctkSliderWidget(QDoubleSpinBox):
        pass

    class qMRMLWidget(QWidget):
        pass

    return (qMRMLNodeComboBox, ctkCollapsibleButton, ctkSliderWidget, qMRMLWidget)


def _load_panel():
    from PySide6.QtCore import QFile
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QWidget

    loader = QUiLoader()
    for cls in _stand_ins():
        loader.registerCustomWidget(cls)
    ui_file = QFile(str(UI_PATH))
    assert ui_file.open(QFile.ReadOnly)
    panel = loader.load(ui_file)
    ui_file.close()
    assert panel is not None
    collapsible = _stand_ins()[1].__name__
    for section in panel.findChildren(QWidget):
        if type(section).__name__ == collapsible and section.property("collapsed"):
            for child in section.findChildren(QWidget):
                child.hide()  # as ctkCollapsibleButton shows a collapsed section: its title only
            section.setTitle(section.title().replace("▾", "▸"))
            section.setFlat(True)
    return panel


def _grey_pixmap(array: np.ndarray, width: int):
    """A QPixmap of a 2D array, window from its 0.5 and 99.5 percentiles, scaled to ``width``."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QImage, QPixmap

    low, high = np.percentile(array, (0.5, 99.5))
    grey = np.ascontiguousarray(
        np.clip((array - low) / max(high - low, 1e-6) * 255.0, 0, 255).astype(np.uint8)
    )
    image = QImage(grey.data, grey.shape[1], grey.shape[0], grey.strides[0], QImage.Format_Grayscale8).copy()
    return QPixmap.fromImage(image).scaledToWidth(width, Qt.SmoothTransformation)


def test_screenshot_of_the_panel_after_despeckling_a_cine(
    app, scene, sequences_logic, held_out_cine, project_python, tmp_path
):
    from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

    cine_array, first = held_out_cine
    # the cine as Slicer loads it: a sequence of colour frames played by a browser
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "cardiac cine")
    sequence.SetIndexName("time")
    sequence.SetIndexUnit("ms")
    frame = slicer.vtkMRMLVectorVolumeNode()
    for item in range(len(cine_array)):
        slicer.util.updateVolumeFromArray(frame, cine_array[item][np.newaxis])
        frame.SetSpacing(0.3, 0.3, 1.0)
        sequence.SetDataNodeAtValue(frame, f"{item * 33.333:.3f}")
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "cardiac cine browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    sequences_logic.UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(sequence)

    panel = _load_panel()
    names = (
        "applyButton",
        "previewButton",
        "cancelButton",
        "progressBar",
        "statusLabel",
        "inputSelector",
        "outputSelector",
        "methodComboBox",
        "axisComboBox",
        "deviceComboBox",
        "backendComboBox",
        "passesComboBox",
        "allFramesCheckBox",
        "methodDescriptionLabel",
        "logTextEdit",
        "packageInfoLabel",
    )
    ui = SimpleNamespace(**{name: panel.findChild(QWidget, name) for name in names})
    for name in names[5:12]:
        assert isinstance(getattr(ui, name), QComboBox), f"{name} is not built as a combo box"
    # filled as connectGui fills them from the parameter node
    ui.inputSelector.addItem(proxy.GetName())
    ui.outputSelector.addItem("Create new volume on Apply")
    ui.outputSelector.setEnabled(False)  # a sequence gives a new sequence
    ui.methodComboBox.addItems(list(METHODS))
    ui.axisComboBox.addItems(list(AXIS_LABELS.values()))
    ui.deviceComboBox.addItems(list(DEVICES))
    ui.backendComboBox.addItems(list(BACKENDS))
    ui.passesComboBox.addItems(["1 (default, fastest)", "2", "4", "8 (self-ensemble)"])
    ui.allFramesCheckBox.setChecked(True)

    settings_panel.show_method(ui, "denoiser")
    ui.packageInfoLabel.setText(
        dependencies.package_information(
            REPO / "SlicerDespeckle" / "Resources" / "requirements.txt",
            runtime_folder(REPO / "SlicerDespeckle"),
        )
    )
    handler = settings_panel.PanelLogHandler(ui.logTextEdit.appendPlainText)
    logger = logging.getLogger("Despeckle")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    ui.logTextEdit.appendPlainText(
        f"Despeckling 'cardiac cine' (frames {first}-{first + len(cine_array) - 1})"
    )
    run = RunPanel(ui)
    run.set_ready(True)
    logic = DespeckleLogic(project_python, sequences_logic=sequences_logic)
    assert run.begin(
        lambda: logic.start(proxy, method="denoiser", backend="onnx"), "Despeckling 'cardiac cine'"
    )
    outputs = []

    def succeeded(job, output, seconds):
        outputs.append(output)
        return f"Wrote sequence '{output.GetName()}' ({output.GetNumberOfDataNodes()} frames) in {seconds:.1f} s."

    deadline = time.monotonic() + 600
    while not run.poll(logic.finish, succeeded):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    logger.removeHandler(handler)
    assert outputs, ui.statusLabel.text()
    assert "usdespeckle: wrote" in ui.logTextEdit.toPlainText()  # the process's own lines reached the log
    output = outputs[0]
    assert output.GetNumberOfDataNodes() == sequence.GetNumberOfDataNodes()

    before = cine_array[FRAME].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    after = np.array(slicer.util.arrayFromVolume(output.GetNthDataNode(FRAME)))[0]
    window = QWidget()
    row = QHBoxLayout(window)
    panel.setFixedWidth(420)
    row.addWidget(panel)
    for title, image in (
        (f"{proxy.GetName()}, frame {first + FRAME} (held out from training)", before),
        (f"{output.GetName()} (denoiser)", after),
    ):
        column = QVBoxLayout()
        caption = QLabel(title)
        picture = QLabel()
        picture.setPixmap(_grey_pixmap(image, 380))
        column.addWidget(caption)
        column.addWidget(picture)
        column.addStretch(1)
        row.addLayout(column)
    window.setStyleSheet("QWidget { font-size: 11pt; }")
    window.resize(1240, 760)
    window.show()
    app.processEvents()
    shot = window.grab().toImage()
    assert shot.width() >= 1200
    assert shot.height() >= 500
    path = tmp_path / "screenshot.png"
    assert shot.save(str(path))
    # a picture, not a blank window: its pixels vary, and the panel's Apply is enabled again
    pixels = np.frombuffer(shot.convertToFormat(shot.Format.Format_Grayscale8).constBits(), dtype=np.uint8)
    assert pixels.std() > 20
    assert ui.applyButton.isEnabled()
    assert not ui.cancelButton.isEnabled()
    assert ui.statusLabel.text().startswith("Wrote sequence 'cardiac cine despeckled'")
    if os.environ.get("SLICERDESPECKLE_UPDATE_SCREENSHOT") == "1":
        assert shot.save(str(SCREENSHOT))
    window.deleteLater()
    app.processEvents()

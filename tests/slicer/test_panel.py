"""The panel's run state (SlicerDespeckleLib/panel.py) on the real .ui, loaded offscreen with PySide6.

Whatever fails, the panel must come back: Apply enabled, Cancel disabled, no progress bar, a status
line saying what happened. The jobs are real: the module's Logic against slicer-core's MRML and the
real ``usdespeckle run`` process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import slicer
import slicer.util
from SlicerDespeckleLib.logic import DespeckleLogic, DespeckleProcessError
from SlicerDespeckleLib.panel import RunPanel

UI_PATH = Path(__file__).resolve().parents[2] / "SlicerDespeckle" / "Resources" / "UI" / "SlicerDespeckle.ui"
WIDGETS = ("applyButton", "previewButton", "cancelButton", "progressBar", "statusLabel")


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
    widget.show()
    yield SimpleNamespace(**{name: widget.findChild(QWidget, name) for name in WIDGETS})
    widget.deleteLater()
    app.processEvents()


class ShownErrors:
    """Records what would be shown, then re-raises: what slicer.util.tryWithErrorDisplay does."""

    def __init__(self) -> None:
        self.shown: list[tuple[str, BaseException]] = []

    def __call__(self, message: str):
        @contextlib.contextmanager
        def manager():
            try:
                yield
            except Exception as err:
                self.shown.append((message, err))
                raise

        return manager()


@pytest.fixture
def volume(scene):
    rng = np.random.default_rng(3)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "phantom")
    slicer.util.updateVolumeFromArray(node, (rng.rayleigh(1.0, (4, 24, 20)) * 300).astype(np.int16))
    return node


def _assert_idle(ui) -> None:
    assert ui.applyButton.isEnabled()
    assert ui.previewButton.isEnabled()
    assert not ui.cancelButton.isEnabled()
    assert not ui.progressBar.isVisible()


def _run_to_end(panel: RunPanel, logic: DespeckleLogic, seen: list, timeout: float = 120.0) -> None:
    def succeeded(job, output, seconds):
        seen.append(output)
        return f"Wrote '{output.GetName()}'"

    deadline = time.monotonic() + timeout
    while not panel.poll(logic.finish, succeeded):
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.05)


def test_error_before_start_resets_the_panel(ui):
    errors = ShownErrors()
    panel = RunPanel(ui, show_error=errors)
    panel.set_ready(True)
    _assert_idle(ui)

    def start():
        raise ValueError("select an input volume that holds image data")

    assert not panel.begin(start, "Despeckling 'phantom' with median")
    _assert_idle(ui)
    assert not panel.running
    assert ui.statusLabel.text() == "Could not start; nothing changed."
    assert [str(err) for _, err in errors.shown] == ["select an input volume that holds image data"]


def test_failed_process_resets_the_panel_and_shows_its_error(ui, scene, volume, project_python):
    errors = ShownErrors()
    panel = RunPanel(ui, show_error=errors)
    panel.set_ready(True)
    logic = DespeckleLogic(project_python)
    nodes = scene.GetNumberOfNodes()
    assert panel.begin(lambda: logic.start(volume, method="nosuchmethod"), "Despeckling 'phantom'")
    assert panel.running
    assert ui.cancelButton.isEnabled()
    assert not ui.applyButton.isEnabled()
    assert ui.progressBar.isVisible()
    assert ui.progressBar.maximum() == 4
    seen: list = []
    _run_to_end(panel, logic, seen)
    _assert_idle(ui)
    assert not seen
    assert not panel.running
    assert ui.statusLabel.text() == "Despeckling failed; the scene was not changed."
    (message, err), *_ = errors.shown
    assert message == "Despeckling failed."
    assert isinstance(err, DespeckleProcessError)
    assert "argument --method" in str(err)
    assert scene.GetNumberOfNodes() == nodes
    # and the next run works from that state
    assert panel.begin(lambda: logic.start(volume, method="median"), "Despeckling 'phantom' with median")
    _run_to_end(panel, logic, seen)
    _assert_idle(ui)
    assert len(seen) == 1
    assert ui.statusLabel.text() == f"Wrote '{seen[0].GetName()}'"
    assert len(errors.shown) == 1


def test_declined_install_and_cancel_leave_the_panel_idle(ui, scene, volume, project_python):
    panel = RunPanel(ui, show_error=ShownErrors())
    panel.set_ready(True)
    assert not panel.begin(lambda: None, "Despeckling")  # the user declined to install packages
    _assert_idle(ui)
    logic = DespeckleLogic(project_python)
    assert panel.begin(lambda: logic.start(volume, method="bm3d"), "Despeckling 'phantom' with bm3d")
    job = panel.job
    panel.cancel()
    _assert_idle(ui)
    assert job.done < job.total  # stopped before its last slice
    if os.name != "nt":
        assert job.process.wait(timeout=30) == -signal.SIGKILL  # killed, not left to finish
    assert job.cancelled
    assert ui.statusLabel.text() == "Cancelled; the scene was not changed."

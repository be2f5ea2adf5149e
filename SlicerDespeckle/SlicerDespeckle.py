"""SlicerDespeckle: despeckle ultrasound volumes with a pix2pix network or classical filters.

The five parts of Slicer's scripted-module template: the module description, a typed parameter
node, the widget (bound to the parameter node with ``connectGui``), the logic and the tests. The
logic's work is in ``SlicerDespeckleLib/logic.py``, which needs neither Qt nor the application: it
runs ``usdespeckle run`` in a separate, cancellable process on temporary NRRD files.
"""

from __future__ import annotations

import enum
import importlib.util
import logging
import os
import time
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from SlicerDespeckleLib.logic import (
    AXIS_LABELS,
    BACKENDS,
    DEVICES,
    METHODS,
    DespeckleCancelled,
    DespeckleJob,
    DespeckleLogic,
    ijk_to_ras_array,
    missing_requirements,
    slice_index_at_ras,
    validate_server_url,
)

DEMO_SAMPLE_NAME = "SlicerDespeckleDemo"

#
# SlicerDespeckle
#


class SlicerDespeckle(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Despeckle")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Ultrasound")]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerDespeckle developers"]
        self.parent.helpText = _(
            """
Reduce speckle in ultrasound images and volumes, slice by slice, with a pix2pix despeckling network
trained with cross-modality transfer learning (Vieira et al., IEEE Access 12:45811, 2024) or with
classical filters (median, Lee, Frost, Kuan, SRAD, OBNLM, BM3D, NLM, TV).
Choose the input volume, the method and the slice axis, then Apply; the input is never changed.
See the <a href="https://github.com/SlicerDespeckle/SlicerDespeckle/blob/main/SlicerDespeckle/README.md">module documentation</a>.
"""
        )
        self.parent.acknowledgementText = _(
            """
Method: G. Vieira et al., "Ultrasound despeckling with GANs and cross modality transfer learning",
IEEE Access 12:45811-45823, 2024. Built on MONAI and 3D Slicer; the processing-in-a-subprocess
design follows SlicerMONAIAuto3DSeg (A. Lasso).
"""
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Sample data: a small speckled phantom that ships with the module (no download)
#


def demoVolumePath() -> str:
    """Path of the demo volume shipped in Resources/Data (96 x 96 x 12 voxels, 0.2 x 0.2 x 1 mm)."""
    return os.path.join(os.path.dirname(__file__), "Resources", "Data", f"{DEMO_SAMPLE_NAME}.nrrd")


def loadDemoVolume(source=None):
    """Load the shipped demo volume into the scene and return its node."""
    node = slicer.util.loadVolume(demoVolumePath())
    node.SetName(DEMO_SAMPLE_NAME)
    return node


def registerSampleData():
    """Add the shipped demo volume to the Sample Data module (it loads from disk, no download)."""
    import pathlib

    import SampleData

    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="Ultrasound",
        sampleName=DEMO_SAMPLE_NAME,
        thumbnailFileName=os.path.join(iconsPath, "SlicerDespeckle.png"),
        uris=pathlib.Path(demoVolumePath()).as_uri(),  # a local file: nothing is downloaded
        fileNames=f"{DEMO_SAMPLE_NAME}.nrrd",
        nodeNames=DEMO_SAMPLE_NAME,
        customDownloader=loadDemoVolume,
    )


#
# SlicerDespeckleParameterNode
#


class SliceAxis(enum.Enum):
    """The voxel axis slices are taken along; values are numpy axes of the (k, j, i) array."""

    K_SLICES = 0
    J_SLICES = 1
    I_SLICES = 2

    def label(self) -> str:
        """Text shown in the axis combo box (anatomy-free: volumes may be cine loops)."""
        return AXIS_LABELS[self.value]


class Passes(enum.Enum):
    """Mirrorings of each slice the network averages (``usdespeckle run --passes``); 0 = all."""

    ALL = 0
    FOUR = 4
    TWO = 2
    ONE = 1

    def label(self) -> str:
        """Text shown in the passes combo box."""
        return {0: "all (8, best)", 4: "4", 2: "2", 1: "1 (fastest)"}[self.value]


@parameterNodeWrapper
class SlicerDespeckleParameterNode:
    """The module's parameters, saved with the scene.

    inputVolume - the volume to despeckle (never modified).
    outputVolume - where the result goes; None makes "<input> despeckled".
    method - "denoiser" (pix2pix network) or a classical filter.
    axis - slices are processed along this voxel axis.
    strength - blend in [0, 1] between the input (0) and the despeckled result (1).
    device - "cpu" or "cuda" (network only).
    backend - "torch" or "onnx" (network only).
    passes - mirrorings of each slice the network averages; fewer is faster (torch backend only).
    serverUrl - a MONAI Label server (http://host:port) to despeckle on; empty: on this computer.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    method: Annotated[str, Choice(list(METHODS))] = "denoiser"
    axis: SliceAxis = SliceAxis.K_SLICES
    strength: Annotated[float, WithinRange(0.0, 1.0)] = 1.0
    device: Annotated[str, Choice(list(DEVICES))] = "cpu"
    backend: Annotated[str, Choice(list(BACKENDS))] = "torch"
    passes: Passes = Passes.ALL
    serverUrl: str = ""


#
# SlicerDespeckleWidget
#


class SlicerDespeckleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: inputs, settings, Apply / Cancel / Preview, progress and status."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job: DespeckleJob | None = None
        self._timer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SlicerDespeckle.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SlicerDespeckleLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.previewButton.connect("clicked(bool)", self.onPreviewButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)

        self._timer = qt.QTimer()
        self._timer.setInterval(200)  # ms between progress polls
        self._timer.connect("timeout()", self._onPoll)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes: stop any running process."""
        if self._job is not None:
            self._job.cancel()
            self._job = None
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None:
            self.onCancelButton()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Make sure a parameter node exists, is observed, and has an input if one is loaded."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: SlicerDespeckleParameterNode | None) -> None:
        """Bind the GUI to a parameter node (the .ui names each widget's parameter)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        running = self._job is not None
        ready = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.applyButton.enabled = ready and not running
        self.ui.previewButton.enabled = ready and not running
        self.ui.cancelButton.enabled = running
        self.ui.applyButton.toolTip = (
            _("Despeckle the whole input volume.") if ready else _("Select an input volume.")
        )

    # --- running -----------------------------------------------------------------------------

    def _settings(self) -> dict:
        p = self._parameterNode
        return {
            "method": p.method,
            "axis": p.axis.value,
            "strength": p.strength,
            "backend": p.backend,
            "device": p.device,
            "server_url": p.serverUrl,
            "passes": p.passes.value,
        }

    def onApplyButton(self) -> None:
        """Start despeckling the whole volume; the panel polls the process until it ends."""
        with slicer.util.tryWithErrorDisplay(_("Failed to start despeckling."), waitCursor=True):
            if not self.logic.ensureDependencies(
                self.resourcePath("requirements.txt"),
                self._parameterNode.method,
                serverUrl=self._parameterNode.serverUrl,
            ):
                return
            p = self._parameterNode
            self._startJob(self.logic.start(p.inputVolume, p.outputVolume, **self._settings()))

    def onPreviewButton(self) -> None:
        """Despeckle only the slice through the centre of the Red view, along the chosen axis."""
        with slicer.util.tryWithErrorDisplay(_("Failed to start the preview."), waitCursor=True):
            if not self.logic.ensureDependencies(
                self.resourcePath("requirements.txt"),
                self._parameterNode.method,
                serverUrl=self._parameterNode.serverUrl,
            ):
                return
            p = self._parameterNode
            sliceToRas = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode().GetSliceToRAS()
            centre = [sliceToRas.GetElement(row, 3) for row in range(3)]
            index = slice_index_at_ras(p.inputVolume, centre, p.axis.value)
            self._startJob(self.logic.start(p.inputVolume, None, slice_index=index, **self._settings()))

    def _startJob(self, job: DespeckleJob) -> None:
        self._job = job
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.visible = True
        what = _("slice preview") if job.preview else _("volume")
        server = validate_server_url(self._parameterNode.serverUrl)
        if server:
            self.ui.statusLabel.text = _("Despeckling {what} with {method} on {server}...").format(
                what=what, method=self._parameterNode.method, server=server
            )
        else:
            self.ui.statusLabel.text = _("Despeckling {what} with {method}...").format(
                what=what, method=self._parameterNode.method
            )
        self._checkCanApply()
        self._timer.start()

    def _onPoll(self) -> None:
        job = self._job
        if job is None:
            self._timer.stop()
            return
        finished = job.poll()
        if job.total:
            self.ui.progressBar.maximum = job.total
            self.ui.progressBar.setValue(job.done)
        if not finished:
            return
        self._timer.stop()
        self._job = None
        succeeded = False
        with slicer.util.tryWithErrorDisplay(_("Despeckling failed."), waitCursor=True):
            output = self.logic.finish(job)
            seconds = time.monotonic() - job.started
            if job.preview:
                slicer.util.setSliceViewerLayers(foreground=output, foregroundOpacity=1.0)
                self.ui.statusLabel.text = _("Preview shown over the input ({s:.1f} s).").format(s=seconds)
            else:
                self._parameterNode.outputVolume = output
                slicer.util.setSliceViewerLayers(background=output, foreground=None, fit=False)
                self.ui.statusLabel.text = _("Wrote '{name}' in {s:.1f} s.").format(
                    name=output.GetName(), s=seconds
                )
            succeeded = True
        if not succeeded:
            self.ui.statusLabel.text = _("Despeckling failed; the scene was not changed.")
        self.ui.progressBar.visible = False
        self._checkCanApply()

    def onCancelButton(self) -> None:
        """Kill the process tree; nothing is added to the scene."""
        self._timer.stop()
        if self._job is not None:
            self._job.cancel()
            self._job = None
        self.ui.progressBar.visible = False
        self.ui.statusLabel.text = _("Cancelled; the scene was not changed.")
        self._checkCanApply()


#
# SlicerDespeckleLogic
#


class SlicerDespeckleLogic(ScriptedLoadableModuleLogic, DespeckleLogic):
    """Slicer's logic class around the GUI-free :class:`DespeckleLogic` (usable from scripts).

    Example::

        logic = SlicerDespeckleLogic()
        output = logic.process(inputVolume, method="median", axis=0)
    """

    def __init__(self, python_executable: str | None = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        DespeckleLogic.__init__(self, python_executable=python_executable)

    def getParameterNode(self):
        return SlicerDespeckleParameterNode(super().getParameterNode())

    def ensureDependencies(
        self, requirementsFile: str, method: str = "denoiser", serverUrl: str = ""
    ) -> bool:
        """Install missing Python packages after asking; returns False if the user declined.

        Runs just before the first use, never at import. PyTorch comes from the PyTorch extension
        (SlicerPyTorch), which chooses a build matching the computer's GPU. With a server URL the
        network runs on the server, so PyTorch, MONAI and ONNX Runtime are not needed here; only
        ``usdespeckle``, whose ``usdespeckle run --server`` sends the volume.

        Raises:
            ValueError: PyTorch is needed but the PyTorch extension is not installed, or the server
                URL is not valid.
        """
        server = bool(validate_server_url(serverUrl))
        missing = missing_requirements(requirementsFile, server=server)
        needTorch = not server and importlib.util.find_spec("torch") is None
        if not missing and not needTorch:
            return True
        packages = ", ".join(missing + (["torch (through the PyTorch extension)"] if needTorch else []))
        if not slicer.util.confirmOkCancelDisplay(
            _(
                "Despeckling needs Python packages that are not installed yet:\n{packages}\n\n"
                "Install them now? This can take several minutes."
            ).format(packages=packages),
            _("Install dependencies"),
        ):
            return False
        with slicer.util.WaitCursor():
            if needTorch:
                try:
                    import PyTorchUtils
                except ModuleNotFoundError:
                    raise ValueError(
                        "SlicerDespeckle needs PyTorch: install the 'PyTorch' extension from the Extensions "
                        "Manager, restart Slicer and press Apply again."
                    ) from None
                if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                    raise ValueError(
                        "PyTorch could not be installed; install it from the PyTorch module, then retry."
                    )
            if missing:
                logging.info(f"SlicerDespeckle: installing {missing}")
                slicer.util.pip_install(missing)
        return True


#
# SlicerDespeckleTest
#


class SlicerDespeckleTest(ScriptedLoadableModuleTest):
    """Tests run inside Slicer (Reload and Test, or ctest)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_median_keeps_geometry_and_input()
        self.setUp()
        self.test_cancel_leaves_scene_unchanged()

    def test_median_keeps_geometry_and_input(self):
        """Despeckle the shipped demo volume with the median filter along K."""
        import numpy as np

        self.delayDisplay("Loading the demo volume")
        inputVolume = loadDemoVolume()
        before = np.array(slicer.util.arrayFromVolume(inputVolume))
        logic = SlicerDespeckleLogic()
        output = logic.process(inputVolume, method="median", axis=0)
        self.assertEqual(output.GetName(), f"{DEMO_SAMPLE_NAME} despeckled")
        np.testing.assert_allclose(ijk_to_ras_array(output), ijk_to_ras_array(inputVolume))
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(inputVolume), before)
        result = slicer.util.arrayFromVolume(output)
        self.assertEqual(result.shape, before.shape)
        # speckle reduction: the local variance inside the volume drops
        self.assertLess(
            float(np.diff(result, axis=2).std()), float(np.diff(before.astype(float), axis=2).std())
        )
        self.delayDisplay("Test passed")

    def test_cancel_leaves_scene_unchanged(self):
        inputVolume = loadDemoVolume()
        nodes = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(DespeckleCancelled):
            SlicerDespeckleLogic().process(inputVolume, method="median", cancel=lambda: True)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodes)

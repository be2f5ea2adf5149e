"""SlicerDespeckle: despeckle ultrasound volumes and cine sequences with a pix2pix network or classical filters.

The five parts of Slicer's scripted-module template: the module description, a typed parameter
node, the widget (bound to the parameter node with ``connectGui``), the logic and the tests. The
work is in ``SlicerDespeckleLib/`` (as SlicerMONAIAuto3DSeg's ``MONAIAuto3DSegLib``): ``logic.py``,
``process.py`` (the background ``usdespeckle run`` process), ``volumes.py`` (nodes, sequences and
temporary files), ``sequences.py`` (a sequence in bounded blocks of frames), ``dependencies.py``
(packages per method, their versions, updates), ``gpu.py`` (is there a usable GPU), ``panel.py``
(the run state of the panel) and ``settings_panel.py`` (method descriptions, which controls apply,
the log); none of them needs the application, and only the Widget asks, waits or shows messages.
The despeckling code and the denoiser ship inside the module (``SlicerDespeckleLib/runtime``).
"""

from __future__ import annotations

import enum
import logging
import os
from typing import Annotated, Union

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSequenceNode
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
from SlicerDespeckleLib import dependencies, gpu, settings_panel
from SlicerDespeckleLib.logic import (
    AXIS_LABELS,
    BACKENDS,
    DEFAULT_BACKEND,
    DEFAULT_DEVICE,
    DEFAULT_METHOD,
    DEFAULT_PASSES,
    DEFAULT_STRENGTH,
    DEVICES,
    METHODS,
    PASSES,
    SOURCE_ATTRIBUTE,
    DespeckleCancelled,
    DespeckleLogic,
    ijk_to_ras_array,
    slice_index_at_ras,
)
from SlicerDespeckleLib.panel import RunPanel
from SlicerDespeckleLib.process import MODULE_DIR, runtime_folder
from SlicerDespeckleLib.volumes import browser_for

#: The oldest Slicer the module is written for (Python 3.12, numpy 2.0, parameterNodeWrapper Unions).
MINIMUM_SLICER_VERSION = (5, 10)
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
Reduce speckle in ultrasound images, volumes and cine sequences, slice by slice, with a pix2pix
despeckling network trained with cross-modality transfer learning (Vieira et al., IEEE Access
12:45811, 2024) or with classical filters (median, Lee, Frost, Kuan, SRAD, OBNLM, BM3D, MuLoG, NLM, TV).
Choose the input (a volume, a sequence or a sequence's proxy volume), the method and the slice
axis, then Apply; the input is never changed.
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
        version = (slicer.app.majorVersion, slicer.app.minorVersion)
        if version < MINIMUM_SLICER_VERSION:
            logging.warning(
                "Despeckle is written for Slicer %d.%d or later; this is Slicer %d.%d",
                *MINIMUM_SLICER_VERSION,
                *version,
            )


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
    """Mirrorings of each slice the network averages (``usdespeckle run --passes``).

    The values are the library's ``options.PASSES``, ``DEFAULT`` its ``DEFAULT_PASSES`` (one, the
    shipped setting); the names are what saved scenes hold. tests/test_doors.py checks both.
    """

    DEFAULT = 1
    TWO = 2
    FOUR = 4
    EIGHT = 8

    def label(self) -> str:
        """Text shown in the passes combo box."""
        if self.value == DEFAULT_PASSES:
            return f"{self.value} (default, fastest)"
        return f"{self.value} (self-ensemble)" if self.value == max(PASSES) else str(self.value)


@parameterNodeWrapper
class SlicerDespeckleParameterNode:
    """The module's parameters, saved with the scene.

    inputVolume - what to despeckle (never modified): a grey or colour volume, a sequence of
        volumes, or a sequence browser's proxy volume.
    outputVolume - for a volume input, where the result goes; None makes "<input> despeckled".
        Sequences always give a new sequence.
    allFrames - a proxy volume stands for every frame of its sequence (True) or the frame shown.
    method - "denoiser" (pix2pix network) or a classical filter.
    axis - slices are processed along this voxel axis.
    strength - blend in [0, 1] between the input (0) and the despeckled result (1).
    device - "cpu" or "cuda" (network only).
    backend - "onnx" (ONNX Runtime, default) or "torch" (PyTorch extension), network only.
    passes - mirrorings of each slice the network averages (either backend); time grows with passes.
    serverUrl - a MONAI Label server (http://host:port) to despeckle on; empty: on this computer.
    uncertainty - also make "<input> uncertainty", the spread of the denoiser's 8 mirrored passes.
    eightBitOutput - store the result as 8-bit (8-bit input only); float32 otherwise.
    """

    inputVolume: Union[vtkMRMLScalarVolumeNode, vtkMRMLSequenceNode, None]  # noqa: UP007 - read by parameterNodeWrapper
    outputVolume: vtkMRMLScalarVolumeNode
    allFrames: bool = True
    method: Annotated[str, Choice(list(METHODS))] = DEFAULT_METHOD
    axis: SliceAxis = SliceAxis.K_SLICES
    strength: Annotated[float, WithinRange(0.0, 1.0)] = DEFAULT_STRENGTH
    device: Annotated[str, Choice(list(DEVICES))] = DEFAULT_DEVICE
    backend: Annotated[str, Choice(list(BACKENDS))] = DEFAULT_BACKEND
    passes: Passes = Passes.DEFAULT
    serverUrl: str = ""
    uncertainty: bool = False
    eightBitOutput: bool = False


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
        self._lastInputId = None
        self._timer = None
        self.panel: RunPanel | None = None
        self._logHandler = None
        self._gpu: dict[str, gpu.GpuStatus] = {}  # per backend, asked once per session
        self._tooltips: dict[str, str] = {}

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SlicerDespeckle.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SlicerDespeckleLogic()
        self.panel = RunPanel(
            self.ui,
            show_error=lambda message: slicer.util.tryWithErrorDisplay(message, waitCursor=True),
            tr=_,
        )

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.previewButton.connect("clicked(bool)", self.onPreviewButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self._setupExplainedSettings()

        self._timer = qt.QTimer()
        self._timer.setInterval(200)  # ms between progress polls
        self._timer.connect("timeout()", self._onPoll)

        self._setupLive()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes: stop any running process."""
        if self.panel is not None and self.panel.running:
            self.panel.cancel()
        self.onStopLiveButton()
        if self._logHandler is not None:
            logging.getLogger("Despeckle").removeHandler(self._logHandler)
            self._logHandler = None
        self.removeObservers()

    # --- settings that explain themselves (settings_panel.py), packages, GPU --------------------

    def _setupExplainedSettings(self) -> None:
        """The log, the package line, the Update action; tooltips kept to restore them."""
        self._tooltips = {name: getattr(self.ui, name).toolTip for name in settings_panel.CONTROLS}
        self._logHandler = settings_panel.PanelLogHandler(self.ui.logTextEdit.appendPlainText)
        logging.getLogger("Despeckle").addHandler(self._logHandler)
        self.ui.updateButton.connect("clicked(bool)", self.onUpdateButton)
        self._showPackageInformation()

    def _requirementsFile(self) -> str:
        return str(MODULE_DIR / "Resources" / "requirements.txt")

    def _showPackageInformation(self) -> None:
        self.ui.packageInfoLabel.text = dependencies.package_information(
            self._requirementsFile(), runtime_folder(MODULE_DIR)
        )

    def _gpuStatus(self, backend: str) -> gpu.GpuStatus:
        """Whether ``backend`` can use a GPU here; asked once per backend (importing its runtime)."""
        if backend not in self._gpu:
            self._gpu[backend] = gpu.gpu_status(backend)
        return self._gpu[backend]

    def _showSettingsState(self, p, node) -> None:
        """Method description, and which settings apply (the others disabled, saying why)."""
        settings_panel.show_method(self.ui, p.method)
        server = bool(p.serverUrl.strip())
        status = None
        if p.method == "denoiser" and not server:
            status = self._gpuStatus(p.backend)
            if p.device == "cuda" and not status.usable:
                p.device = "cpu"  # offered only when usable; the log says why
                logging.getLogger("Despeckle").info(gpu.choose_device("cuda", status)[1])
        states = settings_panel.control_states(
            p.method, server=server, eight_bit_input=self._isEightBit(node), gpu=status
        )
        settings_panel.show_states(self.ui, states, self._tooltips)

    @staticmethod
    def _isEightBit(node) -> bool:
        """The input's voxels (a sequence's first frame's) are unsigned 8-bit."""
        if node is not None and node.IsA("vtkMRMLSequenceNode"):
            node = node.GetNthDataNode(0) if node.GetNumberOfDataNodes() else None
        image = node.GetImageData() if node is not None and hasattr(node, "GetImageData") else None
        return image is not None and image.GetScalarType() == vtk.VTK_UNSIGNED_CHAR

    def onUpdateButton(self) -> None:
        """Upgrade the installed runtime packages, after asking (no wait cursor over the question)."""
        import numpy

        arguments = dependencies.update_arguments(self._requirementsFile(), numpy.__version__)
        if not arguments:
            slicer.util.infoDisplay(_("None of the module's packages is installed yet: nothing to update."))
            return
        if not slicer.util.confirmOkCancelDisplay(
            _("Upgrade these packages to their newest versions that keep Slicer's numpy?\n{lines}").format(
                lines="\n".join(f"- {a}" for a in arguments[1:])
            ),
            _("Update packages"),
        ):
            return
        with slicer.util.tryWithErrorDisplay(_("Updating the packages failed."), waitCursor=True):
            dependencies.update(self._requirementsFile())
        self._showPackageInformation()
        self._gpu.clear()
        slicer.util.infoDisplay(_("Packages updated. Restart Slicer if a package was already in use."))

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified
            )

    def onSceneStartClose(self, caller, event) -> None:
        if self.panel is not None and self.panel.running:
            self.onCancelButton()
        self.onStopLiveButton()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Make sure a parameter node exists, is observed, and has an input if one is loaded."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not firstVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: SlicerDespeckleParameterNode | None) -> None:
        """Bind the GUI to a parameter node (the .ui names each widget's parameter)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified
            )
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        p = self._parameterNode
        node = p.inputVolume if p else None
        inputId = node.GetID() if node is not None else None
        if inputId != self._lastInputId:
            self._lastInputId = inputId
            # a result made from another input is never overwritten: back to "Create new volume"
            output = p.outputVolume if p else None
            if output is not None and output.GetAttribute(SOURCE_ATTRIBUTE) not in (None, inputId):
                p.outputVolume = None
        isProxy = (
            node is not None and not node.IsA("vtkMRMLSequenceNode") and browser_for(node, slicer.mrmlScene)
        )
        self.ui.allFramesCheckBox.setVisible(bool(isProxy))
        isSequence = node is not None and (node.IsA("vtkMRMLSequenceNode") or (isProxy and p.allFrames))
        self.ui.outputSelector.setEnabled(not isSequence)
        self.ui.outputSelector.setToolTip(
            _("A sequence gives a new sequence named '<input> despeckled', added to the same browser.")
            if isSequence
            else _("Volume to write the result to. 'Create new volume on Apply' makes '<input> despeckled'.")
        )
        self.panel.set_ready(node is not None)
        if p is not None:
            self._showSettingsState(p, node)

    # --- running -----------------------------------------------------------------------------

    def _settings(self, preview: bool = False) -> dict:
        p = self._parameterNode
        network = p.method == "denoiser"
        device = p.device
        if network and not p.serverUrl.strip():
            device, message = gpu.choose_device(p.device, self._gpuStatus(p.backend))
            if message:
                logging.getLogger("Despeckle").info(message)
        return {
            "method": p.method,
            "axis": p.axis.value,
            "strength": p.strength,
            "backend": p.backend,
            "device": device,
            "server_url": p.serverUrl,
            "passes": p.passes.value,
            "uncertainty": network and p.uncertainty and not preview,
            "eight_bit": p.eightBitOutput and self._isEightBit(p.inputVolume),
        }

    def _askToInstall(self) -> bool:
        """Ask before installing what the chosen method needs (naming any restrictive licence).

        Runs before the start's wait cursor, so the question is never hidden under it. False when
        the user declined; the packages agreed to are installed by :meth:`_installAgreed`.
        """
        p = self._parameterNode
        self._agreedInstall = self.logic.missing_requirements(p.method, p.backend, p.serverUrl)
        if not self._agreedInstall:
            return True
        return slicer.util.confirmOkCancelDisplay(
            dependencies.consent_text(p.method, self._agreedInstall), _("Install dependencies")
        )

    def _installAgreed(self) -> None:
        """Install what the user agreed to in :meth:`_askToInstall` (under the start's wait cursor)."""
        missing, self._agreedInstall = getattr(self, "_agreedInstall", []), []
        if not missing:
            return
        self.ui.statusLabel.text = _("Installing {names}...").format(names=", ".join(r.name for r in missing))
        slicer.app.processEvents()
        dependencies.install(missing)
        self._showPackageInformation()
        self._gpu.clear()

    def _describe(self, node, preview: bool) -> str:
        p = self._parameterNode
        what = _("slice of '{name}'").format(name=node.GetName()) if preview else f"'{node.GetName()}'"
        server = p.serverUrl.strip()  # checked by the start, inside the panel's error guard
        where = _(" on {server}").format(server=server) if server else ""
        return _("Despeckling {what} with {method}{where}").format(what=what, method=p.method, where=where)

    def onApplyButton(self) -> None:
        """Start despeckling the whole input; the panel polls the process until it ends."""
        p = self._parameterNode

        def start():
            self._installAgreed()
            return self.logic.start(p.inputVolume, p.outputVolume, all_frames=p.allFrames, **self._settings())

        if self.panel.begin(start, self._describe(p.inputVolume, preview=False), ask=self._askToInstall):
            self._timer.start()

    def onPreviewButton(self) -> None:
        """Despeckle only the slice through the centre of the slice view showing the input."""
        p = self._parameterNode

        def start():
            self._installAgreed()
            volume = p.inputVolume
            if volume.IsA("vtkMRMLSequenceNode"):  # the frame its browser shows
                browser = browser_for(volume, slicer.mrmlScene)
                volume = browser.GetProxyNode(volume) if browser is not None else None
                if volume is None:
                    raise ValueError(
                        "the sequence is not shown in any view; select its proxy volume to preview"
                    )
            index = slice_index_at_ras(volume, self._viewCentreInVolumeCoordinates(volume), p.axis.value)
            return self.logic.start(volume, None, slice_index=index, **self._settings(preview=True))

        if self.panel.begin(start, self._describe(p.inputVolume, preview=True), ask=self._askToInstall):
            self._timer.start()

    def _sliceViewShowing(self, volume):
        """The first slice view with ``volume`` as background (else the Red view)."""
        layoutManager = slicer.app.layoutManager()
        for name in layoutManager.sliceViewNames():
            widget = layoutManager.sliceWidget(name)
            if (
                widget.isVisible()
                and widget.mrmlSliceCompositeNode().GetBackgroundVolumeID() == volume.GetID()
            ):
                return widget
        return layoutManager.sliceWidget("Red")

    def _viewCentreInVolumeCoordinates(self, volume) -> list[float]:
        """Centre of the slice view showing ``volume``, in the volume's RAS (before its parent transform)."""
        sliceToRas = self._sliceViewShowing(volume).mrmlSliceNode().GetSliceToRAS()
        world = [sliceToRas.GetElement(row, 3) for row in range(3)]
        parent = volume.GetParentTransformNode()
        if parent is None:
            return world
        worldToLocal = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, parent, worldToLocal)
        return list(worldToLocal.TransformPoint(world))

    def _onPoll(self) -> None:
        if self.panel.poll(self.logic.finish, self._showResult):
            self._timer.stop()

    def _showResult(self, job, output, seconds: float) -> str:
        """Show a finished job's output; returns the status line (naming the uncertainty map, if made)."""
        status = self._showOutput(job, output, seconds)
        uncertainty = job.context.uncertainty_node if job.context is not None else None
        if uncertainty is not None:
            status += " " + _("The uncertainty map is '{name}'.").format(name=uncertainty.GetName())
        return status

    def _showOutput(self, job, output, seconds: float) -> str:
        if job.preview:
            slicer.util.setSliceViewerLayers(foreground=output, foregroundOpacity=0.5)
            return _("Preview shown over the input at 50 % opacity ({s:.1f} s).").format(s=seconds)
        if output.IsA("vtkMRMLSequenceNode"):
            browser = browser_for(output, slicer.mrmlScene)
            proxy = browser.GetProxyNode(output) if browser is not None else None
            if proxy is not None:
                slicer.util.setSliceViewerLayers(background=proxy, foreground=None, fit=False)
            return _("Wrote sequence '{name}' ({n} frames) in {s:.1f} s.").format(
                name=output.GetName(), n=output.GetNumberOfDataNodes(), s=seconds
            )
        slicer.util.setSliceViewerLayers(background=output, foreground=None, fit=False)
        return _("Wrote '{name}' in {s:.1f} s.").format(name=output.GetName(), s=seconds)

    def onCancelButton(self) -> None:
        """Kill the process tree (without waiting); nothing is added to the scene."""
        self._timer.stop()
        self.panel.cancel()

    # --- live mode: usdespeckle stream on an OpenIGTLink input (SlicerDespeckleLib/live.py) ------------

    def _setupLive(self) -> None:
        from SlicerDespeckleLib.live import LiveLogic

        self.liveLogic = LiveLogic()
        self.liveSession = None
        self._liveTimer = qt.QTimer()
        self._liveTimer.setInterval(500)  # ms between reads of the relay's stats
        self._liveTimer.connect("timeout()", self._onLivePoll)
        self.ui.startLiveButton.connect("clicked(bool)", self.onStartLiveButton)
        self.ui.stopLiveButton.connect("clicked(bool)", self.onStopLiveButton)

    def onStartLiveButton(self) -> None:
        """Despeckle the input's OpenIGTLink stream in a background process until Stop live."""
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Live despeckling could not start."), waitCursor=True):
            missing = self.liveLogic.missing_requirements(p.method, p.backend)
            if missing:
                names = ", ".join(r.name for r in missing)
                if not slicer.util.confirmOkCancelDisplay(
                    _("Live despeckling needs {names}. Install now?").format(names=names)
                ):
                    return
                dependencies.install(missing)
            self.liveSession = self.liveLogic.start(
                p.inputVolume, method=p.method, passes=p.passes.value, strength=p.strength, backend=p.backend
            )
            self.ui.startLiveButton.enabled = False
            self.ui.stopLiveButton.enabled = True
            self.ui.statusLabel.text = _("Live: waiting for frames...")
            self._liveTimer.start()

    def _onLivePoll(self) -> None:
        from SlicerDespeckleLib.live import LiveState

        session = self.liveSession
        if session is None:
            return
        wasRunning = session.state == LiveState.RUNNING
        self.liveLogic.poll(session)
        if session.state == LiveState.RUNNING and not wasRunning:
            output = slicer.mrmlScene.GetNodeByID(session.output_node_id)
            slicer.util.setSliceViewerLayers(foreground=output, foregroundOpacity=0.5, fit=False)
        if session.active:
            stats = session.stats
            self.ui.statusLabel.text = _(
                "Live: {fin} in, {fout} out, {dropped} dropped, latency {latency} ms"
            ).format(
                fin=stats.get("in", "-"),
                fout=stats.get("out", "-"),
                dropped=stats.get("dropped", "-"),
                latency=stats.get("latency_ms", "-"),
            )
            return
        failed = session.state == LiveState.FAILED
        self.onStopLiveButton()
        if failed:
            slicer.util.errorDisplay(_("Live despeckling stopped: {error}").format(error=session.error))

    def onStopLiveButton(self) -> None:
        """End the live process and its connector (the last despeckled image stays)."""
        if getattr(self, "liveSession", None) is None:
            return
        self._liveTimer.stop()
        session, self.liveSession = self.liveSession, None
        self.liveLogic.stop(session)
        self.ui.startLiveButton.enabled = True
        self.ui.stopLiveButton.enabled = False
        self.ui.statusLabel.text = _("Live despeckling stopped.")


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


#
# SlicerDespeckleTest
#


def missingForSelfTest(method: str, backend: str = DEFAULT_BACKEND) -> str:
    """Why the module's self-test cannot run ``method`` here ("" when it can)."""
    # a missing runtime already fails the import of SlicerDespeckleLib.process, with its own message
    if method != "denoiser":
        try:
            import scipy  # noqa: F401 - Slicer ships SciPy; the classical filters use it
        except ImportError:
            return "SciPy is not installed"
    missing = DespeckleLogic().missing_requirements(method, backend)
    return ", ".join(r.name for r in missing) + " not installed" if missing else ""


class SlicerDespeckleTest(ScriptedLoadableModuleTest):
    """Tests run inside Slicer (Reload and Test, or ctest). Each skips, saying why, when what it
    needs is missing (packages are installed only after asking, never by a test)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (
            self.test_median_keeps_geometry_and_input,
            self.test_sequence_gives_sequence,
            self.test_cancel_leaves_scene_unchanged,
            self.test_denoiser,
        ):
            self.setUp()
            test()

    def _skipped(self, method: str, backend: str = DEFAULT_BACKEND) -> bool:
        reason = missingForSelfTest(method, backend)
        if reason:
            self.delayDisplay(f"Skipped ({method}): {reason}")
            logging.warning("SlicerDespeckle self-test skipped for %s: %s", method, reason)
        return bool(reason)

    def test_median_keeps_geometry_and_input(self):
        """Despeckle the shipped demo volume with the median filter along K."""
        import numpy as np

        if self._skipped("median"):
            return
        self.delayDisplay("Loading the demo volume")
        inputVolume = loadDemoVolume()
        before = np.array(slicer.util.arrayFromVolume(inputVolume))
        output = SlicerDespeckleLogic().process(inputVolume, method="median", axis=0)
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

    def test_sequence_gives_sequence(self):
        """The demo's 12 frames as a sequence with a browser: a despeckled sequence in the same browser."""
        import numpy as np

        if self._skipped("median"):
            return
        volume = loadDemoVolume()
        frames = np.array(slicer.util.arrayFromVolume(volume))
        sequence = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", "demo cine")
        sequence.SetIndexName("time")
        sequence.SetIndexUnit("s")
        frame = slicer.vtkMRMLScalarVolumeNode()
        for k in range(frames.shape[0]):
            slicer.util.updateVolumeFromArray(frame, frames[k : k + 1])
            frame.SetSpacing(volume.GetSpacing())
            sequence.SetDataNodeAtValue(frame, f"{0.05 * k:.2f}")
        browser = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "demo browser")
        browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
        slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(browser)
        output = SlicerDespeckleLogic().process(browser.GetProxyNode(sequence), method="median")
        self.assertTrue(output.IsA("vtkMRMLSequenceNode"))
        self.assertEqual(
            [output.GetNthIndexValue(i) for i in range(output.GetNumberOfDataNodes())],
            [sequence.GetNthIndexValue(i) for i in range(sequence.GetNumberOfDataNodes())],
        )
        self.assertTrue(browser.IsSynchronizedSequenceNodeID(output.GetID()))
        self.delayDisplay("Test passed")

    def test_cancel_leaves_scene_unchanged(self):
        if self._skipped("median"):
            return
        inputVolume = loadDemoVolume()
        nodes = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(DespeckleCancelled):
            SlicerDespeckleLogic().process(inputVolume, method="median", cancel=lambda: True)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodes)

    def test_denoiser(self):
        """The shipped denoiser through ONNX Runtime (no PyTorch)."""
        import numpy as np

        if self._skipped("denoiser", "onnx"):
            return
        inputVolume = loadDemoVolume()
        output = SlicerDespeckleLogic().process(inputVolume, method="denoiser", backend="onnx")
        result = slicer.util.arrayFromVolume(output)
        self.assertEqual(result.shape, slicer.util.arrayFromVolume(inputVolume).shape)
        self.assertTrue(np.isfinite(result).all())
        self.delayDisplay("Test passed")

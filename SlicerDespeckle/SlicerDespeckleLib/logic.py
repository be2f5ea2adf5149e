"""GUI-free core of the Despeckle module: despeckle volume and sequence nodes with ``usdespeckle run``.

Imports only the standard library, numpy, vtk and MRML through ``slicer`` / ``slicer.util``, so it
runs (and is tested) with the ``slicer-core`` package, without the Slicer application, Qt or CTK.
The parts live beside it as in SlicerMONAIAuto3DSeg's ``MONAIAuto3DSegLib``: ``process.py`` (the
background process), ``volumes.py`` (nodes to files and back, sequences) and ``dependencies.py``
(packages per method). Confirmations, wait cursors and message boxes belong to the Widget.

The scene is only touched when a result has been read successfully, so a cancelled or failed run
leaves it as it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import slicer.util

from SlicerDespeckleLib.dependencies import missing_for
from SlicerDespeckleLib.process import (
    DEFAULT_PASSES,
    MODULE_DIR,
    BlockJob,
    DespeckleCancelled,
    DespeckleJob,
    DespeckleProcessError,
    default_python_executable,
    despeckle_command,
    library_module,
    parse_progress,
    process_environment,
    runtime_folder,
    start_process,
)
from SlicerDespeckleLib.sequences import (
    SequenceBuilder,
    SourceFrames,
    cast_result,
    frame_blocks,
    read_frames,
    read_source,
    sequence_intensity_range,
)
from SlicerDespeckleLib.volumes import (
    AXIS_LABELS,
    BLOCK_VALUES,
    SOURCE_ATTRIBUTE,
    ijk_to_ras_array,
    read_nrrd,
    slice_index_at_ras,
    store_volume,
    write_nrrd,
)

__all__ = [
    "AXIS_LABELS",
    "BACKENDS",
    "BLOCK_VALUES",
    "DEFAULT_AXIS",
    "DEFAULT_BACKEND",
    "DEFAULT_DEVICE",
    "DEFAULT_METHOD",
    "DEFAULT_PASSES",
    "DEFAULT_STRENGTH",
    "DEVICES",
    "METHODS",
    "OUTPUT_SUFFIX",
    "PASSES",
    "PREVIEW_SUFFIX",
    "SOURCE_ATTRIBUTE",
    "UNCERTAINTY_SUFFIX",
    "DespeckleCancelled",
    "DespeckleJob",
    "DespeckleLogic",
    "DespeckleProcessError",
    "despeckle_command",
    "ijk_to_ras_array",
    "missing_for",
    "parse_progress",
    "slice_index_at_ras",
    "validate_parameters",
    "validate_server_url",
]

# The panel offers what the runtime's `usdespeckle run` accepts: its usdespeckle/runtime/options.py.
_OPTIONS = library_module("options")
#: ``--method`` choices: the shipped pix2pix denoiser, then the classical filters.
METHODS: tuple[str, ...] = _OPTIONS.METHODS
DEFAULT_METHOD: str = _OPTIONS.DEFAULT_METHOD
DEFAULT_AXIS: int = _OPTIONS.DEFAULT_AXIS
DEFAULT_STRENGTH: float = _OPTIONS.DEFAULT_STRENGTH
DEVICES: tuple[str, ...] = _OPTIONS.DEVICES
DEFAULT_DEVICE: str = _OPTIONS.DEFAULT_DEVICE
#: Denoiser runtimes (the command's "auto" is not offered: the panel installs what the chosen one needs).
BACKENDS: tuple[str, ...] = _OPTIONS.MODEL_BACKENDS
#: Overrides options.DEFAULT_BACKEND ("auto"), which the panel does not offer: ONNX Runtime is one
#: pip package inside Slicer, where TorchScript needs the PyTorch extension.
DEFAULT_BACKEND = "onnx"
#: Mirrorings of each slice the denoiser averages (``usdespeckle run --passes``); time grows with
#: passes. Either runtime.
PASSES: tuple[int, ...] = _OPTIONS.PASSES
#: Licence restrictions named in the consent dialog before a package is installed.
PACKAGE_LICENCES: dict[str, str] = {"bm3d": _OPTIONS.BM3D_LICENCE}
OUTPUT_SUFFIX = " despeckled"
PREVIEW_SUFFIX = " despeckle preview"
UNCERTAINTY_SUFFIX = " uncertainty"


def validate_server_url(url: str) -> str:
    """Check a MONAI Label server address typed in the panel; returns it cleaned, or "" for none.

    Surrounding whitespace and trailing slashes are removed and the scheme is lower-cased, so
    ``" HTTP://host:8000/ "`` becomes ``"http://host:8000"``.

    Args:
        url: ``http://host[:port][/path]`` or ``https://...``; empty or blank means no server.

    Returns:
        The cleaned URL, or ``""`` to despeckle on this computer.

    Raises:
        ValueError: the text is not an http(s) URL with a host and a valid port; the message shows
            the expected form.
    """
    text = (url or "").strip()
    if not text:
        return ""
    hint = f"Server URL {text!r} is not valid: use http://host:port, for example http://127.0.0.1:8000"
    parts = urllib.parse.urlsplit(text)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"{hint} (it must start with http:// or https://)")
    if not parts.hostname:
        raise ValueError(f"{hint} (the host name is missing)")
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"{hint} (the port must be a number from 1 to 65535)")
    if parts.query or parts.fragment:
        raise ValueError(f"{hint} (without '?' or '#' parts)")
    return urllib.parse.urlunsplit((parts.scheme.lower(), parts.netloc, parts.path.rstrip("/"), "", ""))


def validate_parameters(
    method: str, axis: int, strength: float, backend: str, device: str, passes: int = DEFAULT_PASSES
) -> None:
    """Check the settings the Logic can check itself (the command checks ``method``).

    Raises:
        ValueError: with the bad value and the accepted ones.
    """
    if not isinstance(method, str) or not method.strip():
        raise ValueError(f"method must be a method name such as {', '.join(METHODS)}; got {method!r}")
    if axis not in AXIS_LABELS:
        raise ValueError(f"axis must be 0 (K), 1 (J) or 2 (I), got {axis!r}")
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength must be in [0, 1] (0 keeps the input, 1 the full result), got {strength}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if passes not in PASSES:
        raise ValueError(f"passes must be one of {', '.join(map(str, PASSES))}, got {passes!r}")


@dataclass
class RunContext:
    """What :meth:`DespeckleLogic.finish` needs to store a job's result.

    Attributes:
        dtype: the voxel type stored: float32, or uint8 (8-bit input with 8-bit output asked for).
        uncertainty: the denoiser's spread is stored too, as "<input> uncertainty".
        builders: for a sequence, the despeckled sequence's builder and, with ``uncertainty``, the
            spread's.
        uncertainty_node: the stored uncertainty map, once the job is finished.
    """

    source: SourceFrames
    output_node_id: str | None
    output_name: str
    ijk_to_ras: np.ndarray
    dtype: str = "float32"
    uncertainty: bool = False
    builders: list[SequenceBuilder] | None = None
    uncertainty_node: Any = None


class DespeckleLogic:
    """Despeckle volume and sequence nodes with ``usdespeckle run`` in a separate process.

    Args:
        python_executable: interpreter that runs ``python -m usdespeckle``; default
            :func:`~SlicerDespeckleLib.process.default_python_executable` (``PythonSlicer``).
        scene: the MRML scene to add output nodes to; default ``slicer.mrmlScene``.
        environment: environment of the process; default this process's environment (inside
            Slicer, the environment Slicer was started with).
        runtime: folder holding the ``usdespeckle`` package and ``monai_bundle/`` put first on the
            process's ``PYTHONPATH``; default the module's copy (or the checkout it lives in), see
            :func:`~SlicerDespeckleLib.process.runtime_folder`. ``False``: add nothing.
        temp_root: folder for the temporary files; default Slicer's temporary folder
            (``slicer.util.tempDirectory``) in the application, the system's elsewhere.
        sequences_logic: the Sequences module logic that makes a browser's proxy nodes; default
            ``slicer.modules.sequences.logic()`` in the application, else one made on first use.
    """

    def __init__(
        self,
        python_executable: str | None = None,
        scene=None,
        environment: Mapping[str, str] | None = None,
        runtime: str | os.PathLike | bool | None = None,
        temp_root: str | os.PathLike | None = None,
        sequences_logic=None,
    ):
        self.python_executable = python_executable or default_python_executable()
        self._scene = scene
        self.environment = dict(environment) if environment is not None else None
        self.runtime = (
            None if runtime is False else (runtime_folder(MODULE_DIR) if runtime is None else runtime)
        )
        self.temp_root = temp_root
        self._sequences_logic = sequences_logic

    @property
    def scene(self):
        """The scene output nodes go to."""
        return self._scene if self._scene is not None else slicer.mrmlScene

    def sequences_logic(self):
        """Slicer's Sequences logic (it makes a browser's proxy nodes); one of our own without the app."""
        if self._sequences_logic is not None:
            return self._sequences_logic
        modules = getattr(slicer, "modules", None)
        if modules is not None and hasattr(modules, "sequences"):
            return modules.sequences.logic()
        if hasattr(slicer, "vtkSlicerSequencesLogic"):  # slicer-core, without the application
            self._sequences_logic = slicer.vtkSlicerSequencesLogic()
            self._sequences_logic.SetMRMLScene(self.scene)
        return self._sequences_logic

    def _environment(self) -> dict[str, str]:
        if self.environment is not None:
            base = dict(self.environment)
        elif hasattr(slicer, "app"):  # inside the application: the environment without Slicer's own paths
            base = dict(slicer.util.startupEnvironment())
        else:
            base = dict(os.environ)
        return process_environment(base, self.runtime)

    def _make_temp_dir(self) -> Path:
        if self.temp_root is not None:
            return Path(tempfile.mkdtemp(prefix="Despeckle-", dir=self.temp_root))
        if hasattr(slicer, "app"):
            folder = Path(slicer.util.tempDirectory("Despeckle-"))  # named by date and time, to the ms
            if any(folder.iterdir()):  # two runs in the same millisecond
                folder = Path(tempfile.mkdtemp(prefix="Despeckle-", dir=folder))
            return folder
        return Path(tempfile.mkdtemp(prefix="Despeckle-"))

    def missing_requirements(self, method: str, backend: str = DEFAULT_BACKEND, server_url: str = "") -> list:
        """Packages the settings need that Slicer's Python lacks (see ``dependencies.missing_for``)."""
        return missing_for(
            method,
            backend,
            server=bool(validate_server_url(server_url)),
            requirements_file=MODULE_DIR / "Resources" / "requirements.txt",
            licences=PACKAGE_LICENCES,
        )

    def start(
        self,
        input_node,
        output_volume=None,
        *,
        method: str = DEFAULT_METHOD,
        axis: int = DEFAULT_AXIS,
        strength: float = DEFAULT_STRENGTH,
        backend: str = DEFAULT_BACKEND,
        device: str = DEFAULT_DEVICE,
        slice_index: int | None = None,
        server_url: str = "",
        passes: int = DEFAULT_PASSES,
        all_frames: bool = True,
        uncertainty: bool = False,
        eight_bit: bool = False,
        block_values: int = BLOCK_VALUES,
    ) -> DespeckleJob | BlockJob:
        """Write the input (as grey) to a temporary NRRD and start ``usdespeckle run`` on it.

        A sequence is despeckled in blocks of frames of at most ``block_values`` voxels, one
        process after the other, all with the intensity mapping of the whole sequence (on a
        server, in one block: the server chooses its own mapping).

        Args:
            input_node: a grey or colour volume (colour is turned into grey before it is written),
                a sequence browser's proxy volume, or a sequence of volumes; never modified.
            output_volume: for a volume input, a scalar volume node to overwrite, or None for a new
                node named ``"<input> despeckled"`` (made unique; made only when the run succeeds).
                A sequence always gives a new sequence named so.
            method, axis, strength, backend, device: as ``usdespeckle run`` (axis: numpy axis of
                the (k, j, i) array, 0 = K, the frames of a cine loop).
            slice_index: when set, only this slice of the volume (for a proxy, of the frame shown)
                along ``axis`` is despeckled (preview); the result goes to a
                ``"<input> despeckle preview"`` node at the slice's position.
            server_url: a MONAI Label server (``http://host:port``) to despeckle on, through
                ``usdespeckle run --server``; empty: on this computer.
            passes: mirrorings of each slice the denoiser averages (:data:`PASSES`; default 1).
            all_frames: a proxy volume stands for every frame of its sequence (True) or for the
                frame shown (False).
            uncertainty: denoiser only: also store the spread of its 8 mirrored passes as a second
                output, ``"<input> uncertainty"`` (a volume, or a sequence in the same browser).
            eight_bit: store the result as unsigned 8-bit (rounded, clipped to 0..255) instead of
                float32; only for 8-bit input.
            block_values: most voxels of one block of sequence frames (default :data:`BLOCK_VALUES`).

        Returns:
            The running job (``job.total`` is the number of slices).

        Raises:
            ValueError: no input, an input that is not a volume or sequence of volumes, output
                equal to input, bad settings or server URL, uncertainty without the denoiser,
                8-bit output of an input that is not 8-bit.
            FileNotFoundError: the Python interpreter does not exist.
        """
        validate_parameters(method, axis, strength, backend, device, passes)
        server_url = validate_server_url(server_url)
        if uncertainty and method != "denoiser":
            raise ValueError(
                f"the uncertainty map is the spread of the denoiser's passes; {method!r} has none"
            )
        preview = slice_index is not None
        source = read_source(input_node, self.scene, axis, all_frames=all_frames and not preview)
        if eight_bit and not source.is_8bit:
            raise ValueError(
                f"{source.name!r} is not 8-bit: an 8-bit result would lose its range; untick 8-bit output"
            )
        if output_volume is not None and not source.is_sequence:
            if output_volume.GetID() == input_node.GetID():
                raise ValueError(
                    "the output volume must differ from the input; choose another or 'Create new volume'"
                )
            if output_volume.IsA("vtkMRMLVectorVolumeNode") or not output_volume.IsA(
                "vtkMRMLScalarVolumeNode"
            ):
                raise ValueError(
                    f"output {output_volume.GetName()!r} is a {output_volume.GetClassName()}; the result is a "
                    "grey volume: choose a scalar volume or 'Create new volume'"
                )
        if not Path(self.python_executable).exists() and shutil.which(self.python_executable) is None:
            raise FileNotFoundError(
                f"Python interpreter {self.python_executable!r} not found; set the Logic's python_executable "
                "to an interpreter where usdespeckle runs"
            )
        settings = {
            "method": method,
            "axis": axis,
            "strength": strength,
            "backend": backend,
            "device": device,
            "server_url": server_url,
            "passes": passes if method == "denoiser" else DEFAULT_PASSES,
        }
        context = RunContext(
            source=source,
            output_node_id=output_volume.GetID() if (output_volume is not None and not preview) else None,
            output_name=f"{source.name}{PREVIEW_SUFFIX if preview else OUTPUT_SUFFIX}",
            ijk_to_ras=source.ijk_to_ras,
            dtype="uint8" if eight_bit else "float32",
            uncertainty=uncertainty and not preview,
        )
        if source.is_sequence:
            return self._start_sequence(context, settings, block_values)
        array = source.array
        if preview:
            if not 0 <= slice_index < array.shape[axis]:
                raise ValueError(
                    f"slice {slice_index} is outside 0..{array.shape[axis] - 1} along axis {axis}"
                )
            array = np.take(array, [slice_index], axis=axis)
            offset_ijk = np.zeros(3)
            offset_ijk[2 - axis] = slice_index  # numpy axis 0 is k, the third IJK component
            context.ijk_to_ras = context.ijk_to_ras.copy()
            context.ijk_to_ras[:3, 3] += context.ijk_to_ras[:3, :3] @ offset_ijk
        job = self._start_process(array, context.ijk_to_ras, settings, uncertainty=context.uncertainty)
        job.context, job.preview = context, preview
        return job

    def _start_process(
        self,
        array: np.ndarray,
        ijk_to_ras: np.ndarray,
        settings: dict,
        *,
        uncertainty: bool = False,
        intensity_range: tuple[float, float] | None = None,
    ) -> DespeckleJob:
        """Write ``array`` to a new temporary folder and start ``usdespeckle run`` on it."""
        temp_dir = self._make_temp_dir()
        try:
            input_path = temp_dir / DespeckleJob.INPUT_NAME
            write_nrrd(array, ijk_to_ras, input_path)
            command = despeckle_command(
                self.python_executable,
                input_path,
                temp_dir / DespeckleJob.OUTPUT_NAME,
                uncertainty_path=temp_dir / DespeckleJob.UNCERTAINTY_NAME if uncertainty else None,
                intensity_range=intensity_range,
                **settings,
            )
            process = start_process(command, temp_dir, self._environment())
        except BaseException:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        return DespeckleJob(
            process=process, command=command, temp_dir=temp_dir, total=int(array.shape[settings["axis"]])
        )

    def _start_sequence(self, context: RunContext, settings: dict, block_values: int) -> BlockJob:
        """Start the first block of a sequence; the job starts the others as each one ends."""
        source, scene = context.source, self.scene
        on_server = bool(settings["server_url"])
        blocks = [(0, len(source.frame_sizes))] if on_server else frame_blocks(source, block_values)
        intensity_range = None if on_server else sequence_intensity_range(scene, source)
        context.builders = [SequenceBuilder(source, context.dtype)]
        if context.uncertainty:
            context.builders.append(SequenceBuilder(source, np.float32))

        def start_block(start: int, stop: int) -> DespeckleJob:
            array = read_frames(scene, source, start, stop)
            return self._start_process(
                array,
                source.frame_geometry[start],
                settings,
                uncertainty=context.uncertainty,
                intensity_range=intensity_range,
            )

        def finish_block(job: DespeckleJob, start: int, stop: int) -> None:
            self._check_exit(job)
            context.builders[0].add(read_nrrd(job.output_path)[0], start, stop)
            if context.uncertainty:
                context.builders[1].add(read_nrrd(job.uncertainty_path)[0], start, stop)

        return BlockJob(
            blocks=blocks,
            block_slices=[sum(source.frame_sizes[a:b]) for a, b in blocks],
            start_block=start_block,
            finish_block=finish_block,
            context=context,
        ).begin()

    def _check_exit(self, job: DespeckleJob) -> None:
        """Wait for a job's process; raise when it was cancelled or failed."""
        if job.cancelled:
            raise DespeckleCancelled("despeckling was cancelled; the scene was not changed")
        returncode = job.process.wait()
        job.poll()
        if returncode != 0:
            detail = job.error_text() or "(no message)"
            hint = (
                "Check that the MONAI Label server is running at that URL and serves the "
                "despeckling app (monailabel_app), or clear the server URL to run on this computer."
                if "--server" in job.command
                else "Check the method and device settings, and that the method's packages are installed "
                "(the module offers to install them before the first run)."
            )
            raise DespeckleProcessError(
                f"despeckling failed (exit status {returncode}): {detail}\n"
                f"Command: {subprocess.list2cmdline(job.command)}\n{hint}"
            )

    def finish(self, job: DespeckleJob | BlockJob):
        """Read a finished job's result into the scene.

        Returns:
            The output: a ``vtkMRMLScalarVolumeNode`` for a volume (or a preview), a new
            ``vtkMRMLSequenceNode`` for a sequence. With the uncertainty map asked for, its node
            (a volume or a sequence) is ``job.context.uncertainty_node``.

        Raises:
            DespeckleProcessError: the process failed; the message quotes its error.
            DespeckleCancelled: the job was cancelled.
        """
        context: RunContext = job.context
        if isinstance(job, BlockJob):
            try:
                if job.cancelled or not job.finished:
                    raise DespeckleCancelled("despeckling was cancelled; the scene was not changed")
            finally:
                job.cleanup()
            builders = context.builders
            output = builders[0].add_to_scene(self.scene, context.output_name, self.sequences_logic())
            if context.uncertainty:
                name = f"{context.source.name}{UNCERTAINTY_SUFFIX}"
                context.uncertainty_node = builders[1].add_to_scene(self.scene, name, self.sequences_logic())
            return output
        try:
            self._check_exit(job)
            array, _ = read_nrrd(job.output_path)
            spread = read_nrrd(job.uncertainty_path)[0] if context.uncertainty else None
        finally:
            job.cleanup()
        output = self._store(job, cast_result(array, context.dtype))
        if spread is not None:
            name = f"{context.source.name}{UNCERTAINTY_SUFFIX}"  # made unique by store_volume
            context.uncertainty_node = store_volume(
                self.scene, None, name, spread, context.ijk_to_ras, context.source
            )
        return output

    def _store(self, job: DespeckleJob, array: np.ndarray):
        context: RunContext = job.context
        scene = self.scene
        output = scene.GetNodeByID(context.output_node_id) if context.output_node_id else None
        if output is None and job.preview:  # one preview node per input, reused
            for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
                node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
                if (
                    node.GetName() == context.output_name
                    and node.GetAttribute(SOURCE_ATTRIBUTE) == context.source.node_id
                ):
                    output = node
                    break
            if output is None:
                output = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", context.output_name)
        return store_volume(scene, output, context.output_name, array, context.ijk_to_ras, context.source)

    def process(
        self,
        input_node,
        output_volume=None,
        *,
        progress: Callable[[int, int], None] | None = None,
        cancel: Callable[[], bool] | None = None,
        poll_interval: float = 0.1,
        **settings,
    ):
        """Despeckle and wait: :meth:`start`, poll, :meth:`finish`.

        Args:
            input_node, output_volume: as :meth:`start`.
            progress: called as ``progress(done, total)`` in slices whenever it changes (a GUI can
                process its events here).
            cancel: asked before each poll (so also before the first), every ``poll_interval``
                seconds; returning True kills the process.
            poll_interval: seconds between polls, > 0.
            **settings: ``method``, ``axis``, ``strength``, ``backend``, ``device``, ``slice_index``,
                ``server_url``, ``passes``, ``all_frames``, as :meth:`start`.

        Returns:
            The output node (see :meth:`finish`).

        Raises:
            DespeckleCancelled: ``cancel`` returned True; nothing was added to the scene.
            DespeckleProcessError, ValueError, FileNotFoundError: as :meth:`start` and :meth:`finish`.
        """
        job = self.start(input_node, output_volume, **settings)
        last = (-1, -1)
        try:
            while True:
                if cancel is not None and cancel():  # the handler below cancels the job
                    raise DespeckleCancelled("despeckling was cancelled; the scene was not changed")
                if job.poll():
                    break
                if progress is not None and (job.done, job.total) != last:
                    last = (job.done, job.total)
                    progress(job.done, job.total)
                time.sleep(poll_interval)
        except BaseException:
            job.cancel()
            raise
        if progress is not None and job.total and (job.done, job.total) != last:
            progress(job.done, job.total)
        return self.finish(job)

"""GUI-free core of the SlicerDespeckle module: run ``usdespeckle run`` on a volume node.

Imports only the standard library, numpy, vtk and MRML through ``slicer`` / ``slicer.util``, so it
runs (and is tested) with the ``slicer-core`` package, without the Slicer application, Qt or CTK.

The heavy work runs in a separate process fed with temporary NRRD files, as SlicerMONAIAuto3DSeg
does: the application stays responsive, a crash in PyTorch cannot take Slicer down, and Cancel can
kill the whole process tree. The scene is only touched when a result has been read successfully, so
a cancelled or failed run leaves it as it was.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import slicer.util

# The command's --method choices offered in the panel: the shipped pix2pix denoiser, then classical filters.
METHODS: tuple[str, ...] = (
    "denoiser",
    "median",
    "lee",
    "frost",
    "kuan",
    "srad",
    "obnlm",
    "bm3d",
    "mulog",
    "nlm",
    "tv",
)
DEVICES: tuple[str, ...] = ("cpu", "cuda")
BACKENDS: tuple[str, ...] = ("torch", "onnx")
#: Mirrorings of each slice the denoiser averages (``usdespeckle run --passes``); 0 = all the
#: exported model has (8 shipped, best quality); 1 is about 8x faster. Fewer than all: torch only.
PASSES: tuple[int, ...] = (0, 1, 2, 4, 8)
# numpy axis of arrayFromVolume's (k, j, i) array -> anatomy-free label shown in the panel.
AXIS_LABELS: dict[int, str] = {
    0: "K: slices of constant k (frames)",
    1: "J: slices of constant j",
    2: "I: slices of constant i",
}
OUTPUT_SUFFIX = " despeckled"
PREVIEW_SUFFIX = " despeckle preview"

_PROGRESS = re.compile(r"^\s*progress:\s*(\d+)\s*/\s*(\d+)\s*$")

# Requirements needed only to despeckle on this computer. With a MONAI Label server the local
# process runs only ``usdespeckle run --server`` (standard-library client, SimpleITK for the files):
# the network and its runtimes are on the server.
LOCAL_ONLY_REQUIREMENTS: frozenset[str] = frozenset({"torch", "monai", "onnxruntime"})


class DespeckleCancelled(Exception):
    """The despeckling process was cancelled; the scene was left unchanged."""


class DespeckleProcessError(RuntimeError):
    """The ``usdespeckle run`` process failed; the message holds its own error line."""


def default_python_executable() -> str:
    """Return the interpreter that runs ``python -m usdespeckle``.

    Inside Slicer ``sys.executable`` is the application, not a Python interpreter, so Slicer's
    ``PythonSlicer`` launcher is used where it is on the PATH; elsewhere ``sys.executable``.
    """
    return shutil.which("PythonSlicer") or sys.executable


def despeckle_command(
    python_executable: str,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    method: str,
    axis: int,
    strength: float,
    backend: str,
    device: str,
    server_url: str = "",
    passes: int = 0,
) -> list[str]:
    """Return the ``usdespeckle run`` command line (progress as ``progress: i/n`` lines on stdout).

    Args:
        python_executable: interpreter with ``usdespeckle`` importable.
        input_path: NRRD file to despeckle.
        output_path: NRRD file to write (overwritten).
        method: ``--method`` name, e.g. ``"denoiser"`` or ``"median"``.
        axis: numpy axis of the (k, j, i) array, 0-2.
        strength: blend in [0, 1].
        backend: ``"torch"`` or ``"onnx"``.
        device: ``"cpu"`` or ``"cuda"``.
        server_url: a MONAI Label server serving ``monailabel_app`` (already checked with
            :func:`validate_server_url`); when set, ``--server URL`` sends the work there and
            ``backend`` and ``device`` name the server's. Empty: run on this computer.
        passes: ``--passes``, mirrorings of each slice the denoiser averages; 0 leaves the option out
            (all the exported model has).

    Returns:
        The argument list for ``subprocess.Popen``.
    """
    server = ["--server", str(server_url)] if server_url else []
    passes_option = ["--passes", str(int(passes))] if passes else []
    return [
        str(python_executable),
        "-m",
        "usdespeckle",
        "run",
        str(input_path),
        str(output_path),
        "--method",
        str(method),
        "--axis",
        str(int(axis)),
        "--strength",
        repr(float(strength)),
        "--backend",
        str(backend),
        "--device",
        str(device),
        *passes_option,
        *server,
        "--progress",
        "lines",
        "--force",
    ]


def parse_progress(line: str) -> tuple[int, int] | None:
    """Parse one ``progress: i/n`` line; returns ``(i, n)`` or None for any other line."""
    match = _PROGRESS.match(line)
    return (int(match.group(1)), int(match.group(2))) if match else None


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
    method: str, axis: int, strength: float, backend: str, device: str, passes: int = 0
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
        raise ValueError(f"passes must be 0 (all), 1, 2, 4 or 8, got {passes!r}")
    if passes and backend == "onnx" and method == "denoiser":
        raise ValueError(
            "fewer passes need the torch backend (the ONNX model's passes are fixed); choose torch"
        )


def ijk_to_ras_array(volume_node) -> np.ndarray:
    """Return the node's 4x4 IJK-to-RAS matrix as a numpy array."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def slice_index_at_ras(volume_node, ras: Sequence[float], axis: int) -> int:
    """Index, along numpy ``axis`` of the (k, j, i) array, of the slice through a RAS point.

    Args:
        volume_node: a volume node with image data.
        ras: point in the volume's RAS coordinates (mm), e.g. the centre of a slice view.
        axis: 0 (K), 1 (J) or 2 (I).

    Returns:
        The nearest slice index, clipped into the volume.
    """
    if axis not in AXIS_LABELS:
        raise ValueError(f"axis must be 0 (K), 1 (J) or 2 (I), got {axis!r}")
    ijk = np.linalg.inv(ijk_to_ras_array(volume_node)) @ np.array([*ras[:3], 1.0])
    dims_ijk = volume_node.GetImageData().GetDimensions()
    component = 2 - axis  # numpy axis 0 is k, the third IJK component
    return int(np.clip(np.rint(ijk[component]), 0, dims_ijk[component] - 1))


def write_nrrd(array: np.ndarray, ijk_to_ras: np.ndarray, path: str | os.PathLike) -> None:
    """Write a (k, j, i) array with its IJK-to-RAS matrix as NRRD, through MRML's storage node.

    Raises:
        OSError: when the storage node cannot write ``path``.
    """
    node = slicer.vtkMRMLScalarVolumeNode()  # not added to any scene
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    slicer.util.updateVolumeFromArray(node, array)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(0)  # a temporary file: speed over size
    if not storage.WriteData(node):
        raise OSError(
            f"could not write the temporary volume {path}; check free disk space in {Path(path).parent}"
        )


def read_nrrd(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a volume file into ``(array in (k, j, i) order, 4x4 IJK-to-RAS)``.

    Raises:
        FileNotFoundError: the file is missing.
        OSError: MRML cannot read it.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"the despeckled volume {path} was not written")
    node = slicer.vtkMRMLScalarVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise OSError(f"could not read the despeckled volume {path}")
    return np.array(slicer.util.arrayFromVolume(node)), ijk_to_ras_array(node)


def kill_process_tree(process: subprocess.Popen) -> None:
    """Kill a process started by :class:`DespeckleJob` and every process it started.

    The job starts its process in a new session (POSIX) or process group (Windows), so the whole
    group can be killed: worker processes of PyTorch or ONNX Runtime go with it.
    """
    if process.poll() is not None:
        return
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@dataclass
class DespeckleJob:
    """A running ``usdespeckle run`` process and what is needed to finish it.

    Made by :meth:`DespeckleLogic.start`; call :meth:`poll` until it returns True, then
    :meth:`DespeckleLogic.finish`, or :meth:`cancel`.
    """

    process: subprocess.Popen
    command: list[str]
    temp_dir: Path
    input_node_id: str
    output_node_id: str | None
    output_name: str
    ijk_to_ras: np.ndarray
    preview: bool = False
    done: int = 0
    total: int = 0
    started: float = field(default_factory=time.monotonic)
    _stdout_offset: int = 0
    cancelled: bool = False

    @property
    def input_path(self) -> Path:
        return self.temp_dir / "input.nrrd"

    @property
    def output_path(self) -> Path:
        return self.temp_dir / "output.nrrd"

    @property
    def stdout_path(self) -> Path:
        return self.temp_dir / "stdout.txt"

    @property
    def stderr_path(self) -> Path:
        return self.temp_dir / "stderr.txt"

    @property
    def fraction(self) -> float:
        """Progress in [0, 1] from the last ``progress: i/n`` line (0 before the first)."""
        return self.done / self.total if self.total else 0.0

    def poll(self) -> bool:
        """Read new progress lines; returns True once the process has exited."""
        returncode = self.process.poll()  # before reading, so lines written just before exit are seen
        try:
            with open(self.stdout_path, "rb") as stream:
                stream.seek(self._stdout_offset)
                chunk = stream.read()
        except FileNotFoundError:
            chunk = b""
        complete = chunk[: chunk.rfind(b"\n") + 1]  # leave a half-written line for the next poll
        self._stdout_offset += len(complete)
        for line in complete.decode("utf-8", "replace").splitlines():
            parsed = parse_progress(line)
            if parsed:
                self.done, self.total = parsed
        return returncode is not None

    def cancel(self) -> None:
        """Kill the process tree and delete the temporary files; the scene is not touched."""
        self.cancelled = True
        kill_process_tree(self.process)
        self.cleanup()

    def error_text(self) -> str:
        """The process's error message from stderr: its ``error:`` lines, else its last lines.

        ``usdespeckle`` reports problems as one ``usdespeckle <command>: error: ...`` line (argparse
        does the same after a usage text), so those lines are the message worth showing.
        """
        try:
            lines = [
                line.strip()
                for line in self.stderr_path.read_text("utf-8", "replace").splitlines()
                if line.strip()
            ]
        except FileNotFoundError:
            return ""
        errors = [line for line in lines if "error:" in line.lower()]
        return " ".join(errors[-3:] if errors else lines[-5:])

    def cleanup(self) -> None:
        """Delete the temporary folder."""
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class DespeckleLogic:
    """Despeckle scalar volume nodes with ``usdespeckle run`` in a separate process.

    Args:
        python_executable: interpreter with ``usdespeckle`` installed; default
            :func:`default_python_executable`.
        scene: the MRML scene to add output nodes to; default ``slicer.mrmlScene``.
        environment: environment of the process; default this process's environment (inside
            Slicer, the environment Slicer was started with).
    """

    def __init__(
        self, python_executable: str | None = None, scene=None, environment: Mapping[str, str] | None = None
    ):
        self.python_executable = python_executable or default_python_executable()
        self._scene = scene
        self.environment = dict(environment) if environment is not None else None

    @property
    def scene(self):
        """The scene output nodes go to."""
        return self._scene if self._scene is not None else slicer.mrmlScene

    def _environment(self) -> dict[str, str]:
        if self.environment is not None:
            return dict(self.environment)
        if hasattr(slicer, "app"):  # inside the application: the environment without Slicer's own paths
            return dict(slicer.util.startupEnvironment())
        return dict(os.environ)

    def start(
        self,
        input_volume,
        output_volume=None,
        *,
        method: str = "denoiser",
        axis: int = 0,
        strength: float = 1.0,
        backend: str = "torch",
        device: str = "cpu",
        slice_index: int | None = None,
        server_url: str = "",
        passes: int = 0,
    ) -> DespeckleJob:
        """Write the input to a temporary NRRD and start ``usdespeckle run`` on it.

        Args:
            input_volume: ``vtkMRMLScalarVolumeNode`` with image data; never modified.
            output_volume: scalar volume node to overwrite, or None for a new node named
                ``"<input> despeckled"`` (made only when the run succeeds).
            method, axis, strength, backend, device: as ``usdespeckle run`` (axis: numpy axis of
                the (k, j, i) array, 0 = K).
            slice_index: when set, only this slice along ``axis`` is despeckled (preview); the
                result goes to a ``"<input> despeckle preview"`` node at the slice's position.
            server_url: a MONAI Label server (``http://host:port``) to despeckle on, through
                ``usdespeckle run --server``; empty: on this computer.
            passes: mirrorings of each slice the denoiser averages (:data:`PASSES`; 0 = all).

        Returns:
            The running job.

        Raises:
            ValueError: no input, a non-scalar volume, output equal to input, bad settings or
                server URL.
            FileNotFoundError: the Python interpreter does not exist.
        """
        validate_parameters(method, axis, strength, backend, device, passes)
        server_url = validate_server_url(server_url)
        if input_volume is None or input_volume.GetImageData() is None:
            raise ValueError("select an input volume that holds image data")
        if not input_volume.IsA("vtkMRMLScalarVolumeNode") or input_volume.IsA("vtkMRMLLabelMapVolumeNode"):
            raise ValueError(
                f"input {input_volume.GetName()!r} is a {input_volume.GetClassName()}; select a scalar "
                "(grey-level) volume. Convert colour images to scalar with the Vector to Scalar Volume module."
            )
        if output_volume is not None and output_volume.GetID() == input_volume.GetID():
            raise ValueError(
                "the output volume must differ from the input; choose another or 'Create new volume'"
            )
        array = np.array(slicer.util.arrayFromVolume(input_volume))  # a copy: the input is never changed
        if array.ndim != 3:
            raise ValueError(f"expected a 3D scalar volume, got an array of shape {array.shape}")
        ijk_to_ras = ijk_to_ras_array(input_volume)
        if slice_index is not None:
            if not 0 <= slice_index < array.shape[axis]:
                raise ValueError(
                    f"slice {slice_index} is outside 0..{array.shape[axis] - 1} along axis {axis}"
                )
            array = np.take(array, [slice_index], axis=axis)
            offset_ijk = np.zeros(3)
            offset_ijk[2 - axis] = slice_index  # numpy axis 0 is k, the third IJK component
            ijk_to_ras = ijk_to_ras.copy()
            ijk_to_ras[:3, 3] += ijk_to_ras[:3, :3] @ offset_ijk
        if not Path(self.python_executable).exists() and shutil.which(self.python_executable) is None:
            raise FileNotFoundError(
                f"Python interpreter {self.python_executable!r} not found; set the Logic's python_executable "
                "to an interpreter where usdespeckle is installed"
            )

        temp_dir = Path(tempfile.mkdtemp(prefix="SlicerDespeckle-"))
        try:
            input_path, output_path = temp_dir / "input.nrrd", temp_dir / "output.nrrd"
            write_nrrd(array, ijk_to_ras, input_path)
            command = despeckle_command(
                self.python_executable,
                input_path,
                output_path,
                method=method,
                axis=axis,
                strength=strength,
                backend=backend,
                device=device,
                server_url=server_url,
                passes=passes if method == "denoiser" else 0,
            )
            group = (
                {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
                if os.name == "nt"
                else {"start_new_session": True}
            )
            # stdout and stderr go to files, read by poll(): no pipe can fill up and block the process,
            # and no reader thread is needed inside Slicer.
            with open(temp_dir / "stdout.txt", "wb") as out, open(temp_dir / "stderr.txt", "wb") as err:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=self._environment(),
                    cwd=temp_dir,  # `python -m` puts the working folder first on sys.path: keep it empty
                    **group,
                )
        except BaseException:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        suffix = PREVIEW_SUFFIX if slice_index is not None else OUTPUT_SUFFIX
        return DespeckleJob(
            process=process,
            command=command,
            temp_dir=temp_dir,
            input_node_id=input_volume.GetID(),
            output_node_id=output_volume.GetID() if output_volume is not None else None,
            output_name=f"{input_volume.GetName()}{suffix}",
            ijk_to_ras=ijk_to_ras,
            preview=slice_index is not None,
        )

    def finish(self, job: DespeckleJob):
        """Read a finished job's result into the output node (made now if none was chosen).

        Returns:
            The output ``vtkMRMLScalarVolumeNode``.

        Raises:
            DespeckleProcessError: the process failed; the message quotes its error.
            DespeckleCancelled: the job was cancelled.
        """
        try:
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
                    else "Check the method and device settings; if usdespeckle is missing, install the "
                    "module's dependencies (Resources/requirements.txt)."
                )
                raise DespeckleProcessError(
                    f"despeckling failed (exit status {returncode}): {detail}\n"
                    f"Command: {subprocess.list2cmdline(job.command)}\n{hint}"
                )
            array, _ = read_nrrd(job.output_path)
        finally:
            job.cleanup()
        return self._store(job, array)

    def _store(self, job: DespeckleJob, array: np.ndarray):
        """Put the result into the output node with the input's geometry and a window/level."""
        scene = self.scene
        input_volume = scene.GetNodeByID(job.input_node_id)
        output = scene.GetNodeByID(job.output_node_id) if job.output_node_id else None
        if output is None and job.preview:
            output = slicer.util.getFirstNodeByClassByName("vtkMRMLScalarVolumeNode", job.output_name, scene)
        if output is None:
            output = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", job.output_name)
        output.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(job.ijk_to_ras))
        if input_volume is not None:
            output.SetAndObserveTransformNodeID(input_volume.GetTransformNodeID())
        slicer.util.updateVolumeFromArray(output, array)
        if output.GetDisplayNode() is None:
            output.CreateDefaultDisplayNodes()
        display = output.GetDisplayNode()
        if display is not None:
            low, high = (float(v) for v in np.percentile(array, (0.5, 99.5)))
            display.SetAutoWindowLevel(False)
            display.SetWindowLevelMinMax(low, high if high > low else low + 1.0)
        return output

    def process(
        self,
        input_volume,
        output_volume=None,
        *,
        method: str = "denoiser",
        axis: int = 0,
        strength: float = 1.0,
        backend: str = "torch",
        device: str = "cpu",
        slice_index: int | None = None,
        server_url: str = "",
        passes: int = 0,
        progress: Callable[[int, int], None] | None = None,
        cancel: Callable[[], bool] | None = None,
        poll_interval: float = 0.1,
    ):
        """Despeckle and wait: :meth:`start`, poll, :meth:`finish`.

        Args:
            input_volume, output_volume, method, axis, strength, backend, device, slice_index,
                server_url, passes: as :meth:`start`.
            progress: called as ``progress(done, total)`` in slices whenever it changes (a GUI can
                process its events here).
            cancel: polled every ``poll_interval`` seconds; returning True kills the process.
            poll_interval: seconds between polls, > 0.

        Returns:
            The output volume node.

        Raises:
            DespeckleCancelled: ``cancel`` returned True; nothing was added to the scene.
            DespeckleProcessError, ValueError, FileNotFoundError: as :meth:`start` and :meth:`finish`.
        """
        job = self.start(
            input_volume,
            output_volume,
            method=method,
            axis=axis,
            strength=strength,
            backend=backend,
            device=device,
            slice_index=slice_index,
            server_url=server_url,
            passes=passes,
        )
        last = (-1, -1)
        try:
            while not job.poll():
                if cancel is not None and cancel():
                    job.cancel()
                    raise DespeckleCancelled("despeckling was cancelled; the scene was not changed")
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


def missing_requirements(requirements_file: str | os.PathLike, *, server: bool = False) -> list[str]:
    """Requirement lines of a requirements.txt whose distribution is not installed here.

    Only names are checked (versions are left to pip). Comments and blank lines are skipped.

    Args:
        requirements_file: path of the module's ``Resources/requirements.txt``.
        server: the work runs on a MONAI Label server: skip :data:`LOCAL_ONLY_REQUIREMENTS`
            (``usdespeckle`` itself stays required, since it runs the ``usdespeckle run`` client).

    Returns:
        The requirement lines to install, in file order.
    """
    from importlib import metadata

    missing = []
    for raw in Path(requirements_file).read_text("utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name = re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0]
        if server and name.lower().replace("_", "-") in LOCAL_ONLY_REQUIREMENTS:
            continue
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(line)
    return missing

"""The background ``usdespeckle run`` process: command line, start, progress, log, cancel.

Standard library only. As SlicerMONAIAuto3DSeg does, the heavy work runs in a separate process fed
with temporary files: the application stays responsive, a crash in a runtime cannot take Slicer
down, and Cancel kills the whole process tree. Unlike ``slicer.util.launchConsoleProcess`` (whose
pipe needs a reader thread), the process writes its output to files that :meth:`DespeckleJob.poll`
reads from the GUI timer; the console window is hidden on Windows the same way
(``STARTUPINFO`` with ``SW_HIDE``), and the process gets its own process group so that it can be
killed with its children.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

_PROGRESS = re.compile(r"^\s*progress:\s*(\d+)\s*/\s*(\d+)\s*$")

logger = logging.getLogger("Despeckle")


class DespeckleProcessError(RuntimeError):
    """The ``usdespeckle run`` process failed; the message holds its own error line."""


def default_python_executable() -> str:
    """Return the interpreter that runs ``python -m usdespeckle``.

    Inside Slicer ``sys.executable`` is the application, not a Python interpreter, so Slicer's
    ``PythonSlicer`` launcher is used where it is on the PATH (Slicer puts it there); elsewhere
    ``sys.executable``.
    """
    return shutil.which("PythonSlicer") or sys.executable


def runtime_folder(module_dir: str | os.PathLike) -> Path | None:
    """The folder holding the ``usdespeckle`` package (and ``monai_bundle/``) the module runs.

    An installed extension carries a copy under ``SlicerDespeckleLib/runtime`` (built by the
    extension's CMake); a development copy (the module folder of a checkout, added to Slicer's
    module paths) uses the checkout itself.

    Returns:
        The folder to put first on the process's ``PYTHONPATH``, or None when neither exists
        (then ``usdespeckle`` must be installed in the interpreter).
    """
    module_dir = Path(module_dir)
    for candidate in (module_dir / "SlicerDespeckleLib" / "runtime", module_dir.parent):
        if (candidate / "usdespeckle" / "__main__.py").is_file():
            return candidate
    return None


#: The module's folder (holding SlicerDespeckle.py).
MODULE_DIR = Path(__file__).resolve().parents[1]


def library_module(name: str, module_dir: str | os.PathLike = MODULE_DIR) -> ModuleType:
    """``usdespeckle.<name>`` of the runtime the module runs, for its standard-library-only modules.

    ``options`` (the methods, passes, backends, devices the panel offers) and ``errors`` are read
    from the runtime's own files (:func:`runtime_folder`), so the panel offers exactly what the
    process accepts. They are loaded by path, without importing the ``usdespeckle`` package and
    without changing Slicer's ``sys.path``: nothing but the standard library is needed here.

    Args:
        name: ``"options"`` or ``"errors"``.
        module_dir: the module's folder.

    Returns:
        The module (loaded once per name and folder).

    Raises:
        ImportError: no runtime here and no ``usdespeckle`` installed in this Python.
    """
    runtime = runtime_folder(module_dir)
    if runtime is None:  # no shipped copy: an installed library serves
        try:
            return importlib.import_module(f"usdespeckle.runtime.{name}")
        except ImportError:
            raise ImportError(
                f"the Despeckle module's runtime (SlicerDespeckleLib/runtime under {module_dir}) is missing "
                "and usdespeckle is not installed: build or install the extension"
            ) from None
    path = runtime / "usdespeckle" / "runtime" / f"{name}.py"
    key = f"SlicerDespeckleLib._runtime_{name}"
    loaded = sys.modules.get(key)
    if loaded is not None and Path(loaded.__file__) == path:
        return loaded
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}: build or install the extension again")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


#: Raised when a despeckling job is cancelled; the scene is left unchanged (the library's exception).
DespeckleCancelled = library_module("errors").DespeckleCancelled
#: ``usdespeckle run --passes`` default: mirrorings of each slice the denoiser averages.
DEFAULT_PASSES: int = library_module("options").DEFAULT_PASSES


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
    passes: int = DEFAULT_PASSES,
    uncertainty_path: str | os.PathLike | None = None,
    intensity_range: tuple[float, float] | None = None,
) -> list[str]:
    """Return the ``usdespeckle run`` command line (progress as ``progress: i/n`` lines on stdout).

    Args:
        python_executable: interpreter with ``usdespeckle`` importable.
        input_path: NRRD file to despeckle.
        output_path: NRRD file to write (overwritten).
        method: ``--method`` name, e.g. ``"denoiser"`` or ``"median"``.
        axis: numpy axis of the (k, j, i) array, 0-2.
        strength: blend in [0, 1].
        backend: ``"onnx"`` or ``"torch"``.
        device: ``"cpu"`` or ``"cuda"``.
        server_url: a MONAI Label server serving ``monailabel_app``; when set, ``--server URL``
            sends the work there and ``backend`` and ``device`` name the server's. Empty: run here.
        passes: ``--passes``, mirrorings of each slice the denoiser averages (1, the default, is the
            shipped setting).
        uncertainty_path: ``--uncertainty``: where the denoiser writes the spread of its 8
            mirrored passes; None: not written.
        intensity_range: ``--intensity-range LOW HIGH``: the intensity mapping shared by every
            block of a sequence; None: the input's own robust range.

    Returns:
        The argument list for ``subprocess.Popen``.
    """
    server = ["--server", str(server_url)] if server_url else []
    extra = ["--uncertainty", str(uncertainty_path)] if uncertainty_path else []
    if intensity_range is not None:
        extra += ["--intensity-range", *(repr(float(v)) for v in intensity_range)]
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
        "--passes",
        str(int(passes)),
        *extra,
        *server,
        "--progress",
        "lines",
        "--force",
    ]


def parse_progress(line: str) -> tuple[int, int] | None:
    """Parse one ``progress: i/n`` line; returns ``(i, n)`` or None for any other line."""
    match = _PROGRESS.match(line)
    return (int(match.group(1)), int(match.group(2))) if match else None


def process_environment(base: Mapping[str, str], runtime: str | os.PathLike | None = None) -> dict[str, str]:
    """The process's environment: ``base`` with ``runtime`` first on ``PYTHONPATH``.

    Args:
        base: the environment to start from (inside Slicer, Slicer's startup environment, so the
            ``PythonSlicer`` launcher sets up its own paths as it does from a terminal).
        runtime: folder holding the ``usdespeckle`` package (see :func:`runtime_folder`), or None.
    """
    environment = dict(base)
    if runtime is not None:
        paths = [str(runtime), *(p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p)]
        environment["PYTHONPATH"] = os.pathsep.join(paths)
    environment.setdefault("PYTHONUNBUFFERED", "1")  # lines reach the log as they are written
    return environment


def _popen_options() -> dict[str, Any]:
    """A new process group (so the tree can be killed) and, on Windows, no console window."""
    if os.name == "nt":
        info = subprocess.STARTUPINFO()  # as slicer.util.launchConsoleProcess: hide the console
        info.dwFlags |= subprocess.STARTF_USESHOWWINDOW
        info.wShowWindow = 0  # SW_HIDE
        return {"startupinfo": info, "creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def start_process(command: list[str], temp_dir: Path, environment: Mapping[str, str]) -> subprocess.Popen:
    """Start ``command`` in ``temp_dir`` with its output going to ``stdout.txt`` / ``stderr.txt`` there.

    Files, not pipes: no pipe can fill up and block the process, and no reader thread is needed.
    The working folder is the (empty) temporary folder, since ``python -m`` puts it first on
    ``sys.path``.
    """
    with open(temp_dir / "stdout.txt", "wb") as out, open(temp_dir / "stderr.txt", "wb") as err:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=dict(environment),
            cwd=temp_dir,
            **_popen_options(),
        )


def signal_process_tree(process: subprocess.Popen) -> None:
    """Ask the process and every process it started to die, without waiting for them.

    POSIX: SIGKILL to the process group. Windows: ``taskkill /F /T``, itself started without a
    console and not waited for. The process is reaped later by :meth:`DespeckleJob.poll`.
    """
    if process.poll() is not None:
        return
    if os.name == "nt":
        subprocess.Popen(
            ["taskkill", "/F", "/T", "/PID", str(process.pid)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **_popen_options(),
        )
    else:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


class _LineReader:
    """Reads the complete lines appended to a file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> list[str]:
        try:
            with open(self.path, "rb") as stream:
                stream.seek(self.offset)
                chunk = stream.read()
        except FileNotFoundError:
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]  # leave a half-written line for the next read
        self.offset += len(complete)
        return complete.decode("utf-8", "replace").splitlines()


@dataclass
class DespeckleJob:
    """A running ``usdespeckle run`` process and what is needed to finish it.

    Made by ``DespeckleLogic.start``; call :meth:`poll` until it returns True, then
    ``DespeckleLogic.finish``, or :meth:`cancel`. Lines the process writes (other than progress)
    go to the ``Despeckle`` logger, which in Slicer is the application log.

    Attributes:
        total: slices to despeckle (known before the first progress line).
        done: slices despeckled so far.
    """

    process: subprocess.Popen
    command: list[str]
    temp_dir: Path
    context: Any = None
    preview: bool = False
    done: int = 0
    total: int = 0
    started: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    _stdout: _LineReader | None = None
    _stderr: _LineReader | None = None
    _stderr_lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stdout = _LineReader(self.stdout_path)
        self._stderr = _LineReader(self.stderr_path)

    #: The files the process reads and writes in ``temp_dir``.
    INPUT_NAME: ClassVar[str] = "input.nrrd"
    OUTPUT_NAME: ClassVar[str] = "output.nrrd"
    UNCERTAINTY_NAME: ClassVar[str] = "uncertainty.nrrd"

    @property
    def output_path(self) -> Path:
        return self.temp_dir / self.OUTPUT_NAME

    @property
    def uncertainty_path(self) -> Path:
        return self.temp_dir / self.UNCERTAINTY_NAME

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
        """Read new output (progress, log lines); returns True once the process has exited."""
        returncode = self.process.poll()  # before reading, so lines written just before exit are seen
        if self.temp_dir.exists():
            for line in self._stdout.read():
                parsed = parse_progress(line)
                if parsed:
                    self.done, self.total = parsed
                elif line.strip():
                    logger.info("usdespeckle: %s", line.rstrip())
            for line in self._stderr.read():
                if line.strip():
                    self._stderr_lines.append(line.strip())
                    logger.info("usdespeckle: %s", line.rstrip())
        if returncode is not None and self.cancelled:
            self.cleanup()  # on Windows the files could not go while the process held them
        return returncode is not None

    def cancel(self) -> None:
        """Kill the process tree without waiting and delete the temporary files; the scene is not touched."""
        self.cancelled = True
        signal_process_tree(self.process)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=0.2)  # SIGKILL takes milliseconds; never blocks for long
        self.cleanup()

    def error_text(self) -> str:
        """The process's error message from stderr: its ``error:`` lines, else its last lines.

        ``usdespeckle`` reports problems as one ``usdespeckle <command>: error: ...`` line (argparse
        does the same after a usage text), so those lines are the message worth showing.
        """
        if self.temp_dir.exists():
            self.poll()
        lines = self._stderr_lines
        errors = [line for line in lines if "error:" in line.lower()]
        return " ".join(errors[-3:] if errors else lines[-5:])

    def cleanup(self) -> None:
        """Delete the temporary folder (what cannot be deleted yet is left for a later call)."""
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@dataclass
class BlockJob:
    """A sequence despeckled block by block: one ``usdespeckle run`` process at a time.

    Has the interface of :class:`DespeckleJob` that the panel and ``DespeckleLogic.process`` use
    (``poll``, ``done``, ``total``, ``cancel``, ``started``, ``preview``, ``cancelled``).
    Each block's process is started by ``start_block(start, stop)`` and, once it has exited, its
    result is taken by ``finish_block(job, start, stop)``, which raises when the process failed;
    then the next block starts.

    Attributes:
        blocks: ``(start, stop)`` frame ranges, in order.
        block_slices: slices of each block (for the progress over the whole sequence).
        current: the running block's job (None before the first and after the last).
        finished: every block's result was taken.
    """

    blocks: list[tuple[int, int]]
    block_slices: list[int]
    start_block: Any
    finish_block: Any
    context: Any = None
    preview: bool = False
    started: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    current: DespeckleJob | None = None
    index: int = 0
    finished: bool = False

    def begin(self) -> BlockJob:
        """Start the first block's process; returns self."""
        self.current = self.start_block(*self.blocks[0])
        return self

    @property
    def total(self) -> int:
        return int(sum(self.block_slices))

    @property
    def done(self) -> int:
        running = self.current.done if self.current is not None else 0
        return int(sum(self.block_slices[: self.index])) + int(running)

    @property
    def command(self) -> list[str]:
        return self.current.command if self.current is not None else []

    def poll(self) -> bool:
        """Read the running block's progress; take its result and start the next once it has exited.

        Returns:
            True once every block is done (or the job was cancelled).

        Raises:
            Whatever ``finish_block`` raises for a failed block (the job is then over).
        """
        if self.finished or self.cancelled:
            return True
        if self.current is None or not self.current.poll():
            return False
        job, (start, stop) = self.current, self.blocks[self.index]
        try:
            self.finish_block(job, start, stop)
        finally:
            job.cleanup()
        self.index += 1
        self.current = None
        if self.index == len(self.blocks):
            self.finished = True
            return True
        self.current = self.start_block(*self.blocks[self.index])
        return False

    def cancel(self) -> None:
        """Kill the running block's process tree; the blocks already done are dropped."""
        self.cancelled = True
        if self.current is not None:
            self.current.cancel()

    def cleanup(self) -> None:
        if self.current is not None:
            self.current.cleanup()

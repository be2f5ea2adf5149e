"""Live despeckling in Slicer: ``usdespeckle stream`` in the background, an OpenIGTLink connector to it.

The input is an image node fed by an OpenIGTLink connector (SlicerOpenIGTLink; PLUS names images
``<image>_<frame>``, e.g. ``Image_Reference``). *Start live* runs ``usdespeckle stream`` in a
separate process (no inference in Slicer's own Python, as SlicerIGT advises): it connects to the
same source as the input's connector, despeckles each frame and serves the result on a port of its
own under a device name of its own (``Despeckled_Reference``). A second connector, a client of that
port, brings the result in as an image node of that name; it is put under the input's parent
transform, so it sits where the input does. *Stop* ends the process and removes that connector
(the last despeckled image stays).

GUI-free: MRML through ``slicer`` and the standard library only, so it runs (and is tested) with
``slicer-core``. The connector is made by a factory (``vtkMRMLIGTLConnectorNode`` in the
application); where SlicerOpenIGTLink is missing, :meth:`LiveLogic.start` says so.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import slicer

from SlicerDespeckleLib.dependencies import Requirement, is_installed, missing_for, read_requirements
from SlicerDespeckleLib.process import (
    MODULE_DIR,
    _LineReader,
    default_python_executable,
    library_module,
    process_environment,
    runtime_folder,
    signal_process_tree,
    start_process,
)

_OPTIONS = library_module("options")
#: OpenIGTLink device names are at most this many bytes.
NAME_BYTES: int = _OPTIONS.IGTL_DEVICE_NAME_BYTES
#: The output's device name when the input's has no ``<image>_<frame>`` form to follow.
DEFAULT_OUTPUT_DEVICE: str = _OPTIONS.STREAM_OUTPUT_DEVICE
#: Attribute of the despeckled node: the ID of the live input it comes from.
LIVE_SOURCE_ATTRIBUTE = "Despeckle.LiveSource"
#: Name of the connector the live mode adds (to the relay's output).
CONNECTOR_NAME = "Despeckle live"

_STATS = re.compile(r"^stats:\s*(.*)$")


class LiveState(enum.Enum):
    """Where a live session is: its process starting, frames coming back, ended, or failed."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"


def _fit(name: str, limit: int = NAME_BYTES) -> str:
    """``name`` cut to ``limit`` bytes of UTF-8 without splitting a character."""
    return name.encode("utf-8")[:limit].decode("utf-8", "ignore")


def output_device_name(input_device: str) -> str:
    """The despeckled stream's device name for an input device, within 20 bytes.

    PLUS's ``<image>_<frame>`` names keep their frame: ``Image_Reference`` gives
    ``Despeckled_Reference``; other names get a ``Despeckled_`` prefix, cut to 20 bytes.

    Raises:
        ValueError: the input name is empty.
    """
    if not input_device:
        raise ValueError("the live input has no name; its connector names it after its device")
    frame = input_device.split("_", 1)[1] if "_" in input_device else input_device
    name = _fit(f"Despeckled_{frame}")
    return name if name != input_device else _fit(f"D_{input_device}")


def stream_command(
    python_executable: str,
    source: tuple[str, int],
    serve_port: int,
    *,
    device: str,
    output_device: str,
    method: str,
    passes: int,
    strength: float,
    backend: str,
) -> list[str]:
    """The ``usdespeckle stream`` command line (stats as ``stats: ...`` lines on stdout).

    Args:
        python_executable: interpreter with ``usdespeckle`` (and pyigtl) importable.
        source: ``(host, port)`` of the OpenIGTLink server sending the images.
        serve_port: port the despeckled images are served on (this computer only).
        device, output_device: input and output device names (at most 20 bytes each).
        method, passes, strength, backend: as ``usdespeckle stream``.
    """
    return [
        str(python_executable),
        "-m",
        "usdespeckle",
        "stream",
        "--from",
        f"{source[0]}:{int(source[1])}",
        "--device",
        device,
        "--serve",
        str(int(serve_port)),
        "--name",
        output_device,
        "--method",
        str(method),
        "--passes",
        str(int(passes)),
        "--strength",
        repr(float(strength)),
        "--backend",
        str(backend),
        "--progress",
        "lines",
    ]


def parse_stats(line: str) -> dict[str, str] | None:
    """``{"in": "29.8/s", "out": ..., "dropped": ..., "latency_ms": ..., ...}`` from a ``stats:`` line."""
    match = _STATS.match(line.strip())
    if not match:
        return None
    return dict(part.split("=", 1) for part in match.group(1).split() if "=" in part)


def connector_for(node, scene) -> Any | None:
    """The OpenIGTLink connector that feeds ``node`` (one of its incoming nodes), or None."""
    if node is None:
        return None
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLIGTLConnectorNode")):
        connector = scene.GetNthNodeByClass(index, "vtkMRMLIGTLConnectorNode")
        for n in range(connector.GetNumberOfIncomingMRMLNodes()):
            incoming = connector.GetIncomingMRMLNode(n)
            if incoming is not None and incoming.GetID() == node.GetID():
                return connector
    return None


def source_address(connector) -> tuple[str, int]:
    """``(host, port)`` the input's connector receives from.

    Raises:
        ValueError: the connector is a server (Slicer receives from a client there, which the
            relay cannot also reach): connect Slicer to the source as a client, as with PLUS.
    """
    server_type = getattr(connector, "TypeServer", 1)
    if connector.GetType() == server_type:
        raise ValueError(
            f"connector {connector.GetName()!r} is a server; live despeckling connects to the image "
            "source itself: make the connector a client of the source (PLUS: localhost:18944)"
        )
    host = connector.GetServerHostname() or "127.0.0.1"
    return ("127.0.0.1" if host == "localhost" else host), int(connector.GetServerPort())


def missing_for_live(method: str, backend: str, requirements_file: str | os.PathLike) -> list[Requirement]:
    """What the live mode needs in Slicer's Python and lacks: the method's packages and pyigtl.

    Raises:
        ValueError: the requirements file has no line for pyigtl (or for the method's packages).
    """
    lines = read_requirements(requirements_file)
    if "pyigtl" not in lines:
        raise ValueError(f"{requirements_file} has no line for 'pyigtl', which the live mode needs")
    needed = [Requirement("pyigtl", lines["pyigtl"], "pyigtl")]
    missing = missing_for(method, backend, server=False, requirements_file=requirements_file)
    return missing + [r for r in needed if not is_installed(r)]


def free_port() -> int:
    """A TCP port free on this computer now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_connector(scene, name: str, port: int):
    """An OpenIGTLink client connector to ``127.0.0.1:port``, started (SlicerOpenIGTLink)."""
    node_class = getattr(slicer, "vtkMRMLIGTLConnectorNode", None)
    if node_class is None:
        raise ValueError(
            "live despeckling needs the SlicerOpenIGTLink extension (its OpenIGTLinkIF module): "
            "install it from the Extensions Manager"
        )
    connector = scene.AddNode(node_class())
    connector.SetName(name)
    connector.SetTypeClient("127.0.0.1", int(port))
    connector.Start()
    return connector


@dataclass
class LiveSession:
    """A running ``usdespeckle stream`` and the connector to its output.

    Call :meth:`LiveLogic.poll` (from a GUI timer) until :attr:`state` is ``STOPPED`` or
    ``FAILED``; :meth:`LiveLogic.stop` ends it.

    Attributes:
        stats: the last ``stats:`` line, parsed (:func:`parse_stats`).
        log: the process's last 50 stderr lines.
        error: the line that says why it failed (state ``FAILED``).
        output_node_id: the despeckled image node once the first frame has arrived.
    """

    process: subprocess.Popen
    command: list[str]
    temp_dir: Path
    input_node_id: str
    output_device: str
    serve_port: int
    connector_id: str | None = None
    state: LiveState = LiveState.STARTING
    stats: dict[str, str] = field(default_factory=dict)
    output_node_id: str | None = None
    error: str = ""
    log: list[str] = field(default_factory=list)
    _stdout: _LineReader | None = None
    _stderr: _LineReader | None = None

    def __post_init__(self) -> None:
        self._stdout = _LineReader(self.temp_dir / "stdout.txt")
        self._stderr = _LineReader(self.temp_dir / "stderr.txt")

    @property
    def active(self) -> bool:
        return self.state in (LiveState.STARTING, LiveState.RUNNING)

    def read_output(self) -> list[str]:
        """New stderr lines; the newest ``stats:`` line of stdout goes to :attr:`stats`."""
        for line in self._stdout.read():
            parsed = parse_stats(line)
            if parsed is not None:
                self.stats = parsed
        lines = [line.strip() for line in self._stderr.read() if line.strip()]
        self.log = (self.log + lines)[-50:]
        return lines


class LiveLogic:
    """Starts, follows and stops live despeckling sessions (see the module's docstring).

    Args:
        python_executable, environment, runtime, temp_root: as ``DespeckleLogic``.
        scene: the MRML scene; default ``slicer.mrmlScene``.
        connector_factory: ``factory(scene, name, port)`` making a started client connector;
            default :func:`make_connector`.
    """

    def __init__(
        self,
        python_executable: str | None = None,
        scene=None,
        environment: Mapping[str, str] | None = None,
        runtime: str | os.PathLike | bool | None = None,
        temp_root: str | os.PathLike | None = None,
        connector_factory: Callable[[Any, str, int], Any] | None = None,
    ) -> None:
        self.python_executable = python_executable or default_python_executable()
        self._scene = scene
        self.environment = dict(environment) if environment is not None else None
        self.runtime = (
            None if runtime is False else (runtime_folder(MODULE_DIR) if runtime is None else runtime)
        )
        self.temp_root = temp_root
        self.connector_factory = connector_factory or make_connector

    @property
    def scene(self):
        return self._scene if self._scene is not None else slicer.mrmlScene

    def missing_requirements(self, method: str, backend: str = _OPTIONS.STREAM_BACKEND) -> list[Requirement]:
        """Packages the live mode needs that Slicer's Python lacks (see :func:`missing_for_live`)."""
        return missing_for_live(method, backend, MODULE_DIR / "Resources" / "requirements.txt")

    def _environment(self) -> dict[str, str]:
        if self.environment is not None:
            base = dict(self.environment)
        elif hasattr(slicer, "app"):
            base = dict(slicer.util.startupEnvironment())
        else:
            base = dict(os.environ)
        return process_environment(base, self.runtime)

    def start(
        self,
        input_node,
        *,
        method: str = _OPTIONS.DEFAULT_METHOD,
        passes: int = _OPTIONS.DEFAULT_PASSES,
        strength: float = _OPTIONS.DEFAULT_STRENGTH,
        backend: str = _OPTIONS.STREAM_BACKEND,
        source: tuple[str, int] | None = None,
        serve_port: int | None = None,
    ) -> LiveSession:
        """Start ``usdespeckle stream`` on the input's source and a connector to its output.

        Args:
            input_node: the live image node (named after its device by its connector).
            method, passes, strength, backend: as ``usdespeckle stream``.
            source: ``(host, port)`` of the image source; default: read from the connector that
                feeds ``input_node``.
            serve_port: port for the despeckled stream; default a free one.

        Raises:
            ValueError: no input, no connector feeding it (and no ``source``), a server connector,
                a device name over 20 bytes, or SlicerOpenIGTLink missing.
        """
        if input_node is None:
            raise ValueError("choose the live image (the node an OpenIGTLink connector updates)")
        device = input_node.GetName()
        if len(device.encode("utf-8")) > NAME_BYTES:
            raise ValueError(f"{device!r} is longer than an OpenIGTLink device name ({NAME_BYTES} bytes)")
        if source is None:
            connector = connector_for(input_node, self.scene)
            if connector is None:
                raise ValueError(
                    f"{device!r} is not fed by an OpenIGTLink connector; connect to the source "
                    "(OpenIGTLinkIF module) and choose the image it brings in"
                )
            source = source_address(connector)
        output_device = output_device_name(device)
        port = serve_port or free_port()
        command = stream_command(
            self.python_executable,
            source,
            port,
            device=device,
            output_device=output_device,
            method=method,
            passes=passes,
            strength=strength,
            backend=backend,
        )
        temp_dir = Path(tempfile.mkdtemp(prefix="DespeckleLive-", dir=self.temp_root))
        try:
            process = start_process(command, temp_dir, self._environment())
        except BaseException:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        session = LiveSession(process, command, temp_dir, input_node.GetID(), output_device, port)
        try:
            connector = self.connector_factory(self.scene, CONNECTOR_NAME, port)
        except BaseException:
            self.stop(session)
            raise
        session.connector_id = connector.GetID() if connector is not None else None
        return session

    def poll(self, session: LiveSession) -> list[str]:
        """Follow a session: read its output, notice its end, place its output node.

        Returns:
            The process's new stderr lines (its log: connections, refusals, errors).
        """
        lines = session.read_output()
        if session.active and session.process.poll() is not None:
            lines += session.read_output()  # what it wrote just before it ended
            errors = [line for line in session.log if "error:" in line]
            if session.process.returncode not in (0, -signal.SIGTERM):
                session.state = LiveState.FAILED
                session.error = (errors or session.log or [f"exit status {session.process.returncode}"])[-1]
            else:
                session.state = LiveState.STOPPED
            self._remove_connector(session)
        if session.state == LiveState.STARTING and self._place_output(session):
            session.state = LiveState.RUNNING
        return lines

    def _place_output(self, session: LiveSession) -> bool:
        """Put the output node (made by the connector at the first frame) beside the input."""
        scene = self.scene
        output = scene.GetFirstNodeByName(session.output_device)
        source = scene.GetNodeByID(session.input_node_id)
        if output is None or output.GetID() == session.input_node_id:
            return False
        output.SetAttribute(LIVE_SOURCE_ATTRIBUTE, session.input_node_id)
        if source is not None and hasattr(output, "SetAndObserveTransformNodeID"):
            output.SetAndObserveTransformNodeID(source.GetTransformNodeID())
        session.output_node_id = output.GetID()
        return True

    def _remove_connector(self, session: LiveSession) -> None:
        node = self.scene.GetNodeByID(session.connector_id) if session.connector_id else None
        if node is not None:
            with contextlib.suppress(AttributeError):
                node.Stop()
            self.scene.RemoveNode(node)
        session.connector_id = None

    def stop(self, session: LiveSession, timeout: float = 5.0) -> None:
        """End the process (SIGTERM: it closes its ports; then a kill) and remove the connector."""
        if session.process.poll() is None:
            session.process.terminate()
            try:
                session.process.wait(timeout)
            except subprocess.TimeoutExpired:
                signal_process_tree(session.process)
                session.process.wait(timeout)
        session.read_output()
        self._remove_connector(session)
        if session.state != LiveState.FAILED:
            session.state = LiveState.STOPPED
        shutil.rmtree(session.temp_dir, ignore_errors=True)

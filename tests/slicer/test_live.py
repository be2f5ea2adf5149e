"""The live mode's Logic (``SlicerDespeckleLib/live.py``) with real MRML and a real ``usdespeckle stream``.

slicer-core has no SlicerOpenIGTLink, so the connector the application would add is a plain MRML
node here, and the despeckled image node it would make is added by the test under the name the
relay serves; the relay itself runs for real (the project's interpreter, which needs pyigtl),
connected to a ``usdespeckle stream --replay`` source on loopback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

import numpy as np
import pytest
from SlicerDespeckleLib.live import (
    CONNECTOR_NAME,
    LIVE_SOURCE_ATTRIBUTE,
    LiveLogic,
    LiveState,
    connector_for,
    output_device_name,
    parse_stats,
    source_address,
    stream_command,
)


def test_output_device_names_follow_plus_and_fit_20_bytes():
    assert output_device_name("Image_Reference") == "Despeckled_Reference"
    assert output_device_name("Image_Image") == "Despeckled_Image"
    assert output_device_name("US") == "Despeckled_US"
    long = output_device_name("Image_ProbeReferenceFrame")
    assert long == "Despeckled_ProbeRefe"
    assert len(output_device_name("Bild_Überschallkopfé").encode("utf-8")) <= 20
    assert output_device_name("Image_Überschallkopfé").encode("utf-8").decode("utf-8")  # no split character
    assert output_device_name("X_Despeckled_Reference") != "X_Despeckled_Reference"
    with pytest.raises(ValueError, match="no name"):
        output_device_name("")


def test_stream_command_and_stats_lines():
    command = stream_command(
        "/py",
        ("10.0.0.5", 18944),
        18950,
        device="Image_Reference",
        output_device="Despeckled_Reference",
        method="denoiser",
        passes=1,
        strength=0.75,
        backend="onnx",
    )
    assert command[:4] == ["/py", "-m", "usdespeckle", "stream"]
    pairs = dict(zip(command[4::2], command[5::2], strict=True))
    assert pairs == {
        "--from": "10.0.0.5:18944",
        "--device": "Image_Reference",
        "--serve": "18950",
        "--name": "Despeckled_Reference",
        "--method": "denoiser",
        "--passes": "1",
        "--strength": "0.75",
        "--backend": "onnx",
        "--progress": "lines",
    }
    stats = parse_stats(
        "stats: in=29.5/s out=28.0/s dropped=3 refused=0 latency_ms=41.2 clients=1 source=connected"
    )
    assert stats == {
        "in": "29.5/s",
        "out": "28.0/s",
        "dropped": "3",
        "refused": "0",
        "latency_ms": "41.2",
        "clients": "1",
        "source": "connected",
    }
    assert parse_stats("usdespeckle stream: connected") is None


class _Connector:
    """The part of vtkMRMLIGTLConnectorNode the live mode reads (SlicerOpenIGTLink is not in slicer-core)."""

    TypeServer, TypeClient = 1, 2

    def __init__(self, kind: int, host: str, port: int) -> None:
        self.kind, self.host, self.port = kind, host, port

    def GetType(self):
        return self.kind

    def GetServerHostname(self):
        return self.host

    def GetServerPort(self):
        return self.port

    def GetName(self):
        return "PlusConnector"


def test_source_address_of_a_client_connector_and_refusal_of_a_server():
    assert source_address(_Connector(2, "localhost", 18944)) == ("127.0.0.1", 18944)
    assert source_address(_Connector(2, "192.168.1.20", 18946)) == ("192.168.1.20", 18946)
    with pytest.raises(ValueError, match="is a server"):
        source_address(_Connector(1, "", 18944))


def test_an_input_without_a_connector_is_refused(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Image_Reference")
    assert connector_for(node, scene) is None
    with pytest.raises(ValueError, match="not fed by an OpenIGTLink connector"):
        LiveLogic(scene=scene).start(node)
    with pytest.raises(ValueError, match="longer than"):
        LiveLogic(scene=scene).start(scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "A" * 21))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def source(project_python, tmp_path):
    """A replayed 6-frame cine (the project's interpreter) on a free port; yields the port."""
    found = subprocess.run([project_python, "-c", "import pyigtl"], capture_output=True, timeout=120)
    assert found.returncode == 0, (
        "pyigtl is not installed in the project's interpreter: pip install -e '.[stream]'"
    )
    path = tmp_path / "cine.npy"
    rng = np.random.default_rng(3)
    np.save(path, (40 + 60 * rng.rayleigh(1.0, (6, 48, 64))).clip(0, 255).astype(np.uint8))
    nrrd = tmp_path / "cine.nrrd"
    subprocess.run(
        [
            project_python,
            "-c",
            "import sys, numpy as np, SimpleITK as sitk; "
            "sitk.WriteImage(sitk.GetImageFromArray(np.load(sys.argv[1])), sys.argv[2])",
            str(path),
            str(nrrd),
        ],
        check=True,
        timeout=120,
    )
    port = _free_port()
    process = subprocess.Popen(
        [
            project_python,
            "-m",
            "usdespeckle",
            "stream",
            "--replay",
            str(nrrd),
            "--fps",
            "20",
            "--serve",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield port
    process.terminate()
    process.wait(20)


def _poll_until(logic, session, condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        logic.poll(session)
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout} s for {what}; stats {session.stats}, state {session.state}")
        time.sleep(0.1)


def test_start_run_place_and_stop(scene, project_python, source, tmp_path):
    made = []

    def connector_factory(scene_, name, port):  # the application adds a vtkMRMLIGTLConnectorNode
        made.append((name, port))
        return scene_.AddNewNodeByClass("vtkMRMLScriptedModuleNode", name)

    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "ImageToReference")
    live_input = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Image_Reference")
    live_input.SetAndObserveTransformNodeID(transform.GetID())
    logic = LiveLogic(project_python, scene=scene, environment=dict(os.environ), temp_root=tmp_path,
                      connector_factory=connector_factory)  # fmt: skip
    session = logic.start(live_input, method="median", source=("127.0.0.1", source))
    try:
        assert made == [(CONNECTOR_NAME, session.serve_port)]
        assert session.state is LiveState.STARTING
        _poll_until(logic, session, lambda: session.stats.get("source") == "connected", "the source")
        _poll_until(logic, session, lambda: session.stats.get("out", "0.0/s") != "0.0/s", "despeckled frames")
        assert session.state is LiveState.STARTING  # no despeckled node in the scene yet
        # the connector makes the output node, named after the device, at the first frame
        output = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Despeckled_Reference")
        logic.poll(session)
        assert session.state is LiveState.RUNNING
        assert session.output_node_id == output.GetID()
        assert output.GetTransformNodeID() == transform.GetID()
        assert output.GetAttribute(LIVE_SOURCE_ATTRIBUTE) == live_input.GetID()
    finally:
        logic.stop(session)
    assert session.state is LiveState.STOPPED
    assert session.process.returncode == 0  # SIGTERM: a clean exit that closes the relay's ports
    assert scene.GetFirstNodeByName(CONNECTOR_NAME) is None
    assert scene.GetFirstNodeByName("Despeckled_Reference") is not None  # the last image stays
    with socket.create_server(("127.0.0.1", session.serve_port)):
        pass
    assert not session.temp_dir.exists()


def test_a_failing_process_is_reported(scene, project_python, tmp_path):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Image_Reference")
    logic = LiveLogic(project_python, scene=scene, environment=dict(os.environ), temp_root=tmp_path,
                      connector_factory=lambda s, name, port: s.AddNewNodeByClass("vtkMRMLScriptedModuleNode", name))  # fmt: skip
    session = logic.start(node, method="no-such-method", source=("127.0.0.1", _free_port()))
    _poll_until(logic, session, lambda: not session.active, "the process to fail")
    assert session.state is LiveState.FAILED
    assert "invalid choice" in session.error
    assert scene.GetFirstNodeByName(CONNECTOR_NAME) is None
    logic.stop(session)
    assert session.state is LiveState.FAILED


def test_live_needs_pyigtl_beside_the_methods_packages(tmp_path):
    import importlib.util

    from SlicerDespeckleLib.live import missing_for_live

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("onnxruntime>=1.18\nscikit-image>=0.22\n")
    with pytest.raises(ValueError, match="pyigtl"):
        missing_for_live("median", "onnx", requirements)
    requirements.write_text("onnxruntime>=1.18\nscikit-image>=0.22\npyigtl>=0.3.4  # live\n")
    here = importlib.util.find_spec("pyigtl") is not None
    assert [r.requirement for r in missing_for_live("median", "onnx", requirements)] == (
        [] if here else ["pyigtl>=0.3.4"]
    )
    names = [r.name for r in missing_for_live("tv", "onnx", requirements)]
    assert ("scikit-image" in names) == (importlib.util.find_spec("skimage") is None)

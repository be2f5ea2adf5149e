"""Settings for the tests that run inside the separate ``slicer-core`` environment (.venv-slicer).

``tests/test_slicer_module.py`` runs them with that environment's interpreter. They import the
module's GUI-free Logic (``SlicerDespeckle/SlicerDespeckleLib``) against real MRML and
``slicer.util``; the despeckling subprocess runs in the project's own interpreter, named by the
``SLICERDESPECKLE_TEST_PYTHON`` environment variable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: Frames of the pydicom-data cine the tests use (of 120).
CINE_FRAMES = 4
MODULE_DIR = REPO / "SlicerDespeckle"
sys.path.insert(0, str(MODULE_DIR))  # as Slicer does for a scripted module's folder


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than about 20 s")


@pytest.fixture
def scene():
    """A fresh MRML scene, installed as ``slicer.mrmlScene`` as the application would.

    The Sequences logic is attached as in the application (it registers the browser node class
    and makes browsers' proxy nodes); the ``sequences_logic`` fixture gives it.
    """
    import slicer

    slicer.mrmlScene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSequencesLogic()
    logic.SetMRMLScene(slicer.mrmlScene)
    _SEQUENCES_LOGIC[id(slicer.mrmlScene)] = logic
    yield slicer.mrmlScene
    slicer.mrmlScene.Clear(1)
    logic.SetMRMLScene(None)
    _SEQUENCES_LOGIC.clear()


_SEQUENCES_LOGIC: dict = {}


@pytest.fixture
def sequences_logic(scene):
    """The Sequences logic attached to ``scene``."""
    return _SEQUENCES_LOGIC[id(scene)]


@pytest.fixture(scope="session")
def project_python() -> str:
    """The project's interpreter (with usdespeckle and its dependencies) for ``usdespeckle run``."""
    python = os.environ.get("SLICERDESPECKLE_TEST_PYTHON")
    if not python:
        pytest.skip(
            "set SLICERDESPECKLE_TEST_PYTHON to the project's interpreter (tests/test_slicer_module.py does)"
        )
    return python


READ_CINE = textwrap.dedent(
    """
    import sys, importlib.util, pathlib
    import numpy as np, SimpleITK as sitk
    spec = importlib.util.find_spec("data_store")
    if spec is None:
        sys.exit(3)
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "data" / "color3d_jpeg_baseline.dcm"
    image = sitk.ReadImage(str(path))
    start = 0
    if sys.argv[3] == "test":  # the block of frames the denoiser never saw in training
        from usdespeckle.data.real_bmode import CINE_BLOCKS
        start = CINE_BLOCKS["test"][0]
    array = sitk.GetArrayFromImage(image)[start : start + int(sys.argv[2])]  # (frames, 480, 640, 3) uint8
    np.save(sys.argv[1], array)
    print(start)
    """
)


def _read_cine(project_python, tmp_path_factory, block: str):
    import numpy as np

    path = tmp_path_factory.mktemp("cine") / "cine.npy"
    result = subprocess.run(
        [project_python, "-c", READ_CINE, str(path), str(CINE_FRAMES), block],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 3, "pydicom-data (the cine) is not installed in the project's interpreter"
    assert result.returncode == 0, result.stderr
    array = np.load(path)
    assert array.shape == (CINE_FRAMES, 480, 640, 3)
    assert array.dtype == np.uint8
    return array, int(result.stdout.split()[-1])


@pytest.fixture(scope="session")
def cine_array(project_python, tmp_path_factory):
    """The first frames of pydicom-data's cardiac cine ``color3d_jpeg_baseline.dcm``: (frames, 480, 640, 3) uint8."""
    return _read_cine(project_python, tmp_path_factory, "first")[0]


@pytest.fixture(scope="session")
def held_out_cine(project_python, tmp_path_factory):
    """``(frames, index of the first)``: frames of that cine from its test block, never seen in training."""
    return _read_cine(project_python, tmp_path_factory, "test")

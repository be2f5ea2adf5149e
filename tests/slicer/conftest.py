"""Settings for the tests that run inside the separate ``slicer-core`` environment (.venv-slicer).

``tests/test_slicer_module.py`` runs them with that environment's interpreter. They import the
module's GUI-free Logic (``SlicerDespeckle/SlicerDespeckleLib``) against real MRML and
``slicer.util``; the despeckling subprocess runs in the project's own interpreter, named by the
``SLICERDESPECKLE_TEST_PYTHON`` environment variable.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
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

"""Run the Slicer module's tests (tests/slicer/) in their own ``slicer-core`` environment.

``slicer-core`` (Slicer's MRML and ``slicer.util`` without the application) pins its own vtk and is
about 1 GB, so it lives in ``.venv-slicer`` at the repository root, made here on first use (a few
minutes) and reused afterwards. The inner tests run the module's Logic against real MRML; the
``usdespeckle run`` process they start uses this interpreter (the project's), passed on in
``SLICERDESPECKLE_TEST_PYTHON``; the Qt tests (the panel's .ui, its run state, the screenshot) use
PySide6 offscreen.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLICER_VENV = REPO / ".venv-slicer"
PACKAGES = ["slicer-core", "numpy", "PySide6-Essentials", "pytest"]
NETWORK_ERRORS = (
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Max retries exceeded",
    "ConnectTimeout",
    "ProxyError",
    "Could not fetch URL",
)


def _venv_python() -> Path:
    return SLICER_VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _ready(python: Path) -> bool:
    if not python.exists():
        return False
    check = "import slicer, slicer.util, PySide6.QtUiTools, pytest, numpy; slicer.vtkMRMLScene()"
    # importing vtk and Qt from a cold disk on a busy machine has taken over 5 minutes
    return subprocess.run([str(python), "-c", check], capture_output=True, timeout=900).returncode == 0


def _ensure_slicer_venv() -> Path:
    """Create or complete .venv-slicer; skips the test only if the package registry is unreachable."""
    python = _venv_python()
    if _ready(python):
        return python
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(SLICER_VENV)
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *PACKAGES],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    if result.returncode != 0:
        output = result.stdout + result.stderr
        if any(marker in output for marker in NETWORK_ERRORS):
            pytest.skip(f"cannot install {PACKAGES} into {SLICER_VENV}: the package registry is unreachable")
        pytest.fail(f"pip install {' '.join(PACKAGES)} into {SLICER_VENV} failed:\n{output[-4000:]}")
    assert _ready(python), f"{SLICER_VENV} was installed but cannot import slicer-core and PySide6"
    return python


@pytest.mark.slow
def test_slicer_module_in_slicer_core_environment():
    python = _ensure_slicer_venv()
    env = dict(os.environ)
    env["SLICERDESPECKLE_TEST_PYTHON"] = sys.executable  # runs `python -m usdespeckle run`
    env["QT_QPA_PLATFORM"] = "offscreen"
    # the project's usdespeckle stays importable for that interpreter even without an install
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(REPO)) if p)
    result = subprocess.run(
        [
            str(python),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--confcutdir",
            "tests/slicer",
            "tests/slicer",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,  # the cine tests run the denoiser on 480 x 640 frames
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"tests/slicer failed in {SLICER_VENV}:\n{output[-6000:]}"
    assert " passed" in output and " skipped" not in output, output[-2000:]

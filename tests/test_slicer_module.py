"""Run the Slicer module's tests (tests/slicer/) in their own ``slicer-core`` environment.

``slicer-core`` (Slicer's MRML and ``slicer.util`` without the application) pins its own vtk and is
about 1 GB, so it lives in ``.venv-slicer`` at the repository root, built before the tests by
``tests/make_environments.sh`` (the README's test command runs it). The inner tests run the module's
Logic against real MRML; the ``usdespeckle run`` process they start uses this interpreter (the
project's), passed on in ``SLICERDESPECKLE_TEST_PYTHON``; the Qt tests (the panel's .ui, its run
state, the screenshot) use PySide6 offscreen.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLICER_VENV = REPO / ".venv-slicer"


def _slicer_python() -> Path:
    """.venv-slicer's interpreter; fails (not skips) when the environment was not built."""
    python = SLICER_VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if not python.exists():
        pytest.fail(f"{SLICER_VENV} is missing: build it with `bash tests/make_environments.sh`")
    return python


@pytest.mark.slow
def test_slicer_module_in_slicer_core_environment():
    python = _slicer_python()
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
    assert " passed" in output, output[-2000:]
    assert " skipped" not in output, output[-2000:]

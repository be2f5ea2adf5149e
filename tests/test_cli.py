from __future__ import annotations

import subprocess
import sys

from usdespeckle import __version__
from usdespeckle.cli import main


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: usdespeckle" in capsys.readouterr().out


def test_version_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "usdespeckle", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.split() == ["usdespeckle", __version__]

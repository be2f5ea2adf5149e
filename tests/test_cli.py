from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from usdespeckle import __version__
from usdespeckle.cli import build_parser, main
from usdespeckle.commands import COMMANDS


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: usdespeckle" in capsys.readouterr().out


def test_version_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "usdespeckle", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.split() == ["usdespeckle", __version__]


def test_run_as_the_cli_module_prints_an_error_as_one_line(tmp_path):
    """``python -m usdespeckle.cli`` loads cli.py as __main__; its errors are still one line."""
    import numpy as np
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.ones((16, 16), np.float32)), str(tmp_path / "in.nii.gz"))
    (tmp_path / "existing.nii.gz").write_bytes(b"an earlier result")
    out = subprocess.run(
        [sys.executable, "-m", "usdespeckle.cli", "run", "in.nii.gz", "existing.nii.gz"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("usdespeckle run: error: "), out.stderr
    assert "existing.nii.gz" in lines[0]
    assert "--force" in lines[0]
    assert (tmp_path / "existing.nii.gz").read_bytes() == b"an earlier result"


def test_a_command_that_fails_to_import_is_an_error_not_a_missing_command(tmp_path, monkeypatch):
    import usdespeckle.commands

    (tmp_path / "broken_command.py").write_text("import usdespeckle_no_such_package\n")
    monkeypatch.setattr(usdespeckle.commands, "__path__", [*usdespeckle.commands.__path__, str(tmp_path)])
    monkeypatch.setitem(COMMANDS, "broken", "broken_command")
    with pytest.raises(ModuleNotFoundError, match="usdespeckle_no_such_package"):
        main(["broken"])
    with pytest.raises(ModuleNotFoundError, match="usdespeckle_no_such_package"):
        build_parser()  # `usdespeckle --help` too


def test_a_command_whose_module_is_not_shipped_is_not_offered(monkeypatch, capsys):
    """The Slicer extension ships only ``run``: the other commands are absent files, not errors."""
    monkeypatch.setitem(COMMANDS, "absent", "absent_command")
    assert "absent" not in build_parser().format_help()
    with pytest.raises(SystemExit) as exit_:
        main(["absent"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "invalid choice: 'absent'" in err
    assert "'run'" in err
    assert "'absent'" not in err.split("choose from")[-1]


def test_commands_take_user_error_from_the_leaf_errors_module():
    """No command imports back up from cli.py; cli.py re-exports the one ``UserError``."""
    import usdespeckle.commands
    from usdespeckle import cli
    from usdespeckle.runtime import errors

    assert cli.UserError is errors.UserError
    folder = Path(usdespeckle.commands.__file__).parent
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "usdespeckle.cli", f"{path.name} imports from usdespeckle.cli"
            elif isinstance(node, ast.Import):
                assert all(a.name != "usdespeckle.cli" for a in node.names), path.name
    for node in ast.walk(ast.parse(Path(errors.__file__).read_text())):  # a leaf: nothing from the package
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
        assert not any(name.startswith("usdespeckle") for name in names), "errors.py imports the package"

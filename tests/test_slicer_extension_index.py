"""The Slicer Extensions Index checks that can run offline, against this repository.

The index checks a submission with ``scripts/check_description_files.py`` (Slicer/ExtensionsIndex):
it clones the repository, then checks the description file (``Despeckle.json``, named after the
CMake project), the top-level CMakeLists.txt (project name, icon and screenshot URLs that serve
images), the license file and the size of the clone. Its network steps (clone, JSON schema and
GitHub topics downloads, URL fetches) cannot run here; the rules below restate its offline ones,
with URLs checked to point at files of this repository.

With ``SLICER_EXTENSIONS_INDEX_SCRIPT`` naming a copy of that script, its own check functions also
run on this checkout, with ``requests.get`` answering from this repository's files for this
repository's raw URLs (and refusing every other URL).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLICER_STUB = Path(__file__).resolve().parent / "fixtures" / "slicer_stub"  # a stand-in SlicerConfig.cmake
SIZE_LIMIT_MB = 100  # check_repository_size
EXPORT_LIMIT_MB = 10  # the exported extension, history included, stays far below it
LICENSE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")
IMAGE_MAGIC = {
    ".png": b"\x89PNG\r\n\x1a\n",
    ".jpg": b"\xff\xd8\xff",
    ".jpeg": b"\xff\xd8\xff",
    ".gif": b"GIF8",
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """The extension exported by training/export_extension.py as a git repository, and its release assets.

    The model files are fetched from a ``file://`` URL (the assets folder): nothing leaves the machine.
    """
    base = tmp_path_factory.mktemp("export")
    root, assets = base / "SlicerDespeckleExtension", base / "assets"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "training" / "export_extension.py"),
            str(root),
            "--model-url",
            assets.as_uri(),
            "--assets",
            str(assets),
            "--git",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return root, assets


@pytest.fixture(params=["checkout", "export"])
def extension_root(request) -> Path:
    """The offline rules hold for this checkout and for the exported extension."""
    return REPO if request.param == "checkout" else request.getfixturevalue("exported")[0]


def _cmake(root: Path) -> str:
    return (root / "CMakeLists.txt").read_text()


def _cmake_value(name: str, root: Path = REPO) -> str:
    # the index's own patterns (check_cmakelists_content)
    patterns = {
        "EXTENSION_ICONURL": r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)',
        "EXTENSION_SCREENSHOTURLS": r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)',
    }
    pattern = patterns.get(name, rf'set\s*\({name}\s*"([^"]+)"\s*\)')
    found = re.findall(pattern, _cmake(root), re.IGNORECASE | re.MULTILINE)
    assert found, f"no {name} in CMakeLists.txt"
    return found[0].strip()


def _project_name(root: Path = REPO) -> str:
    found = re.findall(r"project\s*\(\s*([^\s\)\n\r]+)", _cmake(root), re.IGNORECASE | re.MULTILINE)
    assert found, "no project() in CMakeLists.txt"
    return found[0].strip().strip('"').strip("'")


def _repository_slug(root: Path = REPO) -> tuple[str, str]:
    """owner/name of the repository on GitHub, from the homepage URL."""
    parts = urllib.parse.urlsplit(_cmake_value("EXTENSION_HOMEPAGE", root))
    assert parts.netloc == "github.com", "the homepage should be this repository's page on GitHub"
    owner, name = parts.path.strip("/").split("/")[:2]
    return owner, name


def _local_file_for(url: str, root: Path = REPO) -> Path:
    """The file of the repository at ``root`` that a raw.githubusercontent.com or github.com/blob URL serves."""
    owner, name = _repository_slug(root)
    parts = urllib.parse.urlsplit(url)
    path = parts.path.strip("/").split("/")
    if parts.netloc == "raw.githubusercontent.com":
        assert path[:2] == [owner, name], f"{url} is not in {owner}/{name}"
        relative = path[3:]  # after the branch
    elif parts.netloc == "github.com":
        assert path[:3] == [owner, name, "blob"], f"{url} is not a file of {owner}/{name}"
        relative = path[4:]
    else:
        raise AssertionError(f"{url} does not point into this repository")
    return root.joinpath(*relative)


def _description(root: Path = REPO) -> dict:
    """The description file a submission of this extension would add to the index."""
    owner, name = _repository_slug(root)
    return {
        "$schema": "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json#",
        "build_dependencies": [],
        "category": _cmake_value("EXTENSION_CATEGORY", root),
        "scm_revision": "main",
        "scm_url": f"https://github.com/{owner}/{name}.git",
        "tier": 1,
    }


def _tracked_files(root: Path = REPO) -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    return [root / p for p in listed.decode().split("\0") if p and (root / p).is_file()]


def test_extension_name_and_repository_name(extension_root):
    name = _project_name(extension_root)
    assert not name.lower().startswith("slicer"), "the index refuses extension names starting with 'Slicer'"
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", name)
    _, repository = _repository_slug(extension_root)
    assert repository.startswith("Slicer"), "the index wants the repository name to start with 'Slicer'"


#: ACCEPTED_EXTENSION_CATEGORIES of Slicer/ExtensionsIndex scripts/check_description_files.py (copied
#: 2026-12-07; with SLICER_EXTENSIONS_INDEX_SCRIPT set, the script test compares it with the script's).
ACCEPTED_EXTENSION_CATEGORIES = (
    "Active Learning", "Analysis", "Auto3dgm", "BigImage", "Cardiac", "Chest Imaging Platform", "Conda",
    "Converters", "DICOM", "DSCI", "Developer Tools", "Diffusion", "Examples", "Exporter",
    "FTV Segmentation", "Filtering", "Filtering.Morphology", "Filtering.Vesselness",
    "Holographic Display", "Image Synthesis", "IGT", "Informatics", "Netstim", "Neuroimaging",
    "Nuclear Medicine", "Orthodontics", "Osteotomy Planning", "Otolaryngology", "Photogrammetry",
    "Pipelines", "Planning", "Printing", "Quantification", "Radiotherapy", "Registration", "Remote",
    "Rendering", "SPHARM", "Segmentation", "Sequences", "Shape Analysis", "Shape Regression",
    "Shape Visualization", "Simulation", "SlicerCMF", "SlicerMorph", "Spectral Imaging", "Supervisely",
    "Surface Models", "SurfaceLearner", "Tomographic Reconstruction", "Tracking", "Tractography",
    "Training", "Ultrasound", "Utilities", "Vascular Modeling Toolkit", "Virtual Reality",
    "VisSimTools", "Web System Tools", "Wizards",
)  # fmt: skip


def test_category_is_one_the_index_knows(extension_root):
    category = _cmake_value("EXTENSION_CATEGORY", extension_root)
    assert category in ACCEPTED_EXTENSION_CATEGORIES
    # the module lists itself under the extension's category in Slicer's module menu
    module = (REPO / "SlicerDespeckle" / "SlicerDespeckle.py").read_text(encoding="utf-8")
    assert re.findall(r'"qSlicerAbstractCoreModule", "([^"]+)"', module) == [category]


def test_icon_screenshots_and_homepage_point_at_files_of_this_repository(extension_root):
    root = extension_root
    tracked = _tracked_files(root)
    for variable in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        urls = _cmake_value(variable, root).split()
        assert urls, f"{variable} is empty"
        for url in urls:
            assert url.startswith("https://raw.githubusercontent.com/"), (
                f"{variable}: {url} must serve the raw image"
            )
            path = _local_file_for(url, root)
            assert path.is_file(), (
                f"{variable}: {url} names {path.relative_to(root)}, which is not in the repository"
            )
            magic = IMAGE_MAGIC.get(path.suffix.lower())
            assert magic is not None, f"{url}: the index accepts .png, .jpg or .gif"
            assert path.read_bytes().startswith(magic), f"{path} is not the image its name says"
            assert path in tracked, f"{path.relative_to(root)} is not committed"
    homepage = _local_file_for(_cmake_value("EXTENSION_HOMEPAGE", root), root)
    assert homepage.is_file()
    assert homepage.suffix == ".md"
    assert "5.10 or later" in homepage.read_text(), "the module's page states the Slicer version it needs"
    assert "5.10 or later" in _cmake_value("EXTENSION_DESCRIPTION", root)


def test_contributors_and_license(extension_root):
    contributors = _cmake_value("EXTENSION_CONTRIBUTORS", extension_root)
    assert contributors
    assert "John Doe" not in contributors
    found = [name for name in LICENSE_NAMES if (extension_root / name).is_file()]
    assert found == ["LICENSE"]
    text = (extension_root / "LICENSE").read_text()
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text, "the full license text, not a pointer to it"


def test_description_file_format(extension_root):
    text = json.dumps(_description(extension_root), indent=2) + "\n"
    assert "\r" not in text  # check_json_file_format: LF only
    description = json.loads(text)
    assert urllib.parse.urlsplit(description["scm_url"]).scheme in ("git", "https")
    assert (
        Path(urllib.parse.urlsplit(description["scm_url"]).path).stem == _repository_slug(extension_root)[1]
    )


def test_checked_out_repository_is_under_the_size_limit():
    size_mb = sum(p.stat().st_size for p in _tracked_files()) / 2**20
    assert size_mb < SIZE_LIMIT_MB, f"the checked-out files are {size_mb:.1f} MB"


def _history_mb(root: Path) -> float:
    """Size on disk of every object reachable from HEAD: about what a fresh clone's .git holds."""
    objects = subprocess.run(
        ["git", "rev-list", "--objects", "HEAD"], cwd=root, capture_output=True, check=True
    )
    sizes = subprocess.run(
        ["git", "cat-file", "--batch-check=%(objectsize:disk)"],
        cwd=root,
        input=b"\n".join(line.split(b" ")[0] for line in objects.stdout.splitlines()),
        capture_output=True,
        check=True,
    )
    return sum(int(v) for v in sizes.stdout.split()) / 2**20


def test_exported_clone_with_history_is_under_10_mb(exported, tmp_path):
    """This repository's history holds past weights (over 100 MB): the index gets the export instead."""
    root, _ = exported
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-local", str(root), str(clone)], check=True, timeout=120)
    on_disk = sum(p.stat().st_size for p in clone.rglob("*") if p.is_file()) / 2**20
    assert on_disk < EXPORT_LIMIT_MB, f"a clone of the export is {on_disk:.1f} MB"
    assert _history_mb(root) < EXPORT_LIMIT_MB
    for pattern in ("*.onnx", "*.ts", "*.pt"):
        assert not list(clone.rglob(pattern)), f"{pattern}: weights are release assets, not in the repository"


def _configure(source: Path, build: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["cmake", "-S", str(source), "-B", str(build), f"-DSlicer_DIR={SLICER_STUB}", "-DBUILD_TESTING=OFF"],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.skipif(shutil.which("cmake") is None, reason="CMake is not installed")
def test_export_fetches_the_model_and_builds_and_installs(exported, tmp_path):
    """Configure (fetching the model files from file:// with their sha256), build and install."""
    root, assets = exported
    configured = _configure(root, tmp_path / "build")
    assert configured.returncode == 0, configured.stdout + configured.stderr
    assert configured.stdout.count("Despeckle: fetching file://") == 3
    for step in (
        ["--build", str(tmp_path / "build")],
        ["--install", str(tmp_path / "build"), "--prefix", str(tmp_path / "install")],
    ):
        done = subprocess.run(["cmake", *step], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    modules = tmp_path / "install" / "lib" / "Slicer-5.10" / "qt-scripted-modules"
    runtime = modules / "SlicerDespeckleLib" / "runtime"
    for name, installed in (
        ("model.onnx", runtime / "monai_bundle" / "models" / "model.onnx"),
        ("model.ts", runtime / "monai_bundle" / "models" / "model.ts"),
        ("metadata.json", runtime / "monai_bundle" / "configs" / "metadata.json"),
    ):
        assert installed.read_bytes() == (assets / name).read_bytes()
    assert (modules / "SlicerDespeckle.py").is_file()
    assert (runtime / "usdespeckle" / "commands" / "run.py").is_file()
    listed = re.findall(
        r"\$\{MODULE_NAME\}Lib/(\w+\.py)", (root / "SlicerDespeckle" / "CMakeLists.txt").read_text()
    )
    assert {p.name for p in (modules / "SlicerDespeckleLib").glob("*.py")} == set(listed)


@pytest.mark.skipif(shutil.which("cmake") is None, reason="CMake is not installed")
def test_export_with_a_changed_model_file_fails_with_a_clear_message(exported, tmp_path):
    root, assets = exported
    changed = tmp_path / "changed"
    shutil.copytree(assets, changed)
    (changed / "model.onnx").write_bytes((changed / "model.onnx").read_bytes()[:-10] + b"0123456789")
    build = tmp_path / "build"
    configured = subprocess.run(
        [
            "cmake",
            "-S",
            str(root),
            "-B",
            str(build),
            f"-DSlicer_DIR={SLICER_STUB}",
            "-DBUILD_TESTING=OFF",
            f"-DDESPECKLE_MODEL_BASE_URL={changed.as_uri()}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = " ".join((configured.stdout + configured.stderr).split())
    assert configured.returncode != 0
    assert "HASH mismatch" in output
    assert f"{changed.as_uri()}/model.onnx" in output
    assert "DESPECKLE_MODEL_BASE_URL" in output
    assert not list(build.rglob("model.onnx")), "the wrong file is never kept"
    assert not list(build.rglob("model.onnx.part"))


# Runs under a Python that can compile the index's script (it uses Python 3.12 f-strings), with
# the standard library only: this repository's raw URLs are answered from its files, any other
# URL raises, as the real requests would when offline.
DRIVER = """
import json, sys, types, urllib.parse, importlib.util
from pathlib import Path

script, repo, description, owner, name = sys.argv[1:6]
spec = importlib.util.spec_from_file_location("check_description_files", script)
index = importlib.util.module_from_spec(spec)
spec.loader.exec_module(index)

class RequestException(Exception):
    pass

class Response:
    def __init__(self, path):
        self.status_code = 200
        types_ = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}
        self.headers = {"Content-Type": types_.get(path.suffix.lower(), "text/plain")}
    def raise_for_status(self):
        pass

def get(url, timeout=None, **kwargs):
    parts = urllib.parse.urlsplit(url)
    path = parts.path.strip("/").split("/")
    if parts.netloc != "raw.githubusercontent.com" or path[:2] != [owner, name]:
        raise RequestException(f"offline: {url} is not a file of {owner}/{name}")
    local = Path(repo).joinpath(*path[3:])
    if not local.is_file():
        raise RequestException(f"404: {url}")
    return Response(local)

index.requests = types.SimpleNamespace(get=get, RequestException=RequestException)
extension = Path(description).stem
metadata = index.parse_json(description)
checks = [
    ("check_json_file_format", (extension, metadata, description)),
    ("check_extension_name", (extension, metadata)),
    ("check_category", (extension, metadata)),
    ("check_git_repository_name", (extension, metadata)),
    ("check_scm_url_syntax", (extension, metadata)),
    ("check_cmakelists_content", (extension, metadata, repo)),
    ("check_license_file", (extension, metadata, repo)),
]
results = {}
for check, args in checks:
    try:
        getattr(index, check)(*args)
        results[check] = "ok"
    except index.ExtensionCheckError as err:
        results[check] = str(err)
results["exceptions"] = extension in index.EXTENSION_NAME_CHECK_EXCEPTIONS
results["categories"] = list(index.ACCEPTED_EXTENSION_CATEGORIES)
print(json.dumps(results))
"""


def _python_312() -> str | None:
    import glob

    if sys.version_info >= (3, 12):
        return sys.executable
    candidates = [os.environ.get("SLICER_EXTENSIONS_INDEX_PYTHON", ""), shutil.which("python3.12") or ""]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[2-9]*/bin/python3")))
    for candidate in candidates:
        if (
            candidate
            and subprocess.run(
                [candidate, "-c", "import sys; assert sys.version_info >= (3, 12)"], capture_output=True
            ).returncode
            == 0
        ):
            return candidate
    return None


def test_the_index_script_passes_its_offline_checks(extension_root, tmp_path):
    script = os.environ.get("SLICER_EXTENSIONS_INDEX_SCRIPT")
    if not script:
        pytest.skip(
            "set SLICER_EXTENSIONS_INDEX_SCRIPT to a copy of ExtensionsIndex/scripts/check_description_files.py"
        )
    python = _python_312()
    if python is None:
        pytest.skip("the index's script needs Python 3.12 or later; none found")
    description = tmp_path / f"{_project_name(extension_root)}.json"
    description.write_text(json.dumps(_description(extension_root), indent=2) + "\n")
    owner, name = _repository_slug(extension_root)
    result = subprocess.run(
        [python, "-c", DRIVER, script, str(extension_root), str(description), owner, name],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert results.pop("exceptions") is False  # passes on its own, not as a listed exception
    assert set(results.pop("categories")) == set(ACCEPTED_EXTENSION_CATEGORIES)  # the copy is current
    assert results == dict.fromkeys(results, "ok"), results
    assert len(results) == 7

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
import subprocess
import urllib.parse
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CMAKE = (REPO / "CMakeLists.txt").read_text()
SIZE_LIMIT_MB = 100  # check_repository_size
LICENSE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")
IMAGE_MAGIC = {
    ".png": b"\x89PNG\r\n\x1a\n",
    ".jpg": b"\xff\xd8\xff",
    ".jpeg": b"\xff\xd8\xff",
    ".gif": b"GIF8",
}


def _cmake_value(name: str) -> str:
    # the index's own patterns (check_cmakelists_content)
    patterns = {
        "EXTENSION_ICONURL": r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)',
        "EXTENSION_SCREENSHOTURLS": r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)',
    }
    pattern = patterns.get(name, rf'set\s*\({name}\s*"([^"]+)"\s*\)')
    found = re.findall(pattern, CMAKE, re.IGNORECASE | re.MULTILINE)
    assert found, f"no {name} in CMakeLists.txt"
    return found[0].strip()


def _project_name() -> str:
    found = re.findall(r"project\s*\(\s*([^\s\)\n\r]+)", CMAKE, re.IGNORECASE | re.MULTILINE)
    assert found, "no project() in CMakeLists.txt"
    return found[0].strip().strip('"').strip("'")


def _repository_slug() -> tuple[str, str]:
    """owner/name of this repository on GitHub, from the homepage URL."""
    parts = urllib.parse.urlsplit(_cmake_value("EXTENSION_HOMEPAGE"))
    assert parts.netloc == "github.com", "the homepage should be this repository's page on GitHub"
    owner, name = parts.path.strip("/").split("/")[:2]
    return owner, name


def _local_file_for(url: str) -> Path:
    """The file of this repository that a raw.githubusercontent.com or github.com/blob URL serves."""
    owner, name = _repository_slug()
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
    return REPO.joinpath(*relative)


def _description() -> dict:
    """The description file a submission of this extension would add to the index."""
    owner, name = _repository_slug()
    return {
        "$schema": "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json#",
        "build_dependencies": [],
        "category": _cmake_value("EXTENSION_CATEGORY"),
        "scm_revision": "main",
        "scm_url": f"https://github.com/{owner}/{name}.git",
        "tier": 1,
    }


def _tracked_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [REPO / p for p in listed.decode().split("\0") if p and (REPO / p).is_file()]


def test_extension_name_and_repository_name():
    name = _project_name()
    assert not name.lower().startswith("slicer"), "the index refuses extension names starting with 'Slicer'"
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", name)
    _, repository = _repository_slug()
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


def test_category_is_one_the_index_knows():
    category = _cmake_value("EXTENSION_CATEGORY")
    assert category in ACCEPTED_EXTENSION_CATEGORIES
    # the module lists itself under the extension's category in Slicer's module menu
    module = (REPO / "SlicerDespeckle" / "SlicerDespeckle.py").read_text(encoding="utf-8")
    assert re.findall(r'"qSlicerAbstractCoreModule", "([^"]+)"', module) == [category]


def test_icon_screenshots_and_homepage_point_at_files_of_this_repository():
    for variable in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        urls = _cmake_value(variable).split()
        assert urls, f"{variable} is empty"
        for url in urls:
            assert url.startswith("https://raw.githubusercontent.com/"), (
                f"{variable}: {url} must serve the raw image"
            )
            path = _local_file_for(url)
            assert path.is_file(), (
                f"{variable}: {url} names {path.relative_to(REPO)}, which is not in the repository"
            )
            magic = IMAGE_MAGIC.get(path.suffix.lower())
            assert magic is not None, f"{url}: the index accepts .png, .jpg or .gif"
            assert path.read_bytes().startswith(magic), f"{path} is not the image its name says"
            assert path in _tracked_files(), f"{path.relative_to(REPO)} is not committed"
    homepage = _local_file_for(_cmake_value("EXTENSION_HOMEPAGE"))
    assert homepage.is_file()
    assert homepage.suffix == ".md"
    assert "5.10 or later" in homepage.read_text(), "the module's page states the Slicer version it needs"
    assert "5.10 or later" in _cmake_value("EXTENSION_DESCRIPTION")


def test_contributors_and_license():
    contributors = _cmake_value("EXTENSION_CONTRIBUTORS")
    assert contributors
    assert "John Doe" not in contributors
    found = [name for name in LICENSE_NAMES if (REPO / name).is_file()]
    assert found == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text, "the full license text, not a pointer to it"


def test_description_file_format():
    text = json.dumps(_description(), indent=2) + "\n"
    assert "\r" not in text  # check_json_file_format: LF only
    description = json.loads(text)
    assert urllib.parse.urlsplit(description["scm_url"]).scheme in ("git", "https")
    assert Path(urllib.parse.urlsplit(description["scm_url"]).path).stem == _repository_slug()[1]


def test_checked_out_repository_is_under_the_size_limit():
    size_mb = sum(p.stat().st_size for p in _tracked_files()) / 2**20
    assert size_mb < SIZE_LIMIT_MB, f"the checked-out files are {size_mb:.1f} MB"


def _history_mb() -> float:
    """Size on disk of every object reachable from HEAD: about what a fresh clone's .git holds."""
    objects = subprocess.run(
        ["git", "rev-list", "--objects", "HEAD"], cwd=REPO, capture_output=True, check=True
    )
    sizes = subprocess.run(
        ["git", "cat-file", "--batch-check=%(objectsize:disk)"],
        cwd=REPO,
        input=b"\n".join(line.split(b" ")[0] for line in objects.stdout.splitlines()),
        capture_output=True,
        check=True,
    )
    return sum(int(v) for v in sizes.stdout.split()) / 2**20


@pytest.mark.xfail(
    strict=True,
    reason="the index clones the whole history (scm_revision set), and the history holds every past "
    "export of the weights: over 100 MB with the checkout. Needs the weights out of the history "
    "(e.g. release assets fetched by CMake with their sha256) or a separate extension repository.",
)
def test_clone_with_history_is_under_the_size_limit():
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    checkout_mb = sum(p.stat().st_size for p in _tracked_files()) / 2**20
    total = checkout_mb + _history_mb()
    assert total < SIZE_LIMIT_MB, f"a clone would be about {total:.0f} MB ({checkout_mb:.0f} MB checked out)"


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
    import shutil
    import sys

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


def test_the_index_script_passes_its_offline_checks(tmp_path):
    script = os.environ.get("SLICER_EXTENSIONS_INDEX_SCRIPT")
    if not script:
        pytest.skip(
            "set SLICER_EXTENSIONS_INDEX_SCRIPT to a copy of ExtensionsIndex/scripts/check_description_files.py"
        )
    python = _python_312()
    if python is None:
        pytest.skip("the index's script needs Python 3.12 or later; none found")
    description = tmp_path / f"{_project_name()}.json"
    description.write_text(json.dumps(_description(), indent=2) + "\n")
    owner, name = _repository_slug()
    result = subprocess.run(
        [python, "-c", DRIVER, script, str(REPO), str(description), owner, name],
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

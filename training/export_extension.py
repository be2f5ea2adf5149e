"""Export the Slicer extension into a standalone repository that the Extensions Index can take.

python training/export_extension.py OUT_DIR --model-url https://github.com/OWNER/REPO/releases/download/v1.1.0 \
    [--assets ASSETS_DIR] [--repository OWNER/NAME] [--git]

The Extensions Index clones an extension's whole history and refuses a repository over 100 MB;
this repository's history holds every past export of the weights. The export holds the extension
alone (the top-level CMakeLists.txt, LICENSE, the README, the icon and screenshot, the module
folder and the part of the ``usdespeckle`` library the module runs, as
``SlicerDespeckle/CMake/DespeckleRuntime.cmake`` names it: the command line and ``usdespeckle/runtime/``) and no weights: its
``SlicerDespeckle/CMake/DespeckleModelFiles.cmake`` names the bundle files (``model.onnx``,
``model.ts``, ``metadata.json``) with their sha256, and the module's CMake fetches them at configure
time from ``--model-url`` with ``file(DOWNLOAD ... EXPECTED_HASH SHA256=...)``. ``--assets`` copies
those files, flat, into a folder to upload as the release's assets (a ``file://`` URL to that folder
builds offline). ``--git`` makes OUT_DIR a git repository with one commit.

The checksums written are those of ``monai_bundle/configs/metadata.json``'s ``weights_sha256``
(checked against the files), and metadata.json's own, so a release file that changes fails the
build with a message naming it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE = "SlicerDespeckle"
RUNTIME_CMAKE = REPO / MODULE / "CMake" / "DespeckleRuntime.cmake"
SOURCE_URL = "https://github.com/SlicerDespeckle/SlicerDespeckle"
DEFAULT_REPOSITORY = "SlicerDespeckle/SlicerDespeckleExtension"
#: Files at the top of the export, from this repository (the README is the module's, made the root's).
TOP_FILES = ("LICENSE", "docs/screenshot.png")


def cmake_list(name: str, text: str) -> list[str]:
    """The entries of ``set(<name> ...)`` in a CMake file (one path a line, comments ignored)."""
    match = re.search(rf"set\(\s*{name}\s+(.*?)\)", text, re.DOTALL)
    if match is None:
        raise ValueError(f"{RUNTIME_CMAKE} has no set({name} ...)")
    return [
        line.split("#", 1)[0].strip() for line in match.group(1).splitlines() if line.split("#", 1)[0].strip()
    ]


def runtime_library_files() -> list[str]:
    """The library files the module runs: DespeckleRuntime.cmake's command-line list and every .py file
    of its runtime layer folder (DESPECKLE_RUNTIME_LAYER_DIR), as the module's CMake globs them."""
    text = RUNTIME_CMAKE.read_text("utf-8")
    layer = REPO / cmake_list("DESPECKLE_RUNTIME_LAYER_DIR", text)[0]
    found = sorted(
        p.relative_to(REPO).as_posix() for p in layer.rglob("*.py") if "__pycache__" not in p.parts
    )
    return [*cmake_list("DESPECKLE_RUNTIME_LIBRARY_FILES", text), *found]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tracked_module_files() -> list[str]:
    """The module folder's files that git tracks (no build output, no runtime copy)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", MODULE],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted(p for p in listed.split("\0") if p and (REPO / p).is_file() and "/runtime/" not in p)


def model_files() -> list[tuple[str, str]]:
    """``(path in the repository, sha256)`` of the bundle files the module runs, checked against metadata.json."""
    files = cmake_list("DESPECKLE_RUNTIME_BUNDLE_FILES", RUNTIME_CMAKE.read_text("utf-8"))
    metadata_path = REPO / "monai_bundle" / "configs" / "metadata.json"
    recorded = json.loads(metadata_path.read_text("utf-8"))["weights_sha256"]
    found = []
    for file in files:
        path = REPO / file
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; export from a checkout with the shipped weights")
        checksum = sha256_of(path)
        key = file.removeprefix("monai_bundle/")
        if key in recorded and recorded[key] != checksum:
            raise ValueError(f"{file} has sha256 {checksum}, metadata.json records {recorded[key]}")
        found.append((file, checksum))
    names = [Path(f).name for f, _ in found]
    if len(set(names)) != len(names):
        raise ValueError(f"the release assets are flat, so the file names must differ: {names}")
    return found


def _absolute_links(text: str) -> str:
    """``](../path)`` links of the module's README (files of this repository outside the module)
    become links to this repository's GitHub page."""
    return re.sub(r"(\]\s*)\(\.\./([^)\s]+)\)", rf"\1({SOURCE_URL}/blob/main/\2)", text)


def readme(repository: str) -> str:
    """The module's README as the export's root README (links rewritten, the screenshot kept)."""
    text = (REPO / MODULE / "README.md").read_text("utf-8")
    text = text.replace("](../docs/screenshot.png)", "](docs/screenshot.png)")
    text = _absolute_links(text)
    return (
        text.rstrip() + f"\n\nThis repository is the extension exported from [{SOURCE_URL}]({SOURCE_URL}) by "
        f"`training/export_extension.py`; the model files are release assets of {repository}, "
        "fetched and checked (sha256) when the extension is built.\n"
    )


def top_cmakelists(repository: str) -> str:
    """The top-level CMakeLists.txt with its URLs pointing into the exported repository."""
    text = (REPO / "CMakeLists.txt").read_text("utf-8")
    raw = f"https://raw.githubusercontent.com/{repository}/main"
    replacements = {
        "EXTENSION_HOMEPAGE": f"https://github.com/{repository}/blob/main/README.md",
        "EXTENSION_ICONURL": f"{raw}/{MODULE}/Resources/Icons/{MODULE}.png",
        "EXTENSION_SCREENSHOTURLS": f"{raw}/docs/screenshot.png",
    }
    for name, url in replacements.items():
        text, count = re.subn(rf'(set\(\s*{name}\s+)"[^"]*"', rf'\1"{url}"', text)
        if count != 1:
            raise ValueError(f"CMakeLists.txt: expected one set({name} ...), found {count}")
    return text


def model_files_cmake(model_url: str, files: list[tuple[str, str]]) -> str:
    lines = "\n".join(f"  {file} {checksum}" for file, checksum in files)
    return (
        "# Written by training/export_extension.py: where the model files of this release are and\n"
        "# their sha256. SlicerDespeckle/CMakeLists.txt fetches them at configure time\n"
        "# (despeckle_fetch_files in DespeckleRuntime.cmake); a file with another checksum fails the build.\n"
        f'set(DESPECKLE_MODEL_BASE_URL "{model_url.rstrip("/")}" CACHE STRING '
        '"Where the model files of this release are (a URL folder holding them by name)")\n'
        f"set(DESPECKLE_MODEL_FILES\n{lines}\n  )\n"
    )


def export(out_dir: Path, model_url: str, repository: str, assets: Path | None = None) -> list[Path]:
    """Write the extension's repository into ``out_dir`` (which must be empty or absent).

    Returns:
        The files written, relative to ``out_dir``.

    Raises:
        ValueError: ``out_dir`` is not empty, bad repository name, or a checksum that does not match.
    """
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir} is not empty; give a new folder")
    if not re.fullmatch(r"[\w.-]+/Slicer[\w.-]+", repository):
        raise ValueError(
            f"--repository must be OWNER/Slicer<Name> (the index wants 'Slicer' first), got {repository!r}"
        )
    files = model_files()
    library = runtime_library_files()
    written: list[Path] = []

    def copy(relative: str) -> None:
        target = out_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, target)
        written.append(Path(relative))

    def write(relative: str, text: str) -> None:
        target = out_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, "utf-8")
        written.append(Path(relative))

    for relative in (*TOP_FILES, *library, *tracked_module_files()):
        if relative == f"{MODULE}/README.md":
            write(relative, _absolute_links((REPO / relative).read_text("utf-8")))
        else:
            copy(relative)
    write("README.md", readme(repository))
    write("CMakeLists.txt", top_cmakelists(repository))
    write(f"{MODULE}/CMake/DespeckleModelFiles.cmake", model_files_cmake(model_url, files))
    write(".gitignore", "/build/\n*.pyc\n__pycache__/\n")
    if assets is not None:
        assets.mkdir(parents=True, exist_ok=True)
        for file, _ in files:
            shutil.copy2(REPO / file, assets / Path(file).name)
    return written


def commit(out_dir: Path, message: str) -> None:
    """Make ``out_dir`` a git repository with one commit of everything in it."""

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=out_dir, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("add", "-A")
    git(
        "-c",
        "user.name=SlicerDespeckle release",
        "-c",
        "user.email=release@slicerdespeckle.invalid",
        "commit",
        "-q",
        "-m",
        message,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="new folder for the extension's repository")
    parser.add_argument(
        "--model-url", required=True, help="URL folder the model files are fetched from (release assets)"
    )
    parser.add_argument("--assets", type=Path, help="also copy the model files, flat, into this folder")
    parser.add_argument(
        "--repository", default=DEFAULT_REPOSITORY, help=f"OWNER/NAME (default {DEFAULT_REPOSITORY})"
    )
    parser.add_argument("--git", action="store_true", help="make OUT_DIR a git repository with one commit")
    args = parser.parse_args(argv)
    try:
        written = export(args.out_dir, args.model_url, args.repository, args.assets)
    except (ValueError, OSError) as err:
        print(f"export_extension: error: {err}", file=sys.stderr)
        return 1
    if args.git:
        commit(args.out_dir, f"Despeckle extension exported from {SOURCE_URL}")
    print(f"wrote {len(written)} files to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

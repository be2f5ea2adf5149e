"""Which Python packages a despeckling method needs, which are missing, and installing them.

Standard library only (``slicer.util.pip_install`` and the PyTorch extension are called by
:func:`install`, which only runs inside Slicer). Slicer 5.10 ships numpy, SciPy and SimpleITK, and
the module carries the ``usdespeckle`` code and the ONNX denoiser, so a method needs at most one
well-known PyPI package:

========================  ===============================================================
method                    package
========================  ===============================================================
``denoiser`` (onnx)       ``onnxruntime``
``denoiser`` (torch)      PyTorch, through the PyTorch extension (SlicerPyTorch)
``nlm``, ``tv``           ``scikit-image``
``bm3d``, ``mulog``       ``bm3d`` (non-commercial licence, named before it is installed)
others; any on a server   nothing
========================  ===============================================================

The pip requirement lines (with their versions) are read from ``Resources/requirements.txt``.
A package whose licence restricts its use (``bm3d``: non-commercial only) carries that licence in
:attr:`Requirement.licence`, so the consent dialog names it before anything is installed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("Despeckle")

#: pip distribution -> module it installs.
IMPORT_NAMES: dict[str, str] = {"onnxruntime": "onnxruntime", "scikit-image": "skimage", "bm3d": "bm3d"}
#: Classical methods that need a package beyond numpy and SciPy.
METHOD_PACKAGES: dict[str, tuple[str, ...]] = {
    "nlm": ("scikit-image",),
    "tv": ("scikit-image",),
    "bm3d": ("bm3d",),
    "mulog": ("bm3d",),  # MuLoG's denoiser is BM3D
}
#: The name shown for PyTorch, which comes from the PyTorch extension, not from pip.
TORCH = "torch (through the PyTorch extension)"


@dataclass(frozen=True)
class Requirement:
    """One package a method needs.

    Attributes:
        name: the distribution name (``"onnxruntime"``) or :data:`TORCH`.
        requirement: the pip requirement line (``"onnxruntime>=1.18"``); empty for PyTorch.
        module: the module imported to check it is there.
        licence: a one-line licence restriction to show before installing; empty when none.
    """

    name: str
    requirement: str
    module: str
    licence: str = ""

    @property
    def via_pytorch_extension(self) -> bool:
        return self.name == TORCH


def read_requirements(requirements_file: str | os.PathLike) -> dict[str, str]:
    """``{distribution name (lower case): requirement line}`` from a requirements.txt (comments skipped)."""
    lines = {}
    for raw in Path(requirements_file).read_text("utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name = re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0]
            lines[name.lower().replace("_", "-")] = line
    return lines


def requirements_for(
    method: str,
    backend: str,
    *,
    server: bool,
    requirements_file: str | os.PathLike,
    licences: dict[str, str] | None = None,
) -> list[Requirement]:
    """The packages the chosen settings need in Slicer's Python, present or not.

    Args:
        method: ``"denoiser"`` or a classical method name.
        backend: ``"onnx"`` or ``"torch"`` (denoiser only).
        server: the work runs on a MONAI Label server: nothing beyond Slicer's own packages.
        requirements_file: the module's ``Resources/requirements.txt``.
        licences: ``{distribution name: one-line licence restriction}`` (the runtime's
            ``options.BM3D_LICENCE`` for ``bm3d``).

    Raises:
        ValueError: the requirements file lacks a package a method needs.
    """
    if server:
        return []
    if method == "denoiser" and backend == "torch":
        return [Requirement(TORCH, "", "torch")]
    names = ("onnxruntime",) if method == "denoiser" else METHOD_PACKAGES.get(method, ())
    lines = read_requirements(requirements_file)
    found = []
    for name in names:
        if name not in lines:
            raise ValueError(f"{requirements_file} has no line for {name!r}, which method {method!r} needs")
        found.append(Requirement(name, lines[name], IMPORT_NAMES[name], (licences or {}).get(name, "")))
    return found


def is_installed(requirement: Requirement) -> bool:
    """True when the requirement's module can be imported here (without importing it)."""
    return importlib.util.find_spec(requirement.module) is not None


def missing_for(
    method: str,
    backend: str,
    *,
    server: bool,
    requirements_file: str | os.PathLike,
    licences: dict[str, str] | None = None,
) -> list[Requirement]:
    """The packages the chosen settings need and that are not installed; see :func:`requirements_for`."""
    found = requirements_for(
        method, backend, server=server, requirements_file=requirements_file, licences=licences
    )
    return [r for r in found if not is_installed(r)]


def consent_text(method: str, missing: list[Requirement]) -> str:
    """The question asked before installing ``missing``: the packages, and any licence restriction."""
    names = "\n".join(f"- {r.name}" for r in missing)
    restricted = "".join(f"\n\nLicence: {r.licence}." for r in missing if r.licence)
    agree = " Install only if your use is allowed by that licence." if restricted else ""
    return (
        f"The '{method}' method needs Python packages that are not installed yet:\n{names}{restricted}\n\n"
        f"Install them now?{agree} This can take a few minutes."
    )


def pip_arguments(requirements: list[Requirement], numpy_version: str | None) -> list[str]:
    """``pip install`` arguments for the pip-installable requirements, keeping Slicer's numpy.

    Pinning the numpy that Slicer ships stops pip from replacing it (other modules are built
    against it); a package that needs another numpy then fails to install with pip's message
    instead of breaking Slicer.
    """
    lines = [r.requirement for r in requirements if not r.via_pytorch_extension]
    if lines and numpy_version:
        lines.append(f"numpy=={numpy_version}")
    return lines


def install(requirements: list[Requirement]) -> None:
    """Install the requirements into Slicer's Python (call inside Slicer, after the user agreed).

    Raises:
        ValueError: PyTorch is needed but the PyTorch extension is not installed or could not
            install it.
        subprocess.CalledProcessError: pip failed (its output is in the application log).
    """
    import slicer.util

    if any(r.via_pytorch_extension for r in requirements):
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise ValueError(
                "the torch backend needs PyTorch: install the 'PyTorch' extension from the Extensions "
                "Manager and restart Slicer, or choose the onnx backend (no PyTorch needed)"
            ) from None
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
            raise ValueError("PyTorch could not be installed; install it from the PyTorch module, then retry")
    try:
        import numpy

        numpy_version = numpy.__version__
    except ImportError:  # pragma: no cover - Slicer always has numpy
        numpy_version = None
    arguments = pip_arguments(requirements, numpy_version)
    if arguments:
        logger.info("Despeckle: pip install %s", " ".join(arguments))
        slicer.util.pip_install(arguments)
    importlib.invalidate_caches()


def installed_version(distribution: str) -> str | None:
    """The installed version of a pip distribution, or None."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def model_information(runtime: str | os.PathLike | None) -> str:
    """``"denoiser 1.0.0, model.onnx sha256 a120b637..."`` from the runtime's bundle metadata.

    Returns:
        The line, or a line saying the metadata could not be read.
    """
    import json

    if runtime is None:
        return "denoiser: no runtime found"
    path = Path(runtime) / "monai_bundle" / "configs" / "metadata.json"
    try:
        metadata = json.loads(path.read_text("utf-8"))
        checksum = metadata["weights_sha256"]["models/model.onnx"]
        return f"denoiser {metadata['version']}, model.onnx sha256 {checksum[:12]}..."
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"denoiser: cannot read {path} ({type(err).__name__})"


def package_information(requirements_file: str | os.PathLike, runtime: str | os.PathLike | None) -> str:
    """One line for the panel: each runtime package's installed version (or "not installed") and the model's."""
    names = list(read_requirements(requirements_file))
    packages = ", ".join(f"{name} {installed_version(name) or 'not installed'}" for name in names)
    return f"Packages: {packages}. Model: {model_information(runtime)}."


def update_arguments(
    requirements_file: str | os.PathLike, numpy_version: str | None, version=installed_version
) -> list[str]:
    """``pip install`` arguments that upgrade the runtime packages that are installed (never installs new ones).

    Args:
        requirements_file: the module's ``Resources/requirements.txt``.
        numpy_version: Slicer's numpy, pinned so that pip keeps it.
        version: how an installed version is found (replaced by the tests).

    Returns:
        ``["--upgrade", <requirement lines of the installed packages>, "numpy==<version>"]``, or
        ``[]`` when none is installed.
    """
    lines = [line for name, line in read_requirements(requirements_file).items() if version(name)]
    if not lines:
        return []
    return ["--upgrade", *lines, *([f"numpy=={numpy_version}"] if numpy_version else [])]


def update(requirements_file: str | os.PathLike) -> list[str]:
    """Upgrade the installed runtime packages in Slicer's Python (call inside Slicer, after asking).

    Returns:
        The pip arguments used (empty: nothing to update).
    """
    import numpy
    import slicer.util

    arguments = update_arguments(requirements_file, numpy.__version__)
    if arguments:
        logger.info("Despeckle: pip install %s", " ".join(arguments))
        slicer.util.pip_install(arguments)
        importlib.invalidate_caches()
    return arguments

"""Checks on images and paths, before reading and before writing (used by :mod:`usdespeckle.runtime.io`).

* inputs: the voxel limit a header may declare (checked before any pixel memory is allocated), a
  second read of NIfTI files through nibabel (SimpleITK's NIfTI reader turns NaN and infinite
  voxels into 0 and reads a truncated file as zero-filled without an error), and what the
  despecklers can process (:func:`validate_image`);
* outputs: the format an extension names, the files a two-file format writes beside the named one
  (:func:`image_files`), and collisions with the input or an existing output, also when names
  differ only in case (:func:`check_output_path`).
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

__all__ = [
    "MAX_ABS_VALUE",
    "MIN_SIZE",
    "OUTPUT_SUFFIXES",
    "check_output_path",
    "image_files",
    "same_file",
    "validate_image",
]

#: Default smallest accepted in-plane side, pixels.
MIN_SIZE = 16
#: Largest accepted absolute pixel value: the despecklers compute in float32 (largest 3.4e38), and
#: the intensity range (max - min) must stay finite there.
MAX_ABS_VALUE = 1e30

_2D_ONLY = {".png", ".jpg", ".jpeg", ".bmp"}
NIFTI_SUFFIXES = {".nii", ".nii.gz", ".hdr", ".img"}
# ITK's MetaImage and NIfTI writers need these extensions in lower case (x.MHA becomes x.mhd + x.raw).
_LOWER_CASE_ONLY = {".mha", ".mhd", ".nii", ".nii.gz", ".hdr"}
#: Output extensions :func:`usdespeckle.runtime.io.write_image` writes (the extension names the format).
OUTPUT_SUFFIXES = (
    ".nii.gz", ".nii", ".hdr", ".nrrd", ".nhdr", ".mha", ".mhd", ".tif", ".tiff",
    ".png", ".jpg", ".jpeg", ".bmp", ".dcm", ".dicom",
)  # fmt: skip
# Files a two-file format writes or reads beside the named one (same stem).
_SIDECARS = {
    ".mhd": (".raw", ".zraw"),
    ".hdr": (".img", ".img.gz"),
    ".img": (".hdr",),
    ".nhdr": (".raw", ".raw.gz"),
}


def image_suffix(path: Path) -> str:
    """Lower-case extension, keeping the compound ``.nii.gz``."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _stem(path: Path) -> str:
    name, suffix = path.name, image_suffix(path)
    return name[: len(name) - len(suffix)] if suffix else name


def image_files(path: str | os.PathLike) -> list[Path]:
    """The files an image path stands for: the file itself and its two-file format partner.

    ``x.mhd`` stands for itself and its data file (the ``ElementDataFile`` of an existing header,
    else ``x.raw`` and ``x.zraw``); ``x.hdr`` for ``x.img``; ``x.nhdr`` for its ``data file``.

    Args:
        path: an image file (it may not exist yet).

    Returns:
        The path first, then the data files, all in the path's folder or where the header says.
    """
    path = Path(path)
    files = [path]
    suffix = image_suffix(path)
    named: list[str] = []
    if suffix in (".mhd", ".nhdr") and path.is_file():
        key = "elementdatafile" if suffix == ".mhd" else "data file"
        with contextlib.suppress(OSError, UnicodeDecodeError), open(path, encoding="latin-1") as f:
            for line in f.read(65536).splitlines():
                name, sep, value = line.partition("=" if suffix == ".mhd" else ":")
                if sep and name.strip().lower() == key:
                    value = value.strip()
                    if value and value.upper() not in ("LOCAL", "LIST") and "%" not in value:
                        named.append(value)
    files += [path.parent / name for name in named]
    files += [path.parent / (_stem(path) + ext) for ext in _SIDECARS.get(suffix, ())]
    return list(dict.fromkeys(files))


def validate_image(image: sitk.Image, *, min_size: int = MIN_SIZE, name: str = "image") -> None:
    """Check that an image is something the despecklers can process.

    Args:
        image: scalar SimpleITK image, 2D or 3D.
        min_size: smallest accepted side, pixels, for both sides of a 2D image and the two largest
            sides of a volume (a volume may hold only a few slices).
        name: how to call the image in error messages (usually its path).

    Raises:
        ValueError: for vector or complex pixels, more than 3 dimensions, an empty or too small
            image, NaN or infinite values, values beyond +-:data:`MAX_ABS_VALUE`, or a constant image.
    """
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{name}: has vector pixels; call usdespeckle.runtime.io.to_grey first")
    dim, size = image.GetDimension(), image.GetSize()
    if dim > 3:
        raise ValueError(
            f"{name}: is {dim}D with size {size}; only 2D images and 3D volumes are supported. "
            "Split it into 3D volumes first."
        )
    if dim < 2 or min(size) == 0:
        raise ValueError(f"{name}: is empty (size {size})")
    sides = sorted(size, reverse=True)[:2]
    if min(sides) < min_size:
        raise ValueError(
            f"{name}: is too small (size {size}); needs at least {min_size} pixels on each image side"
        )
    array = sitk.GetArrayViewFromImage(image)
    if np.iscomplexobj(array) or not np.issubdtype(array.dtype, np.number):
        raise ValueError(
            f"{name}: has {image.GetPixelIDTypeAsString()} pixels; only real-valued grey images are "
            "accepted. Save the magnitude as a grey image first."
        )
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
            raise ValueError(
                f"{name}: holds {bad} NaN or infinite values; fix or mask them before despeckling"
            )
        largest = float(np.abs(array).max())
        if largest > MAX_ABS_VALUE:
            raise ValueError(
                f"{name}: holds values up to {largest:.3g}, beyond the +-{MAX_ABS_VALUE:.0e} this tool "
                "computes with in float32; rescale the image (for example to [0, 1000]) first"
            )
    lo, hi = array.min(), array.max()
    if lo == hi:
        raise ValueError(f"{name}: is constant (every pixel is {lo}); there is nothing to despeckle")


def first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    detail = next((line for line in lines if "ERROR" in line or "Unable" in line), lines[-1] if lines else "")
    return detail[:200]


def check_voxels(name: str, size: tuple[int, ...], components: int, max_voxels: int) -> None:
    values = math.prod(size) * max(1, components)
    if values > max_voxels:
        raise ValueError(
            f"{name}: declares {values:,} values (size {tuple(size)}, {components} per voxel), more "
            f"than the limit of {max_voxels:,}; crop it, or raise the limit (--max-voxels, max_voxels=) "
            "if the machine has the memory (4 bytes per value, twice)"
        )


def check_nifti(path: Path, max_voxels: int) -> None:
    """Read a NIfTI / Analyze file through nibabel, which sees truncation and NaN (SimpleITK does not)."""
    try:
        import nibabel as nib
    except ImportError:
        raise ValueError(
            f"{path}: reading NIfTI safely needs nibabel (pip install nibabel), which is not installed"
        ) from None

    try:
        nifti = nib.load(str(path))
        check_voxels(str(path), tuple(int(s) for s in nifti.shape), 1, max_voxels)
        data = np.asanyarray(nifti.dataobj)
    except ValueError as err:
        if "declares" in str(err):
            raise
        raise ValueError(f"{path}: is truncated or corrupt: {first_line(err)}") from None
    except (OSError, EOFError, MemoryError) as err:
        raise ValueError(f"{path}: is truncated or corrupt: {first_line(err)}") from None
    except (nib.spatialimages.HeaderDataError, nib.filebasedimages.ImageFileError) as err:
        raise ValueError(f"{path}: has a malformed header: {first_line(err)}") from None
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise ValueError(f"{path}: holds {bad} NaN or infinite values; fix or mask them before despeckling")


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file, case-insensitively (the MetaImage writer lower-cases names)."""
    with contextlib.suppress(OSError):
        if a.exists() and b.exists() and os.path.samefile(a, b):
            return True
    if a.name.lower() != b.name.lower():
        return False
    with contextlib.suppress(OSError):
        return a.parent.resolve() == b.parent.resolve() or os.path.samefile(a.parent, b.parent)
    return False


def existing_case_insensitive(path: Path) -> Path | None:
    """The file in ``path``'s folder whose name equals ``path``'s case-insensitively, if any."""
    if path.exists():
        return path
    with contextlib.suppress(OSError):
        lower = path.name.lower()
        for entry in os.scandir(path.parent):
            if entry.name.lower() == lower:
                return path.parent / entry.name
    return None


def _refuse_overwriting_the_input(path: Path, outputs: list[Path], source: str | os.PathLike) -> None:
    """Raise ValueError when one of the files ``outputs`` (written for ``path``) is a file of ``source``."""
    inputs = image_files(source)
    for out in outputs:
        for inp in inputs:
            if same_file(out, inp):
                what = "is the input file" if out == path and inp == inputs[0] else f"would overwrite {inp}"
                raise ValueError(
                    f"output {path} {what}, part of the input {source}; choose another output path"
                )


def check_output_path(
    path: str | os.PathLike,
    *,
    force: bool = False,
    source: str | os.PathLike | None = None,
    dimension: int | None = None,
) -> Path:
    """Check an output path before any work is done.

    Args:
        path: where the output will be written; its extension (one of :data:`OUTPUT_SUFFIXES`)
            names the format.
        force: allow replacing an existing output (and its data file, for two-file formats).
        source: the input path; neither it nor its data files may be overwritten, even with
            ``force``, also when names differ only in case.
        dimension: the image's dimension (2 or 3) when known, to refuse a volume to a 2D format.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: if ``path`` or one of the files it would write is the input or one of its
            files, exists and ``force`` is false, is a folder (or ends with a separator), has an extension no writer knows (or
            an upper-case .MHA, .MHD, .NII, .NII.GZ, .HDR, which ITK mishandles), is a 2D-only
            format for a volume, or its folder does not exist or is not writable.
    """
    text = os.fspath(path)
    if text.endswith(("/", os.sep)) or os.path.basename(text) in ("", ".", ".."):
        raise ValueError(
            f"output {text} names a folder (it ends with a path separator); give a file name such "
            f"as {Path(text) / 'output.nii.gz'}"
        )
    path = Path(path)
    suffix = image_suffix(path)
    if suffix not in OUTPUT_SUFFIXES:
        raise ValueError(
            f"output {path}: unknown format {suffix or '(no extension)'!r}; use one of "
            f"{', '.join(OUTPUT_SUFFIXES)}"
        )
    if dimension is not None and dimension != 2 and suffix in _2D_ONLY:
        raise ValueError(
            f"output {path}: {suffix} holds 2D images only and the result is {dimension}D; "
            "use .nii.gz, .nrrd, .mha or .tif"
        )
    outputs = image_files(path)
    if source is not None:
        _refuse_overwriting_the_input(path, outputs, source)
    if suffix in _LOWER_CASE_ONLY and not path.name.endswith(suffix):
        raise ValueError(
            f"output {path}: write the extension in lower case ({suffix}); ITK's MetaImage and NIfTI "
            "writers mishandle upper-case ones"
        )
    if path.is_dir():
        raise ValueError(f"output {path} is a folder; give a file name such as {path / 'output.nii.gz'}")
    if not force:
        for out in outputs:
            found = existing_case_insensitive(out)
            if found is not None:
                which = "exists" if out == path else f"would replace {found}"
                raise ValueError(f"output {path} {which}; pass force=True (--force) to overwrite it")
    if not path.parent.is_dir():
        raise ValueError(f"output folder {path.parent} does not exist; create it first")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ValueError(f"output folder {path.parent} is not writable; choose another output path")
    return path

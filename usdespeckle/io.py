"""Reading and writing images with SimpleITK: input validation and atomic writes.

Everything SimpleITK reads is accepted (NIfTI, NRRD, MHA/MHD, PNG/JPEG/TIFF/BMP, a DICOM file, a
folder holding a DICOM series, multi-frame ultrasound DICOM as a volume). Colour frames that hold
grey images (the usual ultrasound DICOM export) become grey. Writes go to a temporary file in the
output's folder and are moved into place with ``os.replace``, so an interrupted run never leaves a
partial output behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

__all__ = ["MIN_SIZE", "check_output_path", "read_image", "to_grey", "validate_image", "write_image"]

#: Default smallest accepted in-plane side, pixels.
MIN_SIZE = 16

# ITU-R BT.601 luma weights, the usual RGB -> grey conversion for video frames.
_LUMA = (0.299, 0.587, 0.114)

# Formats that hold only 8- or 16-bit integers (SimpleITK refuses float pixels there).
_INTEGER_ONLY = {
    ".png": (np.uint8, np.uint16),
    ".jpg": (np.uint8,),
    ".jpeg": (np.uint8,),
    ".bmp": (np.uint8,),
}
_DICOM = {".dcm", ".dicom"}
_2D_ONLY = {".png", ".jpg", ".jpeg", ".bmp"}
_COMPRESSED = {".nii.gz", ".nrrd", ".mha", ".mhd"}


def _suffix(path: Path) -> str:
    """Lower-case extension, keeping the compound ``.nii.gz``."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def to_grey(image: sitk.Image) -> sitk.Image:
    """Turn a vector-pixel (RGB, RGBA, grey + alpha) image into a scalar grey image.

    Args:
        image: any SimpleITK image. Scalar images are returned unchanged.

    Returns:
        A scalar image with the same geometry: the first channel when the colour channels are equal
        (a grey image stored as RGB), else the BT.601 luminance ``0.299 R + 0.587 G + 0.114 B`` as
        float32. Metadata is kept.

    Raises:
        ValueError: if the pixel has a number of components other than 1-4.
    """
    n = image.GetNumberOfComponentsPerPixel()
    if n == 1:
        return image
    if n > 4:
        raise ValueError(
            f"image has {n} components per pixel; expected a grey image or RGB(A) frames. "
            "Convert it to a single-channel image first."
        )
    channels = [sitk.VectorIndexSelectionCast(image, c) for c in range(min(n, 3))]
    if n == 2:  # grey + alpha
        grey = channels[0]
    else:
        arrays = [sitk.GetArrayViewFromImage(c) for c in channels]
        if all(np.array_equal(arrays[0], a) for a in arrays[1:]):
            grey = channels[0]
        else:
            weighted = [sitk.Cast(c, sitk.sitkFloat32) * w for c, w in zip(channels, _LUMA, strict=True)]
            grey = weighted[0] + weighted[1] + weighted[2]
    grey.CopyInformation(image)
    for key in image.GetMetaDataKeys():
        grey.SetMetaData(key, image.GetMetaData(key))
    return grey


def validate_image(image: sitk.Image, *, min_size: int = MIN_SIZE, name: str = "image") -> None:
    """Check that an image is something the despecklers can process.

    Args:
        image: scalar SimpleITK image, 2D or 3D.
        min_size: smallest accepted side, pixels, for both sides of a 2D image and the two largest
            sides of a volume (a volume may hold only a few slices).
        name: how to call the image in error messages (usually its path).

    Raises:
        ValueError: for vector pixels, more than 3 dimensions, an empty or too small image, NaN or
            infinite values, or a constant image.
    """
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{name}: has vector pixels; call usdespeckle.io.to_grey first")
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
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ValueError(f"{name}: holds {bad} NaN or infinite values; fix or mask them before despeckling")
    lo, hi = array.min(), array.max()
    if lo == hi:
        raise ValueError(f"{name}: is constant (every pixel is {lo}); there is nothing to despeckle")


def _read_dicom_series(folder: Path) -> sitk.Image:
    """Read the DICOM series with the most files in ``folder``."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ValueError(
            f"{folder}: is a folder without a DICOM series; give an image file or a DICOM folder"
        )
    files = max(
        (sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s) for s in series),
        key=len,
    )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return reader.Execute()


def read_image(path: str | os.PathLike, *, min_size: int = MIN_SIZE) -> sitk.Image:
    """Read and validate a grey 2D image or 3D volume.

    Args:
        path: an image file in any format SimpleITK reads, or a folder holding a DICOM series
            (the largest series is read when there are several).
        min_size: smallest accepted image side, pixels (see :func:`validate_image`).

    Returns:
        A scalar SimpleITK image (2D or 3D) with the file's geometry and metadata. Colour frames
        become grey (see :func:`to_grey`); a 4D image with a single time point becomes 3D.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file cannot be read (corrupt, unknown format) or fails validation.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    try:
        image = _read_dicom_series(path) if path.is_dir() else sitk.ReadImage(str(path))
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = next(
            (line for line in first if "ERROR" in line or "Unable" in line), first[-1] if first else ""
        )
        raise ValueError(
            f"{path}: cannot be read as an image (corrupt file or unknown format): {detail.strip()[:200]}"
        ) from None
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        size = list(image.GetSize())
        size[3] = 0
        image = sitk.Extract(image, size, [0, 0, 0, 0])
    image = to_grey(image)
    validate_image(image, min_size=min_size, name=str(path))
    return image


def check_output_path(
    path: str | os.PathLike, *, force: bool = False, source: str | os.PathLike | None = None
) -> Path:
    """Check an output path before any work is done.

    Args:
        path: where the output will be written; its extension names the format.
        force: allow replacing an existing file.
        source: the input path, which must never be overwritten.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: if ``path`` is the input, exists and ``force`` is false, is a folder, or its
            folder does not exist.
    """
    path = Path(path)
    if source is not None:
        src = Path(source)
        same = path.exists() and src.exists() and os.path.samefile(path, src)
        if same or path.resolve() == src.resolve():
            raise ValueError(f"output {path} is the input file; choose another output path")
    if path.is_dir():
        raise ValueError(f"output {path} is a folder; give a file name such as {path / 'output.nii.gz'}")
    if path.exists() and not force:
        raise ValueError(f"output {path} exists; pass force=True (--force) to overwrite it")
    if not path.parent.is_dir():
        raise ValueError(f"output folder {path.parent} does not exist; create it first")
    return path


def _cast_for_format(image: sitk.Image, suffix: str) -> sitk.Image:
    """Cast to an integer pixel type the format can hold (PNG/JPEG/BMP/DICOM)."""
    if suffix in _DICOM:
        allowed: tuple[type, ...] = (np.uint8, np.uint16, np.int16)
    elif suffix in _INTEGER_ONLY:
        allowed = _INTEGER_ONLY[suffix]
    else:
        return image
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype in allowed:
        return image
    lo, hi = float(array.min()), float(array.max())
    for dtype in allowed:
        info = np.iinfo(dtype)
        # Values already in the type's range (a despeckled uint8 image, say) are rounded and kept.
        if lo >= info.min - 0.5 and hi <= info.max + 0.5:
            out = np.clip(np.rint(array), info.min, info.max).astype(dtype)
            break
    else:  # out of range: stretch min..max onto the largest allowed unsigned type
        dtype = allowed[-1] if suffix not in _DICOM else np.uint16
        scale = (np.iinfo(dtype).max / (hi - lo)) if hi > lo else 0.0
        out = np.rint((array.astype(np.float64) - lo) * scale).astype(dtype)
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(image)
    return result


def write_image(
    image: sitk.Image,
    path: str | os.PathLike,
    *,
    force: bool = False,
    source: str | os.PathLike | None = None,
) -> Path:
    """Write an image atomically in the format its extension names.

    The image is written into a temporary folder beside ``path`` and moved into place with
    ``os.replace`` (data files first, the named file last, so two-file formats such as MHD/RAW
    never show a header without data); an interrupted run leaves no partial output.

    PNG keeps values in [0, 255] as uint8 and in [0, 65535] as uint16; JPEG and BMP take uint8;
    DICOM takes uint8, uint16 or int16. Float values in range are rounded; values outside every
    allowed range are stretched from min..max onto the full range of the widest allowed type.

    Args:
        image: scalar SimpleITK image, 2D or 3D.
        path: output file; ``.nii.gz``, ``.nrrd``, ``.mha``, ``.mhd``, ``.tif``, ``.png``, ...
        force: overwrite an existing output.
        source: the input path, refused as output.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: see :func:`check_output_path`; also for a volume written to a 2D-only format
            or a format SimpleITK cannot write.
    """
    path = check_output_path(path, force=force, source=source)
    suffix = _suffix(path)
    if suffix in _2D_ONLY and image.GetDimension() != 2:
        raise ValueError(
            f"cannot write a {image.GetDimension()}D image of size {image.GetSize()} to {suffix}; "
            "use .nii.gz, .nrrd, .mha or .tif"
        )
    image = _cast_for_format(image, suffix)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        try:
            sitk.WriteImage(image, str(tmp / path.name), useCompression=suffix in _COMPRESSED)
        except RuntimeError as err:
            raise ValueError(f"cannot write {path}: {str(err).strip().splitlines()[-1][:200]}") from None
        written = sorted(tmp.iterdir(), key=lambda p: p.name == path.name)
        for part in written:
            os.replace(part, path.parent / part.name)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
    return path

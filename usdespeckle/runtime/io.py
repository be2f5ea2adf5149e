"""Reading and writing images with SimpleITK: verified atomic writes.

Everything SimpleITK reads is accepted (NIfTI, NRRD, MHA/MHD, PNG/JPEG/TIFF/BMP, a DICOM file, a
folder holding a DICOM series, multi-frame ultrasound DICOM as a volume). Colour frames that hold
grey images (the usual ultrasound DICOM export) become grey; any other multi-component image
(complex, vector fields) is refused.

Reading first checks the file's header bytes (:mod:`usdespeckle.runtime.io_headers`: no NRRD or MetaImage
header may name a data file outside its own folder, or any for an upload; DICOM pixel data must be
as long as its header declares), then the header SimpleITK reads (a voxel limit, before any pixel
memory is allocated), and reads NIfTI files a second time through nibabel, because SimpleITK's
NIfTI reader turns NaN and infinite voxels into 0 and reads a truncated file as zero-filled
without an error. Those checks, and the checks of output paths, live in
:mod:`usdespeckle.runtime.io_checks` (their names are importable from here too).

Writes go to a temporary folder beside the output (:func:`usdespeckle.runtime.atomic.temporary_folder`),
are read back and compared with what was meant to be written (SimpleITK's NIfTI and PNG writers
only print a warning on a full disk), and are then moved into place with ``os.replace``: an
existing output is replaced only by a verified file, and an interrupted run never leaves a partial
output behind.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from usdespeckle.runtime.atomic import fsync_path, remove_stale_temporaries, temporary_folder
from usdespeckle.runtime.io_checks import (
    MIN_SIZE,
    NIFTI_SUFFIXES,
    check_nifti,
    check_output_path,
    check_voxels,
    existing_case_insensitive,
    first_line,
    image_suffix,
    validate_image,
)
from usdespeckle.runtime.io_headers import SELF_CONTAINED_SUFFIXES, check_input_file
from usdespeckle.runtime.options import MAX_VOXELS

__all__ = [
    "read_image",
    "to_grey",
    "write_image",
]

logger = logging.getLogger(__name__)

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
_COMPRESSED = {".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"}
_LOSSY = {".jpg", ".jpeg"}
# Pixel types of colour images (RGB, RGBA, grey + alpha): integer components.
_COLOUR_PIXELS = {
    sitk.sitkVectorUInt8,
    sitk.sitkVectorInt8,
    sitk.sitkVectorUInt16,
    sitk.sitkVectorInt16,
    sitk.sitkVectorUInt32,
    sitk.sitkVectorInt32,
}


def to_grey(image: sitk.Image) -> sitk.Image:
    """Turn a colour (RGB, RGBA, grey + alpha) image into a scalar grey image.

    Args:
        image: any SimpleITK image. Scalar images are returned unchanged.

    Returns:
        A scalar image with the same geometry: the first channel when the colour channels are equal
        (a grey image stored as RGB) or for grey + alpha, else the BT.601 luminance
        ``0.299 R + 0.587 G + 0.114 B`` as float32. Metadata is kept.

    Raises:
        ValueError: if the pixel has more than 4 components, or components that are not integers
            (a complex image read as a 2-vector, a vector field): those are not colour images.
    """
    n = image.GetNumberOfComponentsPerPixel()
    if n == 1:
        return image
    if n > 4 or image.GetPixelID() not in _COLOUR_PIXELS:
        raise ValueError(
            f"image has {n} components per pixel of type {image.GetPixelIDTypeAsString()} (a complex "
            "or vector-valued image); only grey, RGB, RGBA and grey + alpha images are accepted. "
            "Save the magnitude or one component as a grey image first."
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


def _dicom_series_files(folder: Path) -> list[str]:
    """The file names of the DICOM series with the most files in ``folder``."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ValueError(
            f"{folder}: is a folder without a DICOM series; give an image file or a DICOM folder"
        )
    return list(max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s) for s in series), key=len))


def _header(path: Path, image_io: str = "") -> tuple[tuple[int, ...], int]:
    """Size and components per pixel from the file's header, without reading the pixels."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO(image_io)
    reader.ReadImageInformation()
    return tuple(reader.GetSize()), reader.GetNumberOfComponents()


def _read_with_pillow(path: Path, max_voxels: int) -> sitk.Image:
    """Read a raster image SimpleITK's readers refuse (grey + alpha PNG); alpha is dropped."""
    from PIL import Image

    try:
        opened = Image.open(path)
    except Image.DecompressionBombError as err:  # the size Pillow read from the header
        raise ValueError(f"{path}: declares too many pixels ({first_line(err)})") from None
    with opened as picture:
        check_voxels(str(path), picture.size, len(picture.getbands()), max_voxels)
        if picture.mode in ("LA", "La", "PA", "P"):
            picture = picture.convert("LA").getchannel("L")
        elif picture.mode not in ("L", "I;16", "I", "F"):
            raise ValueError(f"{path}: has {picture.mode} pixels, which are not read here")
        return sitk.GetImageFromArray(np.asarray(picture))


def read_image(
    path: str | os.PathLike,
    *,
    min_size: int = MIN_SIZE,
    max_voxels: int = MAX_VOXELS,
    self_contained: bool = False,
) -> sitk.Image:
    """Read and validate a grey 2D image or 3D volume.

    Args:
        path: an image file in any format SimpleITK reads, or a folder holding a DICOM series
            (the largest series is read when there are several).
        min_size: smallest accepted image side, pixels (see :func:`validate_image`).
        max_voxels: largest accepted number of values (voxels x components) the header declares,
            checked before the pixels are read; default :data:`MAX_VOXELS`.
        self_contained: True for a file from an untrusted sender (an upload to the server): one
            file whose extension is one of :data:`SELF_CONTAINED_SUFFIXES`, read by that format's
            reader only, whose header names no other file. False (a local input): a two-file
            format's header may name a data file in its own folder only. Either way the header
            bytes are checked before any reader opens the file (:mod:`usdespeckle.runtime.io_headers`).

    Returns:
        A scalar SimpleITK image (2D or 3D) with the file's geometry and metadata. Colour frames
        become grey (see :func:`to_grey`); a 4D image with a single time point becomes 3D.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file cannot be read (corrupt, truncated, unknown format), declares more
            than ``max_voxels`` values, or fails validation.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    suffix = image_suffix(path)
    image_io = SELF_CONTAINED_SUFFIXES.get(suffix, "") if self_contained else ""
    try:
        if path.is_dir():
            if self_contained:
                raise ValueError(f"{path}: is a folder; an upload must be one image file")
            files = _dicom_series_files(path)
            for file in files:
                check_input_file(file)
            size, components = _header(Path(files[0]))
            check_voxels(str(path), (*size[:2], len(files) * (size[2] if len(size) > 2 else 1)),
                          components, max_voxels)  # fmt: skip
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            image = reader.Execute()
        else:
            check_input_file(path, self_contained=self_contained)
            try:
                size, components = _header(path, image_io)
            except RuntimeError:
                if suffix != ".png":
                    raise
                image = _read_with_pillow(path, max_voxels)  # grey + alpha, which SimpleITK refuses
            else:
                check_voxels(str(path), size, components, max_voxels)
                if suffix in NIFTI_SUFFIXES:
                    check_nifti(path, max_voxels)
                image = sitk.ReadImage(str(path), imageIO=image_io)
    except (RuntimeError, OSError) as err:
        raise ValueError(
            f"{path}: cannot be read as an image (corrupt file or unknown format): {first_line(err)}"
        ) from None
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        size = list(image.GetSize())
        size[3] = 0
        image = sitk.Extract(image, size, [0, 0, 0, 0])
    try:
        image = to_grey(image)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    validate_image(image, min_size=min_size, name=str(path))
    return image


def _cast_for_format(image: sitk.Image, suffix: str, notice: Callable[[str], None]) -> sitk.Image:
    """Cast to an integer pixel type the format can hold (PNG/JPEG/BMP/DICOM); say when values are scaled."""
    if suffix in _DICOM:
        # GDCM writes int16 only for 2D images; volumes take unsigned types
        allowed: tuple[type, ...] = (np.uint8, np.uint16, np.int16)
        if image.GetDimension() == 3:
            allowed = (np.uint8, np.uint16)
    elif suffix in _INTEGER_ONLY:
        allowed = _INTEGER_ONLY[suffix]
    else:
        return image
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype in allowed:
        return image
    lo, hi = float(array.min()), float(array.max())
    fractional = np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.rint(array))
    widest = allowed[-1] if suffix not in _DICOM else np.uint16
    if fractional and lo >= 0.0 and hi <= 1.0:  # the library's [0, 1] convention: scale, never round to 0/1
        top = np.iinfo(allowed[0]).max
        out = np.rint(array.astype(np.float64) * top).astype(allowed[0])
        notice(f"values in [0, 1] written as 0-{top} ({np.dtype(allowed[0]).name}): {suffix} holds integers")
    else:
        for dtype in allowed:
            info = np.iinfo(dtype)
            # Values already in the type's range (a despeckled uint8 image, say) are rounded and kept,
            # unless rounding would leave fewer than 16 grey levels of fractional values.
            if lo >= info.min - 0.5 and hi <= info.max + 0.5 and not (fractional and hi - lo < 16):
                out = np.clip(np.rint(array), info.min, info.max).astype(dtype)
                break
        else:  # out of range or too narrow: stretch min..max onto the widest allowed unsigned type
            top = np.iinfo(widest).max
            scale = (top / (hi - lo)) if hi > lo else 0.0
            out = np.rint((array.astype(np.float64) - lo) * scale).astype(widest)
            notice(f"values {lo:.4g}..{hi:.4g} stretched onto 0-{top} ({np.dtype(widest).name}): "
                   f"{suffix} holds integers")  # fmt: skip
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(image)
    return result


#: Metadata entries copied into an output: at most this many, each value at most this long.
MAX_METADATA_ENTRIES, MAX_METADATA_VALUE = 256, 1024


def _trimmed_metadata(image: sitk.Image) -> sitk.Image:
    """``image`` without metadata entries over the limits (an input's huge header text is not copied)."""
    keys = image.GetMetaDataKeys()
    drop = [k for i, k in enumerate(keys) if i >= MAX_METADATA_ENTRIES or len(k) > 128
            or len(image.GetMetaData(k)) > MAX_METADATA_VALUE]  # fmt: skip
    if not drop:
        return image
    kept = sitk.Cast(image, image.GetPixelID())  # same pixels and geometry, no metadata (the input's stays)
    for key in keys:
        if key not in drop:
            kept.SetMetaData(key, image.GetMetaData(key))
    return kept


def _verify(written: Path, expected: sitk.Image, suffix: str) -> None:
    """Read a written file back and compare it with the image meant to be written.

    Raises:
        ValueError: the file cannot be read back, or its size, pixel type or values differ.
    """
    if suffix in NIFTI_SUFFIXES:
        check_nifti(written, max_voxels=2**63)  # truncation (SimpleITK reads it zero-filled)
    try:
        back = sitk.ReadImage(str(written))
    except RuntimeError as err:
        raise ValueError(f"the written file cannot be read back: {first_line(err)}") from None
    if back.GetDimension() == 3 and expected.GetDimension() == 2 and back.GetSize()[2] == 1:
        back = back[:, :, 0]  # GDCM reads a 2D DICOM as a volume of one slice
    if suffix == ".bmp" and back.GetNumberOfComponentsPerPixel() == 3:
        back = to_grey(back)  # ITK reads a grey BMP (8-bit palette) back as RGB with equal channels
    if back.GetSize() != expected.GetSize() or (
        back.GetNumberOfComponentsPerPixel() != expected.GetNumberOfComponentsPerPixel()
    ):
        raise ValueError(
            f"the written file holds size {back.GetSize()} x {back.GetNumberOfComponentsPerPixel()} "
            f"components, expected {expected.GetSize()} x {expected.GetNumberOfComponentsPerPixel()}"
        )
    if suffix in _LOSSY:
        return
    got, want = sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(expected)
    if got.shape != want.shape or not np.array_equal(got, want):
        raise ValueError("the written file's pixels differ from the result's (truncated or corrupt file)")


def write_image(
    image: sitk.Image,
    path: str | os.PathLike,
    *,
    force: bool = False,
    source: str | os.PathLike | None = None,
    notice: Callable[[str], None] | None = None,
) -> Path:
    """Write an image atomically in the format its extension names, and verify it.

    The image is written into a temporary folder beside ``path``, read back and compared with what
    was meant to be written (size, pixel values; size only for lossy JPEG), flushed to disk, then
    moved into place with ``os.replace`` (data files first, the named file last, so two-file
    formats such as MHD/RAW never show a header without data). An existing output is therefore
    replaced only by a verified file; a full disk or an interrupted run leaves it unchanged.
    Temporary folders that killed runs left beside ``path`` are removed first.

    PNG keeps values in [0, 255] as uint8 and in [0, 65535] as uint16; JPEG and BMP take uint8;
    DICOM takes uint8, uint16 or (2D) int16. Integer-valued floats in range are kept; fractional
    values in [0, 1] (the library's convention) are scaled to 0-255; other fractional values
    spanning fewer than 16 grey levels, and values outside every allowed range, are stretched from
    min..max onto the full range of the widest allowed type. Scaling is announced through
    ``notice``. Metadata entries over :data:`MAX_METADATA_VALUE` characters (or beyond the first
    :data:`MAX_METADATA_ENTRIES`) are not copied into the output.

    Args:
        image: scalar SimpleITK image, 2D or 3D.
        path: output file; one of :data:`OUTPUT_SUFFIXES` (``.nii.gz``, ``.nrrd``, ``.mha``,
            ``.mhd``, ``.tif``, ``.png``, ...).
        force: overwrite an existing output.
        source: the input path, refused as output (see :func:`check_output_path`).
        notice: called with one line when values are scaled to fit the format; default: this
            module's logger (a warning).

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: see :func:`check_output_path`; also when writing or verification fails (a full
            disk, a read-only folder), with the existing output left unchanged.
    """
    path = check_output_path(path, force=force, source=source, dimension=image.GetDimension())
    suffix = image_suffix(path)
    say = notice or logger.warning
    image = _trimmed_metadata(_cast_for_format(image, suffix, lambda text: say(f"{path}: {text}")))
    # only this output's own leftovers: the folder may hold other programs' .tmp files
    remove_stale_temporaries(path.parent, destination=lambda name: name == path.name)
    try:
        with temporary_folder(path) as tmp:
            parts = _write_verified(image, path, tmp, suffix)
            if not force:  # the data files may have names the checks could not predict
                for part in parts:
                    if existing_case_insensitive(path.parent / part.name) is not None:
                        raise ValueError(
                            f"output {path} would replace {path.parent / part.name}; pass --force"
                        )
            for part in parts:  # data files first, the named file last
                os.replace(part, path.parent / part.name)
            fsync_path(path.parent)
    except OSError as err:
        raise ValueError(
            f"cannot write {path}: {err.strerror or err}; an existing output was left unchanged"
        ) from None
    return path


def _write_verified(image: sitk.Image, path: Path, tmp: Path, suffix: str) -> list[Path]:
    """Write ``image`` as ``tmp / path.name``, verify it, flush it; the files written, named file last."""
    try:
        sitk.WriteImage(image, str(tmp / path.name), useCompression=suffix in _COMPRESSED)
    except RuntimeError as err:
        raise ValueError(f"cannot write {path}: {first_line(err)}") from None
    written = list(tmp.iterdir())
    named = tmp / path.name
    if named not in written:
        raise ValueError(f"cannot write {path}: the writer made {sorted(p.name for p in written)}")
    try:
        _verify(named, image, suffix)
    except ValueError as err:
        raise ValueError(f"cannot write {path}: {err}; the disk may be full. Nothing was replaced") from None
    parts = sorted(written, key=lambda p: p.name == path.name)
    for part in parts:
        fsync_path(part)
    return parts

"""Reading and writing images with SimpleITK: input validation and verified atomic writes.

Everything SimpleITK reads is accepted (NIfTI, NRRD, MHA/MHD, PNG/JPEG/TIFF/BMP, a DICOM file, a
folder holding a DICOM series, multi-frame ultrasound DICOM as a volume). Colour frames that hold
grey images (the usual ultrasound DICOM export) become grey; any other multi-component image
(complex, vector fields) is refused.

Reading checks the header first (a voxel limit, before any pixel memory is allocated) and reads
NIfTI files a second time through nibabel, because SimpleITK's NIfTI reader turns NaN and
infinite voxels into 0 and reads a truncated file as zero-filled without an error.

Writes go to a temporary folder beside the output, are read back and compared with what was meant
to be written (SimpleITK's NIfTI and PNG writers only print a warning on a full disk), and are then
moved into place with ``os.replace``: an existing output is replaced only by a verified file, and
an interrupted run never leaves a partial output behind.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

__all__ = [
    "MAX_ABS_VALUE",
    "MAX_VOXELS",
    "MIN_SIZE",
    "OUTPUT_SUFFIXES",
    "check_output_path",
    "image_files",
    "read_image",
    "remove_stale_temporaries",
    "to_grey",
    "validate_image",
    "write_image",
]

#: Default smallest accepted in-plane side, pixels.
MIN_SIZE = 16
#: Default largest accepted number of values (voxels x components per voxel) an input may declare:
#: 2**28, 1 GiB as float32 (a 1024 x 512 x 512 volume, or 900 frames of 600 x 480 x RGB).
MAX_VOXELS = 2**28
#: Largest accepted absolute pixel value: the despecklers compute in float32 (largest 3.4e38), and
#: the intensity range (max - min) must stay finite there.
MAX_ABS_VALUE = 1e30

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
_COMPRESSED = {".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"}
_LOSSY = {".jpg", ".jpeg"}
_NIFTI = {".nii", ".nii.gz", ".hdr", ".img"}
# ITK's MetaImage and NIfTI writers need these extensions in lower case (x.MHA becomes x.mhd + x.raw).
_LOWER_CASE_ONLY = {".mha", ".mhd", ".nii", ".nii.gz", ".hdr"}
#: Output extensions :func:`write_image` writes (the extension names the format).
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
# Pixel types of colour images (RGB, RGBA, grey + alpha): integer components.
_COLOUR_PIXELS = {
    sitk.sitkVectorUInt8,
    sitk.sitkVectorInt8,
    sitk.sitkVectorUInt16,
    sitk.sitkVectorInt16,
    sitk.sitkVectorUInt32,
    sitk.sitkVectorInt32,
}
# The prefix of the temporary folders write_image makes beside an output: ``.{name}.{pid}.``.
_TMP_SUFFIX = ".tmp"


def _suffix(path: Path) -> str:
    """Lower-case extension, keeping the compound ``.nii.gz``."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _stem(path: Path) -> str:
    name, suffix = path.name, _suffix(path)
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
    suffix = _suffix(path)
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


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    detail = next((line for line in lines if "ERROR" in line or "Unable" in line), lines[-1] if lines else "")
    return detail[:200]


def _check_voxels(name: str, size: tuple[int, ...], components: int, max_voxels: int) -> None:
    values = math.prod(size) * max(1, components)
    if values > max_voxels:
        raise ValueError(
            f"{name}: declares {values:,} values (size {tuple(size)}, {components} per voxel), more "
            f"than the limit of {max_voxels:,}; crop it, or raise the limit (--max-voxels, max_voxels=) "
            "if the machine has the memory (4 bytes per value, twice)"
        )


def _dicom_series_files(folder: Path) -> list[str]:
    """The file names of the DICOM series with the most files in ``folder``."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ValueError(
            f"{folder}: is a folder without a DICOM series; give an image file or a DICOM folder"
        )
    return list(max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s) for s in series), key=len))


def _header(path: Path) -> tuple[tuple[int, ...], int]:
    """Size and components per pixel from the file's header, without reading the pixels."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return tuple(reader.GetSize()), reader.GetNumberOfComponents()


def _check_nifti(path: Path, max_voxels: int) -> None:
    """Read a NIfTI / Analyze file through nibabel, which sees truncation and NaN (SimpleITK does not)."""
    try:
        import nibabel as nib
    except ImportError:
        raise ValueError(
            f"{path}: reading NIfTI safely needs nibabel (pip install nibabel), which is not installed"
        ) from None

    try:
        nifti = nib.load(str(path))
        _check_voxels(str(path), tuple(int(s) for s in nifti.shape), 1, max_voxels)
        data = np.asanyarray(nifti.dataobj)
    except ValueError as err:
        if "declares" in str(err):
            raise
        raise ValueError(f"{path}: is truncated or corrupt: {_first_line(err)}") from None
    except (OSError, EOFError, MemoryError) as err:
        raise ValueError(f"{path}: is truncated or corrupt: {_first_line(err)}") from None
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise ValueError(f"{path}: holds {bad} NaN or infinite values; fix or mask them before despeckling")


def _read_with_pillow(path: Path, max_voxels: int) -> sitk.Image:
    """Read a raster image SimpleITK's readers refuse (grey + alpha PNG); alpha is dropped."""
    from PIL import Image

    with Image.open(path) as picture:
        _check_voxels(str(path), picture.size, len(picture.getbands()), max_voxels)
        if picture.mode in ("LA", "La", "PA", "P"):
            picture = picture.convert("LA").getchannel("L")
        elif picture.mode not in ("L", "I;16", "I", "F"):
            raise ValueError(f"{path}: has {picture.mode} pixels, which are not read here")
        return sitk.GetImageFromArray(np.asarray(picture))


def read_image(
    path: str | os.PathLike, *, min_size: int = MIN_SIZE, max_voxels: int = MAX_VOXELS
) -> sitk.Image:
    """Read and validate a grey 2D image or 3D volume.

    Args:
        path: an image file in any format SimpleITK reads, or a folder holding a DICOM series
            (the largest series is read when there are several).
        min_size: smallest accepted image side, pixels (see :func:`validate_image`).
        max_voxels: largest accepted number of values (voxels x components) the header declares,
            checked before the pixels are read; default :data:`MAX_VOXELS`.

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
    suffix = _suffix(path)
    try:
        if path.is_dir():
            files = _dicom_series_files(path)
            size, components = _header(Path(files[0]))
            _check_voxels(str(path), (*size[:2], len(files) * (size[2] if len(size) > 2 else 1)),
                          components, max_voxels)  # fmt: skip
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            image = reader.Execute()
        else:
            try:
                size, components = _header(path)
            except RuntimeError:
                if suffix != ".png":
                    raise
                image = _read_with_pillow(path, max_voxels)  # grey + alpha, which SimpleITK refuses
            else:
                _check_voxels(str(path), size, components, max_voxels)
                if suffix in _NIFTI:
                    _check_nifti(path, max_voxels)
                image = sitk.ReadImage(str(path))
    except (RuntimeError, OSError) as err:
        raise ValueError(
            f"{path}: cannot be read as an image (corrupt file or unknown format): {_first_line(err)}"
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


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file, case-insensitively (the MetaImage writer lower-cases names)."""
    with contextlib.suppress(OSError):
        if a.exists() and b.exists() and os.path.samefile(a, b):
            return True
    if a.name.lower() != b.name.lower():
        return False
    with contextlib.suppress(OSError):
        return a.parent.resolve() == b.parent.resolve() or os.path.samefile(a.parent, b.parent)
    return False


def _existing(path: Path) -> Path | None:
    """The file in ``path``'s folder whose name equals ``path``'s case-insensitively, if any."""
    if path.exists():
        return path
    with contextlib.suppress(OSError):
        lower = path.name.lower()
        for entry in os.scandir(path.parent):
            if entry.name.lower() == lower:
                return path.parent / entry.name
    return None


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
            files, exists and ``force`` is false, is a folder, has an extension no writer knows (or
            an upper-case .MHA, .MHD, .NII, .NII.GZ, .HDR, which ITK mishandles), is a 2D-only
            format for a volume, or its folder does not exist or is not writable.
    """
    path = Path(path)
    suffix = _suffix(path)
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
        inputs = image_files(source)
        for out in outputs:
            for inp in inputs:
                if _same_file(out, inp):
                    what = (
                        "is the input file" if out == path and inp == inputs[0] else f"would overwrite {inp}"
                    )
                    raise ValueError(
                        f"output {path} {what}, part of the input {source}; choose another output path"
                    )
    if suffix in _LOWER_CASE_ONLY and not path.name.endswith(suffix):
        raise ValueError(
            f"output {path}: write the extension in lower case ({suffix}); ITK's MetaImage and NIfTI "
            "writers mishandle upper-case ones"
        )
    if path.is_dir():
        raise ValueError(f"output {path} is a folder; give a file name such as {path / 'output.nii.gz'}")
    if not force:
        for out in outputs:
            found = _existing(out)
            if found is not None:
                which = "exists" if out == path else f"would replace {found}"
                raise ValueError(f"output {path} {which}; pass force=True (--force) to overwrite it")
    if not path.parent.is_dir():
        raise ValueError(f"output folder {path.parent} does not exist; create it first")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ValueError(f"output folder {path.parent} is not writable; choose another output path")
    return path


def _cast_for_format(image: sitk.Image, suffix: str) -> sitk.Image:
    """Cast to an integer pixel type the format can hold (PNG/JPEG/BMP/DICOM)."""
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


def remove_stale_temporaries(folder: str | os.PathLike, *, older_than_s: float = 3600.0) -> list[Path]:
    """Remove the temporary folders that killed writes left in ``folder``.

    :func:`write_image` names them ``.{output name}.{pid}.{random}.tmp``; one is stale when its
    process no longer runs, or (a pid reused by another program) when it is older than
    ``older_than_s`` seconds.

    Args:
        folder: an output folder.
        older_than_s: age beyond which a temporary folder is removed even if its pid runs, seconds.

    Returns:
        The folders removed.
    """
    removed = []
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if not (entry.name.startswith(".") and entry.name.endswith(_TMP_SUFFIX) and entry.is_dir()):
                continue
            parts = entry.name[: -len(_TMP_SUFFIX)].rsplit(".", 2)
            if len(parts) != 3 or not parts[1].isdigit():
                continue
            alive = True
            try:
                os.kill(int(parts[1]), 0)
            except ProcessLookupError:
                alive = False
            except (PermissionError, OverflowError, OSError):
                pass
            with contextlib.suppress(OSError):
                if not alive or now - entry.stat().st_mtime > older_than_s:
                    shutil.rmtree(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _verify(written: Path, expected: sitk.Image, suffix: str) -> None:
    """Read a written file back and compare it with the image meant to be written.

    Raises:
        ValueError: the file cannot be read back, or its size, pixel type or values differ.
    """
    if suffix in _NIFTI:
        _check_nifti(written, max_voxels=2**63)  # truncation (SimpleITK reads it zero-filled)
    try:
        back = sitk.ReadImage(str(written))
    except RuntimeError as err:
        raise ValueError(f"the written file cannot be read back: {_first_line(err)}") from None
    if back.GetDimension() == 3 and expected.GetDimension() == 2 and back.GetSize()[2] == 1:
        back = back[:, :, 0]  # GDCM reads a 2D DICOM as a volume of one slice
    if back.GetSize() != expected.GetSize() or (
        back.GetNumberOfComponentsPerPixel() != expected.GetNumberOfComponentsPerPixel()
    ):
        raise ValueError(f"the written file holds size {back.GetSize()}, expected {expected.GetSize()}")
    if suffix in _LOSSY:
        return
    got, want = sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(expected)
    if got.shape != want.shape or not np.array_equal(got, want):
        raise ValueError("the written file's pixels differ from the result's (truncated or corrupt file)")


def _sync(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_image(
    image: sitk.Image,
    path: str | os.PathLike,
    *,
    force: bool = False,
    source: str | os.PathLike | None = None,
) -> Path:
    """Write an image atomically in the format its extension names, and verify it.

    The image is written into a temporary folder beside ``path``, read back and compared with what
    was meant to be written (size, pixel values; size only for lossy JPEG), flushed to disk, then
    moved into place with ``os.replace`` (data files first, the named file last, so two-file
    formats such as MHD/RAW never show a header without data). An existing output is therefore
    replaced only by a verified file; a full disk or an interrupted run leaves it unchanged.
    Temporary folders that killed runs left beside ``path`` are removed first.

    PNG keeps values in [0, 255] as uint8 and in [0, 65535] as uint16; JPEG and BMP take uint8;
    DICOM takes uint8, uint16 or (2D) int16. Float values in range are rounded; values outside every
    allowed range are stretched from min..max onto the full range of the widest allowed type.

    Args:
        image: scalar SimpleITK image, 2D or 3D.
        path: output file; one of :data:`OUTPUT_SUFFIXES` (``.nii.gz``, ``.nrrd``, ``.mha``,
            ``.mhd``, ``.tif``, ``.png``, ...).
        force: overwrite an existing output.
        source: the input path, refused as output (see :func:`check_output_path`).

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: see :func:`check_output_path`; also when writing or verification fails (a full
            disk, a read-only folder), with the existing output left unchanged.
    """
    path = check_output_path(path, force=force, source=source, dimension=image.GetDimension())
    suffix = _suffix(path)
    image = _cast_for_format(image, suffix)
    remove_stale_temporaries(path.parent)
    try:
        tmp = Path(
            tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=_TMP_SUFFIX, dir=path.parent)
        )
    except OSError as err:
        raise ValueError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        try:
            sitk.WriteImage(image, str(tmp / path.name), useCompression=suffix in _COMPRESSED)
        except RuntimeError as err:
            raise ValueError(f"cannot write {path}: {_first_line(err)}") from None
        written = list(tmp.iterdir())
        named = tmp / path.name
        if named not in written:
            raise ValueError(f"cannot write {path}: the writer made {sorted(p.name for p in written)}")
        try:
            _verify(named, image, suffix)
        except ValueError as err:
            raise ValueError(
                f"cannot write {path}: {err}; the disk may be full. Nothing was replaced"
            ) from None
        parts = sorted(written, key=lambda p: p.name == path.name)
        for part in parts:
            _sync(part)
        if not force:  # the data files may have names the checks could not predict
            for part in parts:
                if _existing(path.parent / part.name) is not None:
                    raise ValueError(f"output {path} would replace {path.parent / part.name}; pass --force")
        for part in parts:
            os.replace(part, path.parent / part.name)
        _sync(path.parent)
    except OSError as err:
        raise ValueError(
            f"cannot write {path}: {err.strerror or err}; an existing output was left unchanged"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
    return path

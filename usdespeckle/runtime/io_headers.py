"""Checks of a file's header bytes before any image reader sees the file (used by :mod:`usdespeckle.runtime.io`).

Readers trust their headers, so an untrusted file can make them read what it names:

* a NRRD header's ``data file:`` (``datafile:``, also ``LIST`` and format strings) and a MetaImage
  header's ``ElementDataFile`` name the file holding the pixels, which may be any file on the
  machine (``/etc/passwd``). :func:`check_data_files` refuses, before SimpleITK opens the file,
  every such name for a self-contained input (an upload to the server), and any name outside the
  header's own folder otherwise (a local ``.nhdr`` or ``.mhd`` beside its data file is fine).
  Header text over :data:`MAX_HEADER_BYTES` is refused too (it would be copied into outputs).
* a NIfTI header extension declaring hundreds of MB makes nibabel allocate them:
  :func:`check_nifti_header` checks the extension sizes against ``vox_offset`` first.
* a DICOM whose pixel data is shorter than its header's Rows x Columns x Frames x Samples x
  BitsAllocated/8 is read by GDCM into a buffer it does not fill (uninitialised memory: earlier
  requests' images on a server). :func:`check_dicom_pixel_data` walks the data elements up to the
  pixel data (standard library only: the header alone, no pixel is read) and refuses that, a
  pixel-data element running past the end of the file, and compressed pixel data with fewer
  fragments than frames.

Standard library only: the Slicer module's runtime carries this module.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_NIFTI_OFFSET",
    "SELF_CONTAINED_SUFFIXES",
    "check_data_files",
    "check_dicom_pixel_data",
    "check_input_file",
    "check_nifti_header",
    "is_dicom",
]

#: Largest NRRD or MetaImage header text accepted, bytes (real headers hold a few hundred).
MAX_HEADER_BYTES = 1 << 20
#: Extensions a self-contained input (an upload) may have, each read by one pinned ITK reader.
SELF_CONTAINED_SUFFIXES = {
    ".nii.gz": "NiftiImageIO",
    ".nii": "NiftiImageIO",
    ".nrrd": "NrrdImageIO",
    ".mha": "MetaImageIO",
    ".png": "PNGImageIO",
    ".jpg": "JPEGImageIO",
    ".jpeg": "JPEGImageIO",
    ".bmp": "BMPImageIO",
    ".tif": "TIFFImageIO",
    ".tiff": "TIFFImageIO",
    ".dcm": "GDCMImageIO",
    ".dicom": "GDCMImageIO",
}
_METAIMAGE_LINE = re.compile(rb"^\s*(ObjectType|NDims|DimSize|ElementType|ElementDataFile)\s*=", re.I)
_DICOM_SUFFIXES = (".dcm", ".dicom")
# DICOM elements read from the header: (group, element)
_PIXEL_DATA = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}  # OB/OW, float, double float
_ROWS, _COLUMNS, _FRAMES = (0x0028, 0x0010), (0x0028, 0x0011), (0x0028, 0x0008)
_SAMPLES, _BITS, _PHOTOMETRIC = (0x0028, 0x0002), (0x0028, 0x0100), (0x0028, 0x0004)
_TRANSFER_SYNTAX = (0x0002, 0x0010)
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_IMPLICIT_LE, _EXPLICIT_BE, _DEFLATED = "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"
_NATIVE = {_IMPLICIT_LE, "1.2.840.10008.1.2.1", _EXPLICIT_BE}
_MAX_ELEMENTS = 1_000_000  # data elements walked before the pixel data


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _head(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


# --- NRRD and MetaImage: external data files -------------------------------------------------


def _header_lines(path: Path, kind: str, end_at_blank: bool) -> list[str]:
    """The header's lines (latin-1), up to the blank line that ends a NRRD header or the end."""
    data = _head(path, MAX_HEADER_BYTES + 1)
    if end_at_blank:
        match = re.search(rb"\r?\n\r?\n", data)
        if match:
            data = data[: match.start()]
    if len(data) > MAX_HEADER_BYTES:
        raise ValueError(
            f"{path}: its {kind} header text is longer than {MAX_HEADER_BYTES:,} bytes; "
            "that is not an image header this tool reads"
        )
    return data.decode("latin-1").splitlines()


def _refuse_outside(path: Path, value: str, key: str, self_contained: bool) -> None:
    """Refuse a data file name unless it is one plain file inside the header's folder."""
    where = f"{path}: its header names the data file {value[:80]!r} ({key})"
    if self_contained:
        raise ValueError(f"{where}; an upload must hold its own pixels: send it as .nrrd, .mha or .nii.gz")
    upper = value.upper()
    if upper == "LIST" or upper.startswith("LIST ") or "%" in value:
        raise ValueError(f"{where}, a list of files; convert it to one .nrrd, .mha or .nii.gz first")
    folder = os.path.realpath(path.parent)
    target = os.path.realpath(os.path.join(folder, value))
    if (
        os.path.isabs(value)
        or re.match(r"^[A-Za-z]:", value)
        or os.path.commonpath([folder, target]) != folder
    ):
        raise ValueError(
            f"{where} outside the header's folder; only a data file beside the header is read. Copy "
            "the data file next to the header and name it there"
        )


def _nrrd_data_files(path: Path, self_contained: bool) -> None:
    lines = _header_lines(path, "NRRD", end_at_blank=True)
    for line in lines[1:]:
        if line.startswith("#"):
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        # teem accepts "data file" and "datafile", in any case; a ":=" key/value pair is refused too
        if re.sub(r"[\s_]", "", name).lower() == "datafile":
            _refuse_outside(path, value.lstrip("=").strip(), "data file", self_contained)


def _metaimage_data_files(path: Path, self_contained: bool) -> None:
    lines = _header_lines(path, "MetaImage", end_at_blank=False)
    for line in lines:
        name, sep, value = line.partition("=")
        if sep and name.strip().lower() == "elementdatafile":
            value = value.strip()
            if value.upper() != "LOCAL":
                _refuse_outside(path, value, "ElementDataFile", self_contained)
            return  # ElementDataFile is the header's last field: the pixels follow
    raise ValueError(f"{path}: a MetaImage header without ElementDataFile; it cannot be read")


def check_data_files(path: str | os.PathLike, *, self_contained: bool = False) -> None:
    """Refuse a NRRD or MetaImage header that names a data file it may not (see the module docstring).

    The format is recognised from the content (``NRRD`` magic; MetaImage ``Key = Value`` lines)
    as well as the extension, so a renamed file cannot slip through.

    Args:
        path: the file about to be read.
        self_contained: True for an upload: no data file may be named at all (``ElementDataFile``
            must be ``LOCAL``). False: one plain data file in the header's folder (or below it).

    Raises:
        ValueError: one line naming the header field and what to do.
    """
    path = Path(path)
    head = _head(path, 256)
    if head.startswith(b"NRRD") or _suffix(path) in (".nrrd", ".nhdr"):
        _nrrd_data_files(path, self_contained)
    elif _suffix(path) in (".mha", ".mhd") or _METAIMAGE_LINE.match(head):
        _metaimage_data_files(path, self_contained)


# --- NIfTI: header extensions ------------------------------------------------------------------

#: Largest NIfTI ``vox_offset`` (header and extensions before the pixels) accepted, bytes.
MAX_NIFTI_OFFSET = 64 << 20


def check_nifti_header(path: str | os.PathLike) -> None:
    """Refuse a single-file NIfTI whose header extensions are malformed or huge.

    nibabel reads each extension's declared size into memory before checking it against the file
    (a 512 MB extension in a small ``.nii.gz``); the offsets are checked here first.

    Raises:
        ValueError: ``vox_offset`` over :data:`MAX_NIFTI_OFFSET`, or an extension whose size is not
            a positive multiple of 16 or runs past ``vox_offset``.
    """
    path = Path(path)
    opener = gzip.open if _suffix(path) == ".nii.gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(544)
            for order in "<>":
                sizeof = struct.unpack(order + "i", head[:4])[0] if len(head) >= 4 else 0
                if sizeof in (348, 540) and len(head) >= sizeof + 4:
                    break
            else:
                return  # not a NIfTI header this check knows: the readers refuse it
            offset = (struct.unpack(order + "f", head[108:112])[0] if sizeof == 348
                      else struct.unpack(order + "q", head[168:176])[0])  # fmt: skip
            if not 0 <= offset <= MAX_NIFTI_OFFSET:
                raise ValueError(
                    f"{path}: its header puts the pixels at byte {offset:,.0f}, beyond the "
                    f"{MAX_NIFTI_OFFSET:,} bytes of header extensions accepted"
                )
            if not head[sizeof]:
                return  # no extensions
            position, end = sizeof + 4, int(offset) or MAX_NIFTI_OFFSET
            f.seek(position)
            while position + 8 <= end:
                block = f.read(8)
                if len(block) < 8:
                    break
                size = struct.unpack(order + "i", block[:4])[0]
                if size < 16 or size % 16 or position + size > end:
                    raise ValueError(
                        f"{path}: has a malformed header extension (declared size {size:,} bytes)"
                    )
                position += size
                f.seek(position)
    except (OSError, EOFError):  # not gzip, truncated: the readers say so in their words
        return


# --- DICOM: the pixel data's length ------------------------------------------------------------


def is_dicom(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a DICOM file (``DICM`` at byte 128, a .dcm name, or a bare data set)."""
    path = Path(path)
    head = _head(path, 132)
    return (
        head[128:132] == b"DICM" or _suffix(path) in _DICOM_SUFFIXES or head[:2] in (b"\x08\x00", b"\x02\x00")
    )


class _Walker:
    """Reads DICOM data element headers from a file, skipping values it does not need."""

    def __init__(self, f: BinaryIO, size: int, path: Path) -> None:
        self.f, self.size, self.path = f, size, path
        self.little, self.explicit = True, True

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise ValueError(f"{self.path}: the DICOM header ends early (truncated file)")
        return data

    def element(self) -> tuple[tuple[int, int], bytes, int]:
        """The next element's tag, VR (b"" when implicit or an item tag) and value length."""
        order = "<" if self.little else ">"
        group, elem = struct.unpack(order + "HH", self.read(4))
        if group == 0xFFFE or not self.explicit:  # items and delimiters never carry a VR
            return (group, elem), b"", struct.unpack(order + "I", self.read(4))[0]
        vr = self.read(2)
        if vr in _LONG_VRS:
            self.read(2)
            return (group, elem), vr, struct.unpack(order + "I", self.read(4))[0]
        return (group, elem), vr, struct.unpack(order + "H", self.read(2))[0]

    def skip(self, length: int) -> None:
        if self.f.tell() + length > self.size:
            raise ValueError(f"{self.path}: a DICOM element runs past the end of the file (truncated file)")
        self.f.seek(length, os.SEEK_CUR)

    def number(self, text: bool, length: int) -> int | None:
        """A US value, or the first value of an IS (``text``) one."""
        data = self.read(length)
        if text:
            try:
                return int(float(data.decode("latin-1").strip("\0 ").split("\\")[0]))
            except ValueError:
                return None
        return struct.unpack(("<" if self.little else ">") + "H", data[:2])[0] if length >= 2 else None


def _meta(walker: _Walker) -> str | None:
    """Walk the file meta group (explicit VR little endian); the transfer syntax UID, if any."""
    syntax = None
    while True:
        start = walker.f.tell()
        head = walker.f.read(2)
        if len(head) < 2 or struct.unpack("<H", head)[0] != 0x0002:
            walker.f.seek(start)
            return syntax
        walker.f.seek(start)
        tag, _, length = walker.element()
        if tag == _TRANSFER_SYNTAX:
            syntax = walker.read(length).decode("latin-1").strip("\0 ")
        else:
            walker.skip(length)


def _fragments(walker: _Walker) -> int:
    """Count the fragments of encapsulated pixel data (the basic offset table excluded)."""
    count = -1
    while True:
        tag, _, length = walker.element()
        if tag == (0xFFFE, 0xE0DD):
            return max(count, 0)
        if tag != (0xFFFE, 0xE000) or length == _UNDEFINED:
            raise ValueError(f"{walker.path}: its compressed pixel data is malformed")
        walker.skip(length)
        count += 1


def _walk_to_pixel_data(
    walker: _Walker,
) -> tuple[tuple[int, int], int, dict[tuple[int, int], int | str | None]]:
    """Walk the data set to its top-level pixel data: that element's tag, its length, and the values read."""
    path = walker.path
    values: dict[tuple[int, int], int | str | None] = {}
    # one entry per open sequence or item of undefined length: the VR encoding to restore at its end
    # (the content of an undefined-length UN element is implicit VR, whatever the transfer syntax)
    open_: list[bool] = []
    for _ in range(_MAX_ELEMENTS):
        if walker.f.tell() >= walker.size:
            raise ValueError(f"{path}: a DICOM file without pixel data; it holds no image")
        tag, vr, length = walker.element()
        if tag[0] == 0xFFFE:  # item or delimiter
            if tag == (0xFFFE, 0xE000) and length != _UNDEFINED:
                walker.skip(length)
            elif tag == (0xFFFE, 0xE000):
                open_.append(walker.explicit)
            elif open_:
                walker.explicit = open_.pop()
            continue
        if not open_ and tag in _PIXEL_DATA:
            break
        if length == _UNDEFINED:
            open_.append(walker.explicit)
            walker.explicit = walker.explicit and vr != b"UN"
        elif not open_ and tag in (_ROWS, _COLUMNS, _FRAMES, _SAMPLES, _BITS) and length <= 64:
            values[tag] = walker.number(tag == _FRAMES, length)
        elif not open_ and tag == _PHOTOMETRIC and length <= 64:
            values[tag] = walker.read(length).decode("latin-1").strip("\0 ").upper()
        else:
            walker.skip(length)
    else:
        raise ValueError(f"{path}: over {_MAX_ELEMENTS:,} DICOM elements before the pixel data")
    return tag, length, values


def check_dicom_pixel_data(path: str | os.PathLike) -> None:
    """Refuse a DICOM file whose pixel data is shorter than its header declares.

    Reads only element headers (the values of Rows, Columns, NumberOfFrames, SamplesPerPixel,
    BitsAllocated, PhotometricInterpretation and the transfer syntax); other values and the pixels
    are skipped. Uncompressed pixel data must hold Rows x Columns x Frames x Samples x
    BitsAllocated/8 bytes (2 samples a pixel for YBR_FULL_422) and lie inside the file; compressed
    (encapsulated) pixel data must hold at least one fragment per frame (the decoder checks the rest).

    Raises:
        ValueError: a one-line reason (short or truncated pixel data, deflated transfer syntax,
            malformed element structure).
    """
    path = Path(path)
    with open(path, "rb") as f:
        walker = _Walker(f, os.fstat(f.fileno()).st_size, path)
        f.seek(132 if _head(path, 132)[128:132] == b"DICM" else 0)
        syntax = _meta(walker)
        if syntax == _DEFLATED:
            raise ValueError(
                f"{path}: deflated DICOM is not read here; save it uncompressed or as JPEG first"
            )
        if syntax is None:  # a bare data set: GDCM guesses the VR encoding, so do we
            start = f.tell()
            peek = f.read(6)
            f.seek(start)
            syntax = "1.2.840.10008.1.2.1" if peek[4:6].isalpha() and peek[4:6].isupper() else _IMPLICIT_LE
        walker.little = syntax != _EXPLICIT_BE
        walker.explicit = syntax != _IMPLICIT_LE
        tag, length, values = _walk_to_pixel_data(walker)
        rows, columns = values.get(_ROWS) or 0, values.get(_COLUMNS) or 0
        frames = max(int(values.get(_FRAMES) or 1), 1)
        samples = 2 if values.get(_PHOTOMETRIC) == "YBR_FULL_422" else int(values.get(_SAMPLES) or 1)
        bits = int(values.get(_BITS) or (32 if tag == (0x7FE0, 0x0008) else 64 if tag[1] == 0x0009 else 8))
        if length == _UNDEFINED:  # encapsulated (compressed) frames
            found = _fragments(walker)
            if found < frames:
                raise ValueError(
                    f"{path}: holds {found} compressed fragments for {frames} frames; the file is "
                    "truncated or corrupt"
                )
            return
        expected = math.ceil(int(rows) * int(columns) * frames * samples * bits / 8)
        if syntax in _NATIVE and length < expected:
            raise ValueError(
                f"{path}: its pixel data holds {length:,} bytes where the header declares {expected:,} "
                f"({rows}x{columns}, {frames} frames, {samples} samples of {bits} bits); the file is "
                "truncated or corrupt"
            )
        if f.tell() + length > walker.size:
            raise ValueError(
                f"{path}: its pixel data runs {f.tell() + length - walker.size:,} bytes past the end "
                "of the file (truncated file)"
            )


def check_input_file(path: str | os.PathLike, *, self_contained: bool = False) -> None:
    """All header checks of this module on one input file, before any reader opens it.

    Args:
        path: an existing file.
        self_contained: True for an upload: its extension must be one of
            :data:`SELF_CONTAINED_SUFFIXES` and no header may name another file.

    Raises:
        ValueError: one line, naming the file.
    """
    path = Path(path)
    if self_contained and _suffix(path) not in SELF_CONTAINED_SUFFIXES:
        raise ValueError(
            f"{path}: an upload must be one file in one of {', '.join(SELF_CONTAINED_SUFFIXES)}; got "
            f"{_suffix(path) or 'no extension'}"
        )
    check_data_files(path, self_contained=self_contained)
    if _suffix(path) in (".nii", ".nii.gz"):
        check_nifti_header(path)
    elif is_dicom(path):
        check_dicom_pixel_data(path)

"""Inputs made by an attacker: headers naming other files, short DICOM pixel data, decompression bombs.

Each case first shows (where it can) that SimpleITK alone would do the harm, so the refusal tested
after it is the library's own.
"""

from __future__ import annotations

import gzip
import socket
import struct
import threading
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from bundles import make_bundle
from test_inference import make_generator_bundle

from usdespeckle.cli import main
from usdespeckle.runtime import client
from usdespeckle.runtime.io import read_image, write_image
from usdespeckle.runtime.io_headers import MAX_HEADER_BYTES, check_dicom_pixel_data

SECRET = bytes(range(40, 40 + 32)) * 32  # 1024 bytes a header may try to read as pixels


@pytest.fixture
def secret(tmp_path) -> Path:
    folder = tmp_path / "private"
    folder.mkdir()
    (folder / "secret.txt").write_bytes(SECRET)
    return folder / "secret.txt"


@pytest.fixture
def bundle(tmp_path, monkeypatch):
    root = make_bundle(tmp_path / "bundle")
    monkeypatch.setenv("USDESPECKLE_BUNDLE", str(root))
    return root


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("usdespeckle run: error: ")
    return err


def _nrrd(path: Path, data_line: str, extra: str = "") -> Path:
    path.write_text(
        "NRRD0004\ntype: uint8\ndimension: 2\nsizes: 32 32\nencoding: raw\n" + extra + data_line + "\n",
        encoding="latin-1",
    )
    return path


def _mhd(path: Path, data_file: str) -> Path:
    path.write_text(
        "ObjectType = Image\nNDims = 2\nDimSize = 32 32\nElementType = MET_UCHAR\n"
        f"ElementDataFile = {data_file}\n"
    )
    return path


# --- 1. headers that name another file -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("abs.nrrd", lambda p, s: _nrrd(p, f"data file: {s}")),
        ("abs.nhdr", lambda p, s: _nrrd(p, f"datafile: {s}")),
        ("upper.nhdr", lambda p, s: _nrrd(p, f"DATA FILE: {s}")),
        ("up.nhdr", lambda p, s: _nrrd(p, "data file: ../private/secret.txt")),
        ("list.nhdr", lambda p, s: _nrrd(p, f"data file: LIST\n{s}")),
        ("format.nhdr", lambda p, s: _nrrd(p, "data file: ../private/secret%d.txt 1 1 1")),
        ("abs.mha", lambda p, s: _mhd(p, str(s))),
        ("up.mhd", lambda p, s: _mhd(p, "../private/secret.txt")),
        ("renamed.dat", lambda p, s: _nrrd(p, f"data file: {s}")),  # NRRD content, another name
    ],
)
def test_a_header_naming_a_file_elsewhere_is_refused(tmp_path, secret, capsys, name, make):
    folder = tmp_path / "inbox"
    folder.mkdir()
    header = make(folder / name, secret)
    if name in ("abs.nrrd", "abs.mha"):  # SimpleITK alone reads the secret as pixels
        leaked = sitk.GetArrayFromImage(sitk.ReadImage(str(header))).tobytes()
        assert leaked == SECRET
    for self_contained in (False, True):
        with pytest.raises(ValueError, match=r"data file|ElementDataFile|upload must be one file"):
            read_image(header, self_contained=self_contained)
    assert main(["run", str(header), str(tmp_path / "out.nrrd"), "--method", "median"]) == 1
    assert "data file" in one_line_error(capsys)
    assert not (tmp_path / "out.nrrd").exists()


def test_a_data_file_reached_through_a_link_is_refused(tmp_path, secret):
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / "scan.raw").symlink_to(secret)
    with pytest.raises(ValueError, match="outside the header's folder"):
        read_image(_nrrd(folder / "scan.nhdr", "data file: scan.raw"))


def test_a_local_header_beside_its_data_reads_but_an_upload_must_be_one_file(tmp_path, rng):
    array = rng.integers(0, 255, (32, 32)).astype(np.uint8)
    (tmp_path / "scan.raw").write_bytes(array.tobytes())
    for header in (
        _nrrd(tmp_path / "scan.nhdr", "data file: scan.raw"),
        _mhd(tmp_path / "scan.mhd", "scan.raw"),
    ):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(header)), array)
        with pytest.raises(ValueError, match="upload must be one file"):
            read_image(header, self_contained=True)
    # a self-contained upload: the data follows the header in the same file
    one = tmp_path / "one.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(one))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(one, self_contained=True)), array)
    with pytest.raises(ValueError, match="data file"):  # attached NRRD that also names a data file
        read_image(_nrrd(tmp_path / "both.nrrd", "data file: scan.raw"), self_contained=True)


def test_huge_header_text_is_refused_and_long_metadata_is_not_copied(tmp_path, rng):
    array = rng.integers(0, 255, (32, 32)).astype(np.uint8)
    huge = tmp_path / "huge.nrrd"
    padding = "".join(f"key{i}:={'x' * 1000}\n" for i in range(MAX_HEADER_BYTES // 1000 + 10))
    huge.write_bytes(
        b"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 32 32\nencoding: raw\n"
        + padding.encode()
        + b"\n"
        + array.tobytes()
    )
    assert sitk.ReadImage(str(huge)).GetMetaDataKeys()  # SimpleITK keeps every key/value pair
    with pytest.raises(ValueError, match="header text is longer"):
        read_image(huge)
    # under the limit: read, but a long value is not written into the output's header
    long = tmp_path / "long.nrrd"
    long.write_bytes(
        b"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 32 32\nencoding: raw\nnote:="
        + b"y" * 200_000
        + b"\nshort:=kept\n\n"
        + array.tobytes()
    )
    image = read_image(long)
    assert len(image.GetMetaData("note")) == 200_000
    out = write_image(image, tmp_path / "out.nrrd")
    assert out.stat().st_size < 10_000
    assert sitk.ReadImage(str(out)).GetMetaData("short") == "kept"


# --- 3. DICOM pixel data shorter than the header says -----------------------------------------


def _dicom(tmp_path: Path, frames: int = 4) -> tuple[bytes, int]:
    """A multi-frame uint8 DICOM written by SimpleITK (implicit VR little endian) and its pixel bytes."""
    array = np.random.default_rng(0).integers(0, 200, (frames, 32, 40)).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "whole.dcm"))
    return (tmp_path / "whole.dcm").read_bytes(), array.size


def _short_by(data: bytes, size: int, short: int) -> bytes:
    """The file with ``short`` bytes fewer pixel data, its element length changed to match."""
    tag = b"\xe0\x7f\x10\x00" + struct.pack("<I", size)
    assert data.count(tag) == 1
    at = data.index(tag)
    return (
        data[:at] + b"\xe0\x7f\x10\x00" + struct.pack("<I", size - short) + data[at + 8 : len(data) - short]
    )


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("18 bytes short", "pixel data holds 5,102 bytes where the header declares 5,120"),
        ("1000 frames over 4", "declares 1,280,000"),
        ("cut", "past the end of the file"),
    ],
)
def test_dicom_with_short_pixel_data_is_refused(tmp_path, capsys, case, words):
    data, size = _dicom(tmp_path)
    if case == "18 bytes short":
        bad = _short_by(data, size, 18)
    elif case == "1000 frames over 4":
        bad = data.replace(b"(\x00\x08\x00\x02\x00\x00\x004 ", b"(\x00\x08\x00\x04\x00\x00\x001000")
        assert bad != data
    else:
        bad = data[:-100]
    path = tmp_path / "bad.dcm"
    path.write_bytes(bad)
    if case != "cut":  # SimpleITK alone reads these with memory it never filled
        assert sitk.ReadImage(str(path)).GetSize()[2] >= 4
    with pytest.raises(ValueError, match=words):
        read_image(path)
    assert main(["run", str(path), str(tmp_path / "out.nrrd"), "--method", "median"]) == 1
    assert "truncated" in one_line_error(capsys)
    read_image(tmp_path / "whole.dcm")  # the file it was made from reads


def test_dicom_series_folder_with_a_short_file_is_refused(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    rng = np.random.default_rng(0)
    for k in range(3):
        slice_ = sitk.GetImageFromArray(rng.integers(0, 200, (32, 40)).astype(np.uint8))
        for key, value in {"0020|000e": "1.2.826.0.1.3680043.2.1125.7", "0020|0013": str(k + 1),
                           "0020|0032": f"0\\0\\{k}", "0020|0037": "1\\0\\0\\0\\1\\0",
                           "0008|0060": "MR"}.items():  # fmt: skip
            slice_.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(slice_)
    assert read_image(folder).GetSize() == (40, 32, 3)
    raw = (folder / "001.dcm").read_bytes()
    (folder / "001.dcm").write_bytes(_short_by(raw, 32 * 40, 20))
    assert len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))) == 3
    with pytest.raises(ValueError, match=r"001\.dcm: its pixel data holds"):
        read_image(folder)


def _pydicom_data(name: str) -> Path:
    data_store = pytest.importorskip("data_store", reason="pydicom-data is not installed")
    return Path(next(iter(data_store.__path__))) / "data" / name


def test_compressed_dicom_cine_reads_and_missing_fragments_are_refused(tmp_path):
    cine = _pydicom_data("color3d_jpeg_baseline.dcm")
    check_dicom_pixel_data(cine)
    assert read_image(cine).GetSize()[2] == 120
    data = cine.read_bytes()
    tag = b"(\x00\x08\x00IS"
    at = data.index(tag)
    length = struct.unpack("<H", data[at + 6 : at + 8])[0]
    assert data[at + 8 : at + 8 + length].strip(b" \0") == b"120"
    more = data[: at + 8] + b"999".ljust(length, b" ") + data[at + 8 + length :]
    (tmp_path / "more.dcm").write_bytes(more)
    with pytest.raises(ValueError, match="120 compressed fragments for 999 frames"):
        read_image(tmp_path / "more.dcm")


def test_every_pydicom_data_file_passes_the_pixel_data_check_but_the_short_one():
    folder = _pydicom_data("color3d_jpeg_baseline.dcm").parent
    files = sorted(p for p in folder.iterdir() if p.suffix == ".dcm")
    assert len(files) > 50
    refused = []
    for path in files:
        try:
            check_dicom_pixel_data(path)
        except ValueError:
            refused.append(path.name)
    assert refused == ["emri_small_jpeg_2k_lossless_too_short.dcm"]


# --- 4. float images into 8-bit formats -----------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".dcm"])
def test_float_in_0_1_is_scaled_with_a_notice_not_written_as_zeros(tmp_path, rng, suffix):
    unit = rng.random((32, 32)).astype(np.float32)
    notes: list[str] = []
    out = write_image(sitk.GetImageFromArray(unit), tmp_path / f"u{suffix}", notice=notes.append)
    back = sitk.GetArrayFromImage(read_image(out)).astype(np.float64).squeeze()
    assert back.max() > 200
    tolerance = 12 if suffix == ".jpg" else 0.51  # JPEG is lossy
    assert np.abs(back - unit * 255).mean() < tolerance
    assert len(notes) == 1
    assert "values in [0, 1] written as 0-255" in notes[0]


def test_narrow_fractional_range_is_stretched_with_a_notice(tmp_path, rng):
    narrow = (rng.random((32, 32)) - 0.5).astype(np.float32)  # -0.5..0.5
    notes: list[str] = []
    out = write_image(sitk.GetImageFromArray(narrow), tmp_path / "n.png", notice=notes.append)
    back = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert len(np.unique(back)) > 100
    assert "stretched" in notes[0]


def test_cli_float_input_to_png_and_uncertainty_png_are_not_zeros(tmp_path, capsys, rng, monkeypatch):
    root, _ = make_generator_bundle(tmp_path / "gen")  # its mirrored passes differ: a spread > 0
    monkeypatch.setenv("USDESPECKLE_BUNDLE", str(root))
    unit = tmp_path / "unit.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(rng.random((32, 32)).astype(np.float32)), str(unit))
    out, spread = tmp_path / "out.png", tmp_path / "u.png"
    assert main(["run", str(unit), str(out), "--uncertainty", str(spread), "--progress", "lines"]) == 0
    err = capsys.readouterr().err
    assert "note:" in err
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(out))).max() > 100
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(spread))).max() > 0
    assert err.count("values in [0, 1] written as 0-255") == 2  # the output and the spread


# --- 5. the --server path runs the local checks first ----------------------------------------------


@pytest.fixture
def silent_server():
    """A loopback socket that accepts connections and never answers (a busy server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for connection in accepted:
        connection.close()
    listener.close()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--uncertainty", "{tmp}/u.nrrd"], "--uncertainty is computed on this machine only"),
        (["--uncertainty", "{tmp}/out.nrrd"], "--uncertainty is computed on this machine only"),
        (["--max-voxels", "100"], "more than the limit of 100"),
        (["--method", "median", "--passes", "4"], "--passes 4 needs the denoiser"),
        (["--axis", "1"], "--axis 1 needs a volume"),
    ],
)
def test_server_runs_refuse_what_a_local_run_refuses_before_uploading(
    tmp_path, silent_server, capsys, extra, words
):
    image = tmp_path / "in.nrrd"
    sitk.WriteImage(
        sitk.GetImageFromArray(np.random.default_rng(0).random((32, 32)).astype(np.float32)), str(image)
    )
    args = ["run", str(image), str(tmp_path / "out.nrrd"), "--server", silent_server]
    assert main(args + [e.format(tmp=tmp_path) for e in extra]) == 1
    assert words in one_line_error(capsys)  # refused here: the silent server would time out


def test_passes_with_a_filter_is_refused_locally_too(tmp_path, capsys):
    image = tmp_path / "in.nrrd"
    sitk.WriteImage(
        sitk.GetImageFromArray(np.random.default_rng(0).random((32, 32)).astype(np.float32)), str(image)
    )
    assert main(["run", str(image), str(tmp_path / "out.nrrd"), "--method", "median", "--passes", "8"]) == 1
    assert "--passes 8 needs the denoiser" in one_line_error(capsys)
    # --passes 1 changes nothing: accepted (the Slicer module sends it with every method)
    args = ["run", str(image), str(tmp_path / "out.nrrd"), "--method", "median", "--passes", "1"]
    assert main([*args, "--progress", "none"]) == 0


def test_a_busy_server_is_no_answer_in_n_seconds_not_unreachable(tmp_path, silent_server):
    image = tmp_path / "in.nrrd"
    sitk.WriteImage(
        sitk.GetImageFromArray(np.random.default_rng(0).random((32, 32)).astype(np.float32)), str(image)
    )
    with pytest.raises(client.ServerError) as err:
        client.despeckle_via_server(silent_server, image, tmp_path / "out.nrrd", timeout=1)
    assert "no answer from the MONAI Label server" in err.value.detail
    assert "in 1 s" in err.value.detail
    with pytest.raises(client.ServerError, match="no answer"):
        client.server_info(silent_server, timeout=1)


def test_an_answer_naming_a_data_file_is_not_read(tmp_path, secret, monkeypatch, capsys):
    """An untrusted server cannot make the client read a local file into OUTPUT."""
    image = tmp_path / "in.nrrd"
    sitk.WriteImage(
        sitk.GetImageFromArray(np.random.default_rng(0).random((32, 32)).astype(np.float32)), str(image)
    )

    def evil(url, image_path, out_path, **params):
        _nrrd(Path(out_path), f"data file: {secret}")
        return {"path": str(out_path), "bytes": 1}

    monkeypatch.setattr(client, "despeckle_via_server", evil)
    args = [
        "run",
        str(image),
        str(tmp_path / "out.nrrd"),
        "--server",
        "http://127.0.0.1:9",
        "--method",
        "median",
    ]
    assert main(args) == 1
    assert "not an image" in one_line_error(capsys)
    assert not (tmp_path / "out.nrrd").exists()


# --- 6. crashes that must be one-line errors ----------------------------------------------------


def _png_header_only(width: int, height: int, colour_type: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_grey_alpha_png_decompression_bomb_is_one_line(tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(60000, 60000, 4))
    with pytest.raises(ValueError, match="too many pixels"):
        read_image(bomb)
    assert main(["run", str(bomb), str(tmp_path / "out.png"), "--method", "median"]) == 1
    one_line_error(capsys)


def _nifti_with_extension(path: Path, extension_size: int) -> None:
    header = nib.Nifti1Header()
    header.set_data_shape((32, 32))
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352 + 16
    extension = b"\x01\x00\x00\x00" + struct.pack("<ii", extension_size, 6) + b"\0" * 8
    pixels = np.random.default_rng(0).random((32, 32)).astype(np.float32).tobytes()
    path.write_bytes(gzip.compress(header.binaryblock + extension + pixels))


def test_nifti_with_a_huge_malformed_header_extension_is_one_line(tmp_path, capsys):
    path = tmp_path / "ext.nii.gz"
    _nifti_with_extension(path, 512 * 1024 * 1024)
    with pytest.raises(nib.spatialimages.HeaderDataError):  # nibabel alone: an uncaught exception
        nib.load(str(path))
    with pytest.raises(ValueError, match="malformed header extension"):
        read_image(path)
    assert main(["run", str(path), str(tmp_path / "out.nrrd"), "--method", "median"]) == 1
    one_line_error(capsys)
    _nifti_with_extension(tmp_path / "fine.nii.gz", 16)  # a well-formed extension reads
    assert read_image(tmp_path / "fine.nii.gz").GetSize() == (32, 32)


@pytest.mark.parametrize("output", ["adir.png/", "adir.png/.", "existing/"])
def test_an_output_naming_a_folder_is_refused(tmp_path, capsys, output):
    (tmp_path / "existing").mkdir()
    image = tmp_path / "in.png"
    sitk.WriteImage(
        sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 255, (32, 32)).astype(np.uint8)),
        str(image),
    )
    assert main(["run", str(image), f"{tmp_path}/{output}", "--method", "median"]) == 1
    assert "folder" in one_line_error(capsys)
    assert not (tmp_path / "adir.png").exists()

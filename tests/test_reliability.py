"""Reliability of ``usdespeckle run``: a corpus of bad files, faults and collisions.

Every bad case must give a non-zero exit, one line on stderr, no output file, an unchanged input and
an unchanged existing output. The disk-full cases run in a subprocess under a small file-size limit
(``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored so a write fails with EFBIG as on a full disk).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from bundles import make_broken_bundle, make_bundle
from PIL import Image

from usdespeckle.cli import main
from usdespeckle.runtime import inference
from usdespeckle.runtime.atomic import remove_stale_temporaries
from usdespeckle.runtime.io import read_image, write_image

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture
def bundle(tmp_path, monkeypatch):
    root = make_bundle(tmp_path / "bundle")
    monkeypatch.setenv("USDESPECKLE_BUNDLE", str(root))
    return root


def _speckle(shape, seed=0, dtype=np.float32) -> np.ndarray:
    return (np.random.default_rng(seed).rayleigh(1.0, size=shape) * 60.0).astype(dtype)


def _nifti(path: Path, array: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(np.asarray(array).T, np.eye(4)), str(path))


def _truncated(suffix: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        _nifti(path, _speckle((6, 32, 32)))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    return make


def _with_value(value: float, dtype=np.float32, nifti: bool = True) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        array = _speckle((4, 32, 32)).astype(dtype)
        array[1, 3, 4] = value
        if nifti:
            _nifti(path, array)
        else:
            sitk.WriteImage(sitk.GetImageFromArray(array), str(path))

    return make


def _huge_nifti_header(path: Path) -> None:
    """A 400-byte NIfTI whose header declares 20000 x 20000 float32 (1.6 GB)."""
    header = nib.Nifti1Header()
    header.set_data_shape((20000, 20000))
    header.set_data_dtype(np.float32)
    path.write_bytes(header.binaryblock + b"\0" * 48)


def _huge_png_header(path: Path) -> None:
    """A PNG of a few dozen bytes whose IHDR declares 60000 x 60000 grey pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _complex_mha(path: Path) -> None:
    array = _speckle((32, 32)) + 1j * _speckle((32, 32), seed=1)
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.complex64)), str(path))


def _vector(components: int, dtype) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        array = np.stack([_speckle((32, 32), seed=c) for c in range(components)], -1).astype(dtype)
        sitk.WriteImage(sitk.GetImageFromArray(array, isVector=True), str(path))

    return make


def _four_d(path: Path) -> None:
    _nifti(path, _speckle((2, 3, 32, 32)))


def _write_bytes(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _constant(path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(np.full((32, 32), 7, np.uint8)), str(path))


def _tiny(path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(64, dtype=np.uint8).reshape(8, 8)), str(path))


def _gzip_junk(path: Path) -> None:
    path.write_bytes(gzip.compress(b"not a nifti header" * 30))


#: (input name, how to make it, words the one-line error must contain)
BAD_INPUTS = [
    ("truncated.nii.gz", _truncated(".nii.gz"), "truncated"),
    ("truncated.nii", _truncated(".nii"), "truncated"),
    ("nan.nii.gz", _with_value(np.nan), "NaN"),
    ("posinf.nii", _with_value(np.inf), "NaN or infinite"),
    ("neginf.nii.gz", _with_value(-np.inf), "NaN or infinite"),
    ("nan.nrrd", _with_value(np.nan, nifti=False), "NaN"),
    ("huge_value.nrrd", _with_value(1e300, np.float64, nifti=False), "beyond"),
    ("float32_max.nii.gz", _with_value(3e38), "beyond"),
    ("float32_min.mha", _with_value(-3e38, nifti=False), "beyond"),
    ("huge_header.nii", _huge_nifti_header, "declares"),
    ("huge_header.png", _huge_png_header, "declares"),
    ("complex.mha", _complex_mha, "complex"),
    ("vector_field.nrrd", _vector(3, np.float32), "vector"),
    ("five_components.nrrd", _vector(5, np.uint8), "components"),
    ("four_d.nii.gz", _four_d, "4D"),
    ("junk.nii.gz", _write_bytes(b"this is not an image" * 10), "cannot be read"),
    ("gzip_junk.nii.gz", _gzip_junk, "cannot be read"),
    ("empty.png", _write_bytes(b""), "cannot be read"),
    ("png_signature_only.png", _write_bytes(b"\x89PNG\r\n\x1a\n"), "cannot be read"),
    ("text.mha", _write_bytes(b"ObjectType = Image\nNDims = 2\n"), "cannot be read"),
    ("constant.png", _constant, "constant"),
    ("tiny.png", _tiny, "too small"),
]


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("usdespeckle run: error: "), err
    return err


@pytest.mark.parametrize(("name", "make", "words"), BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
@pytest.mark.parametrize("existing_output", [False, True], ids=["new", "existing"])
def test_bad_input_is_refused_cleanly(tmp_path, bundle, capsys, name, make, words, existing_output):
    folder = tmp_path / "data"
    folder.mkdir()
    make(folder / name)
    out = folder / "out.nii.gz"
    if existing_output:
        out.write_bytes(b"a previous result")
    before = _snapshot(folder)
    args = ["run", str(folder / name), str(out), "--progress", "none"]
    assert main(args + (["--force"] if existing_output else [])) == 1
    assert words in _one_line_error(capsys)
    assert _snapshot(folder) == before  # input unchanged, existing output unchanged, nothing new


def _volume_mhd(folder: Path, name: str = "scan.mhd") -> Path:
    path = folder / name
    sitk.WriteImage(sitk.GetImageFromArray(_speckle((3, 32, 32))), str(path), useCompression=True)
    return path


@pytest.mark.parametrize(
    ("output", "force", "words"),
    [
        ("scan.MHD", True, "input"),  # the MetaImage writer lower-cases the extension
        ("SCAN.mhd", True, "input"),
        ("scan.zraw", True, "unknown format"),
        ("other.mhd", False, "would replace"),  # other.zraw exists, unrelated to the input
        ("pair.hdr", False, "would replace"),  # pair.img exists
        ("out.xyz", False, "unknown format"),
        ("out", False, "unknown format"),
        ("volume.png", False, "2D"),
        ("volume.jpg", False, "2D"),
        ("missing_folder/out.nii.gz", False, "does not exist"),
        ("a_folder", True, "unknown format"),
    ],
)
def test_output_collisions_are_refused_before_computing(
    tmp_path, bundle, capsys, monkeypatch, output, force, words
):
    scan = _volume_mhd(tmp_path)
    (tmp_path / "other.zraw").write_bytes(b"someone else's data")
    (tmp_path / "pair.img").write_bytes(b"someone else's analyze data")
    (tmp_path / "a_folder").mkdir()
    before = _snapshot(tmp_path)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the output was not checked before computing")

    monkeypatch.setattr(inference, "despeckle_image", must_not_run)
    args = ["run", str(scan), str(tmp_path / output), "--progress", "none"] + (["--force"] if force else [])
    assert main(args) == 1
    assert words in _one_line_error(capsys)
    assert _snapshot(tmp_path) == before


def test_output_into_the_input_data_file_name_is_refused(tmp_path, bundle, capsys):
    """``b.mhd`` would write ``b.zraw``: refused when that is the data file the input's header names."""
    scan = tmp_path / "a.mhd"
    sitk.WriteImage(sitk.GetImageFromArray(_speckle((3, 32, 32))), str(scan), useCompression=True)
    text = scan.read_text().replace("a.zraw", "b.zraw")
    scan.write_text(text)
    (tmp_path / "a.zraw").rename(tmp_path / "b.zraw")
    assert read_image(scan).GetSize() == (32, 32, 3)
    before = _snapshot(tmp_path)
    assert main(["run", str(scan), str(tmp_path / "B.mhd"), "--force", "--progress", "none"]) == 1
    assert "b.zraw" in _one_line_error(capsys)
    assert _snapshot(tmp_path) == before


BAD_BUNDLES = [
    ("nan_weights", "NaN"),
    ("corrupt_model_checksum_updated", "model"),
    ("weights_sha256_list", "weights_sha256"),
    ("weights_sha256_string", "weights_sha256"),
    ("spatial_shape_number", "spatial_shape"),
    ("spatial_shape_zero", "spatial_shape"),
    ("metadata_list", "metadata"),
    ("metadata_not_json", "JSON"),
]


@pytest.mark.parametrize(("kind", "words"), BAD_BUNDLES, ids=[case[0] for case in BAD_BUNDLES])
def test_bad_bundle_is_a_one_line_error_and_writes_nothing(tmp_path, capsys, monkeypatch, kind, words):
    monkeypatch.setenv("USDESPECKLE_BUNDLE", str(make_broken_bundle(tmp_path / f"bundle_{kind}", kind)))
    data = tmp_path / "data"
    data.mkdir()
    _nifti(data / "in.nii.gz", _speckle((3, 32, 32)))
    (data / "out.nii.gz").write_bytes(b"a previous result")
    before = _snapshot(data)
    assert (
        main(["run", str(data / "in.nii.gz"), str(data / "out.nii.gz"), "--force", "--progress", "none"]) == 1
    )
    assert words in _one_line_error(capsys)
    assert _snapshot(data) == before


def test_grey_alpha_png_and_3d_int16_dicom_work(tmp_path, bundle, capsys):
    grey = np.random.default_rng(0).integers(0, 255, size=(32, 40)).astype(np.uint8)
    Image.fromarray(np.stack([grey, np.full_like(grey, 255)], -1), "LA").save(tmp_path / "la.png")
    image = read_image(tmp_path / "la.png")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), grey)
    assert main(["run", str(tmp_path / "la.png"), str(tmp_path / "out.png"), "--progress", "none"]) == 0

    volume = sitk.GetImageFromArray(
        np.random.default_rng(1).integers(-500, 500, (3, 32, 32)).astype(np.int16)
    )
    write_image(volume, tmp_path / "v.dcm")
    back = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "v.dcm")))
    assert back.shape == (3, 32, 32)
    assert np.corrcoef(back.ravel(), sitk.GetArrayFromImage(volume).ravel())[0, 1] > 0.999


def test_voxel_limit_is_an_option(tmp_path, bundle, capsys):
    _nifti(tmp_path / "in.nii.gz", _speckle((4, 32, 32)))
    args = ["run", str(tmp_path / "in.nii.gz"), str(tmp_path / "out.nrrd"), "--progress", "none"]
    assert main([*args, "--max-voxels", "4000"]) == 1
    assert "4,096 values" in _one_line_error(capsys)
    assert not (tmp_path / "out.nrrd").exists()
    assert main([*args, "--max-voxels", "4096"]) == 0


@pytest.mark.parametrize("name", ["Result.MHD", "result.MHA", "result.NII.GZ", "result.Nii", "result.HDR"])
def test_upper_case_extensions_itk_mishandles_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="lower case"):
        write_image(sitk.GetImageFromArray(_speckle((3, 32, 32))), tmp_path / name)
    assert list(tmp_path.iterdir()) == []
    path = write_image(sitk.GetImageFromArray(_speckle((32, 32))), tmp_path / "Result.NRRD")
    assert read_image(path).GetSize() == (32, 32)


def test_stale_temporary_folders_of_killed_runs_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.nii.gz.{dead.pid}.abcd1234.tmp"
    stale.mkdir()
    (stale / "out.nii.gz").write_bytes(b"half")
    alive = tmp_path / f".out.nii.gz.{os.getpid()}.efgh5678.tmp"  # a write in progress
    alive.mkdir()
    unrelated = tmp_path / ".config.tmp"
    unrelated.mkdir()
    write_image(sitk.GetImageFromArray(_speckle((32, 32))), tmp_path / "out.nii.gz")
    assert not stale.exists()
    assert alive.exists()
    assert unrelated.exists()
    assert remove_stale_temporaries(tmp_path, older_than_s=-1.0) == [alive]


def test_unwritable_output_folder_is_one_line(tmp_path, bundle, capsys, monkeypatch):
    import tempfile

    _nifti(tmp_path / "in.nii.gz", _speckle((3, 32, 32)))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)  # what a read-only folder does, also as root
    assert main(["run", str(tmp_path / "in.nii.gz"), str(tmp_path / "out.nrrd"), "--progress", "none"]) == 1
    assert "Permission denied" in _one_line_error(capsys)
    assert not (tmp_path / "out.nrrd").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_refused_before_computing(tmp_path, bundle, capsys):
    _nifti(tmp_path / "in.nii.gz", _speckle((3, 32, 32)))
    out_dir = tmp_path / "ro"
    out_dir.mkdir()
    out_dir.chmod(0o555)
    try:
        assert main(["run", str(tmp_path / "in.nii.gz"), str(out_dir / "out.nrrd")]) == 1
        assert "not writable" in _one_line_error(capsys)
    finally:
        out_dir.chmod(0o755)


# The disk-full script: a file-size limit below the output's size, SIGXFSZ ignored, so every write
# past the limit fails with EFBIG, as on a full disk. It prints one JSON line of results.
_DISK_FULL = textwrap.dedent(
    """
    import json, os, resource, signal, sys, contextlib, io
    import numpy as np, SimpleITK as sitk
    from usdespeckle.cli import main
    folder, limit = sys.argv[1], int(sys.argv[2])
    suffixes = sys.argv[3].split(",")
    src = os.path.join(folder, "in.nrrd")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    results = {}
    for suffix in suffixes:
        out = os.path.join(folder, "out" + suffix)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["run", src, out, "--method", "median", "--force", "--progress", "none"])
        results[suffix] = {"code": code, "stderr": err.getvalue()}
    print(json.dumps(results))
    """
)
DISK_FULL_SUFFIXES = [".nii.gz", ".nii", ".png", ".nrrd", ".mha", ".mhd", ".tif", ".hdr"]


def test_disk_full_keeps_the_existing_output(tmp_path):
    rng = np.random.default_rng(3)
    image = sitk.GetImageFromArray(rng.uniform(0, 60000, size=(200, 200)).astype(np.float32))  # 160 kB
    sitk.WriteImage(image, str(tmp_path / "in.nrrd"))
    for suffix in DISK_FULL_SUFFIXES:  # a good previous result of each format, small
        write_image(sitk.GetImageFromArray(_speckle((32, 32)).astype(np.uint16)), tmp_path / f"out{suffix}")
    before = _snapshot(tmp_path)
    limit = 20_000  # bytes: larger than the previous outputs, smaller than any new one
    assert all(p.stat().st_size < limit for p in tmp_path.iterdir() if p.name != "in.nrrd")
    result = subprocess.run(
        [sys.executable, "-c", _DISK_FULL, str(tmp_path), str(limit), ",".join(DISK_FULL_SUFFIXES)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    for suffix in DISK_FULL_SUFFIXES:
        outcome = results[suffix]
        lines = outcome["stderr"].strip().splitlines()
        assert outcome["code"] == 1, (suffix, outcome)
        assert len(lines) == 1, (suffix, outcome)
        assert "cannot write" in lines[0], (suffix, outcome)
    assert _snapshot(tmp_path) == before  # every previous output intact, no temporary left
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_2d_dicom_output_is_verified_and_written(tmp_path):
    image = sitk.GetImageFromArray(_speckle((48, 64)))
    path = write_image(image, tmp_path / "out.dcm")
    back = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).squeeze()
    np.testing.assert_array_equal(
        back, np.clip(np.rint(sitk.GetArrayFromImage(image)), 0, 255).astype(back.dtype)
    )

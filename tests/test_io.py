"""Reading and writing images: formats round-trip geometry, bad inputs give clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from usdespeckle.runtime.io import read_image, to_grey, write_image


def volume_image(rng: np.random.Generator, dtype=np.int16, shape=(4, 20, 24)) -> sitk.Image:
    image = sitk.GetImageFromArray(rng.integers(0, 1000, size=shape).astype(dtype))
    image.SetSpacing((0.25, 0.5, 2.0)[-len(shape) :])
    image.SetOrigin((-10.0, 5.5, 3.0)[-len(shape) :])
    if len(shape) == 3:
        image.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return image


def assert_same_image(a: sitk.Image, b: sitk.Image) -> None:
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".mhd", ".tif"])
def test_volume_round_trip(tmp_path, rng, suffix):
    image = volume_image(rng)
    if suffix == ".tif":  # TIFF keeps no origin or direction
        image.SetOrigin((0.0, 0.0, 0.0))
        image.SetDirection(np.eye(3).ravel().tolist())
        image.SetSpacing((0.25, 0.5, 1.0))
    path = write_image(image, tmp_path / f"vol{suffix}")
    back = read_image(path)
    assert back.GetDimension() == 3
    assert_same_image(image, back)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp leftovers


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_round_trip(tmp_path, rng, dtype):
    array = rng.integers(0, np.iinfo(dtype).max, size=(30, 40)).astype(dtype)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.2, 0.3))
    back = read_image(write_image(image, tmp_path / "a.png"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), array)
    assert back.GetPixelID() == image.GetPixelID()


def test_float_output_to_png_and_jpeg_is_cast_sensibly(tmp_path, rng):
    in_range = sitk.GetImageFromArray(rng.uniform(0, 255, size=(20, 20)).astype(np.float32))
    png = read_image(write_image(in_range, tmp_path / "a.png"))
    assert png.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(png), np.rint(sitk.GetArrayFromImage(in_range)))
    wide = sitk.GetImageFromArray(rng.uniform(-5, 5, size=(20, 20)).astype(np.float32))
    jpg = sitk.GetArrayFromImage(read_image(write_image(wide, tmp_path / "b.jpg")))
    assert jpg.dtype == np.uint8
    assert jpg.max() > 200
    assert jpg.min() < 50
    big = sitk.GetImageFromArray(rng.uniform(0, 4000, size=(20, 20)).astype(np.float32))
    assert read_image(write_image(big, tmp_path / "c.png")).GetPixelID() == sitk.sitkUInt16


def test_volume_to_png_is_refused(tmp_path, rng):
    with pytest.raises(ValueError, match="3D"):
        write_image(volume_image(rng), tmp_path / "v.png")


def test_rgb_png_becomes_grey(tmp_path, rng):
    grey = rng.integers(0, 255, size=(24, 32)).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([grey] * 3, -1), isVector=True), str(tmp_path / "g.png"))
    back = read_image(tmp_path / "g.png")
    assert back.GetNumberOfComponentsPerPixel() == 1
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), grey)

    colour = rng.integers(0, 255, size=(24, 32, 4)).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(colour, isVector=True), str(tmp_path / "c.png"))
    luma = sitk.GetArrayFromImage(read_image(tmp_path / "c.png"))
    np.testing.assert_allclose(luma, colour[..., :3] @ np.array([0.299, 0.587, 0.114]), atol=1e-3)


def test_to_grey_keeps_geometry(rng):
    image = sitk.GetImageFromArray(rng.integers(0, 255, size=(3, 16, 16, 3)).astype(np.uint8), isVector=True)
    image.SetSpacing((0.1, 0.2, 0.3))
    grey = to_grey(image)
    assert grey.GetSpacing() == image.GetSpacing()
    assert grey.GetDimension() == 3


def test_dicom_series_folder_and_file(tmp_path, rng):
    volume = volume_image(rng, shape=(5, 20, 24))
    volume.SetDirection(np.eye(3).ravel().tolist())
    folder = tmp_path / "series"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.1"
    for k in range(volume.GetDepth()):
        slice_ = volume[:, :, k]
        for key, value in {
            "0020|000e": uid,  # series instance UID
            "0020|0013": str(k + 1),  # instance number
            "0020|0032": "\\".join(map(str, volume.TransformIndexToPhysicalPoint((0, 0, k)))),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0008|0060": "MR",  # US storage keeps spacing in ultrasound regions, not PixelSpacing
        }.items():
            slice_.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(slice_)
    back = read_image(folder)
    assert back.GetSize() == volume.GetSize()
    assert_same_image(volume, back)
    one = read_image(folder / "002.dcm")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(one).squeeze(), sitk.GetArrayFromImage(volume)[2])


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_image(tmp_path / "missing.nii.gz")


@pytest.mark.parametrize("name", ["corrupt.nii.gz", "corrupt.png", "notes.txt"])
def test_corrupt_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image" * 4)
    with pytest.raises(ValueError, match="cannot be read"):
        read_image(tmp_path / name)


def test_folder_without_dicom(tmp_path):
    with pytest.raises(ValueError, match="DICOM"):
        read_image(tmp_path)


def test_4d_is_refused_but_single_time_point_is_3d(tmp_path, rng):
    sitk.WriteImage(
        sitk.GetImageFromArray(rng.uniform(size=(2, 3, 20, 20)).astype(np.float32), isVector=False),
        str(tmp_path / "4d.nii"),
    )
    with pytest.raises(ValueError, match="4D"):
        read_image(tmp_path / "4d.nii")
    sitk.WriteImage(
        sitk.GetImageFromArray(rng.uniform(size=(1, 3, 20, 20)).astype(np.float32), isVector=False),
        str(tmp_path / "t1.nii"),
    )
    assert read_image(tmp_path / "t1.nii").GetSize() == (20, 20, 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_is_refused(tmp_path, rng, bad):
    array = rng.uniform(size=(20, 20)).astype(np.float32)
    array[4, 5] = bad
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "bad.nrrd"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        read_image(tmp_path / "bad.nrrd")


def test_constant_and_too_small(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.full((20, 20), 7, np.uint8)), str(tmp_path / "flat.png"))
    with pytest.raises(ValueError, match="constant"):
        read_image(tmp_path / "flat.png")
    sitk.WriteImage(
        sitk.GetImageFromArray(np.arange(80, dtype=np.uint8).reshape(8, 10)), str(tmp_path / "tiny.png")
    )
    with pytest.raises(ValueError, match="too small"):
        read_image(tmp_path / "tiny.png")
    assert read_image(tmp_path / "tiny.png", min_size=8).GetSize() == (10, 8)


def test_existing_output_and_input_as_output(tmp_path, rng):
    image = volume_image(rng)
    path = write_image(image, tmp_path / "out.nrrd")
    with pytest.raises(ValueError, match="exists"):
        write_image(image, path)
    write_image(image, path, force=True)
    with pytest.raises(ValueError, match="is the input"):
        write_image(image, path, force=True, source=tmp_path / "." / "out.nrrd")


def test_interrupted_write_leaves_nothing(tmp_path, rng, monkeypatch):
    image = volume_image(rng)
    target = tmp_path / "out.nii.gz"
    target.write_bytes(b"previous result")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(ValueError, match=r"cannot write .*disk full"):
        write_image(image, target, force=True)
    assert [p.name for p in Path(tmp_path).iterdir()] == ["out.nii.gz"]
    assert target.read_bytes() == b"previous result"

"""Tests of the low-level map: known answers, quantisation levels, median smoothing, transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from usdespeckle.simulation.lowlevel import LowLevelMapd, low_level_map


def test_known_answer_on_stripes():
    # 4 stripes 4 pixels wide with values 0, 1, 2, 3 -> normalised 0, 85, 170, 255
    # -> quantised 0, 64, 160, 224; at a straight edge a 3x3 median keeps the majority side.
    image = np.kron(np.array([[0.0, 1.0, 2.0, 3.0]]), np.ones((8, 4)))
    out = low_level_map(image)
    expected = np.kron(np.array([[0, 64, 160, 224]]), np.ones((8, 4))) / 255
    np.testing.assert_allclose(out, expected, atol=1e-7)
    assert out.dtype == np.float32
    assert out.shape == image.shape


def test_ramp_gives_exactly_eight_levels():
    ramp = np.tile(np.linspace(-3.0, 7.0, 256), (16, 1))  # any input range
    out = low_level_map(ramp)
    levels = np.unique(np.round(out * 255).astype(int))
    np.testing.assert_array_equal(levels, np.arange(8) * 32)
    # monotone along the ramp
    assert np.all(np.diff(out[8]) >= 0)


def test_random_image_levels_are_multiples_of_32(rng):
    out = low_level_map(rng.normal(size=(64, 64)))
    values = out * 255
    np.testing.assert_allclose(values, 32 * np.round(values / 32), atol=1e-4)
    assert values.min() >= 0
    assert values.max() <= 224 + 1e-4


def test_median_removes_isolated_pixels():
    image = np.zeros((15, 15))
    image[7, 7] = 1.0  # a single bright pixel
    image[2, :] = 1.0  # a one-pixel line
    image[10:14, 3:7] = 1.0  # a 4x4 square survives
    out = low_level_map(image)
    assert out[7, 7] == 0
    assert np.all(out[2, :] == 0)
    assert np.all(out[11:13, 4:6] == np.float32(224 / 255))


def test_scale_and_offset_invariance(rng):
    image = rng.random((32, 32))
    np.testing.assert_array_equal(low_level_map(image), low_level_map(5 * image - 2))


def test_applying_twice_is_stable_on_blocks():
    image = np.kron(np.array([[0.0, 0.5], [0.75, 1.0]]), np.ones((8, 8)))
    once = low_level_map(image)
    # the second pass renormalises 0..224 to 0..255, which maps each level back to itself
    np.testing.assert_array_equal(low_level_map(once), once)


def test_corner_of_four_blocks_known_answer():
    # where four 6x6 blocks (0, 64, 160, 224 after quantisation) meet, the corner pixel of the
    # 0-block sees 4 zeros, 2 of 64, 2 of 160 and 1 of 224: sorted, the 5th (median) is 64.
    # The 224-block's corner sees 1 zero, 2 of 64, 2 of 160, 4 of 224: median 160.
    # The second pass keeps both (checked by hand on the 6x6 neighbourhood).
    image = np.kron(np.array([[0.0, 1.0], [2.0, 3.0]]), np.ones((6, 6)))
    out = np.round(low_level_map(image) * 255).astype(int)
    assert out[5, 5] == 64  # corner pixel of the 0-block
    assert out[6, 6] == 160  # corner pixel of the 224-block
    assert out[0, 0] == 0
    assert out[0, 11] == 64
    assert out[11, 0] == 160
    assert out[11, 11] == 224
    assert set(np.unique(out)) <= {0, 64, 160, 224}


def test_constant_image_gives_zeros():
    out = low_level_map(np.full((10, 12), 42.0))
    np.testing.assert_array_equal(out, np.zeros((10, 12), np.float32))


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.full((4, 4), np.nan), "NaN or infinite"),
        (np.zeros((2, 4, 4)), r"non-empty 2D image .*\(2, 4, 4\)"),
        (np.zeros((0, 3)), r"non-empty 2D image .*\(0, 3\)"),
    ],
)
def test_invalid_input(bad, match):
    with pytest.raises(ValueError, match=match):
        low_level_map(bad)


def test_transform_keeps_metatensor_and_does_not_modify_input(rng):
    image = MetaTensor(torch.rand(1, 32, 32), meta={"filename_or_obj": "a.png"})
    before = image.clone()
    out = LowLevelMapd(keys="image")({"image": image, "label": image})
    assert isinstance(out["image"], MetaTensor)
    assert out["image"].meta["filename_or_obj"] == "a.png"
    np.testing.assert_array_equal(out["image"][0].numpy(), low_level_map(before[0].numpy()))
    torch.testing.assert_close(image, before)
    assert out["label"] is image


def test_transform_numpy_and_errors():
    image = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
    out = LowLevelMapd(keys="image")({"image": image})["image"]
    assert isinstance(out, np.ndarray)
    assert out.shape == (2, 16, 16)
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="channel-first"):
        LowLevelMapd(keys="image")({"image": np.zeros((16, 16))})
    with pytest.raises(KeyError):
        LowLevelMapd(keys="image")({"label": image})

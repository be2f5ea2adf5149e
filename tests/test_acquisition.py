"""The randomised acquisition chain: speckled and clean B-mode pairs, ranges, masks, the MONAI transform."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from usdespeckle.simulation.acquisition import AcquisitionRanges, RandAcquisitiond, simulate_acquisition

PLAIN = AcquisitionRanges(anechoic_prob=0.0, sector_prob=0.0, jpeg_prob=0.0, partial_prob=0.0)


def test_pair_shapes_ranges_and_speckle_only_in_the_input(rng):
    grey = np.full((96, 128), 0.7)
    bmode, clean = simulate_acquisition(grey, rng, PLAIN)
    assert bmode.shape == clean.shape == grey.shape
    assert bmode.dtype == clean.dtype == np.float32
    assert bmode.min() >= 0.0
    assert bmode.max() <= 1.0
    assert clean.min() >= 0.0
    assert clean.max() <= 1.0
    inner = (slice(10, -10), slice(10, -10))
    assert bmode[inner].std() > 0.05  # speckle
    assert clean[inner].std() < 0.02  # the target of a uniform map has only the depth gain ramp
    # log-compressed Rayleigh speckle sits near its mean level: the input's median is close to the target
    assert abs(float(np.median(bmode[inner])) - float(np.median(clean[inner]))) < 0.1


def test_clean_target_keeps_the_maps_contrast_and_order(rng):
    grey = np.full((128, 128), 0.4)
    grey[:, 64:] = 0.9
    bmode, clean = simulate_acquisition(grey, rng, PLAIN)
    assert clean[:, 80:].mean() > clean[:, :48].mean() + 0.05  # brighter tissue stays brighter
    smooth = ndi.gaussian_filter(bmode, 6)
    assert smooth[20:-20, 80:-8].mean() > smooth[20:-20, 8:48].mean()


def test_sector_mask_blacks_out_both_images_and_anechoic_regions_are_dark(rng):
    ranges = AcquisitionRanges(sector_prob=1.0, jpeg_prob=0.0, anechoic_prob=0.0)
    bmode, clean = simulate_acquisition(np.full((128, 128), 0.8), rng, ranges)
    outside = clean == 0
    assert outside[0, 0]
    assert outside[0, -1]
    assert (bmode[outside] == 0).all()
    ranges = AcquisitionRanges(sector_prob=0.0, jpeg_prob=0.0, anechoic_prob=1.0, noise_db=(-90.0, -89.0))
    _, clean = simulate_acquisition(np.full((128, 128), 0.8), np.random.default_rng(3), ranges)
    assert clean.min() < 0.1 < 0.5 < clean.max()  # an anechoic ellipse in bright tissue


def test_every_setting_is_drawn_from_its_range(rng):
    fixed = {
        "sector_prob": 0.0,
        "anechoic_prob": 0.0,
        "partial_prob": 0.0,
        "gain_db": (0.0, 0.0),
        "tgc_db": (0.0, 0.0),
    }
    narrow = AcquisitionRanges(
        dynamic_range_db=(80.0, 80.0), jpeg_prob=1.0, jpeg_quality=(10.0, 10.0), **fixed
    )
    wide = AcquisitionRanges(dynamic_range_db=(30.0, 30.0), jpeg_prob=0.0, **fixed)
    grey = np.full((64, 64), 0.5)
    low_contrast, _ = simulate_acquisition(grey, np.random.default_rng(1), narrow)
    high_contrast, _ = simulate_acquisition(grey, np.random.default_rng(1), wide)
    assert high_contrast.std() > 1.5 * low_contrast.std()  # 30 dB shows speckle with more contrast than 80 dB
    assert len(np.unique(low_contrast)) <= 256  # JPEG: 8-bit levels


def test_bad_maps_raise(rng):
    with pytest.raises(ValueError, match="finite 2D map"):
        simulate_acquisition(np.full((8, 8), 2.0), rng)
    with pytest.raises(ValueError, match="finite 2D map"):
        simulate_acquisition(np.zeros((2, 8, 8)), rng)


def test_dict_transform_is_seeded_and_reads_ranges_from_json_lists():
    transform = RandAcquisitiond(keys="label", dynamic_range_db=[40.0, 60.0], jpeg_prob=0.0)
    assert transform.ranges.dynamic_range_db == (40.0, 60.0)
    item = {"label": np.full((1, 64, 64), 0.6, np.float32)}
    first = transform.set_random_state(7)(item)
    second = transform.set_random_state(7)(item)
    np.testing.assert_array_equal(first["image"], second["image"])
    assert first["image"].shape == first["label"].shape == (1, 64, 64)
    assert not np.array_equal(first["image"], first["label"])
    assert item["label"].max() == np.float32(0.6)  # the input item is not modified
    with pytest.raises(ValueError, match="one key"):
        RandAcquisitiond(keys=["label", "image"])

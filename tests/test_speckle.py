"""Tests of the speckle models: statistics, ranges, determinism, MONAI transform behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, CopyItemsd

from usdespeckle.simulation.speckle import (
    RandGammaSpeckled,
    RandRayleighSpeckled,
    gamma_speckle,
    rayleigh_envelope,
    rayleigh_speckle,
)

# mean/std of a Rayleigh variable: sqrt(pi / 2) sigma over sqrt((4 - pi) / 2) sigma, about 1.913
RAYLEIGH_SNR = np.sqrt(np.pi / (4 - np.pi))


@pytest.mark.parametrize("level", [0.1, 0.5, 1.0])
def test_rayleigh_envelope_snr_on_constant_image(rng, level):
    envelope = rayleigh_envelope(np.full((256, 256), level), rng, decimation=1)
    snr = envelope.mean() / envelope.std()
    # 65536 samples: the sample ratio's standard error is about 0.005
    assert snr == pytest.approx(RAYLEIGH_SNR, abs=0.03)


def test_rayleigh_envelope_scale_follows_image(rng):
    # mean of Rayleigh(sigma) is sigma * sqrt(pi / 2); sigma = 5 + 250 * x
    for level in (0.0, 0.5, 1.0):
        envelope = rayleigh_envelope(np.full((256, 256), level), rng, decimation=1)
        expected = (5 + 250 * level) * np.sqrt(np.pi / 2)
        assert envelope.mean() == pytest.approx(expected, rel=0.02)


def test_rayleigh_decimation_makes_coarse_grain(rng):
    image = np.full((128, 128), 0.5)
    fine = rayleigh_envelope(image, rng, decimation=1)
    coarse = rayleigh_envelope(image, rng, decimation=4)
    assert coarse.shape == image.shape

    def neighbour_corr(a):
        return np.corrcoef(a[:, :-1].ravel(), a[:, 1:].ravel())[0, 1]

    assert abs(neighbour_corr(fine)) < 0.05
    assert neighbour_corr(coarse) > 0.5
    # interpolation between coarse samples keeps the mean but lowers the spread
    assert coarse.mean() == pytest.approx(fine.mean(), rel=0.05)
    assert coarse.std() < fine.std()


@pytest.mark.parametrize("shape", [(64, 64), (37, 53), (5, 3)])
def test_rayleigh_speckle_shape_dtype_range(rng, shape):
    image = rng.random(shape)
    out = rayleigh_speckle(image, rng)
    assert out.shape == shape
    assert out.dtype == np.float32
    assert out.min() >= 0.0
    assert out.max() <= 1.0
    assert out is not image


def test_rayleigh_speckle_brighter_for_brighter_input(rng):
    image = np.zeros((128, 128))
    image[:, 64:] = 1.0
    out = rayleigh_speckle(image, rng, gain_range=(30, 30), offset_range=(0, 0))
    assert out[:, 80:].mean() > out[:, :48].mean() + 0.2


def test_rayleigh_speckle_log_compression_known_answer(rng):
    # with a fixed gain and offset the output is a * log1p(envelope) + b, clipped, / 255
    image = rng.random((32, 32))
    seed_rng = np.random.default_rng(7)
    out = rayleigh_speckle(image, seed_rng, gain_range=(20, 20), offset_range=(-10, -10), decimation=2)
    envelope = rayleigh_envelope(image, np.random.default_rng(7), decimation=2)
    expected = np.clip(20 * np.log1p(envelope.astype(np.float64)) - 10, 0, 255) / 255
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_rayleigh_speckle_deterministic_with_seed():
    image = np.random.default_rng(0).random((48, 48))
    a = rayleigh_speckle(image, np.random.default_rng(5))
    b = rayleigh_speckle(image, np.random.default_rng(5))
    c = rayleigh_speckle(image, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("looks", [1, 4, 16])
def test_gamma_speckle_enl(rng, looks):
    out = gamma_speckle(np.full((256, 256), 0.3), looks, rng).astype(np.float64)
    intensity = out**2
    enl = intensity.mean() ** 2 / intensity.var()
    assert enl == pytest.approx(looks, rel=0.10)
    # unit-mean multiplicative model: mean intensity preserved
    assert intensity.mean() == pytest.approx(0.09, rel=0.03)


def test_gamma_speckle_shape_dtype_range(rng):
    image = rng.random((40, 30))
    out = gamma_speckle(image, 2.0, rng)
    assert out.shape == image.shape
    assert out.dtype == np.float32
    assert out.min() >= 0
    assert out.max() <= 1
    assert out is not image
    np.testing.assert_array_equal(gamma_speckle(np.zeros((8, 8)), 1.0, rng), 0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda rng: rayleigh_speckle(np.zeros((2, 4, 4)), rng), r"2D grey image .*\(2, 4, 4\)"),
        (lambda rng: rayleigh_speckle(np.full((4, 4), np.nan), rng), "NaN or infinite"),
        (lambda rng: rayleigh_speckle(np.zeros((4, 4)), rng, decimation=0), "decimation .*got 0"),
        (lambda rng: rayleigh_speckle(np.zeros((4, 4)), rng, gain_range=(5, 1)), r"gain_range .*\(5, 1\)"),
        (lambda rng: gamma_speckle(np.zeros((4, 4)), 0, rng), "looks must be a positive number; got 0"),
        (lambda rng: gamma_speckle(np.zeros(4), 1, rng), r"2D grey image .*\(4,\)"),
    ],
)
def test_invalid_input_raises_value_error(rng, call, match):
    with pytest.raises(ValueError, match=match):
        call(rng)


def test_rayleigh_transform_keeps_metatensor_and_label():
    label = MetaTensor(torch.rand(1, 64, 64), meta={"filename_or_obj": "slice.png"})
    pipeline = Compose([CopyItemsd(keys="label", names="image"), RandRayleighSpeckled(keys="image")])
    pipeline.set_random_state(0)
    out = pipeline({"label": label})
    assert isinstance(out["image"], MetaTensor)
    assert out["image"].meta["filename_or_obj"] == "slice.png"
    assert out["image"].shape == (1, 64, 64)
    assert out["image"].dtype == torch.float32
    assert float(out["image"].min()) >= 0
    assert float(out["image"].max()) <= 1
    torch.testing.assert_close(out["label"], label)  # the target is untouched
    assert not torch.equal(out["image"], out["label"])


@pytest.mark.parametrize("transform_cls", [RandRayleighSpeckled, RandGammaSpeckled])
def test_transforms_deterministic_with_set_random_state(transform_cls):
    data = {"image": np.random.default_rng(0).random((1, 32, 32)).astype(np.float32)}
    t1, t2 = transform_cls(keys="image"), transform_cls(keys="image")
    t1.set_random_state(3)
    t2.set_random_state(3)
    a1, a2 = t1(data)["image"], t2(data)["image"]
    assert isinstance(a1, np.ndarray)
    assert a1.dtype == np.float32
    np.testing.assert_array_equal(a1, a2)
    assert not np.array_equal(a1, t1(data)["image"])  # a new draw on the next call
    assert a1 is not data["image"]


def test_transform_prob_zero_returns_copy():
    image = np.random.default_rng(0).random((1, 16, 16)).astype(np.float32)
    out = RandGammaSpeckled(keys="image", prob=0.0)({"image": image})["image"]
    np.testing.assert_array_equal(out, image)
    assert out is not image


def test_transform_errors_and_missing_keys():
    with pytest.raises(ValueError, match="channel-first"):
        RandRayleighSpeckled(keys="image")({"image": np.zeros((8, 8))})
    with pytest.raises(KeyError):
        RandRayleighSpeckled(keys="image")({"label": np.zeros((1, 8, 8))})
    out = RandRayleighSpeckled(keys="image", allow_missing_keys=True)({"label": np.zeros((1, 8, 8))})
    assert "image" not in out
    with pytest.raises(ValueError, match=r"looks_range must be positive; got \(0, 4\)"):
        RandGammaSpeckled(keys="image", looks_range=(0, 4))


def test_gamma_transform_multichannel_tensor():
    image = torch.full((2, 64, 64), 0.4)
    out = RandGammaSpeckled(keys="image", looks_range=(4, 4))({"image": image})["image"]
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 64, 64)
    intensity = out.double() ** 2
    enl = intensity.mean() ** 2 / intensity.var()
    assert float(enl) == pytest.approx(4, rel=0.15)

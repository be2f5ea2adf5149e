"""Known-answer tests for usdespeckle.metrics."""

from __future__ import annotations

import numpy as np
import pytest

from usdespeckle import metrics


def _smooth_image(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    return (0.5 + 0.3 * np.sin(6 * x) * np.cos(4 * y) + 0.05 * rng.standard_normal((size, size))).clip(0, 1)


@pytest.mark.parametrize("looks", [1, 4, 16])
def test_enl_of_gamma_intensity_is_looks(rng: np.random.Generator, looks: int) -> None:
    field = rng.gamma(looks, 1.0 / looks, size=(300, 300))
    mask = np.ones(field.shape, dtype=bool)
    assert metrics.enl(field, mask) == pytest.approx(looks, rel=0.05)


def test_speckle_snr_of_rayleigh_envelope(rng: np.random.Generator) -> None:
    envelope = rng.rayleigh(1.0, size=(300, 300))
    assert metrics.speckle_snr(envelope, np.ones(envelope.shape, bool)) == pytest.approx(1.91, abs=0.03)


def test_gcnr_identical_and_disjoint(rng: np.random.Generator) -> None:
    image = np.empty((200, 200))
    image[:, :100] = rng.normal(0.3, 0.05, (200, 100))
    image[:, 100:] = rng.normal(0.3, 0.05, (200, 100))
    left = np.zeros(image.shape, bool)
    left[:, :100] = True
    assert metrics.gcnr(image, left, ~left) < 0.1
    image[:, 100:] = rng.uniform(0.8, 0.9, (200, 100))
    image[:, :100] = rng.uniform(0.1, 0.2, (200, 100))
    assert metrics.gcnr(image, left, ~left) == pytest.approx(1.0)
    assert metrics.cnr(image, left, ~left) > 10


def test_cnr_known_value(rng: np.random.Generator) -> None:
    a = rng.normal(1.0, 0.1, 100_000)
    b = rng.normal(0.5, 0.2, 100_000)
    image = np.concatenate([a, b])
    mask = np.zeros(image.shape, bool)
    mask[: a.size] = True
    assert metrics.cnr(image, mask, ~mask) == pytest.approx(0.5 / np.sqrt(0.05), rel=0.02)


def test_psnr_ssim_identical_and_noisy(rng: np.random.Generator) -> None:
    image = _smooth_image(rng)
    assert metrics.psnr(image, image) == np.inf
    assert metrics.ssim(image, image) == pytest.approx(1.0)
    noisy = image + rng.normal(0, 0.1, image.shape)
    assert metrics.psnr(noisy, image) == pytest.approx(20.0, abs=0.3)  # MSE 0.01 -> 20 dB
    assert metrics.ssim(noisy, image) < 0.9


def test_affine_fit_undoes_gain_and_offset(rng: np.random.Generator) -> None:
    image = _smooth_image(rng)
    changed = 2.5 * image - 0.7
    np.testing.assert_allclose(metrics.affine_fit(changed, image), image, atol=1e-10)
    assert metrics.psnr_affine(changed, image) > 150
    assert metrics.ssim_affine(changed, image) == pytest.approx(1.0)
    assert metrics.psnr(changed, image) < 15  # without the fit the gain and offset dominate


def test_edge_preservation_index(rng: np.random.Generator) -> None:
    image = _smooth_image(rng)
    image[20:40, 20:40] += 0.3
    assert metrics.edge_preservation_index(image, image) == pytest.approx(1.0)
    assert metrics.edge_preservation_index(3 * image + 1, image) == pytest.approx(1.0)
    from scipy import ndimage

    blurred = ndimage.gaussian_filter(image, 3)
    assert metrics.edge_preservation_index(blurred, image) < 0.5
    with pytest.raises(ValueError, match="constant Laplacian"):
        metrics.edge_preservation_index(np.ones((16, 16)), image[:16, :16])


def test_errors() -> None:
    image = np.zeros((8, 8))
    with pytest.raises(ValueError, match="shape"):
        metrics.psnr(image, np.zeros((8, 9)))
    with pytest.raises(ValueError, match="boolean"):
        metrics.enl(image, np.ones((8, 8)))
    with pytest.raises(ValueError, match="at least 2"):
        metrics.speckle_snr(image, np.zeros((8, 8), bool))
    with pytest.raises(ValueError, match="NaN"):
        metrics.ssim(np.full((8, 8), np.nan), image)

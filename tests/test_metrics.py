"""Known-answer tests for usdespeckle.metrics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

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
    rayleigh_snr = np.sqrt(np.pi / (4.0 - np.pi))  # mean/std of any Rayleigh variable, 1.913
    envelope = rng.rayleigh(2.0, size=(300, 300))
    whole = metrics.speckle_snr(envelope)  # no mask: every value
    assert whole == pytest.approx(rayleigh_snr, abs=0.02)
    assert metrics.speckle_snr(envelope, np.ones(envelope.shape, bool)) == whole
    region = np.zeros(envelope.shape, bool)
    region[:40, :25] = True
    assert metrics.speckle_snr(envelope, region) == pytest.approx(rayleigh_snr, abs=0.15)
    assert metrics.speckle_snr(envelope, region) != whole
    assert metrics.speckle_snr(np.ones(10)) == float("inf")  # constant: no speckle left


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


# --------------------------------------------------------------------------------------------------
# Real-scan (no-reference) metrics
# --------------------------------------------------------------------------------------------------
def _speckled_scene(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A smooth echogenicity ramp with a bright disc, and its log-compressed speckled display."""
    from usdespeckle.simulation.physics import log_compress

    y, x = np.mgrid[0:size, 0:size] / size
    echogenicity = 0.05 + 0.6 * x + 0.3 * (((y - 0.5) ** 2 + (x - 0.3) ** 2) < 0.02)
    envelope = echogenicity * rng.rayleigh(1 / np.sqrt(2), size=(size, size))
    display = log_compress(ndimage.gaussian_filter(envelope, 0.7), dynamic_range_db=40, headroom_db=0)
    clean = log_compress(echogenicity, dynamic_range_db=40, headroom_db=0)
    return clean.astype(np.float64), display.astype(np.float64)


def test_box_mask_is_half_open_and_keeps_the_field():
    mask = metrics.box_mask((6, 8), [1, 2, 3, 5])
    assert mask.sum() == 2 * 3
    assert mask[1, 2]
    assert mask[2, 4]
    assert not mask[3, 2]
    assert not mask[1, 5]
    field = np.zeros((6, 8), bool)
    field[:, :4] = True
    assert metrics.box_mask((6, 8), [1, 2, 3, 5], field).sum() == 2 * 2
    with pytest.raises(ValueError, match="outside"):
        metrics.box_mask((6, 8), [1, 2, 7, 5])
    with pytest.raises(ValueError, match="four integers"):
        metrics.box_mask((6, 8), [1, 2, 3])


def test_region_contrast_on_known_regions(rng):
    image = np.zeros((40, 60))
    image[:, :30] = rng.normal(0.2, 0.02, (40, 30))
    image[:, 30:] = rng.normal(0.8, 0.04, (40, 30))
    regions = {"dark": [0, 0, 40, 30], "bright": [0, 30, 40, 60], "homogeneous": [[0, 30, 40, 60]]}
    got = metrics.region_contrast(image, regions)
    assert got["gcnr"] == pytest.approx(1.0)
    assert got["cnr"] == pytest.approx(0.6 / np.sqrt(0.02**2 + 0.04**2), rel=0.05)
    assert got["enl"] == pytest.approx(0.8**2 / 0.04**2, rel=0.1)
    # a field mask that leaves the dark box with one pixel is a clear error
    field = np.ones(image.shape, bool)
    field[:, :30] = False
    field[0, 0] = True
    with pytest.raises(ValueError, match="at least 2"):
        metrics.region_contrast(image, regions, field)
    with pytest.raises(ValueError, match="'bright'"):
        metrics.region_contrast(image, {"dark": [0, 0, 4, 4]})


def test_ratio_image_quality_known_answers(rng):
    size = 96
    y, x = np.mgrid[0:size, 0:size] / size
    band = (x > 0.42) & (x < 0.58)  # structure between the two homogeneous areas: an edge and a ripple
    clean = 0.3 + 0.4 * (x > 0.5) + 0.1 * np.sin(40 * y) * band
    observed = clean + rng.normal(0.0, 0.05, clean.shape)
    areas = [[0, 0, 96, 40], [0, 56, 96, 96]]
    # removing exactly the noise leaves a residual that is pure noise: M near 0
    ideal = metrics.ratio_image_quality(observed, clean, areas, seed=1)
    assert ideal.first_order < 0.15
    assert ideal.delta_h < 1.0
    # the identity removes nothing: no speckle in the residual, an infinite first-order term (as in the paper)
    identity = metrics.ratio_image_quality(observed, observed, areas)
    assert identity.first_order == np.inf
    assert identity.m == np.inf
    assert identity.delta_h == pytest.approx(0.0)
    # removing only half of the noise's variance: var(observed) / var(residual) = 2, r_enl = 1
    half = metrics.ratio_image_quality(observed, clean + (observed - clean) / np.sqrt(2), areas, seed=1)
    assert half.first_order == pytest.approx(0.5 * (1 / (1 - 1 / np.sqrt(2)) ** 2 - 1), rel=0.1)
    # a blur takes structure (the edge, the ripple) into the residual: the texture term grows
    blurred = ndimage.gaussian_filter(observed, 4)
    blur = metrics.ratio_image_quality(observed, blurred, areas, seed=1)
    assert blur.delta_h > 5 * max(ideal.delta_h, 0.2)
    assert blur.m == pytest.approx(blur.first_order + blur.delta_h)
    # a despeckler that shifts the mean level is caught by the first-order term
    shifted = metrics.ratio_image_quality(observed, clean + 0.05, areas, seed=1)
    assert shifted.first_order > ideal.first_order + 0.3
    assert metrics.ratio_image_quality(observed, clean, areas, seed=1) == ideal  # seeded shuffles
    with pytest.raises(ValueError, match="homogeneous area"):
        metrics.ratio_image_quality(observed, clean, [])
    with pytest.raises(ValueError, match="distance"):
        metrics.ratio_image_quality(observed, clean, areas, distance=0)


def test_ratio_image_quality_looks_past_the_speckle_grain(rng):
    """Correlated speckle removed exactly: textured at a 1-pixel offset, white beyond the grain.

    A Gaussian blur of sigma 1.5 gives an autocorrelation FWHM of about 5 pixels; 1.5 FWHM apart
    the correlation is below 0.01.
    """
    clean = np.full((128, 128), 0.5)
    speckle = ndimage.gaussian_filter(rng.normal(0.0, 1.0, clean.shape), 1.5)
    observed = clean + 0.05 * speckle / speckle.std()
    areas = [[0, 0, 128, 128]]
    near = metrics.ratio_image_quality(observed, clean, areas, distance=1)
    past = metrics.ratio_image_quality(observed, clean, areas, distance=(8, 8))
    assert near.delta_h > 30
    assert past.delta_h < 5


def test_echogenicity_fidelity_forgives_monotonic_changes_not_erasure(rng):
    _clean, display = _speckled_scene(rng)
    field = np.ones(display.shape, bool)
    field[:, :8] = False  # e.g. outside the fan
    same = metrics.echogenicity_fidelity(display, display, field)
    assert same.correlation == pytest.approx(1.0)
    assert same.psnr == np.inf
    smooth = ndimage.gaussian_filter(display, 2)
    faithful = metrics.echogenicity_fidelity(smooth, display, field)
    contrast_changed = metrics.echogenicity_fidelity(smooth**2.5, display, field)  # MRI-like look
    assert faithful.correlation > 0.99
    assert contrast_changed.correlation == pytest.approx(faithful.correlation, abs=0.003)
    # send the darker third of the echogenicities to black: no monotonic map brings them back
    erased = np.where(ndimage.gaussian_filter(display, 4) < np.percentile(display[field], 33), 0.0, smooth)
    lost = metrics.echogenicity_fidelity(erased, display, field)
    assert lost.correlation < faithful.correlation - 0.03
    assert lost.psnr < faithful.psnr - 3
    # inventing tissue (a bright blob where the input has none) is penalised too
    invented = smooth.copy()
    invented[90:120, 60:90] = 1.0
    made_up = metrics.echogenicity_fidelity(invented, display, field)
    assert made_up.correlation < faithful.correlation - 0.01
    assert made_up.psnr < faithful.psnr - 10
    # pixels outside the field do not count
    outside = smooth.copy()
    outside[:, :8] = rng.uniform(size=(128, 8))
    assert metrics.echogenicity_fidelity(outside, display, field) == pytest.approx(faithful, abs=0.002)
    with pytest.raises(ValueError, match="sigma"):
        metrics.echogenicity_fidelity(smooth, display, field, sigma=0)


def test_temporal_flicker_known_values(rng):
    frames = rng.uniform(size=(5, 16, 16))
    assert metrics.temporal_flicker(frames, frames) == pytest.approx(1.0)
    assert metrics.temporal_flicker(0.5 * frames + 0.1, frames) == pytest.approx(0.5)
    frozen = np.repeat(frames[:1], 5, axis=0)
    assert metrics.temporal_flicker(frozen, frames) == 0.0
    # only field pixels count: an output that flickers outside the field only does not flicker
    field = np.zeros((16, 16), bool)
    field[4:12, 4:12] = True
    noisy_outside = frozen.copy()
    noisy_outside[:, ~field] = rng.uniform(size=(5, int((~field).sum())))
    assert metrics.temporal_flicker(noisy_outside, frames, field) == 0.0
    with pytest.raises(ValueError, match="T >= 2"):
        metrics.temporal_flicker(frames[:1], frames[:1])
    with pytest.raises(ValueError, match="do not change"):
        metrics.temporal_flicker(frozen, frozen)

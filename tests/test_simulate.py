"""Tests of usdespeckle.simulation.physics: speckle statistics, grain against pymust, phantoms, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage

from usdespeckle.metrics import speckle_snr
from usdespeckle.simulation.phantoms import make_cyst_phantom
from usdespeckle.simulation.physics import (
    FastBModeSimulator,
    log_compress,
    simulate_bmode_physics,
    simulate_envelope_physics,
)
from usdespeckle.simulation.psf import autocorrelation_fwhm, probe_psf

RAYLEIGH_SNR = math.sqrt(math.pi / (4.0 - math.pi))  # 1.913, mean/std of a Rayleigh variable


@pytest.fixture(scope="module")
def simulator() -> FastBModeSimulator:
    return FastBModeSimulator("L11-5v", (256, 256))


# --------------------------------------------------------------------------------------------------
# utilities against known answers
# --------------------------------------------------------------------------------------------------
def test_autocorrelation_fwhm_of_gaussian_filtered_noise(rng: np.random.Generator) -> None:
    # White noise smoothed by a Gaussian of std s has a Gaussian autocorrelation of std s*sqrt(2),
    # whose FWHM is 2*sqrt(2 ln 2) * s * sqrt(2).
    sigma_rows, sigma_cols = 1.5, 4.0
    field = scipy.ndimage.gaussian_filter(
        rng.standard_normal((512, 512)), (sigma_rows, sigma_cols), mode="wrap"
    )
    axial, lateral = autocorrelation_fwhm(field)
    factor = 2.0 * math.sqrt(2.0 * math.log(2.0)) * math.sqrt(2.0)
    assert axial == pytest.approx(factor * sigma_rows, rel=0.08)
    assert lateral == pytest.approx(factor * sigma_cols, rel=0.08)
    white_axial, white_lateral = autocorrelation_fwhm(rng.standard_normal((256, 256)))
    assert white_axial < 1.1
    assert white_lateral < 1.1
    with pytest.raises(ValueError, match="8x8"):
        autocorrelation_fwhm(np.ones((4, 40)))
    with pytest.raises(ValueError, match="constant"):
        autocorrelation_fwhm(np.ones((16, 16)))


def test_log_compress_levels() -> None:
    headroom, dynamic_range = 6.0, 50.0
    envelope = np.array([10 ** (headroom / 20), 10 ** ((headroom - dynamic_range) / 20), 1e-9, 1.0])
    image = log_compress(envelope, dynamic_range_db=dynamic_range, headroom_db=headroom)
    assert image.dtype == np.float32
    np.testing.assert_allclose(image, [1.0, 0.0, 0.0, (dynamic_range - headroom) / dynamic_range], atol=1e-6)
    with pytest.raises(ValueError, match="dynamic_range_db"):
        log_compress(envelope, dynamic_range_db=0.0)


# --------------------------------------------------------------------------------------------------
# point-spread function
# --------------------------------------------------------------------------------------------------
def test_probe_psf_is_cached_normalised_and_centred() -> None:
    psf = probe_psf("L11-5v", pixel_size_m=1e-4)
    assert psf.dtype == np.complex64
    assert psf.shape[0] % 2 == 1
    assert psf.shape[1] % 2 == 1
    assert float(np.sum(np.abs(psf) ** 2)) == pytest.approx(1.0, rel=1e-4)
    peak = np.unravel_index(np.argmax(np.abs(psf)), psf.shape)
    assert abs(peak[0] - psf.shape[0] // 2) <= 1
    assert abs(peak[1] - psf.shape[1] // 2) <= 1
    assert probe_psf("L11-5v", pixel_size_m=1e-4) is psf  # cached: computed once per probe and pixel
    assert not psf.flags.writeable
    with pytest.raises(ValueError, match="unknown probe"):
        probe_psf("no-such-probe")
    with pytest.raises(ValueError, match="pixel_size_m"):
        probe_psf("L11-5v", pixel_size_m=-1.0)


# --------------------------------------------------------------------------------------------------
# fast path
# --------------------------------------------------------------------------------------------------
def test_fast_envelope_is_rayleigh_and_calibrated(
    simulator: FastBModeSimulator, rng: np.random.Generator
) -> None:
    echogenicity = np.full(simulator.shape, 0.5)
    envelope = simulator.envelope(echogenicity, rng)
    assert envelope.shape == simulator.shape
    assert envelope.dtype == np.float32
    assert envelope.min() >= 0
    assert speckle_snr(envelope[16:-16, 16:-16]) == pytest.approx(RAYLEIGH_SNR, abs=0.15)
    # Echogenicity is the RMS scatterer amplitude: RMS envelope ~ 0.5, also at the borders.
    assert math.sqrt(float(np.mean(envelope.astype(np.float64) ** 2))) == pytest.approx(0.5, rel=0.1)
    border = np.concatenate([envelope[:4].ravel(), envelope[-4:].ravel()])
    assert math.sqrt(float(np.mean(border.astype(np.float64) ** 2))) == pytest.approx(0.5, rel=0.15)


def test_fast_simulate_shapes_ranges_determinism(simulator: FastBModeSimulator) -> None:
    echogenicity, _ = make_cyst_phantom(simulator.shape, np.random.default_rng(0))
    first = simulator.simulate(echogenicity, np.random.default_rng(7))
    second = simulator.simulate(echogenicity, np.random.default_rng(7))
    other = simulator.simulate(echogenicity, np.random.default_rng(8))
    assert first.shape == simulator.shape
    assert first.dtype == np.float32
    assert first.min() >= 0.0
    assert first.max() <= 1.0
    assert first.std() > 0.05
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)
    # The input map is not modified.
    assert echogenicity.flags.writeable
    assert np.all((echogenicity >= 0) & (echogenicity <= 1))
    anechoic = simulator.simulate(np.zeros(simulator.shape), np.random.default_rng(0))
    assert np.all(anechoic == 0.0)


def test_fast_cysts_keep_their_order_of_brightness(
    simulator: FastBModeSimulator, rng: np.random.Generator
) -> None:
    contrasts = (-20.0, -10.0, -6.0, 6.0)
    echogenicity, masks = make_cyst_phantom(simulator.shape, rng, contrasts_db=contrasts)
    bmode = simulator.simulate(echogenicity, rng)
    background = float(bmode[masks["background"]].mean())
    means = [float(bmode[masks[f"cyst_{c:+g}dB".replace("+-", "-")]].mean()) for c in contrasts]
    assert means[0] < means[1] < means[2] < background < means[3]
    # The -20 dB cyst is at least 10 dB darker than the background (speckle and side lobes fill it).
    assert (background - means[0]) * simulator.dynamic_range_db > 10.0


def test_fast_simulator_rebuilt_shares_the_cached_psf_and_draws_alike(simulator: FastBModeSimulator) -> None:
    rebuilt = FastBModeSimulator("L11-5v", (256, 256))
    assert rebuilt.psf is simulator.psf  # rebuilding costs no new PSF computation
    echogenicity = np.full((256, 256), 0.5)
    np.testing.assert_array_equal(
        rebuilt.simulate(echogenicity, np.random.default_rng(3)),
        simulator.simulate(echogenicity, np.random.default_rng(3)),
    )


@pytest.mark.parametrize(
    ("echogenicity", "message"),
    [
        (np.full((128, 128), 0.5), "was built for"),
        (np.full((1, 256, 256), 0.5), "2D"),
        (np.where(np.eye(256, dtype=bool), np.nan, 0.5), "NaN"),
        (np.full((256, 256), 1.5), r"\[0, 1\]"),
        (np.full((256, 256), -0.1), r"\[0, 1\]"),
    ],
)
def test_fast_rejects_bad_maps(simulator: FastBModeSimulator, echogenicity: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        simulator.simulate(echogenicity, np.random.default_rng(0))


def test_fast_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="shape"):
        FastBModeSimulator("L11-5v", (256,))
    with pytest.raises(ValueError, match="pixel_size_m"):
        FastBModeSimulator("L11-5v", (64, 64), pixel_size_m=0.0)
    with pytest.raises(ValueError, match="unknown probe"):
        FastBModeSimulator("X1-1", (64, 64))


# --------------------------------------------------------------------------------------------------
# phantoms
# --------------------------------------------------------------------------------------------------
def test_cyst_phantom_levels_and_masks(rng: np.random.Generator) -> None:
    contrasts = (-20.0, -10.0, -6.0, 6.0)
    echogenicity, masks = make_cyst_phantom((256, 256), rng, contrasts_db=contrasts, background=0.5)
    assert echogenicity.dtype == np.float32
    assert echogenicity.min() >= 0
    assert echogenicity.max() <= 1
    assert set(masks) == {"background", "edges", "cyst_-20dB", "cyst_-10dB", "cyst_-6dB", "cyst_+6dB"}
    np.testing.assert_allclose(echogenicity[masks["background"]], 0.5)
    for contrast in contrasts:
        region = masks[f"cyst_{contrast:+g}dB".replace("+-", "-")]
        assert region.sum() > 100
        assert not np.any(region & masks["background"])
        assert not np.any(region & masks["edges"])
        expected = min(1.0, 0.5 * 10 ** (contrast / 20))
        np.testing.assert_allclose(echogenicity[region], expected, rtol=1e-6)
    fixed, _ = make_cyst_phantom((256, 256), None)
    np.testing.assert_array_equal(fixed, make_cyst_phantom((256, 256), None)[0])
    with pytest.raises(ValueError, match="do not fit"):
        make_cyst_phantom((64, 64), rng, radius_px=30)
    with pytest.raises(ValueError, match="repeat"):
        make_cyst_phantom((256, 256), rng, contrasts_db=(-6, -6))
    with pytest.raises(ValueError, match="background"):
        make_cyst_phantom((256, 256), rng, background=1.5)


# --------------------------------------------------------------------------------------------------
# faithful path (pymust simus + DAS), small regions
# --------------------------------------------------------------------------------------------------
def test_physics_rejects_bad_input(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="2D"):
        simulate_bmode_physics(np.full((4, 8, 8), 0.5), rng)
    with pytest.raises(ValueError, match="NaN"):
        simulate_bmode_physics(np.full((8, 8), np.nan), rng)
    with pytest.raises(ValueError, match="below the probe"):
        simulate_bmode_physics(np.full((8, 8), 0.5), rng, depth_m=0.05, center_depth_m=0.02)
    with pytest.raises(ValueError, match="scatterers_per_cell"):
        simulate_bmode_physics(np.full((8, 8), 0.5), rng, scatterers_per_cell=0)


@pytest.mark.slow
def test_fast_speckle_grain_matches_pymust(simulator: FastBModeSimulator) -> None:
    """The PSF-convolution model has the speckle grain and statistics of a pymust simulation."""
    shape = (40, 48)  # 4.0 mm x 4.8 mm at the simulator's 0.1 mm pixels, centred at 20 mm depth
    echogenicity = np.full(shape, 0.5)
    physics = simulate_envelope_physics(
        echogenicity, np.random.default_rng(3), probe=simulator.probe, scatterers_per_cell=10.0
    )
    assert physics.shape == shape
    assert physics.dtype == np.float32
    physics_axial, physics_lateral = autocorrelation_fwhm(physics)

    fast_axial, fast_lateral = [], []
    rng = np.random.default_rng(4)
    for _ in range(4):
        envelope = simulator.envelope(np.full(simulator.shape, 0.5), rng)
        axial, lateral = autocorrelation_fwhm(envelope)
        fast_axial.append(axial)
        fast_lateral.append(lateral)
    assert np.mean(fast_axial) == pytest.approx(physics_axial, rel=0.25)
    assert np.mean(fast_lateral) == pytest.approx(physics_lateral, rel=0.25)
    # A small region gives a noisy SNR; it is still near the Rayleigh value.
    assert speckle_snr(physics) == pytest.approx(RAYLEIGH_SNR, abs=0.4)
    # Same calibration convention as the fast path: RMS envelope equals RMS echogenicity.
    assert math.sqrt(float(np.mean(physics.astype(np.float64) ** 2))) == pytest.approx(0.5, rel=1e-3)


@pytest.mark.slow
def test_physics_scatterer_groups_sum_like_one_simulation() -> None:
    """simus is linear in the scatterers: simulating them in groups and summing the RF changes little."""
    from usdespeckle.simulation.psf import beamform_iq

    rng = np.random.default_rng(1)
    count = 40
    x_scat, z_scat = rng.uniform(-1e-3, 1e-3, count), rng.uniform(19e-3, 21e-3, count)
    amplitude = rng.standard_normal(count)
    x_grid, z_grid = np.meshgrid(np.linspace(-1e-3, 1e-3, 12), np.linspace(19e-3, 21e-3, 12))
    whole = beamform_iq(x_scat, z_scat, amplitude, x_grid, z_grid, "L11-5v", 1)
    grouped = beamform_iq(x_scat, z_scat, amplitude, x_grid, z_grid, "L11-5v", 1, scatterer_chunk=15)
    assert np.abs(whole).max() > 0
    assert np.linalg.norm(grouped - whole) / np.linalg.norm(whole) < 0.02

"""Behaviour of the classical despecklers in usdespeckle.runtime.filters."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from usdespeckle import metrics
from usdespeckle.runtime import filters
from usdespeckle.runtime.filters.bm3d import _is_multiplicative, _prox_fisher_tippett
from usdespeckle.runtime.filters.noise import estimate_looks, estimate_noise_psd

METHODS = sorted(filters.FILTERS)
SLOW = ("bm3d", "mulog")  # BM3D inside: a few seconds per call on a shared machine


def _phantom(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A clean phantom in [0, 1]: a homogeneous left half and a structured right half; and the
    mask of the homogeneous region's interior."""
    clean = np.full((size, size), 0.5)
    y, x = np.mgrid[0:size, 0:size]
    right = x >= size // 2
    clean[right] = 0.3 + 0.4 * ((x[right] // 8 + y[right] // 8) % 2)
    mask = np.zeros((size, size), bool)
    mask[6 : size - 6, 6 : size // 2 - 8] = True
    return clean, mask


def _speckle(clean: np.ndarray, rng: np.random.Generator, looks: int = 2) -> np.ndarray:
    """Multiplicative envelope speckle ``x * sqrt(Gamma(L, 1/L))``."""
    return clean * np.sqrt(rng.gamma(looks, 1.0 / looks, clean.shape))


@pytest.fixture(scope="module")
def speckled() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    clean, mask = _phantom()
    noisy = _speckle(clean, np.random.default_rng(7))
    return clean, noisy, mask


@pytest.mark.parametrize("method", METHODS)
def test_reduces_speckle(method: str, speckled: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    clean, noisy, mask = speckled
    before = noisy.copy()
    out = filters.FILTERS[method](noisy)
    assert out is not noisy
    assert not np.shares_memory(out, noisy)
    np.testing.assert_array_equal(noisy, before)  # input untouched
    assert out.dtype == np.float32
    assert out.shape == noisy.shape
    assert np.all(np.isfinite(out))
    assert metrics.speckle_snr(out, mask) > 1.5 * metrics.speckle_snr(noisy, mask)
    assert np.mean((out - clean) ** 2) < 0.7 * np.mean((noisy - clean) ** 2)


@pytest.mark.parametrize("method", [m for m in METHODS if m not in SLOW])
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_volume_is_slicewise(method: str, axis: int, rng: np.random.Generator) -> None:
    clean, _ = _phantom(24)
    volume = np.stack([_speckle(clean, rng) for _ in range(3)], axis=0)  # (3, 24, 24)
    volume = np.moveaxis(volume, 0, axis)
    out = filters.despeckle(volume, method, axis=axis)
    assert out.dtype == np.float32
    assert out.shape == volume.shape
    for k in range(3):
        sl = np.take(volume, k, axis=axis)
        np.testing.assert_allclose(
            np.take(out, k, axis=axis), filters.despeckle(sl, method), rtol=1e-5, atol=1e-6
        )


def test_bm3d_volume_is_slicewise(rng: np.random.Generator) -> None:
    clean, _ = _phantom(32)
    volume = np.stack([_speckle(clean, rng) for _ in range(2)], axis=2)  # (32, 32, 2)
    out = filters.despeckle_bm3d(volume, axis=2)
    assert out.shape == volume.shape
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[..., 1], filters.despeckle_bm3d(volume[..., 1]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", [m for m in METHODS if m not in SLOW])
def test_dtypes_ranges_and_constant(method: str, rng: np.random.Generator) -> None:
    clean, _ = _phantom(32)
    noisy = _speckle(clean, rng)
    as_u8 = (np.clip(noisy, 0, 1) * 255).astype(np.uint8)
    out_u8 = filters.despeckle(as_u8, method)
    out_f = filters.despeckle(as_u8.astype(np.float64) / 255, method)
    assert out_u8.dtype == np.float32
    # range-independent filters: scaling the input scales the output
    if method in ("median", "lee", "kuan", "frost", "srad", "obnlm", "tv"):
        np.testing.assert_allclose(out_u8 / 255, out_f, rtol=1e-4, atol=1e-4)
    flat = np.full((32, 32), 0.25, np.float32)
    out_flat = filters.despeckle(flat, method)
    assert out_flat is not flat
    np.testing.assert_allclose(out_flat, 0.25, atol=1e-5)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.full((8, 8), np.nan), "NaN"),
        (np.array([[0.0, np.inf], [0.0, 0.0]]), "NaN/inf"),
        (np.zeros((2, 2, 2, 2)), "4D|3D"),
        (np.zeros(8), "2D"),
        (np.zeros((4, 4), complex), "dtype"),
    ],
)
@pytest.mark.parametrize("method", METHODS)
def test_bad_input(method: str, bad: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        filters.despeckle(bad, method)


def test_parameter_errors() -> None:
    image = np.ones((16, 16))
    with pytest.raises(ValueError, match="valid names: median"):
        filters.despeckle(image, "wiener")
    with pytest.raises(ValueError, match="no parameter window; valid parameters: size, axis"):
        filters.despeckle(image, "median", window=3)
    with pytest.raises(ValueError, match="odd"):
        filters.despeckle_median(image, size=4)
    with pytest.raises(ValueError, match="dt"):
        filters.despeckle_srad(image, dt=0.5)
    with pytest.raises(ValueError, match="axis"):
        filters.despeckle_lee(np.ones((4, 8, 8)), axis=3)
    with pytest.raises(ValueError, match="transform"):
        filters.despeckle_bm3d(image, transform="anscombe")
    with pytest.raises(ValueError, match="step"):
        filters.despeckle_obnlm(image, block_radius=1, step=4)
    with pytest.raises(ValueError, match="noise"):
        filters.despeckle_bm3d(image, noise="pink")
    with pytest.raises(ValueError, match="psf"):
        filters.despeckle_bm3d(image, psf=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="looks"):
        filters.despeckle_mulog(image, looks=0)
    with pytest.raises(ValueError, match="domain"):
        filters.despeckle_mulog(image, domain="linear")
    with pytest.raises(ValueError, match="negative values"):
        filters.despeckle_mulog(image * np.linspace(-1.0, 1.0, 16), domain="amplitude")


def test_parameters_are_checked_against_the_signature_not_an_error_text(monkeypatch) -> None:
    """A TypeError raised inside a filter is a bug to see, not a user's bad keyword."""

    def broken(image, size=5, *, axis=0):
        raise TypeError("f() got an unexpected keyword argument 'q'")

    monkeypatch.setitem(filters.FILTERS, "median", broken)
    with pytest.raises(TypeError, match="unexpected keyword"):
        filters.despeckle(np.ones((16, 16)), "median", size=3)
    with pytest.raises(ValueError, match="no parameter q"):
        filters.despeckle(np.ones((16, 16)), "median", q=3)


# --------------------------------------------------------------------------------------------------
# Lee and Kuan at small Cu (log-compressed data)
# --------------------------------------------------------------------------------------------------
def test_lee_and_kuan_differ_at_small_cu(rng: np.random.Generator) -> None:
    clean, _ = _phantom(64)
    noisy, _ = _correlated_speckle(clean, rng)  # log-compressed: local Ci about 0.1-0.3
    lee = filters.despeckle_lee(noisy, noise_cv=0.15)
    kuan = filters.despeckle_kuan(noisy, noise_cv=0.15)
    assert np.max(np.abs(lee - kuan)) > 1e-3  # Kuan's weights carry the extra 1 / (1 + Cu^2)
    box = filters.despeckle_lee(noisy, noise_cv=1.0)  # every weight clipped to 0: a box mean
    assert np.max(np.abs(lee - box)) > 1e-2


# --------------------------------------------------------------------------------------------------
# BM3D with a coloured-noise model
# --------------------------------------------------------------------------------------------------
def _correlated_speckle(
    clean: np.ndarray, rng: np.random.Generator, psf_std: tuple[float, float] = (1.0, 2.5)
) -> tuple[np.ndarray, np.ndarray]:
    """Complex Gaussian field weighted by ``clean``, blurred by an anisotropic Gaussian PSF, envelope,
    log compression to 50 dB. Returns (speckled, log-compressed clean reference)."""
    field = (rng.standard_normal(clean.shape) + 1j * rng.standard_normal(clean.shape)) * clean
    echo = ndimage.gaussian_filter(field.real, psf_std) + 1j * ndimage.gaussian_filter(field.imag, psf_std)
    envelope = np.abs(echo) / np.sqrt(np.mean(np.abs(echo[clean == clean.max()]) ** 2))
    to_display = lambda a: np.clip((20 * np.log10(np.maximum(a, 1e-12)) + 50.0) / 50.0, 0.0, 1.0)  # noqa: E731
    return to_display(envelope), to_display(clean / clean.max())


def _disc_phantom(size: int = 96) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    clean = np.full((size, size), 0.5)
    clean[(y - 40) ** 2 + (x - 30) ** 2 < 15**2] = 1.0
    clean[(y - 60) ** 2 + (x - 70) ** 2 < 12**2] = 0.15
    clean[:, int(0.88 * size) :] = 0.8
    return clean


@pytest.mark.slow
def test_bm3d_psd_beats_white_noise_on_correlated_speckle() -> None:
    noisy, reference = _correlated_speckle(_disc_phantom(), np.random.default_rng(3))
    psd = metrics.psnr(filters.despeckle_bm3d(noisy, 1.0, "none", noise="psd"), reference)
    for sigma_scale in (1.0, 2.0):
        white = metrics.psnr(filters.despeckle_bm3d(noisy, sigma_scale, "none", noise="white"), reference)
        assert psd > white + 1.0, (sigma_scale, psd, white)
    assert not hasattr(np, "trapz") or np.lib.NumpyVersion(np.__version__) < "2.0.0"  # alias was scoped


def test_noise_psd_convention_on_white_noise() -> None:
    sigma = 0.1
    noise = np.random.default_rng(0).normal(0.5, sigma, (128, 96))
    psd = estimate_noise_psd(noise)
    assert psd.shape == noise.shape
    assert np.all(psd >= 0)
    # mean(PSD) = variance * number of pixels, and flat for white noise
    assert np.mean(psd) / (sigma**2 * noise.size) == pytest.approx(1.0, rel=0.12)
    assert np.std(psd) / np.mean(psd) < 0.3
    assert psd[0, 0] / np.mean(psd) == pytest.approx(1.0, abs=0.3)  # no dip at zero frequency


def test_noise_psd_follows_correlated_noise() -> None:
    rng = np.random.default_rng(1)
    kernel_std = (1.0, 2.0)
    noise = ndimage.gaussian_filter(rng.standard_normal((128, 128)), kernel_std, mode="wrap")
    impulse = np.zeros((128, 128))
    impulse[0, 0] = 1.0
    kernel = ndimage.gaussian_filter(impulse, kernel_std, mode="wrap")
    true_psd = np.abs(np.fft.fft2(kernel)) ** 2 * noise.size  # unit-variance white noise filtered
    psd = estimate_noise_psd(noise)
    assert np.mean(psd) / np.mean(true_psd) == pytest.approx(1.0, rel=0.15)
    assert np.corrcoef(psd.ravel(), true_psd.ravel())[0, 1] > 0.95
    # anisotropic: more power along the axial frequency axis (narrow axial correlation)
    assert psd[40, 0] > 5 * psd[0, 40]


def test_noise_psd_from_psf_matches_the_image_estimate() -> None:
    psf_std = (1.0, 2.5)
    noisy, _ = _correlated_speckle(np.full((128, 128), 0.7), np.random.default_rng(2), psf_std)
    impulse = np.zeros((21, 21))
    impulse[10, 10] = 1.0
    psf = ndimage.gaussian_filter(impulse, psf_std)
    from_image = estimate_noise_psd(noisy)
    from_psf = estimate_noise_psd(noisy, psf=psf)
    assert np.mean(from_psf) == pytest.approx(np.mean(from_image), rel=1e-6)  # same level
    assert np.corrcoef(from_image.ravel(), from_psf.ravel())[0, 1] > 0.9
    with pytest.raises(ValueError, match="2D"):
        estimate_noise_psd(noisy, psf=np.ones(5))


# --------------------------------------------------------------------------------------------------
# MuLoG
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("looks", [1.0, 4.0])
def test_estimate_looks_known_answer(looks: float) -> None:
    rng = np.random.default_rng(5)
    intensity = 0.3 * rng.gamma(looks, 1.0 / looks, (128, 128))
    assert estimate_looks(np.log(intensity)) == pytest.approx(looks, rel=0.1)


def test_fisher_tippett_prox_solves_its_equation(rng: np.random.Generator) -> None:
    intensity = rng.gamma(1.0, 1.0, (32, 32))
    v = rng.normal(0.0, 2.0, (32, 32))
    weight, sigma = 1.0 / 3.0, 1.28
    x = _prox_fisher_tippett(v, intensity, weight, sigma, n_newton=10)
    gradient = x - v + weight * sigma * (1.0 - intensity * np.exp(-sigma * x))
    assert np.max(np.abs(gradient)) < 1e-6


def test_speckle_domain_detection(rng: np.random.Generator) -> None:
    clean = 0.1 + 0.8 * _disc_phantom(96)
    assert _is_multiplicative(_speckle(clean, rng, looks=1))
    assert not _is_multiplicative(_correlated_speckle(clean, rng)[0])


@pytest.mark.slow
def test_mulog_on_single_look_amplitude_speckle() -> None:
    clean = 0.1 + 0.8 * _disc_phantom(64)
    noisy = _speckle(clean, np.random.default_rng(4), looks=1)
    out = filters.despeckle_mulog(noisy)  # looks estimated, domain detected (amplitude)
    np.testing.assert_allclose(out, filters.despeckle_mulog(noisy, domain="amplitude"), atol=1e-6)
    assert metrics.psnr(out, clean) > metrics.psnr(noisy, clean) + 8.0
    # the Fisher-Tippett likelihood keeps the mean: no log-domain darkening of homogeneous regions
    region = clean == 0.5 * 0.8 + 0.1
    assert np.mean(out[region]) == pytest.approx(np.mean(clean[region]), rel=0.1)


@pytest.mark.slow
def test_mulog_on_log_compressed_speckle() -> None:
    noisy, reference = _correlated_speckle(_disc_phantom(64), np.random.default_rng(6))
    out = filters.despeckle_mulog(noisy, domain="log", noise="psd")
    assert out.shape == noisy.shape
    assert out.dtype == np.float32
    assert metrics.psnr(out, reference) > metrics.psnr(noisy, reference) + 4.0


@pytest.mark.parametrize("method", SLOW)
def test_constant_image_is_returned_unchanged(method: str) -> None:
    flat = np.full((24, 24), 0.25, np.float32)
    out = filters.despeckle(flat, method)
    assert out is not flat
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


@pytest.mark.parametrize("method", ["bm3d", "mulog"])
def test_without_bm3d_one_line_names_the_extra_and_the_licence(method: str, monkeypatch) -> None:
    """bm3d is an opt-in extra (non-commercial licence): without it both filters say how to opt in."""
    import sys

    monkeypatch.setitem(sys.modules, "bm3d", None)  # `import bm3d` now fails as if it were absent
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    with pytest.raises(ImportError) as caught:
        filters.FILTERS[method](image)
    message = str(caught.value)
    assert "\n" not in message
    assert f"despeckle_{method}" in message
    assert "pip install 'usdespeckle[bm3d]'" in message
    assert "non-commercial" in message


def test_cli_without_bm3d_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys) -> None:
    import sys

    import SimpleITK as sitk

    from usdespeckle import cli

    source = tmp_path / "in.nrrd"
    sitk.WriteImage(
        sitk.GetImageFromArray(np.random.default_rng(1).random((24, 24)).astype(np.float32)), source
    )
    monkeypatch.setitem(sys.modules, "bm3d", None)
    assert cli.main(["run", str(source), str(tmp_path / "out.nrrd"), "--method", "mulog"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1, error
    assert "usdespeckle[bm3d]" in error[0]
    assert "non-commercial" in error[0]
    assert not (tmp_path / "out.nrrd").exists()
